/// The identity of one replica: the unit that mints dots, owns counter entries and breaks
/// last-writer-wins ties. Compact on the wire (a varint); a node maps its configured name to
/// one of these.
public struct ReplicaID: Hashable, Comparable, Codable, Sendable, BinaryCodable, CustomStringConvertible {
    public var rawValue: UInt64

    public init(_ rawValue: UInt64) { self.rawValue = rawValue }

    public static func < (lhs: ReplicaID, rhs: ReplicaID) -> Bool { lhs.rawValue < rhs.rawValue }

    public var description: String { "r\(rawValue)" }

    public func encode(to writer: inout BinaryWriter) { writer.writeVarint(rawValue) }
    public init(from reader: inout BinaryReader) throws(WireDecodingError) { rawValue = try reader.readVarint() }

    public init(from decoder: any Decoder) throws { rawValue = try decoder.singleValueContainer().decode(UInt64.self) }
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }
}
