import ContinuumCore
import ContinuumProtocols
import Synchronization

/// The embedded cluster's network: messages between nodes of one process, encoded to bytes and
/// decoded at the receiver as on a real wire, delivered asynchronously (and so possibly out of
/// order). Links can be cut one way or both, to try partitions in an application's own tests.
public final class InMemoryNetwork: Sendable {
    struct Link: Hashable {
        var from: NodeID
        var to: NodeID
    }

    private struct State {
        var nodes: [NodeID: Node] = [:]
        var cut: Set<Link> = []
        var bytesSent = 0
    }

    private let state = Mutex(State())

    public init() {}

    func attach(_ node: Node) { state.withLock { $0.nodes[node.id] = node } }

    /// Stops delivering messages from `from` to `to` (one way).
    public func cut(from: NodeID, to: NodeID) { _ = state.withLock { $0.cut.insert(Link(from: from, to: to)) } }

    /// Cuts every link to and from `node`.
    public func isolate(_ node: NodeID) {
        state.withLock { state in
            for other in state.nodes.keys where other != node {
                state.cut.insert(Link(from: node, to: other))
                state.cut.insert(Link(from: other, to: node))
            }
        }
    }

    public func healAll() { state.withLock { $0.cut.removeAll() } }

    /// Encoded bytes handed to the network so far.
    public var bytesSent: Int { state.withLock { $0.bytesSent } }

    func send(_ message: NodeMessage, from: NodeID, to: NodeID) {
        let bytes = message.binaryEncoded()
        let target: Node? = state.withLock { state in
            state.bytesSent += bytes.count
            guard !state.cut.contains(Link(from: from, to: to)) else { return nil }
            return state.nodes[to]
        }
        guard let target else { return }
        Task { await target.deliver(bytes, from: from) }
    }
}

/// What travels between nodes: the messages of the node's protocol instances.
public enum NodeMessage: Sendable, Equatable, BinaryCodable {
    case replication(ReplicationMessage)
    case raft(RaftMessage)
    case transaction(TransactionMessage)

    public func encode(to writer: inout BinaryWriter) {
        switch self {
        case let .transaction(message):
            writer.writeByte(2)
            message.encode(to: &writer)
        case let .replication(message):
            writer.writeByte(0)
            message.encode(to: &writer)
        case let .raft(message):
            writer.writeByte(1)
            message.encode(to: &writer)
        }
    }

    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        switch try reader.readByte() {
        case 0: self = .replication(try ReplicationMessage(from: &reader))
        case 1: self = .raft(try RaftMessage(from: &reader))
        case 2: self = .transaction(try TransactionMessage(from: &reader))
        case let tag: throw .invalid("node message tag \(tag)")
        }
    }
}

/// What a node has persisted, kept outside the node so that it survives the node's crash and
/// restart within the process (memory-only durability; disk storage is its own layer).
public final class MemoryStore: Sendable {
    private let replication = Mutex<ReplicaDurableState?>(nil)
    private let raft = Mutex<RaftDurableState?>(nil)
    private let transactions = Mutex<TransactionDurableState?>(nil)

    public init() {}

    func load() -> ReplicaDurableState? { replication.withLock { $0 } }
    func loadRaft() -> RaftDurableState? { raft.withLock { $0 } }
    func loadTransactions() -> TransactionDurableState? { transactions.withLock { $0 } }

    func persist(_ patch: TransactionDurableState) {
        transactions.withLock { TransactionInstance.accumulate(patch, into: &$0) }
    }

    func persist(_ patch: ReplicaDurableState) {
        replication.withLock { ReplicationInstance.accumulate(patch, into: &$0) }
    }

    func persist(_ patch: RaftDurableState) {
        raft.withLock { RaftInstance.accumulate(patch, into: &$0) }
    }
}
