import ContinuumCore
import ContinuumProtocols
import HeapModule

/// Counts of what the simulated network and nodes did in one run.
public struct SimulationStatistics: Sendable, Equatable {
    public var eventsProcessed = 0
    public var messagesSent = 0
    public var messagesDelivered = 0
    public var messagesLost = 0
    public var messagesDuplicated = 0
    public var messagesCutByPartition = 0
    public var messagesToDownNodes = 0
    public var partitions = 0
    public var crashes = 0
    public var restarts = 0
    public var persists = 0
    /// The run stopped at `eventsMax` events: the protocol flooded the queue.
    public var flooded = false
    /// Encoded bytes sent, by the instance's traffic class.
    public var bytesSent: [String: Int] = [:]
}

/// A deterministic discrete-event simulator for any `ProtocolInstance` (docs/design.md section 5;
/// after FoundationDB's simulation and TigerBeetle's VOPR).
///
/// One thread, one event queue ordered by (virtual time, sequence number), one seed. The seed
/// drives every latency, loss, duplication, reordering, partition, crash, restart and clock
/// error, and seeds the instances' own generators, so a run is a function of its seed: the
/// trace hash of two runs of one seed must match.
///
/// Time: `now` is true virtual time in nanoseconds. Each node reads its own clock, offset and
/// drifting from true time; instances see only that local time, and their timers run in it.
/// Crash: the instance and its timers are dropped, its durable state (the last `persist`) is
/// kept, and a restart rebuilds the instance from it. Effects of one event are carried out in
/// order and atomically: a crash falls between events.
public final class Simulation<Instance: ProtocolInstance> {
    public typealias Effect = Instance.Effect

    /// A directed link; `cuts` counts the active partitions that cut it.
    struct Link: Hashable {
        var from: NodeID
        var to: NodeID
    }

    enum EventKind {
        case start(NodeID)
        case deliver(from: NodeID, to: NodeID, Instance.Message, encoded: [UInt8])
        case timer(NodeID, Instance.Timer, generation: UInt64)
        case command(NodeID, Instance.Command)
        case crash(NodeID)
        case restart(NodeID)
        case faultTick
        case healPartition(links: [Link])
        case callback(() -> Void)
    }

    struct ScheduledEvent: Comparable {
        var time: Int64
        var sequence: UInt64
        var kind: EventKind

        static func < (lhs: ScheduledEvent, rhs: ScheduledEvent) -> Bool { (lhs.time, lhs.sequence) < (rhs.time, rhs.sequence) }
        static func == (lhs: ScheduledEvent, rhs: ScheduledEvent) -> Bool { (lhs.time, lhs.sequence) == (rhs.time, rhs.sequence) }
    }

    struct NodeClock {
        var offsetNanoseconds: Int64
        var driftPartsPerMillion: Int64

        func localTime(atTrueTime time: Int64) -> Int64 {
            time + offsetNanoseconds + time / 1_000_000 * driftPartsPerMillion
        }

        /// True time that passes while this clock advances by `local`.
        func trueDuration(ofLocal local: Int64) -> Int64 {
            max(0, local * 1_000_000 / (1_000_000 + driftPartsPerMillion))
        }
    }

    struct SimulatedNode {
        var instance: Instance?
        var durable: Instance.Durable?
        var clock: NodeClock
        /// Current generation of each pending timer; a firing with another generation is stale.
        var timers: [Instance.Timer: UInt64] = [:]
        var isUp: Bool { instance != nil }
    }

    /// What the last processed event was, for per-step checkers.
    public enum Step: Sendable {
        case started(NodeID)
        case delivered(to: NodeID)
        case timerFired(NodeID)
        case commandHandled(NodeID, Instance.Command)
        /// The node was down: the command was not delivered.
        case commandRefused(NodeID, Instance.Command)
        case crashed(NodeID)
        case restarted(NodeID)
        case network
    }

    /// Events processed past this count stop the run: a protocol that floods the queue is a bug.
    public static var eventsMax: Int { 20_000_000 }

    public let seed: UInt64
    public let nodes: [NodeID]
    public private(set) var faults: FaultSettings
    public private(set) var now: Int64 = 0
    public private(set) var statistics = SimulationStatistics()
    public private(set) var trace = TraceHasher()

    /// Called with each output an instance emits.
    public var onOutput: ((NodeID, Instance.Output) -> Void)?
    /// Called after every processed event.
    public var afterStep: ((Step) -> Void)?

    private let configuration: Instance.Configuration
    private var random: DeterministicRandom
    private var queue = Heap<ScheduledEvent>()
    private var nextSequence: UInt64 = 0
    private var nextTimerGeneration: UInt64 = 0
    private var state: [NodeID: SimulatedNode] = [:]
    private var linkLatency: [Link: Int64] = [:]
    private var cuts: [Link: Int] = [:]
    private var faultsEndTime: Int64 = 0

    public init(nodeCount: Int, seed: UInt64, faults: FaultSettings, configuration: Instance.Configuration) {
        precondition(nodeCount >= 1 && nodeCount <= 1_000, "node count \(nodeCount) out of 1...1000")
        self.seed = seed
        self.faults = faults
        self.configuration = configuration
        self.random = DeterministicRandom(seed: seed)
        self.nodes = (1...nodeCount).map { NodeID(UInt64($0)) }
        for node in nodes {
            let skew = faults.clockSkewMax.nanoseconds
            let drift = faults.clockDriftMaxPartsPerMillion
            let clock = NodeClock(
                offsetNanoseconds: skew == 0 ? 0 : Int64.random(in: -skew...skew, using: &random),
                driftPartsPerMillion: drift == 0 ? 0 : Int64.random(in: -drift...drift, using: &random))
            state[node] = SimulatedNode(clock: clock)
        }
        let latencyMin = faults.linkLatencyMin.nanoseconds
        let latencyMax = max(latencyMin, faults.linkLatencyMax.nanoseconds)
        for from in nodes {
            for to in nodes where to != from {
                linkLatency[Link(from: from, to: to)] = Int64.random(in: latencyMin...latencyMax, using: &random)
            }
        }
        for node in nodes { schedule(at: 0, .start(node)) }
    }

    // MARK: - Inspection

    public func instance(_ node: NodeID) -> Instance? { state[node]?.instance }
    public func durableState(_ node: NodeID) -> Instance.Durable? { state[node]?.durable }
    public func isUp(_ node: NodeID) -> Bool { state[node]?.isUp ?? false }
    public var upNodes: [NodeID] { nodes.filter(isUp) }
    public var pendingEvents: Int { queue.count }

    /// The local clock reading of `node` at the current true time.
    public func localTime(_ node: NodeID) -> Duration {
        .nanoseconds(state[node]!.clock.localTime(atTrueTime: now))
    }

    // MARK: - Driving

    /// Delivers `command` to `node` at true time `time` (refused if the node is down then).
    public func scheduleCommand(_ command: Instance.Command, to node: NodeID, at time: Int64) {
        schedule(at: time, .command(node, command))
    }

    /// Runs `action` at true time `time`, between events.
    public func scheduleCallback(at time: Int64, _ action: @escaping () -> Void) {
        schedule(at: time, .callback(action))
    }

    /// Injects partitions and crashes, drawn from the fault settings, until true time `end`.
    public func injectFaults(until end: Int64) {
        faultsEndTime = end
        scheduleNextFault()
    }

    /// Ends the fault phase: no more partitions, crashes, loss or duplication; every cut link is
    /// healed and every crashed node restarted. Latency, jitter, reordering and clock errors stay.
    public func healAll() {
        faultsEndTime = now
        faults.lossProbability = 0
        faults.duplicateProbability = 0
        faults.partitionMeanInterval = nil
        faults.crashMeanInterval = nil
        cuts.removeAll()
        trace.combine(UInt64(0xEA1))
        for node in nodes where !isUp(node) { schedule(at: now, .restart(node)) }
    }

    /// Crashes `node` at true time `time` (a scripted fault, beside the drawn ones).
    public func scheduleCrash(of node: NodeID, at time: Int64) { schedule(at: time, .crash(node)) }

    /// Restarts `node` from its durable state at true time `time`, if it is down then.
    public func scheduleRestart(of node: NodeID, at time: Int64) { schedule(at: time, .restart(node)) }

    /// Cuts the link from `from` to `to` until `healAll` (or a matching heal).
    public func cut(from: NodeID, to: NodeID) { cuts[Link(from: from, to: to), default: 0] += 1 }

    /// Undoes one `cut(from:to:)`.
    public func heal(from: NodeID, to: NodeID) {
        let link = Link(from: from, to: to)
        guard let count = cuts[link] else { return }
        cuts[link] = count > 1 ? count - 1 : nil
    }

    /// Set by `stop()` or by a flood: no further event is processed.
    public private(set) var stopped = false

    /// Stops the run: later `run(until:)` calls process nothing (a workload stops at its first
    /// safety violation, when what follows says nothing more).
    public func stop() { stopped = true }

    /// Processes events up to and including true time `time`, then sets the clock to `time`.
    public func run(until time: Int64) {
        while let next = queue.min, next.time <= time, processNext() {}
        now = max(now, time)
    }

    /// Processes one event; false when the queue is empty or the run stopped. Past `eventsMax`
    /// events the run stops and `statistics.flooded` says why (a violation in the seed's report).
    @discardableResult
    public func processNext() -> Bool {
        guard !stopped else { return false }
        guard statistics.eventsProcessed < Self.eventsMax else {
            statistics.flooded = true
            stopped = true
            return false
        }
        guard let event = queue.popMin() else { return false }
        precondition(event.time >= now, "event at \(event.time) scheduled before now \(now)")
        now = event.time
        statistics.eventsProcessed += 1
        trace.combine(event.time)
        trace.combine(event.sequence)
        process(event.kind)
        return true
    }

    // MARK: - Events

    private func process(_ kind: EventKind) {
        switch kind {
        case let .start(node):
            trace.combine(UInt64(1))
            boot(node)
            afterStep?(.started(node))
        case let .restart(node):
            trace.combine(UInt64(2))
            guard !isUp(node) else { return }
            statistics.restarts += 1
            boot(node)
            afterStep?(.restarted(node))
        case let .crash(node):
            trace.combine(UInt64(3))
            trace.combine(node.rawValue)
            guard isUp(node) else { return }
            statistics.crashes += 1
            state[node]!.instance = nil
            state[node]!.timers.removeAll()
            afterStep?(.crashed(node))
        case let .deliver(from, to, message, encoded):
            trace.combine(UInt64(4))
            trace.combine(from.rawValue)
            trace.combine(to.rawValue)
            trace.combine(encoded)
            deliver(message, from: from, to: to)
        case let .timer(node, timer, generation):
            trace.combine(UInt64(5))
            trace.combine(node.rawValue)
            guard state[node]?.timers[timer] == generation, isUp(node) else { return }
            state[node]!.timers[timer] = nil
            let effects = mutateInstance(node) { $0.timerFired(timer, now: localTime(node)) }
            carryOut(effects, at: node)
            afterStep?(.timerFired(node))
        case let .command(node, command):
            trace.combine(UInt64(6))
            trace.combine(node.rawValue)
            guard isUp(node) else {
                afterStep?(.commandRefused(node, command))
                return
            }
            let effects = mutateInstance(node) { $0.handle(command, now: localTime(node)) }
            carryOut(effects, at: node)
            afterStep?(.commandHandled(node, command))
        case .faultTick:
            trace.combine(UInt64(7))
            injectOneFault()
            scheduleNextFault()
            afterStep?(.network)
        case let .healPartition(links):
            trace.combine(UInt64(8))
            for link in links {
                guard let count = cuts[link] else { continue }
                cuts[link] = count > 1 ? count - 1 : nil
            }
            afterStep?(.network)
        case let .callback(action):
            trace.combine(UInt64(9))
            action()
        }
    }

    /// Runs `body` on the instance of an up node, moved out of the node table while it runs so
    /// that its storage is uniquely referenced and mutates in place (no copy-on-write copies).
    private func mutateInstance(_ node: NodeID, _ body: (inout Instance) -> [Effect]) -> [Effect] {
        var instance = state[node]!.instance.take()!
        let effects = body(&instance)
        state[node]!.instance = instance
        return effects
    }

    private func boot(_ node: NodeID) {
        let context = InstanceContext(node: node, members: nodes, random: random.split())
        var instance = Instance(configuration: configuration, context: context, durable: state[node]!.durable)
        let effects = instance.start(now: localTime(node))
        state[node]!.instance = instance
        carryOut(effects, at: node)
    }

    private func deliver(_ message: Instance.Message, from: NodeID, to: NodeID) {
        if cuts[Link(from: from, to: to)] != nil {
            statistics.messagesCutByPartition += 1
            return
        }
        guard isUp(to) else {
            statistics.messagesToDownNodes += 1
            return
        }
        statistics.messagesDelivered += 1
        let effects = mutateInstance(to) { $0.receive(message, from: from, now: localTime(to)) }
        carryOut(effects, at: to)
        afterStep?(.delivered(to: to))
    }

    private func carryOut(_ effects: [Effect], at node: NodeID) {
        for effect in effects {
            switch effect {
            case let .send(to, message):
                precondition(to != node && state[to] != nil, "\(node) sent to unknown or self node \(to)")
                send(message, from: node, to: to)
            case let .persist(durable):
                statistics.persists += 1
                trace.combine(durable.binaryEncoded())
                Instance.accumulate(durable, into: &state[node]!.durable)
            case let .setTimer(timer, after):
                nextTimerGeneration += 1
                state[node]!.timers[timer] = nextTimerGeneration
                let delay = state[node]!.clock.trueDuration(ofLocal: max(0, after.nanoseconds))
                schedule(at: now + delay, .timer(node, timer, generation: nextTimerGeneration))
            case let .cancelTimer(timer):
                state[node]!.timers[timer] = nil
            case let .output(output):
                onOutput?(node, output)
            }
        }
    }

    private func send(_ message: Instance.Message, from: NodeID, to: NodeID) {
        statistics.messagesSent += 1
        let encoded = message.binaryEncoded()
        statistics.bytesSent[Instance.trafficClass(of: message), default: 0] += encoded.count
        if random.chance(faults.lossProbability) {
            statistics.messagesLost += 1
            return
        }
        let copies = random.chance(faults.duplicateProbability) ? 2 : 1
        if copies == 2 { statistics.messagesDuplicated += 1 }
        for _ in 0..<copies {
            schedule(at: now + messageDelay(Link(from: from, to: to)), .deliver(from: from, to: to, message, encoded: encoded))
        }
    }

    private func messageDelay(_ link: Link) -> Int64 {
        var delay = linkLatency[link]!
        let jitterMean = faults.jitterMean.nanoseconds
        if jitterMean > 0 {
            let uniform = Double.random(in: Double.ulpOfOne..<1, using: &random)
            delay += Int64(-Double(jitterMean) * log(uniform))
        }
        if random.chance(faults.reorderProbability) {
            delay += Int64.random(in: 0...max(0, faults.reorderDelayMax.nanoseconds), using: &random)
        }
        return delay
    }

    // MARK: - Faults

    private func scheduleNextFault() {
        let intervals = [faults.partitionMeanInterval, faults.crashMeanInterval].compactMap { $0?.nanoseconds }
        guard !intervals.isEmpty else { return }
        // Superposition of the two Poisson processes: rate is the sum of rates.
        let rate = intervals.reduce(0.0) { $0 + 1 / Double($1) }
        let uniform = Double.random(in: Double.ulpOfOne..<1, using: &random)
        let time = now + Int64(-log(uniform) / rate)
        if time < faultsEndTime { schedule(at: time, .faultTick) }
    }

    private func injectOneFault() {
        let partitionRate = faults.partitionMeanInterval.map { 1 / Double($0.nanoseconds) } ?? 0
        let crashRate = faults.crashMeanInterval.map { 1 / Double($0.nanoseconds) } ?? 0
        guard partitionRate + crashRate > 0 else { return }
        if Double.random(in: 0..<(partitionRate + crashRate), using: &random) < partitionRate {
            injectPartition()
        } else {
            injectCrash()
        }
    }

    private func injectPartition() {
        guard nodes.count >= 2, let kind = faults.partitionKinds.randomElement(using: &random) else { return }
        let victim = nodes.randomElement(using: &random)!
        var links: [Link] = []
        switch kind {
        case .isolateOne:
            for other in nodes where other != victim {
                links.append(Link(from: victim, to: other))
                links.append(Link(from: other, to: victim))
            }
        case .splitHalves:
            let shuffled = nodes.shuffled(using: &random)
            let half = Set(shuffled.prefix(nodes.count / 2))
            for from in nodes {
                for to in nodes where half.contains(from) != half.contains(to) { links.append(Link(from: from, to: to)) }
            }
        case .oneWayCut:
            let outbound = Bool.random(using: &random)
            for other in nodes where other != victim {
                links.append(outbound ? Link(from: victim, to: other) : Link(from: other, to: victim))
            }
        }
        statistics.partitions += 1
        for link in links { cuts[link, default: 0] += 1 }
        let duration = Int64.random(in: 1...max(1, faults.partitionDurationMax.nanoseconds), using: &random)
        schedule(at: now + duration, .healPartition(links: links))
    }

    private func injectCrash() {
        guard let victim = upNodes.randomElement(using: &random) else { return }
        schedule(at: now, .crash(victim))
        let delay = Int64.random(in: 0...max(0, faults.restartDelayMax.nanoseconds), using: &random)
        schedule(at: now + delay, .restart(victim))
    }

    private func schedule(at time: Int64, _ kind: EventKind) {
        precondition(time >= now, "cannot schedule at \(time) before now \(now)")
        nextSequence += 1
        queue.insert(ScheduledEvent(time: time, sequence: nextSequence, kind: kind))
    }
}

/// Natural logarithm without Foundation (for exponential variates): frexp-free series on the
/// mantissa, accurate to about 1e-12, which is plenty for drawing latencies.
func log(_ x: Double) -> Double {
    precondition(x > 0, "log of \(x)")
    var exponent = 0
    var mantissa = x
    while mantissa > 2 { mantissa /= 2; exponent += 1 }
    while mantissa < 1 { mantissa *= 2; exponent -= 1 }
    // ln(m) = 2 atanh((m-1)/(m+1)), m in [1, 2]: fast-converging series.
    let y = (mantissa - 1) / (mantissa + 1)
    let y2 = y * y
    var term = y
    var sum = 0.0
    var k = 1.0
    while abs(term) > 1e-17 {
        sum += term / k
        term *= y2
        k += 2
    }
    return 2 * sum + Double(exponent) * 0.693_147_180_559_945_3
}
