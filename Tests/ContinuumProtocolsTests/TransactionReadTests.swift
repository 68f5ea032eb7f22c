import ContinuumCore
import Testing

@testable import ContinuumProtocols

/// Staleness-bounded reads of a serializable register's committed state at one replica.
@Suite struct TransactionReadTests {
    let coordinator = NodeID(1)
    let replica = NodeID(2)
    let id = TransactionID(timestamp: 1, coordinator: NodeID(1), sequence: 1)

    func participant(durable: TransactionDurableState? = nil) -> TransactionInstance {
        TransactionInstance(configuration: .init(freshness: .init(clockDriftMaxPartsPerMillion: 0)),
                            context: InstanceContext(node: replica, members: [coordinator, replica], random: DeterministicRandom(seed: 1)),
                            durable: durable)
    }

    func answers(_ effects: [TransactionInstance.Effect]) -> [UInt64: Result<TransactionReadAnswer, BoundedReadFailure>] {
        var found: [UInt64: Result<TransactionReadAnswer, BoundedReadFailure>] = [:]
        for case let .output(.boundedReadCompleted(id, result)) in effects { found[id] = result }
        return found
    }

    @Test func anUndecidedPrepareHoldsTheCertificateBackUntilItsDecision() throws {
        var instance = participant()
        var durable: TransactionDurableState?
        func persist(_ effects: [TransactionInstance.Effect]) {
            for case let .persist(patch) in effects { TransactionInstance.accumulate(patch, into: &durable) }
        }
        _ = instance.start(now: .zero)
        persist(instance.receive(.lock(id, step: 1, [LockRequest(key: "x", mode: .exclusive)]), from: coordinator, now: .milliseconds(5)))
        persist(instance.receive(.prepare(id, [TransactionWrite(key: "x", value: .int(5))]), from: coordinator, now: .milliseconds(10)))
        #expect(instance.certificate(at: .milliseconds(20), key: "x") == .milliseconds(10))
        #expect(instance.certificate(at: .milliseconds(20), key: "y") == .milliseconds(20))

        // S = 0 cannot be certified while x = 5 is prepared (its commit may be acknowledged): wait.
        let waiting = instance.handle(.boundedRead(id: 1, key: "x", levels: [.staleness(.zero, within: .milliseconds(50))]), now: .milliseconds(20))
        #expect(answers(waiting).isEmpty)
        // S = 20 ms can: the state misses nothing acknowledged before 10 ms.
        let loose = try #require(answers(instance.handle(.boundedRead(id: 2, key: "x", levels: [.staleness(.milliseconds(20), within: .milliseconds(50))]),
                                                         now: .milliseconds(20)))[2]).get()
        #expect(loose.value == nil && loose.receipt.staleness.map { $0 >= .milliseconds(10) && $0 < .milliseconds(11) } == true)

        // The decision answers the waiting read with the committed value, staleness 0.
        let decided = instance.receive(.decision(id, commit: true), from: coordinator, now: .milliseconds(30))
        persist(decided)
        let fresh = try #require(answers(decided)[1]).get()
        #expect(fresh.value == .int(5) && fresh.receipt.staleness == .zero && fresh.receipt.guarantee == .bounded(staleness: .zero))

        // A linearizable read of a replica's state is refused: that is a transaction's job.
        let linearizable = answers(instance.handle(.boundedRead(id: 3, key: "x", levels: [.linearizable(within: .seconds(1))]), now: .milliseconds(31)))
        guard case .failure(.invalidRequest)? = linearizable[3] else {
            Issue.record("expected invalidRequest, got \(linearizable)")
            return
        }
    }

    @Test func aPrepareRestoredAfterARestartCertifiesNothingUntilDecided() throws {
        var durable: TransactionDurableState?
        TransactionInstance.accumulate(TransactionDurableState(prepared: [id: [TransactionWrite(key: "x", value: .int(5))]]), into: &durable)
        var restarted = participant(durable: durable)
        _ = restarted.start(now: .seconds(100))
        #expect(restarted.certificate(at: .seconds(100), key: "x") == nil)
        #expect(restarted.certificate(at: .seconds(100), key: "y") == .seconds(100), "the prepare holds back only what it writes")
        let started = restarted.handle(.boundedRead(id: 1, key: "x", levels: [.staleness(.seconds(10), within: .milliseconds(10))]), now: .seconds(100))
        #expect(answers(started).isEmpty)
        let failed = answers(restarted.timerFired(.boundedDeadline(1), now: .seconds(100) + .milliseconds(10)))
        #expect(failed[1] == .failure(.stalenessBoundUnmet(best: nil)))
        // Once decided, the whole state is certified again.
        let decided = answers(restarted.receive(.decision(id, commit: false), from: coordinator, now: .seconds(101)))
        #expect(decided.isEmpty)
        #expect(restarted.certificate(at: .seconds(101)) == .seconds(101))
    }

    /// A restarted coordinator draws identifiers from a new incarnation (durable before use),
    /// and a participant holding a prepared identifier refuses a prepare with other writes.
    @Test func identifiersAreNeverDrawnTwiceAcrossRestarts() throws {
        var durable: TransactionDurableState?
        func run(_ instance: inout TransactionInstance) -> TransactionID? {
            for case let .persist(patch) in instance.start(now: .zero) { TransactionInstance.accumulate(patch, into: &durable) }
            _ = instance.handle(.begin(handle: 1, latency: .seconds(1), age: 7), now: .zero)
            for case let .send(_, .lock(id, _, _)) in instance.handle(.lock(handle: 1, step: 1, [LockRequest(key: "x", mode: .exclusive)]), now: .zero) {
                return id
            }
            return nil
        }
        var first = TransactionInstance(configuration: .init(), context: InstanceContext(node: coordinator, members: [coordinator, replica],
                                                                                         random: DeterministicRandom(seed: 1)), durable: nil)
        let before = try #require(run(&first))
        var second = TransactionInstance(configuration: .init(), context: InstanceContext(node: coordinator, members: [coordinator, replica],
                                                                                          random: DeterministicRandom(seed: 1)), durable: durable)
        let after = try #require(run(&second))
        #expect(before.timestamp == after.timestamp, "the same age, as a wait-die retry has")
        #expect(before != after)
        #expect(durable?.incarnation == 2)

        var instance = participant()
        _ = instance.start(now: .zero)
        _ = instance.receive(.lock(id, step: 1, [LockRequest(key: "x", mode: .exclusive)]), from: coordinator, now: .milliseconds(1))
        let writes = [TransactionWrite(key: "x", value: .int(5))]
        #expect(instance.receive(.prepare(id, writes), from: coordinator, now: .milliseconds(2)).contains { effect in
            if case .send(_, .prepared(_, yes: true)) = effect { true } else { false }
        })
        #expect(instance.receive(.prepare(id, writes), from: coordinator, now: .milliseconds(3)).contains { effect in
            if case .send(_, .prepared(_, yes: true)) = effect { true } else { false }
        }, "a duplicate prepare is answered yes again")
        #expect(instance.receive(.prepare(id, [TransactionWrite(key: "x", value: .int(6))]), from: coordinator, now: .milliseconds(4)).contains { effect in
            if case .send(_, .prepared(_, yes: false)) = effect { true } else { false }
        }, "other writes under a prepared identifier are refused")
    }
}
