/// A grow-only set: join is union.
public struct GSet<Element: Hashable & Sendable & Codable>: Lattice, CustomStringConvertible {
    public private(set) var elements: Set<Element>

    public init(_ elements: Set<Element> = []) { self.elements = elements }

    public static var bottom: GSet { GSet() }

    public func contains(_ element: Element) -> Bool { elements.contains(element) }

    @discardableResult
    public mutating func insert(_ element: Element) -> GSet {
        elements.insert(element)
        return GSet([element])
    }

    public mutating func formJoin(_ other: GSet) { elements.formUnion(other.elements) }
    public func isBelowOrEqual(_ other: GSet) -> Bool { elements.isSubset(of: other.elements) }

    public var description: String { "GSet(\(elements.map { "\($0)" }.sorted()))" }
}

extension GSet: BinaryCodable where Element: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) { elements.encode(to: &writer) }
    public init(from reader: inout BinaryReader) throws(WireDecodingError) { elements = try Set(from: &reader) }
}

/// A two-phase set: a grow-only set of added elements and one of removed elements
/// (tombstones). A removed element can never be added again. Use `ORSet` unless that is what
/// you want; its tombstones are kept forever.
public struct TwoPhaseSet<Element: Hashable & Sendable & Codable>: Lattice, CustomStringConvertible {
    public private(set) var added: GSet<Element>
    public private(set) var removed: GSet<Element>

    public init() {
        added = GSet()
        removed = GSet()
    }

    public static var bottom: TwoPhaseSet { TwoPhaseSet() }

    public var elements: Set<Element> { added.elements.subtracting(removed.elements) }
    public func contains(_ element: Element) -> Bool { added.contains(element) && !removed.contains(element) }

    /// Adds `element`; adding an element that was removed has no visible effect.
    @discardableResult
    public mutating func insert(_ element: Element) -> TwoPhaseSet {
        var delta = TwoPhaseSet()
        delta.added = added.insert(element)
        return delta
    }

    /// Removes `element` for good. Only an element that is present can be removed (the 2P-set
    /// precondition); removing an absent one changes nothing and returns the bottom delta.
    @discardableResult
    public mutating func remove(_ element: Element) -> TwoPhaseSet {
        var delta = TwoPhaseSet()
        guard contains(element) else { return delta }
        delta.removed = removed.insert(element)
        return delta
    }

    public mutating func formJoin(_ other: TwoPhaseSet) {
        added.formJoin(other.added)
        removed.formJoin(other.removed)
    }

    public func isBelowOrEqual(_ other: TwoPhaseSet) -> Bool {
        added.isBelowOrEqual(other.added) && removed.isBelowOrEqual(other.removed)
    }

    public var description: String { "TwoPhaseSet(+\(added.elements.count) -\(removed.elements.count) \(elements.map { "\($0)" }.sorted()))" }
}

extension TwoPhaseSet: BinaryCodable where Element: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) {
        added.encode(to: &writer)
        removed.encode(to: &writer)
    }

    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        added = try GSet(from: &reader)
        removed = try GSet(from: &reader)
    }
}
