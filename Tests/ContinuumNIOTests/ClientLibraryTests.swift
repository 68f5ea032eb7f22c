import Continuum
import ContinuumCore
import ContinuumNIO
import Foundation
import Testing

/// The Swift client library against three in-process node servers.
@Suite(.serialized) struct ClientLibraryTests {
    func addresses(_ cluster: LocalCluster) -> [String] { cluster.servers.map { "127.0.0.1:\($0.boundRESPPort!)" } }

    /// Retries while the cluster elects its first leader.
    func served<T>(_ body: () async throws(ContinuumError) -> T) async throws -> T {
        for _ in 0..<250 {
            do {
                return try await body()
            } catch {
                guard case .unavailable = error else { throw error }
                try await Task.sleep(for: .milliseconds(20))
            }
        }
        throw ContinuumError.unavailable("no leader")
    }

    @Test func registersOfEveryPolicyThroughTheClient() async throws {
        let cluster = try await LocalCluster()
        let nodes = addresses(cluster)
        // The first address refuses connections: the client moves on to the next.
        let client = try await ContinuumClient.connect(to: ["127.0.0.1:1"] + nodes)
        #expect(await client.connectedNode == nodes[0])
        let other = try await ContinuumClient.connect(to: [nodes[2]])

        // Available: a PN-counter updated at n1, merged into n3 by anti-entropy.
        let views = try await client.declare("views", as: PNCounter.self, policy: .available)
        #expect(try await views.increment(by: 5) == 5)
        #expect(try await views.increment(by: -2) == 3)
        // n3 may not have the declaration yet (it comes by gossip): until then the key routes
        // under the default policy, linearizable, which needs a leader.
        let remoteViews = try await served { () async throws(ContinuumError) in try await other.declare("views", as: PNCounter.self) }
        var seen: Int64 = 0
        for _ in 0..<250 where seen != 3 {
            seen = try await remoteViews.read().value
            if seen != 3 { try await Task.sleep(for: .milliseconds(20)) }
        }
        #expect(seen == 3)
        let bounded = try await views.read(.bounded(staleness: .seconds(2), latency: .milliseconds(500)))
        #expect(bounded.value.value == 3)
        guard case let .bounded(staleness) = bounded.guarantee else {
            Issue.record("a bounded read delivered \(bounded.guarantee)")
            return
        }
        #expect(staleness <= .seconds(2))
        #expect(bounded.replicas.contains(ReplicaID(1)))

        // Linearizable: a set in the Raft log; another node reads the write at once.
        let tags = try await served { () async throws(ContinuumError) in
            try await client.declare("tags", as: ORSet<String>.self, policy: .linearizable)
        }
        #expect(try await tags.insert("a") == ["a"])
        #expect(try await tags.insert("b") == ["a", "b"])
        #expect(try await tags.remove("a") == ["b"])
        let remoteTags = try await other.declare("tags", as: ORSet<String>.self)
        let linearizable = try await remoteTags.read(.linearizable)
        #expect(linearizable.value.elements == ["b"])
        #expect(linearizable.guarantee == .linearizable)
        guard case let .logIndex(index) = linearizable.version else {
            Issue.record("a linearizable read reported \(linearizable.version)")
            return
        }
        #expect(index >= 3)

        // Flags and max registers; a type mismatch is refused as in the embedded cluster.
        let flag = try await client.declare("maintenance", as: EWFlag.self, policy: .available)
        try await flag.enable()
        #expect(try await flag.read().isEnabled)
        let high = try await client.declare("high", as: MaxRegister<UInt64>.self, policy: .available)
        #expect(try await high.write(7) == 7)
        #expect(try await high.write(3) == 7)
        do {
            _ = try await client.declare("views", as: ORSet<String>.self)
            Issue.record("a counter was declared again as a set")
        } catch {
            // The node's own typed error, read back from its reply line.
            guard case let .typeMismatch(register: "views", declared, requested) = error, declared.hasSuffix("PNCounter"),
                  requested.contains("ORSet") else {
                Issue.record("expected a type mismatch, got \(error)")
                return
            }
        }
        // An available register refuses a linearizable read.
        do {
            _ = try await views.read(.linearizable)
            Issue.record("an available register answered a linearizable read")
        } catch {
            guard case .wrongPolicy(register: "views", declared: .available) = error else {
                Issue.record("expected the register's policy, got \(error)")
                return
            }
        }

        // Strings under the default (linearizable) policy and a serializable integer.
        let greeting = try client.string("greeting")
        try await greeting.set("hello")
        #expect(try await other.string("greeting").get() == Array("hello".utf8))
        try await client.declarePolicy("balance", .serializable)
        #expect(try await client.string("balance").increment(by: 10) == 10)
        #expect(await (try? client.policy(of: "balance")) == "serializable")

        // Cut n3 off: a read needing 100 ms freshness fails with the best it could certify.
        #expect(try await cluster.clients[2].send(["CONTINUUM.PARTITION", "n1", "n2"]) == .ok)
        try await Task.sleep(for: .milliseconds(600))
        do {
            _ = try await remoteViews.read(.bounded(staleness: .milliseconds(100), latency: .milliseconds(50)))
            Issue.record("a cut-off node served a 100 ms bound")
        } catch {
            guard case let .stalenessBoundUnmet(best) = error else {
                Issue.record("expected stalenessBoundUnmet, got \(error)")
                return
            }
            #expect(best.map { $0 > .milliseconds(100) } ?? true, "the best it could certify (\(String(describing: best))) is too old")
        }
        #expect(try await cluster.clients[2].send(["CONTINUUM.HEAL"]) == .ok)

        await client.close()
        await other.close()
        await cluster.shutdown()
    }

    @Test func theClientMovesToAnotherNodeWhenItsNodeStops() async throws {
        let cluster = try await LocalCluster()
        let nodes = addresses(cluster)
        let client = try await ContinuumClient.connect(to: nodes)
        let counter = try await client.declare("hits", as: PNCounter.self, policy: .available)
        #expect(try await counter.increment() == 1)
        let tags = try await served { () async throws(ContinuumError) in
            try await client.declare("tags", as: ORSet<String>.self, policy: .linearizable)
        }
        try await tags.insert("x")
        await cluster.servers[0].stop()
        // The next commands go to n2: the linearizable set is there at once (n2 and n3 are a
        // majority), the counter once gossip brought it (it was merged before the stop, or not).
        let after = try await served { () async throws(ContinuumError) in try await tags.read(.linearizable) }
        #expect(after.value.elements == ["x"])
        #expect(await client.connectedNode != nodes[0], "n1 is stopped")
        #expect(try await tags.insert("y") == ["x", "y"])
        await client.close()
        await cluster.shutdown()
    }

    @Test func badInputIsRefusedBeforeAnythingIsSent() async throws {
        await #expect(throws: ContinuumError.invalidRequest("no node addresses")) { try await ContinuumClient.connect(to: []) }
        await #expect(throws: ContinuumError.invalidRequest("'nonsense' is not host:port")) {
            try await ContinuumClient.connect(to: ["nonsense"])
        }
        do {
            _ = try await ContinuumClient.connect(to: ["127.0.0.1:1"], configuration: .init(connectTimeout: .milliseconds(200)))
            Issue.record("connected to a closed port")
        } catch {
            guard case .unavailable = error else {
                Issue.record("expected unavailable, got \(error)")
                return
            }
        }
    }
}

@Suite(.serialized) struct ClientConcurrencyTests {
    /// One client used by many tasks at once: every command gets its own reply.
    @Test func concurrentCommandsOnOneClientGetTheirOwnReplies() async throws {
        let cluster = try await LocalCluster()
        // Without the session, each answer is the node's state right after that command (with
        // it, an answer also holds what concurrent commands of this client already saw).
        let client = try await ContinuumClient.connect(to: cluster.servers.map { "127.0.0.1:\($0.boundRESPPort!)" },
                                                       configuration: .init(session: false))
        let counter = try await client.declare("hits", as: PNCounter.self, policy: .available)
        let names = try await client.declare("names", as: ORSet<String>.self, policy: .available)
        typealias Answer = (index: Int, count: Int64?, set: Set<String>?)
        let results: [Answer] = try await withThrowingTaskGroup(of: Answer.self) { group in
            for index in 0..<40 {
                group.addTask {
                    if index.isMultiple(of: 2) { return (index, try await counter.increment(), nil) }
                    return (index, nil, try await names.insert("n\(index)"))
                }
            }
            var all: [Answer] = []
            for try await answer in group { all.append(answer) }
            return all
        }
        // Increments at one node answer 1...20, each once; every insert's answer contains its element.
        let counts: [Int64] = results.compactMap { $0.count }
        #expect(counts.sorted() == Array(1...20))
        let inserts: [(Int, Set<String>)] = results.compactMap { answer in answer.set.map { (answer.index, $0) } }
        #expect(inserts.count == 20)
        for (index, set) in inserts { #expect(set.contains("n\(index)"), "insert n\(index) answered \(set.sorted())") }
        #expect(try await counter.read().value == 20)
        #expect(try await names.read().elements.count == 20)
        await client.close()
        await cluster.shutdown()
    }
}

@Suite(.serialized) struct RESPClientConcurrencyTests {
    /// Many tasks on one RESP connection: each gets the reply to its own command.
    @Test func concurrentSendsOnOneConnectionGetTheirOwnReplies() async throws {
        let cluster = try await LocalCluster(nodes: 1)
        let client = cluster.clients[0]
        for round in 0..<20 {
            let mismatches = await withTaskGroup(of: Int.self) { group in
                for index in 0..<100 {
                    group.addTask {
                        let word = "r\(round)-\(index)"
                        return (try? await client.send(["ECHO", word])) == .bulk(Array(word.utf8)) ? 0 : 1
                    }
                }
                return await group.reduce(0, +)
            }
            #expect(mismatches == 0, "round \(round): \(mismatches) of 100 replies went to another command")
        }
        await cluster.shutdown()
    }
}

@Suite(.serialized) struct ClientSessionTests {
    /// A register declared at a node cut off from the others, which then stops: the client
    /// moves to a node the declaration never reached, and that node routes the register as
    /// declared, because the client carries the declaration.
    @Test func aDeclarationTravelsWithItsRegister() async throws {
        let cluster = try await LocalCluster()
        let nodes = cluster.servers.map { "127.0.0.1:\($0.boundRESPPort!)" }
        #expect(try await cluster.clients[0].send(["CONTINUUM.PARTITION", "n2", "n3"]) == .ok)
        let client = try await ContinuumClient.connect(to: [nodes[0], nodes[1]])
        let views = try await client.declare("views", as: PNCounter.self, policy: .available)
        #expect(try await cluster.clients[1].send(["CONTINUUM.POLICY", "views"]) == .bulk("linearizable (default)"))
        await cluster.servers[0].stop()
        try await Task.sleep(for: .milliseconds(100))
        #expect(try await views.increment(by: 2) == 2)
        #expect(await client.connectedNode == nodes[1])
        #expect(try await cluster.clients[1].send(["CONTINUUM.POLICY", "views"]) == .bulk("available"))
        #expect(try await cluster.clients[1].send(["GET", "views"]) == .bulk("2"), "n2 holds it as an available counter")
        // A declaration that does not decode is refused, and changes nothing.
        let refused = try await cluster.clients[1].send([Array("CONTINUUM.READ".utf8), Array("views".utf8), Array("DECLARATION".utf8), [1, 2]])
        #expect(refused.description.contains("does not decode"))
        await client.close()
        await cluster.shutdown()
    }

    /// A client writes at n1, which is cut off and then stops before anti-entropy carries the
    /// write; the client moves to n2, which has not heard of it, and still reads its write. A
    /// client without the session reads n2's older state (the test can tell the difference).
    @Test func aClientReadsItsOwnWritesAfterMovingToANodeThatMissedThem() async throws {
        let cluster = try await LocalCluster()
        let nodes = cluster.servers.map { "127.0.0.1:\($0.boundRESPPort!)" }
        let client = try await ContinuumClient.connect(to: nodes)
        let cart = try await client.declare("cart", as: ORSet<String>.self, policy: .available)
        let views = try await client.declare("views", as: PNCounter.self, policy: .available)
        try await cart.insert("bread")
        try await views.increment(by: 1)
        // Both reach n2 by anti-entropy, and the declarations with them. The observer declares
        // at n2 only once n2 routes both keys as available: before, its declaration would go
        // to the default policy's mechanism (Raft, which may have no leader yet in a new cluster).
        for _ in 0..<250 {
            if try await cluster.clients[1].send(["CONTINUUM.POLICY", "cart"]) == .bulk("available"),
               try await cluster.clients[1].send(["CONTINUUM.POLICY", "views"]) == .bulk("available") { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        let observer = try await ContinuumClient.connect(to: [nodes[1]], configuration: .init(session: false))
        let observedCart = try await observer.declare("cart", as: ORSet<String>.self)
        let observedViews = try await observer.declare("views", as: PNCounter.self)
        for _ in 0..<250 {
            if try await observedCart.read().elements == ["bread"], try await observedViews.read().value == 1 { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(try await observedCart.read().elements == ["bread"])

        #expect(try await cluster.clients[0].send(["CONTINUUM.PARTITION", "n2", "n3"]) == .ok)
        #expect(try await cart.insert("tea") == ["bread", "tea"])
        #expect(try await views.increment(by: 2) == 3)
        await cluster.servers[0].stop()

        let after = try await cart.read(.available)
        let moved = await client.connectedNode
        #expect(moved == nodes[1] || moved == nodes[2], "n1 is stopped")
        #expect(after.value.elements == ["bread", "tea"], "read-your-writes after the move")
        #expect(try await views.read().value == 3)
        // n2 itself has not heard of them: what a client without a session reads there.
        #expect(try await observedCart.read().elements == ["bread"])
        #expect(try await observedViews.read().value == 1)
        // A write at n2 joins the session's state: nothing the client saw goes missing.
        #expect(try await cart.insert("jam") == ["bread", "jam", "tea"])
        await client.close()
        await observer.close()
        await cluster.shutdown()
    }
}
