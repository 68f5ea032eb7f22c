import ContinuumCore
import Testing

@testable import ContinuumProtocols

@Suite struct FreshnessGateTests {
    let gate = FreshnessGate(configuration: .init(maxClockOffset: .milliseconds(10), clockDriftMaxPartsPerMillion: 1_000))

    @Test func stalenessCountsTwiceTheClockOffset() {
        // Certified as of 1.000 s on some clock; read began at 1.250 s here.
        #expect(gate.staleness(readStart: .milliseconds(1_250), certifiedAt: .seconds(1)) == .milliseconds(270))
        // A certificate newer than the start still leaves the clock uncertainty, floored at 0.
        #expect(gate.staleness(readStart: .seconds(1), certifiedAt: .milliseconds(1_015)) == .milliseconds(5))
        #expect(gate.staleness(readStart: .seconds(1), certifiedAt: .seconds(2)) == .zero)
        let buggy = FreshnessGate(configuration: .init(maxClockOffset: .milliseconds(10), plantedBug: .ignoreClockOffset))
        #expect(buggy.staleness(readStart: .milliseconds(1_250), certifiedAt: .seconds(1)) == .milliseconds(250))
    }

    @Test func deadlinesAreShortenedForASlowClock() {
        let due = gate.deadline(of: .staleness(.seconds(1), within: .seconds(1)), startedAt: .seconds(5))
        #expect(due < .seconds(6) && due >= .seconds(6) - .milliseconds(1) - FreshnessGate.clockResolutionMargin - .nanoseconds(1))
        #expect(gate.deadline(of: .local, startedAt: .seconds(5)) == .seconds(5))
    }

    @Test func aFreshEnoughAnswerReturnsAtOnceAndAStaleOneWaitsThenFails() {
        let levels = [ServiceLevel.staleness(.milliseconds(100), within: .milliseconds(50))]
        let start = Duration.seconds(10)
        #expect(gate.decide(levels: levels, startedAt: start, now: start, quality: .certified(staleness: .milliseconds(80)), atDeadline: false)
                == .answer(level: 0))
        guard case let .wait(until) = gate.decide(levels: levels, startedAt: start, now: start,
                                                  quality: .certified(staleness: .milliseconds(300)), atDeadline: false) else {
            Issue.record("a stale answer must wait")
            return
        }
        #expect(until > start && until <= start + .milliseconds(50))
        #expect(gate.decide(levels: levels, startedAt: start, now: until, quality: .certified(staleness: .milliseconds(300)), atDeadline: true)
                == .fail)
        // No certificate at all satisfies no staleness bound, but does satisfy `any`.
        #expect(gate.decide(levels: [.local], startedAt: start, now: start, quality: .certified(staleness: nil), atDeadline: false)
                == .answer(level: 0))
    }

    @Test func rankedLevelsWaitForTheBestStillInTime() {
        // "linearizable within 20 ms, else staleness ≤ 1 s within 50 ms, else whatever is local".
        let levels: [ServiceLevel] = [.linearizable(within: .milliseconds(20)), .staleness(.seconds(1), within: .milliseconds(50)),
                                      ServiceLevel(.any, within: .milliseconds(50))]
        let start = Duration.zero
        let local = FreshnessGate.Quality.certified(staleness: .milliseconds(200))
        guard case let .wait(first) = gate.decide(levels: levels, startedAt: start, now: start, quality: local, atDeadline: false) else {
            Issue.record("must wait for the linearizable level first")
            return
        }
        #expect(gate.decide(levels: levels, startedAt: start, now: .milliseconds(5), quality: .linearizable, atDeadline: false) == .answer(level: 0))
        #expect(gate.decide(levels: levels, startedAt: start, now: first, quality: local, atDeadline: true) == .answer(level: 1))
        let stale = FreshnessGate.Quality.certified(staleness: .seconds(3))
        // Too stale for level 1 at 20 ms: wait for it until 50 ms, then take "whatever is local".
        guard case let .wait(second) = gate.decide(levels: levels, startedAt: start, now: first, quality: stale, atDeadline: true) else {
            Issue.record("level 1 is still open at 20 ms")
            return
        }
        #expect(second > .milliseconds(49) && second <= .milliseconds(50))
        #expect(gate.decide(levels: levels, startedAt: start, now: second, quality: stale, atDeadline: true) == .answer(level: 2))
        // A met lower level that closes first is answered with when it closes.
        let early: [ServiceLevel] = [.linearizable(within: .milliseconds(40)), .staleness(.seconds(1), within: .milliseconds(10))]
        #expect(gate.decide(levels: early, startedAt: start, now: start, quality: local, atDeadline: false)
                == .wait(until: gate.deadline(of: early[1], startedAt: start)))
        #expect(gate.decide(levels: early, startedAt: start, now: gate.deadline(of: early[1], startedAt: start), quality: local, atDeadline: true)
                == .answer(level: 1))
        #expect(FreshnessGate.validate([]) != nil)
    }

    @Test func aSessionsUnreachedMinimumSatisfiesNothing() {
        #expect(!FreshnessGate.satisfies(.unusable, .any))
        #expect(!FreshnessGate.satisfies(.unusable, .staleness(.seconds(100))))
        #expect(FreshnessGate.Quality.unusable.guarantee == .local)
    }
}
