import Continuum
import ContinuumCore
import Testing

/// Linearizable registers on the embedded cluster, in real time.
@Suite(.timeLimit(.minutes(1))) struct LinearizableRegisterTests {
    /// Retries, as a client would, every 20 ms for up to 5 s, until a leader is elected (a
    /// fresh cluster has none for an election timeout).
    func untilAvailable<T: Sendable>(_ attempt: @Sendable () async throws -> T) async throws -> T {
        for _ in 0..<250 {
            do {
                return try await attempt()
            } catch let error as ContinuumError {
                switch error {
                case .unavailable, .indeterminate: try await Task.sleep(for: .milliseconds(20))
                default: throw error
                }
            }
        }
        throw ContinuumError.unavailable("no leader after 250 attempts")
    }

    @Test func writesReadsAndCompareAndSetAcrossNodes() async throws {
        let cluster = await EmbeddedCluster(nodes: 3)
        defer { Task { await cluster.shutdown() } }
        let atFirst = try await cluster.node(1).declareLinearizable("balance")
        let atSecond = try await cluster.node(2).declareLinearizable("balance")
        _ = try await untilAvailable { try await atFirst.compareAndSet(expected: nil, new: 100, latency: .milliseconds(300)) }
        #expect(try await atSecond.read() == 100)
        #expect(try await atSecond.compareAndSet(expected: 100, new: 70) == true)
        #expect(try await atFirst.compareAndSet(expected: 100, new: 50) == false)
        #expect(try await atFirst.read() == 70)
        await #expect(throws: ContinuumError.wrongPolicy(register: "balance", declared: .linearizable)) {
            try await cluster.node(1).declare("balance", as: GCounter.self, policy: .linearizable)
        }
    }

    @Test func crdtOperationsApplyInLogOrder() async throws {
        let cluster = await EmbeddedCluster(nodes: 3)
        defer { Task { await cluster.shutdown() } }
        let registers = try await (1...3).asyncMap { try await cluster.node($0).declareLinearizable("stock") }
        _ = try await untilAvailable { try await registers[0].apply(.counterAdd(10), latency: .milliseconds(300)) }
        // Concurrent increments from all three nodes: each returns the state right after it.
        let results = try await withThrowingTaskGroup(of: LogCRDT.self) { group in
            for register in registers { group.addTask { try await register.apply(.counterAdd(-1)) } }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        let values = results.compactMap { if case let .counter(counter) = $0 { counter.value } else { nil } }.sorted()
        #expect(values == [7, 8, 9], "each decrement saw the ones ordered before it")
        guard case let .counter(final)? = try await registers[2].readCRDT() else {
            Issue.record("the stock is not a counter")
            return
        }
        #expect(final.value == 7)
        await #expect(throws: ContinuumError.self) { try await registers[1].apply(.setInsert("x")) }
    }

    @Test func theMinorityFailsFastWhileTheMajorityKeepsServing() async throws {
        let cluster = await EmbeddedCluster(nodes: 3)
        defer { Task { await cluster.shutdown() } }
        let registers = try await (1...3).asyncMap { try await cluster.node($0).declareLinearizable("x") }
        try await untilAvailable { try await registers[0].write(1, latency: .milliseconds(300)) }
        cluster.isolate(3)
        // An election timeout later the cut-off node knows it has no leader.
        try await Task.sleep(for: .milliseconds(400))
        let clock = ContinuousClock()
        let started = clock.now
        await #expect(throws: ContinuumError.self) { try await registers[2].write(2, latency: .seconds(2)) }
        await #expect(throws: ContinuumError.self) { _ = try await registers[2].read(latency: .seconds(2)) }
        let elapsed = clock.now - started
        #expect(elapsed < .seconds(2), "the minority took \(elapsed) to refuse")
        do {
            try await registers[2].write(3, latency: .seconds(2))
        } catch let error {
            #expect(error == .unavailable("no leader known"))
        }
        // The majority side still serves.
        try await untilAvailable { try await registers[0].write(4, latency: .milliseconds(300)) }
        #expect(try await untilAvailable { try await registers[1].read(latency: .milliseconds(300)) } == 4)
        cluster.healAll()
        #expect(try await untilAvailable { try await registers[2].read(latency: .milliseconds(300)) } == 4)
    }
}

extension ClosedRange where Bound == Int {
    func asyncMap<T>(_ transform: (Int) async throws -> T) async rethrows -> [T] {
        var results: [T] = []
        for value in self { results.append(try await transform(value)) }
        return results
    }
}

/// Spry bounds on reads in the embedded cluster.
extension LinearizableRegisterTests {
    @Test func boundedReadsOfBothMechanismsSayWhatTheyDelivered() async throws {
        let cluster = await EmbeddedCluster(nodes: 3)
        let pages = try await cluster.declare("pages", as: GSet<String>.self)
        try await pages[0].update { set, _ in set.insert("index.html") }
        // Ask-all at S = 0: every replica answered after the read began.
        let fresh = try await pages[1].read(.bounded(staleness: .zero, latency: .seconds(2)))
        #expect(fresh.value.elements.contains("index.html"))
        #expect(fresh.staleness == .zero && fresh.replicas.count == 3)
        // Unbounded staleness answers at once with the local state and its certificate.
        let local = try await pages[2].read(.available)
        #expect(local.receipt.level == 0)

        let balance = try await cluster.node(1).declareLinearizable("balance")
        try await untilAvailable { try await balance.write(7, latency: .seconds(3)) }
        let follower = try await cluster.node(2).declareLinearizable("balance")
        let linearizable = try await untilAvailable { try await follower.read(.linearizable) }
        #expect(linearizable.value == 7 && linearizable.guarantee == .linearizable)
        let bounded = try await follower.read(.bounded(staleness: .seconds(5), latency: .seconds(1)))
        #expect(bounded.value == 7)
        #expect(bounded.staleness.map { $0 <= .seconds(5) } == true)

        // A node cut off cannot certify S = 0: the read fails by its latency bound, typed.
        cluster.isolate(3)
        let cutOff = try await cluster.node(3).declareLinearizable("balance")
        do {
            _ = try await cutOff.read(.bounded(staleness: .zero, latency: .milliseconds(100)))
            Issue.record("an isolated follower cannot be fresh as of now")
        } catch {
            guard case .stalenessBoundUnmet = error else {
                Issue.record("expected stalenessBoundUnmet, got \(error)")
                return
            }
        }
        await cluster.shutdown()
    }
}
