import ContinuumCore
import ContinuumProtocols

/// Runs a workload over many seeds, checks that each seed is deterministic, and summarizes.
/// This is what `continuum simulate` prints.
public enum SimulationCampaign {
    public static let workloads = ["gossip", "available", "linearizable", "serializable", "bounded"]

    public struct Settings: Sendable {
        public var workload: String
        public var nodes: Int
        /// One CRDT type for every seed, or nil for every type in turn (seed modulo the catalog).
        public var crdt: String?
        public var seeds: [UInt64]
        /// A planted bug by name: a `PlantedGossipBug` for `gossip`, a `PlantedReplicationBug` for `available`.
        public var plantedBug: String?
        /// Run each seed twice and compare trace hashes.
        public var determinismCheck: Bool
        /// No faults at all (a perfect network, no crashes): to measure a protocol's own costs.
        public var faultFree = false
        /// The bounded workload's scenario (swarm, calm, partition).
        public var scenario: BoundedScenario = .swarm

        public init(workload: String = "gossip", nodes: Int, crdt: String? = nil, seeds: [UInt64],
                    plantedBug: String? = nil, determinismCheck: Bool = true) {
            self.workload = workload
            self.nodes = nodes
            self.crdt = crdt
            self.seeds = seeds
            self.plantedBug = plantedBug
            self.determinismCheck = determinismCheck
        }
    }

    /// A seed that failed, and the command that replays exactly it.
    public struct Failure: Sendable {
        public var report: SeedReport
        public var replayCommand: String
    }

    public struct Result: Sendable {
        public var reports: [SeedReport]
        public var failures: [Failure]
        /// The summary, whose last line is `seeds: K, violations: V` (V: seeds with a violation).
        public var summary: [String]
    }

    /// Why a campaign could not start.
    public enum SettingsError: Error, CustomStringConvertible {
        case unknownWorkload(String)
        case unknownCRDT(String)
        case nodeCount(Int)
        case noSeeds
        case unknownPlantedBug(workload: String, String)

        public var description: String {
            switch self {
            case let .unknownWorkload(name): "unknown workload '\(name)'; known: \(SimulationCampaign.workloads.joined(separator: ", "))"
            case let .unknownCRDT(name): "unknown CRDT '\(name)'; known: \(CRDTCatalog.names.joined(separator: ", "))"
            case let .nodeCount(count): "node count \(count) must be between 1 and \(SimulationCampaign.nodesMax)"
            case .noSeeds: "no seeds to run"
            case let .unknownPlantedBug(workload, name):
                "unknown planted bug '\(name)' for workload \(workload); known: \(SimulationCampaign.plantedBugs(for: workload).joined(separator: ", "))"
            }
        }
    }

    public static func validate(_ settings: Settings) throws(SettingsError) {
        guard workloads.contains(settings.workload) else { throw .unknownWorkload(settings.workload) }
        if let crdt = settings.crdt, CRDTCatalog.named(crdt) == nil { throw .unknownCRDT(crdt) }
        guard (1...nodesMax).contains(settings.nodes) else { throw .nodeCount(settings.nodes) }
        guard !settings.seeds.isEmpty else { throw .noSeeds }
        if let bug = settings.plantedBug, !plantedBugs(for: settings.workload).contains(bug) {
            throw .unknownPlantedBug(workload: settings.workload, bug)
        }
    }

    /// The most nodes a simulation may have.
    public static let nodesMax = 512

    /// The bugs that can be planted in a workload's protocol.
    public static func plantedBugs(for workload: String) -> [String] {
        switch workload {
        case "gossip": PlantedGossipBug.allCases.map(\.rawValue)
        case "available": PlantedReplicationBug.allCases.map(\.rawValue)
        case "linearizable": PlantedRaftBug.allCases.map(\.rawValue)
        case "serializable": PlantedTransactionBug.allCases.map(\.rawValue)
        case "bounded": PlantedFreshnessBug.allCases.map(\.rawValue)
        default: []
        }
    }

    /// The CRDT type a seed runs with.
    public static func crdt(for seed: UInt64, in settings: Settings) -> any CRDTOperations.Type {
        if let name = settings.crdt { return CRDTCatalog.named(name)! }
        return CRDTCatalog.all[Int(seed % UInt64(CRDTCatalog.all.count))]
    }

    public static func replayCommand(seed: UInt64, settings: Settings) -> String {
        var command = "swift run continuum simulate --workload \(settings.workload) --nodes \(settings.nodes)"
        if settings.workload == "gossip" { command += " --crdt \(crdt(for: seed, in: settings).name)" }
        command += " --seed \(seed)"
        if let bug = settings.plantedBug { command += " --planted-bug \(bug)" }
        if settings.faultFree { command += " --fault-free" }
        if settings.workload == "bounded", settings.scenario != .swarm { command += " --scenario \(settings.scenario.rawValue)" }
        return command
    }

    /// Runs every seed; `progress` receives a line now and then (and every failure at once).
    public static func run(_ settings: Settings, progress: (String) -> Void = { _ in }) throws(SettingsError) -> Result {
        try validate(settings)
        var reports: [SeedReport] = []
        var failures: [Failure] = []
        var deterministicSeeds = 0
        let progressEvery = max(1, settings.seeds.count / 10)
        for (index, seed) in settings.seeds.enumerated() {
            var report = runSeed(seed, settings)
            if settings.determinismCheck {
                let again = runSeed(seed, settings)
                if again.traceHash == report.traceHash && again.violations == report.violations {
                    deterministicSeeds += 1
                } else {
                    report.violations.append(
                        "nondeterministic: trace hash \(hex(report.traceHash)) then \(hex(again.traceHash)) for the same seed")
                }
            }
            reports.append(report)
            if !report.violations.isEmpty {
                let failure = Failure(report: report, replayCommand: replayCommand(seed: seed, settings: settings))
                failures.append(failure)
                progress("FAIL seed \(seed) (\(report.crdt)): \(report.violations[0])")
                progress("  replay: \(failure.replayCommand)")
            }
            if (index + 1) % progressEvery == 0 || index + 1 == settings.seeds.count {
                progress("[\(index + 1)/\(settings.seeds.count)] seeds run, \(failures.count) with violations")
            }
        }
        return Result(reports: reports, failures: failures,
                      summary: summarize(reports, failures, settings, deterministicSeeds: deterministicSeeds))
    }

    static func runSeed(_ seed: UInt64, _ settings: Settings) -> SeedReport {
        var report = runWorkload(seed, settings)
        if report.statistics.flooded {
            report.violations.append("more than \(Simulation<RaftInstance>.eventsMax) events: the protocol floods the queue")
        }
        return report
    }

    static func runWorkload(_ seed: UInt64, _ settings: Settings) -> SeedReport {
        let faults: FaultSettings? = settings.faultFree ? FaultSettings.none : nil
        switch settings.workload {
        case "bounded":
            return BoundedWorkload.run(nodes: settings.nodes, seed: seed, scenario: settings.faultFree ? .calm : settings.scenario,
                                       plantedBug: settings.plantedBug.flatMap(PlantedFreshnessBug.init(rawValue:)))
        case "serializable":
            return SerializableWorkload.run(
                nodes: settings.nodes, seed: seed, plantedBug: settings.plantedBug.flatMap(PlantedTransactionBug.init(rawValue:)), faults: faults)
        case "linearizable":
            return LinearizableWorkload.run(
                nodes: settings.nodes, seed: seed, plantedBug: settings.plantedBug.flatMap(PlantedRaftBug.init(rawValue:)), faults: faults)
        case "available":
            return AvailableWorkload.run(
                nodes: settings.nodes, seed: seed, plantedBug: settings.plantedBug.flatMap(PlantedReplicationBug.init(rawValue:)), faults: faults)
        default:
            let operations = crdt(for: seed, in: settings)
            return GossipWorkload.run(operations, GossipRunSettings(
                nodes: settings.nodes, seed: seed, plantedBug: settings.plantedBug.flatMap(PlantedGossipBug.init(rawValue:)), faults: faults))
        }
    }

    static func summarize(_ reports: [SeedReport], _ failures: [Failure], _ settings: Settings, deterministicSeeds: Int) -> [String] {
        var lines: [String] = []
        let subject = switch settings.workload {
        case "gossip": "crdt " + (settings.crdt ?? "every type in turn (\(CRDTCatalog.names.joined(separator: ", ")))")
        case "linearizable": "\(LinearizableWorkload.clients) clients, reads, writes and compare-and-sets on \(LinearizableWorkload.keys.count) keys, Raft"
        case "serializable": "\(SerializableWorkload.clients) clients, list-append, transfer and audit transactions, 2PL and 2PC at every replica"
        case "bounded": "writers and bounded readers of one set (even seeds CRDT certificates, odd seeds Raft stamps), scenario \(settings.scenario.rawValue)"
        default: "9 registers of 9 CRDT types, 7 derived registers, threshold reads"
        }
        lines.append("workload \(settings.workload): \(settings.nodes) nodes, \(reports.count) seeds, \(subject)"
                     + (settings.plantedBug.map { ", planted bug \($0)" } ?? ""))
        let rounds = reports.compactMap(\.roundsToConverge).sorted()
        if !rounds.isEmpty {
            let bound = settings.workload == "gossip" ? GossipRunSettings.convergenceRoundsDefault : AvailableWorkload.convergenceRoundsDefault
            lines.append("rounds to converge after heal: median \(percentile(rounds, 0.5)), p99 \(percentile(rounds, 0.99)), "
                         + "max \(rounds.last!) (bound \(bound)); \(reports.count - rounds.count) seeds did not converge")
        }
        let total = reports.reduce(into: SimulationStatistics()) { sum, report in
            let s = report.statistics
            sum.eventsProcessed += s.eventsProcessed
            sum.messagesSent += s.messagesSent
            sum.messagesLost += s.messagesLost
            sum.messagesDuplicated += s.messagesDuplicated
            sum.messagesCutByPartition += s.messagesCutByPartition
            sum.messagesToDownNodes += s.messagesToDownNodes
            sum.partitions += s.partitions
            sum.crashes += s.crashes
            sum.restarts += s.restarts
        }
        let acknowledged = reports.reduce(0) { $0 + $1.updatesAcknowledged }
        let refused = reports.reduce(0) { $0 + $1.updatesRefused }
        if settings.workload == "linearizable" {
            let recoveries = reports.flatMap(\.leaderRecoveriesMilliseconds).sorted()
            let throughput = reports.compactMap(\.operationsPerSecond).sorted()
            lines.append("operations ok \(acknowledged), failed (definitely not applied) \(refused); events \(total.eventsProcessed)")
            if !recoveries.isEmpty {
                lines.append("leader loss to a new leader that committed: median \(fixed(recoveries[recoveries.count / 2], 0)) ms, "
                             + "p99 \(fixed(recoveries[min(recoveries.count - 1, Int(Double(recoveries.count) * 0.99))], 0)) ms, "
                             + "max \(fixed(recoveries.last!, 0)) ms (simulated; \(recoveries.count) crashes of the leader)")
            }
            if !throughput.isEmpty {
                lines.append("operations ok per simulated second\(settings.faultFree ? " without faults" : " under faults"): median \(fixed(throughput[throughput.count / 2], 0)) "
                             + "(\(LinearizableWorkload.clients) clients, one operation at a time each)")
            }
            lines.append("linearizability verdicts: \(reports.count - reports.filter { $0.unknownVerdicts > 0 }.count) decided, "
                         + "\(reports.reduce(0) { $0 + $1.unknownVerdicts }) unknown")
        } else if settings.workload == "serializable" {
            let attempts = max(1, acknowledged + refused)
            let throughput = reports.compactMap(\.operationsPerSecond).sorted()
            lines.append("transactions committed \(acknowledged), aborted \(refused) (abort rate \(fixed(Double(refused) / Double(attempts) * 100, 1))%, "
                         + "unknown outcomes not counted); events \(total.eventsProcessed)")
            if !throughput.isEmpty {
                lines.append("transactions committed per simulated second\(settings.faultFree ? " without faults" : " under faults"): median \(fixed(throughput[throughput.count / 2], 1)) "
                             + "(\(SerializableWorkload.clients) clients, one transaction at a time each)")
            }
            lines += summarizeBounded(reports)
        } else if settings.workload == "bounded" {
            lines.append("writes acknowledged \(acknowledged); events \(total.eventsProcessed)")
            lines += summarizeBounded(reports)
        } else {
            lines.append("updates acknowledged \(acknowledged), refused at down nodes \(refused); events \(total.eventsProcessed)")
        }
        lines.append("messages sent \(total.messagesSent), lost \(total.messagesLost), duplicated \(total.messagesDuplicated), "
                     + "cut by partitions \(total.messagesCutByPartition), to down nodes \(total.messagesToDownNodes)")
        let bytesPerUpdate = reports.compactMap(\.replicationBytesPerUpdate).sorted()
        if !bytesPerUpdate.isEmpty {
            let membership = reports.reduce(0) { $0 + $1.membershipBytes }
            lines.append("replication bytes per acknowledged update: median \(fixed(bytesPerUpdate[bytesPerUpdate.count / 2], 0)), "
                         + "max \(fixed(bytesPerUpdate.last!, 0)); membership bytes \(membership)")
        }
        lines.append("faults: \(total.partitions) partitions, \(total.crashes) crashes, \(total.restarts) restarts")
        if settings.determinismCheck {
            lines.append("determinism: \(deterministicSeeds)/\(reports.count) seeds gave the same trace hash on a second run")
        }
        for failure in failures {
            lines.append("FAIL seed \(failure.report.seed) (\(failure.report.crdt); faults: \(failure.report.faults))")
            for violation in failure.report.violations { lines.append("  \(violation)") }
            lines.append("  replay: \(failure.replayCommand)")
        }
        lines.append("seeds: \(reports.count), violations: \(failures.count)")
        return lines
    }

    /// Reads served and refused, latencies, and per staleness bound of the first level (the
    /// availability/consistency table of docs/simulation.md), per mechanism.
    static func summarizeBounded(_ reports: [SeedReport]) -> [String] {
        var lines: [String] = []
        func ms(_ duration: Duration) -> String { fixed(duration.milliseconds, 1) }
        func latencies(_ outcomes: [BoundedReadOutcome]) -> String {
            let sorted = outcomes.map(\.latency).sorted()
            guard !sorted.isEmpty else { return "-" }
            return "p50 \(ms(sorted[sorted.count / 2])) ms, p99 \(ms(sorted[min(sorted.count - 1, Int(Double(sorted.count) * 0.99))])) ms"
        }
        for mechanism in ["crdt", "consensus", "austere"] {
            let outcomes = reports.filter { $0.crdt == mechanism }.flatMap(\.boundedReads)
            guard !outcomes.isEmpty else { continue }
            let served = outcomes.filter(\.served)
            let fresh = served.filter(\.locallyFresh)
            let linearizable = served.filter(\.linearizable).count
            lines.append("\(mechanism): reads \(outcomes.count), served \(served.count) (\(fixed(Double(served.count) / Double(outcomes.count) * 100, 1))%), "
                         + "linearizable answers \(linearizable); served latency \(latencies(served)); "
                         + "reads whose replica was fresh enough at the start: \(fresh.count), latency \(latencies(fresh))")
            var groups: [String: [BoundedReadOutcome]] = [:]
            var order: [String] = []
            for outcome in outcomes {
                let key: String
                switch outcome.levels[0].requirement {
                case let .staleness(bound): key = "S=\(bound.shortDescription)"
                case .any: key = "S=unbounded"
                case .linearizable: key = "linearizable"
                }
                if groups[key] == nil { order.append(key) }
                groups[key, default: []].append(outcome)
            }
            let rank: (String) -> Int64 = { key in
                if key == "linearizable" { return -1 }
                if key == "S=unbounded" { return Int64.max }
                let known = BoundedWorkload.tableBounds.compactMap { $0 } + [.milliseconds(30), .milliseconds(300)] + SerializableWorkload.readBounds
                return known.first { "S=\($0.shortDescription)" == key }?.nanoseconds ?? 0
            }
            for key in order.sorted(by: { rank($0) < rank($1) }) {
                let group = groups[key]!
                let groupServed = group.filter(\.served)
                let largest = groupServed.compactMap(\.reportedStaleness).max()
                lines.append("  \(mechanism) first level \(key): \(groupServed.count)/\(group.count) served "
                             + "(\(fixed(Double(groupServed.count) / Double(group.count) * 100, 1))%), latency \(latencies(groupServed)), "
                             + "largest reported staleness \(largest.map { ms($0) + " ms" } ?? "-")")
            }
        }
        return lines
    }

    static func percentile(_ sorted: [Int], _ fraction: Double) -> Int {
        sorted[min(sorted.count - 1, Int(Double(sorted.count - 1) * fraction + 0.5))]
    }

    static func hex(_ value: UInt64) -> String {
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: 16 - digits.count) + digits
    }
}
