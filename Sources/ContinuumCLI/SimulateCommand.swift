import ArgumentParser
import ContinuumSimulation
import Foundation

struct SimulateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "simulate",
        abstract: "Run a workload under the deterministic simulator with swarm faults and check it.",
        discussion: """
            Each seed draws its own faults (latency, loss, duplication, reordering, partitions, \
            crashes, clock skew and drift), runs the workload, heals the network and checks the \
            workload's invariants and liveness. Every seed runs twice to check that it is \
            deterministic. The last line is `seeds: K, violations: V`, where V counts the seeds \
            with a violation; each failure prints the command that replays it. Exit status 1 when V > 0.
            """)

    @Option(help: "The workload: \(SimulationCampaign.workloads.joined(separator: ", ")).")
    var workload = "gossip"

    @Option(help: "Nodes in the simulated cluster (1...\(SimulationCampaign.nodesMax)).")
    var nodes = 5

    @Option(help: "How many seeds to run, starting at --first-seed.")
    var seeds = 100

    @Option(help: "The first seed of a multi-seed run.")
    var firstSeed: UInt64 = 1

    @Option(help: "Run exactly this one seed (replays a failure).")
    var seed: UInt64?

    @Option(help: "The CRDT type to gossip (default: every type in turn, by seed): \(CRDTCatalog.names.joined(separator: ", ")).")
    var crdt: String?

    @Option(help: "Plant a known bug to see the checkers catch it. gossip: \(SimulationCampaign.plantedBugs(for: "gossip").joined(separator: ", ")); available: \(SimulationCampaign.plantedBugs(for: "available").joined(separator: ", ")); linearizable: \(SimulationCampaign.plantedBugs(for: "linearizable").joined(separator: ", ")); serializable: \(SimulationCampaign.plantedBugs(for: "serializable").joined(separator: ", ")); bounded: \(SimulationCampaign.plantedBugs(for: "bounded").joined(separator: ", ")).")
    var plantedBug: String?

    @Flag(help: "Skip the second run of each seed that checks determinism.")
    var noDeterminismCheck = false

    @Flag(help: "No faults: a perfect network and no crashes, to measure a protocol's own costs.")
    var faultFree = false

    @Option(help: "bounded: \(BoundedScenario.allCases.map(\.rawValue).joined(separator: ", ")) (swarm faults; none; one node cut off from 5 s to 15 s).")
    var scenario = "swarm"

    @Option(help: "linearizable: write the history of the last seed run to this file (JSON Lines).")
    var history: String?

    func validate() throws {
        guard seeds >= 1 else { throw ValidationError("--seeds must be at least 1, got \(seeds)") }
        guard BoundedScenario(rawValue: scenario) != nil else {
            throw ValidationError("unknown scenario '\(scenario)'; known: \(BoundedScenario.allCases.map(\.rawValue).joined(separator: ", "))")
        }
    }

    func run() throws {
        let seedList = seed.map { [$0] } ?? Array(firstSeed..<(firstSeed + UInt64(seeds)))
        var settings = SimulationCampaign.Settings(
            workload: workload, nodes: nodes, crdt: crdt, seeds: seedList,
            plantedBug: plantedBug,
            determinismCheck: !noDeterminismCheck)
        settings.faultFree = faultFree
        settings.scenario = BoundedScenario(rawValue: scenario)!
        let result: SimulationCampaign.Result
        do {
            result = try SimulationCampaign.run(settings) { print($0) }
        } catch {
            throw ValidationError(error.description)
        }
        for line in result.summary { print(line) }
        if let history, let last = result.reports.last {
            let text = History.jsonLines(last.history)
            guard FileManager.default.createFile(atPath: history, contents: Data(text.utf8)) else {
                throw ValidationError("cannot write the history to \(history)")
            }
            print("history of seed \(last.seed): \(last.history.count) events written to \(history)")
        }
        if seed != nil, let only = result.reports.first {
            print("seed \(only.seed): trace hash \(String(only.traceHash, radix: 16))")
        }
        if !result.failures.isEmpty { throw ExitCode(1) }
    }
}
