import ContinuumCore
import ContinuumProtocols
import Synchronization

/// What one protocol instance asks to make durable (docs/design.md: durable before acknowledged).
public enum DurablePatch: Sendable, Equatable {
    case replication(ReplicaDurableState)
    case raft(RaftDurableState)
    case transactions(TransactionDurableState)
}

/// Everything a node persisted: what its protocol instances restart from.
public struct NodeDurableState: Sendable, Equatable {
    public var replication: ReplicaDurableState?
    public var raft: RaftDurableState?
    public var transactions: TransactionDurableState?

    public init(replication: ReplicaDurableState? = nil, raft: RaftDurableState? = nil, transactions: TransactionDurableState? = nil) {
        self.replication = replication
        self.raft = raft
        self.transactions = transactions
    }

    /// Applies a patch as its instance defines it.
    public mutating func apply(_ patch: DurablePatch) {
        switch patch {
        case let .replication(patch): ReplicationInstance.accumulate(patch, into: &replication)
        case let .raft(patch): RaftInstance.accumulate(patch, into: &raft)
        case let .transactions(patch): TransactionInstance.accumulate(patch, into: &transactions)
        }
    }
}

/// Where a node keeps what it must not lose. The node sends nothing and acknowledges nothing
/// that depends on a patch before `persist` returned for it. A node hands over its patches in
/// batches (group commit: one flush covers every patch produced while the previous flush ran).
public protocol NodeStorage: Sendable {
    /// What was persisted (on a new store: nothing).
    func load() throws -> NodeDurableState
    /// Makes `patches` durable, in order and all together, before returning.
    func persist(_ patches: [DurablePatch]) async throws
    /// The same, calling `completion` (with nil, or the error) once they are durable, on any
    /// thread, possibly before this returns. A store whose writes run on a thread of its own
    /// calls it from there.
    func persist(_ patches: [DurablePatch], then completion: @escaping @Sendable ((any Error)?) -> Void)
    /// For stores that persist at once without blocking (memory): persists and returns true.
    /// Others return false and get `persist`.
    func persistImmediately(_ patches: [DurablePatch]) -> Bool
    /// Makes a patch that acknowledges nothing durable (a Raft compaction), possibly in
    /// pieces that let later `persist` batches go in between. Called only once every patch
    /// before it is durable; nothing waits for it.
    func persistInBackground(_ patch: DurablePatch) async throws
}

extension NodeStorage {
    public func persistImmediately(_ patches: [DurablePatch]) -> Bool { false }
    public func persist(_ patches: [DurablePatch], then completion: @escaping @Sendable ((any Error)?) -> Void) {
        Task {
            do {
                try await persist(patches)
                completion(nil)
            } catch {
                completion(error)
            }
        }
    }
    public func persistInBackground(_ patch: DurablePatch) async throws { try await persist([patch]) }
}

/// How a node's messages reach the other nodes. Inbound messages are handed to
/// `Node.deliver(_:from:)`. Sending never blocks and may drop (the protocols retry).
public protocol NodeTransport: Sendable {
    func send(_ bytes: [UInt8], from: NodeID, to: NodeID)
    /// Sends a message of one mechanism. A transport may give each lane its own connection, so
    /// that one mechanism's traffic (a burst of CRDT deltas) never queues ahead of another's (a
    /// Raft heartbeat), nor fills a buffer that drops the other's frames.
    func send(_ bytes: [UInt8], from: NodeID, to: NodeID, lane: TransportLane)
}

extension NodeTransport {
    /// One lane for all: the messages keep the order they were sent in.
    public func send(_ bytes: [UInt8], from: NodeID, to: NodeID, lane: TransportLane) { send(bytes, from: from, to: to) }
}

/// The mechanism a message belongs to, for transports that keep them apart. `membership` is
/// the failure detector (SWIM probes): it must measure whether a node is alive, not how many
/// deltas wait ahead of the probe.
public enum TransportLane: Int, Sendable, CaseIterable {
    case replication, consensus, transactions, membership
}

/// A node's clock: a monotonic time since an epoch that the cluster's nodes share (for
/// freshness certificates, which compare times of different nodes).
public struct NodeClock: Sendable {
    private let clock = ContinuousClock()
    private let start: ContinuousClock.Instant
    private let offset: Duration

    /// Time since `epoch`, an instant of this process's continuous clock (one process).
    public init(epoch: ContinuousClock.Instant) {
        start = epoch
        offset = .zero
    }

    /// Time since the Unix epoch as the wall clock said when the process started, advanced by
    /// the monotonic clock (so that it never jumps): comparable across machines within their
    /// clock offset bound.
    public static func wall() -> NodeClock {
        NodeClock(start: ContinuousClock().now, offset: .nanoseconds(wallClockNanoseconds()))
    }

    private init(start: ContinuousClock.Instant, offset: Duration) {
        self.start = start
        self.offset = offset
    }

    public var now: Duration { clock.now - start + offset }
}

/// What a node has persisted, kept outside the node so that it survives the node's crash and
/// restart within the process (memory-only durability).
public final class MemoryStore: NodeStorage {
    private let state = Mutex(NodeDurableState())

    public init() {}

    public func load() -> NodeDurableState { state.withLock { $0 } }

    public func persist(_ patches: [DurablePatch]) async throws { _ = persistImmediately(patches) }

    public func persistImmediately(_ patches: [DurablePatch]) -> Bool {
        state.withLock { state in for patch in patches { state.apply(patch) } }
        return true
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The wall clock, in nanoseconds since the Unix epoch (read once, at a node's start).
public func wallClockNanoseconds() -> Int64 {
    var spec = timespec()
    clock_gettime(CLOCK_REALTIME, &spec)
    return Int64(spec.tv_sec) * 1_000_000_000 + Int64(spec.tv_nsec)
}
