import ContinuumCore
import ContinuumProtocols

/// A handle to one register (or derived register) on one node.
///
/// ```swift
/// let cart = try await node.declare("cart", as: ORSet<String>.self)
/// try await cart.update { set, replica in set.insert("apple", replica: replica) }
/// let now = try await cart.read()
/// ```
public struct Register<Value: Replicable>: Sendable {
    public let name: String
    public let node: Node
    /// What `read()` gives: `available` (the local state) or `bounded(staleness:latency:)`.
    public let policy: Policy

    init(name: String, node: Node, policy: Policy = .available) {
        self.name = name
        self.node = node
        self.policy = policy
    }

    /// Applies a delta mutator locally and returns the new state once it is applied and
    /// persisted (in memory-only mode, applied). Never waits for the network. The mutator must
    /// return the delta it produced; throwing from it refuses the update (`ContinuumError.refused`).
    /// A `linearizable` register changes only by operations the log can order (`apply(_:)`): a
    /// closure cannot be replicated, and `update` is refused there.
    @discardableResult
    public func update(_ mutate: @escaping @Sendable (inout Value, ReplicaID) throws -> Value) async throws(ContinuumError) -> Value {
        if policy == .linearizable { throw Self.closureRefused(name) }
        return try await node.update(name, mutate)
    }

    /// Threshold reads, change streams and dataflow follow a replica's local state: the
    /// available mechanism's, not the log's.
    static func availableOnly(_ name: String) -> ContinuumError {
        .invalidRequest("'\(name)' is linearizable: threshold reads and dataflow follow available registers only")
    }

    static func closureRefused(_ name: String) -> ContinuumError {
        .invalidRequest("'\(name)' is linearizable: it changes by operations the Raft log orders (apply(_:)), not by closures")
    }

    /// Under `linearizable`, the state the log holds for this register.
    private var consensus: ConsensusBackend { ConsensusBackend(router: Router(node: node, defaultPolicy: .linearizable)) }

    /// A state the log gave, as `Value` (nil: bottom).
    private func typed(_ state: LogCRDT?) throws(ContinuumError) -> Value {
        guard let state else { return Value.bottom }
        guard let kind = Value.self as? any RemoteRegisterValue.Type, let value = kind.init(state) as? Value else {
            throw .typeMismatch(register: name, declared: "\(RegisterKind(state))", requested: replicableTypeName(Value.self))
        }
        return value
    }

    /// The state under the handle's policy: the local state at once when `available`; under
    /// `bounded(staleness: S, latency: L)`, a state no older than S within L, or
    /// `stalenessBoundUnmet`. `read(_:)` says what was delivered.
    public func read() async throws(ContinuumError) -> Value {
        switch policy {
        case .bounded, .linearizable: return try await read(policy).value
        case .available, .serializable: break
        }
        return try await node.read(name, as: Value.self)
    }

    /// Reads under `policy` and says what was delivered. `.available` is the local state at
    /// once; `.bounded(staleness: S, latency: L)` answers as soon as a state certified no
    /// older than S is in hand (asking every replica when the local certificate is too old)
    /// and fails with `stalenessBoundUnmet` at L otherwise. An available register cannot give
    /// a linearizable or serializable read (`wrongPolicy`).
    public func read(_ policy: Policy) async throws(ContinuumError) -> ReadResult<Value> {
        if self.policy == .linearizable {
            var caller = RouterCaller()
            guard case let .state(state, receipt?) = try await consensus.run(.read(key: name, policy: policy), as: &caller) else {
                throw .invalidRequest("a read without its receipt")
            }
            return ReadResult(value: try typed(state), receipt: receipt)
        }
        switch policy {
        case .available, .bounded: return try await read(levels: policy.serviceLevels)
        case .linearizable, .serializable: throw .wrongPolicy(register: name, declared: .available)
        }
    }

    /// Reads with ranked service levels (after Pileus), for example "staleness ≤ 100 ms within
    /// 20 ms, else staleness ≤ 5 s within 50 ms, else whatever is local"; the result names the
    /// level it met. Derived registers ask for their inputs and carry the weakest certificate.
    public func read(levels: [ServiceLevel]) async throws(ContinuumError) -> ReadResult<Value> {
        if policy == .linearizable {
            let answer = try await node.raftBoundedRead(.crdtRead(key: name), levels: levels, minimumIndex: 0).get()
            guard case let .crdt(state) = answer.result else { throw .typeMismatch(register: name, declared: "another kind", requested: "a CRDT") }
            return ReadResult(value: try typed(state), receipt: answer.receipt)
        }
        let answer = try await node.boundedRead(name, levels: levels).get()
        guard let typed = answer.state.unwrap(as: Value.self) else {
            throw .typeMismatch(register: name, declared: answer.state.typeName, requested: replicableTypeName(Value.self))
        }
        return ReadResult(value: typed, receipt: answer.receipt)
    }

    /// Waits until the local state is at least `threshold` in the lattice order, and returns
    /// it (Lasp's monotone threshold read). Fails with `timedOut` after `timeout`, and with
    /// `cancelled` when the calling task is cancelled.
    public func read(atLeast threshold: Value, timeout: Duration? = nil) async throws(ContinuumError) -> Value {
        if policy == .linearizable { throw Self.availableOnly(name) }
        return try await node.read(name, atLeast: threshold, timeout: timeout)
    }

    /// Waits until `condition` holds for the local state, and returns that state. Meant for
    /// monotone conditions (once true, true for every larger state), such as "the counter's
    /// value is at least 5", which a lattice threshold cannot say.
    public func read(until condition: @escaping @Sendable (Value) -> Bool, timeout: Duration? = nil) async throws(ContinuumError) -> Value {
        if policy == .linearizable { throw Self.availableOnly(name) }
        let stream = await changes()
        let watch = Task<Value?, Never> {
            for await state in stream where condition(state) { return state }
            return nil
        }
        let deadline: Task<Void, Never>? = timeout.map { timeout in
            Task {
                try? await Task.sleep(for: timeout)
                if !Task.isCancelled { watch.cancel() }
            }
        }
        let found = await withTaskCancellationHandler { await watch.value } onCancel: { watch.cancel() }
        deadline?.cancel()
        if let found { return found }
        if Task.isCancelled { throw .cancelled }
        let current = try await read()  // throws `deleted` or `nodeStopped` if that ended the stream
        if condition(current) { return current }
        throw .timedOut(after: timeout ?? .zero)
    }

    /// The current state, then every new state as it changes at this node. Ends when the
    /// register is deleted or the node stops.
    public func changes() async -> AsyncStream<Value> {
        let (stream, continuation) = AsyncStream<Value>.makeStream(bufferingPolicy: .bufferingNewest(64))
        let token = await node.subscribe(name) { value in
            if let typed = value?.unwrap(as: Value.self) { continuation.yield(typed) } else { continuation.finish() }
        }
        guard let token else {
            continuation.finish()
            return stream
        }
        let node = self.node
        let name = self.name
        continuation.onTermination = { _ in Task { await node.unsubscribe(name, token) } }
        return stream
    }

    /// Deletes the register cluster-wide. The deletion replicates as a small tombstone and the
    /// state is dropped everywhere; declaring the name again starts afresh.
    public func delete() async throws(ContinuumError) {
        if policy == .linearizable {
            var caller = RouterCaller()
            _ = try await consensus.log(.delete(keys: [name]), as: &caller)
            return
        }
        try await node.delete(name)
    }

    // MARK: - Dataflow (Lasp combinators)

    /// A derived register `name` holding `transform(state)`, kept up to date on this node as
    /// this register grows. `transform` must be monotone (a larger input never gives a smaller
    /// output) for threshold reads on the result to be meaningful; `LatticeLaws.monotonicityViolations`
    /// checks a function on sample states.
    public func map<Output: Replicable>(_ name: String, _ transform: @escaping @Sendable (Value) -> Output) async throws(ContinuumError) -> Register<Output> {
        try await node.define(DerivedDefinition(name: name, inputs: [self.name]) { inputs in
            inputs[0].unwrap(as: Value.self).map { AnyReplicated(transform($0)) }
        })
        return Register<Output>(name: name, node: node, policy: policy)
    }

    /// A derived register over this one and `other`.
    public func combine<Other: Replicable, Output: Replicable>(
        _ other: Register<Other>, into name: String, _ combine: @escaping @Sendable (Value, Other) -> Output
    ) async throws(ContinuumError) -> Register<Output> {
        try await node.define(DerivedDefinition(name: name, inputs: [self.name, other.name]) { inputs in
            guard let first = inputs[0].unwrap(as: Value.self), let second = inputs[1].unwrap(as: Other.self) else { return nil }
            return AnyReplicated(combine(first, second))
        })
        return Register<Output>(name: name, node: node, policy: policy)
    }
}

extension Register {
    /// Lasp's `map` over an OR-set's elements: an OR-set that keeps each output element's
    /// causal history, so removals in the input propagate.
    public func mapElements<Element, Output: Hashable & Sendable & Codable & BinaryCodable>(
        _ name: String, _ transform: @escaping @Sendable (Element) -> Output
    ) async throws(ContinuumError) -> Register<ORSet<Output>> where Value == ORSet<Element>, Element: BinaryCodable {
        try await map(name) { $0.mapElements(transform) }
    }

    /// Lasp's `filter` over an OR-set.
    public func filter<Element>(
        _ name: String, _ isIncluded: @escaping @Sendable (Element) -> Bool
    ) async throws(ContinuumError) -> Register<ORSet<Element>> where Value == ORSet<Element>, Element: BinaryCodable {
        try await map(name) { $0.filterElements(isIncluded) }
    }

    /// Lasp's `union` of two set registers.
    public func union<Other: SetLattice & BinaryCodable>(_ other: Register<Other>, into name: String) async throws(ContinuumError)
        -> Register<Union<Value, Other>> where Value: SetLattice, Value.Element == Other.Element {
        try await combine(other, into: name) { Union($0, $1) }
    }

    /// Lasp's `intersection` of two set registers.
    public func intersection<Other: SetLattice & BinaryCodable>(_ other: Register<Other>, into name: String) async throws(ContinuumError)
        -> Register<Intersection<Value, Other>> where Value: SetLattice, Value.Element == Other.Element {
        try await combine(other, into: name) { Intersection($0, $1) }
    }

    /// Lasp's `product` of two set registers.
    public func product<Other: SetLattice & BinaryCodable>(_ other: Register<Other>, into name: String) async throws(ContinuumError)
        -> Register<Product<Value, Other>> where Value: SetLattice {
        try await combine(other, into: name) { Product($0, $1) }
    }

    /// Lasp's `fold`: the join, over the set's elements, of `contribution(element)`. Join is
    /// associative, commutative and idempotent, so the fold is well defined; it grows with
    /// the set when the set only grows (over an OR-set, a removal can make it shrink).
    public func fold<Output: Replicable>(_ name: String, _ contribution: @escaping @Sendable (Value.Element) -> Output) async throws(ContinuumError)
        -> Register<Output> where Value: SetLattice {
        try await map(name) { set in set.elements.reduce(Output.bottom) { $0.join(contribution($1)) } }
    }
}

extension Register where Value: RemoteRegisterValue {
    /// Applies a CRDT operation under the handle's policy and returns the state right after:
    /// under `linearizable` one Raft log entry (the log applies the operations of every node in
    /// one order), under `available` and `bounded` a local update, merged by anti-entropy.
    @discardableResult
    public func apply(_ operation: CRDTOperation) async throws(ContinuumError) -> Value {
        let answer: RegisterAnswer
        if policy == .linearizable {
            var caller = RouterCaller()
            answer = try await consensus.run(.apply(key: name, operation: operation), as: &caller)
        } else {
            answer = try await AvailableBackend(node: node).run(.apply(key: name, operation: operation), declared: policy)
        }
        guard case let .state(state, _) = answer else { throw .invalidRequest("unexpected answer \(answer)") }
        return try typed(state)
    }
}
