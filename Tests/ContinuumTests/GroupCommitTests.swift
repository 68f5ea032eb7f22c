import Continuum
import Dispatch
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

/// A store whose flushes of CRDT patches wait until the test opens the gate; other flushes
/// take 1 ms.
final class GatedStore: NodeStorage {
    private let durable = Mutex(NodeDurableState())
    let gateOpen = Mutex(true)

    func load() -> NodeDurableState { durable.withLock { $0 } }

    func persist(_ patches: [DurablePatch]) async throws {
        let crdt = patches.contains { if case .replication = $0 { true } else { false } }
        try await Task.sleep(for: .milliseconds(1))
        while crdt, !gateOpen.withLock({ $0 }) { try await Task.sleep(for: .milliseconds(5)) }
        durable.withLock { state in for patch in patches { state.apply(patch) } }
    }
}

/// A store whose background writes (Raft compactions) wait until the test opens the gate;
/// it counts the compactions it was handed and keeps the last one's snapshot index.
final class CompactionGatedStore: NodeStorage {
    private let durable = Mutex(NodeDurableState())
    let gateOpen = Mutex(false)
    private let started = Mutex<[UInt64]>([])

    func load() -> NodeDurableState { durable.withLock { $0 } }

    func persist(_ patches: [DurablePatch]) async throws {
        durable.withLock { state in for patch in patches { state.apply(patch) } }
    }

    func persistInBackground(_ patch: DurablePatch) async throws {
        if case let .raft(raft) = patch { started.withLock { $0.append(raft.snapshot?.lastIndex ?? 0) } }
        while !gateOpen.withLock({ $0 }) { try await Task.sleep(for: .milliseconds(5)) }
        try await persist([patch])
    }

    /// The snapshot index of each compaction handed over, in order.
    var compactions: [UInt64] { started.withLock { $0 } }
}

/// Counts the Raft messages n1 sends, and passes every message on.
final class SendCounter: NodeTransport {
    private let network: InMemoryNetwork
    private let count = Mutex(0)

    init(_ network: InMemoryNetwork) { self.network = network }

    var fromFirst: Int { count.withLock { $0 } }

    func send(_ bytes: [UInt8], from: NodeID, to: NodeID) { network.send(bytes, from: from, to: to) }

    func send(_ bytes: [UInt8], from: NodeID, to: NodeID, lane: TransportLane) {
        if from == NodeID(1), lane == .consensus { count.withLock { $0 += 1 } }
        network.send(bytes, from: from, to: to, lane: lane)
    }
}

@Suite(.timeLimit(.minutes(1))) struct GroupCommitTests {
    /// Effects wait only for their own instance's patches: while a flush of CRDT writes is
    /// stuck for 1.5 s (ten election timeouts), the Raft leader's heartbeats still go out, so
    /// that every follower stays a follower of the same term (a pre-vote would change its role). Before, every send waited for every flush.
    @Test func raftHeartbeatsDoNotWaitForAFlushOfCRDTWrites() async throws {
        let stores = (1...3).map { _ in GatedStore() }
        let (nodes, elected) = try await Self.electedCluster(stores: stores, seed: 7)
        try await elected.declareLinearizable("x").write(1)
        var terms: [String] = []
        for node in nodes { terms.append(await node.consensusStatus.map { "\($0.role)@\($0.term)" } ?? "stopped") }
        // Every node's CRDT flushes now hang; CRDT writes keep coming at every node.
        for store in stores { store.gateOpen.withLock { $0 = false } }
        let writers = nodes.map { node in
            Task {
                for _ in 0..<3 { _ = try? await node.upsert("hits", as: GCounter.self) { counter, replica in (counter.increment(replica: replica), ()) } }
            }
        }
        try await Task.sleep(for: .milliseconds(1_500))
        var during: [String] = []
        for node in nodes { during.append(await node.consensusStatus.map { "\($0.role)@\($0.term)" } ?? "stopped") }
        for store in stores { store.gateOpen.withLock { $0 = true } }
        for writer in writers { await writer.value }
        #expect(during == terms, "a follower left its leader while CRDT flushes hung: roles and terms \(terms) -> \(during)")
        for node in nodes { await node.stop() }
    }

    /// Raft runs on a shell of its own (`ConsensusShell`), not on the node's actor: while one
    /// job holds every node's thread for 1.5 s (ten election timeouts), as a long join of a large
    /// CRDT would, the leader keeps its followers (same roles and terms) and a linearizable write
    /// commits. With Raft on the node's thread, the write waited for the job and the followers
    /// stood for election.
    @Test func consensusKeepsItsLeaderAndCommitsWhileEveryNodesThreadIsHeld() async throws {
        let (nodes, elected) = try await Self.electedCluster(stores: (1...3).map { _ in MemoryStore() }, seed: 11)
        let register = try await elected.declareLinearizable("x")
        try await register.write(1)
        var terms: [String] = []
        for node in nodes { terms.append(await node.consensusStatus.map { "\($0.role)@\($0.term)" } ?? "stopped") }
        let release = DispatchSemaphore(value: 0)
        let held = Mutex(0)
        for node in nodes {
            node.executor.run {
                held.withLock { $0 += 1 }
                release.wait()
            }
        }
        for _ in 0..<500 where held.withLock({ $0 }) < nodes.count { try await Task.sleep(for: .milliseconds(2)) }
        let committed = Mutex(false)
        let write = Task {
            try await register.write(2, latency: .seconds(1))
            committed.withLock { $0 = true }
        }
        try await Task.sleep(for: .milliseconds(1_500))
        var during: [String] = []
        for node in nodes { during.append(try await Self.status(of: node)) }
        let committedWhileHeld = committed.withLock { $0 }
        for _ in nodes { release.signal() }
        _ = try? await write.value
        #expect(held.withLock { $0 } == nodes.count, "the jobs did not hold every node's thread")
        #expect(during == terms, "consensus lost its leader while the nodes' threads were held: \(terms) -> \(during)")
        #expect(committedWhileHeld, "a linearizable write waited for the node's thread")
        for node in nodes { await node.stop() }
    }

    /// A node that stops sends no Raft message afterwards, even from jobs its Raft shell runs
    /// before it hears of the stop (the incarnation gate). Here n1's shell is held while the node
    /// stops, so its timers' jobs (a heartbeat or an election) wait ahead of the stop and run
    /// once the shell is let go.
    @Test func aStoppedNodesRaftShellSendsNothingBeforeItHearsOfTheStop() async throws {
        let network = InMemoryNetwork()
        let sent = SendCounter(network)
        let members = [NodeID(1), NodeID(2), NodeID(3)]
        let clock = NodeClock(epoch: ContinuousClock().now)
        let shell = NodeExecutor(label: "test.consensus.n1")
        let nodes = members.indices.map {
            Node(id: members[$0], members: members, configuration: EmbeddedCluster.embeddedConfiguration,
                 raftConfiguration: EmbeddedCluster.embeddedRaftConfiguration, storage: MemoryStore(), transport: sent,
                 seed: UInt64($0 + 21), clock: clock, consensusExecutor: $0 == 0 ? shell : nil)
        }
        for node in nodes { network.attach(node) }
        for node in nodes { try await node.start() }
        for _ in 0..<200 where sent.fromFirst == 0 { try await Task.sleep(for: .milliseconds(10)) }
        #expect(sent.fromFirst > 0, "n1's Raft sent nothing while it ran")
        let release = DispatchSemaphore(value: 0)
        shell.run { release.wait() }
        let stopping = Task { await nodes[0].stop() }
        for _ in 0..<500 where await nodes[0].isRunning { try await Task.sleep(for: .milliseconds(2)) }
        let atStop = sent.fromFirst
        // Ten election timeouts' worth of timers fire meanwhile; their jobs wait for the shell.
        try await Task.sleep(for: .milliseconds(1_500))
        release.signal()
        await stopping.value
        try await Task.sleep(for: .milliseconds(300))
        #expect(sent.fromFirst == atStop, "n1's Raft shell sent \(sent.fromFirst - atStop) messages after n1 stopped")
        for node in nodes { await node.stop() }
    }

    /// While one compaction is being written, later ones do not pile up (each holds a whole
    /// snapshot of the state): the newest replaces the one waiting, and is what the store gets
    /// next.
    @Test func compactionsWaitingBehindASlowOneKeepOnlyTheNewest() async throws {
        let stores = [CompactionGatedStore(), CompactionGatedStore(), CompactionGatedStore()]
        let (nodes, leader) = try await Self.electedCluster(stores: stores, seed: 40)
        // Past four snapshot thresholds (256 entries each) of writes to one key.
        for sequence in 1...1_200 {
            _ = await leader.linearizable(.write(key: "k", value: Int64(sequence)), client: 1, sequence: UInt64(sequence), latency: .seconds(5))
        }
        for (node, store) in zip(nodes, stores) {
            #expect(await node.compactionsPending <= 2, "one written, one waiting at most")
            #expect(store.compactions.count == 1, "only the first was handed over: \(store.compactions)")
        }
        for store in stores { store.gateOpen.withLock { $0 = true } }
        for _ in 0..<200 {
            var pending = 0
            for node in nodes { pending += await node.compactionsPending }
            if pending == 0 { break }
            try await Task.sleep(for: .milliseconds(10))
        }
        for (node, store) in zip(nodes, stores) {
            #expect(await node.compactionsPending == 0)
            #expect(store.compactions.count == 2, "the first, then the newest of the rest: \(store.compactions)")
            #expect(store.compactions.last! > 900)
        }
        for node in nodes { await node.stop() }
    }

    /// Nodes on `stores`, one each, started, and the leader they elected.
    private static func electedCluster(stores: [any NodeStorage], seed: UInt64) async throws -> (nodes: [Node], leader: Node) {
        let network = InMemoryNetwork()
        let members = stores.indices.map { NodeID(UInt64($0 + 1)) }
        let clock = NodeClock(epoch: ContinuousClock().now)
        let nodes = members.indices.map {
            Node(id: members[$0], members: members, configuration: EmbeddedCluster.embeddedConfiguration,
                 raftConfiguration: EmbeddedCluster.embeddedRaftConfiguration, storage: stores[$0], transport: network,
                 seed: UInt64($0) + seed, clock: clock)
        }
        for node in nodes { network.attach(node) }
        for node in nodes { try await node.start() }
        var leader: Node?
        for _ in 0..<200 where leader == nil {
            for node in nodes where await node.isLeader { leader = node }
            try await Task.sleep(for: .milliseconds(10))
        }
        return (nodes, try #require(leader, "no leader"))
    }

    /// `node`'s Raft role and term, or "no answer" when it gives none within 0.5 s (with Raft on
    /// a held thread, the answer would wait for the thread).
    private static func status(of node: Node) async throws -> String {
        let answer = Mutex<String?>(nil)
        Task {
            let status = await node.consensusStatus
            answer.withLock { $0 = status.map { "\($0.role)@\($0.term)" } ?? "stopped" }
        }
        for _ in 0..<100 where answer.withLock({ $0 }) == nil { try await Task.sleep(for: .milliseconds(5)) }
        return answer.withLock { $0 } ?? "no answer"
    }

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
                    let stored = stores[0].load().replication
                    #expect(stored?.slots["hits"] != nil, "acknowledged before it was durable")
                    // The register as a restart reads it: the last whole state and the deltas after it.
                    var durable = try GCounter(binary: try #require(stored?.slots["hits"]?.bytes))
                    for delta in stored?.deltas["hits"] ?? [] { durable.formJoin(try GCounter(binary: try #require(delta.bytes))) }
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
