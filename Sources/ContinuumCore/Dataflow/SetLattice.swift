/// A lattice whose value is read as a set of elements: the inputs and outputs of the set
/// combinators of Lasp (`map`, `filter`, `union`, `intersection`, `product`).
public protocol SetLattice: Lattice {
    associatedtype Element: Hashable & Sendable & Codable
    var elements: Set<Element> { get }
}

extension GSet: SetLattice {}
extension ORSet: SetLattice {}
extension TwoPhaseSet: SetLattice {}

extension ORSet {
    /// The OR-set of `transform(e)` for every element `e`, each output element tagged with the
    /// dots of the inputs that map to it, under the same causal context. Monotone: if `a ≤ b`
    /// then `a.mapElements(f) ≤ b.mapElements(f)`, so a mapped register grows as its input
    /// grows, and an element removed from the input leaves the output exactly when every
    /// input element mapping to it has been removed.
    public func mapElements<Output: Hashable & Sendable & Codable>(_ transform: (Element) -> Output) -> ORSet<Output> {
        var entries: [Output: DotSet] = [:]
        for (element, dots) in causal.store.entries {
            entries[transform(element), default: DotSet()].dots.formUnion(dots.dots)
        }
        return ORSet<Output>(causal: Causal(store: DotMap(entries), context: causal.context))
    }

    /// The elements that satisfy `isIncluded`, with their dots, under the same context. Monotone.
    public func filterElements(_ isIncluded: (Element) -> Bool) -> ORSet {
        ORSet(causal: Causal(store: DotMap(causal.store.entries.filter { isIncluded($0.key) }), context: causal.context))
    }
}

extension GSet {
    public func mapElements<Output: Hashable & Sendable & Codable>(_ transform: (Element) -> Output) -> GSet<Output> {
        GSet<Output>(Set(elements.map(transform)))
    }

    public func filterElements(_ isIncluded: (Element) -> Bool) -> GSet { GSet(elements.filter(isIncluded)) }
}

/// The union of two set lattices. Its lattice is the product of its inputs (joined side by
/// side), so it is monotone in both and chains: `Union<Union<A, B>, C>`.
public struct Union<Left: SetLattice, Right: SetLattice>: SetLattice where Left.Element == Right.Element {
    public var left: Left
    public var right: Right

    public init(_ left: Left, _ right: Right) {
        self.left = left
        self.right = right
    }

    public static var bottom: Union { Union(.bottom, .bottom) }
    public var elements: Set<Left.Element> { left.elements.union(right.elements) }
    public mutating func formJoin(_ other: Union) {
        left.formJoin(other.left)
        right.formJoin(other.right)
    }
    public func isBelowOrEqual(_ other: Union) -> Bool { left.isBelowOrEqual(other.left) && right.isBelowOrEqual(other.right) }
}

/// The intersection of two set lattices, over the product of its inputs.
public struct Intersection<Left: SetLattice, Right: SetLattice>: SetLattice where Left.Element == Right.Element {
    public var left: Left
    public var right: Right

    public init(_ left: Left, _ right: Right) {
        self.left = left
        self.right = right
    }

    public static var bottom: Intersection { Intersection(.bottom, .bottom) }
    public var elements: Set<Left.Element> { left.elements.intersection(right.elements) }
    public mutating func formJoin(_ other: Intersection) {
        left.formJoin(other.left)
        right.formJoin(other.right)
    }
    public func isBelowOrEqual(_ other: Intersection) -> Bool { left.isBelowOrEqual(other.left) && right.isBelowOrEqual(other.right) }
}

/// A pair of elements, the element of a `Product`.
public struct Pair<First: Hashable & Sendable & Codable, Second: Hashable & Sendable & Codable>: Hashable, Sendable, Codable, CustomStringConvertible {
    public var first: First
    public var second: Second

    public init(_ first: First, _ second: Second) {
        self.first = first
        self.second = second
    }

    public var description: String { "(\(first), \(second))" }
}

/// The Cartesian product of two set lattices, over the product of its inputs.
public struct Product<Left: SetLattice, Right: SetLattice>: SetLattice {
    public var left: Left
    public var right: Right

    public init(_ left: Left, _ right: Right) {
        self.left = left
        self.right = right
    }

    public static var bottom: Product { Product(.bottom, .bottom) }
    public var elements: Set<Pair<Left.Element, Right.Element>> {
        var result = Set<Pair<Left.Element, Right.Element>>()
        let rights = right.elements
        for first in left.elements { for second in rights { result.insert(Pair(first, second)) } }
        return result
    }
    public mutating func formJoin(_ other: Product) {
        left.formJoin(other.left)
        right.formJoin(other.right)
    }
    public func isBelowOrEqual(_ other: Product) -> Bool { left.isBelowOrEqual(other.left) && right.isBelowOrEqual(other.right) }
}

extension LatticeLaws {
    /// A function between lattices must be monotone to define a derived register: as the input
    /// grows, the output must not shrink. Checked on every ordered pair of `samples`.
    public static func monotonicityViolations<Input: Lattice, Output: Lattice>(
        _ function: (Input) -> Output, samples: [Input]
    ) -> [String] {
        var violations: [String] = []
        let outputs = samples.map(function)
        for (i, a) in samples.enumerated() {
            for (j, b) in samples.enumerated() where a.isBelowOrEqual(b) && !outputs[i].isBelowOrEqual(outputs[j]) {
                violations.append("not monotone: \(a) ≤ \(b) but f gives \(outputs[i]) and \(outputs[j])")
            }
        }
        return violations
    }
}

// MARK: - Wire encoding of the combinator outputs

extension Union: BinaryCodable where Left: BinaryCodable, Right: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) {
        left.encode(to: &writer)
        right.encode(to: &writer)
    }
    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        self.init(try Left(from: &reader), try Right(from: &reader))
    }
}

extension Intersection: BinaryCodable where Left: BinaryCodable, Right: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) {
        left.encode(to: &writer)
        right.encode(to: &writer)
    }
    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        self.init(try Left(from: &reader), try Right(from: &reader))
    }
}

extension Product: BinaryCodable where Left: BinaryCodable, Right: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) {
        left.encode(to: &writer)
        right.encode(to: &writer)
    }
    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        self.init(try Left(from: &reader), try Right(from: &reader))
    }
}
