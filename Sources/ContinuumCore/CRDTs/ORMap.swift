/// An observed-remove map whose values are causal CRDTs (`EWFlag`, `MVRegister`, `ORSet`, or
/// another `ORMap`), all sharing the map's causal context (Almeida et al. 2018, section 5.3).
///
/// Updating a key applies the value's own delta mutator inside the map; removing a key removes
/// the dots observed under it, so the value is reset as observed, while a concurrent update
/// under that key survives (its dots were not observed). Nothing of a removed value lingers.
public struct ORMap<Key: Hashable & Sendable & Codable, Value: CausalCRDT>: CausalCRDT, CustomStringConvertible {
    public private(set) var causal: Causal<DotMap<Key, Value.Store>>

    public init(causal: Causal<DotMap<Key, Value.Store>>) { self.causal = causal }
    public init() { self = .bottom }

    public var keys: Set<Key> { Set(causal.store.entries.keys) }
    public var count: Int { causal.store.entries.count }

    /// The value under `key` (nil when absent), viewed with the map's context.
    public subscript(key: Key) -> Value? {
        guard let store = causal.store.entries[key] else { return nil }
        return Value(causal: Causal(store: store, context: causal.context))
    }

    /// Applies a delta mutator to the value under `key` (starting from bottom when absent) and
    /// returns the map delta. `mutate` must return the delta of the value's mutator.
    @discardableResult
    public mutating func update(_ key: Key, _ mutate: (inout Value) -> Value) -> ORMap {
        var value = Value(causal: Causal(store: causal.store[key], context: causal.context))
        let valueDelta = mutate(&value).causal
        let store = valueDelta.store.isEmpty ? DotMap<Key, Value.Store>() : DotMap([key: valueDelta.store])
        return apply(ORMap(causal: Causal(store: store, context: valueDelta.context)))
    }

    /// Removes `key` as observed here; absent keys give the bottom delta.
    @discardableResult
    public mutating func remove(_ key: Key) -> ORMap {
        apply(ORMap(causal: Causal(store: .empty, context: CausalContext(dots: causal.store[key].dots))))
    }

    public var description: String {
        "ORMap(\(causal.store.entries.map { "\($0.key): \(Value(causal: Causal(store: $0.value, context: causal.context)))" }.sorted()))"
    }
}

extension ORMap: BinaryCodable where Key: BinaryCodable, Value.Store: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) { causal.encode(to: &writer) }
    public init(from reader: inout BinaryReader) throws(WireDecodingError) { causal = try Causal(from: &reader) }
}
