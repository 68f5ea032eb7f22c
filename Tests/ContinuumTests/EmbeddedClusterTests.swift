import Continuum
import ContinuumCore
import Testing

/// The runtime API on an embedded cluster, in real time. Waiting is done with threshold reads
/// and change streams (bounded by timeouts), never with sleeps.
@Suite(.timeLimit(.minutes(1))) struct EmbeddedClusterTests {
    static let patience: Duration = .seconds(10)

    @Test func anUpdateOnOneNodeReachesTheOthers() async throws {
        let cluster = await EmbeddedCluster(nodes: 3)
        defer { Task { await cluster.shutdown() } }
        let carts = try await cluster.declare("cart", as: ORSet<String>.self)
        let afterAdd = try await carts[0].update { set, replica in set.insert("apple", replica: replica) }
        #expect(afterAdd.elements == ["apple"])
        for cart in carts.dropFirst() {
            let seen = try await cart.read(atLeast: afterAdd, timeout: Self.patience)
            #expect(seen.elements == ["apple"])
        }
    }

    @Test func anIsolatedNodeKeepsAcceptingWritesAndConvergesAfterTheHeal() async throws {
        let cluster = await EmbeddedCluster(nodes: 3)
        defer { Task { await cluster.shutdown() } }
        let counters = try await cluster.declare("visits", as: GCounter.self)
        cluster.isolate(3)
        // Updates on both sides of the cut return without waiting for the network.
        let isolated = try await counters[2].update { counter, replica in counter.increment(by: 5, replica: replica) }
        let majority = try await counters[0].update { counter, replica in counter.increment(by: 7, replica: replica) }
        #expect(isolated.value == 5)
        #expect(majority.value == 7)
        await #expect(throws: ContinuumError.timedOut(after: .milliseconds(300))) {
            try await counters[2].read(atLeast: majority, timeout: .milliseconds(300))
        }
        cluster.healAll()
        let both = isolated.join(majority)
        for counter in counters {
            #expect(try await counter.read(atLeast: both, timeout: Self.patience).value == 12)
        }
    }

    @Test func thresholdReadsCanBeCancelled() async throws {
        let cluster = await EmbeddedCluster(nodes: 1)
        defer { Task { await cluster.shutdown() } }
        let flag = try await cluster.node(1).declare("flag", as: MaxRegister<UInt64>.self)
        let waiter = Task { try await flag.read(atLeast: MaxRegister(10)) }
        waiter.cancel()
        await #expect(throws: ContinuumError.cancelled) { try await waiter.value }
        try await flag.update { register, _ in register.write(12) }
        #expect(try await flag.read(atLeast: MaxRegister(10), timeout: Self.patience).value == 12)
    }

    @Test func changesStreamTheStatesAndEndOnDelete() async throws {
        let cluster = await EmbeddedCluster(nodes: 2)
        defer { Task { await cluster.shutdown() } }
        let sets = try await cluster.declare("tags", as: GSet<String>.self)
        let stream = await sets[1].changes()
        try await sets[0].update { set, _ in set.insert("a") }
        try await sets[0].update { set, _ in set.insert("b") }
        var seen: [Set<String>] = []
        for await state in stream {
            seen.append(state.elements)
            if state.elements == ["a", "b"] { break }
        }
        #expect(seen.first == [])
        #expect(seen.last == ["a", "b"])
        // A deletion on node 1 ends node 2's stream and its reads fail.
        let ending = await sets[1].changes()
        try await sets[0].delete()
        for await _ in ending {}
        await #expect(throws: ContinuumError.deleted(register: "tags")) { try await sets[1].read() }
    }

    @Test func derivedRegistersFollowTheirInputs() async throws {
        let cluster = await EmbeddedCluster(nodes: 2)
        defer { Task { await cluster.shutdown() } }
        let node = cluster.node(2)
        let vendorA = try await cluster.node(1).declare("vendor-a", as: ORSet<String>.self)
        let vendorB = try await cluster.node(1).declare("vendor-b", as: ORSet<String>.self)
        let localA = try await node.declare("vendor-a", as: ORSet<String>.self)
        let localB = try await node.declare("vendor-b", as: ORSet<String>.self)
        let all = try await localA.union(localB, into: "ads")
        let shortNames = try await localA.filter("short-a") { $0.count <= 4 }
        let shouted = try await shortNames.mapElements("shouted-a") { $0.uppercased() }
        let longest = try await localA.fold("longest-a") { MaxRegister<Int>($0.count) }
        try await vendorA.update { set, replica in set.insert("shoes", replica: replica) }
        try await vendorA.update { set, replica in set.insert("tea", replica: replica) }
        let b = try await vendorB.update { set, replica in set.insert("hats", replica: replica) }
        let a = try await vendorA.read()
        let union = try await all.read(atLeast: Union(a, b), timeout: Self.patience)
        #expect(union.elements == ["shoes", "tea", "hats"])
        #expect(try await shouted.read().elements == ["TEA"])
        #expect(try await longest.read().value == 5)
        // A removal flows through filter and map too.
        let afterRemove = try await vendorA.update { set, _ in set.remove("tea") }
        _ = try await localA.read(atLeast: afterRemove, timeout: Self.patience)
        #expect(try await shouted.read().elements == [])
    }

    @Test func aRestartedNodeKeepsWhatItAcknowledged() async throws {
        let cluster = await EmbeddedCluster(nodes: 3)
        defer { Task { await cluster.shutdown() } }
        let counters = try await cluster.declare("count", as: PNCounter.self)
        cluster.isolate(2)
        let acknowledged = try await counters[1].update { counter, replica in counter.add(-4, replica: replica) }
        await cluster.crash(2)
        await #expect(throws: ContinuumError.nodeStopped) { try await counters[1].read() }
        await cluster.restart(2)
        #expect(try await counters[1].read() == acknowledged)
        cluster.healAll()
        #expect(try await counters[0].read(atLeast: acknowledged, timeout: Self.patience).value == -4)
    }

    @Test func errorsAreTypedAndChangeNothing() async throws {
        let cluster = await EmbeddedCluster(nodes: 1)
        defer { Task { await cluster.shutdown() } }
        let node = cluster.node(1)
        await #expect(throws: ContinuumError.notDeclared(register: "nope")) {
            try await node.register("nope", as: GCounter.self).read()
        }
        _ = try await node.declare("stock", as: BoundedCounter.self)
        await #expect(throws: ContinuumError.self) { try await node.declare("stock", as: GCounter.self) }
        let stock = node.register("stock", as: BoundedCounter.self)
        await #expect(throws: ContinuumError.self) {
            try await stock.update { counter, replica in try counter.decrement(by: 1, replica: replica) }
        }
        #expect(try await stock.read() == BoundedCounter())
        await #expect(throws: ContinuumError.invalidName("")) { try await node.declare("", as: GCounter.self) }
    }
}
