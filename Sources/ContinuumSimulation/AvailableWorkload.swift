import ContinuumCore
import ContinuumProtocols

/// The registers and derived registers of the `available` workload.
enum AvailableRegisters {
    /// A register of the workload: its name, its type's operations and its bottom.
    struct Entry: Sendable {
        var name: String
        var bottom: AnyReplicated
        var apply: @Sendable (UInt64, inout AnyReplicated, ReplicaID, UInt64) -> AnyReplicated

        init<Operations: CRDTOperations>(_ name: String, _: Operations.Type) {
            self.name = name
            self.bottom = AnyReplicated(Operations.State.bottom)
            self.apply = { code, state, replica, physical in
                AnyReplicated(state.mutate(as: Operations.State.self) { typed in
                    Operations.apply(code, to: &typed, replica: replica, physical: physical).delta
                }!)
            }
        }
    }

    static let all: [Entry] = [
        Entry("counter", PNCounterOperations.self),
        Entry("gcounter", GCounterOperations.self),
        Entry("set", ORSetOperations.self),
        Entry("set2", ORSetOperations.self),
        Entry("gset", GSetOperations.self),
        Entry("map", ORMapOperations.self),
        Entry("flag", EWFlagOperations.self),
        Entry("lww", LWWRegisterOperations.self),
        Entry("tickets", BoundedCounterOperations.self),
    ]

    typealias Set64 = ORSet<UInt64>

    static func set(_ value: AnyReplicated) -> Set64 { value.unwrap(as: Set64.self)! }

    /// Lasp's combinators over the workload's sets, chained one deep.
    static let derived: [DerivedDefinition] = [
        DerivedDefinition(name: "evens", inputs: ["set"]) { AnyReplicated(set($0[0]).filterElements { $0 % 2 == 0 }) },
        DerivedDefinition(name: "residues", inputs: ["set"]) { AnyReplicated(set($0[0]).mapElements { $0 % 3 }) },
        DerivedDefinition(name: "even-residues", inputs: ["evens"]) { AnyReplicated(set($0[0]).mapElements { $0 % 3 }) },
        DerivedDefinition(name: "union", inputs: ["set", "set2"]) { AnyReplicated(Union(set($0[0]), set($0[1]))) },
        DerivedDefinition(name: "intersection", inputs: ["set", "set2"]) { AnyReplicated(Intersection(set($0[0]), set($0[1]))) },
        DerivedDefinition(name: "product", inputs: ["set", "set2"]) { AnyReplicated(Product(set($0[0]), set($0[1]))) },
        DerivedDefinition(name: "largest", inputs: ["gset"]) { inputs in
            // A fold with max, an associative, commutative and idempotent operation.
            let elements = inputs[0].unwrap(as: GSet<UInt64>.self)!.elements
            return AnyReplicated(elements.reduce(MaxRegister<UInt64>()) { $0.join(MaxRegister($1)) })
        },
    ]
}

/// The `available` simulation workload: random updates of nine registers of different CRDT
/// types at random nodes, threshold reads, and seven derived registers, under swarm faults,
/// over `ReplicationInstance` with SWIM membership (nodes join through seed n1); then a heal.
///
/// Checkers, after every event: inflation of every register at the node (across crashes),
/// no state beyond the join of acknowledged updates, derived registers equal to their
/// definition over the node's current inputs, threshold reads answering at or above their
/// threshold. After the heal: every replica equal to the join of every acknowledged update
/// within the round bound, derived registers equal everywhere, and every threshold read whose
/// node did not crash answered.
public enum AvailableWorkload {
    public static let convergenceRoundsDefault = 60

    public static func run(nodes: Int, seed: UInt64, plantedBug: PlantedReplicationBug? = nil,
                           faults: FaultSettings? = nil, faultPhase: Duration = .seconds(20), warmUp: Duration = .seconds(3),
                           updates: ClosedRange<Int> = 40...200) -> SeedReport {
        var setup = DeterministicRandom(seed: seed ^ 0xA7A1_1AB1_E000)
        let faults = faults ?? FaultSettings.swarm(using: &setup)
        // Freshness certificates (O(N) bytes per message) only where bounded reads would use
        // them; this workload issues none, and its 256-node runs measure replication alone.
        let configuration = ReplicationInstance.Configuration(certificateHeartbeats: nodes <= 64, seeds: [NodeID(1)], plantedBug: plantedBug)
        let simulation = Simulation<ReplicationInstance>(nodeCount: nodes, seed: seed, faults: faults, configuration: configuration)
        let checker = AvailableChecker(simulation: simulation)
        simulation.onOutput = { node, output in checker.observe(output, at: node) }
        simulation.afterStep = { step in checker.check(step) }

        // Every node declares every register and defines the derived ones as it starts.
        var nextID: UInt64 = 1
        func setUp(_ node: NodeID, at time: Int64) {
            for entry in AvailableRegisters.all {
                simulation.scheduleCommand(.declare(id: nextID, register: entry.name, bottom: entry.bottom), to: node, at: time)
                nextID += 1
            }
            for definition in AvailableRegisters.derived {
                simulation.scheduleCommand(.defineDerived(id: nextID, definition), to: node, at: time)
                nextID += 1
            }
        }
        for node in simulation.nodes { setUp(node, at: 0) }
        checker.onRestart = { node in setUp(node, at: simulation.now) }

        // Updates start after a warm-up in which nodes join and exchange their declarations, so
        // that bytes per update measure updates, not setup.
        let faultPhaseEnd = faultPhase.nanoseconds
        let warmUpEnd = warmUp.nanoseconds
        var bytesAtWarmUp = 0
        simulation.scheduleCallback(at: warmUpEnd) {
            let bytes = simulation.statistics.bytesSent
            bytesAtWarmUp = (bytes["deltas"] ?? 0) + (bytes["acks"] ?? 0)
        }
        for _ in 0..<Int.random(in: updates, using: &setup) {
            let time = Int64.random(in: warmUpEnd..<faultPhaseEnd, using: &setup)
            let node = simulation.nodes.randomElement(using: &setup)!
            let entry = AvailableRegisters.all.randomElement(using: &setup)!
            let code = setup.next()
            let id = nextID
            nextID += 1
            checker.updateIDs.insert(id)
            // Half the updates are upserts (declare if absent, then update, in one step; they
            // complete with the delta rather than the state).
            let mutation: ReplicationInstance.Mutation = { state, replica, physical in entry.apply(code, &state, replica, physical) }
            simulation.scheduleCommand(
                code & (1 << 40) == 0
                    ? .update(id: id, register: entry.name, typeName: entry.bottom.typeName, mutation: mutation)
                    : .upsert(id: id, register: entry.name, bottom: entry.bottom, mutation: mutation),
                to: node, at: time)
        }
        // Threshold reads on the grow-only counter, each for a state the counter had reached
        // somewhere by then, so that every one of them must eventually be answered.
        for _ in 0..<Int.random(in: 5...20, using: &setup) {
            let time = Int64.random(in: 1..<faultPhaseEnd, using: &setup)
            let node = simulation.nodes.randomElement(using: &setup)!
            let id = nextID
            nextID += 1
            simulation.scheduleCallback(at: time) {
                let threshold = checker.expected["gcounter"] ?? AnyReplicated(GCounter.bottom)
                checker.issuedRead(id, at: node, threshold: threshold)
                simulation.scheduleCommand(.thresholdRead(id: id, register: "gcounter", threshold: threshold), to: node, at: simulation.now)
            }
        }

        simulation.injectFaults(until: faultPhaseEnd)
        simulation.run(until: faultPhaseEnd)
        simulation.healAll()

        let round = configuration.gossipInterval.nanoseconds
        var roundsToConverge: Int?
        for completed in 0...convergenceRoundsDefault {
            simulation.run(until: faultPhaseEnd + Int64(completed) * round)
            if checker.converged() {
                roundsToConverge = completed
                break
            }
        }
        if roundsToConverge == nil { checker.record(checker.divergenceReport(rounds: convergenceRoundsDefault)) }
        checker.checkReadsAnswered()

        let bytes = simulation.statistics.bytesSent
        let replicationBytes = (bytes["deltas"] ?? 0) + (bytes["acks"] ?? 0) - bytesAtWarmUp
        return SeedReport(
            seed: seed, crdt: "registers", faults: faults, traceHash: simulation.trace.value,
            violations: checker.violations, roundsToConverge: roundsToConverge,
            updatesAcknowledged: checker.acknowledgedUpdates, updatesRefused: checker.refusedCommands,
            statistics: simulation.statistics,
            replicationBytesPerUpdate: checker.acknowledgedUpdates == 0 ? nil : Double(replicationBytes) / Double(checker.acknowledgedUpdates),
            membershipBytes: bytes["membership"] ?? 0)
    }
}

/// The checks of the `available` workload.
final class AvailableChecker {
    private unowned let simulation: Simulation<ReplicationInstance>
    private(set) var expected: [String: AnyReplicated] = [:]
    private var lastSeen: [NodeID: [String: RegisterSlot]] = [:]
    private(set) var violations: [String] = []
    private(set) var acknowledgedUpdates = 0
    private(set) var refusedCommands = 0
    private var reads: [UInt64: (node: NodeID, threshold: AnyReplicated, answered: Bool, crashed: Bool)] = [:]
    var onRestart: ((NodeID) -> Void)?
    private var lastDerived: [NodeID: [String: AnyReplicated?]] = [:]
    /// A full sweep of a node's registers every this many of its timer events.
    static let sweepEveryTimers = 8
    private var timerCount: [NodeID: Int] = [:]
    /// Whether `node` reported a derived register changed since its last check.
    private func reportedDerived(_ node: NodeID) -> Bool {
        defer { reportedDerivedNodes.remove(node) }
        return reportedDerivedNodes.contains(node)
    }
    private var reportedDerivedNodes: Set<NodeID> = []
    /// Registers each node reported changed since its last check.
    private var reported: [NodeID: Set<String>] = [:]
    /// The command ids that are updates (the others declare registers and define derived ones).
    var updateIDs: Set<UInt64> = []

    init(simulation: Simulation<ReplicationInstance>) { self.simulation = simulation }

    func record(_ violation: String) {
        guard violations.count < GossipWorkload.violationsMax else { return }
        violations.append("t=\(milliseconds(.nanoseconds(simulation.now))): \(violation)")
    }

    func issuedRead(_ id: UInt64, at node: NodeID, threshold: AnyReplicated) {
        reads[id] = (node, threshold, false, false)
    }

    func observe(_ output: ReplicationInstance.Output, at node: NodeID) {
        switch output {
        case let .completed(id, register, .success(state?)):
            // Updates and declarations: the state after is what the node acknowledged.
            guard AvailableRegisters.all.contains(where: { $0.name == register }) else { return }
            expected[register] = expected[register].flatMap { $0.join(state) } ?? state
            if updateIDs.contains(id) { acknowledgedUpdates += 1 }
        case .completed(_, _, .success(nil)):
            return
        case let .completed(_, _, .failure(error)):
            if case .mutationRefused = error { return }  // a bounded counter without rights: expected
            record("\(node): command failed: \(error)")
        case let .thresholdReached(id, value):
            guard let read = reads[id] else { return record("\(node): unknown threshold read \(id) answered") }
            reads[id]?.answered = true
            if read.threshold.isBelowOrEqual(value) != true {
                record("\(node): threshold read \(id) answered \(value), below its threshold \(read.threshold)")
            }
        case let .thresholdFailed(id, error):
            record("\(node): threshold read \(id) failed: \(error)")
        case .boundedReadCompleted:
            return  // this workload issues none (see BoundedWorkload)
        case let .changed(register, _):
            if AvailableRegisters.derived.contains(where: { $0.name == register }) {
                reportedDerivedNodes.insert(node)
            } else {
                reported[node, default: []].insert(register)
            }
        case .reachabilityChanged:
            return
        }
    }

    func check(_ step: Simulation<ReplicationInstance>.Step) {
        switch step {
        case let .restarted(node):
            checkNode(node, context: "restart", sweep: true)
            onRestart?(node)
        case let .crashed(node):
            for (id, read) in reads where read.node == node && !read.answered { reads[id]?.crashed = true }
        case let .timerFired(node):
            timerCount[node, default: 0] += 1
            checkNode(node, context: "timer", sweep: timerCount[node]! % Self.sweepEveryTimers == 0)
        case let .started(node), let .delivered(node), let .commandHandled(node, _):
            checkNode(node, context: "\(step)", sweep: false)
        case let .commandRefused(_, command):
            // A read sent to a node that was down was never issued.
            if case let .thresholdRead(id, _, _) = command { reads[id] = nil } else { refusedCommands += 1 }
        case .network:
            return
        }
    }

    /// Checks the registers of `node` that changed. The instance's change reports say which
    /// did; a `sweep` (after every timer and restart) compares every register with what was last
    /// seen instead (every `sweepEveryTimers` timer events), so a change the instance did not
    /// report is caught too, a little later.
    private func checkNode(_ node: NodeID, context: @autoclosure () -> String, sweep: Bool) {
        guard let instance = simulation.instance(node) else { return }
        let isRestart = sweep && context() == "restart"
        var seen = lastSeen[node] ?? [:]
        var changed: Set<String> = []
        let candidates = sweep ? Set(instance.slots.keys.lazy.map(\.name)).union(seen.keys) : reported[node, default: []]
        reported[node] = []
        for register in candidates.sorted() {
            guard let slot = instance.slots[RegisterKey(register)], seen[register] != slot else { continue }
            changed.insert(register)
            if let previous = seen[register], !previous.isBelowOrEqual(slot) {
                record("inflation violated at \(node) for '\(register)' (\(context())): \(previous) went to \(slot)")
            }
            if let state = slot.state, let bound = expected[register], state.isBelowOrEqual(bound) != true {
                record("\(node) '\(register)' holds \(state), beyond every acknowledged update \(bound)")
            }
            seen[register] = slot
        }
        for register in seen.keys where instance.slots[RegisterKey(register)] == nil {
            record("\(node) lost register '\(register)' (\(context()))")
        }
        lastSeen[node] = seen
        guard sweep || !changed.isEmpty || reportedDerived(node) else { return }
        var derivedSeen = lastDerived[node] ?? [:]
        for definition in instance.derived {
            let current = instance.derivedValues[definition.name]
            let derivedChanged = derivedSeen[definition.name] != current
            derivedSeen[definition.name] = current
            guard derivedChanged || !changed.isDisjoint(with: definition.inputs) || isRestart else { continue }
            changed.insert(definition.name)
            let inputs = definition.inputs.compactMap { instance.value(of: $0) }
            guard inputs.count == definition.inputs.count else { continue }
            let should = definition.compute(inputs)
            if current != should {
                record("\(node) derived '\(definition.name)' is \(current.map { "\($0)" } ?? "nil"), its definition gives \(should.map { "\($0)" } ?? "nil")")
            }
        }
        lastDerived[node] = derivedSeen
    }

    func converged() -> Bool {
        let instances = simulation.nodes.compactMap { simulation.instance($0) }
        guard instances.count == simulation.nodes.count else { return false }
        for (register, state) in expected where !instances.allSatisfy({ $0.slots[RegisterKey(register)]?.state == state }) { return false }
        for definition in AvailableRegisters.derived {
            let values = instances.map { $0.derivedValues[definition.name] }
            if Set(values.map { $0.map { "\($0)" } ?? "nil" }).count > 1 { return false }
        }
        return true
    }

    func checkReadsAnswered() {
        for id in reads.keys.sorted() {
            guard let read = reads[id], !read.answered, !read.crashed else { continue }
            record("threshold read \(id) at \(read.node) for \(read.threshold) never answered after convergence")
        }
    }

    func divergenceReport(rounds: Int) -> String {
        var lines = ["not converged \(rounds) gossip rounds after heal"]
        for (register, state) in expected.sorted(by: { $0.key < $1.key }) {
            let differing = simulation.nodes.filter { simulation.instance($0)?.slots[RegisterKey(register)]?.state != state }
            guard !differing.isEmpty else { continue }
            let example = differing[0]
            lines.append("'\(register)': \(differing.count) nodes differ, e.g. \(example): "
                         + "\(simulation.instance(example).map { "\($0.slots[RegisterKey(register)].map { "\($0)" } ?? "absent")" } ?? "down"); expected \(state)")
        }
        return lines.prefix(4).joined(separator: "; ")
    }
}
