/// Checks the laws a `Lattice` and its delta mutators must obey, on sample states.
///
/// Used by Continuum's own property tests and available to users who write their own lattice
/// types. It returns violations as text instead of asserting, so that a test can also show
/// that it catches a broken lattice. The laws (Almeida et al. 2018, section 2):
/// - join is commutative, associative and idempotent, and bottom is its identity;
/// - `a ≤ b` exactly when `a ⊔ b == b`;
/// - a delta mutation only inflates: `before ≤ after`, and `before ⊔ delta == after`;
/// - joining all deltas, in any order and with duplicates, gives the join of all states.
public enum LatticeLaws {
    /// One delta mutation: the state before, the delta the mutator returned and the state after.
    public struct Mutation<L: Lattice>: Sendable {
        public var name: String
        public var before: L
        public var delta: L
        public var after: L

        public init(name: String, before: L, delta: L, after: L) {
            self.name = name
            self.before = before
            self.delta = delta
            self.after = after
        }
    }

    /// Laws over pairs and triples of `states` (every pair; triples bounded by `triplesMax`).
    public static func joinViolations<L: Lattice>(_ states: [L], triplesMax: Int = 400) -> [String] {
        var violations: [String] = []
        for a in states {
            if a.join(a) != a { violations.append("join not idempotent: \(a) ⊔ \(a) = \(a.join(a))") }
            if L.bottom.join(a) != a || a.join(.bottom) != a { violations.append("bottom not an identity for \(a)") }
            if !L.bottom.isBelowOrEqual(a) { violations.append("bottom not below \(a)") }
            if !a.isBelowOrEqual(a) { violations.append("order not reflexive at \(a)") }
            if a.isBottom != (a == .bottom) { violations.append("isBottom is \(a.isBottom) at \(a)") }
        }
        if !L.bottom.isBottom { violations.append("isBottom false at bottom") }
        for a in states {
            for b in states {
                let ab = a.join(b)
                if ab != b.join(a) { violations.append("join not commutative: \(a) ⊔ \(b) = \(ab) but \(b) ⊔ \(a) = \(b.join(a))") }
                if a.isBelowOrEqual(b) != (ab == b) {
                    violations.append("order disagrees with join: \(a) ≤ \(b) is \(a.isBelowOrEqual(b)) but \(a) ⊔ \(b) = \(ab)")
                }
                if !a.isBelowOrEqual(ab) || !b.isBelowOrEqual(ab) { violations.append("join not an upper bound of \(a) and \(b)") }
            }
        }
        var triples = 0
        outer: for a in states {
            for b in states {
                for c in states {
                    triples += 1
                    if triples > triplesMax { break outer }
                    if a.join(b).join(c) != a.join(b.join(c)) {
                        violations.append("join not associative for \(a), \(b), \(c)")
                    }
                }
            }
        }
        return violations
    }

    /// Laws of delta mutators: inflation and `before ⊔ delta == after`.
    public static func mutationViolations<L: Lattice>(_ mutations: [Mutation<L>]) -> [String] {
        var violations: [String] = []
        for mutation in mutations {
            if !mutation.before.isBelowOrEqual(mutation.after) {
                violations.append("\(mutation.name) did not inflate: \(mutation.before) -> \(mutation.after)")
            }
            if mutation.before.join(mutation.delta) != mutation.after {
                violations.append(
                    "\(mutation.name): before ⊔ delta = \(mutation.before.join(mutation.delta)) but after = \(mutation.after) (delta \(mutation.delta))"
                )
            }
        }
        return violations
    }

    /// Joining `deltas` in the given delivery order (which may repeat and reorder them) must
    /// give `expected`, the join of the replicas' states.
    public static func deliveryViolations<L: Lattice>(deltas: [L], deliveryOrder: [Int], expected: L) -> [String] {
        var state = L.bottom
        for index in deliveryOrder { state.formJoin(deltas[index]) }
        return state == expected ? [] : ["delivering \(deltas.count) deltas in order \(deliveryOrder) gave \(state), expected \(expected)"]
    }
}
