import ContinuumCore

/// What one node believes about another.
public enum MemberStatus: UInt8, Sendable, Comparable, CustomStringConvertible {
    case alive = 0
    /// A probe failed; the member has a suspicion timeout to refute it.
    case suspect = 1
    /// The suspicion expired. Not removed: a member that answers again, or announces a higher
    /// incarnation, is alive again.
    case unreachable = 2

    public static func < (lhs: MemberStatus, rhs: MemberStatus) -> Bool { lhs.rawValue < rhs.rawValue }

    public var description: String {
        switch self {
        case .alive: "alive"
        case .suspect: "suspect"
        case .unreachable: "unreachable"
        }
    }
}

/// One member's status at an incarnation: the unit of dissemination.
public struct MembershipUpdate: Sendable, Equatable, BinaryCodable, CustomStringConvertible {
    public var node: NodeID
    public var status: MemberStatus
    public var incarnation: UInt64

    public init(node: NodeID, status: MemberStatus, incarnation: UInt64) {
        self.node = node
        self.status = status
        self.incarnation = incarnation
    }

    /// SWIM's precedence (Das et al. 2002, section 4.2): a higher incarnation wins; at equal
    /// incarnations suspicion beats alive and unreachable beats both.
    public func overrides(_ other: MembershipUpdate) -> Bool {
        incarnation > other.incarnation || (incarnation == other.incarnation && status > other.status)
    }

    public var description: String { "\(node):\(status)@\(incarnation)" }

    public func encode(to writer: inout BinaryWriter) {
        node.encode(to: &writer)
        writer.writeByte(status.rawValue)
        writer.writeVarint(incarnation)
    }

    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        node = try NodeID(from: &reader)
        let raw = try reader.readByte()
        guard let status = MemberStatus(rawValue: raw) else { throw .invalid("member status \(raw)") }
        self.status = status
        incarnation = try reader.readVarint()
    }
}

/// Membership messages. Every probe message piggybacks recent membership updates.
public enum MembershipMessage: Sendable, Equatable, BinaryCodable {
    /// A new node asks a seed to let it in.
    case join
    /// A seed's answer to `join`: every member it knows.
    case welcome(members: [MembershipUpdate])
    /// A direct probe.
    case ping(sequence: UInt64, updates: [MembershipUpdate])
    /// Ask the receiver to probe `target` on the sender's behalf (an indirect probe).
    case pingRequest(sequence: UInt64, target: NodeID, updates: [MembershipUpdate])
    /// The answer to a probe of `target`, direct or relayed.
    case ack(sequence: UInt64, target: NodeID, updates: [MembershipUpdate])

    public func encode(to writer: inout BinaryWriter) {
        switch self {
        case .join:
            writer.writeByte(0)
        case let .welcome(members):
            writer.writeByte(1)
            members.encode(to: &writer)
        case let .ping(sequence, updates):
            writer.writeByte(2)
            writer.writeVarint(sequence)
            updates.encode(to: &writer)
        case let .pingRequest(sequence, target, updates):
            writer.writeByte(3)
            writer.writeVarint(sequence)
            target.encode(to: &writer)
            updates.encode(to: &writer)
        case let .ack(sequence, target, updates):
            writer.writeByte(4)
            writer.writeVarint(sequence)
            target.encode(to: &writer)
            updates.encode(to: &writer)
        }
    }

    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        switch try reader.readByte() {
        case 0: self = .join
        case 1: self = .welcome(members: try [MembershipUpdate](from: &reader))
        case 2: self = .ping(sequence: try reader.readVarint(), updates: try [MembershipUpdate](from: &reader))
        case 3:
            self = .pingRequest(sequence: try reader.readVarint(), target: try NodeID(from: &reader),
                                updates: try [MembershipUpdate](from: &reader))
        case 4:
            self = .ack(sequence: try reader.readVarint(), target: try NodeID(from: &reader),
                        updates: try [MembershipUpdate](from: &reader))
        case let tag: throw .invalid("membership message tag \(tag)")
        }
    }
}

/// Membership and failure detection in the manner of SWIM (Das, Gupta and Motivala 2002) with
/// Lifeguard's refinements in spirit (Dadgar et al. 2018): randomized round-robin probing,
/// indirect probes through `indirectProbes` other members, suspicion before a verdict, refutation
/// by incarnation numbers, and dissemination piggybacked on probe traffic. A pure value: the
/// owning instance feeds it events and carries out the `Directive`s it returns.
///
/// Self-awareness, after Lifeguard (Dadgar et al. 2018, section 4.1): a node that is itself
/// held up does not accuse others. A probe timer that fires later than due by more than the
/// probe timeout judges nothing: the probe before it does not make its target suspect, and no
/// suspicion expires at that tick, since the answers may be waiting behind the work that held
/// this node up. The lateness is the event's time against the time the timer was due, so a
/// simulation reproduces it. (Lifeguard also stretches the probe interval and timeout by a local
/// health score; tried here under saturated SADD, reachability flapped more, not less, as fewer
/// probes carried the refutations, so it was left out.)
///
/// Differences from SWIM, on purpose: an unreachable member is kept and still probed now and
/// then, so that it is seen again when a partition heals (the replication layer then resyncs
/// it); nodes join by asking seeds, which answer with the member list.
public struct Membership: Sendable {
    public struct Configuration: Sendable {
        public var probeInterval: Duration
        /// How long a direct probe may go unanswered before indirect probes are sent.
        public var probeTimeout: Duration
        public var indirectProbes: Int
        /// Suspicion lasts `suspicionMultiplier × ⌈log2(N + 1)⌉` probe intervals.
        public var suspicionMultiplier: Int
        /// Each update is piggybacked `disseminationMultiplier × ⌈log2(N + 1)⌉` times.
        public var disseminationMultiplier: Int
        /// Updates carried by one message, at most.
        public var piggybackMax: Int
        /// Updates waiting for dissemination, at most; the oldest are dropped past it.
        public var disseminationQueueMax: Int
        /// Indirect probes relayed for others and awaiting an answer, at most.
        public var relaysMax: Int
        public var joinRetryInterval: Duration

        public init(probeInterval: Duration = .milliseconds(200), probeTimeout: Duration = .milliseconds(80),
                    indirectProbes: Int = 3, suspicionMultiplier: Int = 3, disseminationMultiplier: Int = 3,
                    piggybackMax: Int = 8, disseminationQueueMax: Int = 1_024, relaysMax: Int = 64,
                    joinRetryInterval: Duration = .milliseconds(500)) {
            precondition(probeTimeout < probeInterval, "probe timeout \(probeTimeout) must be below the interval \(probeInterval)")
            precondition(indirectProbes >= 0 && suspicionMultiplier >= 1 && disseminationMultiplier >= 1 && piggybackMax >= 1)
            self.probeInterval = probeInterval
            self.probeTimeout = probeTimeout
            self.indirectProbes = indirectProbes
            self.suspicionMultiplier = suspicionMultiplier
            self.disseminationMultiplier = disseminationMultiplier
            self.piggybackMax = piggybackMax
            self.disseminationQueueMax = disseminationQueueMax
            self.relaysMax = relaysMax
            self.joinRetryInterval = joinRetryInterval
        }
    }

    public enum Timer: Hashable, Sendable {
        case probe
        case probeTimeout(sequence: UInt64)
        case joinRetry
    }

    /// What the owner must do.
    public enum Directive: Sendable, Equatable {
        case send(NodeID, MembershipMessage)
        case setTimer(Timer, after: Duration)
        /// A member became reachable (alive or suspect) or unreachable in this node's view.
        case reachabilityChanged(NodeID, reachable: Bool)
    }

    struct Member {
        var status: MemberStatus
        var incarnation: UInt64
        /// Local time at which a suspicion turns into unreachable.
        var suspicionDeadline: Duration?
    }

    struct Relay {
        var sequence: UInt64
        var requester: NodeID
        var requesterSequence: UInt64
        var target: NodeID
    }

    public let node: NodeID
    public private(set) var incarnation: UInt64 = 0
    /// Updates carry incarnations below this: a node refutes a suspicion with one more, which
    /// then is at most this, so it cannot overflow and its peers still accept it. No correct
    /// node gets near it (one refutation per suspicion); an update that claims more is refused
    /// and counted.
    public static let incarnationMax: UInt64 = 1 << 62
    public private(set) var updatesRefused = 0
    public private(set) var hasJoined: Bool
    private let configuration: Configuration
    private let seeds: [NodeID]
    private var members: [NodeID: Member] = [:]
    private var probeOrder: [NodeID] = []
    private var probeCursor = 0
    private var nextSequence: UInt64 = 0
    /// The probe in flight: its sequence, target and whether it was answered.
    private var probe: (sequence: UInt64, target: NodeID, answered: Bool)?
    /// When the probe timer is due (the time it was set plus its delay).
    private var probeDue: Duration?
    /// Probe ticks that fired too late to judge the probe before them.
    public private(set) var lateProbeTicks = 0
    private var relays: [Relay] = []
    /// Updates to piggyback, with how many more times each is to be sent.
    private var dissemination: [(update: MembershipUpdate, remaining: Int)] = []

    /// - Parameters:
    ///   - seeds: nodes to ask for admission; this node has joined once one answers.
    ///   - knownMembers: members known from the start (a static cluster), alive at incarnation 0.
    public init(node: NodeID, seeds: [NodeID], knownMembers: [NodeID] = [], configuration: Configuration) {
        self.node = node
        self.configuration = configuration
        self.seeds = seeds.filter { $0 != node }.sorted()
        self.hasJoined = self.seeds.isEmpty
        for member in self.seeds + knownMembers where member != node {
            members[member] = Member(status: .alive, incarnation: 0)
        }
    }

    // MARK: - Views

    /// Every other member this node knows, sorted.
    public var knownMembers: [NodeID] { members.keys.sorted() }

    /// Members believed reachable (alive or suspect), sorted.
    public var reachableMembers: [NodeID] { members.filter { $0.value.status != .unreachable }.keys.sorted() }

    public func status(of member: NodeID) -> MemberStatus? { members[member]?.status }

    public func isReachable(_ member: NodeID) -> Bool { members[member].map { $0.status != .unreachable } ?? false }

    // MARK: - Events

    public mutating func start(now: Duration, random: inout DeterministicRandom) -> [Directive] {
        let offset = Duration.nanoseconds(Int64.random(in: 0...configuration.probeInterval.nanoseconds, using: &random))
        probeDue = now + offset
        var directives: [Directive] = [.setTimer(.probe, after: offset)]
        if !hasJoined {
            directives += seeds.map { .send($0, .join) }
            directives.append(.setTimer(.joinRetry, after: configuration.joinRetryInterval))
        }
        // Tell the cluster this incarnation is alive (a restarted node refutes old verdicts).
        enqueue(MembershipUpdate(node: node, status: .alive, incarnation: incarnation))
        return directives
    }

    public mutating func timerFired(_ timer: Timer, now: Duration, random: inout DeterministicRandom) -> [Directive] {
        switch timer {
        case .probe: return probeTick(now: now, random: &random)
        case let .probeTimeout(sequence): return probeTimedOut(sequence, random: &random)
        case .joinRetry:
            guard !hasJoined else { return [] }
            return seeds.map { .send($0, .join) } + [.setTimer(.joinRetry, after: configuration.joinRetryInterval)]
        }
    }

    public mutating func receive(_ message: MembershipMessage, from sender: NodeID, now: Duration, random: inout DeterministicRandom) -> [Directive] {
        var directives: [Directive] = []
        if members[sender] == nil, sender != node {
            // First contact: whoever talks to us is a member, alive at the lowest incarnation.
            directives += apply(MembershipUpdate(node: sender, status: .alive, incarnation: 0), now: now, random: &random)
        }
        switch message {
        case .join:
            let view = [MembershipUpdate(node: node, status: .alive, incarnation: incarnation)]
                + knownMembers.map { MembershipUpdate(node: $0, status: members[$0]!.status, incarnation: members[$0]!.incarnation) }
            directives.append(.send(sender, .welcome(members: view)))
        case let .welcome(view):
            hasJoined = true
            for update in view { directives += apply(update, now: now, random: &random) }
        case let .ping(sequence, updates):
            directives += apply(updates, now: now, random: &random)
            directives.append(.send(sender, .ack(sequence: sequence, target: node, updates: piggyback())))
        case let .pingRequest(sequence, target, updates):
            directives += apply(updates, now: now, random: &random)
            guard target != node else {
                directives.append(.send(sender, .ack(sequence: sequence, target: node, updates: piggyback())))
                break
            }
            nextSequence += 1
            relays.append(Relay(sequence: nextSequence, requester: sender, requesterSequence: sequence, target: target))
            if relays.count > configuration.relaysMax { relays.removeFirst(relays.count - configuration.relaysMax) }
            directives.append(.send(target, .ping(sequence: nextSequence, updates: piggyback())))
        case let .ack(sequence, target, updates):
            directives += apply(updates, now: now, random: &random)
            if let index = relays.firstIndex(where: { $0.sequence == sequence && $0.target == target }) {
                let relay = relays.remove(at: index)
                directives.append(.send(relay.requester, .ack(sequence: relay.requesterSequence, target: target, updates: piggyback())))
            } else if let current = probe, current.sequence == sequence, current.target == target {
                probe?.answered = true
                directives += heardFrom(target)
            }
        }
        return directives
    }

    // MARK: - Probing

    private mutating func probeTick(now: Duration, random: inout DeterministicRandom) -> [Directive] {
        var directives: [Directive] = [.setTimer(.probe, after: configuration.probeInterval)]
        // Later than due by more than a peer may take to answer: this node was held up, and the
        // answer to its probe may be waiting behind what held it.
        let late = probeDue.map { now - $0 > configuration.probeTimeout } ?? false
        probeDue = now + configuration.probeInterval
        if late {
            lateProbeTicks += 1
        } else {
            if let current = probe, !current.answered, let member = members[current.target], member.status == .alive {
                directives += apply(MembershipUpdate(node: current.target, status: .suspect, incarnation: member.incarnation),
                                    now: now, random: &random)
            }
            directives += expireSuspicions(now: now, random: &random)
        }
        probe = nil
        guard let target = nextProbeTarget(random: &random) else { return directives }
        nextSequence += 1
        probe = (nextSequence, target, false)
        directives.append(.send(target, .ping(sequence: nextSequence, updates: piggyback())))
        directives.append(.setTimer(.probeTimeout(sequence: nextSequence), after: configuration.probeTimeout))
        return directives
    }

    private mutating func probeTimedOut(_ sequence: UInt64, random: inout DeterministicRandom) -> [Directive] {
        guard let current = probe, current.sequence == sequence, !current.answered else { return [] }
        let helpers = reachableMembers.filter { $0 != current.target }.shuffled(using: &random).prefix(configuration.indirectProbes)
        return helpers.map { .send($0, .pingRequest(sequence: sequence, target: current.target, updates: piggyback())) }
    }

    private mutating func nextProbeTarget(random: inout DeterministicRandom) -> NodeID? {
        if probeCursor >= probeOrder.count {
            probeOrder = knownMembers.shuffled(using: &random)
            probeCursor = 0
        }
        guard probeCursor < probeOrder.count else { return nil }
        defer { probeCursor += 1 }
        return probeOrder[probeCursor]
    }

    private mutating func expireSuspicions(now: Duration, random: inout DeterministicRandom) -> [Directive] {
        var directives: [Directive] = []
        for member in knownMembers {
            guard let state = members[member], state.status == .suspect, let deadline = state.suspicionDeadline, now >= deadline else { continue }
            directives += apply(MembershipUpdate(node: member, status: .unreachable, incarnation: state.incarnation), now: now, random: &random)
        }
        return directives
    }

    /// A probe of `member` was answered: it is reachable in this node's view, whatever others say.
    private mutating func heardFrom(_ member: NodeID) -> [Directive] {
        guard var state = members[member], state.status != .alive else { return [] }
        let wasReachable = state.status != .unreachable
        state.status = .alive
        state.suspicionDeadline = nil
        members[member] = state
        return wasReachable ? [] : [.reachabilityChanged(member, reachable: true)]
    }

    // MARK: - Updates

    private mutating func apply(_ updates: [MembershipUpdate], now: Duration, random: inout DeterministicRandom) -> [Directive] {
        updates.flatMap { apply($0, now: now, random: &random) }
    }

    private mutating func apply(_ update: MembershipUpdate, now: Duration, random: inout DeterministicRandom) -> [Directive] {
        guard update.incarnation < Self.incarnationMax else {
            updatesRefused += 1
            return []
        }
        if update.node == node {
            // Refute any suspicion of ourselves with a higher incarnation.
            guard update.status != .alive, update.incarnation >= incarnation else { return [] }
            incarnation = update.incarnation + 1
            enqueue(MembershipUpdate(node: node, status: .alive, incarnation: incarnation))
            return []
        }
        let known = members[update.node]
        if let known, !update.overrides(MembershipUpdate(node: update.node, status: known.status, incarnation: known.incarnation)) {
            return []
        }
        let wasReachable = known.map { $0.status != .unreachable }
        var member = Member(status: update.status, incarnation: update.incarnation)
        if update.status == .suspect { member.suspicionDeadline = now + suspicionTimeout }
        members[update.node] = member
        if known == nil {
            // Probe the newcomer within the current round, at a random place.
            let position = Int.random(in: probeCursor...probeOrder.count, using: &random)
            probeOrder.insert(update.node, at: position)
        }
        enqueue(update)
        let isReachable = update.status != .unreachable
        return wasReachable == isReachable ? [] : [.reachabilityChanged(update.node, reachable: isReachable)]
    }

    private var logClusterSize: Int {
        var size = members.count + 2
        var log = 0
        while size > 1 { size = (size + 1) / 2; log += 1 }
        return max(1, log)
    }

    private var suspicionTimeout: Duration { configuration.probeInterval * (configuration.suspicionMultiplier * logClusterSize) }

    private mutating func enqueue(_ update: MembershipUpdate) {
        dissemination.removeAll { $0.update.node == update.node }
        dissemination.append((update, configuration.disseminationMultiplier * logClusterSize))
        if dissemination.count > configuration.disseminationQueueMax {
            dissemination.removeFirst(dissemination.count - configuration.disseminationQueueMax)
        }
    }

    /// The updates to carry on the next message: those sent fewest times first.
    private mutating func piggyback() -> [MembershipUpdate] {
        dissemination.sort { $0.remaining > $1.remaining }
        let count = min(configuration.piggybackMax, dissemination.count)
        var chosen: [MembershipUpdate] = []
        for index in 0..<count {
            chosen.append(dissemination[index].update)
            dissemination[index].remaining -= 1
        }
        dissemination.removeAll { $0.remaining <= 0 }
        return chosen
    }
}
