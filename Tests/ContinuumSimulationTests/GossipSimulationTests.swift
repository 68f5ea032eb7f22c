import ContinuumCore
import ContinuumProtocols
import Testing

@testable import ContinuumSimulation

/// The gossip workload under swarm faults, and its checkers against planted bugs.
@Suite struct GossipSimulationTests {
    @Test func gossipConvergesUnderSwarmFaultsForEveryCRDT() throws {
        // Three seeds per CRDT type (the type is chosen by seed modulo the catalog).
        let seeds = Array(1...UInt64(3 * CRDTCatalog.all.count))
        let result = try SimulationCampaign.run(.init(nodes: 5, seeds: seeds))
        for failure in result.failures {
            Issue.record("\(failure.report.violations.joined(separator: "\n"))\nreplay: \(failure.replayCommand)")
        }
        #expect(result.summary.last == "seeds: \(seeds.count), violations: 0")
        #expect(result.summary.contains("determinism: \(seeds.count)/\(seeds.count) seeds gave the same trace hash on a second run"))
        // The runs did meet faults: the swarm drew partitions, crashes and losses.
        let faults = result.reports.reduce(0) { $0 + $1.statistics.crashes + $1.statistics.partitions + $1.statistics.messagesLost }
        #expect(faults > 100)
        #expect(result.reports.allSatisfy { $0.updatesAcknowledged > 0 })
    }

    @Test func sameSeedSameTraceAndDifferentSeedsDiffer() {
        let first = SimulationCampaign.runSeed(42, .init(nodes: 5, seeds: [42]))
        let again = SimulationCampaign.runSeed(42, .init(nodes: 5, seeds: [42]))
        let other = SimulationCampaign.runSeed(43, .init(nodes: 5, seeds: [43]))
        #expect(first.traceHash == again.traceHash)
        #expect(first.statistics == again.statistics)
        #expect(first.traceHash != other.traceHash)
    }

    @Test(arguments: PlantedGossipBug.allCases)
    func plantedBugIsCaughtAndReplays(bug: PlantedGossipBug) throws {
        let settings = SimulationCampaign.Settings(nodes: 5, seeds: Array(1...12), plantedBug: bug.rawValue, determinismCheck: false)
        let result = try SimulationCampaign.run(settings)
        let failure = try #require(result.failures.first, "planted bug \(bug.rawValue) went unnoticed in 12 seeds")
        // The command that replays it, as the CLI prints it.
        print("planted \(bug.rawValue): \(failure.report.violations[0])\n  replay: \(failure.replayCommand)")
        #expect(failure.replayCommand.contains("--seed \(failure.report.seed)"))
        #expect(failure.replayCommand.contains("--planted-bug \(bug.rawValue)"))
        #expect(failure.replayCommand.contains("--crdt \(failure.report.crdt)"))
        #expect(result.summary.last == "seeds: 12, violations: \(result.failures.count)")
        // Replaying that one seed finds the same violations.
        var replay = settings
        replay.seeds = [failure.report.seed]
        let replayed = try SimulationCampaign.run(replay)
        #expect(replayed.failures.first?.report.violations == failure.report.violations)
    }

    @Test func eachPlantedBugIsCaughtByTheCheckerMeantForIt() throws {
        func firstViolation(_ bug: PlantedGossipBug) throws -> String {
            let result = try SimulationCampaign.run(.init(nodes: 5, seeds: Array(1...12), plantedBug: bug.rawValue, determinismCheck: false))
            return try #require(result.failures.first?.report.violations.first)
        }
        #expect(try firstViolation(.adoptEveryTenthMerge).contains("inflation violated"))
        #expect(try firstViolation(.ignoreLowestNode).contains("not converged"))
        #expect(try firstViolation(.forgetToPersistMerges).contains("inflation violated"))
    }

    @Test func badSettingsAreRefusedWithAClearError() {
        #expect(throws: SimulationCampaign.SettingsError.self) {
            try SimulationCampaign.run(.init(workload: "raft", nodes: 3, seeds: [1]))
        }
        #expect(throws: SimulationCampaign.SettingsError.self) {
            try SimulationCampaign.run(.init(nodes: 3, crdt: "nope", seeds: [1]))
        }
        #expect(throws: SimulationCampaign.SettingsError.self) {
            try SimulationCampaign.run(.init(nodes: 0, seeds: [1]))
        }
    }
}
