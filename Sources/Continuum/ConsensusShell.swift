import ContinuumCore
import ContinuumProtocols
import Foundation

/// Which incarnation of a node may act on the world (persist, send): the node's own, shared
/// with its consensus shell, which runs on another thread. A node that stops closes it before
/// it returns, so nothing of a stopped incarnation reaches the store or the network after the
/// stop, as after a crash, even while the shell has not heard of the stop yet.
final class IncarnationGate: @unchecked Sendable {
    private let lock = NSLock()
    private var current: UInt64?  // guarded by `lock`

    func open(_ incarnation: UInt64) { lock.withLock { current = incarnation } }
    func close() { lock.withLock { current = nil } }

    /// Whether `incarnation` is the running one.
    func isOpen(_ incarnation: UInt64) -> Bool { lock.withLock { current == incarnation } }

    /// Runs `body` if `incarnation` is the running one, holding the gate (false if not): a stop
    /// waits for it, and a store handed a patch here has it before a restart's load reads the
    /// store.
    func whileOpen(_ incarnation: UInt64, _ body: () -> Void) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        guard current == incarnation else { return false }
        body()
        return true
    }
}

/// The Raft shell of a node: an actor of its own on an executor of its own (by default a
/// Dispatch queue of its own, never the node's executor), so that consensus messages, timers,
/// appends and votes never wait for the node's thread and the client work and deltas queued on
/// it. Its patches go to the same store
/// in batches of their own (group-committed: one batch in flight, the next collecting), and its
/// sends and replies wait only for its own patches. The node starts and stops it with its own
/// incarnations (`IncarnationGate`).
actor ConsensusShell {
    nonisolated let executor: NodeExecutor
    nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }
    private let id: NodeID
    private let members: [NodeID]
    private let configuration: RaftInstance.Configuration
    private let storage: any NodeStorage
    private let transport: any NodeTransport
    private let nodeClock: NodeClock
    private let gate: IncarnationGate

    private var incarnation: UInt64 = 0
    /// The newest incarnation the node stopped: a start of it or an older one that arrives
    /// after its stop (they come from different tasks) starts nothing.
    private var stoppedUpTo: UInt64 = 0
    /// Called when the store fails a batch of this incarnation: the node stops as a crash would.
    private var storageFailed: @Sendable (any Error) -> Void = { _ in }
    private var raft: RaftInstance?
    private var timers = ShellTimers<RaftInstance.Timer>()
    private var nextRequest: UInt64 = 0
    private var waiting: [UInt64: CheckedContinuation<RequestOutcome, Never>] = [:]
    private var boundedWaiting: [UInt64: CheckedContinuation<Result<RaftReadAnswer, ContinuumError>, Never>] = [:]
    // Group commit of Raft's own patches: those not handed to the store yet, the sends and
    // replies that wait for them (in order), whether a batch is being written, and the
    // compaction waiting to be written in the background once every batch started before it
    // is durable. One waits at most: a newer compaction's snapshot covers an older one's, so
    // it replaces the one still waiting (queued, each held a whole snapshot of the state).
    private var unflushed: [RaftDurableState] = []
    private var held: [RaftInstance.Effect] = []
    private var flushing = false
    private var waitingCompaction: (patch: RaftDurableState, after: UInt64)?
    private var compacting = false
    private var batchesStarted: UInt64 = 0
    private var batchesDone: UInt64 = 0
    private(set) var durability = Node.DurabilityStatistics()

    init(id: NodeID, members: [NodeID], configuration: RaftInstance.Configuration, storage: any NodeStorage,
         transport: any NodeTransport, clock: NodeClock, gate: IncarnationGate, executor: NodeExecutor) {
        self.id = id
        self.members = members
        self.configuration = configuration
        self.storage = storage
        self.transport = transport
        self.nodeClock = clock
        self.gate = gate
        self.executor = executor
    }

    private var now: Duration { nodeClock.now }

    /// Starts Raft for the node's `incarnation` from what it persisted, ending whatever ran
    /// under an earlier one.
    func start(incarnation: UInt64, durable: RaftDurableState?, random: DeterministicRandom,
               storageFailed: @escaping @Sendable (any Error) -> Void) {
        guard incarnation > self.incarnation, incarnation > stoppedUpTo else { return }
        end()
        self.incarnation = incarnation
        self.storageFailed = storageFailed
        var consensus = RaftInstance(configuration: configuration,
                                     context: InstanceContext(node: id, members: members, random: random),
                                     durable: durable)
        let effects = consensus.start(now: now)
        raft = consensus
        carryOut(effects)
    }

    /// Ends the run of `incarnation` (a later one is left alone): pending requests end
    /// indeterminate, bounded reads with `nodeStopped`, timers stop. The node has closed the
    /// gate already, so nothing of it went out since.
    func stop(incarnation: UInt64) {
        stoppedUpTo = max(stoppedUpTo, incarnation)
        guard incarnation == self.incarnation else { return }
        end()
    }

    private func end() {
        raft = nil
        timers.cancelAll()
        unflushed.removeAll()
        held.removeAll()
        flushing = false
        waitingCompaction = nil
        compacting = false
        batchesDone = batchesStarted
        for continuation in waiting.values { continuation.resume(returning: .indeterminate) }
        waiting.removeAll()
        for continuation in boundedWaiting.values { continuation.resume(returning: .failure(.nodeStopped)) }
        boundedWaiting.removeAll()
    }

    // MARK: - Requests and status

    func request(_ operation: KeyValueOperation, client: UInt64, sequence: UInt64, latency: Duration) async -> RequestOutcome {
        guard raft != nil else { return .unavailable("the node is stopped") }
        nextRequest += 1
        let id = nextRequest
        return await withCheckedContinuation { continuation in
            waiting[id] = continuation
            step { $0.handle(.request(id: id, client: client, sequence: sequence, operation, latency: latency), now: now) }
        }
    }

    func boundedRead(_ operation: KeyValueOperation, levels: [ServiceLevel], minimumIndex: UInt64) async -> Result<RaftReadAnswer, ContinuumError> {
        guard raft != nil else { return .failure(.nodeStopped) }
        nextRequest += 1
        let id = nextRequest
        return await withCheckedContinuation { continuation in
            boundedWaiting[id] = continuation
            step { $0.handle(.boundedRead(id: id, operation, levels: levels, minimumIndex: minimumIndex), now: now) }
        }
    }

    func deliver(_ message: RaftMessage, from sender: NodeID) {
        step { $0.receive(message, from: sender, now: now) }
    }

    var isLeader: Bool { raft?.role == .leader }
    var leader: NodeID? { raft?.leader }
    var status: (role: String, term: UInt64, commitIndex: UInt64, appliedIndex: UInt64, snapshotIndex: UInt64, keys: Int)? {
        raft.map {
            let machine = $0.stateMachine
            return ("\($0.role)", $0.term, $0.commitIndex, $0.lastApplied, $0.snapshotIndex,
                    machine.values.count + machine.crdts.count + machine.strings.count)
        }
    }
    var refusals: (count: Int, last: String?) { (raft?.messagesRefused ?? 0, raft?.lastRefusal) }
    var certifiedStaleness: Duration? { raft?.certifiedStaleness(now: now) }
    /// Compactions queued or being written.
    var compactionsPending: Int { (waitingCompaction == nil ? 0 : 1) + (compacting ? 1 : 0) }
    /// Whether anything waits to be written, is being written, or waits for a write.
    var pending: Bool { flushing || !unflushed.isEmpty || !held.isEmpty || compacting || waitingCompaction != nil }

    /// Answers at once: what a consensus message waits for this actor (a responsiveness probe).
    func ping() {}

    // MARK: - The shell

    private func step(_ body: (inout RaftInstance) -> [RaftInstance.Effect]) {
        guard var current = raft else { return }
        raft = nil
        let effects = body(&current)
        raft = current
        carryOut(effects)
    }

    private func fire(_ timer: RaftInstance.Timer, generation: UInt64) {
        guard timers.consume(timer, generation: generation) else { return }
        step { $0.timerFired(timer, now: now) }
    }

    /// Whether a store that persists at once (memory) took `patches`, while this incarnation runs.
    private func persistsImmediately(_ patches: [DurablePatch]) -> Bool {
        var taken = false
        let storage = self.storage
        _ = gate.whileOpen(incarnation) { taken = storage.persistImmediately(patches) }
        return taken
    }

    private var mustHold: Bool { flushing || !unflushed.isEmpty || !held.isEmpty }

    private func carryOut(_ effects: [RaftInstance.Effect]) {
        for effect in effects {
            switch effect {
            case let .persist(patch) where patch.compaction:
                compact(patch)
            case let .persist(patch):
                if !mustHold, persistsImmediately([.raft(patch)]) {
                    durability.immediate += 1
                } else {
                    unflushed.append(patch)
                }
            case .send, .output:
                if mustHold { held.append(effect) } else { perform(effect) }
            case .setTimer, .cancelTimer:
                perform(effect)
            }
        }
        flushIfNeeded()
    }

    private func perform(_ effect: RaftInstance.Effect) {
        switch effect {
        case let .send(to, message):
            let bytes = NodeMessage.raft(message).binaryEncoded()
            let transport = self.transport, id = self.id
            _ = gate.whileOpen(incarnation) { transport.send(bytes, from: id, to: to, lane: .consensus) }
        case .persist:
            preconditionFailure("patches are flushed, not performed")
        case let .setTimer(timer, after):
            timers.set(timer, after: after, priority: .high) { [weak self] timer, generation in
                await self?.fire(timer, generation: generation)
            }
        case let .cancelTimer(timer):
            timers.cancel(timer)
        case let .output(.reply(requestID, outcome)):
            waiting.removeValue(forKey: requestID)?.resume(returning: outcome)
        case .output(.becameLeader):
            break
        case let .output(.boundedReadCompleted(requestID, result)):
            boundedWaiting.removeValue(forKey: requestID)?.resume(returning: result.mapError(Node.translate))
        }
    }

    /// Hands the waiting patches to the store in one batch, then performs what waited for them.
    private func flushIfNeeded() {
        guard !flushing, !unflushed.isEmpty || !held.isEmpty else { return }
        let patches = unflushed.map(DurablePatch.raft)
        let effects = held
        unflushed = []
        held = []
        // A stopped incarnation writes nothing and performs nothing; its stop ends the rest.
        guard gate.isOpen(incarnation) else { return }
        if patches.isEmpty || persistsImmediately(patches) {
            durability.immediate += patches.count
            if !patches.isEmpty {
                batchesStarted += 1
                batchesDone += 1
            }
            for effect in effects { perform(effect) }
            startCompaction()
            return
        }
        let incarnation = self.incarnation
        let executor = self.executor
        let storage = self.storage
        let completion: @Sendable ((any Error)?) -> Void = { [weak self] error in
            guard let shell = self else { return }
            executor.run { shell.assumeIsolated { $0.flushed(effects, error: error, incarnation: incarnation) } }
        }
        guard gate.whileOpen(incarnation, { storage.persist(patches, then: completion) }) else { return }
        durability.flushes += 1
        durability.patches += patches.count
        flushing = true
        batchesStarted += 1
    }

    private func flushed(_ effects: [RaftInstance.Effect], error: (any Error)?, incarnation: UInt64) {
        guard incarnation == self.incarnation, raft != nil else { return }
        if let error {
            // Nothing that depends on these patches may go out: the node stops as a crash would.
            end()
            storageFailed(error)
            return
        }
        flushing = false
        batchesDone += 1
        for effect in effects { perform(effect) }
        flushIfNeeded()
        startCompaction()
    }

    /// A patch nothing waits for (a compaction): written in the background once every batch
    /// started before it is durable, in place of one still waiting (whose snapshot it covers).
    private func compact(_ patch: RaftDurableState) {
        if !mustHold, persistsImmediately([.raft(patch)]) {
            durability.immediate += 1
            return
        }
        waitingCompaction = (patch, batchesStarted + (unflushed.isEmpty ? 0 : 1))
        startCompaction()
    }

    private func startCompaction() {
        guard !compacting, let next = waitingCompaction, next.after <= batchesDone else { return }
        waitingCompaction = nil
        compacting = true
        let storage = self.storage
        let incarnation = self.incarnation
        let gate = self.gate
        Task { [weak self] in
            guard gate.isOpen(incarnation) else { return }
            do {
                try await storage.persistInBackground(.raft(next.patch))
                await self?.compacted(incarnation: incarnation)
            } catch {
                await self?.compactionFailed(error, incarnation: incarnation)
            }
        }
    }

    private func compacted(incarnation: UInt64) {
        guard incarnation == self.incarnation else { return }
        compacting = false
        startCompaction()
    }

    private func compactionFailed(_ error: any Error, incarnation: UInt64) {
        guard incarnation == self.incarnation, raft != nil else { return }
        end()
        storageFailed(error)
    }
}
