import ContinuumCore
import ContinuumProtocols

/// A whole Continuum cluster inside one process: `N` nodes over an in-memory network, in real
/// time. How a newcomer starts, how an application tests itself (cut links, crash and restart
/// nodes), and what `continuum demo` uses.
///
/// ```swift
/// let cluster = await EmbeddedCluster(nodes: 3)
/// let cart = try await cluster.node(1).declare("cart", as: ORSet<String>.self)
/// try await cart.update { set, replica in set.insert("apple", replica: replica) }
/// let seenElsewhere = try await cluster.node(2).register("cart", as: ORSet<String>.self)
///     .read(atLeast: try await cart.read(), timeout: .seconds(2))
/// await cluster.shutdown()
/// ```
public final class EmbeddedCluster: Sendable {
    public let nodes: [Node]
    public let network: InMemoryNetwork

    /// Timings for a cluster inside one process: fast gossip and failure detection.
    /// All nodes share one clock, so the clock offset bound is small (scheduling delay only).
    public static let embeddedConfiguration = ReplicationInstance.Configuration(
        gossipInterval: .milliseconds(50), freshness: .init(maxClockOffset: .milliseconds(1)),
        membership: .init(probeInterval: .milliseconds(100), probeTimeout: .milliseconds(40), suspicionMultiplier: 3))

    /// Raft timings for a cluster inside one process.
    public static let embeddedRaftConfiguration = RaftInstance.Configuration(
        electionTimeoutMin: .milliseconds(150), heartbeatInterval: .milliseconds(30), maxClockOffset: .milliseconds(1))

    public init(nodes count: Int = 3, configuration: ReplicationInstance.Configuration = EmbeddedCluster.embeddedConfiguration,
                raftConfiguration: RaftInstance.Configuration = EmbeddedCluster.embeddedRaftConfiguration, seed: UInt64 = 1) async {
        precondition((1...256).contains(count), "an embedded cluster has 1 to 256 nodes, not \(count)")
        let members = (1...count).map { NodeID(UInt64($0)) }
        let network = InMemoryNetwork()
        // One epoch for the whole cluster: freshness certificates compare times across nodes.
        let clock = NodeClock(epoch: ContinuousClock().now)
        let nodes = members.map {
            Node(id: $0, members: members, configuration: configuration, raftConfiguration: raftConfiguration,
                 storage: MemoryStore(), transport: network, seed: seed &* 1_000_003 &+ $0.rawValue, clock: clock)
        }
        self.network = network
        self.nodes = nodes
        for node in nodes { network.attach(node) }
        // A memory store cannot fail to load.
        for node in nodes { try! await node.start() }
    }

    /// Node `index`, counting from 1 (node `n1`).
    public func node(_ index: Int) -> Node {
        precondition((1...nodes.count).contains(index), "no node \(index) in a cluster of \(nodes.count)")
        return nodes[index - 1]
    }

    /// Cuts node `index` off from every other node, both ways.
    public func isolate(_ index: Int) { network.isolate(node(index).id) }

    /// Delays every message to and from node `index` by `delay` each way (a slow node).
    public func slowDown(_ index: Int, by delay: Duration) { network.slowDown(node(index).id, by: delay) }

    /// Restores every link and removes every delay.
    public func healAll() { network.healAll() }

    /// Stops node `index` as a crash would: what it persisted survives, nothing else.
    public func crash(_ index: Int) async { await node(index).stop() }

    /// Restarts node `index` from what it persisted.
    public func restart(_ index: Int) async { try! await node(index).start() }

    /// Declares a register on every node (so that each has a handle and the declaration need
    /// not wait for gossip); returns the handles, node 1's first.
    public func declare<Value: Replicable>(_ name: String, as type: Value.Type, policy: Policy = .available) async throws(ContinuumError) -> [Register<Value>] {
        var handles: [Register<Value>] = []
        for node in nodes { handles.append(try await node.declare(name, as: type, policy: policy)) }
        return handles
    }

    public func shutdown() async {
        for node in nodes { await node.stop() }
    }
}
