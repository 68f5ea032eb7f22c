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
        var delays: [Link: Duration] = [:]
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

    /// Restores every link and removes every delay.
    public func healAll() {
        state.withLock { state in
            state.cut.removeAll()
            state.delays.removeAll()
        }
    }

    /// Delays every message from `from` to `to` by `delay` (one way; zero removes the delay):
    /// a slow link, or with every link of a node, a slow node.
    public func delay(from: NodeID, to: NodeID, by delay: Duration) {
        precondition(delay >= .zero, "a delay cannot be negative: \(delay)")
        state.withLock { $0.delays[Link(from: from, to: to)] = delay == .zero ? nil : delay }
    }

    /// Delays every message to and from `node` by `delay` each way.
    public func slowDown(_ node: NodeID, by delay: Duration) {
        let others = state.withLock { Array($0.nodes.keys) }.filter { $0 != node }
        for other in others {
            self.delay(from: node, to: other, by: delay)
            self.delay(from: other, to: node, by: delay)
        }
    }

    /// Encoded bytes handed to the network so far.
    public var bytesSent: Int { state.withLock { $0.bytesSent } }

    func send(_ message: NodeMessage, from: NodeID, to: NodeID) {
        let bytes = message.binaryEncoded()
        let (target, delay): (Node?, Duration?) = state.withLock { state in
            state.bytesSent += bytes.count
            let link = Link(from: from, to: to)
            guard !state.cut.contains(link) else { return (nil, nil) }
            return (state.nodes[to], state.delays[link])
        }
        guard let target else { return }
        Task {
            if let delay { try? await Task.sleep(for: delay) }
            await target.deliver(bytes, from: from)
        }
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
