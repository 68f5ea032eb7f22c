import ContinuumCore
import ContinuumProtocols
import Testing

@testable import ContinuumSimulation

/// Raft under the simulator: the linearizable workload and its planted bugs.
@Suite struct LinearizableSimulationTests {
    @Test func raftIsLinearizableUnderSwarmFaults() throws {
        let result = try SimulationCampaign.run(.init(workload: "linearizable", nodes: 5, seeds: Array(1...6)))
        for failure in result.failures {
            Issue.record("\(failure.report.violations.joined(separator: "\n"))\nreplay: \(failure.replayCommand)")
        }
        #expect(result.summary.last == "seeds: 6, violations: 0")
        #expect(result.summary.contains("linearizability verdicts: 6 decided, 0 unknown"))
        #expect(result.reports.allSatisfy { $0.leaderRecoveriesMilliseconds.count == 3 && $0.history.count > 100 })
    }

    /// Over seeds 1-30 this bug showed in 7 (5 proven non-linearizable, 2 unknown: reads
    /// through a leader cut off from its quorum): seeds 13 and 18 here, checked directly.
    @Test func staleLocalReadsAreCaughtByTheHistoryChecker() throws {
        let settings = SimulationCampaign.Settings(workload: "linearizable", nodes: 5, seeds: [13, 18],
                                                   plantedBug: PlantedRaftBug.staleLocalReads.rawValue, determinismCheck: false)
        let result = try SimulationCampaign.run(settings)
        #expect(result.failures.count == 2)
        for failure in result.failures {
            print("planted stale-local-reads: \(failure.report.violations[0])\n  replay: \(failure.replayCommand)")
            #expect(failure.report.violations[0].contains("not linearizable"))
            #expect(failure.replayCommand.hasSuffix("--seed \(failure.report.seed) --planted-bug stale-local-reads"))
        }
        // The same seeds without the bug are linearizable.
        let clean = try SimulationCampaign.run(.init(workload: "linearizable", nodes: 5, seeds: [13, 18], determinismCheck: false))
        #expect(clean.failures.isEmpty)
    }

    /// Fresh seeds 30125, 30237, 30695 and 30961 reported "leader lacks committed entry": a
    /// false alarm of the checker, which compared a new leader's log with the entries it had
    /// seen committed, and had never seen the ones committed and compacted into a snapshot in
    /// one event. Replayed here: no violation now.
    @Test(arguments: [UInt64(30125), 30237, 30695, 30961])
    func leaderCompletenessFalseAlarmSeeds(seed: UInt64) throws {
        let report = LinearizableWorkload.run(nodes: 5, seed: seed)
        #expect(report.violations.isEmpty, "seed \(seed): \(report.violations)")
        #expect(report.leaderRecoveriesMilliseconds.count == 3)
    }

    /// The checker still catches a leader that really lacks a committed entry: a vote granted
    /// without the up-to-date check (section 5.4.1 of the Raft paper). Over seeds 1-20 the bug
    /// showed in seeds 13, 20, 25, 27 and 28 of seeds 1-30; the same seeds pass without it.
    @Test func aVoteWithoutTheLogCheckIsCaught() throws {
        let settings = SimulationCampaign.Settings(workload: "linearizable", nodes: 5, seeds: [13, 20],
                                                   plantedBug: PlantedRaftBug.voteWithoutLogCheck.rawValue, determinismCheck: false)
        let result = try SimulationCampaign.run(settings)
        #expect(result.failures.count == 2)
        for failure in result.failures {
            print("planted vote-without-log-check: \(failure.report.violations[0])")
            #expect(failure.report.violations[0].contains("lacks committed entry"))
        }
        let clean = try SimulationCampaign.run(.init(workload: "linearizable", nodes: 5, seeds: [13, 20], determinismCheck: false))
        #expect(clean.failures.isEmpty)
    }

    @Test func theRecordedHistoryRoundTripsThroughJSONLines() throws {
        let report = LinearizableWorkload.run(nodes: 3, seed: 5, faultPhase: .seconds(3))
        let parsed = try History.parse(History.jsonLines(report.history))
        #expect(parsed == report.history)
        #expect(LinearizabilityChecker.check(parsed) == .linearizable)
    }
}
