/// A register's name with its hash computed once. A replica looks a register up in several
/// tables for every update, shipment and acknowledgement (its state, its delta buffer, and
/// per neighbour what was acknowledged and what is in flight). With `String` keys every lookup
/// hashed the name's bytes again, and every probe of an occupied bucket compared names byte
/// by byte: on a 3-node cluster under SET to 100,000 keys, 21% of all CPU time was those
/// lookups (`memcmp` 8%, `Dictionary.find` 7%, hashing 5%). A key hashes its name when it is
/// made (once per command or payload), and compares the stored hashes before the names.
///
/// The hash is the process's seeded `String` hash, as a `String` key's is: nothing may depend
/// on it, or on the order of a dictionary keyed by it, across processes (the instance sorts
/// names wherever order shows).
public struct RegisterKey: Hashable, Comparable, Sendable, CustomStringConvertible, ExpressibleByStringLiteral {
    public let name: String
    private let hash: Int

    public init(_ name: String) {
        self.name = name
        hash = name.hashValue
    }

    public init(stringLiteral name: String) { self.init(name) }

    public static func == (lhs: RegisterKey, rhs: RegisterKey) -> Bool { lhs.hash == rhs.hash && lhs.name == rhs.name }
    public func hash(into hasher: inout Hasher) { hasher.combine(hash) }
    /// What a dictionary probes with: the stored hash mixed with the dictionary's seed by one
    /// multiply and a rotation, instead of a full SipHash round of it per lookup (a profile of
    /// SET to 100,000 keys had 5% of all CPU in `Hasher` for these keys). The stored hash is
    /// the process's seeded `String` hash already; the dictionary's seed varies it per table.
    public func _rawHashValue(seed: Int) -> Int {
        let mixed = UInt64(bitPattern: Int64(hash ^ seed)) &* 0x9E37_79B9_7F4A_7C15
        return Int(bitPattern: UInt(truncatingIfNeeded: (mixed >> 29) | (mixed << 35)))
    }
    public static func < (lhs: RegisterKey, rhs: RegisterKey) -> Bool { lhs.name < rhs.name }
    public var description: String { name }
}
