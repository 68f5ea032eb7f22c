import ContinuumCore
import Testing

@testable import ContinuumSimulation

/// The linearizability checker on hand-written histories, and on generated ones that it must
/// accept or, once corrupted, reject.
@Suite struct LinearizabilityCheckerTests {
    /// A compact way to write histories: (process, type, f, value, time), all on key "x".
    func history(_ rows: [(Int, HistoryEvent.Kind, String, HistoryValue, Int64)]) -> [HistoryEvent] {
        rows.map { HistoryEvent(process: $0.0, type: $0.1, f: $0.2, key: "x", value: $0.3, time: $0.4) }
    }

    @Test func theDesignDocumentsExampleIsLinearizable() throws {
        let text = """
            {"process":3,"type":"invoke","f":"write","key":"x","value":5,"time":1200}
            {"process":1,"type":"invoke","f":"read","key":"x","value":null,"time":1300}
            {"process":3,"type":"ok","f":"write","key":"x","value":5,"time":1450}
            {"process":1,"type":"ok","f":"read","key":"x","value":5,"time":1500}
            """
        #expect(LinearizabilityChecker.check(try History.parse(text)) == .linearizable)
    }

    @Test func aStaleReadAfterACompletedWriteIsCaught() {
        let events = history([
            (1, .invoke, "write", .int(1), 0), (1, .ok, "write", .int(1), 10),
            (2, .invoke, "read", .null, 20), (2, .ok, "read", .null, 30),
        ])
        guard case let .notLinearizable(key, explanation) = LinearizabilityChecker.check(events) else {
            Issue.record("a stale read was accepted")
            return
        }
        #expect(key == "x")
        #expect(explanation.first?.contains("read null -> null") == true)
    }

    @Test func concurrentOperationsMayTakeEitherOrder() {
        let events = history([
            (1, .invoke, "write", .int(1), 0), (2, .invoke, "read", .null, 5),
            (2, .ok, "read", .null, 15), (1, .ok, "write", .int(1), 20),
            (3, .invoke, "read", .null, 25), (3, .ok, "read", .int(1), 30),
        ])
        #expect(LinearizabilityChecker.check(events) == .linearizable)
    }

    @Test func indeterminateWritesMayOrMayNotHaveHappened() {
        let seen = history([
            (1, .invoke, "write", .int(7), 0), (1, .info, "write", .int(7), 10),
            (2, .invoke, "read", .null, 50), (2, .ok, "read", .int(7), 60),
        ])
        let unseen = history([
            (1, .invoke, "write", .int(7), 0), (1, .info, "write", .int(7), 10),
            (2, .invoke, "read", .null, 50), (2, .ok, "read", .null, 60),
        ])
        #expect(LinearizabilityChecker.check(seen) == .linearizable)
        #expect(LinearizabilityChecker.check(unseen) == .linearizable)
        // A read cannot see an indeterminate write before the write was invoked.
        let tooEarly = history([
            (2, .invoke, "read", .null, 0), (2, .ok, "read", .int(7), 5),
            (1, .invoke, "write", .int(7), 10), (1, .info, "write", .int(7), 20),
        ])
        #expect(LinearizabilityChecker.check(tooEarly) != .linearizable)
    }

    @Test func aFailedWriteMustNotBeSeen() {
        let events = history([
            (1, .invoke, "write", .int(3), 0), (1, .fail, "write", .int(3), 10),
            (2, .invoke, "read", .null, 20), (2, .ok, "read", .int(3), 30),
        ])
        #expect(LinearizabilityChecker.check(events) != .linearizable)
    }

    @Test func twoSuccessfulCompareAndSetsFromTheSameValueAreCaught() {
        let events = history([
            (1, .invoke, "cas", .array([.null, .int(1)]), 0), (1, .ok, "cas", .bool(true), 10),
            (2, .invoke, "cas", .array([.null, .int(2)]), 20), (2, .ok, "cas", .bool(true), 30),
        ])
        #expect(LinearizabilityChecker.check(events) != .linearizable)
        let fine = history([
            (1, .invoke, "cas", .array([.null, .int(1)]), 0), (1, .ok, "cas", .bool(true), 10),
            (2, .invoke, "cas", .array([.null, .int(2)]), 20), (2, .ok, "cas", .bool(false), 30),
            (3, .invoke, "read", .null, 40), (3, .ok, "read", .int(1), 50),
        ])
        #expect(LinearizabilityChecker.check(fine) == .linearizable)
    }

    @Test func aTinyBudgetAnswersUnknownNotAGuess() {
        var rows: [(Int, HistoryEvent.Kind, String, HistoryValue, Int64)] = []
        for process in 0..<12 { rows.append((process, .invoke, "write", .int(Int64(process)), Int64(process))) }
        for process in 0..<12 { rows.append((process, .ok, "write", .int(Int64(process)), Int64(100 + process))) }
        rows.append((99, .invoke, "read", .null, 200))
        rows.append((99, .ok, "read", .int(-1), 210))
        guard case .unknown = LinearizabilityChecker.check(history(rows), searchStepsMax: 50) else {
            Issue.record("expected unknown")
            return
        }
        #expect(LinearizabilityChecker.check(history(rows)) != .linearizable)
    }

    @Test func malformedHistoriesAreUnknown() {
        let events = history([(1, .ok, "write", .int(1), 10)])
        guard case .unknown = LinearizabilityChecker.check(events) else {
            Issue.record("an unmatched completion was accepted")
            return
        }
    }

    /// Histories made by a true register with random concurrency are accepted; changing one
    /// read's value is caught in most of them.
    @Test func generatedHistoriesAreAcceptedAndCorruptedOnesCaught() {
        var caught = 0
        for seed in 0..<50 as Range<UInt64> {
            var random = DeterministicRandom(seed: seed)
            var events = Self.generate(&random)
            #expect(LinearizabilityChecker.check(events) == .linearizable, "seed \(seed)")
            let reads = events.indices.filter { events[$0].type == .ok && events[$0].f == "read" }
            guard let victim = reads.randomElement(using: &random) else { continue }
            events[victim].value = .int(999)
            if LinearizabilityChecker.check(events) != .linearizable { caught += 1 }
        }
        #expect(caught >= 45, "caught \(caught) of 50 corrupted histories")
    }

    /// Four processes on three keys; each operation takes effect at a random point inside its
    /// interval on a real register, some writes end indeterminate.
    static func generate(_ random: inout DeterministicRandom) -> [HistoryEvent] {
        struct Pending {
            var process: Int
            var key: String
            var f: String
            var input: HistoryValue
            var effect: Int64
            var end: Int64
        }
        var registers: [String: HistoryValue] = [:]
        var timeline: [(Int64, Int, HistoryEvent?)] = []
        var pending: [Pending] = []
        var clock: [Int64] = [0, 0, 0, 0]  // each of four clients issues one operation at a time
        for _ in 0..<30 {
            let process = Int.random(in: 0..<4, using: &random)
            let start = clock[process] + Int64.random(in: 1...20, using: &random)
            let effect = start + Int64.random(in: 0...30, using: &random)
            let end = effect + Int64.random(in: 0...30, using: &random)
            clock[process] = end
            let key = ["a", "b", "c"].randomElement(using: &random)!
            let f = ["read", "write", "cas"].randomElement(using: &random)!
            let input: HistoryValue = switch f {
            case "write": .int(Int64.random(in: 0...3, using: &random))
            case "cas": .array([Bool.random(using: &random) ? .null : .int(Int64.random(in: 0...3, using: &random)), .int(Int64.random(in: 0...3, using: &random))])
            default: .null
            }
            pending.append(Pending(process: process, key: key, f: f, input: input, effect: effect, end: end))
        }
        // Apply effects in effect-time order to find each output.
        var outputs: [Int: HistoryValue] = [:]
        for (index, operation) in pending.enumerated().sorted(by: { ($0.element.effect, $0.offset) < ($1.element.effect, $1.offset) }) {
            let current = registers[operation.key] ?? .null
            switch operation.f {
            case "write":
                registers[operation.key] = operation.input
                outputs[index] = operation.input
            case "cas":
                guard case let .array(pair) = operation.input else { continue }
                let swaps = current == pair[0]
                if swaps { registers[operation.key] = pair[1] }
                outputs[index] = .bool(swaps)
            default:
                outputs[index] = current
            }
        }
        // Every operation gets its own process number, so no process overlaps itself.
        for (index, operation) in pending.enumerated() {
            let start = operation.effect - Int64.random(in: 0...10, using: &random)
            let indeterminate = operation.f != "read" && random.chance(0.15)
            timeline.append((start, index * 2, HistoryEvent(process: index, type: .invoke, f: operation.f, key: operation.key, value: operation.input, time: start)))
            let kind: HistoryEvent.Kind = indeterminate ? .info : .ok
            let value = indeterminate ? operation.input : outputs[index]!
            timeline.append((operation.end, index * 2 + 1, HistoryEvent(process: index, type: kind, f: operation.f, key: operation.key, value: value, time: operation.end)))
        }
        return timeline.sorted { ($0.0, $0.1) < ($1.0, $1.1) }.compactMap(\.2)
    }
}
