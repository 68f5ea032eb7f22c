import ContinuumCore

/// A bug that can be planted in the Austere protocol so that tests can show the checkers catch
/// its class. Never set outside tests.
public enum PlantedTransactionBug: String, Sendable, CaseIterable {
    /// Participants release their locks as soon as they vote yes, before the decision.
    case releaseLocksBeforeDecision = "release-locks-before-decision"
    /// The coordinator sends commit before its decision is durable (it persists a moment later).
    case commitBeforeDecisionDurable = "commit-before-decision-durable"
    /// A staleness-bounded read certifies the committed state as of now, ignoring transactions
    /// prepared here and not yet decided (which may be acknowledged already).
    case certifyPastPrepared = "certify-past-prepared"
}

/// Serializable registers after Meiklejohn's Austere model: every transaction takes strict
/// two-phase locks at every replica (`LockTable`, wait-die) and commits by two-phase commit at
/// every replica (Bernstein, Hadzilacos and Goodman 1987, chapters 3 and 7). One system image:
/// every replica holds the same committed state; when any replica cannot be reached, no
/// transaction can lock, so all stop, cleanly, by their latency bound.
///
/// Every node is a participant (a replica holding locks and committed values) and may
/// coordinate transactions of its own clients. Participants persist their yes vote with its
/// writes before answering `prepare`; the coordinator persists a commit decision before sending
/// it; a participant that restarts prepared asks the coordinator, which answers from its
/// durable decisions or, for a transaction it has no commit decision for, abort (presumed
/// abort: nothing is ever guessed, since commit is never sent before it is durable). An
/// unprepared transaction idle at a participant for `idleAbortTimeout` is aborted there.
public struct TransactionInstance: ProtocolInstance {
    public struct Configuration: Sendable {
        public var idleAbortTimeout: Duration
        public var checkInterval: Duration
        public var decisionRetryInterval: Duration
        public var decisionRetriesMax: Int
        /// Open transactions at one coordinator, at most.
        public var transactionsMax: Int
        /// Decisions remembered, at most. Past it the oldest are forgotten, but never one that a
        /// participant may still ask about (sent and not acknowledged everywhere, or prepared here).
        public var decisionsRememberedMax: Int
        public var plantedBug: PlantedTransactionBug?
        /// Clock bounds for staleness-bounded reads of the committed state.
        public var freshness: FreshnessGate.Configuration
        /// Staleness-bounded reads waiting here, at most.
        public var boundedReadsMax: Int

        public init(idleAbortTimeout: Duration = .seconds(2), checkInterval: Duration = .milliseconds(250),
                    decisionRetryInterval: Duration = .milliseconds(200), decisionRetriesMax: Int = 100,
                    transactionsMax: Int = 1_024, decisionsRememberedMax: Int = 4_096, plantedBug: PlantedTransactionBug? = nil,
                    freshness: FreshnessGate.Configuration = .init(), boundedReadsMax: Int = 10_000) {
            self.freshness = freshness
            self.boundedReadsMax = boundedReadsMax
            self.idleAbortTimeout = idleAbortTimeout
            self.checkInterval = checkInterval
            self.decisionRetryInterval = decisionRetryInterval
            self.decisionRetriesMax = decisionRetriesMax
            self.transactionsMax = transactionsMax
            self.decisionsRememberedMax = decisionsRememberedMax
            self.plantedBug = plantedBug
        }
    }

    /// Client commands, naming the transaction by the client's handle.
    public enum Command: Sendable {
        /// Starts a transaction that must decide within `latency`. A transaction that died under
        /// wait-die is retried with the `age` of its first attempt (the timestamp its
        /// `aborted` output carried), so that it gets older, not younger, and cannot starve.
        case begin(handle: UInt64, latency: Duration, age: UInt64? = nil)
        /// Locks keys at every replica and reads their committed values.
        case lock(handle: UInt64, step: UInt64, [LockRequest])
        /// Commits these writes atomically at every replica (no writes: just releases).
        case commit(handle: UInt64, [TransactionWrite])
        case abort(handle: UInt64)
        /// Reads `key` from this replica's committed state, without locks, under staleness
        /// bounds (a linearizable read is a transaction's).
        case boundedRead(id: UInt64, key: String, levels: [ServiceLevel])
    }

    public enum Output: Sendable, Equatable {
        case locked(handle: UInt64, step: UInt64, values: [String: TransactionValue])
        case committed(handle: UInt64)
        /// Definitely not applied anywhere. `retryAge` is set when it died under wait-die: retry
        /// it with `begin(age:)` set to this.
        case aborted(handle: UInt64, reason: String, retryAge: UInt64? = nil)
        case boundedReadCompleted(id: UInt64, Result<TransactionReadAnswer, BoundedReadFailure>)
    }

    public enum Timer: Hashable, Sendable {
        case deadline(handle: UInt64)
        case retryDecision(TransactionID)
        case participantCheck
        /// Planted bug only: the late persist of a decision.
        case persistDecision(TransactionID)
        case boundedDeadline(UInt64)
    }

    public typealias Message = TransactionMessage
    public typealias Durable = TransactionDurableState

    enum Phase {
        case open
        case locking(step: UInt64, waiting: Set<NodeID>, values: [NodeID: [TransactionWrite]])
        case preparing(waiting: Set<NodeID>, writes: [TransactionWrite])
        case decided
    }

    struct Coordinated {
        var id: TransactionID
        var phase: Phase
    }

    struct Participation {
        var coordinator: NodeID
        var lastActivity: Duration
        /// A lock request still waiting: its step and the requests from the waiting one on.
        var pending: (step: UInt64, remaining: [LockRequest], all: [LockRequest])?
        var prepared: [TransactionWrite]?
    }

    public let node: NodeID
    public let members: [NodeID]
    public private(set) var committed: [String: TransactionValue]
    public private(set) var locks = LockTable()
    /// Prepared transactions here, with their writes (durable).
    public private(set) var preparedHere: [TransactionID: [TransactionWrite]]
    /// Decisions known here: made as coordinator (commits durable) or applied as participant.
    public private(set) var decisions: [TransactionID: Bool]
    /// The order in which decisions became known, oldest first, for forgetting.
    private var decisionOrder: [TransactionID] = []
    private let configuration: Configuration
    private var now: Duration = .zero
    /// This run's incarnation: one more than the last one made durable. Identifiers are drawn
    /// from it, so a restarted coordinator never reuses one that may still be prepared somewhere
    /// (a reused identifier once made a participant vote yes with another transaction's writes).
    private var incarnation: UInt64
    private var nextSequence: UInt64
    private var coordinated: [UInt64: Coordinated] = [:]
    private var handles: [TransactionID: UInt64] = [:]
    private var participations: [TransactionID: Participation] = [:]
    /// Commit decisions sent and not yet applied everywhere, with retries left.
    private var unacknowledged: [TransactionID: (commit: Bool, waiting: Set<NodeID>, retries: Int)] = [:]
    /// Transactions refused or aborted here recently, so a late lock request is refused too.
    private var abortedHere: [TransactionID] = []
    /// When each transaction prepared here was prepared (volatile: unknown after a restart).
    private var preparedAt: [TransactionID: Duration] = [:]
    private var boundedReads: [UInt64: (key: String, levels: [ServiceLevel], startedAt: Duration)] = [:]
    private let gate: FreshnessGate

    public init(configuration: Configuration, context: InstanceContext, durable: TransactionDurableState?) {
        self.configuration = configuration
        self.gate = FreshnessGate(configuration: configuration.freshness)
        self.node = context.node
        self.members = context.members
        self.committed = durable?.committed ?? [:]
        self.preparedHere = durable?.prepared ?? [:]
        self.decisions = durable?.decisions ?? [:]
        self.decisionOrder = decisions.keys.sorted()
        self.incarnation = (durable?.incarnation ?? 0) + 1
        self.nextSequence = incarnation << 32
        // A prepared transaction keeps its exclusive locks across the crash until its decision.
        for (id, writes) in preparedHere.sorted(by: { $0.key < $1.key }) {
            for write in writes { _ = locks.acquire(id, write.key, .exclusive) }
            participations[id] = Participation(coordinator: id.coordinator, lastActivity: .zero, pending: nil, prepared: writes)
        }
    }

    public static func accumulate(_ patch: TransactionDurableState, into durable: inout TransactionDurableState?) {
        var state = durable ?? TransactionDurableState()
        state.committed.merge(patch.committed) { $1 }
        state.prepared.merge(patch.prepared) { $1 }
        state.decisions.merge(patch.decisions) { $1 }
        state.incarnation = max(state.incarnation, patch.incarnation)
        for id in patch.resolved { state.prepared[id] = nil }
        for id in patch.forgotten { state.decisions[id] = nil }
        state.resolved = []
        state.forgotten = []
        durable = state
    }

    public static func trafficClass(of message: TransactionMessage) -> String {
        switch message {
        case .lock, .locked, .refused, .release: "locking"
        default: "commit"
        }
    }

    var others: [NodeID] { members.filter { $0 != node } }

    // MARK: Events

    public mutating func start(now: Duration) -> [Effect] {
        self.now = now
        for id in participations.keys { participations[id]?.lastActivity = now }
        // The incarnation is durable before any identifier drawn from it leaves this node.
        return [.persist(TransactionDurableState(incarnation: incarnation)), .setTimer(.participantCheck, after: configuration.checkInterval)]
    }

    public mutating func handle(_ command: Command, now: Duration) -> [Effect] {
        self.now = now
        switch command {
        case let .begin(handle, latency, age):
            guard coordinated.count < configuration.transactionsMax else {
                return [.output(.aborted(handle: handle, reason: "more than \(configuration.transactionsMax) transactions open"))]
            }
            var effects: [Effect] = []
            nextSequence += 1
            if nextSequence & 0xFFFF_FFFF == 0 {
                // 2^32 identifiers drawn in this incarnation: go on in the next one.
                incarnation += 1
                nextSequence = incarnation << 32 + 1
                effects.append(.persist(TransactionDurableState(incarnation: incarnation)))
            }
            let id = TransactionID(timestamp: age ?? UInt64(clamping: now.nanoseconds), coordinator: node, sequence: nextSequence)
            coordinated[handle] = Coordinated(id: id, phase: .open)
            handles[id] = handle
            return effects + [.setTimer(.deadline(handle: handle), after: latency)]
        case let .lock(handle, step, requests):
            guard let transaction = coordinated[handle], case .open = transaction.phase else {
                return [.output(.aborted(handle: handle, reason: "not open"))]
            }
            coordinated[handle]?.phase = .locking(step: step, waiting: Set(members), values: [:])
            var effects: [Effect] = others.map { .send(to: $0, .lock(transaction.id, step: step, requests)) }
            effects += participantLock(transaction.id, step: step, requests, from: node)
            return effects
        case let .commit(handle, writes):
            guard let transaction = coordinated[handle], case .open = transaction.phase else {
                return [.output(.aborted(handle: handle, reason: "not open"))]
            }
            if writes.isEmpty { return finish(handle, committed: true, release: true) }
            coordinated[handle]?.phase = .preparing(waiting: Set(members), writes: writes)
            var effects: [Effect] = others.map { .send(to: $0, .prepare(transaction.id, writes)) }
            effects += participantPrepare(transaction.id, writes, from: node)
            return effects
        case let .abort(handle):
            guard coordinated[handle] != nil else { return [] }
            return abortCoordinated(handle, reason: "aborted by the client")
        case let .boundedRead(id, key, levels):
            return startBoundedRead(id, key, levels)
        }
    }

    public mutating func timerFired(_ timer: Timer, now: Duration) -> [Effect] {
        self.now = now
        switch timer {
        case let .deadline(handle):
            guard let transaction = coordinated[handle] else { return [] }
            if case .decided = transaction.phase { return [] }
            return abortCoordinated(handle, reason: "not every replica answered within the latency bound")
        case let .retryDecision(id):
            guard let pending = unacknowledged[id], pending.retries > 0 else {
                unacknowledged[id] = nil
                return []
            }
            unacknowledged[id]?.retries -= 1
            return pending.waiting.sorted().map { .send(to: $0, .decision(id, commit: pending.commit)) }
                + [.setTimer(.retryDecision(id), after: configuration.decisionRetryInterval)]
        case .participantCheck:
            return participantCheck()
        case let .persistDecision(id):
            learn(id, commit: true)
            return [.persist(TransactionDurableState(decisions: [id: true]))] + participantDecision(id, commit: true, from: node)
        case let .boundedDeadline(id):
            return decideRead(id, atDeadline: true)
        }
    }

    public mutating func receive(_ message: TransactionMessage, from sender: NodeID, now: Duration) -> [Effect] {
        self.now = now
        switch message {
        case let .lock(id, step, requests): return participantLock(id, step: step, requests, from: sender)
        case let .locked(id, step, values): return coordinatorLocked(id, step: step, values, from: sender)
        case let .refused(id, reason, retryable):
            guard let handle = handles[id], let transaction = coordinated[handle] else { return [] }
            switch transaction.phase {
            case .open, .locking: return abortCoordinated(handle, reason: "\(sender) refused: \(reason)", retryable: retryable)
            case .preparing, .decided: return []
            }
        case let .prepare(id, writes): return participantPrepare(id, writes, from: sender)
        case let .prepared(id, yes): return coordinatorPrepared(id, yes: yes, from: sender)
        case let .decision(id, commit): return participantDecision(id, commit: commit, from: sender)
        case let .decisionApplied(id):
            unacknowledged[id]?.waiting.remove(sender)
            if unacknowledged[id]?.waiting.isEmpty == true { unacknowledged[id] = nil }
            return []
        case let .decisionQuery(id): return answerQuery(id, to: sender)
        case let .release(id): return participantRelease(id)
        }
    }

    // MARK: Coordinator

    private mutating func coordinatorLocked(_ id: TransactionID, step: UInt64, _ values: [TransactionWrite], from sender: NodeID) -> [Effect] {
        guard let handle = handles[id], case .locking(let current, var waiting, var collected)? = coordinated[handle]?.phase,
              current == step else { return [] }
        waiting.remove(sender)
        collected[sender] = values
        guard waiting.isEmpty else {
            coordinated[handle]?.phase = .locking(step: step, waiting: waiting, values: collected)
            return []
        }
        // Every replica holds the same committed state: one system image.
        let views = Set(collected.values.map { Dictionary($0.map { ($0.key, $0.value) }) { $1 } })
        guard views.count == 1, let view = views.first else {
            return abortCoordinated(handle, reason: "replicas disagree on committed values: \(views)")
        }
        coordinated[handle]?.phase = .open
        return [.output(.locked(handle: handle, step: step, values: view))]
    }

    private mutating func coordinatorPrepared(_ id: TransactionID, yes: Bool, from sender: NodeID) -> [Effect] {
        guard let handle = handles[id], case .preparing(var waiting, let writes)? = coordinated[handle]?.phase else { return [] }
        guard yes else { return decide(handle, id, commit: false, reason: "\(sender) voted no") }
        waiting.remove(sender)
        coordinated[handle]?.phase = .preparing(waiting: waiting, writes: writes)
        return waiting.isEmpty ? decide(handle, id, commit: true, reason: "") : []
    }

    /// The decision: a commit is durable before anyone hears it (unless the bug is planted).
    private mutating func decide(_ handle: UInt64, _ id: TransactionID, commit: Bool, reason: String) -> [Effect] {
        coordinated[handle]?.phase = .decided
        var effects: [Effect] = []
        let delayed = configuration.plantedBug == .commitBeforeDecisionDurable && commit
        if commit && !delayed {
            learn(id, commit: commit)
            effects.append(.persist(TransactionDurableState(decisions: [id: commit])))
        }
        unacknowledged[id] = (commit, Set(others), configuration.decisionRetriesMax)
        effects += others.map { .send(to: $0, .decision(id, commit: commit)) }
        effects.append(.setTimer(.retryDecision(id), after: configuration.decisionRetryInterval))
        if delayed {
            // The planted bug: commit is out before the decision is on disk (a slow disk).
            effects.append(.setTimer(.persistDecision(id), after: .milliseconds(20)))
        } else {
            if !commit { learn(id, commit: false) }
            effects += participantDecision(id, commit: commit, from: node)
        }
        effects += finish(handle, committed: commit, release: false, reason: reason)
        return effects
    }

    private mutating func abortCoordinated(_ handle: UInt64, reason: String, retryable: Bool = false) -> [Effect] {
        guard let transaction = coordinated[handle] else { return [] }
        switch transaction.phase {
        case .preparing: return decide(handle, transaction.id, commit: false, reason: reason)
        case .decided: return []
        case .open, .locking:
            return finish(handle, committed: false, release: true, reason: reason, retryAge: retryable ? transaction.id.timestamp : nil)
        }
    }

    private mutating func finish(_ handle: UInt64, committed: Bool, release: Bool, reason: String = "", retryAge: UInt64? = nil) -> [Effect] {
        guard let transaction = coordinated.removeValue(forKey: handle) else { return [] }
        handles[transaction.id] = nil
        var effects: [Effect] = [.cancelTimer(.deadline(handle: handle))]
        if release {
            effects += others.map { .send(to: $0, .release(transaction.id)) }
            effects += participantRelease(transaction.id)
        }
        effects.append(.output(committed ? .committed(handle: handle) : .aborted(handle: handle, reason: reason, retryAge: retryAge)))
        return effects
    }

    private func answerQuery(_ id: TransactionID, to participant: NodeID) -> [Effect] {
        if let decision = decisions[id] { return [.send(to: participant, .decision(id, commit: decision))] }
        // Still undecided here: the decision will come. Unknown: never committed (presumed abort).
        if let handle = handles[id], coordinated[handle] != nil { return [] }
        return [.send(to: participant, .decision(id, commit: false))]
    }

    // MARK: Participant

    private mutating func participantLock(_ id: TransactionID, step: UInt64, _ requests: [LockRequest], from coordinator: NodeID) -> [Effect] {
        guard !abortedHere.contains(id), decisions[id] == nil else {
            return reply(to: coordinator, .refused(id, reason: "already over at \(node)", retryable: false), id: id)
        }
        var participation = participations[id] ?? Participation(coordinator: coordinator, lastActivity: now)
        participation.lastActivity = now
        participation.pending = (step, requests, requests)
        participations[id] = participation
        return continueLocking(id)
    }

    /// Works through the transaction's pending lock requests until one waits or all are held.
    private mutating func continueLocking(_ id: TransactionID) -> [Effect] {
        guard let participation = participations[id], let pending = participation.pending else { return [] }
        var remaining = pending.remaining
        while let request = remaining.first {
            switch locks.acquire(id, request.key, request.mode) {
            case .granted:
                remaining.removeFirst()
            case .waiting:
                participations[id]?.pending = (pending.step, remaining, pending.all)
                return []
            case let .die(conflict):
                var effects = participantAbort(id)
                effects += reply(to: participation.coordinator, .refused(id, reason: "wait-die at \(node): younger than \(conflict)", retryable: true), id: id)
                return effects
            }
        }
        participations[id]?.pending = nil
        let values = pending.all.compactMap { request in committed[request.key].map { TransactionWrite(key: request.key, value: $0) } }
        return reply(to: participation.coordinator, .locked(id, step: pending.step, values), id: id)
    }

    private mutating func participantPrepare(_ id: TransactionID, _ writes: [TransactionWrite], from coordinator: NodeID) -> [Effect] {
        guard var participation = participations[id], participation.pending == nil,
              writes.allSatisfy({ locks.holds(id, $0.key, .exclusive) }) else {
            return reply(to: coordinator, .prepared(id, yes: false), id: id)
        }
        if let prepared = participation.prepared {
            // A duplicate prepare is answered again; other writes under a prepared identifier
            // are not this transaction's, and are refused.
            return reply(to: coordinator, .prepared(id, yes: prepared == writes), id: id)
        }
        participation.prepared = writes
        participation.lastActivity = now
        participations[id] = participation
        preparedHere[id] = writes
        preparedAt[id] = now
        // The vote and its writes are durable before the vote is sent.
        var effects: [Effect] = [.persist(TransactionDurableState(prepared: [id: writes]))]
        if configuration.plantedBug == .releaseLocksBeforeDecision { effects += grantReleased(locks.release(id)) }
        effects += reply(to: coordinator, .prepared(id, yes: true), id: id)
        return effects
    }

    private mutating func participantDecision(_ id: TransactionID, commit: Bool, from coordinator: NodeID) -> [Effect] {
        var effects: [Effect] = []
        if let writes = preparedHere.removeValue(forKey: id) {
            preparedAt[id] = nil
            defer { effects += decideReads() }
            var patch = TransactionDurableState(decisions: [id: commit], resolved: [id])
            if commit {
                for write in writes {
                    committed[write.key] = write.value
                    patch.committed[write.key] = write.value
                }
            }
            learn(id, commit: commit)
            effects.append(.persist(patch))
        } else if decisions[id] == nil, !commit {
            remember(id)
        }
        participations[id] = nil
        effects += grantReleased(locks.release(id))
        if coordinator != node { effects.append(.send(to: coordinator, .decisionApplied(id))) }
        return effects
    }

    private mutating func participantRelease(_ id: TransactionID) -> [Effect] {
        guard participations[id]?.prepared == nil else { return [] }  // prepared: only a decision releases
        return participantAbort(id)
    }

    private mutating func participantAbort(_ id: TransactionID) -> [Effect] {
        participations[id] = nil
        remember(id)
        return grantReleased(locks.release(id))
    }

    private mutating func remember(_ id: TransactionID) {
        abortedHere.append(id)
        if abortedHere.count > 4_096 { abortedHere.removeFirst(abortedHere.count - 4_096) }
    }

    /// Continues the transactions whose waiting requests were just granted.
    private mutating func grantReleased(_ granted: [(transaction: TransactionID, key: String)]) -> [Effect] {
        var effects: [Effect] = []
        var seen: Set<TransactionID> = []
        for (id, _) in granted where seen.insert(id).inserted {
            effects += continueLocking(id)
        }
        return effects
    }

    private mutating func learn(_ id: TransactionID, commit: Bool) {
        if decisions.updateValue(commit, forKey: id) == nil { decisionOrder.append(id) }
    }

    /// Forgets the oldest decisions past `decisionsRememberedMax` that nobody can ask about.
    private mutating func forgetOldDecisions() -> [Effect] {
        guard decisions.count > configuration.decisionsRememberedMax else { return [] }
        var forgotten: [TransactionID] = []
        var kept: [TransactionID] = []
        var excess = decisions.count - configuration.decisionsRememberedMax
        for id in decisionOrder {
            if excess > 0, unacknowledged[id] == nil, preparedHere[id] == nil, handles[id] == nil {
                forgotten.append(id)
                excess -= 1
            } else {
                kept.append(id)
            }
        }
        decisionOrder = kept
        for id in forgotten { decisions[id] = nil }
        return forgotten.isEmpty ? [] : [.persist(TransactionDurableState(forgotten: forgotten))]
    }

    private mutating func participantCheck() -> [Effect] {
        var effects: [Effect] = [.setTimer(.participantCheck, after: configuration.checkInterval)]
        effects += forgetOldDecisions()
        for (id, participation) in participations.sorted(by: { $0.key < $1.key }) {
            if participation.prepared != nil {
                // Blocked until the decision: ask for it (2PC's recovery by asking).
                if participation.coordinator == node {
                    effects += answerQuery(id, to: node).isEmpty ? [] : participantDecision(id, commit: decisions[id] ?? false, from: node)
                } else {
                    effects.append(.send(to: participation.coordinator, .decisionQuery(id)))
                }
            } else if now - participation.lastActivity > configuration.idleAbortTimeout {
                effects += participantAbort(id)
            }
        }
        return effects
    }

    // MARK: Staleness-bounded reads

    /// The time up to which this replica's committed value of `key` (of every key, when nil)
    /// reflects every acknowledged commit. A commit is acknowledged only after every replica
    /// prepared it, so a commit missing here is still prepared here, and was acknowledged after
    /// it prepared: the certificate is the earliest undecided prepare here that writes the key
    /// (or `time` when there is none). None while such a prepare was restored after a restart:
    /// when it was prepared was not kept. (Per key, a coordinator that crashed between prepare
    /// and decision holds back only the keys its transaction writes.)
    public func certificate(at time: Duration, key: String? = nil) -> Duration? {
        var earliest = time
        if configuration.plantedBug == .certifyPastPrepared { return earliest }
        for (id, writes) in preparedHere where key.map({ key in writes.contains { $0.key == key } }) ?? true {
            guard let at = preparedAt[id] else { return nil }
            earliest = min(earliest, at)
        }
        return earliest
    }

    /// The staleness a read of `key` (of every key, when nil) could certify now (nil: none).
    public func certifiedStaleness(now: Duration, key: String? = nil) -> Duration? {
        certificate(at: now, key: key).map { gate.localStaleness(readStart: now, certifiedAt: $0) }
    }

    private mutating func startBoundedRead(_ id: UInt64, _ key: String, _ levels: [ServiceLevel]) -> [Effect] {
        func failure(_ reason: BoundedReadFailure) -> [Effect] { [.output(.boundedReadCompleted(id: id, .failure(reason)))] }
        if let problem = FreshnessGate.validate(levels) { return failure(.invalidRequest(problem)) }
        if levels.contains(where: { $0.requirement == .linearizable }) {
            return failure(.invalidRequest("a replica's committed state gives staleness bounds; read in a transaction to read linearizably"))
        }
        guard boundedReads[id] == nil else { return failure(.invalidRequest("read id \(id) in use")) }
        guard boundedReads.count < configuration.boundedReadsMax else {
            return failure(.unavailable("more than \(configuration.boundedReadsMax) bounded reads pending"))
        }
        boundedReads[id] = (key, levels, now)
        return decideRead(id, atDeadline: false)
    }

    private mutating func decideRead(_ id: UInt64, atDeadline: Bool) -> [Effect] {
        guard let read = boundedReads[id] else { return [] }
        let staleness = certificate(at: now, key: read.key).map { gate.localStaleness(readStart: read.startedAt, certifiedAt: $0) }
        let quality = FreshnessGate.Quality.certified(staleness: staleness)
        switch gate.decide(levels: read.levels, startedAt: read.startedAt, now: now, quality: quality, atDeadline: atDeadline) {
        case let .answer(level):
            boundedReads[id] = nil
            let value = committed[read.key]
            let receipt = ReadReceipt(guarantee: quality.guarantee, staleness: staleness, version: .digest(of: value),
                                      replicas: [node.replica], level: level)
            let answer = TransactionReadAnswer(value: value, receipt: receipt)
            return [.cancelTimer(.boundedDeadline(id)), .output(.boundedReadCompleted(id: id, .success(answer)))]
        case .fail:
            boundedReads[id] = nil
            return [.cancelTimer(.boundedDeadline(id)), .output(.boundedReadCompleted(id: id, .failure(.stalenessBoundUnmet(best: staleness))))]
        case let .wait(until):
            return [.setTimer(.boundedDeadline(id), after: max(.zero, until - now))]
        }
    }

    /// A decision moved the certificate: the waiting reads may be answerable now.
    private mutating func decideReads() -> [Effect] {
        boundedReads.keys.sorted().flatMap { decideRead($0, atDeadline: false) }
    }

    /// A participant's answer to its coordinator: a message, or a direct call when it is this node.
    private mutating func reply(to coordinator: NodeID, _ message: TransactionMessage, id: TransactionID) -> [Effect] {
        guard coordinator == node else { return [.send(to: coordinator, message)] }
        return receive(message, from: node, now: now)
    }
}
