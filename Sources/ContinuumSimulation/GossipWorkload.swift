import ContinuumCore
import ContinuumProtocols

/// The settings of one gossip simulation run.
public struct GossipRunSettings: Sendable {
    public var nodes: Int
    public var seed: UInt64
    public var plantedBug: PlantedGossipBug?
    /// Faults: drawn from the seed (swarm) unless given.
    public var faults: FaultSettings?
    /// How long updates arrive and faults are injected, in virtual time.
    public var faultPhase: Duration = .seconds(20)
    public var gossipInterval: Duration = .milliseconds(100)
    /// Gossip rounds after the heal within which every replica must hold the same state.
    public var convergenceRoundsMax: Int = GossipRunSettings.convergenceRoundsDefault

    /// Full-state push-pull gossip among a handful of nodes converges in a few rounds once
    /// the network heals (measured: at most 3 over 200 swarm seeds of 5 nodes); 40 leaves a
    /// wide margin for slow links and reordering without letting a stuck protocol pass.
    public static let convergenceRoundsDefault = 40

    public init(nodes: Int, seed: UInt64, plantedBug: PlantedGossipBug? = nil, faults: FaultSettings? = nil) {
        self.nodes = nodes
        self.seed = seed
        self.plantedBug = plantedBug
        self.faults = faults
    }
}

/// What one seed did and found.
public struct SeedReport: Sendable {
    public var seed: UInt64
    public var crdt: String
    public var faults: FaultSettings
    public var traceHash: UInt64
    public var violations: [String]
    /// Gossip rounds from the heal until all replicas held the same, complete state.
    public var roundsToConverge: Int?
    public var updatesAcknowledged: Int
    public var updatesRefused: Int
    public var statistics: SimulationStatistics
    /// Bytes of replication messages (deltas and acknowledgements) sent after the warm-up, per
    /// acknowledged update: updates, their spreading, and the resyncs that faults cause.
    public var replicationBytesPerUpdate: Double? = nil
    /// Bytes of membership and failure-detection messages.
    public var membershipBytes: Int = 0
    /// Linearizable workload: histories the checker could not decide within its budget.
    public var unknownVerdicts: Int = 0
    /// Linearizable workload: simulated milliseconds from a leader's loss to a new leader
    /// that committed an entry of its term.
    public var leaderRecoveriesMilliseconds: [Double] = []
    /// Linearizable workload: operations completed ok per simulated second of the fault phase.
    public var operationsPerSecond: Double? = nil
    /// Linearizable workload: the recorded history.
    public var history: [HistoryEvent] = []
    /// Bounded workload: every read's outcome.
    public var boundedReads: [BoundedReadOutcome] = []
}

/// The `gossip` simulation workload: random updates of one CRDT register at random nodes
/// while swarm faults rage, then a heal and a liveness phase. Checkers:
/// - *inflation*, after every event: a node's state never goes down in the lattice order,
///   across crashes and restarts included;
/// - *no invention*, after every event: a node's state is below the join of all acknowledged
///   updates (nothing appears that nobody wrote);
/// - *convergence*, after the heal: within `convergenceRoundsMax` gossip rounds every replica
///   equals the join of every acknowledged update (so no acknowledged update is lost).
public enum GossipWorkload {
    /// The most violations recorded per seed; the first is what matters.
    public static let violationsMax = 5

    public static func run<Operations: CRDTOperations>(_ operations: Operations.Type, _ settings: GossipRunSettings) -> SeedReport {
        typealias Value = Operations.State
        typealias Instance = GossipUnderTest<Value>

        var setup = DeterministicRandom(seed: settings.seed ^ 0x5EED_0F_F4017)
        let faults = settings.faults ?? FaultSettings.swarm(using: &setup)
        let gossip = FullStateGossip<Value>.Configuration(
            gossipInterval: settings.gossipInterval, gossipJitter: settings.gossipInterval / 5)
        let simulation = Simulation<Instance>(
            nodeCount: settings.nodes, seed: settings.seed, faults: faults,
            configuration: .init(gossip: gossip, plantedBug: settings.plantedBug))

        let checker = GossipChecker<Value>(simulation: simulation)
        simulation.onOutput = { _, output in
            switch output {
            case let .acknowledged(_, delta): checker.acknowledged(delta)
            }
        }
        simulation.afterStep = { step in checker.check(step) }

        // Updates: random times in the fault phase, random nodes, random operations.
        let faultPhaseEnd = settings.faultPhase.nanoseconds
        let updateCount = Int.random(in: 20...120, using: &setup)
        for id in 0..<updateCount {
            let time = Int64.random(in: 0..<faultPhaseEnd, using: &setup)
            let node = simulation.nodes.randomElement(using: &setup)!
            let code = setup.next()
            let update = FullStateGossip<Value>.Update(id: UInt64(id), label: "op \(code)") { state, replica, physical in
                Operations.apply(code, to: &state, replica: replica, physical: physical).delta
            }
            simulation.scheduleCommand(update, to: node, at: time)
        }

        simulation.injectFaults(until: faultPhaseEnd)
        simulation.run(until: faultPhaseEnd)
        simulation.healAll()

        // Liveness: after the heal, all replicas must reach the join of every acknowledged update.
        var roundsToConverge: Int?
        let round = settings.gossipInterval.nanoseconds
        for completed in 0...settings.convergenceRoundsMax {
            simulation.run(until: faultPhaseEnd + Int64(completed) * round)
            if checker.converged() {
                roundsToConverge = completed
                break
            }
        }
        if roundsToConverge == nil { checker.record(checker.divergenceReport(rounds: settings.convergenceRoundsMax)) }

        return SeedReport(
            seed: settings.seed, crdt: Operations.name, faults: faults, traceHash: simulation.trace.value,
            violations: checker.violations, roundsToConverge: roundsToConverge,
            updatesAcknowledged: checker.acknowledgedCount, updatesRefused: checker.refusedCount,
            statistics: simulation.statistics)
    }
}

/// The per-step and end checks of the gossip workload.
final class GossipChecker<Value: Lattice & BinaryCodable> {
    typealias Instance = GossipUnderTest<Value>

    private unowned let simulation: Simulation<Instance>
    /// The last state seen at each node, kept across crashes.
    private var lastSeen: [NodeID: Value] = [:]
    /// The join of every acknowledged delta: what every replica must reach.
    private(set) var expected = Value.bottom
    private(set) var violations: [String] = []
    private(set) var acknowledgedCount = 0
    private(set) var refusedCount = 0

    init(simulation: Simulation<Instance>) { self.simulation = simulation }

    func acknowledged(_ delta: Value) {
        acknowledgedCount += 1
        expected.formJoin(delta)
    }

    func record(_ violation: String) {
        guard violations.count < GossipWorkload.violationsMax else { return }
        violations.append("t=\(milliseconds(.nanoseconds(simulation.now))): \(violation)")
    }

    func check(_ step: Simulation<Instance>.Step) {
        switch step {
        case .commandRefused:
            refusedCount += 1
        case let .started(node), let .restarted(node), let .delivered(node), let .timerFired(node), let .commandHandled(node, _):
            guard let state = simulation.instance(node)?.value else { return }
            if let previous = lastSeen[node], !previous.isBelowOrEqual(state) {
                record("inflation violated at \(node) (\(step)): \(previous) went to \(state)")
            }
            if !state.isBelowOrEqual(expected) {
                record("\(node) holds a state no acknowledged update explains: \(state), acknowledged join \(expected)")
            }
            lastSeen[node] = state
        case .crashed, .network:
            return
        }
    }

    /// Every node is up and holds exactly the join of the acknowledged updates.
    func converged() -> Bool {
        simulation.nodes.allSatisfy { simulation.instance($0)?.value == expected }
    }

    func divergenceReport(rounds: Int) -> String {
        let states = simulation.nodes.map { node in
            "\(node): " + (simulation.instance(node).map { "\($0.value)" } ?? "down")
        }
        return "not converged \(rounds) gossip rounds after heal; expected \(expected); " + states.joined(separator: "; ")
    }
}
