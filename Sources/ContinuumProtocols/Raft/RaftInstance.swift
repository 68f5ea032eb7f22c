import ContinuumCore

/// A bug that can be planted in Raft so that tests can show the checkers catch its class.
/// Never set outside tests.
public enum PlantedRaftBug: String, Sendable, CaseIterable {
    /// The leader answers reads from its own state at once, without ReadIndex or a lease: a
    /// deposed leader that does not know it yet serves stale values.
    case staleLocalReads = "stale-local-reads"
    /// The leader commits entries of earlier terms by counting replicas (the Figure 8 error
    /// of the Raft paper, section 5.4.2).
    case commitPreviousTermEntries = "commit-previous-term-entries"
    /// Votes (and pre-votes) are granted without the up-to-date check on the candidate's log
    /// (section 5.4.1): a candidate missing committed entries can be elected.
    case voteWithoutLogCheck = "vote-without-log-check"
}

/// How a client request ended, seen from the node the client asked.
public enum RequestOutcome: Sendable, Equatable, CustomStringConvertible {
    /// Applied; `index` is a log index the answering replica had applied (for a write, at
    /// least the write's own entry): a session that saw it asks later reads to reach it.
    case ok(KeyValueResult, index: UInt64)
    /// Definitely not applied: no leader here, or a read that could not be confirmed.
    case unavailable(String)
    /// A write that may yet commit: the latency bound passed after it was handed to a leader.
    case indeterminate

    public var description: String {
        switch self {
        case let .ok(result, index): "ok \(result) at \(index)"
        case let .unavailable(reason): "unavailable (\(reason))"
        case .indeterminate: "indeterminate"
        }
    }

    /// The result, when the request was applied.
    public var applied: KeyValueResult? {
        if case let .ok(result, _) = self { result } else { nil }
    }
}

/// Raft consensus (Ongaro and Ousterhout, "In Search of an Understandable Consensus
/// Algorithm", 2014, and Ongaro's thesis, 2014) driving a replicated key-value state machine,
/// as a pure instance: randomized election timeouts from the injected generator; pre-vote and
/// check-quorum (thesis 9.6) with leader stickiness (4.2.3); log replication with batching
/// (`entriesPerMessageMax`), pipelining and per-follower flow control (`inflightAppendsMax`);
/// commitment only of current-term entries by counting (5.4.2); linearizable reads by ReadIndex
/// (6.4) or, when enabled with check-quorum, by a leader lease shortened by `maxClockOffset`;
/// log compaction with snapshots sent to lagging followers (5); leadership transfer (3.10).
/// Client requests may arrive at any node; followers forward them to the leader; a retried
/// request (same client and sequence number) applies once.
public struct RaftInstance: ProtocolInstance {
    public struct Configuration: Sendable {
        /// Election timeouts are drawn from [min, 2·min).
        public var electionTimeoutMin: Duration
        public var heartbeatInterval: Duration
        public var entriesPerMessageMax: Int
        /// An append message's entries, in bytes (`LogEntry.approximateBytes`), at most; a
        /// single larger entry still goes alone.
        public var appendBytesMax: Int
        /// A snapshot goes to a lagging follower in chunks of this many bytes.
        public var snapshotChunkBytes: Int
        /// A follower buffers an incoming snapshot of at most this many bytes.
        public var snapshotBytesMax: Int
        /// Append messages with entries in flight to one follower, at most.
        public var inflightAppendsMax: Int
        /// Client requests waiting at this node, at most; more are refused as unavailable.
        public var pendingRequestsMax: Int
        /// Applied entries kept in the log before it is compacted into a snapshot. The log is
        /// compacted once it holds more than this many applied entries and at least as many
        /// applied bytes as the last snapshot's encoding: a snapshot costs a write of the whole
        /// state, so it waits until as much has been written since (at most twice the bytes).
        public var snapshotThresholdEntries: Int
        public var preVote: Bool
        public var checkQuorum: Bool
        public var leaseReads: Bool
        /// The most two node clocks may disagree by; leases are shortened by it.
        public var maxClockOffset: Duration
        /// The most a node's clock rate may err, for latency bounds of bounded reads.
        public var clockDriftMaxPartsPerMillion: Int64
        /// A leader holding its lease stamps heartbeats with freshness certificates.
        public var freshnessStamps: Bool
        /// Bounded reads waiting at this node, at most.
        public var boundedReadsMax: Int
        public var plantedBug: PlantedRaftBug?
        public var plantedFreshnessBug: PlantedFreshnessBug?

        public init(electionTimeoutMin: Duration = .milliseconds(300), heartbeatInterval: Duration = .milliseconds(50),
                    entriesPerMessageMax: Int = 64, appendBytesMax: Int = 1 << 20, snapshotChunkBytes: Int = 1 << 20,
                    snapshotBytesMax: Int = 1 << 34, inflightAppendsMax: Int = 4, pendingRequestsMax: Int = 1_024,
                    snapshotThresholdEntries: Int = 256, preVote: Bool = true, checkQuorum: Bool = true, leaseReads: Bool = false,
                    maxClockOffset: Duration = .milliseconds(50), clockDriftMaxPartsPerMillion: Int64 = 1_000, freshnessStamps: Bool = true,
                    boundedReadsMax: Int = 10_000, plantedBug: PlantedRaftBug? = nil, plantedFreshnessBug: PlantedFreshnessBug? = nil) {
            precondition(heartbeatInterval < electionTimeoutMin, "heartbeats must come faster than election timeouts")
            precondition(!leaseReads || checkQuorum, "lease reads are only safe with check-quorum")
            precondition(!leaseReads || maxClockOffset < electionTimeoutMin, "the clock offset bound leaves no lease")
            precondition(entriesPerMessageMax >= 1 && inflightAppendsMax >= 1 && pendingRequestsMax >= 1 && snapshotThresholdEntries >= 1)
            precondition(appendBytesMax >= 1 && snapshotChunkBytes >= 1 && snapshotBytesMax >= 1)
            self.electionTimeoutMin = electionTimeoutMin
            self.heartbeatInterval = heartbeatInterval
            self.entriesPerMessageMax = entriesPerMessageMax
            self.appendBytesMax = appendBytesMax
            self.snapshotChunkBytes = snapshotChunkBytes
            self.snapshotBytesMax = snapshotBytesMax
            self.inflightAppendsMax = inflightAppendsMax
            self.pendingRequestsMax = pendingRequestsMax
            self.snapshotThresholdEntries = snapshotThresholdEntries
            self.preVote = preVote
            self.checkQuorum = checkQuorum
            self.leaseReads = leaseReads
            self.maxClockOffset = maxClockOffset
            self.clockDriftMaxPartsPerMillion = clockDriftMaxPartsPerMillion
            self.freshnessStamps = freshnessStamps
            self.boundedReadsMax = boundedReadsMax
            self.plantedBug = plantedBug
            self.plantedFreshnessBug = plantedFreshnessBug
        }
    }

    public enum Role: String, Sendable { case follower, preCandidate, candidate, leader }

    public enum Command: Sendable {
        /// A client request with its latency bound.
        case request(id: UInt64, client: UInt64, sequence: UInt64, KeyValueOperation, latency: Duration)
        case transferLeadership(to: NodeID)
        /// A read with ranked service levels. Answered from this replica's applied state when
        /// its certificate is fresh enough, else linearizably through a read index from the
        /// leader. `minimumIndex`: a session's last seen log index, which the answer must reach.
        case boundedRead(id: UInt64, KeyValueOperation, levels: [ServiceLevel], minimumIndex: UInt64)
    }

    public enum Output: Sendable {
        case reply(id: UInt64, RequestOutcome)
        case becameLeader(term: UInt64)
        case boundedReadCompleted(id: UInt64, Result<RaftReadAnswer, BoundedReadFailure>)
    }

    public enum Timer: Hashable, Sendable {
        case election
        case heartbeat
        case deadline(request: UInt64)
        case boundedDeadline(UInt64)
    }

    public typealias Message = RaftMessage
    public typealias Durable = RaftDurableState

    /// Where a request came from: a client of this node, or another node that forwarded it.
    enum Origin: Equatable {
        case local(UInt64)
        case remote(NodeID, UInt64)
        /// A follower's request for a read index.
        case readIndex(NodeID, UInt64)
        /// This node's own bounded read, waiting for a read index as leader.
        case bounded(UInt64)
    }

    struct BoundedRead {
        var operation: KeyValueOperation
        var levels: [ServiceLevel]
        var startedAt: Duration
        var minimumIndex: UInt64
        /// The read index the leader confirmed after this read began.
        var linearizableIndex: UInt64?
        var asked = false
    }

    struct ClientRequest {
        var client: UInt64
        var sequence: UInt64
        var operation: KeyValueOperation
        /// Whether it was handed to a leader (appended here, or forwarded).
        var handedOver: Bool
    }

    struct PendingRead {
        var origin: Origin
        var operation: KeyValueOperation
        var readIndex: UInt64
        var round: UInt64
    }

    // MARK: State

    public let node: NodeID
    public let members: [NodeID]
    public private(set) var term: UInt64
    public private(set) var votedFor: NodeID?
    public private(set) var role: Role = .follower
    public private(set) var leader: NodeID?
    public private(set) var commitIndex: UInt64
    public private(set) var lastApplied: UInt64
    public private(set) var stateMachine: KeyValueStateMachine
    public private(set) var snapshot: RaftSnapshot?
    /// Appends that would have overwritten a committed entry, refused. Always 0 in a correct
    /// cluster: a leader without every committed entry was elected.
    public private(set) var committedOverwritesRefused = 0
    /// Peer messages refused before they reached the protocol (`refusal(of:from:)`): each
    /// changed nothing. The last reason, for the shell to log.
    public private(set) var messagesRefused = 0
    public private(set) var lastRefusal: String?
    private var entries: [LogEntry]
    /// The current snapshot's encoding, produced chunk by chunk while this leader sends it.
    private var snapshotStream: SnapshotStream?
    /// Applied bytes (`LogEntry.approximateBytes`) since the current snapshot.
    private var appliedBytesSinceSnapshot = 0
    /// Leader: where each lagging follower is in the snapshot (as of `lastIndex`) sent to it.
    private var snapshotSending: [NodeID: (lastIndex: UInt64, offset: Int)] = [:]
    /// Follower: the chunks of a snapshot received so far.
    private var incomingSnapshot: (lastIndex: UInt64, lastTerm: UInt64, bytes: [UInt8])?

    private let configuration: Configuration
    private var random: DeterministicRandom
    private var votes: Set<NodeID> = []
    private var lastHeardFromLeader: Duration?
    private var now: Duration = .zero
    // Leader state.
    private var nextIndex: [NodeID: UInt64] = [:]
    private var matchIndex: [NodeID: UInt64] = [:]
    private var inflight: [NodeID: Int] = [:]
    private var lastContact: [NodeID: Duration] = [:]
    private var round: UInt64 = 0
    private var roundSentAt: [UInt64: Duration] = [:]
    private var acknowledgedRound: [NodeID: UInt64] = [:]
    private var leaseUntil: Duration?
    private var pendingReads: [PendingRead] = []
    private var readsAwaitingCommit: [(origin: Origin, operation: KeyValueOperation)] = []
    private var serving: [UInt64: [UInt64: [Origin]]] = [:]
    private var transferTarget: (node: NodeID, until: Duration)?
    // Requests of this node's clients.
    private var requests: [UInt64: ClientRequest] = [:]
    private var boundedReads: [UInt64: BoundedRead] = [:]
    /// The freshness this replica's applied state is certified as of, on the leader's clock.
    public private(set) var certifiedAt: Duration?
    /// Stamps whose index this replica has not applied yet (the newest few).
    private var pendingStamps: [FreshnessStamp] = []
    /// Set once this leader handed leadership over: no lease until it leads again.
    private var leaseRevoked = false
    private let gate: FreshnessGate
    /// Stamps kept while this replica has not applied their index, at most.
    static let pendingStampsMax = 8
    /// The read that a read index request runs at the leader: only its index matters.
    static let readIndexProbe = KeyValueOperation.read(key: "")

    public init(configuration: Configuration, context: InstanceContext, durable: RaftDurableState?) {
        self.configuration = configuration
        self.gate = FreshnessGate(configuration: .init(maxClockOffset: configuration.maxClockOffset,
                                                       clockDriftMaxPartsPerMillion: configuration.clockDriftMaxPartsPerMillion,
                                                       plantedBug: configuration.plantedFreshnessBug))
        self.node = context.node
        self.members = context.members
        self.random = context.random
        self.term = durable?.term ?? 0
        self.votedFor = durable?.votedFor
        self.snapshot = durable?.snapshot
        self.entries = durable?.entries ?? []
        self.stateMachine = durable?.snapshot?.state ?? KeyValueStateMachine()
        self.commitIndex = durable?.snapshot?.lastIndex ?? 0
        self.lastApplied = commitIndex
    }

    public static func accumulate(_ patch: RaftDurableState, into durable: inout RaftDurableState?) {
        var state = durable ?? RaftDurableState(term: 0, votedFor: nil)
        if !patch.compaction {
            state.term = patch.term
            state.votedFor = patch.votedFor
        }
        if let snapshot = patch.snapshot {
            if snapshot.lastIndex > state.snapshot?.lastIndex ?? 0 { state.snapshot = snapshot }
            state.entries.removeAll { $0.index <= snapshot.lastIndex }
        }
        if let from = patch.replaceFrom { state.entries.removeAll { $0.index >= from } }
        if let first = patch.entries.first {
            let expected = (state.entries.last?.index ?? state.snapshot?.lastIndex ?? 0) + 1
            precondition(first.index == expected, "persisted entries not contiguous: \(first.index) after \(expected - 1)")
            state.entries += patch.entries
        }
        state.replaceFrom = nil
        durable = state
    }

    public static func trafficClass(of message: RaftMessage) -> String {
        switch message {
        case .requestVote, .vote, .timeoutNow: "elections"
        case .appendEntries, .appendResult, .installSnapshot, .snapshotProgress: "replication"
        case .forward, .forwardedResult: "forwarding"
        case .readIndexRequest, .readIndexReply: "bounded reads"
        }
    }

    // MARK: Log access

    public var snapshotIndex: UInt64 { snapshot?.lastIndex ?? 0 }
    public var lastIndex: UInt64 { snapshotIndex + UInt64(entries.count) }
    var lastTerm: UInt64 { entries.last?.term ?? snapshot?.lastTerm ?? 0 }

    /// The term of the entry at `index`; nil if compacted away (below the snapshot) or absent.
    public func term(at index: UInt64) -> UInt64? {
        if index == snapshotIndex { return snapshot?.lastTerm ?? 0 }
        guard index > snapshotIndex, index <= lastIndex else { return nil }
        return entries[Int(index - snapshotIndex - 1)].term
    }

    /// The entry at `index`, if it is in the log (not compacted).
    public func entry(at index: UInt64) -> LogEntry? {
        guard index > snapshotIndex, index <= lastIndex else { return nil }
        return entries[Int(index - snapshotIndex - 1)]
    }

    var quorum: Int { members.count / 2 + 1 }
    var peers: [NodeID] { members.filter { $0 != node } }

    // MARK: Events

    public mutating func start(now: Duration) -> [Effect] {
        self.now = now
        return [resetElectionTimer()]
    }

    public mutating func timerFired(_ timer: Timer, now: Duration) -> [Effect] {
        self.now = now
        switch timer {
        case .election: return electionTimeout()
        case .heartbeat: return heartbeat()
        case let .deadline(id): return deadlinePassed(id)
        case let .boundedDeadline(id): return decide(id, atDeadline: true)
        }
    }

    public mutating func handle(_ command: Command, now: Duration) -> [Effect] {
        self.now = now
        switch command {
        case let .request(id, client, sequence, operation, latency):
            return request(id: id, client: client, sequence: sequence, operation, latency: latency)
        case let .transferLeadership(target):
            guard role == .leader, target != node, members.contains(target) else { return [] }
            transferTarget = (target, now + configuration.electionTimeoutMin)
            return progressTransfer()
        case let .boundedRead(id, operation, levels, minimumIndex):
            return startBoundedRead(id, operation, levels, minimumIndex: minimumIndex)
        }
    }

    /// The largest term or log index a message may carry. No cluster gets near it (one
    /// election per nanosecond would take 146 years), and below it `term + 1`, `index + 1` and
    /// `index + count` cannot overflow: a peer that claims more is broken or hostile.
    public static let termMax: UInt64 = 1 << 62
    public static let indexMax: UInt64 = 1 << 62
    /// How far past this node's term a message's term may be. Terms grow by one per election,
    /// so no correct peer is 2^32 elections ahead; a message that claims so would, adopted,
    /// bring the cluster next to `termMax` in one step, where its next elections would be
    /// refused everywhere.
    public static let termJumpMax: UInt64 = 1 << 32

    /// Why `message` is not one a correct peer sends, judged by the message alone: terms and
    /// indexes past `termMax`/`indexMax`, a last log term past the term, entries that do not
    /// follow `previousIndex` one by one or whose terms go back or past the leader's. Nil for a
    /// message that may be well-formed.
    public static func refusal(of message: RaftMessage) -> String? {
        func over(_ name: String, _ value: UInt64, _ limit: UInt64) -> String? { value > limit ? "\(name) \(value) is over \(limit)" : nil }
        switch message {
        case let .requestVote(term, lastLogIndex, lastLogTerm, _, _):
            if let reason = over("term", term, termMax) ?? over("last log index", lastLogIndex, indexMax) { return reason }
            return lastLogTerm > term ? "last log term \(lastLogTerm) is past the candidate's term \(term)" : nil
        case let .vote(term, _, _), let .timeoutNow(term):
            return over("term", term, termMax)
        case let .appendEntries(term, previousIndex, previousTerm, entries, leaderCommit, _, stamp):
            if let reason = over("term", term, termMax) ?? over("previous index", previousIndex, indexMax - UInt64(entries.count))
                ?? over("leader commit", leaderCommit, indexMax) ?? over("stamp index", stamp?.index ?? 0, indexMax) { return reason }
            if previousTerm > term { return "previous term \(previousTerm) is past the leader's term \(term)" }
            var expected = previousIndex + 1
            var lowest = previousTerm
            for entry in entries {
                guard entry.index == expected else { return "entry index \(entry.index) where \(expected) follows" }
                guard entry.term >= lowest, entry.term <= term else { return "entry term \(entry.term) outside \(lowest)...\(term)" }
                expected += 1
                lowest = entry.term
            }
            return nil
        case let .appendResult(term, _, matchIndex, _):
            return over("term", term, termMax) ?? over("match index", matchIndex, indexMax)
        case let .installSnapshot(term, lastIndex, lastTerm, offset, _, _, _):
            if let reason = over("term", term, termMax) ?? over("snapshot index", lastIndex, indexMax) ?? over("offset", offset, indexMax) { return reason }
            return lastTerm > term ? "snapshot term \(lastTerm) is past the leader's term \(term)" : nil
        case let .snapshotProgress(term, lastIndex, received, _, _):
            return over("term", term, termMax) ?? over("snapshot index", lastIndex, indexMax) ?? over("received", received, indexMax)
        case let .forwardedResult(_, _, index), let .readIndexReply(_, index):
            return over("index", index, indexMax)
        case .forward, .readIndexRequest:
            return nil
        }
    }

    /// Why this node refuses `message` from `sender` now, or nil: `refusal(of:)`, a sender
    /// that is not another member, and answers that no state of this leader allows (an
    /// acknowledgement of a round it has not sent, a match past its log).
    public func refusal(of message: RaftMessage, from sender: NodeID) -> String? {
        guard sender != node, members.contains(sender) else { return "\(sender) is not another member" }
        if let reason = Self.refusal(of: message) { return reason }
        if let claimed = message.term, claimed > term + Self.termJumpMax {
            return "term \(claimed) is more than \(Self.termJumpMax) past this node's term \(term)"
        }
        switch message {
        case let .appendResult(resultTerm, success, match, ackRound) where role == .leader && resultTerm == term:
            if ackRound > round { return "acknowledges round \(ackRound), this leader is at \(round)" }
            if success, match > lastIndex { return "matches index \(match), this leader's log ends at \(lastIndex)" }
            return nil
        case let .snapshotProgress(resultTerm, _, _, _, ackRound) where role == .leader && resultTerm == term:
            return ackRound > round ? "acknowledges round \(ackRound), this leader is at \(round)" : nil
        default:
            return nil
        }
    }

    /// What must hold of this instance's own state after any sequence of events, whatever its
    /// peers send: the log numbered one by one after the snapshot, its terms never going back
    /// nor past the current term, `snapshotIndex <= lastApplied <= commitIndex <= lastIndex`,
    /// the term within `termMax` (peers may move it at most `termJumpMax` per message, so only
    /// 2^30 hostile messages could carry it past). Nil when all hold; otherwise what broke.
    public func brokenInvariant() -> String? {
        if term > Self.termMax { return "term \(term) is over \(Self.termMax)" }
        var previousTerm = snapshot?.lastTerm ?? 0
        for (offset, entry) in entries.enumerated() {
            if entry.index != snapshotIndex + 1 + UInt64(offset) { return "entry \(offset) after the snapshot has index \(entry.index)" }
            if entry.term < previousTerm || entry.term > term { return "entry \(entry.index) has term \(entry.term) after \(previousTerm), at term \(term)" }
            previousTerm = entry.term
        }
        guard snapshotIndex <= lastApplied, lastApplied <= commitIndex, commitIndex <= lastIndex else {
            return "snapshot \(snapshotIndex), applied \(lastApplied), committed \(commitIndex), last \(lastIndex) out of order"
        }
        if role == .leader, leader != node { return "leader of term \(term) names \(leader.map { "\($0)" } ?? "nobody") as leader" }
        if let votedFor, !members.contains(votedFor) { return "voted for \(votedFor), not a member" }
        return nil
    }

    public mutating func receive(_ message: RaftMessage, from sender: NodeID, now: Duration) -> [Effect] {
        self.now = now
        if let reason = refusal(of: message, from: sender) {
            messagesRefused += 1
            lastRefusal = "\(Mirror(reflecting: message).children.first?.label ?? "message") from \(sender): \(reason)"
            return []
        }
        switch message {
        case let .requestVote(term, lastLogIndex, lastLogTerm, preVote, transfer):
            return voteRequested(by: sender, term: term, lastLogIndex: lastLogIndex, lastLogTerm: lastLogTerm, preVote: preVote, transfer: transfer)
        case let .vote(term, granted, preVote):
            return voteReceived(from: sender, term: term, granted: granted, preVote: preVote)
        case let .appendEntries(term, previousIndex, previousTerm, newEntries, leaderCommit, round, stamp):
            var effects = appendEntries(from: sender, term: term, previousIndex: previousIndex, previousTerm: previousTerm,
                                        newEntries: newEntries, leaderCommit: leaderCommit, round: round)
            if let stamp, term == self.term, role == .follower { effects += adopt(stamp) }
            return effects
        case let .appendResult(term, success, matchIndex, round):
            return appendResult(from: sender, term: term, success: success, match: matchIndex, round: round)
        case let .installSnapshot(term, lastIndex, lastTerm, offset, chunk, done, round):
            return snapshotChunk(from: sender, term: term, lastIndex: lastIndex, lastTerm: lastTerm, offset: offset, chunk, done: done, round: round)
        case let .snapshotProgress(term, lastIndex, received, accepted, round):
            return snapshotProgress(from: sender, term: term, lastIndex: lastIndex, received: received, accepted: accepted, round: round)
        case let .timeoutNow(term):
            guard term == self.term, role == .follower else { return [] }
            return becomeCandidate(transfer: true)
        case let .forward(request, client, sequence, operation):
            guard role == .leader else { return [] }
            return serve(operation, client: client, sequence: sequence, origin: .remote(sender, request))
        case let .forwardedResult(request, result, index):
            return complete(request, .ok(result, index: index))
        case let .readIndexRequest(read):
            guard role == .leader else { return [] }
            return serve(Self.readIndexProbe, client: 0, sequence: 0, origin: .readIndex(sender, read))
        case let .readIndexReply(read, index):
            guard boundedReads[read] != nil else { return [] }
            boundedReads[read]?.linearizableIndex = index
            return decide(read, atDeadline: false)
        }
    }

    // MARK: Elections

    private mutating func resetElectionTimer() -> Effect {
        let minimum = configuration.electionTimeoutMin.nanoseconds
        return .setTimer(.election, after: .nanoseconds(Int64.random(in: minimum..<(2 * minimum), using: &random)))
    }

    private mutating func electionTimeout() -> [Effect] {
        guard role != .leader else { return [] }
        leader = nil
        guard configuration.preVote else { return becomeCandidate(transfer: false) }
        role = .preCandidate
        votes = [node]
        if votes.count >= quorum { return becomeCandidate(transfer: false) }
        var effects: [Effect] = [resetElectionTimer()]
        for peer in peers {
            effects.append(.send(to: peer, .requestVote(term: term + 1, lastLogIndex: lastIndex, lastLogTerm: lastTerm, preVote: true, transfer: false)))
        }
        return effects
    }

    private mutating func becomeCandidate(transfer: Bool) -> [Effect] {
        role = .candidate
        term += 1
        votedFor = node
        leader = nil
        votes = [node]
        var effects: [Effect] = [persistHardState(), resetElectionTimer()]
        if votes.count >= quorum { return effects + becomeLeader() }
        for peer in peers {
            effects.append(.send(to: peer, .requestVote(term: term, lastLogIndex: lastIndex, lastLogTerm: lastTerm, preVote: false, transfer: transfer)))
        }
        return effects
    }

    private mutating func voteRequested(by candidate: NodeID, term candidateTerm: UInt64, lastLogIndex: UInt64, lastLogTerm: UInt64,
                                        preVote: Bool, transfer: Bool) -> [Effect] {
        let upToDate = lastLogTerm > lastTerm || (lastLogTerm == lastTerm && lastLogIndex >= lastIndex)
            || configuration.plantedBug == .voteWithoutLogCheck
        // Leader stickiness: while a leader is heard from, no vote for anyone else (thesis 4.2.3).
        let hearsLeader = role == .leader || (leader != nil && lastHeardFromLeader.map { now - $0 < configuration.electionTimeoutMin } == true)
        // A refusal carries the voter's own term, so that a candidate behind it catches up.
        if hearsLeader && !transfer && (configuration.checkQuorum || preVote) {
            return [.send(to: candidate, .vote(term: term, granted: false, preVote: preVote))]
        }
        if preVote {
            let granted = candidateTerm > term && upToDate
            return [.send(to: candidate, .vote(term: granted ? candidateTerm : term, granted: granted, preVote: true))]
        }
        guard candidateTerm >= term else { return [.send(to: candidate, .vote(term: term, granted: false, preVote: false))] }
        var effects: [Effect] = []
        if candidateTerm > term { effects += stepDown(to: candidateTerm) }
        let granted = (votedFor == nil || votedFor == candidate) && upToDate
        if granted {
            votedFor = candidate
            effects.append(persistHardState())
            effects.append(resetElectionTimer())
        }
        // The vote is durable before it is sent (the persist above comes first).
        effects.append(.send(to: candidate, .vote(term: term, granted: granted, preVote: false)))
        return effects
    }

    private mutating func voteReceived(from voter: NodeID, term voteTerm: UInt64, granted: Bool, preVote: Bool) -> [Effect] {
        if preVote {
            if !granted, voteTerm > term { return stepDown(to: voteTerm) }
            guard role == .preCandidate, voteTerm == term + 1, granted else { return [] }
            votes.insert(voter)
            return votes.count >= quorum ? becomeCandidate(transfer: false) : []
        }
        if voteTerm > term { return stepDown(to: voteTerm) }
        guard role == .candidate, voteTerm == term, granted else { return [] }
        votes.insert(voter)
        return votes.count >= quorum ? becomeLeader() : []
    }

    private mutating func becomeLeader() -> [Effect] {
        role = .leader
        leader = node
        transferTarget = nil
        for peer in peers {
            nextIndex[peer] = lastIndex + 1
            matchIndex[peer] = 0
            inflight[peer] = 0
            lastContact[peer] = now  // a grace period before check-quorum counts silence
            acknowledgedRound[peer] = 0
        }
        leaseUntil = nil
        leaseRevoked = false
        // A no-op of the new term: committing it commits everything before it (section 8),
        // and ReadIndex needs it.
        var effects = appendToLog(.noop)
        effects.append(.output(.becameLeader(term: term)))
        effects += broadcastAppends()
        effects.append(.setTimer(.heartbeat, after: configuration.heartbeatInterval))
        effects += advanceCommit()
        return effects
    }

    /// Adopts a newer term as a follower.
    private mutating func stepDown(to newTerm: UInt64) -> [Effect] {
        var effects: [Effect] = []
        if newTerm > term {
            term = newTerm
            votedFor = nil
            effects.append(persistHardState())
        }
        if role == .leader { effects += abandonLeadership() }
        snapshotSending.removeAll()
        snapshotStream = nil
        if role != .follower {
            role = .follower
            effects.append(resetElectionTimer())
        }
        return effects
    }

    private mutating func abandonLeadership() -> [Effect] {
        role = .follower
        leader = nil
        leaseUntil = nil
        transferTarget = nil
        var effects: [Effect] = [.cancelTimer(.heartbeat), resetElectionTimer()]
        // Reads not yet confirmed cannot be; writes stay pending (they may still commit).
        for read in pendingReads { effects += fail(read.origin) }
        for read in readsAwaitingCommit { effects += fail(read.origin) }
        pendingReads.removeAll()
        readsAwaitingCommit.removeAll()
        serving.removeAll()
        return effects
    }

    /// A request the leader will not serve: its own client hears why; a forwarding node's
    /// client reaches its latency bound.
    private mutating func fail(_ origin: Origin, _ reason: String = "leadership lost") -> [Effect] {
        guard case let .local(id) = origin else { return [] }
        return complete(id, .unavailable(reason))
    }

    // MARK: Replication

    private mutating func heartbeat() -> [Effect] {
        guard role == .leader else { return [] }
        var effects: [Effect] = [.setTimer(.heartbeat, after: configuration.heartbeatInterval)]
        if configuration.checkQuorum {
            let inContact = peers.filter { lastContact[$0].map { now - $0 < configuration.electionTimeoutMin } == true }.count + 1
            if inContact < quorum { return effects + abandonLeadership() }
        }
        if let transfer = transferTarget, now >= transfer.until { transferTarget = nil }
        effects += broadcastAppends()
        return effects
    }

    private mutating func broadcastAppends() -> [Effect] {
        round += 1
        roundSentAt[round] = now
        roundSentAt = roundSentAt.filter { $0.key + 64 > round }
        return peers.flatMap { sendAppend(to: $0) }
    }

    private mutating func sendAppend(to peer: NodeID) -> [Effect] {
        let next = nextIndex[peer] ?? lastIndex + 1
        if next <= snapshotIndex, snapshot != nil { return sendSnapshotChunk(to: peer) }
        var batch: [LogEntry] = []
        if (inflight[peer] ?? 0) < configuration.inflightAppendsMax, next <= lastIndex {
            // At most entriesPerMessageMax entries and appendBytesMax bytes (one entry at least).
            let first = Int(next - snapshotIndex - 1)
            var bytes = entries[first].approximateBytes
            var last = first
            while last + 1 < entries.count, last + 1 - first < configuration.entriesPerMessageMax {
                let more = entries[last + 1].approximateBytes
                guard bytes + more <= configuration.appendBytesMax else { break }
                bytes += more
                last += 1
            }
            let end = next + UInt64(last - first)
            batch = Array(entries[first...last])
            nextIndex[peer] = end + 1
            inflight[peer, default: 0] += 1
        }
        let previous = next - 1
        return [.send(to: peer, .appendEntries(term: term, previousIndex: previous, previousTerm: term(at: previous) ?? 0,
                                               entries: batch, leaderCommit: commitIndex, round: round, stamp: leaderStamp()))]
    }

    private mutating func appendToLog(_ command: LogCommand) -> [Effect] {
        let entry = LogEntry(term: term, index: lastIndex + 1, command: command)
        entries.append(entry)
        return [.persist(RaftDurableState(term: term, votedFor: votedFor, entries: [entry]))]
    }

    private mutating func appendEntries(from sender: NodeID, term leaderTerm: UInt64, previousIndex: UInt64, previousTerm: UInt64,
                                        newEntries: [LogEntry], leaderCommit: UInt64, round: UInt64) -> [Effect] {
        guard leaderTerm >= term else {
            return [.send(to: sender, .appendResult(term: term, success: false, matchIndex: lastIndex, round: round))]
        }
        var effects: [Effect] = []
        if leaderTerm > term || role != .follower { effects += stepDown(to: leaderTerm) }
        precondition(role == .follower, "\(node) got appends from \(sender) for its own term \(term) as \(role)")
        leader = sender
        lastHeardFromLeader = now
        effects.append(resetElectionTimer())
        guard previousIndex <= lastIndex else {
            return effects + [.send(to: sender, .appendResult(term: term, success: false, matchIndex: lastIndex, round: round))]
        }
        if previousIndex >= snapshotIndex, term(at: previousIndex) != previousTerm {
            let hint = max(commitIndex, previousIndex - 1)
            return effects + [.send(to: sender, .appendResult(term: term, success: false, matchIndex: hint, round: round))]
        }
        // Append what is new; a conflicting suffix is replaced (log matching, section 5.3).
        var replaceFrom: UInt64?
        var appended: [LogEntry] = []
        for entry in newEntries where entry.index > snapshotIndex {
            if appended.isEmpty, let existing = term(at: entry.index) {
                if existing == entry.term { continue }
                guard entry.index > commitIndex else {
                    // Only a broken leader asks this; refuse, and let the checkers see it.
                    committedOverwritesRefused += 1
                    return effects + [.send(to: sender, .appendResult(term: term, success: false, matchIndex: commitIndex, round: round))]
                }
                entries.removeLast(Int(lastIndex - entry.index + 1))
                replaceFrom = entry.index
            }
            entries.append(entry)
            appended.append(entry)
        }
        if !appended.isEmpty || replaceFrom != nil {
            effects.append(.persist(RaftDurableState(term: term, votedFor: votedFor, entries: appended, replaceFrom: replaceFrom)))
        }
        let lastNew = previousIndex + UInt64(newEntries.count)
        if leaderCommit > commitIndex { commitIndex = max(commitIndex, min(leaderCommit, lastNew)) }
        effects += applyCommitted()
        // The reply follows the persist: what it acknowledges is durable.
        effects.append(.send(to: sender, .appendResult(term: term, success: true, matchIndex: lastNew, round: round)))
        return effects
    }

    /// The stream of the current snapshot's encoding (nil: no snapshot).
    private mutating func currentStream() -> SnapshotStream? {
        guard let snapshot else { return nil }
        if snapshotStream?.snapshot.lastIndex != snapshot.lastIndex { snapshotStream = SnapshotStream(snapshot) }
        return snapshotStream
    }

    /// The next chunk of the snapshot for a lagging follower, or, with the window full, an empty
    /// chunk that asks where the follower is (a lost chunk is sent again from there).
    private mutating func sendSnapshotChunk(to peer: NodeID) -> [Effect] {
        guard let snapshot, var stream = currentStream() else { return [] }
        var sending: (lastIndex: UInt64, offset: Int) = snapshotSending[peer].flatMap { $0.lastIndex == snapshot.lastIndex ? $0 : nil } ?? (snapshot.lastIndex, 0)
        if !stream.isBoundary(sending.offset) { sending.offset = 0 }
        var chunk: [UInt8] = []
        let offset = sending.offset
        if (inflight[peer] ?? 0) < configuration.inflightAppendsMax, !stream.isEnd(offset) {
            chunk = stream.chunk(from: offset, maxBytes: configuration.snapshotChunkBytes)
            snapshotStream = stream
            sending.offset += chunk.count
            inflight[peer, default: 0] += 1
        }
        snapshotSending[peer] = sending
        let done = !chunk.isEmpty && stream.isEnd(sending.offset)
        return [.send(to: peer, .installSnapshot(term: term, lastIndex: snapshot.lastIndex, lastTerm: snapshot.lastTerm, offset: UInt64(offset),
                                                 chunk: chunk, done: done, round: round))]
    }

    /// A follower receives a chunk of the leader's snapshot: buffered while it continues the
    /// ones before, installed when the last arrives.
    private mutating func snapshotChunk(from sender: NodeID, term leaderTerm: UInt64, lastIndex snapshotLast: UInt64, lastTerm snapshotTerm: UInt64,
                                        offset: UInt64, _ chunk: [UInt8], done: Bool, round: UInt64) -> [Effect] {
        guard leaderTerm >= term else {
            return [.send(to: sender, .appendResult(term: term, success: false, matchIndex: lastIndex, round: round))]
        }
        var effects: [Effect] = []
        if leaderTerm > term || role != .follower { effects += stepDown(to: leaderTerm) }
        leader = sender
        lastHeardFromLeader = now
        effects.append(resetElectionTimer())
        if snapshotLast <= commitIndex {
            // Already here (a late or duplicated chunk): the leader may go on from the log.
            incomingSnapshot = nil
            return effects + [.send(to: sender, .appendResult(term: term, success: true, matchIndex: commitIndex, round: round))]
        }
        func progress(_ accepted: Bool) -> Effect {
            let received = incomingSnapshot.map { $0.lastIndex == snapshotLast ? UInt64($0.bytes.count) : 0 } ?? 0
            return .send(to: sender, .snapshotProgress(term: term, lastIndex: snapshotLast, received: received, accepted: accepted, round: round))
        }
        if offset == 0, !chunk.isEmpty { incomingSnapshot = (snapshotLast, snapshotTerm, []) }
        // Only the count is read here: a copy of the buffer held while appending to it would
        // copy the whole buffer for every chunk (quadratic in the snapshot's size).
        let held = incomingSnapshot.flatMap { $0.lastIndex == snapshotLast && $0.lastTerm == snapshotTerm ? $0.bytes.count : nil }
        guard let held, offset == UInt64(held) else {
            return effects + [progress(false)]
        }
        guard held + chunk.count <= configuration.snapshotBytesMax else {
            incomingSnapshot = nil
            return effects + [progress(false)]
        }
        incomingSnapshot?.bytes.append(contentsOf: chunk)
        guard done, let bytes = incomingSnapshot?.bytes else { return effects + [progress(true)] }
        incomingSnapshot = nil
        guard let incoming = try? RaftSnapshot(binary: bytes), incoming.lastIndex == snapshotLast, incoming.lastTerm == snapshotTerm else {
            return effects + [progress(false)]  // nothing buffered now: the leader starts over
        }
        // Keep the log after the snapshot only if it continues the snapshot (section 7).
        let keepsSuffix = term(at: incoming.lastIndex) == incoming.lastTerm
        if keepsSuffix {
            entries.removeFirst(Int(incoming.lastIndex - snapshotIndex))
        } else {
            entries.removeAll()
        }
        snapshot = incoming
        snapshotStream = nil
        appliedBytesSinceSnapshot = 0
        stateMachine = incoming.state
        commitIndex = incoming.lastIndex
        lastApplied = incoming.lastIndex
        effects.append(.persist(RaftDurableState(term: term, votedFor: votedFor, snapshot: incoming,
                                                 replaceFrom: keepsSuffix ? nil : incoming.lastIndex + 1)))
        effects += answerRequestsFromSessions()
        effects.append(.send(to: sender, .appendResult(term: term, success: true, matchIndex: incoming.lastIndex, round: round)))
        return effects
    }

    /// The leader hears how far a follower got with the snapshot: the next chunk, or, after a
    /// chunk that did not continue what it holds, the chunks again from there.
    private mutating func snapshotProgress(from peer: NodeID, term resultTerm: UInt64, lastIndex snapshotLast: UInt64, received: UInt64,
                                           accepted: Bool, round ackRound: UInt64) -> [Effect] {
        if resultTerm > term { return stepDown(to: resultTerm) }
        guard role == .leader, resultTerm == term else { return [] }
        lastContact[peer] = now
        acknowledgedRound[peer] = max(acknowledgedRound[peer] ?? 0, ackRound)
        inflight[peer] = max(0, (inflight[peer] ?? 0) - 1)
        var effects: [Effect] = []
        if let sending = snapshotSending[peer], sending.lastIndex == snapshotLast, snapshot?.lastIndex == snapshotLast {
            if !accepted {
                snapshotSending[peer] = (snapshotLast, Int(min(received, UInt64(sending.offset))))
                inflight[peer] = 0
            }
            if (nextIndex[peer] ?? 0) <= snapshotIndex, (inflight[peer] ?? 0) < configuration.inflightAppendsMax,
               let offset = snapshotSending[peer]?.offset, currentStream().map({ !$0.isEnd(offset) }) == true {
                effects += sendSnapshotChunk(to: peer)
            }
        }
        updateLease()
        effects += confirmReads()
        return effects
    }

    private mutating func appendResult(from peer: NodeID, term resultTerm: UInt64, success: Bool, match: UInt64, round ackRound: UInt64) -> [Effect] {
        if resultTerm > term { return stepDown(to: resultTerm) }
        guard role == .leader, resultTerm == term else { return [] }
        lastContact[peer] = now
        acknowledgedRound[peer] = max(acknowledgedRound[peer] ?? 0, ackRound)
        inflight[peer] = max(0, (inflight[peer] ?? 0) - 1)
        var effects: [Effect] = []
        if success {
            matchIndex[peer] = max(matchIndex[peer] ?? 0, match)
            nextIndex[peer] = max(nextIndex[peer] ?? 0, match + 1)
            if match >= snapshotIndex { snapshotSending[peer] = nil }
            effects += advanceCommit()
        } else {
            nextIndex[peer] = max((matchIndex[peer] ?? 0) + 1, min(nextIndex[peer] ?? lastIndex + 1, match + 1))
            inflight[peer] = 0
            effects += sendAppend(to: peer)
        }
        if (nextIndex[peer] ?? 0) <= lastIndex, (inflight[peer] ?? 0) < configuration.inflightAppendsMax {
            effects += sendAppend(to: peer)
        }
        updateLease()
        effects += confirmReads()
        effects += progressTransfer()
        return effects
    }

    /// Commits the highest index replicated on a quorum whose entry is of the current term.
    private mutating func advanceCommit() -> [Effect] {
        guard role == .leader else { return [] }
        var candidate = lastIndex
        while candidate > commitIndex {
            let replicas = peers.filter { (matchIndex[$0] ?? 0) >= candidate }.count + 1
            let ofThisTerm = term(at: candidate) == term || configuration.plantedBug == .commitPreviousTermEntries
            if replicas >= quorum && ofThisTerm { break }
            candidate -= 1
        }
        guard candidate > commitIndex else { return [] }
        commitIndex = candidate
        var effects = applyCommitted()
        // Reads that waited for the first commit of this term can now get a read index.
        let waiting = readsAwaitingCommit
        readsAwaitingCommit.removeAll()
        for read in waiting { effects += startRead(read.operation, origin: read.origin) }
        return effects
    }

    private mutating func applyCommitted() -> [Effect] {
        var effects: [Effect] = []
        while lastApplied < commitIndex {
            lastApplied += 1
            guard let entry = entry(at: lastApplied) else { preconditionFailure("\(node): committed entry \(lastApplied) missing") }
            appliedBytesSinceSnapshot += entry.approximateBytes
            guard let result = stateMachine.apply(entry.command) else { continue }
            effects += answer(client: entry.command.client, sequence: entry.command.sequence, result)
        }
        effects += confirmReads()
        effects += compactIfNeeded()
        effects += promoteStamps()
        return effects
    }

    /// Replies to whoever waits for (client, sequence), here or at a forwarding node.
    private mutating func answer(client: UInt64, sequence: UInt64, _ result: KeyValueResult) -> [Effect] {
        var effects: [Effect] = []
        for origin in serving[client]?[sequence] ?? [] {
            switch origin {
            case let .local(id): effects += complete(id, .ok(result, index: lastApplied))
            case let .remote(peer, id): effects.append(.send(to: peer, .forwardedResult(request: id, result, index: lastApplied)))
            case .readIndex, .bounded: break
            }
        }
        serving[client]?[sequence] = nil
        if serving[client]?.isEmpty == true { serving[client] = nil }
        // A forwarded request whose entry this node applies as a follower is answered here too.
        for (id, request) in requests.sorted(by: { $0.key < $1.key }) where request.client == client && request.sequence == sequence {
            effects += complete(id, .ok(result, index: lastApplied))
        }
        return effects
    }

    /// After installing a snapshot: requests whose results the sessions now hold.
    private mutating func answerRequestsFromSessions() -> [Effect] {
        var effects: [Effect] = []
        for (id, request) in requests.sorted(by: { $0.key < $1.key }) where !request.operation.isRead {
            if let session = stateMachine.sessions[request.client], session.sequence == request.sequence {
                effects += complete(id, .ok(session.result, index: lastApplied))
            }
        }
        return effects
    }

    private mutating func compactIfNeeded() -> [Effect] {
        guard lastApplied - snapshotIndex > UInt64(configuration.snapshotThresholdEntries), let appliedTerm = term(at: lastApplied) else { return [] }
        // Not before as many bytes were applied as the snapshot holds (estimated: encoding it
        // here would stall this node; the store encodes it on its own thread).
        guard appliedBytesSinceSnapshot >= snapshot?.state.approximateBytes ?? 0 else { return [] }
        let newSnapshot = RaftSnapshot(lastIndex: lastApplied, lastTerm: appliedTerm, state: stateMachine)
        entries.removeFirst(Int(lastApplied - snapshotIndex))
        snapshot = newSnapshot
        snapshotStream = nil
        appliedBytesSinceSnapshot = 0
        return [.persist(RaftDurableState(term: term, votedFor: votedFor, snapshot: newSnapshot, compaction: true))]
    }

    // MARK: Client requests

    private mutating func request(id: UInt64, client: UInt64, sequence: UInt64, _ operation: KeyValueOperation, latency: Duration) -> [Effect] {
        guard requests.count < configuration.pendingRequestsMax else {
            return [.output(.reply(id: id, .unavailable("more than \(configuration.pendingRequestsMax) requests pending")))]
        }
        requests[id] = ClientRequest(client: client, sequence: sequence, operation: operation, handedOver: false)
        var effects: [Effect] = [.setTimer(.deadline(request: id), after: latency)]
        switch role {
        case .leader:
            requests[id]?.handedOver = true
            effects += serve(operation, client: client, sequence: sequence, origin: .local(id))
        default:
            guard let leader, lastHeardFromLeader.map({ now - $0 < configuration.electionTimeoutMin }) == true else {
                return effects + complete(id, .unavailable("no leader known"))
            }
            requests[id]?.handedOver = true
            effects.append(.send(to: leader, .forward(request: id, client: client, sequence: sequence, operation)))
        }
        return effects
    }

    /// The leader's side of a request, from here or forwarded.
    private mutating func serve(_ operation: KeyValueOperation, client: UInt64, sequence: UInt64, origin: Origin) -> [Effect] {
        guard transferTarget == nil else { return fail(origin, "leadership is being transferred") }
        // Forwarded requests wait here too: the same bound as this node's own clients.
        let waiting = pendingReads.count + readsAwaitingCommit.count + serving.values.reduce(0) { $0 + $1.count }
        guard waiting < configuration.pendingRequestsMax else {
            return fail(origin, "more than \(configuration.pendingRequestsMax) requests waiting at the leader")
        }
        if operation.isRead { return startRead(operation, origin: origin) }
        if let session = stateMachine.sessions[client], sequence <= session.sequence {
            // Already applied: answer with the remembered result (a retry), or never (stale).
            guard sequence == session.sequence else { return [] }
            return reply(origin, session.result)
        }
        let alreadyLogged = serving[client]?[sequence] != nil
        serving[client, default: [:]][sequence, default: []].append(origin)
        guard !alreadyLogged else { return [] }
        var effects = appendToLog(LogCommand(client: client, sequence: sequence, operation: operation))
        for peer in peers where (inflight[peer] ?? 0) < configuration.inflightAppendsMax { effects += sendAppend(to: peer) }
        effects += advanceCommit()
        return effects
    }

    private mutating func reply(_ origin: Origin, _ result: KeyValueResult) -> [Effect] {
        switch origin {
        case let .local(id): complete(id, .ok(result, index: lastApplied))
        case let .remote(peer, id): [.send(to: peer, .forwardedResult(request: id, result, index: lastApplied))]
        // A read index is answered with the applied index: its state is at least as new.
        case let .readIndex(peer, id): [.send(to: peer, .readIndexReply(read: id, index: lastApplied))]
        case let .bounded(id): readIndexConfirmed(id)
        }
    }

    private mutating func readIndexConfirmed(_ id: UInt64) -> [Effect] {
        guard boundedReads[id] != nil else { return [] }
        boundedReads[id]?.linearizableIndex = lastApplied
        return decide(id, atDeadline: false)
    }

    private mutating func startRead(_ operation: KeyValueOperation, origin: Origin) -> [Effect] {
        if configuration.plantedBug == .staleLocalReads { return reply(origin, stateMachine.query(operation)) }
        // ReadIndex needs an entry of this term committed (thesis 6.4, step 1).
        guard term(at: commitIndex) == term || entriesOfTermCommitted else {
            readsAwaitingCommit.append((origin, operation))
            return []
        }
        if configuration.leaseReads, let leaseUntil, now < leaseUntil {
            pendingReads.append(PendingRead(origin: origin, operation: operation, readIndex: commitIndex, round: 0))
            return confirmReads()
        }
        var effects = broadcastAppends()
        pendingReads.append(PendingRead(origin: origin, operation: operation, readIndex: commitIndex, round: round))
        effects += confirmReads()
        return effects
    }

    private var entriesOfTermCommitted: Bool {
        var index = commitIndex
        while index > snapshotIndex {
            if term(at: index) == term { return true }
            index -= 1
        }
        return false
    }

    /// Answers reads whose heartbeat round a quorum acknowledged and whose index is applied.
    private mutating func confirmReads() -> [Effect] {
        guard role == .leader, !pendingReads.isEmpty else { return [] }
        var effects: [Effect] = []
        var remaining: [PendingRead] = []
        for read in pendingReads {
            let acknowledged = peers.filter { (acknowledgedRound[$0] ?? 0) >= read.round }.count + 1
            if (read.round == 0 || acknowledged >= quorum) && lastApplied >= read.readIndex {
                effects += reply(read.origin, stateMachine.query(read.operation))
            } else {
                remaining.append(read)
            }
        }
        pendingReads = remaining
        return effects
    }

    /// The lease runs from the sending of the latest round a quorum acknowledged, for the
    /// shortest election timeout less the clock offset bound: no other leader can be elected
    /// before (followers that heard this leader refuse votes for an election timeout).
    private mutating func updateLease() {
        guard configuration.leaseReads || (configuration.freshnessStamps && configuration.checkQuorum), !leaseRevoked else { return }
        let rounds = (peers.map { acknowledgedRound[$0] ?? 0 } + [round]).sorted(by: >)
        let quorumRound = rounds[quorum - 1]
        guard let sentAt = roundSentAt[quorumRound] else { return }
        let until = sentAt + configuration.electionTimeoutMin - configuration.maxClockOffset
        leaseUntil = max(leaseUntil ?? until, until)
    }

    private mutating func progressTransfer() -> [Effect] {
        guard role == .leader, let transfer = transferTarget else { return [] }
        guard (matchIndex[transfer.node] ?? 0) >= lastIndex else { return sendAppend(to: transfer.node) }
        transferTarget = nil
        // The target will win an election at once, ignoring leader stickiness: no more lease.
        leaseUntil = nil
        leaseRevoked = true
        return [.send(to: transfer.node, .timeoutNow(term: term))]
    }

    private mutating func deadlinePassed(_ id: UInt64) -> [Effect] {
        guard let request = requests[id] else { return [] }
        let outcome: RequestOutcome = request.operation.isRead || !request.handedOver
            ? .unavailable("no answer within the latency bound") : .indeterminate
        return complete(id, outcome)
    }

    private mutating func complete(_ id: UInt64, _ outcome: RequestOutcome) -> [Effect] {
        guard requests.removeValue(forKey: id) != nil else { return [] }
        return [.cancelTimer(.deadline(request: id)), .output(.reply(id: id, outcome))]
    }

    // MARK: Bounded reads and freshness certificates

    /// The certificate a leader sends with its appends: only while its lease holds (no other
    /// leader can have committed anything) and once it committed an entry of its term (its
    /// commit index covers everything committed before it).
    private func leaderStamp(at time: Duration? = nil) -> FreshnessStamp? {
        let time = time ?? now
        guard configuration.freshnessStamps, configuration.checkQuorum, role == .leader, !leaseRevoked,
              let leaseUntil, time < leaseUntil, transferTarget == nil, entriesOfTermCommitted else { return nil }
        return FreshnessStamp(index: commitIndex, leaderTime: time.nanoseconds)
    }

    /// The freshness of this replica's applied state at `time` (default: the current event's),
    /// on the leader's clock.
    private func currentCertificate(at time: Duration? = nil) -> Duration? {
        if leaderStamp(at: time) != nil { return time ?? now }
        return certifiedAt
    }

    private mutating func adopt(_ stamp: FreshnessStamp) -> [Effect] {
        pendingStamps.append(stamp)
        if pendingStamps.count > Self.pendingStampsMax { pendingStamps.removeFirst(pendingStamps.count - Self.pendingStampsMax) }
        return promoteStamps()
    }

    /// Stamps whose index is applied become this replica's certificate.
    private mutating func promoteStamps() -> [Effect] {
        var raised = false
        pendingStamps.removeAll { stamp in
            guard stamp.index <= lastApplied else { return false }
            let time = Duration.nanoseconds(stamp.leaderTime)
            if time > certifiedAt ?? .nanoseconds(Int64.min) {
                certifiedAt = time
                raised = true
            }
            return true
        }
        guard raised || !boundedReads.isEmpty else { return [] }
        return boundedReads.keys.sorted().flatMap { decide($0, atDeadline: false) }
    }

    /// The staleness this replica could certify for a read beginning now (nil: none).
    public func certifiedStaleness(now: Duration) -> Duration? {
        currentCertificate(at: now).map { gate.staleness(readStart: now, certifiedAt: $0) }
    }

    private mutating func startBoundedRead(_ id: UInt64, _ operation: KeyValueOperation, _ levels: [ServiceLevel], minimumIndex: UInt64) -> [Effect] {
        func failure(_ reason: BoundedReadFailure) -> [Effect] { [.output(.boundedReadCompleted(id: id, .failure(reason)))] }
        if let problem = FreshnessGate.validate(levels) { return failure(.invalidRequest(problem)) }
        guard operation.isRead else { return failure(.invalidRequest("a bounded read needs a read operation, not \(operation)")) }
        guard boundedReads[id] == nil else { return failure(.invalidRequest("read id \(id) in use")) }
        guard boundedReads.count < configuration.boundedReadsMax else {
            return failure(.unavailable("more than \(configuration.boundedReadsMax) bounded reads pending"))
        }
        boundedReads[id] = BoundedRead(operation: operation, levels: levels, startedAt: now, minimumIndex: minimumIndex)
        return decide(id, atDeadline: false)
    }

    private func quality(of read: BoundedRead) -> FreshnessGate.Quality {
        if let index = read.linearizableIndex, lastApplied >= index, lastApplied >= read.minimumIndex { return .linearizable }
        guard lastApplied >= read.minimumIndex else { return .unusable }
        return .certified(staleness: currentCertificate().map { gate.staleness(readStart: read.startedAt, certifiedAt: $0) })
    }

    private mutating func decide(_ id: UInt64, atDeadline: Bool) -> [Effect] {
        guard var read = boundedReads[id] else { return [] }
        let quality = quality(of: read)
        switch gate.decide(levels: read.levels, startedAt: read.startedAt, now: now, quality: quality, atDeadline: atDeadline) {
        case let .answer(level):
            boundedReads[id] = nil
            let receipt = ReadReceipt(guarantee: quality.guarantee, staleness: quality.staleness, version: .logIndex(lastApplied),
                                      replicas: [node.replica], level: level)
            let answer = RaftReadAnswer(result: stateMachine.query(read.operation), receipt: receipt)
            return [.cancelTimer(.boundedDeadline(id)), .output(.boundedReadCompleted(id: id, .success(answer)))]
        case .fail:
            boundedReads[id] = nil
            let best: BoundedReadFailure = lastApplied < read.minimumIndex
                ? .unavailable("this replica has not applied the session's index \(read.minimumIndex) (it has \(lastApplied))")
                : .stalenessBoundUnmet(best: quality.staleness)
            return [.cancelTimer(.boundedDeadline(id)), .output(.boundedReadCompleted(id: id, .failure(best)))]
        case let .wait(until):
            var effects: [Effect] = [.setTimer(.boundedDeadline(id), after: max(.zero, until - now))]
            if !read.asked {
                read.asked = true
                boundedReads[id] = read
                if role == .leader {
                    effects += serve(Self.readIndexProbe, client: 0, sequence: 0, origin: .bounded(id))
                } else if let leader {
                    effects.append(.send(to: leader, .readIndexRequest(read: id)))
                }
            }
            return effects
        }
    }

    private func persistHardState() -> Effect { .persist(RaftDurableState(term: term, votedFor: votedFor)) }
}
