import ContinuumCore
import ContinuumProtocols

/// One Continuum node: the shell that runs the pure protocol instances with real time, a
/// network and a store, and serves the register API. Its registers are replicas of the
/// cluster's registers.
///
/// The node never blocks an `available` update on the network: `update` returns once the new
/// state is applied and persisted locally.
public actor Node {
    public nonisolated let id: NodeID
    /// The declared policies, typed and current with the catalogue register (see
    /// `PolicyCatalogue`): readable from any thread, without the actor.
    public nonisolated let policies = PolicyCatalogue()
    /// How long calls into this actor wait, as sampled by the process that runs it.
    public nonisolated let responsiveness = ResponsivenessProbe()
    /// The same, for a call into the consensus shell (what a consensus message waits for).
    public nonisolated let consensusResponsiveness = ResponsivenessProbe()
    /// Where the actor's jobs run (see `init`).
    public nonisolated let executor: NodeExecutor
    /// Raft's shell, on an executor of its own (see `ConsensusShell`).
    nonisolated let consensus: ConsensusShell
    /// Which incarnation may persist and send; Raft's shell checks it on another thread.
    private let gate: IncarnationGate
    public nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }
    private let members: [NodeID]
    private let configuration: ReplicationInstance.Configuration
    private let storage: any NodeStorage
    private let transport: any NodeTransport
    private let clock = ContinuousClock()
    private let nodeClock: NodeClock
    private let transactionConfiguration: TransactionInstance.Configuration
    // Group commit: patches not yet handed to storage, the sends and outputs that wait for
    // them (in order), and whether a flush is running. `incarnation` tells a flush that
    // finishes after a stop to drop what it held.
    private var unflushed: [DurablePatch] = []
    private var held: [HeldEffect] = []
    private var flushing = false
    /// Each mechanism's effects wait only for its own patches: how many of its patches are
    /// unflushed, how many of its effects are held, and whether the running flush holds any of
    /// its patches. So a 2PC message never waits behind a flush of CRDT writes (Raft has its own
    /// shell and batches).
    private var unflushedCount: [Mechanism: Int] = [:]
    private var heldCount: [Mechanism: Int] = [:]
    private var flushingMechanisms: Set<Mechanism> = []
    private var incarnation: UInt64 = 0
    private var random: DeterministicRandom
    private var instance: ReplicationInstance?
    private var timers = ShellTimers<ReplicationInstance.Timer>()
    private var nextCommandID: UInt64 = 0
    /// Commands waiting for their completion (after their patches are durable): a task's
    /// continuation, or a caller's completion (`upsertNow`).
    private var waiting: [UInt64: @Sendable (Result<AnyReplicated?, ContinuumError>) -> Void] = [:]
    private var reads: [UInt64: CheckedContinuation<Result<AnyReplicated, ContinuumError>, Never>] = [:]
    private var boundedWaiting: [UInt64: CheckedContinuation<Result<BoundedReadAnswer, ContinuumError>, Never>] = [:]
    private var subscribers: [String: [UInt64: @Sendable (AnyReplicated?) -> Void]] = [:]
    private var derivedDefinitions: [DerivedDefinition] = []
    private var nextClient: UInt64 = 0
    // The Austere instance behind serializable registers.
    private var austere: TransactionInstance?
    private var austereTimers = ShellTimers<TransactionInstance.Timer>()
    /// Waiting transaction steps; resumed with nil when the node stops (outcome unknown).
    private var austereWaiting: [UInt64: CheckedContinuation<TransactionInstance.Output?, Never>] = [:]
    private var serializableBoundedWaiting: [UInt64: CheckedContinuation<Result<TransactionReadAnswer, ContinuumError>, Never>] = [:]
    /// Attempts that died under wait-die, with the age to retry them with.
    private var deaths: [UInt64: UInt64] = [:]

    /// A node of the cluster `members`, keeping its state in `storage` and talking through
    /// `transport` (which hands inbound messages to `deliver(_:from:)`). `clock` must share its
    /// epoch with the other nodes' clocks: freshness certificates compare their times. The
    /// actor runs on `executor` (nil: a Dispatch queue of its own); a server passes the event
    /// loop of its client connections. Raft runs on `consensusExecutor` (nil: a Dispatch queue
    /// of its own), never on the node's executor. Call `start()` to run it.
    public init(id: NodeID, members: [NodeID], configuration: ReplicationInstance.Configuration,
                raftConfiguration: RaftInstance.Configuration, transactionConfiguration: TransactionInstance.Configuration? = nil,
                storage: any NodeStorage, transport: any NodeTransport, seed: UInt64, clock: NodeClock,
                executor: NodeExecutor? = nil, consensusExecutor: NodeExecutor? = nil) {
        let nodeExecutor = executor ?? NodeExecutor(label: "continuum.node.\(id)")
        self.executor = nodeExecutor
        let gate = IncarnationGate()
        self.gate = gate
        self.consensus = ConsensusShell(
            id: id, members: members, configuration: raftConfiguration, storage: storage, transport: transport, clock: clock,
            gate: gate, executor: consensusExecutor ?? NodeExecutor(label: "continuum.consensus.\(id)"))
        self.id = id
        self.members = members
        self.configuration = configuration
        self.transactionConfiguration = transactionConfiguration ?? .init(freshness: configuration.freshness)
        self.storage = storage
        self.transport = transport
        self.random = DeterministicRandom(seed: seed)
        self.nodeClock = clock
    }

    /// Whether the node is running.
    public var isRunning: Bool { instance != nil }

    /// Starts (or restarts) the node from what it persisted. Fails when the storage cannot be
    /// read (the node stays stopped).
    public func start() async throws {
        guard instance == nil else { return }
        let durable = try storage.load()
        incarnation += 1
        gate.open(incarnation)
        var fresh = ReplicationInstance(
            configuration: configuration,
            context: InstanceContext(node: id, members: members, random: random.split()),
            durable: durable.replication)
        let effects = fresh.start(now: now)
        policies.load(fresh.value(of: PolicyCatalogue.register))
        instance = fresh
        carryOut(effects)
        for definition in derivedDefinitions { _ = submit { .defineDerived(id: $0, definition) } }
        let consensusRandom = random.split()
        var transactions = TransactionInstance(
            configuration: transactionConfiguration, context: InstanceContext(node: id, members: members, random: random.split()),
            durable: durable.transactions)
        let transactionEffects = transactions.start(now: now)
        austere = transactions
        carryOutAustere(transactionEffects)
        let incarnation = self.incarnation
        await consensus.start(incarnation: incarnation, durable: durable.raft, random: consensusRandom) { [weak self] error in
            Task { await self?.storageFailed(error, incarnation: incarnation) }
        }
    }

    /// Stops the node as a crash would: volatile state is lost, pending operations fail with
    /// `nodeStopped`, change streams end. What was persisted stays; patches not yet flushed
    /// are lost with whatever waited for them (none of it was sent or acknowledged).
    public func stop() async {
        guard let ended = stopHere() else { return }
        await consensus.stop(incarnation: ended)
    }

    /// Stops the node's own instances and closes the gate, so that Raft's shell (told after)
    /// persists and sends nothing more; the incarnation that ended, nil if none ran.
    private func stopHere() -> UInt64? {
        guard instance != nil else { return nil }
        gate.close()
        let ended = incarnation
        instance = nil
        unflushed.removeAll()
        held.removeAll()
        flushing = false
        unflushedCount.removeAll()
        heldCount.removeAll()
        flushingMechanisms.removeAll()
        incarnation += 1
        timers.cancelAll()
        for complete in waiting.values { complete(.failure(.nodeStopped)) }
        waiting.removeAll()
        for continuation in reads.values { continuation.resume(returning: .failure(.nodeStopped)) }
        reads.removeAll()
        for continuation in boundedWaiting.values { continuation.resume(returning: .failure(.nodeStopped)) }
        boundedWaiting.removeAll()
        for streams in subscribers.values { for yield in streams.values { yield(nil) } }
        subscribers.removeAll()
        austere = nil
        austereTimers.cancelAll()
        for continuation in austereWaiting.values { continuation.resume(returning: nil) }
        austereWaiting.removeAll()
        for continuation in serializableBoundedWaiting.values { continuation.resume(returning: .failure(.nodeStopped)) }
        serializableBoundedWaiting.removeAll()
        return ended
    }

    private var now: Duration { nodeClock.now }

    // MARK: - Registers

    /// Declares the register `name` holding `type` under `policy`, creating it cluster-wide if
    /// it does not exist, and returns a handle to it on this node. A CRDT register is
    /// `available` or `bounded(staleness:latency:)`; under `bounded`, the handle's `read()`
    /// answers under that bound (the CRDT underneath is the same, and `read(_:)` overrides).
    ///
    /// A `PNCounter`, `ORSet<String>`, `EWFlag` or `MaxRegister<UInt64>` may also be declared
    /// `linearizable`: it then lives in the Raft log, which applies its operations in log order
    /// (`Register.apply(_:)`), and reads go through the log. Declaring it reads the log, so it
    /// needs a leader, and a register the log holds as another kind is refused.
    public func declare<Value: Replicable>(_ name: String, as type: Value.Type, policy: Policy = .available) async throws(ContinuumError) -> Register<Value> {
        switch policy {
        case .available, .bounded: break
        case .linearizable:
            guard let kind = RegisterKind(type: Value.self) else { throw .wrongPolicy(register: name, declared: policy) }
            guard (1...ReplicationInstance.registerNameBytesMax).contains(name.utf8.count) else { throw .invalidName(name) }
            var caller = RouterCaller()
            _ = try await ConsensusBackend(router: Router(node: self, defaultPolicy: .linearizable)).run(.declare(key: name, kind: kind), as: &caller)
            return Register(name: name, node: self, policy: policy)
        case .serializable: throw .wrongPolicy(register: name, declared: policy)
        }
        if let problem = FreshnessGate.validate(policy.serviceLevels) { throw .invalidRequest(problem) }
        _ = try await perform { .declare(id: $0, register: name, bottom: AnyReplicated(Value.bottom)) }.get()
        return Register(name: name, node: self, policy: policy)
    }

    /// A handle to the linearizable register `name`: an integer (or absent) kept by Raft.
    /// `policy` is what its `read(latency:)` gives: `linearizable` (the default),
    /// `bounded(staleness:latency:)` or `available`.
    public func declareLinearizable(_ name: String, policy: Policy = .linearizable) throws(ContinuumError) -> LinearizableRegister {
        guard (1...ReplicationInstance.registerNameBytesMax).contains(name.utf8.count) else { throw .invalidName(name) }
        if policy == .serializable { throw .wrongPolicy(register: name, declared: policy) }
        return LinearizableRegister(name: name, node: self, client: newClient(), policy: policy)
    }

    /// A new client session starting at this node; it may then use any node (see `Session`).
    public func openSession() -> Session { Session(client: newClient()) }

    /// A client number unique in the cluster and across restarts: this node's id (20 bits), its
    /// incarnation (20 bits, durable before any message of it leaves), then a count (24 bits).
    /// Each client numbers its linearizable requests from 1 (see
    /// `linearizable(_:client:sequence:latency:)`); reusing a number after a restart would make
    /// the state machine take new requests for retries of old ones.
    public func newClient() -> UInt64 {
        nextClient += 1
        let incarnation = instance?.epoch ?? 0
        return (id.rawValue & 0xF_FFFF) << 44 | (incarnation & 0xF_FFFF) << 24 | (nextClient & 0xFF_FFFF)
    }

    /// A handle to a register (or derived register) without declaring it; `policy` is what
    /// its `read()` gives (`available` or `bounded`).
    public nonisolated func register<Value: Replicable>(_ name: String, as type: Value.Type, policy: Policy = .available) -> Register<Value> {
        Register(name: name, node: self, policy: policy)
    }

    /// Defines a derived register on this node (see `Register.map` and the other combinators).
    /// Kept across restarts of the node.
    func define(_ definition: DerivedDefinition) async throws(ContinuumError) {
        derivedDefinitions.removeAll { $0.name == definition.name }
        derivedDefinitions.append(definition)
        _ = try await perform { .defineDerived(id: $0, definition) }.get()
    }

    func update<Value: Replicable>(_ name: String, _ mutate: @escaping @Sendable (inout Value, ReplicaID) throws -> Value) async throws(ContinuumError) -> Value {
        let result = await perform { id in
            .update(id: id, register: name, typeName: replicableTypeName(Value.self)) { state, replica, _ in
                var typed = state.unwrap(as: Value.self)!
                let delta = try mutate(&typed, replica)
                state = AnyReplicated(typed)
                return AnyReplicated(delta)
            }
        }
        return try result.get()!.unwrap(as: Value.self)!
    }

    /// Applies `mutate` to the CRDT register `name`, declaring it as `Value` first when it does
    /// not exist (or was deleted), in one step, and returns what `mutate` returns besides the
    /// delta. The state is mutated in place: an update costs what it changes, at any size of
    /// the state. `mutate` must throw before it changes anything (the built-in mutators do);
    /// what it changed before throwing is kept.
    public func upsert<Value: Replicable, Result: Sendable>(
        _ name: String, as _: Value.Type, _ mutate: @escaping @Sendable (inout Value, ReplicaID) throws -> (delta: Value, result: Result)
    ) async throws(ContinuumError) -> Result {
        try await withCheckedContinuation { continuation in
            upsertNow(name, as: Value.self, mutate) { continuation.resume(returning: $0) }
        }.get()
    }

    /// `upsert` without a task: applies `mutate` now and calls `then` once the change is
    /// durable (or has failed), on this node's executor, possibly before returning. For a
    /// caller already on the node's executor (`isCurrentExecutor`), such as a server's
    /// connection handler, which saves the task switches of an `await` per command.
    public func upsertNow<Value: Replicable, Result: Sendable>(
        _ name: String, as _: Value.Type, _ mutate: @escaping @Sendable (inout Value, ReplicaID) throws -> (delta: Value, result: Result),
        then: @escaping @Sendable (Swift.Result<Result, ContinuumError>) -> Void
    ) {
        guard instance != nil else { return then(.failure(.nodeStopped)) }
        nextCommandID += 1
        let id = nextCommandID
        let box = ResultBox<Result>()
        waiting[id] = { outcome in then(outcome.map { _ in box.value! }) }
        handle(.upsert(id: id, register: name, bottom: AnyReplicated(Value.bottom)) { state, replica, _ in
            guard let delta = try state.mutate(as: Value.self, { typed in
                let (delta, result) = try mutate(&typed, replica)
                box.value = result
                return delta
            }) else { throw ContinuumError.typeMismatch(register: name, declared: state.typeName, requested: replicableTypeName(Value.self)) }
            return AnyReplicated(delta)
        })
    }

    /// Whether the caller runs on this node's executor now, outside any of its jobs (an event
    /// loop's handler, when the node runs on that loop), so that it may `assumeIsolated`.
    public nonisolated var isCurrentExecutor: Bool { executor.isCurrent }

    /// Looks at this node's state of register `name` as `Value` without copying it, and
    /// returns what `body` computes from it (for example a set's size or one membership).
    public func inspect<Value: Replicable, Result: Sendable>(_ name: String, as _: Value.Type, _ body: (Value) -> Result) throws(ContinuumError) -> Result {
        guard let instance else { throw .nodeStopped }
        guard let value = instance.value(of: name) else {
            throw instance.slots[RegisterKey(name)]?.isDeleted == true ? .deleted(register: name) : .notDeclared(register: name)
        }
        guard let typed = value.unwrap(as: Value.self) else {
            throw .typeMismatch(register: name, declared: value.typeName, requested: replicableTypeName(Value.self))
        }
        return body(typed)
    }

    func delete(_ name: String) async throws(ContinuumError) {
        _ = try await perform { .delete(id: $0, register: name) }.get()
    }

    func read<Value: Replicable>(_ name: String, as _: Value.Type) throws(ContinuumError) -> Value {
        guard let instance else { throw .nodeStopped }
        guard let value = instance.value(of: name) else {
            throw instance.slots[RegisterKey(name)]?.isDeleted == true ? .deleted(register: name) : .notDeclared(register: name)
        }
        guard let typed = value.unwrap(as: Value.self) else {
            throw .typeMismatch(register: name, declared: value.typeName, requested: replicableTypeName(Value.self))
        }
        return typed
    }

    func read<Value: Replicable>(_ name: String, atLeast threshold: Value, timeout: Duration?) async throws(ContinuumError) -> Value {
        guard instance != nil else { throw .nodeStopped }
        nextCommandID += 1
        let id = nextCommandID
        let result = await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Result<AnyReplicated, ContinuumError>, Never>) in
                reads[id] = continuation
                handle(.thresholdRead(id: id, register: name, threshold: AnyReplicated(threshold)))
                if let timeout, reads[id] != nil {
                    Task { [weak self] in
                        try? await Task.sleep(for: timeout)
                        await self?.abandonRead(id, with: .timedOut(after: timeout))
                    }
                }
            }
        } onCancel: {
            Task { [weak self] in await self?.abandonRead(id, with: .cancelled) }
        }
        let value = try result.get()
        guard let typed = value.unwrap(as: Value.self) else {
            throw .typeMismatch(register: name, declared: value.typeName, requested: replicableTypeName(Value.self))
        }
        return typed
    }

    private func abandonRead(_ id: UInt64, with error: ContinuumError) {
        guard let continuation = reads.removeValue(forKey: id) else { return }
        handle(.cancelRead(id: id))
        continuation.resume(returning: .failure(error))
    }

    /// A bounded read of an available register (or derived register) at this node.
    func boundedRead(_ name: String, levels: [ServiceLevel]) async -> Result<BoundedReadAnswer, ContinuumError> {
        guard instance != nil else { return .failure(.nodeStopped) }
        nextCommandID += 1
        let id = nextCommandID
        return await withCheckedContinuation { continuation in
            boundedWaiting[id] = continuation
            handle(.boundedRead(id: id, register: name, levels: levels))
        }
    }

    /// Joins a state a session carries into the register here (read-your-writes and monotonic
    /// reads for a client that moved to this node).
    func absorb(_ name: String, _ state: AnyReplicated) async throws(ContinuumError) {
        _ = try await perform { .absorb(id: $0, register: name, state: state) }.get()
    }

    /// A bounded read of consensus state at this node.
    public nonisolated func raftBoundedRead(_ operation: KeyValueOperation, levels: [ServiceLevel], minimumIndex: UInt64) async -> Result<RaftReadAnswer, ContinuumError> {
        await consensus.boundedRead(operation, levels: levels, minimumIndex: minimumIndex)
    }

    /// The staleness this node can certify now for its available registers and for its
    /// consensus state (nil: none).
    public var certifiedStaleness: (available: Duration?, consensus: Duration?) {
        get async {
            let available = instance?.certifiedStaleness(now: now)
            return (available, await consensus.certifiedStaleness)
        }
    }

    /// The staleness this node can certify now for its available registers, member by member.
    public var certifiedStalenessByMember: [(member: NodeID, staleness: Duration?)] {
        instance?.certifiedStalenessByMember(now: now) ?? []
    }

    /// The staleness this replica can certify now for a serializable register's committed value
    /// (for every key when nil; nil: none, or no transactions configured).
    public func certifiedStaleness(serializable key: String?) -> Duration? {
        austere?.certifiedStaleness(now: now, key: key)
    }

    /// How storage batched this node's writes: `patches` durable in `flushes` calls to the store.
    public struct DurabilityStatistics: Sendable, Equatable {
        public var flushes = 0
        public var patches = 0
        /// Patches the store took at once (a memory store).
        public var immediate = 0
    }

    /// How storage batched this node's writes, Raft's included.
    public var durability: DurabilityStatistics {
        get async {
            let here = durabilityHere
            let raft = await consensus.durability
            return .init(flushes: here.flushes + raft.flushes, patches: here.patches + raft.patches,
                         immediate: here.immediate + raft.immediate)
        }
    }

    /// The same, for the patches of the node's own instances.
    private var durabilityHere = DurabilityStatistics()

    /// What the available mechanism sent and received: deltas, whole states, reachability
    /// changes (nil when stopped).
    public var replicationStatistics: ReplicationStatistics? { instance?.statistics }

    func subscribe(_ name: String, _ yield: @escaping @Sendable (AnyReplicated?) -> Void) -> UInt64? {
        guard let instance else { return nil }
        nextCommandID += 1
        subscribers[name, default: [:]][nextCommandID] = yield
        if let current = instance.value(of: name) { yield(current) }
        return nextCommandID
    }

    func unsubscribe(_ name: String, _ token: UInt64) { subscribers[name]?[token] = nil }

    // MARK: - The shell

    /// A message from the network, as `NodeMessage` bytes (decoded on the caller's thread). One
    /// that does not decode changes nothing.
    public nonisolated func deliver(_ bytes: [UInt8], from sender: NodeID) async {
        guard let message = try? NodeMessage(binary: bytes) else { return }
        await deliver(message, from: sender)
    }

    /// Whether `message` goes ahead of client work and deltas waiting for the node (a shell
    /// delivers it from a task of priority `.high`): the failure detector, and consensus (which
    /// goes to Raft's shell, where it is ahead of Raft's client requests). A
    /// SWIM probe that waited behind seconds of deltas made a busy replica look dead, and its
    /// neighbours then dropped the deltas it had not acknowledged and sent it whole states,
    /// which kept it busier still.
    public nonisolated static func isUrgent(_ message: NodeMessage) -> Bool {
        switch message {
        case .raft, .replication(.membership): true
        case .replication, .transaction: false
        }
    }

    /// A decoded message from the network. A Raft message goes to Raft's shell straight, not
    /// through the node's actor.
    public nonisolated func deliver(_ message: NodeMessage, from sender: NodeID) async {
        if case let .raft(inner) = message {
            await consensus.deliver(inner, from: sender)
        } else {
            await deliverHere(message, from: sender)
        }
    }

    private func deliverHere(_ message: NodeMessage, from sender: NodeID) {
        switch message {
        case let .replication(inner):
            guard instance != nil else { return }
            let now = self.now
            let effects = instance!.receive(inner, from: sender, now: now)
            carryOut(effects)
        case .raft:
            preconditionFailure("Raft's messages go to its shell")
        case let .transaction(inner):
            guard var current = austere else { return }
            austere = nil
            let effects = current.receive(inner, from: sender, now: now)
            austere = current
            carryOutAustere(effects)
        }
    }

    /// Runs a serializable transaction coordinated by this node: `body` reads and writes
    /// serializable registers through the `Transaction`, taking locks at every replica as it
    /// goes; when it returns, the writes commit atomically at every replica by two-phase commit.
    /// Fails with `unavailable` (no effect anywhere) when a replica cannot be reached or a lock
    /// cannot be had within `latency`, or when `body` throws (its error is rethrown).
    public func transaction<Result: Sendable>(
        latency: Duration = .seconds(1), _ body: (Transaction) async throws -> Result
    ) async throws -> Result {
        // An attempt that dies under wait-die is run again with its first attempt's age (so it
        // only grows older and cannot starve), within the same latency bound.
        let deadline = clock.now + latency
        var age: UInt64?
        while true {
            guard austere != nil else { throw ContinuumError.nodeStopped }
            nextCommandID += 1
            let handle = nextCommandID
            do {
                return try await attempt(handle, latency: deadline - clock.now, age: age, body)
            } catch {
                guard let retryAge = deaths.removeValue(forKey: handle), clock.now < deadline else { throw error }
                age = retryAge
            }
        }
    }

    private func attempt<Result: Sendable>(
        _ handle: UInt64, latency: Duration, age: UInt64?, _ body: (Transaction) async throws -> Result
    ) async throws -> Result {
        handleAustere(.begin(handle: handle, latency: latency, age: age))
        let transaction = Transaction(node: self, handle: handle)
        let result: Result
        do {
            result = try await body(transaction)
        } catch {
            handleAustere(.abort(handle: handle))
            throw error
        }
        let writes = await transaction.bufferedWrites()
        switch await austereStep(handle, .commit(handle: handle, writes)) {
        case .committed?: return result
        case let .aborted(_, reason, _)?: throw ContinuumError.unavailable(reason)
        case .locked?, .boundedReadCompleted?: throw ContinuumError.unavailable("unexpected answer to commit")
        // The coordinator stopped during two-phase commit: the decision is not known here.
        case nil: throw ContinuumError.indeterminate
        }
    }

    /// A serializable register's value, read in a one-operation transaction.
    public func read(serializable key: String, latency: Duration = .seconds(1)) async throws -> TransactionValue? {
        try await transaction(latency: latency) { try await $0.read(key) }
    }

    /// A serializable register's value under `policy`, with what was delivered.
    /// `.serializable` (or `.linearizable`) reads in a one-operation transaction, locking at
    /// every replica; `.bounded(staleness: S, latency: L)` reads this replica's committed state
    /// without locks when it can certify it no older than S (it waits, up to L, for prepared
    /// transactions here to be decided), and otherwise fails with `stalenessBoundUnmet`;
    /// `.available` reads the committed state at once.
    public func read(serializable key: String, _ policy: Policy) async throws -> ReadResult<TransactionValue?> {
        switch policy {
        case .serializable, .linearizable:
            let value = try await read(serializable: key, latency: policy.serviceLevels[0].latency)
            let receipt = ReadReceipt(guarantee: .linearizable, staleness: .zero, version: .digest(of: value),
                                      replicas: members.map(\.replica), level: 0)
            return ReadResult(value: value, receipt: receipt)
        case .available, .bounded:
            let answer = try await boundedRead(serializable: key, levels: policy.serviceLevels).get()
            return ReadResult(value: answer.value, receipt: answer.receipt)
        }
    }

    /// A staleness-bounded read of a serializable register's committed state at this replica.
    func boundedRead(serializable key: String, levels: [ServiceLevel]) async -> Result<TransactionReadAnswer, ContinuumError> {
        guard austere != nil else { return .failure(.nodeStopped) }
        nextCommandID += 1
        let id = nextCommandID
        return await withCheckedContinuation { continuation in
            serializableBoundedWaiting[id] = continuation
            handleAustere(.boundedRead(id: id, key: key, levels: levels))
        }
    }

    /// Writes a serializable register in a one-operation transaction.
    public func write(serializable key: String, _ value: TransactionValue, latency: Duration = .seconds(1)) async throws {
        try await transaction(latency: latency) { try await $0.write(key, value) }
    }

    /// Locks keys for a transaction at every replica and returns their committed values.
    func lockForTransaction(_ handle: UInt64, step: UInt64, _ requests: [LockRequest]) async throws(ContinuumError) -> [String: TransactionValue] {
        switch await austereStep(handle, .lock(handle: handle, step: step, requests)) {
        case let .locked(_, _, values)?: return values
        case let .aborted(_, reason, retryAge)?:
            if let retryAge { deaths[handle] = retryAge }
            throw .unavailable(reason)
        case .committed?, .boundedReadCompleted?: throw .unavailable("unexpected answer to a lock")
        case nil: throw .nodeStopped
        }
    }

    private func austereStep(_ handle: UInt64, _ command: TransactionInstance.Command) async -> TransactionInstance.Output? {
        await withCheckedContinuation { continuation in
            austereWaiting[handle] = continuation
            handleAustere(command)
        }
    }

    private func handleAustere(_ command: TransactionInstance.Command) {
        guard var current = austere else {
            if case let .begin(handle, _, _) = command { austereWaiting.removeValue(forKey: handle)?.resume(returning: nil) }
            return
        }
        austere = nil
        let effects = current.handle(command, now: now)
        austere = current
        carryOutAustere(effects)
    }

    private func fireAustere(_ timer: TransactionInstance.Timer, generation: UInt64) {
        guard austereTimers.consume(timer, generation: generation), var current = austere else { return }
        austere = nil
        let effects = current.timerFired(timer, now: now)
        austere = current
        carryOutAustere(effects)
    }

    private func carryOutAustere(_ effects: [TransactionInstance.Effect]) {
        if case (.beforeDecision, let crash)? = armedCrash, effects.contains(where: Self.isCommitDecision) {
            armedCrash = nil
            crash()
        }
        for effect in effects {
            switch effect {
            case let .persist(patch):
                persist(.transactions(patch))
            case .send, .output:
                if mustHold(.austere) { hold(.austere(effect)) } else { performAustere(effect) }
            case .setTimer, .cancelTimer:
                performAustere(effect)
            }
        }
        flushIfNeeded()
    }

    private func performAustere(_ effect: TransactionInstance.Effect) {
        if case (.afterDecision, let crash)? = armedCrash, Self.isCommitDecision(effect) {
            armedCrash = nil
            crash()
        }
        switch effect {
        case let .send(to, message):
            transport.send(NodeMessage.transaction(message).binaryEncoded(), from: id, to: to, lane: .transactions)
        case .persist:
            preconditionFailure("patches are flushed, not performed")
        case let .setTimer(timer, after):
            austereTimers.set(timer, after: after) { [weak self] timer, generation in await self?.fireAustere(timer, generation: generation) }
        case let .cancelTimer(timer):
            austereTimers.cancel(timer)
        case let .output(.boundedReadCompleted(id, result)):
            serializableBoundedWaiting.removeValue(forKey: id)?.resume(returning: result.mapError(Self.translate))
        case let .output(output):
            let handle: UInt64 = switch output {
            case let .locked(handle, _, _), let .committed(handle), let .aborted(handle, _, _), let .boundedReadCompleted(handle, _): handle
            }
            austereWaiting.removeValue(forKey: handle)?.resume(returning: output)
        }
    }

    // MARK: - Fault injection

    /// Where a node dies in tests of real processes (as kill -9 would), aimed at the moments
    /// two-phase commit must survive.
    public enum CrashPoint: String, Sendable, CaseIterable {
        /// A coordinator holding every participant's yes vote dies before its commit decision
        /// is durable or sent: the participants keep their prepared transaction until the
        /// restarted coordinator answers their query (presumed abort: it aborts).
        case beforeDecision = "before-decision"
        /// A coordinator dies once its commit decision is durable, before any participant
        /// hears it: after the restart the commit reaches every participant.
        case afterDecision = "after-decision"
    }

    private var armedCrash: (CrashPoint, @Sendable () -> Void)?

    /// Arms (or, with nil, disarms) one crash: `crash` runs when this node reaches `point` as
    /// a transaction's coordinator, and must end the process.
    public func armCrash(_ point: CrashPoint?, crash: @escaping @Sendable () -> Void) {
        armedCrash = point.map { ($0, crash) }
    }

    private static func isCommitDecision(_ effect: TransactionInstance.Effect) -> Bool {
        if case .send(_, .decision(_, commit: true)) = effect { return true }
        return false
    }

    // MARK: - Group commit

    /// The protocol instance a patch or an effect belongs to.
    private enum Mechanism: Hashable {
        case replication, austere

        init(_ patch: DurablePatch) {
            switch patch {
            case .replication: self = .replication
            case .raft: preconditionFailure("Raft's patches go through its shell")
            case .transactions: self = .austere
            }
        }
    }

    /// A send or output waiting for the flush of the patches its instance produced before it.
    private enum HeldEffect {
        case replication(ReplicationInstance.Effect)
        case austere(TransactionInstance.Effect)

        var mechanism: Mechanism {
            switch self {
            case .replication: .replication
            case .austere: .austere
            }
        }
    }

    /// Whether a send or output of `mechanism` must wait: patches of its instance before it are
    /// not durable yet, or an earlier effect of its instance waits (effects keep their order).
    /// Patches of the other instances do not hold it: no instance's messages depend on another
    /// instance's state.
    private func mustHold(_ mechanism: Mechanism) -> Bool {
        flushingMechanisms.contains(mechanism) || unflushedCount[mechanism, default: 0] > 0 || heldCount[mechanism, default: 0] > 0
    }

    private func hold(_ effect: HeldEffect) {
        held.append(effect)
        heldCount[effect.mechanism, default: 0] += 1
    }

    private func persist(_ patch: DurablePatch) {
        // A store that persists at once (memory) needs no batching, as long as nothing of the
        // same instance waits.
        if !mustHold(Mechanism(patch)), storage.persistImmediately([patch]) {
            durabilityHere.immediate += 1
            return
        }
        unflushed.append(patch)
        unflushedCount[Mechanism(patch), default: 0] += 1
    }

    /// Compactions (Raft snapshots) queued or being written (for status commands).
    public nonisolated var compactionsPending: Int { get async { await consensus.compactionsPending } }

    /// Hands every waiting patch to storage in one batch, then releases what waited for them.
    private func flushIfNeeded() {
        guard !flushing, !unflushed.isEmpty || !held.isEmpty else { return }
        let patches = unflushed
        let effects = held
        unflushed = []
        held = []
        unflushedCount.removeAll()
        heldCount.removeAll()
        if patches.isEmpty || storage.persistImmediately(patches) {
            durabilityHere.immediate += patches.count
            release(effects)
            return
        }
        durabilityHere.flushes += 1
        durabilityHere.patches += patches.count
        flushing = true
        flushingMechanisms = Set(patches.map(Mechanism.init))
        let storage = self.storage
        let incarnation = self.incarnation
        let executor = self.executor
        storage.persist(patches) { [weak self] error in
            // Back on the node's thread straight from the store's, or later on it when the store
            // called back at once (no task in between; never re-entered).
            guard let node = self else { return }
            executor.run {
                node.assumeIsolated { node in
                    if let error {
                        // Nothing that depends on these patches may go out: stop as a crash would.
                        node.storageFailed(error, incarnation: incarnation)
                    } else {
                        node.flushed(effects, incarnation: incarnation)
                    }
                }
            }
        }
    }

    private func flushed(_ effects: [HeldEffect], incarnation: UInt64) {
        guard incarnation == self.incarnation else { return }
        flushing = false
        flushingMechanisms = []
        release(effects)
        flushIfNeeded()
    }

    private func release(_ effects: [HeldEffect]) {
        for effect in effects {
            switch effect {
            case let .replication(effect): perform(effect)
            case let .austere(effect): performAustere(effect)
            }
        }
    }

    /// Waits (up to `timeout`) until every patch produced so far is durable and what waited
    /// for it went out: a graceful shutdown calls this before `stop()`.
    public func drain(timeout: Duration = .seconds(5)) async {
        let deadline = clock.now + timeout
        while clock.now < deadline {
            let here = flushing || !unflushed.isEmpty || !held.isEmpty
            let there = await consensus.pending
            guard here || there else { break }
            try? await Task.sleep(for: .milliseconds(1))
        }
    }

    /// The error that stopped the node, when its storage failed.
    public private(set) var storageError: String?

    private func storageFailed(_ error: any Error, incarnation: UInt64) {
        guard incarnation == self.incarnation else { return }
        storageError = "\(error)"
        guard let ended = stopHere() else { return }
        Task { [consensus] in await consensus.stop(incarnation: ended) }
    }

    /// Runs one operation on the consensus state through Raft, as `client`'s request number
    /// `sequence` (a retry with the same number applies once).
    public nonisolated func linearizable(_ operation: KeyValueOperation, client: UInt64, sequence: UInt64, latency: Duration) async -> RequestOutcome {
        await consensus.request(operation, client: client, sequence: sequence, latency: latency)
    }

    /// Whether this node leads the Raft group now.
    public nonisolated var isLeader: Bool { get async { await consensus.isLeader } }

    /// Peer messages the protocols refused as no correct peer sends them (each changed
    /// nothing), and the last one's reason.
    public var peerMessagesRefused: (count: Int, last: String?) {
        get async {
            let membership = instance?.membershipUpdatesRefused ?? 0
            let raft = await consensus.refusals
            return (raft.count + membership, raft.last ?? (membership > 0 ? "a membership update past the largest incarnation" : nil))
        }
    }

    /// The leader this replica knows of now (itself when it leads; nil: none, or no consensus).
    public nonisolated var knownLeader: NodeID? { get async { await consensus.leader } }

    /// The Raft term, commit, applied and snapshot indexes this replica knows, its role and the
    /// number of keys its state machine holds (for status commands).
    public nonisolated var consensusStatus: (role: String, term: UInt64, commitIndex: UInt64, appliedIndex: UInt64, snapshotIndex: UInt64, keys: Int)? {
        get async { await consensus.status }
    }

    /// The peers this node's failure detector (SWIM) holds reachable now, and the available
    /// registers (the policy catalogue's own not counted) and serializable keys it holds (for
    /// status commands; nil once stopped).
    public var replicaStatus: (reachablePeers: [NodeID], availableRegisters: Int, serializableKeys: Int)? {
        guard let instance else { return nil }
        let catalogue = instance.slots[RegisterKey(PolicyCatalogue.register)] == nil ? 0 : 1
        return (instance.membership.reachableMembers.filter { $0 != id }, instance.slots.count - catalogue, austere?.committed.count ?? 0)
    }

    /// Answers once Raft's shell runs a job: what a consensus message waits for it (a probe).
    public nonisolated func pingConsensus() async { await consensus.ping() }

    private func perform(_ make: (UInt64) -> ReplicationInstance.Command) async -> Result<AnyReplicated?, ContinuumError> {
        guard instance != nil else { return .failure(.nodeStopped) }
        nextCommandID += 1
        let id = nextCommandID
        return await withCheckedContinuation { continuation in
            waiting[id] = { continuation.resume(returning: $0) }
            handle(make(id))
        }
    }

    private func submit(_ make: (UInt64) -> ReplicationInstance.Command) -> UInt64 {
        nextCommandID += 1
        handle(make(nextCommandID))
        return nextCommandID
    }

    private func handle(_ command: ReplicationInstance.Command) {
        // In place (`instance!` is one access): taking the instance out and putting it back
        // copied its every table reference, twice per command.
        guard instance != nil else { return }
        let now = self.now
        let effects = instance!.handle(command, now: now)
        carryOut(effects)
    }

    private func fire(_ timer: ReplicationInstance.Timer, generation: UInt64) {
        guard timers.consume(timer, generation: generation), instance != nil else { return }
        let now = self.now
        let effects = instance!.timerFired(timer, now: now)
        carryOut(effects)
    }

    private func carryOut(_ effects: [ReplicationInstance.Effect]) {
        for effect in effects {
            switch effect {
            case let .persist(patch):
                persist(.replication(patch))
            case let .output(.changed(register, _)) where subscribers[register] == nil && register != PolicyCatalogue.register:
                // Nobody listens. Not held either: it would keep the state alive until the flush,
                // and the next update would copy the whole state.
                continue
            case .send, .output:
                if mustHold(.replication) { hold(.replication(effect)) } else { perform(effect) }
            case .setTimer, .cancelTimer:
                perform(effect)
            }
        }
        flushIfNeeded()
    }

    private func perform(_ effect: ReplicationInstance.Effect) {
        switch effect {
        case let .send(to, message):
            let lane: TransportLane = if case .membership = message { .membership } else { .replication }
            transport.send(NodeMessage.replication(message).binaryEncoded(), from: id, to: to, lane: lane)
        case .persist:
            preconditionFailure("patches are flushed, not performed")
        case let .setTimer(timer, after):
            // The failure detector's timers go ahead of client work and deltas, as its messages
            // do (`Node.isUrgent`): a busy node is slow, not dead.
            let priority: TaskPriority? = if case .membership = timer { .high } else { nil }
            timers.set(timer, after: after, priority: priority) { [weak self] timer, generation in
                await self?.fire(timer, generation: generation)
            }
        case let .cancelTimer(timer):
            timers.cancel(timer)
        case let .output(output):
            deliver(output)
        }
    }

    private func deliver(_ output: ReplicationInstance.Output) {
        switch output {
        case let .completed(id, _, result):
            waiting.removeValue(forKey: id)?(result.mapError(Self.translate))
        case let .thresholdReached(id, value):
            reads.removeValue(forKey: id)?.resume(returning: .success(value))
        case let .thresholdFailed(id, error):
            reads.removeValue(forKey: id)?.resume(returning: .failure(Self.translate(error)))
        case let .changed(register, value):
            if register == PolicyCatalogue.register { policies.load(value) }
            for yield in subscribers[register, default: [:]].values { yield(value) }
            if value == nil { subscribers[register] = nil }
        case let .boundedReadCompleted(id, result):
            boundedWaiting.removeValue(forKey: id)?.resume(returning: result.mapError(Self.translate))
        case .reachabilityChanged:
            break
        }
    }

    static func translate(_ failure: BoundedReadFailure) -> ContinuumError {
        switch failure {
        case let .stalenessBoundUnmet(best): .stalenessBoundUnmet(best: best)
        case let .unavailable(reason): .unavailable(reason)
        case let .invalidRequest(reason): .invalidRequest(reason)
        }
    }

    static func translate(_ error: ReplicationError) -> ContinuumError {
        switch error {
        case let .notDeclared(name): .notDeclared(register: name)
        case let .deleted(name): .deleted(register: name)
        case let .typeMismatch(name, declared, requested): .typeMismatch(register: name, declared: declared, requested: requested)
        case let .tooManyPendingReads(limit): .tooManyPendingReads(limit: limit)
        case let .invalidName(name): .invalidName(name)
        case let .derivedInputMissing(derived, input): .derivedInputMissing(derived: derived, input: input)
        case let .mutationRefused(reason): .refused(reason)
        case .readCancelled: .cancelled
        case let .stalenessBoundUnmet(best): .stalenessBoundUnmet(best: best)
        case let .invalidRequest(reason): .invalidRequest(reason)
        }
    }
}

/// What an upsert's mutator computed, handed back from the node's actor (written and read on
/// that actor only).
private final class ResultBox<Value>: @unchecked Sendable {
    var value: Value?
}
