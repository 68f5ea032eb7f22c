import Continuum
import ContinuumCore
import ContinuumProtocols
import Synchronization
import Testing

/// Passes messages on to a network and records the lane of each, by kind.
final class LaneRecorder: NodeTransport {
    let network: InMemoryNetwork
    private let seen = Mutex<[String: Set<TransportLane>]>([:])

    init(_ network: InMemoryNetwork) { self.network = network }

    func send(_ bytes: [UInt8], from: NodeID, to: NodeID) { send(bytes, from: from, to: to, lane: .replication) }

    func send(_ bytes: [UInt8], from: NodeID, to: NodeID, lane: TransportLane) {
        if let message = try? NodeMessage(binary: bytes) {
            let kind = switch message {
            case .raft: "raft"
            case .replication(.membership): "membership"
            case .replication(.deltas): "deltas"
            case .replication: "other replication"
            case .transaction: "transaction"
            }
            seen.withLock { _ = $0[kind, default: []].insert(lane) }
        }
        network.send(bytes, from: from, to: to, lane: lane)
    }

    var lanes: [String: Set<TransportLane>] { seen.withLock { $0 } }
}

/// The failure detector measures whether a node is alive, not how much work waits for it: its
/// probes travel apart from deltas and are handled ahead of them, as consensus is. A probe that
/// waited behind seconds of deltas made a busy replica look dead (2 to 18 reachability changes
/// per run of the set benchmark on a 3-node cluster, none after).
@Suite(.timeLimit(.minutes(1))) struct FailureDetectorPriorityTests {
    @Test func probesTravelOnTheirOwnLaneAndGoAheadOfDeltas() async throws {
        let network = InMemoryNetwork()
        let transport = LaneRecorder(network)
        let members = [NodeID(1), NodeID(2)]
        let clock = NodeClock(epoch: ContinuousClock().now)
        let nodes = members.map {
            Node(id: $0, members: members, configuration: EmbeddedCluster.embeddedConfiguration,
                 raftConfiguration: EmbeddedCluster.embeddedRaftConfiguration, storage: MemoryStore(), transport: transport,
                 seed: $0.rawValue, clock: clock)
        }
        for node in nodes { network.attach(node) }
        for node in nodes { try await node.start() }
        let cart = try await nodes[0].declare("cart", as: GSet<String>.self)
        for _ in 0..<100 where transport.lanes["membership"] == nil || transport.lanes["deltas"] == nil {
            try await cart.update { set, _ in set.insert("tea") }
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(transport.lanes["membership"] == [.membership])
        #expect(transport.lanes["deltas"] == [.replication])
        for node in nodes { await node.stop() }
    }

    @Test func consensusAndMembershipAreUrgentAndDeltasAreNot() {
        #expect(Node.isUrgent(.replication(.membership(.ping(sequence: 1, updates: [])))))
        #expect(!Node.isUrgent(.replication(.deltas(epoch: 1, batch: 0, since: 1, [], certificate: nil, relay: RelayReport(sentAt: 0)))))
        #expect(Node.isUrgent(.raft(.vote(term: 1, granted: true, preVote: false))))
    }
}
