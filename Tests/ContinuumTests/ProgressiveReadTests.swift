import Continuum
import ContinuumCore
import Testing

/// Progressive reads (after Correctables): the local view first, then the answer asked for.
@Suite(.timeLimit(.minutes(1))) struct ProgressiveReadTests {
    @Test func anAvailableRegisterGivesItsLocalViewThenAFreshOne() async throws {
        let cluster = await EmbeddedCluster(nodes: 3)
        let pages = try await cluster.declare("pages", as: GSet<String>.self)
        try await pages[0].update { set, _ in set.insert("index.html") }
        var updates: [ReadUpdate<GSet<String>>] = []
        for try await update in pages[0].progressiveRead(levels: [.staleness(.zero, within: .seconds(2))]) { updates.append(update) }
        #expect(updates.map(\.isFinal) == [false, true])
        #expect(updates[0].value.elements.contains("index.html"), "the local view holds the local write")
        #expect(updates[1].result.staleness == .zero && updates[1].result.replicas.count == 3)
        await cluster.shutdown()
    }

    @Test func aLinearizableRegisterGivesTheReplicaValueThenTheLinearizableOneOrTheError() async throws {
        let cluster = await EmbeddedCluster(nodes: 3)
        let writer = try await cluster.node(1).declareLinearizable("price")
        try await LinearizableRegisterTests().untilAvailable { try await writer.write(7, latency: .seconds(3)) }
        let follower = try await cluster.node(2).declareLinearizable("price")
        var updates: [ReadUpdate<Int64?>] = []
        for try await update in follower.progressiveRead(.linearizable) { updates.append(update) }
        #expect(updates.map(\.isFinal) == [false, true])
        #expect(updates[1].guarantee == .linearizable && updates[1].value == 7)
        #expect(updates[0].guarantee != .linearizable)

        // Cut off, the preliminary view still comes; the final answer fails by its bound.
        cluster.isolate(3)
        let cutOff = try await cluster.node(3).declareLinearizable("price")
        var seen: [ReadUpdate<Int64?>] = []
        do {
            for try await update in cutOff.progressiveRead(levels: [.linearizable(within: .milliseconds(100))]) { seen.append(update) }
            Issue.record("a cut-off replica answered linearizably")
        } catch {
            #expect(error is ContinuumError)
        }
        #expect(seen.count == 1 && seen.first?.isFinal == false)
        await cluster.shutdown()
    }
}
