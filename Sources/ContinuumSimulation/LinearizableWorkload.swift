import ContinuumCore
import ContinuumProtocols

/// The `linearizable` simulation workload: clients doing reads, writes and compare-and-sets on
/// three keys through random nodes of a Raft cluster, one operation at a time each, under the
/// seed's swarm faults; then a heal, a liveness phase, and three scripted leader crashes to
/// measure how long the cluster goes without a working leader.
///
/// Checked after every event: at most one leader per term; no two different entries committed
/// at one index; every new leader's log holds every committed entry (nothing committed is
/// lost). At the end: the whole history is linearizable (`LinearizabilityChecker`); after the
/// heal every client completes operations again.
public enum LinearizableWorkload {
    public static let clients = 5
    public static let keys = ["a", "b", "c"]
    public static let latencyBound: Duration = .milliseconds(500)

    public static func run(nodes: Int, seed: UInt64, plantedBug: PlantedRaftBug? = nil, faults: FaultSettings? = nil,
                           faultPhase: Duration = .seconds(20), checkerStepsMax: Int = 20_000_000) -> SeedReport {
        var setup = DeterministicRandom(seed: seed ^ 0x11AE_A12A_B1E0)
        let faults = faults ?? FaultSettings.swarm(using: &setup)
        let leaseReads = Bool.random(using: &setup)
        // Snapshots are 40 to 200 bytes here: chunks of 16 or 48 bytes send them in pieces
        // (lost, duplicated and reordered like any message), 1 MiB in one.
        let chunkBytes = [16, 48, 1 << 20][Int.random(in: 0..<3, using: &setup)]
        let configuration = RaftInstance.Configuration(snapshotChunkBytes: chunkBytes, snapshotThresholdEntries: 64, leaseReads: leaseReads,
                                                       plantedBug: plantedBug)
        let simulation = Simulation<RaftInstance>(nodeCount: nodes, seed: seed, faults: faults, configuration: configuration)
        let checker = RaftChecker(simulation: simulation)
        let clients = ClientDriver(simulation: simulation, checker: checker, random: setup.split())
        simulation.onOutput = { node, output in
            switch output {
            case let .reply(id, outcome): clients.replied(id, outcome)
            case .becameLeader, .boundedReadCompleted: break
            }
        }
        simulation.afterStep = { step in
            checker.check(step)
            // The first safety violation ends the run: a planted unsafe vote otherwise goes on to
            // flood the queue (followers refuse to overwrite committed entries, forever).
            if !checker.violations.isEmpty { simulation.stop() }
            if case let .commandRefused(_, command) = step, case let .request(id, _, _, _, _) = command { clients.refused(id) }
        }

        let faultPhaseEnd = faultPhase.nanoseconds
        clients.start(until: faultPhaseEnd + 5_000_000_000)
        simulation.injectFaults(until: faultPhaseEnd)
        simulation.run(until: faultPhaseEnd)
        simulation.healAll()
        // Liveness: within 5 s of the heal every client completes an operation again.
        clients.requireProgress(after: faultPhaseEnd + 2_000_000_000)
        simulation.run(until: faultPhaseEnd + 5_000_000_000 + latencyBound.nanoseconds + 1_000_000)
        if !simulation.stopped { clients.checkProgress() }
        // Leader loss: crash the leader three times, measure until a new leader commits.
        for attempt in 0..<3 where !simulation.stopped {
            let start = simulation.now
            guard let leader = checker.currentLeader() else {
                checker.record("no leader \(milliseconds(.nanoseconds(start - faultPhaseEnd))) after the heal (attempt \(attempt))")
                break
            }
            checker.leaderLost(leader)
            simulation.scheduleCrash(of: leader, at: start)
            simulation.scheduleRestart(of: leader, at: start + 3_000_000_000)
            simulation.run(until: start + 4_000_000_000)
            if checker.pendingRecovery { checker.record("no new leader within 4 s of crashing leader \(leader)") }
        }

        let okOperations = clients.history.filter { $0.type == .ok }.count
        var report = SeedReport(
            seed: seed, crdt: "raft", faults: faults, traceHash: simulation.trace.value,
            violations: checker.violations, roundsToConverge: nil, updatesAcknowledged: okOperations,
            updatesRefused: clients.refusedCount, statistics: simulation.statistics)
        report.leaderRecoveriesMilliseconds = checker.recoveries
        report.operationsPerSecond = Double(clients.okDuringFaults) / faultPhase.milliseconds * 1_000
        report.history = clients.history
        switch LinearizabilityChecker.check(clients.history, searchStepsMax: checkerStepsMax) {
        case .linearizable: break
        case let .notLinearizable(key, explanation):
            report.violations.append("history not linearizable on key '\(key)': " + explanation.joined(separator: "; "))
        case let .unknown(reason):
            report.unknownVerdicts = 1
            report.violations.append("linearizability unknown: \(reason)")
        }
        return report
    }
}

/// The clients of the linearizable workload and the history they record.
final class ClientDriver {
    private unowned let simulation: Simulation<RaftInstance>
    private unowned let checker: RaftChecker
    private var random: DeterministicRandom
    private(set) var history: [HistoryEvent] = []
    private(set) var refusedCount = 0
    private(set) var okDuringFaults = 0
    private var stopAt: Int64 = 0
    private var nextRequest: UInt64 = 0
    private var nextValue: Int64 = 0
    /// Per client slot: its current process number and sequence.
    private var process: [Int]
    private var sequence: [UInt64]
    private var inFlight: [UInt64: Int] = [:]
    private var progressFrom: Int64?
    private var progressed: Set<Int> = []

    init(simulation: Simulation<RaftInstance>, checker: RaftChecker, random: DeterministicRandom) {
        self.simulation = simulation
        self.checker = checker
        self.random = random
        process = Array(0..<LinearizableWorkload.clients)
        sequence = Array(repeating: 0, count: LinearizableWorkload.clients)
    }

    func start(until end: Int64) {
        stopAt = end
        for slot in 0..<LinearizableWorkload.clients {
            let time = Int64.random(in: 0..<50_000_000, using: &random)
            simulation.scheduleCallback(at: time) { [unowned self] in issue(slot) }
        }
    }

    func requireProgress(after time: Int64) { progressFrom = time }

    func checkProgress() {
        for slot in 0..<LinearizableWorkload.clients where !progressed.contains(slot) {
            checker.record("liveness: client \(slot) completed nothing within 3 s from 2 s after the heal")
        }
    }

    private func issue(_ slot: Int) {
        guard simulation.now < stopAt else { return }
        nextRequest += 1
        sequence[slot] += 1
        let key = LinearizableWorkload.keys.randomElement(using: &random)!
        let operation: KeyValueOperation
        let value: HistoryValue
        let function: String
        switch Int.random(in: 0..<10, using: &random) {
        case 0..<4:
            operation = .read(key: key)
            (function, value) = ("read", .null)
        case 4..<8:
            nextValue += 1
            operation = .write(key: key, value: nextValue)
            (function, value) = ("write", .int(nextValue))
        default:
            let expected: Int64? = nextValue > 0 && Bool.random(using: &random) ? Int64.random(in: 1...nextValue, using: &random) : nil
            nextValue += 1
            operation = .compareAndSet(key: key, expected: expected, new: nextValue)
            (function, value) = ("cas", .array([expected.map { .int($0) } ?? .null, .int(nextValue)]))
        }
        let node = simulation.nodes.randomElement(using: &random)!
        let id = nextRequest
        inFlight[id] = slot
        history.append(HistoryEvent(process: process[slot], type: .invoke, f: function, key: key, value: value, time: simulation.now))
        // The client's own timeout: a node that crashes forgets the request, and never answers.
        let isRead = operation.isRead
        simulation.scheduleCallback(at: simulation.now + LinearizableWorkload.latencyBound.nanoseconds + 1_000_000) { [unowned self] in
            finish(id, isRead ? .unavailable("no answer") : .indeterminate)
        }
        simulation.scheduleCommand(
            .request(id: nextRequest, client: UInt64(process[slot]) + 1, sequence: sequence[slot], operation, latency: LinearizableWorkload.latencyBound),
            to: node, at: simulation.now)
    }

    func refused(_ id: UInt64) { finish(id, .unavailable("node down")) }

    func replied(_ id: UInt64, _ outcome: RequestOutcome) { finish(id, outcome) }

    private func finish(_ id: UInt64, _ outcome: RequestOutcome) {
        guard let slot = inFlight.removeValue(forKey: id) else { return }
        let invocation = history.last { $0.process == process[slot] && $0.type == .invoke }!
        var event = invocation
        event.time = simulation.now
        switch outcome {
        case let .ok(result, _):
            event.type = .ok
            switch result {
            case let .value(value): event.value = value.map { .int($0) } ?? .null
            case .written: break
            case let .compareAndSet(swapped): event.value = .bool(swapped)
            case .crdt, .crdtKindMismatch, .string, .integer, .notAnInteger, .count:
                preconditionFailure("the workload issues only integer reads, writes and compare-and-sets")
            }
            if simulation.now < stopAt - 5_000_000_000 { okDuringFaults += 1 }
            if let progressFrom, simulation.now >= progressFrom { progressed.insert(slot) }
        case .unavailable:
            event.type = .fail
            refusedCount += 1
        case .indeterminate:
            event.type = .info
        }
        history.append(event)
        if case .indeterminate = outcome {
            // The operation may still take effect: this client continues as a new process
            // (Jepsen's convention), with a new client identity.
            process[slot] += LinearizableWorkload.clients
            sequence[slot] = 0
        }
        let pause = Int64.random(in: 0...20_000_000, using: &random)
        simulation.scheduleCallback(at: simulation.now + pause) { [unowned self] in issue(slot) }
    }
}

/// Raft's safety invariants, checked after every event, and leader-loss timing.
final class RaftChecker {
    private unowned let simulation: Simulation<RaftInstance>
    private(set) var violations: [String] = []
    private var leaders: [UInt64: NodeID] = [:]
    private var committed: [UInt64: LogEntry] = [:]
    /// The term of each committed index seen: from entries, and from snapshots' last entries.
    private var committedTerms: [UInt64: UInt64] = [:]
    private var highestCommitted: UInt64 = 0
    private var checkedCommit: [NodeID: UInt64] = [:]
    private var lossAt: (time: Int64, term: UInt64)?
    private(set) var recoveries: [Double] = []

    init(simulation: Simulation<RaftInstance>) { self.simulation = simulation }

    func record(_ violation: String) {
        guard violations.count < GossipWorkload.violationsMax else { return }
        violations.append("t=\(milliseconds(.nanoseconds(simulation.now))): \(violation)")
    }

    var pendingRecovery: Bool { lossAt != nil }

    /// The leader of the highest term among up nodes.
    func currentLeader() -> NodeID? {
        simulation.upNodes.compactMap { node in simulation.instance(node).flatMap { $0.role == .leader ? ($0.term, node) : nil } }
            .max { $0.0 < $1.0 }?.1
    }

    func leaderLost(_ node: NodeID) {
        lossAt = (simulation.now, simulation.instance(node)?.term ?? 0)
    }

    func check(_ step: Simulation<RaftInstance>.Step) {
        switch step {
        case let .restarted(node):
            checkedCommit[node] = 0  // recheck what it commits again
            checkNode(node)
        case let .started(node), let .delivered(node), let .timerFired(node), let .commandHandled(node, _):
            checkNode(node)
        case .crashed, .network, .commandRefused:
            return
        }
    }

    private func checkNode(_ node: NodeID) {
        guard let instance = simulation.instance(node) else { return }
        if instance.committedOverwritesRefused > 0 {
            record("\(node) was asked to overwrite a committed entry (\(instance.committedOverwritesRefused) times)")
        }
        if let broken = instance.brokenInvariant() { record("\(node): \(broken)") }
        if instance.role == .leader {
            if let other = leaders[instance.term], other != node {
                record("two leaders in term \(instance.term): \(other) and \(node)")
            } else if leaders[instance.term] == nil {
                leaders[instance.term] = node
                // Leader completeness: the new leader holds every committed entry whose term is
                // known (an index committed and compacted into a snapshot within one event is
                // never seen as an entry; the highest committed index always is known).
                if highestCommitted > instance.snapshotIndex {
                    for index in (instance.snapshotIndex + 1)...highestCommitted {
                        guard let known = committedTerms[index], instance.term(at: index) != known else { continue }
                        let entry = committed[index].map { "\($0)" } ?? "at \(index) of term \(known)"
                        record("leader \(node) of term \(instance.term) lacks committed entry \(entry)")
                        break
                    }
                }
            }
            if let loss = lossAt, instance.term > loss.term, instance.term(at: instance.commitIndex) == instance.term {
                recoveries.append(Double(simulation.now - loss.time) / 1_000_000)
                lossAt = nil
            }
        }
        // A snapshot's last entry is committed, even when no event showed it in the log.
        if let snapshot = instance.snapshot, snapshot.lastIndex > (checkedCommit[node] ?? 0) {
            noteCommitted(term: snapshot.lastTerm, at: snapshot.lastIndex, node: node)
        }
        let from = max(checkedCommit[node] ?? 0, instance.snapshotIndex)
        if instance.commitIndex > from {
            for index in (from + 1)...instance.commitIndex {
                guard let entry = instance.entry(at: index) else { continue }
                if let known = committed[index] {
                    if known != entry { record("two entries committed at index \(index): \(known) and \(entry) (at \(node))") }
                } else {
                    committed[index] = entry
                }
                noteCommitted(term: entry.term, at: index, node: node)
            }
        }
        checkedCommit[node] = instance.commitIndex
    }

    private func noteCommitted(term: UInt64, at index: UInt64, node: NodeID) {
        if let known = committedTerms[index] {
            if known != term { record("two terms committed at index \(index): \(known) and \(term) (at \(node))") }
        } else {
            committedTerms[index] = term
            highestCommitted = max(highestCommitted, index)
        }
    }
}
