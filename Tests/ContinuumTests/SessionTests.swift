import Continuum
import ContinuumCore
import Testing

/// Session guarantees for a client that moves between nodes.
@Suite(.timeLimit(.minutes(1))) struct SessionTests {
    @Test func anAvailableSessionReadsItsWritesOnANodeThatNeverHeardOfThem() async throws {
        let cluster = await EmbeddedCluster(nodes: 3)
        _ = try await cluster.declare("cart", as: GSet<String>.self)
        cluster.isolate(2)
        cluster.isolate(3)
        let session = await cluster.node(1).openSession()
        try await session.update("cart", as: GSet<String>.self, at: cluster.node(1)) { set, _ in set.insert("apple") }
        // Node 2 is cut off: a plain read there does not see the write, the session's does.
        let plain = try await cluster.node(2).register("cart", as: GSet<String>.self).read()
        #expect(!plain.elements.contains("apple"))
        let moved = try await session.read("cart", as: GSet<String>.self, at: cluster.node(2))
        #expect(moved.value.elements.contains("apple"), "read-your-writes on another node")
        // Monotonic reads: node 3 only has its own update, the session also saw the apple.
        try await cluster.node(3).register("cart", as: GSet<String>.self).update { set, _ in set.insert("pear") }
        let atThird = try await session.read("cart", as: GSet<String>.self, at: cluster.node(3))
        #expect(atThird.value.elements == ["apple", "pear"])
        // Back on node 2: nothing seen before is missing.
        let again = try await session.read("cart", as: GSet<String>.self, at: cluster.node(2))
        #expect(again.value.elements.isSuperset(of: atThird.value.elements))
        // An update on top of what the session saw (writes follow reads).
        let after = try await session.update("cart", as: GSet<String>.self, at: cluster.node(2)) { set, _ in set.insert("fig") }
        #expect(after.elements == ["apple", "pear", "fig"])
        await cluster.shutdown()
    }

    @Test func aLinearizableSessionNeverReadsBehindWhatItSaw() async throws {
        let cluster = await EmbeddedCluster(nodes: 3)
        let tests = LinearizableRegisterTests()
        let first = try await cluster.node(1).declareLinearizable("stock")
        try await tests.untilAvailable { try await first.write(1, latency: .seconds(3)) }
        let leader = await (1...3).asyncFirst { await cluster.node($0).isLeader } ?? 1
        let follower = leader == 3 ? 2 : 3
        // Once the follower has applied the first write, it stops hearing anything.
        let atFollower = try await cluster.node(follower).declareLinearizable("stock")
        for _ in 0..<250 where try await atFollower.read(.available).value != 1 { try await Task.sleep(for: .milliseconds(20)) }
        cluster.isolate(follower)
        let session = await cluster.node(leader).openSession()
        try await tests.untilAvailable {
            try await session.write(linearizable: "stock", 2, at: cluster.node(leader), latency: .milliseconds(500))
        }
        #expect(await session.seenIndex > 0)
        // A plain local read at the follower returns the old value; the session's read refuses.
        let plain = try await atFollower.read(.available)
        #expect(plain.value == 1)
        do {
            let stale = try await session.read(linearizable: "stock", at: cluster.node(follower),
                                               .bounded(staleness: nil, latency: .milliseconds(200)))
            Issue.record("the session read \(stale.value) behind its own write")
        } catch {
            guard case .unavailable = error else {
                Issue.record("expected unavailable, got \(error)")
                return
            }
        }
        // Once the follower catches up, the same read succeeds with the session's write.
        cluster.healAll()
        let caughtUp = try await session.read(linearizable: "stock", at: cluster.node(follower),
                                              .bounded(staleness: nil, latency: .seconds(3)))
        #expect(caughtUp.value == 2)
        #expect(caughtUp.version == .logIndex(await session.seenIndex))
        await cluster.shutdown()
    }
}

extension ClosedRange<Int> {
    func asyncFirst(where predicate: (Int) async -> Bool) async -> Int? {
        for value in self where await predicate(value) { return value }
        return nil
    }
}
