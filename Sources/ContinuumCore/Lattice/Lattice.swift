/// A join semilattice with a least element: the value type of every `available` register.
///
/// State-based CRDTs (Shapiro et al. 2011) and delta-state CRDTs (Almeida, Shoker and Baquero
/// 2018) replicate by joining states: because `join` is commutative, associative and
/// idempotent, replicas that have seen the same updates are equal, whatever the order and
/// however often messages arrived. Every mutator of a Continuum CRDT is a *delta mutator*: it
/// changes the state and returns the delta it produced, a small state such that
/// `old.join(delta) == new`. Deltas, not whole states, are what anti-entropy ships.
///
/// Conforming types must keep one representation per lattice element (so that `==` is lattice
/// equality); `LatticeLaws` checks the laws on sample states.
public protocol Lattice: Sendable, Equatable, Codable {
    /// The least element: `bottom.join(x) == x` for every `x`.
    static var bottom: Self { get }

    /// Joins `other` into `self` (least upper bound).
    mutating func formJoin(_ other: Self)

    /// The partial order: `self ≤ other`, equivalently `self.join(other) == other`.
    /// Implementations compute it directly; `LatticeLaws` checks that the two agree.
    func isBelowOrEqual(_ other: Self) -> Bool

    /// Joins `other` into `self` and says whether `self` changed. The default compares with a
    /// copy; causal CRDTs answer at the cost of `other` (see `DotMap.formJoin`).
    mutating func formJoinReportingChange(_ other: Self) -> Bool

    /// Whether this is the least element. The default compares with `bottom`; a type can
    /// answer without building one (a requirement, so that a boxed value answers as its type).
    var isBottom: Bool { get }
}

extension Lattice {
    public mutating func formJoinReportingChange(_ other: Self) -> Bool {
        let before = self
        formJoin(other)
        return self != before
    }

    /// The least upper bound of `self` and `other`.
    public func join(_ other: Self) -> Self {
        var result = self
        result.formJoin(other)
        return result
    }

    public var isBottom: Bool { self == .bottom }

    /// `self` is strictly below `other` in the lattice order.
    public func isStrictlyBelow(_ other: Self) -> Bool { self != other && isBelowOrEqual(other) }

    /// The join of all `states` (bottom for none).
    public static func joinAll(_ states: some Sequence<Self>) -> Self {
        var result = Self.bottom
        for state in states { result.formJoin(state) }
        return result
    }
}
