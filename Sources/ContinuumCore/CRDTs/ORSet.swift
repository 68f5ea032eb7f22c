/// An add-wins observed-remove set (Shapiro et al. 2011; delta form of Almeida et al. 2018).
///
/// Each add tags the element with a fresh dot; a remove drops the dots it has observed for the
/// element. A concurrent add carries a dot the remove did not see, so the add wins. Removed
/// elements leave no per-element tombstone: the causal context records the removed dots in
/// compact version-vector form.
public struct ORSet<Element: Hashable & Sendable & Codable>: CausalCRDT, CustomStringConvertible {
    public private(set) var causal: Causal<DotMap<Element, DotSet>>

    public init(causal: Causal<DotMap<Element, DotSet>>) { self.causal = causal }
    public init() { self = .bottom }

    public var elements: Set<Element> {
        @_specialize(where Element == String)
        get { Set(causal.store.entries.keys) }
    }
    @_specialize(where Element == String)
    public func contains(_ element: Element) -> Bool { causal.store.entries[element] != nil }
    public var count: Int {
        @_specialize(where Element == String)
        get { causal.store.entries.count }
    }

    @discardableResult
    @_specialize(where Element == String)
    public mutating func insert(_ element: Element, replica: ReplicaID) -> ORSet {
        let dot = causal.nextDot(for: replica)
        let seen = causal.store[element].dots.union([dot])
        return apply(ORSet(causal: Causal(store: DotMap([element: DotSet([dot])]), context: CausalContext(dots: seen))))
    }

    /// Removes the element as observed here; removing an absent element changes nothing and
    /// returns the bottom delta.
    @discardableResult
    @_specialize(where Element == String)
    public mutating func remove(_ element: Element) -> ORSet {
        apply(ORSet(causal: Causal(store: .empty, context: CausalContext(dots: causal.store[element].dots))))
    }

    /// Removes every element observed here.
    @discardableResult
    public mutating func removeAll() -> ORSet {
        apply(ORSet(causal: Causal(store: .empty, context: CausalContext(dots: causal.store.dots))))
    }

    public var description: String {
        "ORSet(\(causal.store.entries.map { "\($0.key)\($0.value)" }.sorted()) ctx \(causal.context))"
    }
}

extension ORSet: BinaryCodable where Element: BinaryCodable {
    @_specialize(where Element == String)
    public func encode(to writer: inout BinaryWriter) { causal.encode(to: &writer) }
    @_specialize(where Element == String)
    public init(from reader: inout BinaryReader) throws(WireDecodingError) { causal = try Causal(from: &reader) }
}
