import ContinuumCore
import ContinuumProtocols

/// One command on registers, typed: what the RESP server, the network client (through it) and
/// embedded callers hand to a `Router`. The command says what to do; the register's policy,
/// looked up once by the router, says which mechanism does it.
public enum RegisterCommand: Sendable, Equatable {
    /// A string's bytes (a counter's value in decimal), under the key's policy or `policy`;
    /// with `receipt`, the answer says what it delivered (an available read without one is a
    /// look at the local state).
    case get(key: String, policy: Policy? = nil, receipt: Bool = false)
    case set(key: String, value: [UInt8])
    /// Adds to an integer (a counter under `available`), answering the sum.
    case add(key: String, amount: Int64)
    /// Removes the keys, answering how many existed.
    case delete(keys: [String])
    /// Inserts (or removes) members of a set, answering how many were absent (present).
    case changeSet(key: String, members: [String], insert: Bool)
    case members(key: String)
    case count(key: String)
    case contains(key: String, member: String)
    /// Declares a CRDT register of `kind` (nothing when it exists with that kind).
    case declare(key: String, kind: RegisterKind)
    /// Applies a CRDT operation, answering the register's state right after.
    case apply(key: String, operation: CRDTOperation)
    /// A CRDT register's state and what the read delivered.
    case read(key: String, policy: Policy? = nil)

    /// The register the command routes by (the first, for `delete`).
    public var key: String {
        switch self {
        case let .get(key, _, _), let .set(key, _), let .add(key, _), let .changeSet(key, _, _), let .members(key), let .count(key),
             let .contains(key, _), let .declare(key, _), let .apply(key, _), let .read(key, _): key
        case let .delete(keys): keys.first ?? ""
        }
    }

    /// About the bytes the command carries: its keys, value and members.
    public var approximateBytes: Int {
        switch self {
        case let .set(key, value): key.utf8.count + value.count
        case let .delete(keys): keys.reduce(0) { $0 + $1.utf8.count }
        case let .changeSet(key, members, _): members.reduce(key.utf8.count) { $0 + $1.utf8.count }
        case let .contains(key, member): key.utf8.count + member.utf8.count
        case let .apply(key, .setInsert(member)), let .apply(key, .setRemove(member)): key.utf8.count + member.utf8.count
        default: key.utf8.count
        }
    }

    /// Whether the command changes state (a write), rather than reading it.
    public var isWrite: Bool {
        switch self {
        case .get, .members, .count, .contains, .read: false
        case .set, .add, .delete, .changeSet, .declare, .apply: true
        }
    }
}

/// A command's answer.
public enum RegisterAnswer: Sendable, Equatable {
    /// Bytes, or nothing; with what was delivered when the command asked for a receipt.
    case bytes([UInt8]?, receipt: ReadReceipt?)
    case integer(Int64)
    case boolean(Bool)
    case members(Set<String>)
    /// A CRDT register's state (nil: none), with what was delivered for a read.
    case state(LogCRDT?, receipt: ReadReceipt?)
    case done
}

/// A caller's identity for linearizable writes: its client number (asked of the node at its
/// first write) and the sequence number of its last request, so that each request is applied
/// once. One per connection or task; not shared between concurrent callers.
public struct RouterCaller: Sendable {
    public private(set) var client: UInt64?
    public private(set) var sequence: UInt64 = 0

    public init() {}

    /// The caller's client number, asked of `node` the first time.
    public mutating func identity(at node: Node) async -> UInt64 {
        if let client { return client }
        let fresh = await node.newClient()
        client = fresh
        return fresh
    }

    mutating func next(at node: Node) async -> (client: UInt64, sequence: UInt64) {
        let client = await identity(at: node)
        sequence += 1
        return (client, sequence)
    }
}

/// Routes typed register commands to the mechanism of each register's policy: one dictionary
/// lookup in the node's typed policy catalogue (`Node.policies`), no hop through the node's
/// actor and no parsing, then one backend per mechanism:
///
/// - `linearizable`: `ConsensusBackend`, through the Raft log;
/// - `available` and `bounded`: `AvailableBackend`, the node's CRDT registers, updated in
///   place (a command costs what it changes, not the size of the state);
/// - `serializable`: `SerializableBackend`, one-operation transactions (2PL and 2PC at every
///   replica), over integers.
///
/// Every failure is a `ContinuumError`; front ends render it (the RESP server as an error line,
/// `ContinuumError.replyLine`) and the network client reads it back from that line's code.
public struct Router: Sendable {
    public let node: Node
    /// The policy of registers nobody declared.
    public var defaultPolicy: Policy
    /// The latency bound of each linearizable or serializable command.
    public var requestLatency: Duration
    /// The most bytes one command may carry (`RegisterCommand.approximateBytes`): it travels as
    /// one Raft entry or one delta, in one peer frame. Larger commands are refused, and nothing
    /// is applied.
    public var commandBytesMax: Int

    /// The default `commandBytesMax`, 16 MiB (a peer frame holds 64 MiB).
    public static let commandBytesMaxDefault = 16 << 20

    public init(node: Node, defaultPolicy: Policy, requestLatency: Duration = .seconds(2),
                commandBytesMax: Int = Router.commandBytesMaxDefault) {
        self.node = node
        self.defaultPolicy = defaultPolicy
        self.requestLatency = requestLatency
        self.commandBytesMax = commandBytesMax
    }

    /// The policy `key` routes by: its declaration, else the default.
    public func policy(of key: String) -> Policy {
        node.policies.policy(of: key) ?? defaultPolicy
    }

    /// Runs `command` under its register's policy (each key's, for `delete`).
    public func run(_ command: RegisterCommand, as caller: inout RouterCaller) async throws(ContinuumError) -> RegisterAnswer {
        try await run(command, declared: policy(of: command.key), as: &caller)
    }

    /// Runs `command` under `declared`, the policy of its key as `policy(of:)` gave it (for a
    /// caller that looked it up already, to label the command, say).
    public func run(_ command: RegisterCommand, declared: Policy, as caller: inout RouterCaller) async throws(ContinuumError) -> RegisterAnswer {
        let bytes = command.approximateBytes
        guard bytes <= commandBytesMax else {
            throw .invalidRequest("the command carries \(bytes) bytes, more than \(commandBytesMax); nothing was applied")
        }
        if case let .delete(keys) = command { return .integer(try await delete(keys, as: &caller)) }
        switch declared {
        case .linearizable: return try await ConsensusBackend(router: self).run(command, as: &caller)
        case .available, .bounded:
            // One code path for what `start` serves, whether the caller is a task or the node's
            // own thread.
            if canStart(command, declared: declared) { return try await node.started(self, command, declared: declared).get() }
            return try await AvailableBackend(node: node).run(command, declared: declared)
        case .serializable: return try await SerializableBackend(router: self).run(command)
        }
    }

    /// `run` without a task, for the commands an available register serves from this node
    /// alone: SET, an addition and a set's change under `available` or `bounded` (answered once
    /// the local change is durable), and under `available` a plain GET, a set's count and a
    /// membership (answered at once). `then` gets the same answer or error `run` would give, on
    /// the node's executor, possibly before `start` returns. Any other command or policy is not
    /// started: `start` returns false and `run` serves it. The caller is on the node's executor
    /// (`Node.isCurrentExecutor`, then `assumeIsolated`), which saves the task switches of an
    /// `await` per command.
    public func start(_ command: RegisterCommand, declared: Policy, on node: isolated Node,
                      then: @escaping @Sendable (Result<RegisterAnswer, ContinuumError>) -> Void) -> Bool {
        guard canStart(command, declared: declared) else { return false }
        let bytes = command.approximateBytes
        guard bytes <= commandBytesMax else {
            then(.failure(.invalidRequest("the command carries \(bytes) bytes, more than \(commandBytesMax); nothing was applied")))
            return true
        }
        return AvailableBackend.start(command, declared: declared, on: node, then: then)
    }

    /// Whether `start` serves `command` under `declared` (else only `run` does).
    func canStart(_ command: RegisterCommand, declared: Policy) -> Bool {
        switch declared {
        case .linearizable, .serializable: return false
        case .available, .bounded: break
        }
        switch command {
        case .set, .add, .changeSet: return true
        case .get(_, nil, false), .count, .contains: return declared == .available
        default: return false
        }
    }

    /// DEL across policies: each key by its mechanism, the linearizable ones in one log entry.
    private func delete(_ keys: [String], as caller: inout RouterCaller) async throws(ContinuumError) -> Int64 {
        var removed: Int64 = 0
        var consensusKeys: [String] = []
        for key in keys {
            switch policy(of: key) {
            case .linearizable: consensusKeys.append(key)
            case .serializable: throw .invalidRequest("DEL is not supported on serializable keys; SET them instead")
            case .available, .bounded:
                if try await AvailableBackend(node: node).delete(key) { removed += 1 }
            }
        }
        if !consensusKeys.isEmpty {
            guard case let .count(count) = try await ConsensusBackend(router: self).log(.delete(keys: consensusKeys), as: &caller).result else {
                throw Self.wrongType(keys[0], requested: "a deletable key")
            }
            removed += count
        }
        return removed
    }

    // MARK: Policies

    /// Declares `key`'s policy (nil: withdraws the declaration, so the default applies) in the
    /// catalogue register, which anti-entropy carries to every node.
    public func declare(policy: Policy?, for key: String) async throws(ContinuumError) {
        let words = policy?.words.joined(separator: " ") ?? "default"
        let catalogue = try await node.declare(PolicyCatalogue.register, as: PolicyCatalogue.State.self)
        let physical = UInt64(clamping: wallClockNanoseconds())
        try await catalogue.update { map, replica in
            var failure: ContinuumError?
            let delta = map.update(key) { entry in
                var clock = HybridLogicalClock()
                do {
                    return try entry.write(words, replica: replica, clock: &clock, physical: physical)
                } catch {
                    failure = error as? ContinuumError ?? .refused("\(error)")
                    return LWWRegister()
                }
            }
            if let failure { throw failure }
            return delta
        }
    }

    /// `key`'s entry in this node's catalogue register (bottom when nobody declared it here):
    /// what a client carries to a node that has not heard of the declaration yet.
    public func declaration(of key: String) async -> LWWRegister<String> {
        // Looked at in place: one entry, not a copy of the whole catalogue per command.
        (try? await node.inspect(PolicyCatalogue.register, as: PolicyCatalogue.State.self) { $0[key] }) ?? LWWRegister()
    }

    /// Joins a declaration a client carried (an entry with its own timestamp: a newer one here
    /// is kept).
    public func absorb(declaration entry: LWWRegister<String>, for key: String) async throws(ContinuumError) {
        guard !entry.isBottom, await declaration(of: key) != entry else { return }
        let delta = PolicyCatalogue.State([key: entry])
        try await node.declare(PolicyCatalogue.register, as: PolicyCatalogue.State.self).update { map, _ in
            map.formJoin(delta)
            return delta
        }
    }

    static func wrongType(_ key: String, requested: String, declared: String = "another kind of value") -> ContinuumError {
        .typeMismatch(register: key, declared: declared, requested: requested)
    }

    /// Redis's words for an integer argument or value that is not one.
    public static let notAnInteger = ContinuumError.invalidRequest("value is not an integer or out of range")
}

// MARK: - Backends

/// Linearizable registers: every command is one Raft log entry (or a read through the log, or a
/// staleness-bounded read of this replica under an override policy).
struct ConsensusBackend {
    let router: Router

    func run(_ command: RegisterCommand, as caller: inout RouterCaller) async throws(ContinuumError) -> RegisterAnswer {
        let key = command.key
        switch command {
        case let .get(_, override, _):
            let result: KeyValueResult
            var receipt: ReadReceipt?
            switch override ?? .linearizable {
            case .linearizable: result = try await log(.stringGet(key: key), as: &caller).result
            case .serializable: throw .wrongPolicy(register: key, declared: .linearizable)
            case let policy:
                let answer = try await router.node.raftBoundedRead(.stringGet(key: key), levels: policy.serviceLevels, minimumIndex: 0).get()
                (result, receipt) = (answer.result, answer.receipt)
            }
            guard case let .string(bytes) = result else { throw Router.wrongType(key, requested: "a string") }
            return .bytes(bytes, receipt: receipt)
        case let .set(_, value):
            _ = try await log(.stringSet(key: key, value: value), as: &caller)
            return .done
        case let .add(_, amount):
            switch try await log(.stringAdd(key: key, amount: amount), as: &caller).result {
            case let .integer(value): return .integer(value)
            case .notAnInteger: throw Router.notAnInteger
            default: throw Router.wrongType(key, requested: "an integer")
            }
        case let .changeSet(_, members, insert):
            // One log entry for all the members; the state machine counts what changed when it
            // applies it, so nothing is read first and nothing of the set comes back.
            guard case let .count(changed) = try await log(.setChange(key: key, members: members, insert: insert), as: &caller).result else {
                throw Router.wrongType(key, requested: "a set")
            }
            return .integer(changed)
        case .members, .count, .contains:
            guard case let .crdt(state) = try await log(.crdtRead(key: key), as: &caller).result else {
                throw Router.wrongType(key, requested: "a set")
            }
            let members: Set<String>
            switch state {
            case nil: members = []
            case let .set(set)?: members = set.elements
            default: throw Router.wrongType(key, requested: "a set")
            }
            return Self.answer(command, members: members)
        case let .declare(_, kind):
            switch try await log(.crdtRead(key: key), as: &caller).result {
            case .crdt(nil): return .done
            case let .crdt(state?) where RegisterKind(state) == kind: return .done
            default: throw Router.wrongType(key, requested: "a \(kind.rawValue)")
            }
        case let .apply(_, operation):
            guard case let .crdt(state?) = try await log(.crdt(key: key, operation), as: &caller).result else {
                throw Router.wrongType(key, requested: "a \(RegisterKind(operation).rawValue)")
            }
            return .state(state, receipt: nil)
        case let .read(_, override):
            switch override ?? .linearizable {
            case .linearizable:
                let (result, index) = try await log(.crdtRead(key: key), as: &caller)
                guard case let .crdt(state) = result else { throw Router.wrongType(key, requested: "a CRDT") }
                let receipt = ReadReceipt(guarantee: .linearizable, staleness: .zero, version: .logIndex(index),
                                          replicas: [router.node.id.replica], level: 0)
                return .state(state, receipt: receipt)
            case .serializable: throw .wrongPolicy(register: key, declared: .linearizable)
            case let policy:
                let answer = try await router.node.raftBoundedRead(.crdtRead(key: key), levels: policy.serviceLevels, minimumIndex: 0).get()
                guard case let .crdt(state) = answer.result else { throw Router.wrongType(key, requested: "a CRDT") }
                return .state(state, receipt: answer.receipt)
            }
        case .delete:
            preconditionFailure("the router runs DEL itself")
        }
    }

    /// `operation` through the Raft log, with the log index it was applied at.
    func log(_ operation: KeyValueOperation, as caller: inout RouterCaller) async throws(ContinuumError) -> (result: KeyValueResult, index: UInt64) {
        let (client, sequence) = await caller.next(at: router.node)
        switch await router.node.linearizable(operation, client: client, sequence: sequence, latency: router.requestLatency) {
        case let .ok(result, index): return (result, index)
        case let .unavailable(reason): throw .unavailable(reason)
        case .indeterminate: throw .indeterminate
        }
    }

    /// The answer of a set read (`members`, `count` or `contains`) from the set's members.
    static func answer(_ command: RegisterCommand, members: Set<String>) -> RegisterAnswer {
        switch command {
        case .count: .integer(Int64(members.count))
        case let .contains(_, member): .boolean(members.contains(member))
        default: .members(members)
        }
    }
}

extension Node {
    /// `Router.start` from a task: runs it on this node and waits for its answer.
    func started(_ router: Router, _ command: RegisterCommand, declared: Policy) async -> Result<RegisterAnswer, ContinuumError> {
        await withCheckedContinuation { continuation in
            let started = router.start(command, declared: declared, on: self) { continuation.resume(returning: $0) }
            precondition(started, "Router.start refused a command canStart accepted")
        }
    }
}

/// Available and bounded registers: this node's CRDTs, updated locally in place and merged by
/// anti-entropy. A string is a last-writer-wins register of bytes, INCR a PN-counter, a set an
/// add-wins set.
struct AvailableBackend {
    let node: Node

    typealias Bytes = LWWRegister<[UInt8]>

    func run(_ command: RegisterCommand, declared: Policy) async throws(ContinuumError) -> RegisterAnswer {
        let key = command.key
        switch command {
        case let .get(_, override, receipt):
            let policy = override ?? declared
            switch policy {
            case .linearizable, .serializable: throw .wrongPolicy(register: key, declared: declared)
            case .available where !receipt:
                // A look at the local state, without the digest a receipt carries.
                return try await orNothing(.bytes(nil, receipt: nil)) { () async throws(ContinuumError) in
                    do throws(ContinuumError) {
                        return try await node.inspect(key, as: Bytes.self) { .bytes($0.value, receipt: nil) }
                    } catch {
                        guard case let .typeMismatch(_, type, _) = error, type == replicableTypeName(PNCounter.self) else { throw error }
                        return try await node.inspect(key, as: PNCounter.self) { .bytes(Array("\($0.value)".utf8), receipt: nil) }
                    }
                }
            case .available, .bounded:
                return try await orNothing(.bytes(nil, receipt: nil)) { () async throws(ContinuumError) in
                    do throws(ContinuumError) {
                        let result = try await node.register(key, as: Bytes.self).read(policy)
                        return .bytes(result.value.value, receipt: result.receipt)
                    } catch {
                        guard case let .typeMismatch(_, type, _) = error, type == replicableTypeName(PNCounter.self) else { throw error }
                        let result = try await node.register(key, as: PNCounter.self).read(policy)
                        return .bytes(Array("\(result.value.value)".utf8), receipt: result.receipt)
                    }
                }
            }
        case .set, .add, .changeSet:
            preconditionFailure("the router starts writes to available registers (Router.start)")
        case .members, .count, .contains:
            // A count or a membership under `available` is started (looked at in place); here
            // the members, or a bounded read of them.
            let members = try await orNothing([]) { () async throws(ContinuumError) in
                try await node.register(key, as: ORSet<String>.self).read(declared).value.elements
            }
            return ConsensusBackend.answer(command, members: members)
        case let .declare(_, kind):
            switch kind {
            case .counter: _ = try await node.declare(key, as: PNCounter.self)
            case .set: _ = try await node.declare(key, as: ORSet<String>.self)
            case .flag: _ = try await node.declare(key, as: EWFlag.self)
            case .max: _ = try await node.declare(key, as: MaxRegister<UInt64>.self)
            }
            return .done
        case let .apply(_, operation):
            let state = switch RegisterKind(operation) {
            case .counter: try await update(key, PNCounter.self, operation)
            case .set: try await update(key, ORSet<String>.self, operation)
            case .flag: try await update(key, EWFlag.self, operation)
            case .max: try await update(key, MaxRegister<UInt64>.self, operation)
            }
            return .state(state, receipt: nil)
        case let .read(_, override):
            let policy = override ?? declared
            if policy == .linearizable || policy == .serializable { throw .wrongPolicy(register: key, declared: declared) }
            do {
                return try await read(key, PNCounter.self, policy)
            } catch {
                guard case let .typeMismatch(_, type, _) = error else { throw error }
                switch type {
                case replicableTypeName(ORSet<String>.self): return try await read(key, ORSet<String>.self, policy)
                case replicableTypeName(EWFlag.self): return try await read(key, EWFlag.self, policy)
                case replicableTypeName(MaxRegister<UInt64>.self): return try await read(key, MaxRegister<UInt64>.self, policy)
                default: throw Router.wrongType(key, requested: "a CRDT", declared: type)
                }
            }
        case .delete:
            preconditionFailure("the router runs DEL itself")
        }
    }

    /// `run` for the commands `Router.start` serves without a task (false: not one of them).
    static func start(_ command: RegisterCommand, declared: Policy, on node: isolated Node,
                      then: @escaping @Sendable (Result<RegisterAnswer, ContinuumError>) -> Void) -> Bool {
        let key = command.key
        switch command {
        case let .set(_, value):
            let physical = UInt64(clamping: wallClockNanoseconds())
            node.upsertNow(key, as: Bytes.self, { register, replica in
                var clock = HybridLogicalClock()
                return (try register.write(value, replica: replica, clock: &clock, physical: physical), ())
            }, then: { then($0.map { .done }) })
        case let .add(_, amount):
            node.upsertNow(key, as: PNCounter.self, { counter, replica in
                (counter.add(amount, replica: replica), counter.value)
            }, then: { then($0.map { .integer($0) }) })
        case let .changeSet(_, members, insert):
            node.upsertNow(key, as: ORSet<String>.self, { set, replica in changeSet(&set, members, insert: insert, replica: replica) },
                           then: { then($0.map { .integer($0) }) })
        case .get(_, nil, false):
            then(Result { () throws(ContinuumError) in
                try orNothing(.bytes(nil, receipt: nil)) { () throws(ContinuumError) in
                    do throws(ContinuumError) {
                        return try node.inspect(key, as: Bytes.self) { .bytes($0.value, receipt: nil) }
                    } catch {
                        guard case let .typeMismatch(_, type, _) = error, type == replicableTypeName(PNCounter.self) else { throw error }
                        return try node.inspect(key, as: PNCounter.self) { .bytes(Array("\($0.value)".utf8), receipt: nil) }
                    }
                }
            })
        case .count, .contains:
            then(Result { () throws(ContinuumError) in
                try orNothing(ConsensusBackend.answer(command, members: [])) { () throws(ContinuumError) in
                    try node.inspect(key, as: ORSet<String>.self) { set in
                        if case let .contains(_, member) = command { return .boolean(set.contains(member)) }
                        return .integer(Int64(set.count))
                    }
                }
            })
        default:
            return false
        }
        return true
    }

    /// Inserts (or removes) `members` in place, without reading the set first: the cost is the
    /// members', not the set's. The delta, and how many members changed.
    static func changeSet(_ set: inout ORSet<String>, _ members: [String], insert: Bool, replica: ReplicaID) -> (delta: ORSet<String>, result: Int64) {
        var delta = ORSet<String>()
        var changed: Int64 = 0
        for member in members {
            if set.contains(member) != insert { changed += 1 }
            delta.formJoin(insert ? set.insert(member, replica: replica) : set.remove(member))
        }
        return (delta, changed)
    }

    /// `body`'s result, or `nothing` when the register does not exist (never declared, or deleted).
    private static func orNothing<Result>(_ nothing: Result, _ body: () throws(ContinuumError) -> Result) throws(ContinuumError) -> Result {
        do {
            return try body()
        } catch {
            switch error {
            case .notDeclared, .deleted: return nothing
            default: throw error
            }
        }
    }

    /// Deletes `key` cluster-wide; false when there was nothing to delete.
    func delete(_ key: String) async throws(ContinuumError) -> Bool {
        try await orNothing(false) { () async throws(ContinuumError) in
            try await node.register(key, as: Bytes.self).delete()
            return true
        }
    }

    /// `body`'s result, or `nothing` when the register does not exist (never declared, or deleted).
    private func orNothing<Result>(_ nothing: Result, _ body: () async throws(ContinuumError) -> Result) async throws(ContinuumError) -> Result {
        do {
            return try await body()
        } catch {
            switch error {
            case .notDeclared, .deleted: return nothing
            default: throw error
            }
        }
    }

    /// Applies `operation` to this node's CRDT register `key` of type `Value`, as this node.
    private func update<Value: RemoteRegisterValue & Replicable>(_ key: String, _ type: Value.Type, _ operation: CRDTOperation)
        async throws(ContinuumError) -> LogCRDT
    {
        let requested = "a \(RegisterKind(operation).rawValue)"
        return try await node.declare(key, as: Value.self).update { value, replica in
            var state: LogCRDT? = value.logState
            guard let delta = operation.mutate(&state, replica: replica), let next = state.flatMap(Value.init), let typed = Value(delta) else {
                throw Router.wrongType(key, requested: requested)
            }
            value = next
            return typed
        }.logState
    }

    /// This node's CRDT register `key` read as `Value` under `policy`.
    private func read<Value: RemoteRegisterValue & Replicable>(_ key: String, _ type: Value.Type, _ policy: Policy)
        async throws(ContinuumError) -> RegisterAnswer
    {
        let result = try await node.register(key, as: Value.self).read(policy)
        return .state(result.value.logState, receipt: result.receipt)
    }
}

/// Serializable registers: integers, each command a one-operation transaction that locks at
/// every replica and commits by two-phase commit.
struct SerializableBackend {
    let router: Router

    func run(_ command: RegisterCommand) async throws(ContinuumError) -> RegisterAnswer {
        let key = command.key
        let node = router.node
        let latency = router.requestLatency
        switch command {
        case let .get(_, override, _):
            let policy = override ?? .serializable
            let result = try await Self.typed { try await node.read(serializable: key, policy == .linearizable ? .serializable : policy) }
            switch result.value {
            case nil: return .bytes(nil, receipt: result.receipt)
            case let .int(value)?: return .bytes(Array("\(value)".utf8), receipt: result.receipt)
            case .list?: throw Router.wrongType(key, requested: "an integer", declared: "a list")
            }
        case let .set(_, bytes):
            guard let value = KeyValueStateMachine.decimal(String(decoding: bytes, as: UTF8.self)) else { throw Router.notAnInteger }
            try await Self.typed { try await node.write(serializable: key, .int(value), latency: latency) }
            return .done
        case let .add(_, amount):
            return .integer(try await Self.typed {
                try await node.transaction(latency: latency) { transaction in
                    let current: Int64
                    switch try await transaction.read(key) {
                    case nil: current = 0
                    case let .int(value)?: current = value
                    case .list?: throw Router.wrongType(key, requested: "an integer", declared: "a list")
                    }
                    let (sum, overflow) = current.addingReportingOverflow(amount)
                    guard !overflow else { throw Router.notAnInteger }
                    try await transaction.write(key, .int(sum))
                    return sum
                }
            })
        default:
            throw .invalidRequest("serializable keys hold integers (SET, GET, INCRBY)")
        }
    }

    /// The transaction API throws untyped errors: ContinuumErrors pass, others become `refused`.
    static func typed<Result>(_ body: () async throws -> Result) async throws(ContinuumError) -> Result {
        do {
            return try await body()
        } catch let error as ContinuumError {
            throw error
        } catch {
            throw .refused("\(error)")
        }
    }
}
