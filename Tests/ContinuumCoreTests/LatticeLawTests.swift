import ContinuumCore
import ContinuumSimulation
import PropertyBased
import Testing

/// Property tests of the lattice laws (Almeida et al. 2018, section 2) for every CRDT type:
/// join commutative, associative, idempotent; the order agrees with join; mutators inflate and
/// `before ⊔ delta == after`; deltas merged in any order and with duplicates give the same
/// state; both encodings round-trip.
@Suite struct LatticeLawTests {
    static let scripts = Gen<UInt64>.value(in: 0...1_000_000).array(of: 1...40)

    @Test(arguments: CRDTCatalog.names)
    func lawsHold(crdt: String) async {
        let operations = CRDTCatalog.named(crdt)!
        await propertyCheck(count: 150, input: Self.scripts) { codes in
            let violations = LawScenario.violations(operations, codes)
            #expect(violations.isEmpty, "\(crdt): \(violations.prefix(3).joined(separator: "\n"))")
        }
    }

    /// The escrow invariant: however replicas decrement and transfer concurrently and merge,
    /// no replica's state ever shows fewer than zero units.
    @Test func boundedCounterNeverGoesNegative() async {
        await propertyCheck(count: 300, input: Self.scripts) { codes in
            let outcome = LawScenario.play(BoundedCounterOperations.self, codes)
            for state in outcome.finalStates + [BoundedCounter.joinAll(outcome.finalStates)] {
                #expect(state.increments.value >= state.decrements.value, "oversold: \(state)")
            }
        }
    }

    // MARK: - The checker catches broken lattices

    @Test func nonIdempotentJoinIsCaught() {
        // Increment at r1, then merge r1 into itself: a summing join doubles the count.
        let codes: [UInt64] = [0, 12]
        let violations = LawScenario.violations(SummingCounterOperations.self, codes)
        #expect(violations.contains { $0.hasPrefix("join not idempotent") }, "\(violations)")
    }

    @Test func orderThatDisagreesWithJoinIsCaught() {
        let violations = LawScenario.violations(BackwardOrderOperations.self, [0, 15, 30])
        #expect(violations.contains { $0.hasPrefix("order disagrees with join") }, "\(violations)")
    }

    @Test func deltaThatIsNotTheChangeIsCaught() {
        let violations = LawScenario.violations(WrongDeltaOperations.self, [0, 15])
        #expect(violations.contains { $0.contains("before ⊔ delta") }, "\(violations)")
    }

    @Test func randomScriptsFindTheBrokenJoin() async {
        // Not a hand-picked script: most random runs expose the summing join somewhere.
        var caught = 0
        for seed in 0..<20 as Range<UInt64> {
            var random = DeterministicRandom(seed: seed)
            let codes = (0..<30).map { _ in UInt64.random(in: 0...1_000_000, using: &random) }
            if !LawScenario.violations(SummingCounterOperations.self, codes).isEmpty { caught += 1 }
        }
        #expect(caught >= 18, "only \(caught) of 20 random scripts exposed the broken join")
    }
}

/// A grow-only counter whose join adds instead of taking the maximum: commutative and
/// associative, but not idempotent, so duplicated messages double-count.
struct SummingCounter: Lattice, BinaryCodable {
    var counts: [ReplicaID: UInt64] = [:]
    static var bottom: SummingCounter { SummingCounter() }
    mutating func formJoin(_ other: SummingCounter) { counts.merge(other.counts, uniquingKeysWith: +) }
    func isBelowOrEqual(_ other: SummingCounter) -> Bool { counts.allSatisfy { other.counts[$0.key, default: 0] >= $0.value } }
    func encode(to writer: inout BinaryWriter) { counts.encode(to: &writer) }
    init(counts: [ReplicaID: UInt64] = [:]) { self.counts = counts }
    init(from reader: inout BinaryReader) throws(WireDecodingError) { counts = try [ReplicaID: UInt64](from: &reader) }
}

enum SummingCounterOperations: CRDTOperations {
    static let name = "broken-summing-counter"
    static func apply(_ code: UInt64, to state: inout SummingCounter, replica: ReplicaID, physical: UInt64) -> (label: String, delta: SummingCounter) {
        state.counts[replica, default: 0] += 1
        return ("increment", SummingCounter(counts: [replica: 1]))
    }
}

/// A max register whose order is reversed: its ≤ claims the larger value is below.
struct BackwardOrder: Lattice, BinaryCodable {
    var register = MaxRegister<UInt64>()
    static var bottom: BackwardOrder { BackwardOrder() }
    mutating func formJoin(_ other: BackwardOrder) { register.formJoin(other.register) }
    func isBelowOrEqual(_ other: BackwardOrder) -> Bool {
        guard let mine = register.value, let theirs = other.register.value else { return register.value == nil }
        return mine >= theirs
    }
    func encode(to writer: inout BinaryWriter) { register.encode(to: &writer) }
    init() {}
    init(from reader: inout BinaryReader) throws(WireDecodingError) { register = try MaxRegister(from: &reader) }
}

enum BackwardOrderOperations: CRDTOperations {
    static let name = "broken-backward-order"
    static func apply(_ code: UInt64, to state: inout BackwardOrder, replica: ReplicaID, physical: UInt64) -> (label: String, delta: BackwardOrder) {
        var delta = BackwardOrder()
        delta.register = state.register.write(code + 1)
        return ("write \(code + 1)", delta)
    }
}

/// A grow-only set whose mutator returns the element it did not add.
enum WrongDeltaOperations: CRDTOperations {
    static let name = "broken-wrong-delta"
    static func apply(_ code: UInt64, to state: inout GSet<UInt64>, replica: ReplicaID, physical: UInt64) -> (label: String, delta: GSet<UInt64>) {
        state.insert(code)
        return ("insert \(code)", GSet([code + 1]))
    }
}
