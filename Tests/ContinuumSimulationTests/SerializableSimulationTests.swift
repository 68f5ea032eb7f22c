import ContinuumCore
import ContinuumProtocols
import Testing

@testable import ContinuumSimulation

/// The Austere protocol under the simulator, and the list-append checker.
@Suite struct SerializableSimulationTests {
    typealias T = ListAppendChecker.Transaction

    @Test func austereIsStrictlySerializableUnderSwarmFaults() throws {
        let result = try SimulationCampaign.run(.init(workload: "serializable", nodes: 3, seeds: Array(1...6)))
        for failure in result.failures {
            Issue.record("\(failure.report.violations.joined(separator: "\n"))\nreplay: \(failure.replayCommand)")
        }
        #expect(result.summary.last == "seeds: 6, violations: 0")
        #expect(result.reports.allSatisfy { $0.updatesAcknowledged > 0 })
        #expect(result.reports.reduce(0) { $0 + $1.updatesAcknowledged } > 100)
    }

    /// Fresh seed 30595: a coordinator restarted, drew transaction t1.1 again while the old
    /// t1.1 (it crashed between prepare and decision) was still prepared at every replica; the
    /// replicas voted yes for the new writes and committed the old ones. The acknowledged appends
    /// never arrived, and bounded reads certified staleness 0 without them. Identifiers now
    /// carry a durable incarnation, and a prepare with other writes under a prepared identifier
    /// is refused.
    @Test func aRestartedCoordinatorNeverReusesAPreparedIdentifier() {
        let report = SerializableWorkload.run(nodes: 3, seed: 30595)
        #expect(report.violations.isEmpty, "\(report.violations)")
        #expect(report.updatesAcknowledged > 100)
    }

    @Test(arguments: PlantedTransactionBug.allCases)
    func plantedTransactionBugIsCaught(bug: PlantedTransactionBug) throws {
        let settings = SimulationCampaign.Settings(workload: "serializable", nodes: 3, seeds: Array(1...4),
                                                   plantedBug: bug.rawValue, determinismCheck: false)
        let result = try SimulationCampaign.run(settings)
        let failure = try #require(result.failures.first, "planted bug \(bug.rawValue) went unnoticed in 4 seeds")
        print("planted \(bug.rawValue): \(failure.report.violations[0])\n  replay: \(failure.replayCommand)")
        #expect(failure.replayCommand.hasSuffix("--planted-bug \(bug.rawValue)"))
    }

    @Test func aHandWrittenCycleIsFound() {
        // T1 appends 1 to x and reads y empty; T2 appends 2 to y and reads x empty: each missed
        // the other's append (write skew), so each must precede the other: a cycle.
        let history = [
            T(id: 1, operations: [.append(key: "x", value: 1), .read(key: "y", observed: [])], invoked: 0, completed: 10, committed: true),
            T(id: 2, operations: [.append(key: "y", value: 2), .read(key: "x", observed: [])], invoked: 0, completed: 10, committed: true),
            T(id: 3, operations: [.read(key: "x", observed: [1]), .read(key: "y", observed: [2])], invoked: 20, completed: 30, committed: true),
        ]
        let violations = ListAppendChecker.violations(history)
        #expect(violations.contains { $0.hasPrefix("dependency cycle: T1 → T2 → T1") || $0.hasPrefix("dependency cycle: T2 → T1 → T2") }, "\(violations)")
    }

    @Test func realTimeOrderIsEnforced() {
        // T1 appended and committed before T2 began, yet T2 did not see it: a stale read.
        let history = [
            T(id: 1, operations: [.append(key: "x", value: 1)], invoked: 0, completed: 10, committed: true),
            T(id: 2, operations: [.read(key: "x", observed: [])], invoked: 20, completed: 30, committed: true),
            T(id: 3, operations: [.read(key: "x", observed: [1])], invoked: 40, completed: 50, committed: true),
        ]
        #expect(!ListAppendChecker.violations(history).isEmpty)
    }

    @Test func serialHistoriesPassAndAbortedReadsAreCaught() {
        let serial = [
            T(id: 1, operations: [.append(key: "x", value: 1), .read(key: "x", observed: [1])], invoked: 0, completed: 10, committed: true),
            T(id: 2, operations: [.read(key: "x", observed: [1]), .append(key: "x", value: 2)], invoked: 5, completed: 20, committed: true),
            T(id: 3, operations: [.read(key: "x", observed: [1, 2])], invoked: 30, completed: 40, committed: true),
        ]
        #expect(ListAppendChecker.violations(serial).isEmpty)
        let dirty = [
            T(id: 1, operations: [.append(key: "x", value: 1)], invoked: 0, completed: 10, committed: false),
            T(id: 2, operations: [.read(key: "x", observed: [1])], invoked: 20, completed: 30, committed: true),
        ]
        #expect(ListAppendChecker.violations(dirty).contains { $0.contains("aborted transaction 1") })
        let incompatible = [
            T(id: 1, operations: [.append(key: "x", value: 1)], invoked: 0, completed: 10, committed: true),
            T(id: 2, operations: [.append(key: "x", value: 2)], invoked: 0, completed: 10, committed: true),
            T(id: 3, operations: [.read(key: "x", observed: [1, 2])], invoked: 20, completed: 30, committed: true),
            T(id: 4, operations: [.read(key: "x", observed: [2])], invoked: 20, completed: 30, committed: true),
        ]
        #expect(ListAppendChecker.violations(incompatible).contains { $0.contains("not a prefix") })
    }

    /// Decisions are forgotten past `decisionsRememberedMax` once nobody can ask about them.
    @Test func rememberedDecisionsStayBounded() {
        var faults = FaultSettings.none
        faults.linkLatencyMax = .milliseconds(2)
        let simulation = Simulation<TransactionInstance>(nodeCount: 3, seed: 2, faults: faults,
                                                         configuration: .init(decisionsRememberedMax: 5))
        let outcomes = Outcomes()
        simulation.onOutput = { node, output in
            switch output {
            case let .locked(handle, _, _):
                outcomes.locked.insert(handle)
                simulation.scheduleCommand(.commit(handle: handle, [TransactionWrite(key: "k", value: .int(Int64(handle)))]), to: node, at: simulation.now)
            case let .committed(handle): outcomes.results[handle] = (true, simulation.now)
            case let .aborted(handle, _, _): outcomes.results[handle] = (false, simulation.now)
            case .boundedReadCompleted: break
            }
        }
        for handle in 1...20 as ClosedRange<UInt64> {
            let time = Int64(handle) * 100_000_000
            simulation.scheduleCommand(.begin(handle: handle, latency: .milliseconds(80)), to: NodeID(handle % 3 + 1), at: time)
            simulation.scheduleCommand(.lock(handle: handle, step: 1, [LockRequest(key: "k", mode: .exclusive)]), to: NodeID(handle % 3 + 1), at: time)
        }
        simulation.run(until: 4_000_000_000)
        #expect(outcomes.results.values.filter(\.0).count == 20)
        for node in simulation.nodes {
            #expect(simulation.instance(node)!.decisions.count <= 5, "\(node) remembers \(simulation.instance(node)!.decisions.count)")
            #expect(simulation.durableState(node)!.decisions.count <= 5)
            #expect(simulation.instance(node)!.committed["k"] == .int(20))
        }
    }

    /// One replica cut off: every transaction fails by its latency bound and changes nothing
    /// anywhere; after the heal they commit again.
    @Test func anIsolatedReplicaStopsEveryTransactionCleanly() {
        var faults = FaultSettings.none
        faults.linkLatencyMax = .milliseconds(3)
        let simulation = Simulation<TransactionInstance>(nodeCount: 3, seed: 4, faults: faults, configuration: .init())
        let outcomes = Outcomes()
        simulation.onOutput = { _, output in
            switch output {
            case let .locked(handle, _, _): outcomes.locked.insert(handle)
            case let .committed(handle): outcomes.results[handle] = (true, simulation.now)
            case let .aborted(handle, reason, _): outcomes.results[handle] = (false, simulation.now); outcomes.reasons[handle] = reason
            case .boundedReadCompleted: break
            }
        }
        func transfer(_ handle: UInt64, at node: NodeID, time: Int64) {
            simulation.scheduleCommand(.begin(handle: handle, latency: .milliseconds(300)), to: node, at: time)
            simulation.scheduleCommand(.lock(handle: handle, step: 1, [LockRequest(key: "a", mode: .exclusive)]), to: node, at: time)
        }
        simulation.run(until: 1_000_000_000)
        for other in simulation.nodes where other != NodeID(3) {
            simulation.cut(from: NodeID(3), to: other)
            simulation.cut(from: other, to: NodeID(3))
        }
        for handle in 1...6 as ClosedRange<UInt64> {
            transfer(handle, at: NodeID(UInt64(handle % 3) + 1), time: 1_000_000_000 + Int64(handle) * 10_000_000)
        }
        simulation.run(until: 3_000_000_000)
        for handle in 1...6 as ClosedRange<UInt64> {
            guard let (committed, time) = outcomes.results[handle] else {
                Issue.record("transaction \(handle) got no answer")
                continue
            }
            #expect(!committed)
            #expect(time <= 1_000_000_000 + Int64(handle) * 10_000_000 + 300_000_000 + 1)
            #expect(!outcomes.locked.contains(handle), "a transaction locked with a replica cut off")
        }
        for node in simulation.nodes {
            #expect(simulation.instance(node)!.committed.isEmpty, "\(node) changed")
            #expect(simulation.instance(node)!.locks.lockedKeyCount == 0 || node == NodeID(3), "\(node) still holds locks")
        }
        simulation.healAll()
        simulation.run(until: 6_000_000_000)  // n3's stale locks expire (idle abort)
        transfer(7, at: NodeID(1), time: simulation.now)
        simulation.run(until: simulation.now + 100_000_000)
        #expect(outcomes.locked.contains(7))
        simulation.scheduleCommand(.commit(handle: 7, [TransactionWrite(key: "a", value: .int(5))]), to: NodeID(1), at: simulation.now)
        simulation.run(until: simulation.now + 500_000_000)
        #expect(outcomes.results[7]?.0 == true)
        for node in simulation.nodes { #expect(simulation.instance(node)!.committed["a"] == .int(5)) }
    }
}

final class Outcomes {
    var locked: Set<UInt64> = []
    var results: [UInt64: (Bool, Int64)] = [:]
    var reasons: [UInt64: String] = [:]
}
