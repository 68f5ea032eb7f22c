/// An enable-wins flag: concurrent enable and disable resolve to enabled (Almeida et al. 2018).
/// Enabling tags the flag with a fresh dot; disabling removes the dots it has observed, so a
/// concurrent enable, whose dot it has not seen, survives.
public struct EWFlag: CausalCRDT, CustomStringConvertible {
    public private(set) var causal: Causal<DotSet>

    public init(causal: Causal<DotSet>) { self.causal = causal }
    public init() { self = .bottom }

    public var isEnabled: Bool { !causal.store.isEmpty }

    @discardableResult
    public mutating func enable(replica: ReplicaID) -> EWFlag {
        let dot = causal.nextDot(for: replica)
        return apply(EWFlag(causal: Causal(store: DotSet([dot]), context: CausalContext(dots: causal.store.dots.union([dot])))))
    }

    @discardableResult
    public mutating func disable() -> EWFlag {
        apply(EWFlag(causal: Causal(store: .empty, context: CausalContext(dots: causal.store.dots))))
    }

    public var description: String { "EWFlag(\(isEnabled) \(causal.store) ctx \(causal.context))" }
}

extension EWFlag: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) { causal.encode(to: &writer) }
    public init(from reader: inout BinaryReader) throws(WireDecodingError) { causal = try Causal(from: &reader) }
}
