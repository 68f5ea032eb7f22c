import Continuum
import Testing

/// Serializable transactions on the embedded cluster, in real time.
@Suite(.timeLimit(.minutes(1))) struct TransactionTests {
    func transfer(_ node: Node, amount: Int64, latency: Duration = .milliseconds(500)) async throws {
        try await node.transaction(latency: latency) { tx in
            let from = try await tx.readInt("alice") ?? 100
            let to = try await tx.readInt("bob") ?? 100
            guard from >= amount else { throw ContinuumError.refused("insufficient funds") }
            try await tx.write("alice", .int(from - amount))
            try await tx.write("bob", .int(to + amount))
        }
    }

    func balances(_ node: Node) async throws -> (Int64?, Int64?) {
        try await node.transaction { tx in (try await tx.readInt("alice"), try await tx.readInt("bob")) }
    }

    @Test func transfersCommitAtEveryReplica() async throws {
        let cluster = await EmbeddedCluster(nodes: 3)
        defer { Task { await cluster.shutdown() } }
        try await transfer(cluster.node(1), amount: 30)
        try await transfer(cluster.node(2), amount: 20)
        let (alice, bob) = try await balances(cluster.node(3))
        #expect(alice == 50 && bob == 150)
        await #expect(throws: ContinuumError.refused("insufficient funds")) { try await transfer(cluster.node(1), amount: 80) }
        #expect(try await balances(cluster.node(2)) == (50, 150))
        // Single operations run as one-operation transactions.
        try await cluster.node(3).write(serializable: "tags", .list([1, 2]))
        #expect(try await cluster.node(1).read(serializable: "tags") == .list([1, 2]))
    }

    @Test func aCutOffReplicaStopsTransactionsButNotAvailableUpdates() async throws {
        let cluster = await EmbeddedCluster(nodes: 3)
        defer { Task { await cluster.shutdown() } }
        let visits = try await cluster.declare("visits", as: GCounter.self)
        try await transfer(cluster.node(1), amount: 10)
        cluster.isolate(3)
        let clock = ContinuousClock()
        let started = clock.now
        await #expect(throws: ContinuumError.self) { try await transfer(cluster.node(1), amount: 10, latency: .milliseconds(300)) }
        #expect(clock.now - started < .seconds(1), "the transaction did not stop within its latency bound")
        // The available register keeps taking updates on both sides.
        try await visits[0].update { counter, replica in counter.increment(replica: replica) }
        try await visits[2].update { counter, replica in counter.increment(replica: replica) }
        cluster.healAll()
        // After the heal: transactions commit again (retrying while n3's stale locks expire).
        var committed = false
        for _ in 0..<100 where !committed {
            committed = (try? await transfer(cluster.node(2), amount: 5, latency: .milliseconds(300))) != nil
            if !committed { try await Task.sleep(for: .milliseconds(50)) }
        }
        #expect(committed)
        let (alice, bob) = try await balances(cluster.node(3))
        #expect(alice == 85 && bob == 115, "the failed transfer left no effect")
    }

    @Test func stalenessBoundedReadsServeAReplicasCommittedStateEvenCutOff() async throws {
        let cluster = await EmbeddedCluster(nodes: 3)
        defer { Task { await cluster.shutdown() } }
        try await transfer(cluster.node(1), amount: 30)
        // Every replica prepared the transfer before it was acknowledged: once decided at n2,
        // n2's committed state misses nothing acknowledged, without locks.
        var read = try await cluster.node(2).read(serializable: "alice", .bounded(staleness: .zero, latency: .seconds(1)))
        #expect(read.value == .int(70) && read.staleness == .zero && read.replicas.count == 1)
        // Cut off, n3 still certifies staleness 0: nothing can commit without its vote.
        cluster.isolate(3)
        read = try await cluster.node(3).read(serializable: "alice", .bounded(staleness: .zero, latency: .milliseconds(200)))
        #expect(read.value == .int(70) && read.guarantee == .bounded(staleness: .zero))
        // The transactional read locks at every replica: linearizable, here with all replicas named.
        cluster.healAll()
        var locked: ReadResult<TransactionValue?>?
        for _ in 0..<100 where locked == nil {
            locked = try? await cluster.node(1).read(serializable: "alice", .serializable)
            if locked == nil { try await Task.sleep(for: .milliseconds(50)) }
        }
        #expect(locked?.value == .int(70) && locked?.guarantee == .linearizable && locked?.replicas.count == 3)
    }
}
