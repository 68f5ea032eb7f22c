/// A grow-only map whose values are any lattice, joined key by key: a map of counters (one
/// per advertisement, say), of max registers, of sets. Keys are never removed; use `ORMap`
/// (with causal values) when they must be.
public struct GMap<Key: Hashable & Sendable & Codable, Value: Lattice>: Lattice, CustomStringConvertible {
    public private(set) var entries: [Key: Value]

    public init(_ entries: [Key: Value] = [:]) { self.entries = entries.filter { !$0.value.isBottom } }

    public static var bottom: GMap { GMap() }

    public subscript(key: Key) -> Value { entries[key] ?? .bottom }

    public var keys: Set<Key> { Set(entries.keys) }

    /// Applies a delta mutator to the value under `key` and returns the map delta.
    @discardableResult
    public mutating func update(_ key: Key, _ mutate: (inout Value) -> Value) -> GMap {
        var value = self[key]
        let delta = mutate(&value)
        if !value.isBottom { entries[key] = value }
        return GMap(delta.isBottom ? [:] : [key: delta])
    }

    public mutating func formJoin(_ other: GMap) {
        entries.merge(other.entries) { $0.join($1) }
    }

    public func isBelowOrEqual(_ other: GMap) -> Bool {
        entries.allSatisfy { $0.value.isBelowOrEqual(other[$0.key]) }
    }

    public var description: String {
        "GMap(" + entries.map { "\($0.key): \($0.value)" }.sorted().joined(separator: ", ") + ")"
    }
}

extension GMap: BinaryCodable where Key: BinaryCodable, Value: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) { entries.encode(to: &writer) }
    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        let entries = try [Key: Value](from: &reader)
        guard entries.values.allSatisfy({ !$0.isBottom }) else { throw .invalid("grow-only map with a bottom entry") }
        self.entries = entries
    }
}
