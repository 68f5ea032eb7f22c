import Continuum
import ContinuumCore
import Testing

/// A bounded policy as a register's default, and per-operation overrides.
@Suite(.timeLimit(.minutes(1))) struct DefaultPolicyTests {
    @Test func aRegisterDeclaredBoundedReadsUnderItsBound() async throws {
        let cluster = await EmbeddedCluster(nodes: 3)
        let strict = try await cluster.declare("news", as: GSet<String>.self, policy: .bounded(staleness: .zero, latency: .milliseconds(100)))
        try await strict[0].update { set, _ in set.insert("headline") }
        #expect(try await strict[1].read().elements.contains("headline"), "S = 0: every replica was asked")
        cluster.isolate(3)
        // Nobody can vouch for n3's writes now: the declared bound refuses, the override serves.
        await #expect(throws: ContinuumError.self) { try await strict[0].read() }
        let local = try await strict[0].read(.available)
        #expect(local.value.elements.contains("headline") && local.guarantee != .linearizable)
        await #expect(throws: ContinuumError.wrongPolicy(register: "news", declared: .linearizable)) {
            try await cluster.node(1).declare("news", as: GSet<String>.self, policy: .linearizable)
        }
        await cluster.shutdown()
    }

    @Test func aLinearizableRegisterDeclaredBoundedServesACutOffFollowerWithinItsBound() async throws {
        let cluster = await EmbeddedCluster(nodes: 3)
        let writer = try await cluster.node(1).declareLinearizable("price")
        try await LinearizableRegisterTests().untilAvailable { try await writer.write(9, latency: .seconds(3)) }
        let leader = await (1...3).asyncFirst { await cluster.node($0).isLeader } ?? 1
        let follower = leader == 3 ? 2 : 3
        let relaxed = try await cluster.node(follower).declareLinearizable("price", policy: .bounded(staleness: .seconds(30), latency: .milliseconds(200)))
        let strict = try await cluster.node(follower).declareLinearizable("price")
        for _ in 0..<250 where try await relaxed.read(.available).value != 9 { try await Task.sleep(for: .milliseconds(20)) }
        _ = try await relaxed.read()  // a certificate from the leader's stamped heartbeats
        cluster.isolate(follower)
        #expect(try await relaxed.read() == 9, "within 30 s of its last certificate")
        await #expect(throws: ContinuumError.self) { try await strict.read(latency: .milliseconds(200)) }
        await cluster.shutdown()
    }
}
