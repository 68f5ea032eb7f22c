import ContinuumCore
import ContinuumProtocols

/// A handle to a linearizable register: an integer (or absent), replicated by Raft; and, under
/// the same name in a separate namespace, a CRDT (counter, set, flag, max register) whose
/// operations the log applies in order, so that its reads are linearizable too. Every
/// operation takes a latency bound. On the side of a partition without a majority, or while
/// no leader is known, operations fail with `unavailable` (definitely not applied); a write
/// whose latency bound passes after it reached a leader fails with `indeterminate` (it may
/// still take effect). Each handle is one client: its requests are numbered, so that the
/// state machine applies a request once.
public actor LinearizableRegister {
    public nonisolated let name: String
    public nonisolated let node: Node
    /// What `read(latency:)` gives: `linearizable`, `bounded(staleness:latency:)` or `available`.
    public nonisolated let policy: Policy
    private let client: UInt64
    private var sequence: UInt64 = 0

    init(name: String, node: Node, client: UInt64, policy: Policy = .linearizable) {
        self.name = name
        self.node = node
        self.client = client
        self.policy = policy
    }

    /// The value under the handle's policy: linearizably by default (a ReadIndex round, or a
    /// leader lease when enabled), within `latency` (1 s unless given); under
    /// `bounded(staleness: S, latency: L)`, no older than S within `latency` (L unless given);
    /// under `available`, this replica's value at once.
    public func read(latency: Duration? = nil) async throws(ContinuumError) -> Int64? {
        switch policy {
        case let .bounded(staleness, bound):
            return try await read(.bounded(staleness: staleness, latency: latency ?? bound)).value
        case .available:
            return try await read(.available).value
        case .linearizable, .serializable:
            guard case let .value(value) = try await run(.read(key: name), latency: latency ?? .seconds(1)) else {
                throw .unavailable("unexpected result")
            }
            return value
        }
    }

    /// The value under `policy`, with what was delivered: `.linearizable` through a read index
    /// from the leader; `.bounded(staleness: S, latency: L)` from this replica when the
    /// leader's last lease-stamped heartbeat certifies it no older than S, else through a read
    /// index, failing with `stalenessBoundUnmet` at L; `.available` the local value at once.
    public func read(_ policy: Policy) async throws(ContinuumError) -> ReadResult<Int64?> {
        if policy == .serializable { throw .wrongPolicy(register: name, declared: .linearizable) }
        return try await read(levels: policy.serviceLevels)
    }

    /// The value with ranked service levels (after Pileus), such as "linearizable within
    /// 20 ms, else staleness ≤ 1 s within 50 ms, else whatever is local".
    public func read(levels: [ServiceLevel]) async throws(ContinuumError) -> ReadResult<Int64?> {
        let answer = try await node.raftBoundedRead(.read(key: name), levels: levels, minimumIndex: 0).get()
        guard case let .value(value) = answer.result else { throw .unavailable("unexpected result \(answer.result)") }
        return ReadResult(value: value, receipt: answer.receipt)
    }

    public func write(_ value: Int64?, latency: Duration = .seconds(1)) async throws(ContinuumError) {
        _ = try await run(.write(key: name, value: value), latency: latency)
    }

    /// Sets the value to `new` if it is `expected`; returns whether it did.
    public func compareAndSet(expected: Int64?, new: Int64?, latency: Duration = .seconds(1)) async throws(ContinuumError) -> Bool {
        guard case let .compareAndSet(swapped) = try await run(.compareAndSet(key: name, expected: expected, new: new), latency: latency) else {
            throw .unavailable("unexpected result")
        }
        return swapped
    }

    /// Applies a CRDT operation in log order and returns the CRDT's state right after it.
    @discardableResult
    public func apply(_ operation: CRDTOperation, latency: Duration = .seconds(1)) async throws(ContinuumError) -> LogCRDT {
        switch try await run(.crdt(key: name, operation), latency: latency) {
        case let .crdt(state?): return state
        case .crdtKindMismatch: throw .refused("'\(name)' holds another kind of CRDT than \(operation) applies to")
        default: throw .unavailable("unexpected result")
        }
    }

    /// The CRDT's state, linearizably; nil when no operation was applied yet.
    public func readCRDT(latency: Duration = .seconds(1)) async throws(ContinuumError) -> LogCRDT? {
        guard case let .crdt(state) = try await run(.crdtRead(key: name), latency: latency) else {
            throw .unavailable("unexpected result")
        }
        return state
    }

    private func run(_ operation: KeyValueOperation, latency: Duration) async throws(ContinuumError) -> KeyValueResult {
        sequence += 1
        switch await node.linearizable(operation, client: client, sequence: sequence, latency: latency) {
        case let .ok(result, _): return result
        case let .unavailable(reason): throw .unavailable(reason)
        case .indeterminate: throw .indeterminate
        }
    }
}
