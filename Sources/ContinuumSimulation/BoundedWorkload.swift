import ContinuumCore
import ContinuumProtocols

/// The faults a `bounded` run sees.
public enum BoundedScenario: String, Sendable, CaseIterable {
    /// Swarm faults (loss, duplication, reordering, partitions, crashes), clock skew within
    /// the offset bound.
    case swarm
    /// No faults at all: the cost of bounds on a healthy cluster.
    case calm
    /// No faults but one: the last node is cut off from all others from 5 s to 15 s.
    case partition
}

/// The `bounded` simulation workload (docs/design.md section 2, item 4): writers add unique ids to
/// one grow-only set, and readers read it with ranked service levels (Spry bounds, Pileus
/// choices) at random nodes. Even seeds run over CRDT anti-entropy (`ReplicationInstance`,
/// CRDT-backed certificates), odd seeds over Raft (`RaftInstance`, lease-stamped heartbeats).
///
/// Checkers use true simulated time: no successful read misses a write acknowledged at or more
/// than S before the read began (none at all for a linearizable answer); the staleness a read
/// reports is never below the true one (for every write acknowledged before the read began but
/// missing from it, reported staleness ≥ read start − acknowledgement); every read completes by
/// its latency bound; a read whose replica was certified fresh enough when it began answers at
/// once; no read returns an id nobody wrote.
public enum BoundedWorkload {
    /// Clocks differ from true time by at most this (skew is drawn below it, drift included).
    public static let maxClockOffset: Duration = .milliseconds(20)
    public static let clockDriftMaxPartsPerMillion: Int64 = 100
    /// The staleness bounds of docs/features.md's table (nil: unbounded).
    public static let tableBounds: [Duration?] = [.zero, .milliseconds(100), .seconds(1), .seconds(10), nil]
    public static let tableLatency: Duration = .milliseconds(200)
    static let register = "pages"
    static let runLength: Int64 = 20_000_000_000
    static let readWindow: ClosedRange<Int64> = 5_000_000_000...15_000_000_000

    public enum Mechanism: String, Sendable { case crdt, consensus }

    public static func mechanism(for seed: UInt64) -> Mechanism { seed % 2 == 0 ? .crdt : .consensus }

    public static func run(nodes: Int, seed: UInt64, scenario: BoundedScenario = .swarm, plantedBug: PlantedFreshnessBug? = nil) -> SeedReport {
        var setup = DeterministicRandom(seed: seed ^ 0xB0DD_ED00_5EED)
        var faults: FaultSettings
        switch scenario {
        case .swarm:
            faults = FaultSettings.swarm(using: &setup)
            // Skew within the bound, leaving room for drift over the run.
            let driftAllowance = runLength / 1_000_000 * clockDriftMaxPartsPerMillion
            faults.clockSkewMax = .nanoseconds(Int64.random(in: 0...(maxClockOffset.nanoseconds - driftAllowance - 1), using: &setup))
            faults.clockDriftMaxPartsPerMillion = Int64.random(in: 0...clockDriftMaxPartsPerMillion, using: &setup)
        case .calm, .partition:
            faults = .none
            faults.linkLatencyMin = .milliseconds(1)
            faults.linkLatencyMax = .milliseconds(5)
        }
        let freshness = FreshnessGate.Configuration(maxClockOffset: maxClockOffset, clockDriftMaxPartsPerMillion: clockDriftMaxPartsPerMillion,
                                                    plantedBug: plantedBug)
        let plan = Plan(nodes: nodes, scenario: scenario, random: &setup)
        var report: SeedReport
        switch mechanism(for: seed) {
        case .crdt: report = runCRDT(nodes: nodes, seed: seed, faults: faults, freshness: freshness, plan: plan, scenario: scenario)
        case .consensus: report = runConsensus(nodes: nodes, seed: seed, faults: faults, freshness: freshness, plan: plan, scenario: scenario)
        }
        report.crdt = mechanism(for: seed).rawValue
        return report
    }

    /// The writes and reads of one run, drawn before it starts.
    struct Plan {
        struct Read {
            var time: Int64
            var node: Int
            var levels: [ServiceLevel]
        }

        var writes: [(time: Int64, node: Int)] = []
        var reads: [Read] = []

        init(nodes: Int, scenario: BoundedScenario, random: inout DeterministicRandom) {
            let end = runLength - 3_000_000_000
            for _ in 0..<Int.random(in: 200...600, using: &random) {
                writes.append((Int64.random(in: 500_000_000..<end, using: &random), Int.random(in: 0..<nodes, using: &random)))
            }
            let latencies: [Duration] = [.zero, .milliseconds(20), .milliseconds(50), .milliseconds(200), .seconds(1)]
            for _ in 0..<Int.random(in: 200...400, using: &random) {
                let node = Int.random(in: 0..<nodes, using: &random)
                if scenario != .swarm {
                    let time = Int64.random(in: readWindow, using: &random)
                    let bound = BoundedWorkload.tableBounds.randomElement(using: &random)!
                    let level = bound.map { ServiceLevel.staleness($0, within: tableLatency) } ?? ServiceLevel(.any, within: tableLatency)
                    reads.append(Read(time: time, node: node, levels: [level]))
                    continue
                }
                let time = Int64.random(in: 500_000_000..<(runLength - 1_000_000_000), using: &random)
                var levels: [ServiceLevel] = []
                for _ in 0..<Int.random(in: 1...3, using: &random) {
                    let latency = latencies.randomElement(using: &random)!
                    switch Int.random(in: 0..<6, using: &random) {
                    case 0: levels.append(.linearizable(within: latency))
                    case 1: levels.append(ServiceLevel(.any, within: latency))
                    default:
                        let bound = [Duration.zero, .milliseconds(30), .milliseconds(100), .milliseconds(300), .seconds(1), .seconds(10)]
                            .randomElement(using: &random)!
                        levels.append(.staleness(bound, within: latency))
                    }
                }
                reads.append(Read(time: time, node: node, levels: levels))
            }
        }
    }

    // MARK: Runs

    static func runCRDT(nodes: Int, seed: UInt64, faults: FaultSettings, freshness: FreshnessGate.Configuration, plan: Plan,
                        scenario: BoundedScenario) -> SeedReport {
        let configuration = ReplicationInstance.Configuration(freshness: freshness)
        let simulation = Simulation<ReplicationInstance>(nodeCount: nodes, seed: seed, faults: faults, configuration: configuration)
        let checker = BoundedChecker(now: { simulation.now })
        let bottom = AnyReplicated(GSet<UInt64>.bottom)
        var nextID: UInt64 = 1_000_000
        func declare(_ node: NodeID, at time: Int64) {
            nextID += 1
            simulation.scheduleCommand(.declare(id: nextID, register: register, bottom: bottom), to: node, at: time)
        }
        for node in simulation.nodes { declare(node, at: 0) }
        simulation.onOutput = { node, output in
            switch output {
            case let .completed(id, _, .success(_)) where id < 1_000_000:
                checker.acknowledged(write: id)
            case let .boundedReadCompleted(id, .success(answer)):
                let ids = Set(answer.state.unwrap(as: GSet<UInt64>.self)?.elements ?? [])
                checker.completed(read: id, .success((ids, answer.receipt)))
            case let .boundedReadCompleted(id, .failure(error)):
                if case let .stalenessBoundUnmet(best) = error {
                    checker.completed(read: id, .unmet(best))
                } else {
                    checker.completed(read: id, .error("\(error)"))
                }
            default: break
            }
        }
        simulation.afterStep = { step in
            switch step {
            case let .commandRefused(_, .boundedRead(id, _, _)): checker.refused(read: id)
            case let .restarted(node): declare(node, at: simulation.now)
            case let .crashed(node): checker.crashed(node)
            default: break
            }
        }
        for (index, write) in plan.writes.enumerated() {
            let id = UInt64(index + 1)
            checker.wrote(id)
            simulation.scheduleCommand(.update(id: id, register: register, typeName: bottom.typeName) { state, _, _ in
                var set = state.unwrap(as: GSet<UInt64>.self)!
                let delta = set.insert(id)
                state = AnyReplicated(set)
                return AnyReplicated(delta)
            }, to: simulation.nodes[write.node], at: write.time)
        }
        scheduleReads(plan, simulation, checker, staleness: { $0.certifiedStaleness(now: $1) }) { id, read in
            .boundedRead(id: id, register: register, levels: read.levels)
        }
        return drive(simulation, checker: checker, seed: seed, scenario: scenario)
    }

    static func runConsensus(nodes: Int, seed: UInt64, faults: FaultSettings, freshness: FreshnessGate.Configuration, plan: Plan,
                             scenario: BoundedScenario) -> SeedReport {
        let configuration = RaftInstance.Configuration(
            snapshotChunkBytes: seed % 4 == 1 ? 16 : 1 << 20, snapshotThresholdEntries: 64, maxClockOffset: freshness.maxClockOffset,
            clockDriftMaxPartsPerMillion: freshness.clockDriftMaxPartsPerMillion, plantedFreshnessBug: freshness.plantedBug)
        let simulation = Simulation<RaftInstance>(nodeCount: nodes, seed: seed, faults: faults, configuration: configuration)
        let checker = BoundedChecker(now: { simulation.now })
        let readBase: UInt64 = 1 << 40
        simulation.onOutput = { _, output in
            switch output {
            case let .reply(id, .ok):
                checker.acknowledged(write: id)
            case let .boundedReadCompleted(id, .success(answer)):
                var ids: Set<UInt64> = []
                if case let .crdt(.set(set)?) = answer.result { ids = Set(set.elements.compactMap { UInt64($0) }) }
                checker.completed(read: id - readBase, .success((ids, answer.receipt)))
            case let .boundedReadCompleted(id, .failure(.stalenessBoundUnmet(best))):
                checker.completed(read: id - readBase, .unmet(best))
            case let .boundedReadCompleted(id, .failure(error)):
                checker.completed(read: id - readBase, .error("\(error)"))
            default: break
            }
        }
        simulation.afterStep = { step in
            if case let .commandRefused(_, .boundedRead(id, _, _, _)) = step { checker.refused(read: id - readBase) }
            if case let .crashed(node) = step { checker.crashed(node) }
        }
        // One client per node, numbering its writes in time order. (A client per write would
        // leave one session per write in the state machine, each holding the set's whole state,
        // and snapshots quadratic in the number of writes.)
        var sequences: [Int: UInt64] = [:]
        for (index, write) in plan.writes.enumerated().sorted(by: { ($0.element.time, $0.offset) < ($1.element.time, $1.offset) }) {
            let id = UInt64(index + 1)
            checker.wrote(id)
            sequences[write.node, default: 0] += 1
            simulation.scheduleCommand(.request(id: id, client: UInt64(write.node + 1), sequence: sequences[write.node]!,
                                                .crdt(key: register, .setInsert(String(id))), latency: .seconds(1)),
                                       to: simulation.nodes[write.node], at: write.time)
        }
        scheduleReads(plan, simulation, checker, staleness: { $0.certifiedStaleness(now: $1) }) { id, read in
            .boundedRead(id: readBase + id, .crdtRead(key: register), levels: read.levels, minimumIndex: 0)
        }
        return drive(simulation, checker: checker, seed: seed, scenario: scenario)
    }

    /// Schedules the plan's reads (ids from 1): the checker learns of each as it starts, with
    /// the staleness its replica could certify then (for "fresh reads answer at once").
    static func scheduleReads<Instance>(_ plan: Plan, _ simulation: Simulation<Instance>, _ checker: BoundedChecker,
                                        staleness: @escaping (Instance, Duration) -> Duration?,
                                        command: (UInt64, Plan.Read) -> Instance.Command) {
        for (index, read) in plan.reads.enumerated() {
            let id = UInt64(index + 1)
            let node = simulation.nodes[read.node]
            simulation.scheduleCallback(at: read.time) {
                guard simulation.isUp(node), let instance = simulation.instance(node) else { return checker.refused(read: id) }
                checker.started(read: id, at: node, levels: read.levels, localStaleness: staleness(instance, simulation.localTime(node)))
            }
            simulation.scheduleCommand(command(id, read), to: node, at: read.time)
        }
    }

    static func drive<Instance>(_ simulation: Simulation<Instance>, checker: BoundedChecker, seed: UInt64, scenario: BoundedScenario) -> SeedReport {
        let faultPhaseEnd = runLength - 5_000_000_000
        switch scenario {
        case .swarm: simulation.injectFaults(until: faultPhaseEnd)
        case .calm: break
        case .partition:
            let isolated = simulation.nodes.last!
            simulation.scheduleCallback(at: readWindow.lowerBound - 500_000_000) {
                for other in simulation.nodes where other != isolated {
                    simulation.cut(from: isolated, to: other)
                    simulation.cut(from: other, to: isolated)
                }
            }
            simulation.scheduleCallback(at: readWindow.upperBound + 500_000_000) {
                for other in simulation.nodes where other != isolated {
                    simulation.heal(from: isolated, to: other)
                    simulation.heal(from: other, to: isolated)
                }
            }
        }
        simulation.run(until: faultPhaseEnd)
        if scenario == .swarm { simulation.healAll() }
        simulation.run(until: runLength)
        checker.finish()
        var report = SeedReport(seed: seed, crdt: "", faults: simulation.faults, traceHash: simulation.trace.value,
                                violations: checker.violations, roundsToConverge: nil,
                                updatesAcknowledged: checker.acknowledgedCount, updatesRefused: 0, statistics: simulation.statistics)
        report.boundedReads = checker.outcomes
        return report
    }
}

/// One bounded read's outcome, for summaries and docs/features.md's table.
public struct BoundedReadOutcome: Sendable {
    public var levels: [ServiceLevel]
    public var served: Bool
    /// True simulated latency.
    public var latency: Duration
    public var reportedStaleness: Duration?
    /// The replica's certificate met the first level when the read began.
    public var locallyFresh: Bool
    public var linearizable: Bool
}

/// The staleness and latency checker of the `bounded` workload, in true time.
final class BoundedChecker {
    enum Completion {
        case success((ids: Set<UInt64>, receipt: ReadReceipt))
        case unmet(Duration?)
        case error(String)
    }

    struct Read {
        var node: NodeID
        var levels: [ServiceLevel]
        var start: Int64
        var locallyFresh: Bool
        /// The key it read: only writes to it count (empty: the whole workload's one register).
        var scope: String = ""
        var done = false
        /// Its node crashed before it answered.
        var lost = false
    }

    private let now: () -> Int64
    private var written: Set<UInt64> = []
    /// The key each write went to, when writes go to several.
    private var scopes: [UInt64: String] = [:]
    /// Acknowledged writes and when their acknowledgement reached the client (true time).
    private var acknowledgements: [UInt64: Int64] = [:]
    private var reads: [UInt64: Read] = [:]
    private(set) var violations: [String] = []
    private(set) var outcomes: [BoundedReadOutcome] = []
    var acknowledgedCount: Int { acknowledgements.count }

    init(now: @escaping () -> Int64) { self.now = now }

    func wrote(_ id: UInt64, scope: String = "") {
        written.insert(id)
        if !scope.isEmpty { scopes[id] = scope }
    }

    func acknowledged(write id: UInt64) {
        guard written.contains(id), acknowledgements[id] == nil else { return }
        acknowledgements[id] = now()
    }

    func started(read id: UInt64, at node: NodeID, levels: [ServiceLevel], localStaleness: Duration?, scope: String = "") {
        var fresh = false
        if case let .staleness(bound) = levels[0].requirement, let localStaleness, localStaleness <= bound { fresh = true }
        if case .any = levels[0].requirement { fresh = true }
        reads[id] = Read(node: node, levels: levels, start: now(), locallyFresh: fresh, scope: scope)
    }

    func refused(read id: UInt64) { reads[id] = nil }

    func crashed(_ node: NodeID) {
        for (id, read) in reads where read.node == node && !read.done { reads[id]?.lost = true }
    }

    private func record(_ violation: String) {
        guard violations.count < 20 else { return }
        violations.append("t=\(milliseconds(.nanoseconds(now()))): \(violation)")
    }

    func completed(read id: UInt64, _ completion: Completion) {
        guard var read = reads[id] else { return }
        guard !read.done else { return record("read \(id) completed twice") }
        read.done = true
        reads[id] = read
        let end = now()
        let latency = end - read.start
        let bound = read.levels.map(\.latency.nanoseconds).max()!
        let label = "read \(id) at \(read.node) [\(read.levels.map(\.description).joined(separator: "; "))]"
        if latency > bound { record("\(label) took \(milliseconds(.nanoseconds(latency))), past its latency bound") }
        if read.locallyFresh && latency > 0 {
            record("\(label) had a fresh enough replica when it began but answered after \(milliseconds(.nanoseconds(latency)))")
        }
        switch completion {
        case let .success((ids, receipt)):
            check(label, read, ids: ids, receipt: receipt)
            outcomes.append(BoundedReadOutcome(levels: read.levels, served: true, latency: .nanoseconds(latency),
                                               reportedStaleness: receipt.staleness, locallyFresh: read.locallyFresh,
                                               linearizable: receipt.guarantee == .linearizable))
        case .unmet:
            if case .any = read.levels.last!.requirement, read.levels.count == 1 {
                record("\(label) failed although any value would do")
            }
            outcomes.append(BoundedReadOutcome(levels: read.levels, served: false, latency: .nanoseconds(latency),
                                               reportedStaleness: nil, locallyFresh: read.locallyFresh, linearizable: false))
        case let .error(error):
            record("\(label) failed: \(error)")
        }
    }

    private func check(_ label: String, _ read: Read, ids: Set<UInt64>, receipt: ReadReceipt) {
        for id in ids where !written.contains(id) { record("\(label) returned \(id), which nobody wrote") }
        guard receipt.level >= 0, receipt.level < read.levels.count else { return record("\(label) names level \(receipt.level)") }
        let requirement = read.levels[receipt.level].requirement
        switch (requirement, receipt.guarantee) {
        case (.linearizable, .linearizable), (.any, _): break
        case let (.staleness(bound), _) where (receipt.staleness.map { $0 <= bound } ?? false): break
        default: record("\(label) claims level \(receipt.level) (\(requirement)) but delivered \(receipt.guarantee)")
        }
        // The oldest acknowledged write the answer misses fixes its true staleness.
        var oldestMissing: (id: UInt64, time: Int64)?
        for (id, time) in acknowledgements where time <= read.start && !ids.contains(id) && scopes[id, default: ""] == read.scope {
            if oldestMissing.map({ time < $0.time }) ?? true { oldestMissing = (id, time) }
        }
        guard let missing = oldestMissing else { return }
        let trueStaleness = Duration.nanoseconds(read.start - missing.time)
        let what = "misses write \(missing.id) acknowledged \(milliseconds(trueStaleness)) before it began"
        if receipt.guarantee == .linearizable { record("\(label) \(what), yet claims linearizable") }
        guard let reported = receipt.staleness else { return }
        if reported < trueStaleness { record("\(label) \(what) but reports staleness \(milliseconds(reported))") }
        if case let .staleness(bound) = requirement, trueStaleness >= bound {
            record("\(label) \(what), beyond its bound \(milliseconds(bound))")
        }
    }

    func finish() {
        for (id, read) in reads.sorted(by: { $0.key < $1.key }) where !read.done {
            // A read at a node that crashed before answering never completes; others must.
            if read.lost {
                outcomes.append(BoundedReadOutcome(levels: read.levels, served: false, latency: .zero, reportedStaleness: nil,
                                                   locallyFresh: read.locallyFresh, linearizable: false))
            } else {
                record("read \(id) at \(read.node) never completed")
            }
        }
    }
}
