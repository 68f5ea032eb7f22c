import ContinuumCore
import ContinuumProtocols
import Synchronization

/// The embedded cluster's network: messages between nodes of one process, encoded to bytes and
/// decoded at the receiver as on a real wire, delivered asynchronously (and so possibly out of
/// order). Links can be cut one way or both, to try partitions in an application's own tests.
public final class InMemoryNetwork: NodeTransport {
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

    /// Connects `node`: messages to its id are delivered to it.
    public func attach(_ node: Node) { state.withLock { $0.nodes[node.id] = node } }

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

    public func send(_ bytes: [UInt8], from: NodeID, to: NodeID) {
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
