/// A multi-value register: a write replaces every value it has observed; concurrent writes are
/// all kept, and the next write that has seen them replaces them all (as in Dynamo and Riak,
/// here in the causal delta form of Almeida et al. 2018).
public struct MVRegister<Value: Sendable & Equatable & Codable>: CausalCRDT, CustomStringConvertible {
    public private(set) var causal: Causal<DotFun<Value>>

    public init(causal: Causal<DotFun<Value>>) { self.causal = causal }
    public init() { self = .bottom }

    /// The concurrent values, ordered by the dot of the write that produced each.
    public var values: [Value] {
        causal.store.entries.sorted { $0.key < $1.key }.map(\.value)
    }

    @discardableResult
    public mutating func write(_ value: Value, replica: ReplicaID) -> MVRegister {
        let dot = causal.nextDot(for: replica)
        let seen = causal.store.dots.union([dot])
        return apply(MVRegister(causal: Causal(store: DotFun([dot: value]), context: CausalContext(dots: seen))))
    }

    /// Removes every value this replica has seen; a concurrent write survives.
    @discardableResult
    public mutating func clear() -> MVRegister {
        apply(MVRegister(causal: Causal(store: .empty, context: CausalContext(dots: causal.store.dots))))
    }

    public var description: String { "MVRegister(\(values) ctx \(causal.context))" }
}

extension MVRegister: BinaryCodable where Value: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) { causal.encode(to: &writer) }
    public init(from reader: inout BinaryReader) throws(WireDecodingError) { causal = try Causal(from: &reader) }
}
