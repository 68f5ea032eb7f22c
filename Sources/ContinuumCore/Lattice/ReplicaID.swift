/// The identity of one replica: the unit that mints dots, owns counter entries and breaks
/// last-writer-wins ties. Compact on the wire (a varint); a node maps its configured name to
/// one of these.
public struct ReplicaID: Hashable, Comparable, Codable, Sendable, BinaryCodable, CustomStringConvertible {
    public var rawValue: UInt64

    public init(_ rawValue: UInt64) { self.rawValue = rawValue }

    public static func < (lhs: ReplicaID, rhs: ReplicaID) -> Bool { lhs.rawValue < rhs.rawValue }

    /// What a dictionary or set probes with (see `seededMix`): a causal context looks a replica
    /// up for every dot a join tests: under SADD into a growing set in process (`continuum
    /// bench-joins`), a quarter of the time in `Hasher` was for replica ids.
    public func _rawHashValue(seed: Int) -> Int { seededMix(rawValue, seed: seed) }

    public var description: String { "r\(rawValue)" }

    public func encode(to writer: inout BinaryWriter) { writer.writeVarint(rawValue) }
    public init(from reader: inout BinaryReader) throws(WireDecodingError) { rawValue = try reader.readVarint() }

    public init(from decoder: any Decoder) throws { rawValue = try decoder.singleValueContainer().decode(UInt64.self) }
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }
}

/// A 64-bit finalizer (MurmurHash3's `fmix64`) of `value` with a table's `seed`: for types
/// of a machine word or two whose hashing runs in the inner loop of joins (replica ids and
/// dots), in place of a SipHash round per probe. Every table has its own seed (the process's
/// random hashing seed, varied per table), and the finalizer spreads every input bit over the
/// result, so a peer that does not know the seed cannot choose ids or dots that share buckets;
/// and a payload's size is bounded anyway.
@inlinable
public func seededMix(_ value: UInt64, seed: Int) -> Int {
    var mixed = value ^ UInt64(bitPattern: Int64(seed))
    mixed = (mixed ^ (mixed >> 33)) &* 0xFF51_AFD7_ED55_8CCD
    mixed = (mixed ^ (mixed >> 33)) &* 0xC4CE_B9FE_1A85_EC53
    mixed ^= mixed >> 33
    return Int(bitPattern: UInt(mixed))
}
