import ContinuumCore
import ContinuumProtocols


/// The `serializable` simulation workload: clients run transactions through random
/// coordinators of the Austere protocol (two-phase locks and two-phase commit at every
/// replica), under swarm faults plus crashes of coordinators between prepare and decision.
///
/// Transactions: list-append (one to four appends and reads on five lists, Elle's workload),
/// transfers between four accounts (read two, move an amount if it is there), and audits (read
/// every account). Checked after every event: no two conflicting locks granted at a replica;
/// no two replicas learn different decisions for one transaction. At the end, after a heal:
/// the list-append history is strictly serializable (`ListAppendChecker`); every committed
/// audit sums to the initial total; every replica holds the same committed state; no
/// transaction is left prepared anywhere.
///
/// Beside them, readers read one list at a random replica's committed state under a staleness
/// bound (no locks), checked in true time by the `bounded` workload's checker: no served read
/// misses an append acknowledged at or more than S before it began, the staleness it reports is
/// never below the true one, and it completes within its latency bound.
public enum SerializableWorkload {
    public static let clients = 4
    public static let lists = ["l0", "l1", "l2", "l3", "l4"]
    public static let accounts = ["a0", "a1", "a2", "a3"]
    public static let initialBalance: Int64 = 100
    public static let latencyBound: Duration = .milliseconds(500)
    /// Staleness-bounded readers, their bounds and latency.
    public static let readers = 2
    public static let readBounds: [Duration] = [.zero, .milliseconds(10), .milliseconds(100), .seconds(1)]
    public static let readLatency: Duration = .milliseconds(100)

    public static func run(nodes: Int, seed: UInt64, plantedBug: PlantedTransactionBug? = nil, faults: FaultSettings? = nil,
                           faultPhase: Duration = .seconds(20)) -> SeedReport {
        var setup = DeterministicRandom(seed: seed ^ 0x5E71_A112_AB1E)
        let faults = faults ?? FaultSettings.swarm(using: &setup)
        // A replica certifies its committed state on its own clock: skew between clocks does not
        // matter, drift does (the default bound, 1000 ppm, is above the swarm's 500 ppm).
        let freshness = FreshnessGate.Configuration()
        let simulation = Simulation<TransactionInstance>(nodeCount: nodes, seed: seed, faults: faults,
                                                         configuration: .init(plantedBug: plantedBug, freshness: freshness))
        let checker = TransactionChecker(simulation: simulation)
        let boundedChecker = BoundedChecker(now: { simulation.now })
        let driver = TransactionDriver(simulation: simulation, checker: checker, boundedChecker: boundedChecker, random: setup.split())
        var coordinatorCrashes = setup.split()
        simulation.onOutput = { _, output in driver.output(output) }
        simulation.afterStep = { step in
            checker.check(step)
            if case let .commandRefused(_, command) = step { driver.refused(command) }
            if case let .crashed(node) = step { boundedChecker.crashed(node) }
            // Crash a coordinator right after it sent its prepares, now and then, before it decides.
            if case let .commandHandled(node, .commit(_, writes)) = step, !writes.isEmpty,
               simulation.now < faultPhase.nanoseconds, coordinatorCrashes.chance(0.03) {
                simulation.scheduleCrash(of: node, at: simulation.now + Int64.random(in: 0...2_000_000, using: &coordinatorCrashes))
                simulation.scheduleRestart(of: node, at: simulation.now + Int64.random(in: 50_000_000...1_500_000_000, using: &coordinatorCrashes))
            }
        }
        let end = faultPhase.nanoseconds
        // Clients go on for 5 s after the heal: transactions must commit again (liveness).
        driver.start(until: end + 5_000_000_000, faultsEnd: end)
        simulation.injectFaults(until: end)
        simulation.run(until: end)
        simulation.healAll()
        // Long enough for every coordinator's decision retries and every participant's query.
        simulation.run(until: end + 10_000_000_000)

        checker.checkFinalState()
        boundedChecker.finish()
        if driver.committedAfterHeal == 0 { checker.record("liveness: no transaction committed in the 5 s after the heal") }
        var violations = checker.violations
        violations += ListAppendChecker.violations(driver.transactions).prefix(3)
        violations += driver.auditViolations.prefix(3)
        violations += boundedChecker.violations.prefix(3)
        var report = SeedReport(
            seed: seed, crdt: "austere", faults: faults, traceHash: simulation.trace.value,
            violations: Array(violations.prefix(GossipWorkload.violationsMax)), roundsToConverge: nil,
            updatesAcknowledged: driver.committedCount, updatesRefused: driver.abortedCount, statistics: simulation.statistics)
        report.operationsPerSecond = Double(driver.committedDuringFaults) / faultPhase.milliseconds * 1_000
        report.boundedReads = boundedChecker.outcomes
        return report
    }
}

/// The clients of the serializable workload.
final class TransactionDriver {
    enum Kind { case listAppend, transfer, audit }

    struct Running {
        var slot: Int
        var node: NodeID
        var kind: Kind
        var record: Int
        var requests: [LockRequest]
    }

    private unowned let simulation: Simulation<TransactionInstance>
    private unowned let checker: TransactionChecker
    private unowned let boundedChecker: BoundedChecker
    private var random: DeterministicRandom
    private var nextRead: UInt64 = 0
    private var stopAt: Int64 = 0
    private var nextHandle: UInt64 = 0
    private var nextValue: Int64 = 0
    private var running: [UInt64: Running] = [:]
    private(set) var transactions: [ListAppendChecker.Transaction] = []
    private(set) var auditViolations: [String] = []
    private(set) var committedCount = 0
    private(set) var abortedCount = 0
    private(set) var committedDuringFaults = 0

    init(simulation: Simulation<TransactionInstance>, checker: TransactionChecker, boundedChecker: BoundedChecker, random: DeterministicRandom) {
        self.simulation = simulation
        self.checker = checker
        self.boundedChecker = boundedChecker
        self.random = random
    }

    private var faultsEnd: Int64 = 0
    private(set) var committedAfterHeal = 0

    func start(until end: Int64, faultsEnd: Int64) {
        stopAt = end
        self.faultsEnd = faultsEnd
        for slot in 0..<SerializableWorkload.clients {
            simulation.scheduleCallback(at: Int64.random(in: 0..<20_000_000, using: &random)) { [unowned self] in begin(slot) }
        }
        for _ in 0..<SerializableWorkload.readers {
            simulation.scheduleCallback(at: Int64.random(in: 0..<20_000_000, using: &random)) { [unowned self] in boundedRead() }
        }
    }

    /// A staleness-bounded read of one list at a random replica, then the next one.
    private func boundedRead() {
        guard simulation.now < stopAt else { return }
        nextRead += 1
        let id = nextRead
        let node = simulation.nodes.randomElement(using: &random)!
        let key = SerializableWorkload.lists.randomElement(using: &random)!
        let levels = [ServiceLevel.staleness(SerializableWorkload.readBounds.randomElement(using: &random)!, within: SerializableWorkload.readLatency)]
        if simulation.isUp(node), let instance = simulation.instance(node) {
            boundedChecker.started(read: id, at: node, levels: levels,
                                   localStaleness: instance.certifiedStaleness(now: simulation.localTime(node), key: key), scope: key)
        }
        simulation.scheduleCommand(.boundedRead(id: id, key: key, levels: levels), to: node, at: simulation.now)
        simulation.scheduleCallback(at: simulation.now + Int64.random(in: 5_000_000...30_000_000, using: &random)) { [unowned self] in boundedRead() }
    }

    private func begin(_ slot: Int) {
        guard simulation.now < stopAt else { return }
        nextHandle += 1
        let handle = nextHandle
        let node = simulation.nodes.randomElement(using: &random)!
        let kind: Kind = switch Int.random(in: 0..<10, using: &random) {
        case 0..<6: .listAppend
        case 6..<9: .transfer
        default: .audit
        }
        var operations: [ListAppendChecker.MicroOperation] = []
        var requests: [LockRequest] = []
        switch kind {
        case .listAppend:
            for _ in 0..<Int.random(in: 1...4, using: &random) {
                let key = SerializableWorkload.lists.randomElement(using: &random)!
                if Bool.random(using: &random) {
                    nextValue += 1
                    operations.append(.append(key: key, value: nextValue))
                    boundedChecker.wrote(UInt64(nextValue), scope: key)
                } else {
                    operations.append(.read(key: key, observed: nil))
                }
            }
            let written = Set(operations.compactMap { if case let .append(key, _) = $0 { key } else { nil } })
            let keys = Set(operations.map { switch $0 { case let .append(key, _), let .read(key, _): key } })
            requests = keys.sorted().map { LockRequest(key: $0, mode: written.contains($0) ? .exclusive : .shared) }
        case .transfer:
            let pair = SerializableWorkload.accounts.shuffled(using: &random).prefix(2).sorted()
            requests = pair.map { LockRequest(key: $0, mode: .exclusive) }
        case .audit:
            requests = SerializableWorkload.accounts.map { LockRequest(key: $0, mode: .shared) }
        }
        let record = transactions.count
        transactions.append(.init(id: Int(handle), operations: operations, invoked: simulation.now, completed: .max, committed: nil))
        running[handle] = Running(slot: slot, node: node, kind: kind, record: record, requests: requests)
        // A client whose last attempt died under wait-die retries with that attempt's age.
        let age = retryAges.removeValue(forKey: slot)
        simulation.scheduleCommand(.begin(handle: handle, latency: SerializableWorkload.latencyBound, age: age), to: node, at: simulation.now)
        simulation.scheduleCommand(.lock(handle: handle, step: 1, requests), to: node, at: simulation.now)
        // The client's own timeout: a coordinator that crashes never answers.
        simulation.scheduleCallback(at: simulation.now + SerializableWorkload.latencyBound.nanoseconds + 5_000_000) { [unowned self] in
            conclude(handle, committed: nil)
        }
    }

    func refused(_ command: TransactionInstance.Command) {
        switch command {
        case let .begin(handle, _, _): conclude(handle, committed: false)
        case let .boundedRead(id, _, _): boundedChecker.refused(read: id)
        default: break
        }
    }

    func output(_ output: TransactionInstance.Output) {
        switch output {
        case let .locked(handle, _, values):
            guard let transaction = running[handle] else { return }
            let writes = compute(transaction, values)
            simulation.scheduleCommand(.commit(handle: handle, writes), to: transaction.node, at: simulation.now)
        case let .committed(handle):
            conclude(handle, committed: true)
        case let .aborted(handle, reason, retryAge):
            abortReasons[String(reason.prefix(40)), default: 0] += 1
            if let slot = running[handle]?.slot, let retryAge { retryAges[slot] = retryAge }
            conclude(handle, committed: false)
        case let .boundedReadCompleted(id, .success(answer)):
            var values: Set<UInt64> = []
            if case let .list(items)? = answer.value { values = Set(items.map { UInt64($0) }) }
            boundedChecker.completed(read: id, .success((values, answer.receipt)))
        case let .boundedReadCompleted(id, .failure(.stalenessBoundUnmet(best))):
            boundedChecker.completed(read: id, .unmet(best))
        case let .boundedReadCompleted(id, .failure(error)):
            boundedChecker.completed(read: id, .error("\(error)"))
        }
    }

    /// The transaction's writes from the values read under its locks (and its reads recorded).
    private func compute(_ transaction: Running, _ values: [String: TransactionValue]) -> [TransactionWrite] {
        func list(_ key: String) -> [Int64] { if case let .list(items)? = values[key] { items } else { [] } }
        func balance(_ key: String) -> Int64 { if case let .int(amount)? = values[key] { amount } else { SerializableWorkload.initialBalance } }
        switch transaction.kind {
        case .listAppend:
            var current: [String: [Int64]] = [:]
            var operations = transactions[transaction.record].operations
            for index in operations.indices {
                switch operations[index] {
                case let .append(key, value):
                    current[key, default: list(key)].append(value)
                case let .read(key, _):
                    operations[index] = .read(key: key, observed: current[key] ?? list(key))
                }
            }
            transactions[transaction.record].operations = operations
            return current.keys.sorted().map { TransactionWrite(key: $0, value: .list(current[$0]!)) }
        case .transfer:
            let from = transaction.requests[0].key
            let to = transaction.requests[1].key
            let amount = Int64.random(in: 1...30, using: &random)
            guard balance(from) >= amount else { return [] }
            return [TransactionWrite(key: from, value: .int(balance(from) - amount)), TransactionWrite(key: to, value: .int(balance(to) + amount))]
        case .audit:
            let total = SerializableWorkload.accounts.reduce(0) { $0 + balance($1) }
            let expected = Int64(SerializableWorkload.accounts.count) * SerializableWorkload.initialBalance
            if total != expected { pendingAudit[transaction.record] = "audit saw a total of \(total), not \(expected): \(values)" }
            return []
        }
    }

    private var pendingAudit: [Int: String] = [:]
    /// Per client: the age to retry with after a wait-die death (textbook wait-die keeps it).
    private var retryAges: [Int: UInt64] = [:]
    /// Why transactions aborted, by the first words of the reason (for reports).
    private(set) var abortReasons: [String: Int] = [:]

    private func conclude(_ handle: UInt64, committed: Bool?) {
        guard let transaction = running.removeValue(forKey: handle) else { return }
        transactions[transaction.record].completed = simulation.now
        transactions[transaction.record].committed = committed
        if committed != true {
            // Reads of a transaction that did not commit say nothing.
            transactions[transaction.record].operations.removeAll { if case .read = $0 { true } else { false } }
        }
        if let problem = pendingAudit.removeValue(forKey: transaction.record), committed == true { auditViolations.append(problem) }
        switch committed {
        case true?:
            for case let .append(_, value) in transactions[transaction.record].operations { boundedChecker.acknowledged(write: UInt64(value)) }
            committedCount += 1
            if simulation.now < faultsEnd { committedDuringFaults += 1 } else { committedAfterHeal += 1 }
        case false?: abortedCount += 1
        case nil: break
        }
        let pause = Int64.random(in: 0...10_000_000, using: &random)
        simulation.scheduleCallback(at: simulation.now + pause) { [unowned self] in begin(transaction.slot) }
    }
}

/// The per-step and final checks of the serializable workload.
final class TransactionChecker {
    private unowned let simulation: Simulation<TransactionInstance>
    private(set) var violations: [String] = []
    private var decided: [TransactionID: (Bool, NodeID)] = [:]

    init(simulation: Simulation<TransactionInstance>) { self.simulation = simulation }

    func record(_ violation: String) {
        guard violations.count < GossipWorkload.violationsMax else { return }
        violations.append("t=\(milliseconds(.nanoseconds(simulation.now))): \(violation)")
    }

    func check(_ step: Simulation<TransactionInstance>.Step) {
        switch step {
        case let .started(node), let .restarted(node), let .delivered(node), let .timerFired(node), let .commandHandled(node, _):
            guard let instance = simulation.instance(node) else { return }
            for conflict in instance.locks.conflicts { record("\(node) granted conflicting locks: \(conflict)") }
            for (id, commit) in instance.decisions {
                if let (other, at) = decided[id] {
                    if other != commit { record("\(id) decided \(commit ? "commit" : "abort") at \(node) but \(other ? "commit" : "abort") at \(at)") }
                } else {
                    decided[id] = (commit, node)
                }
            }
        case .crashed, .network, .commandRefused:
            return
        }
    }

    func checkFinalState() {
        let instances = simulation.nodes.compactMap { node in simulation.instance(node).map { (node, $0) } }
        guard instances.count == simulation.nodes.count else {
            record("not every node is up after the heal")
            return
        }
        let first = instances[0].1.committed
        for (node, instance) in instances.dropFirst() where instance.committed != first {
            let keys = Set(first.keys).union(instance.committed.keys).filter { first[$0] != instance.committed[$0] }.sorted()
            record("committed state differs between \(instances[0].0) and \(node) on \(keys)")
        }
        for (node, instance) in instances where !instance.preparedHere.isEmpty {
            record("\(node) still has \(instance.preparedHere.count) transactions prepared 10 s after the heal: \(instance.preparedHere.keys.sorted())")
        }
    }
}
