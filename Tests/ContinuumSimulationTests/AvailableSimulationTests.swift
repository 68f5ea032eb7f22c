import ContinuumCore
import ContinuumProtocols
import Testing

@testable import ContinuumSimulation

/// The `available` workload and replication under the simulator.
@Suite struct AvailableSimulationTests {
    @Test func availableRegistersConvergeUnderSwarmFaults() throws {
        let seeds = Array(1...12 as ClosedRange<UInt64>)
        let result = try SimulationCampaign.run(.init(workload: "available", nodes: 5, seeds: seeds))
        for failure in result.failures {
            Issue.record("\(failure.report.violations.joined(separator: "\n"))\nreplay: \(failure.replayCommand)")
        }
        #expect(result.summary.last == "seeds: 12, violations: 0")
        #expect(result.summary.contains("determinism: 12/12 seeds gave the same trace hash on a second run"))
        #expect(result.reports.allSatisfy { $0.roundsToConverge != nil && $0.updatesAcknowledged > 0 })
    }

    @Test(arguments: PlantedReplicationBug.allCases)
    func plantedReplicationBugIsCaught(bug: PlantedReplicationBug) throws {
        // A gap acknowledged over is repaired by any other path (a third replica forwards the
        // delta; a restarted sender ships whole states), so that bug shows with two nodes.
        let nodes = bug == .acknowledgeAcrossGaps ? 2 : 5
        let seeds: [UInt64] = bug == .acknowledgeAcrossGaps ? Array(500...530) : Array(1...10)
        let settings = SimulationCampaign.Settings(workload: "available", nodes: nodes, seeds: seeds,
                                                   plantedBug: bug.rawValue, determinismCheck: false)
        let result = try SimulationCampaign.run(settings)
        let failure = try #require(result.failures.first, "planted bug \(bug.rawValue) went unnoticed in \(seeds.count) seeds")
        print("planted \(bug.rawValue): \(failure.report.violations[0])\n  replay: \(failure.replayCommand)")
        #expect(failure.replayCommand == "swift run continuum simulate --workload available --nodes \(nodes) --seed \(failure.report.seed) --planted-bug \(bug.rawValue)")
        #expect(failure.report.violations[0].contains("not converged") || failure.report.violations[0].contains("never answered"))
    }

    /// One node cut off for a minute takes updates while the other four do too; after the heal
    /// every acknowledged update is in every replica.
    @Test func offlineNodeKeepsEveryUpdateAndConverges() {
        var faults = FaultSettings.none
        faults.linkLatencyMax = .milliseconds(5)
        let simulation = Simulation<ReplicationInstance>(nodeCount: 5, seed: 11, faults: faults,
                                                         configuration: .init(seeds: [NodeID(1)]))
        let acknowledged = Acknowledged()
        simulation.onOutput = { _, output in
            if case let .completed(id, _, .success) = output { acknowledged.ids.insert(id) }
        }
        let nodes = simulation.nodes
        var id: UInt64 = 0
        func command(_ node: NodeID, at time: Int64, _ make: (UInt64) -> ReplicationInstance.Command) {
            id += 1
            simulation.scheduleCommand(make(id), to: node, at: time)
        }
        for node in nodes {
            command(node, at: 0) { .declare(id: $0, register: "seen", bottom: AnyReplicated(ORSet<String>())) }
            command(node, at: 0) { .declare(id: $0, register: "visits", bottom: AnyReplicated(GCounter())) }
        }
        simulation.run(until: 3_000_000_000)
        let offline = NodeID(5)
        for other in nodes where other != offline {
            simulation.cut(from: offline, to: other)
            simulation.cut(from: other, to: offline)
        }
        // A minute apart from the others: n5 and the majority both keep updating.
        var inserted: [UInt64: String] = [:]
        var increments: [UInt64: UInt64] = [:]
        for step in 0..<60 {
            let time = 3_000_000_000 + Int64(step) * 1_000_000_000
            let node = step % 3 == 0 ? offline : nodes[step % 4]
            let element = "\(node)-\(step)"
            command(node, at: time) { commandID in
                inserted[commandID] = element
                return .update(id: commandID, register: "seen", typeName: replicableTypeName(ORSet<String>.self)) { state, replica, _ in
                    var set = state.unwrap(as: ORSet<String>.self)!
                    let delta = set.insert(element, replica: replica)
                    state = AnyReplicated(set)
                    return AnyReplicated(delta)
                }
            }
            command(node, at: time) { commandID in
                increments[commandID] = UInt64(step + 1)
                return .update(id: commandID, register: "visits", typeName: replicableTypeName(GCounter.self)) { state, replica, _ in
                    var counter = state.unwrap(as: GCounter.self)!
                    let delta = counter.increment(by: UInt64(step + 1), replica: replica)
                    state = AnyReplicated(counter)
                    return AnyReplicated(delta)
                }
            }
        }
        simulation.run(until: 63_500_000_000)
        // While cut off, the others have given up on n5 (and n5 on them).
        #expect(simulation.instance(NodeID(1))?.membership.status(of: offline) == .unreachable)
        #expect(simulation.instance(offline)?.membership.reachableMembers.isEmpty == true)
        simulation.healAll()
        simulation.run(until: 73_500_000_000)

        let expectedElements = Set(inserted.filter { acknowledged.ids.contains($0.key) }.values)
        let expectedVisits = increments.filter { acknowledged.ids.contains($0.key) }.values.reduce(0, +)
        #expect(expectedElements.count == 60)
        for node in nodes {
            let instance = simulation.instance(node)!
            #expect(instance.value(of: "seen")?.unwrap(as: ORSet<String>.self)?.elements == expectedElements, "\(node)")
            #expect(instance.value(of: "visits")?.unwrap(as: GCounter.self)?.value == expectedVisits, "\(node)")
            #expect(instance.membership.status(of: node == offline ? NodeID(1) : offline) == .alive, "\(node) sees the other side again")
        }
    }
}

final class Acknowledged {
    var ids: Set<UInt64> = []
}
