import ContinuumCore
import ContinuumProtocols

/// A client's session: read-your-writes and monotonic reads for a client that moves between
/// nodes (after Bayou's session guarantees), by carrying what the client has seen.
///
/// - For an `available` register the session keeps the join of every state it wrote or read.
///   Before it reads or updates at a node it joins that state into the node's replica, so the
///   node's state is at least what the client saw: the guarantee holds on any node, even one
///   cut off from the rest, and never waits. (The state travels with the client; for large
///   registers, prefer fewer moves.)
/// - For a `linearizable` register the session keeps the highest Raft log index it saw (of its
///   writes and reads). A read at another node waits, within its latency bound, until that
///   node has applied the index; otherwise it fails with `unavailable`, never with an older
///   value.
///
/// ```swift
/// let session = await cluster.node(1).openSession()
/// try await session.update("cart", as: GSet<String>.self, at: cluster.node(1)) { set, _ in set.insert("apple") }
/// let cart = try await session.read("cart", as: GSet<String>.self, at: cluster.node(2))
/// // cart.value contains "apple", whether or not gossip reached node 2 yet.
/// ```
///
/// Derived registers are computed at each node from their inputs: read the inputs through the
/// session to carry them. A session that saw a register someone later deleted and declared
/// again would carry the old state into the new register: open a new session after deletions
/// (`delete(_:at:)` through the session itself forgets the register).
public actor Session {
    /// The session's client number for linearizable writes (each write is applied once).
    public nonisolated let client: UInt64
    private var sequence: UInt64 = 0
    /// The join of the states seen per available register.
    private var seen: [String: AnyReplicated] = [:]
    /// The highest log index seen in linearizable operations.
    public private(set) var seenIndex: UInt64 = 0

    init(client: UInt64) { self.client = client }

    // MARK: Available registers

    /// Updates an available register at `node`, on top of everything this session saw of it.
    @discardableResult
    public func update<Value: Replicable>(
        _ name: String, as _: Value.Type, at node: Node, _ mutate: @escaping @Sendable (inout Value, ReplicaID) throws -> Value
    ) async throws(ContinuumError) -> Value {
        try await carry(name, to: node)
        let state = try await node.update(name, mutate)
        remember(name, AnyReplicated(state))
        return state
    }

    /// Reads an available register at `node` under `policy` (see `Register.read(_:)`); the
    /// value includes every state this session wrote or read before.
    public func read<Value: Replicable>(
        _ name: String, as type: Value.Type, at node: Node, _ policy: Policy = .available
    ) async throws(ContinuumError) -> ReadResult<Value> {
        switch policy {
        case .available, .bounded: return try await read(name, as: type, at: node, levels: policy.serviceLevels)
        case .linearizable, .serializable: throw .wrongPolicy(register: name, declared: .available)
        }
    }

    /// Reads an available register at `node` with ranked service levels.
    public func read<Value: Replicable>(
        _ name: String, as _: Value.Type, at node: Node, levels: [ServiceLevel]
    ) async throws(ContinuumError) -> ReadResult<Value> {
        try await carry(name, to: node)
        let result = try await Register<Value>(name: name, node: node).read(levels: levels)
        remember(name, AnyReplicated(result.value))
        return result
    }

    /// Deletes the register cluster-wide and forgets what this session saw of it.
    public func delete(_ name: String, at node: Node) async throws(ContinuumError) {
        try await node.delete(name)
        seen[name] = nil
    }

    private func carry(_ name: String, to node: Node) async throws(ContinuumError) {
        guard let state = seen[name] else { return }
        try await node.absorb(name, state)
    }

    private func remember(_ name: String, _ state: AnyReplicated) {
        seen[name] = seen[name].flatMap { $0.join(state) } ?? state
    }

    // MARK: Linearizable registers

    /// Writes a linearizable register through `node`.
    public func write(linearizable name: String, _ value: Int64?, at node: Node, latency: Duration = .seconds(1)) async throws(ContinuumError) {
        _ = try await run(.write(key: name, value: value), at: node, latency: latency)
    }

    /// Sets a linearizable register to `new` if it is `expected`; returns whether it did.
    public func compareAndSet(linearizable name: String, expected: Int64?, new: Int64?, at node: Node,
                              latency: Duration = .seconds(1)) async throws(ContinuumError) -> Bool {
        guard case let .compareAndSet(swapped) = try await run(.compareAndSet(key: name, expected: expected, new: new), at: node, latency: latency) else {
            throw .unavailable("unexpected result")
        }
        return swapped
    }

    /// Reads a linearizable register at `node` under `policy`: at least as new as everything
    /// this session saw. The default reads `node`'s replica whatever its staleness, waiting up
    /// to a second for it to reach the session's index.
    public func read(linearizable name: String, at node: Node,
                     _ policy: Policy = .bounded(staleness: nil, latency: .seconds(1))) async throws(ContinuumError) -> ReadResult<Int64?> {
        if policy == .serializable { throw .wrongPolicy(register: name, declared: .linearizable) }
        return try await read(linearizable: name, at: node, levels: policy.serviceLevels)
    }

    /// Reads a linearizable register at `node` with ranked service levels, at least as new as
    /// everything this session saw.
    public func read(linearizable name: String, at node: Node, levels: [ServiceLevel]) async throws(ContinuumError) -> ReadResult<Int64?> {
        let answer = try await node.raftBoundedRead(.read(key: name), levels: levels, minimumIndex: seenIndex).get()
        guard case let .value(value) = answer.result else { throw .unavailable("unexpected result \(answer.result)") }
        if case let .logIndex(index) = answer.receipt.version { seenIndex = max(seenIndex, index) }
        return ReadResult(value: value, receipt: answer.receipt)
    }

    private func run(_ operation: KeyValueOperation, at node: Node, latency: Duration) async throws(ContinuumError) -> KeyValueResult {
        sequence += 1
        switch await node.linearizable(operation, client: client, sequence: sequence, latency: latency) {
        case let .ok(result, index):
            seenIndex = max(seenIndex, index)
            return result
        case let .unavailable(reason): throw .unavailable(reason)
        case .indeterminate: throw .indeterminate
        }
    }
}
