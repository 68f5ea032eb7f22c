import Continuum
import ContinuumCore
import ContinuumProtocols
import Testing

/// The router: one typed command, the mechanism of the register's policy.
@Suite(.timeLimit(.minutes(1))) struct RouterTests {
    /// Runs `command` until the cluster has a leader (idempotent commands only).
    func untilServed(_ router: Router, _ command: RegisterCommand, _ caller: inout RouterCaller) async throws -> RegisterAnswer {
        for _ in 0..<250 {
            do {
                return try await router.run(command, as: &caller)
            } catch .unavailable, .indeterminate {
                try await Task.sleep(for: .milliseconds(20))
            }
        }
        throw ContinuumError.unavailable("no leader after 250 attempts")
    }

    @Test func eachPolicyGoesToItsMechanism() async throws {
        let cluster = await EmbeddedCluster(nodes: 3)
        let router = Router(node: cluster.node(1), defaultPolicy: .available)
        var caller = RouterCaller()
        try await router.declare(policy: .linearizable, for: "balance")
        try await router.declare(policy: .serializable, for: "account")
        #expect(router.policy(of: "balance") == .linearizable && router.policy(of: "account") == .serializable)
        #expect(router.policy(of: "hits") == .available)

        // Available: the node's own PN-counter, nothing in the Raft log.
        #expect(try await router.run(.add(key: "hits", amount: 2), as: &caller) == .integer(2))
        #expect(try await router.run(.get(key: "hits"), as: &caller) == .bytes(Array("2".utf8), receipt: nil))
        #expect(try await cluster.node(1).register("hits", as: PNCounter.self).read().value == 2)
        #expect(caller.client == nil, "no linearizable request was made")

        // Linearizable: through the log; another node's router reads it there.
        _ = try await untilServed(router, .set(key: "balance", value: Array("5".utf8)), &caller)
        #expect(try await router.run(.add(key: "balance", amount: 3), as: &caller) == .integer(8))
        #expect(caller.client != nil && caller.sequence >= 2)
        await #expect(throws: ContinuumError.notDeclared(register: "balance")) {
            try await cluster.node(1).register("balance", as: PNCounter.self).read()
        }
        let elsewhere = Router(node: cluster.node(2), defaultPolicy: .linearizable)
        var other = RouterCaller()
        #expect(try await untilServed(elsewhere, .get(key: "balance"), &other) == .bytes(Array("8".utf8), receipt: nil))

        // Serializable: integers in transactions at every replica.
        _ = try await untilServed(router, .set(key: "account", value: Array("7".utf8)), &caller)
        #expect(try await router.run(.add(key: "account", amount: 3), as: &caller) == .integer(10))
        #expect(try await cluster.node(3).read(serializable: "account") == .int(10))
        await #expect(throws: ContinuumError.invalidRequest("value is not an integer or out of range")) {
            try await router.run(.set(key: "account", value: Array("x".utf8)), as: &caller)
        }

        // Sets in place under `available`; a read may not ask more than the declaration gives.
        #expect(try await router.run(.changeSet(key: "tags", members: ["a", "b", "a"], insert: true), as: &caller) == .integer(2))
        #expect(try await router.run(.count(key: "tags"), as: &caller) == .integer(2))
        #expect(try await router.run(.contains(key: "tags", member: "b"), as: &caller) == .boolean(true))
        #expect(try await router.run(.members(key: "tags"), as: &caller) == .members(["a", "b"]))
        await #expect(throws: ContinuumError.wrongPolicy(register: "tags", declared: .available)) {
            try await router.run(.read(key: "tags", policy: .linearizable), as: &caller)
        }
        await #expect(throws: ContinuumError.self) { try await router.run(.changeSet(key: "account", members: ["a"], insert: true), as: &caller) }

        // DEL: each key by its mechanism; a missing key counts nothing.
        #expect(try await router.run(.delete(keys: ["hits", "balance", "missing"]), as: &caller) == .integer(2))
        #expect(try await router.run(.get(key: "hits"), as: &caller) == .bytes(nil, receipt: nil))
        #expect(try await router.run(.get(key: "balance"), as: &caller) == .bytes(nil, receipt: nil))
        await cluster.shutdown()
    }

    /// A command larger than the router's limit is refused before anything is applied.
    @Test func aCommandPastItsLimitChangesNothing() async throws {
        let cluster = await EmbeddedCluster(nodes: 3)
        let router = Router(node: cluster.node(1), defaultPolicy: .available, commandBytesMax: 1_024)
        var caller = RouterCaller()
        await #expect(throws: ContinuumError.self) {
            try await router.run(.set(key: "big", value: Array(repeating: 7, count: 2_000)), as: &caller)
        }
        await #expect(throws: ContinuumError.self) {
            try await router.run(.changeSet(key: "tags", members: (0..<200).map { "member \($0)" }, insert: true), as: &caller)
        }
        #expect(try await router.run(.get(key: "big"), as: &caller) == .bytes(nil, receipt: nil))
        #expect(try await router.run(.count(key: "tags"), as: &caller) == .integer(0))
        #expect(try await router.run(.set(key: "small", value: Array(repeating: 7, count: 1_000)), as: &caller) == .done)
        await cluster.shutdown()
    }

    /// A CRDT declared `linearizable` lives in the Raft log and answers with the log's receipt.
    @Test func aCRDTDeclaredLinearizableIsAppliedInLogOrder() async throws {
        let cluster = await EmbeddedCluster(nodes: 3)
        let router = Router(node: cluster.node(1), defaultPolicy: .linearizable)
        var caller = RouterCaller()
        _ = try await untilServed(router, .declare(key: "votes", kind: .counter), &caller)
        #expect(try await router.run(.apply(key: "votes", operation: .counterAdd(4)), as: &caller) == .state(.counter(counter(4)), receipt: nil))
        guard case let .state(state, receipt?) = try await router.run(.read(key: "votes"), as: &caller) else {
            Issue.record("a read without a receipt")
            return
        }
        #expect(state.map { RegisterKind($0) } == .counter)
        #expect(receipt.guarantee == .linearizable)
        guard case .logIndex = receipt.version else {
            Issue.record("a linearizable read reported \(receipt.version)")
            return
        }
        await #expect(throws: ContinuumError.self) { try await router.run(.declare(key: "votes", kind: .set), as: &caller) }
        await cluster.shutdown()
    }

    private func counter(_ value: Int64) -> PNCounter {
        var counter = PNCounter()
        _ = counter.add(value, replica: ReplicaID(0))
        return counter
    }
}

/// `declare(_:as:policy:)` for every policy its mechanism can serve.
@Suite(.timeLimit(.minutes(1))) struct LinearizableCRDTDeclarationTests {
    @Test func aCounterDeclaredLinearizableCountsInLogOrderAtEveryNode() async throws {
        let cluster = await EmbeddedCluster(nodes: 3)
        let first = try await LinearizableRegisterTests().untilAvailable {
            try await cluster.node(1).declare("votes", as: PNCounter.self, policy: .linearizable)
        }
        let second = try await cluster.node(2).declare("votes", as: PNCounter.self, policy: .linearizable)
        #expect(try await first.apply(.counterAdd(4)).value == 4)
        #expect(try await second.apply(.counterAdd(3)).value == 7, "node 2 applies after node 1's entry")
        let read = try await cluster.node(3).declare("votes", as: PNCounter.self, policy: .linearizable).read(.linearizable)
        #expect(read.value.value == 7 && read.guarantee == .linearizable)
        guard case .logIndex = read.version else {
            Issue.record("a linearizable read reported \(read.version)")
            return
        }
        // Nothing of it is in the nodes' available registers.
        await #expect(throws: ContinuumError.notDeclared(register: "votes")) {
            try await cluster.node(1).register("votes", as: PNCounter.self).read()
        }
        // Closures cannot be ordered by the log; another kind of register under the name is refused.
        await #expect(throws: ContinuumError.self) { try await first.update { counter, replica in counter.add(1, replica: replica) } }
        await #expect(throws: ContinuumError.self) { try await cluster.node(1).declare("votes", as: ORSet<String>.self, policy: .linearizable) }
        // Types the log cannot hold still answer `wrongPolicy`.
        await #expect(throws: ContinuumError.wrongPolicy(register: "g", declared: .linearizable)) {
            try await cluster.node(1).declare("g", as: GSet<String>.self, policy: .linearizable)
        }
        try await first.delete()
        #expect(try await second.read().value == 0)
        await cluster.shutdown()
    }

    @Test func aSetDeclaredLinearizableIsTheSameRegisterTheRouterServes() async throws {
        let cluster = await EmbeddedCluster(nodes: 3)
        let tags = try await LinearizableRegisterTests().untilAvailable {
            try await cluster.node(1).declare("tags", as: ORSet<String>.self, policy: .linearizable)
        }
        _ = try await tags.apply(.setInsert("a"))
        _ = try await tags.apply(.setInsert("b"))
        let router = Router(node: cluster.node(2), defaultPolicy: .linearizable)
        var caller = RouterCaller()
        #expect(try await router.run(.changeSet(key: "tags", members: ["b", "c"], insert: true), as: &caller) == .integer(1))
        #expect(try await tags.read().elements == ["a", "b", "c"])
        await cluster.shutdown()
    }
}
