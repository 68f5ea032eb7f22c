/// A version vector: for each replica, how many of its events have been seen. Entries that are
/// zero are not stored, so `==` is equality of vectors. It is itself a lattice (pointwise max),
/// and is the compact part of a `CausalContext`.
public struct VersionVector: Lattice, Hashable, BinaryCodable, CustomStringConvertible {
    public private(set) var counters: [ReplicaID: UInt64]

    public init(_ counters: [ReplicaID: UInt64] = [:]) {
        self.counters = counters.filter { $0.value > 0 }
    }

    public static var bottom: VersionVector { VersionVector() }

    public subscript(replica: ReplicaID) -> UInt64 {
        get { counters[replica] ?? 0 }
        set { counters[replica] = newValue == 0 ? nil : newValue }
    }

    /// The replicas with a non-zero entry, sorted (for deterministic iteration).
    public var replicas: [ReplicaID] { counters.keys.sorted() }

    public mutating func formJoin(_ other: VersionVector) {
        counters.merge(other.counters, uniquingKeysWith: max)
    }

    public func isBelowOrEqual(_ other: VersionVector) -> Bool {
        counters.allSatisfy { other[$0.key] >= $0.value }
    }

    /// Neither vector is below the other: the histories they summarize are concurrent.
    public func isConcurrent(with other: VersionVector) -> Bool {
        !isBelowOrEqual(other) && !other.isBelowOrEqual(self)
    }

    /// The sum of all entries: the number of events summarized.
    public var total: UInt64 { counters.values.reduce(0, +) }

    public var description: String {
        "[" + replicas.map { "\($0):\(self[$0])" }.joined(separator: ",") + "]"
    }

    public init(from decoder: any Decoder) throws {
        self.init(try decoder.singleValueContainer().decode([ReplicaID: UInt64].self))
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(counters)
    }

    public func encode(to writer: inout BinaryWriter) { writer.write(counters) }
    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        let counters = try [ReplicaID: UInt64](from: &reader)
        guard counters.values.allSatisfy({ $0 > 0 }) else { throw .invalid("version vector with a zero entry") }
        self.counters = counters
    }
}
