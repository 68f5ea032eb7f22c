import ContinuumCore
import ContinuumSimulation
import Foundation

/// Turns a list of numbers into a run of three replicas that mutate and merge, and checks every
/// lattice law on what the run produced. Shared by the law tests of every CRDT type; the
/// numbers come from the property-test generator, so a failing run shrinks to a short one.
///
/// Each number `c` acts at replica `c % 3`: four times in five it applies operation `c / 15`
/// there, else it merges replica `(c / 15) % 3` into it.
enum LawScenario {
    static let replicas = 3

    struct Outcome<L: Lattice> {
        var finalStates: [L]
        var samples: [L]
        var mutations: [LatticeLaws.Mutation<L>]
        var deltas: [L]
    }

    static func play<Operations: CRDTOperations>(_: Operations.Type, _ codes: [UInt64]) -> Outcome<Operations.State> {
        typealias State = Operations.State
        var states = [State](repeating: .bottom, count: replicas)
        var samples: [State] = [.bottom]
        var seen: Set<[UInt8]> = [State.bottom.binaryEncoded()]
        var mutations: [LatticeLaws.Mutation<State>] = []
        var deltas: [State] = []
        for (step, code) in codes.enumerated() {
            let target = Int(code % UInt64(replicas))
            let argument = code / 15
            if (code / 3) % 5 < 4 {
                let before = states[target]
                // Replica clocks are skewed against each other, to exercise the HLC.
                let physical = UInt64(step) * 1_000 + UInt64(target) * 3_500
                let (label, delta) = Operations.apply(
                    argument, to: &states[target], replica: ReplicaID(UInt64(target + 1)), physical: physical)
                mutations.append(.init(name: "step \(step) r\(target + 1) \(label)", before: before, delta: delta, after: states[target]))
                deltas.append(delta)
            } else {
                states[target].formJoin(states[Int(argument % UInt64(replicas))])
            }
            if samples.count < 12, seen.insert(states[target].binaryEncoded()).inserted { samples.append(states[target]) }
        }
        return Outcome(finalStates: states, samples: samples, mutations: mutations, deltas: deltas)
    }

    /// Every law violation the run shows, as text.
    static func violations<Operations: CRDTOperations>(_ operations: Operations.Type, _ codes: [UInt64]) -> [String] {
        let outcome = play(operations, codes)
        var violations = LatticeLaws.joinViolations(outcome.samples)
        violations += LatticeLaws.mutationViolations(outcome.mutations)
        // Every delta, shuffled and with duplicates, joined into bottom gives the join of all replicas.
        var random = DeterministicRandom(seed: codes.reduce(17) { $0 &* 31 &+ $1 })
        let indices = Array(outcome.deltas.indices)
        let order = (indices + indices.filter { _ in random.chance(0.3) }).shuffled(using: &random)
        violations += LatticeLaws.deliveryViolations(
            deltas: outcome.deltas, deliveryOrder: order, expected: Operations.State.joinAll(outcome.finalStates))
        violations += encodingViolations(outcome.samples + outcome.deltas)
        return violations
    }

    /// The binary and the JSON encoding round-trip every state.
    static func encodingViolations<L: Lattice & BinaryCodable>(_ states: [L]) -> [String] {
        var violations: [String] = []
        for state in states {
            let bytes = state.binaryEncoded()
            do {
                let decoded = try L(binary: bytes)
                if decoded != state { violations.append("binary round trip changed \(state) into \(decoded)") }
            } catch {
                violations.append("binary decoding of \(state) failed: \(error)")
            }
            do {
                let json = try JSONEncoder().encode(state)
                let decoded = try JSONDecoder().decode(L.self, from: json)
                if decoded != state { violations.append("JSON round trip changed \(state) into \(decoded)") }
            } catch {
                violations.append("JSON round trip of \(state) failed: \(error)")
            }
        }
        return violations
    }
}
