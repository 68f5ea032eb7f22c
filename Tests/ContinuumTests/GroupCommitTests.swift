import Continuum
import ContinuumCore
import ContinuumProtocols
import Synchronization
import Testing

/// A store that takes a while to make things durable, as a disk does, and records its batches.
final class SlowStore: NodeStorage {
    private let durable = Mutex(NodeDurableState())
    private let batchSizes = Mutex<[Int]>([])

    func load() -> NodeDurableState { durable.withLock { $0 } }

    func persist(_ patches: [DurablePatch]) async throws {
        try await Task.sleep(for: .milliseconds(5))
        durable.withLock { state in for patch in patches { state.apply(patch) } }
        batchSizes.withLock { $0.append(patches.count) }
    }

    var batches: [Int] { batchSizes.withLock { $0 } }
}

@Suite(.timeLimit(.minutes(1))) struct GroupCommitTests {
    @Test func updatesAreAcknowledgedOnlyOnceDurableAndFlushesCoverManyOfThem() async throws {
        let network = InMemoryNetwork()
        let members = [NodeID(1), NodeID(2)]
        let stores = [SlowStore(), SlowStore()]
        let clock = NodeClock(epoch: ContinuousClock().now)
        let nodes = members.indices.map {
            Node(id: members[$0], members: members, configuration: EmbeddedCluster.embeddedConfiguration,
                 raftConfiguration: EmbeddedCluster.embeddedRaftConfiguration, storage: stores[$0], transport: network,
                 seed: UInt64($0), clock: clock)
        }
        for node in nodes { network.attach(node) }
        for node in nodes { try await node.start() }
        let counter = try await nodes[0].declare("hits", as: GCounter.self)
        // Forty concurrent updates: each returns only once its state is in the store.
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<40 {
                group.addTask {
                    let after = try await counter.update { counter, replica in counter.increment(replica: replica) }
                    let stored = stores[0].load().replication?.slots["hits"]
                    #expect(stored != nil, "acknowledged before it was durable")
                    let durable = try GCounter(binary: try #require(stored?.bytes))
                    #expect(durable.value >= after.value, "acknowledged \(after.value) with \(durable.value) durable")
                }
            }
            try await group.waitForAll()
        }
        let batches = stores[0].batches
        #expect(batches.reduce(0, +) >= 41)
        #expect(batches.count < 41, "one flush per update: no group commit (\(batches))")
        // A restart from the slow store has every acknowledged update.
        await nodes[0].stop()
        try await nodes[0].start()
        #expect(try await counter.read().value == 40)
        for node in nodes { await node.stop() }
    }
}
