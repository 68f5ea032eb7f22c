import ContinuumCore

/// A bug that can be planted in freshness decisions so that tests can show the staleness
/// checker catches its class. Never set outside tests.
public enum PlantedFreshnessBug: String, Sendable, CaseIterable {
    /// Compare clocks of different nodes as if they agreed: staleness without `2·maxClockOffset`.
    case ignoreClockOffset = "ignore-clock-offset"
    /// Date a neighbour's certificate by when its message arrived instead of by the times it
    /// carries, so that time in flight, and the neighbour's own staleness, go uncounted.
    case certifyOnArrival = "certify-on-arrival"
}

/// The pure decision behind every bounded read (Spry's staleness and latency bounds, Pileus's
/// ranked choices): given the read's service levels, when it began, the current time and the
/// quality of the best answer in hand, answer now (and with which level), wait until a
/// deadline (for an answer from a fresher replica, the leader, or the next certificate), or
/// fail. It reads no clock: times come in with every call, all on the local node's clock.
///
/// Staleness is certified from a *freshness certificate*: a time `T` on some node's clock such
/// that the answer reflects every write acknowledged before `T`. Clocks differ from true time
/// by at most `maxClockOffset`, so such an answer reflects every write acknowledged before
/// true time `T - maxClockOffset`, and a read that began when the local clock said `r` began no
/// later than true time `r + maxClockOffset`. Its staleness is therefore at most
/// `r - T + 2·maxClockOffset`: never smaller than the truth, whatever the skew.
///
/// Latency bounds are timers on the local clock, which may run slow by up to
/// `clockDriftMaxPartsPerMillion`; deadlines are shortened by that much, and by
/// `clockResolutionMargin` for a clock that advances in steps, so that a read ends by its bound
/// in true time.
public struct FreshnessGate: Sendable {
    public struct Configuration: Sendable {
        /// The most any node's clock may differ from true time.
        public var maxClockOffset: Duration
        /// The most any node's clock rate may differ from true time's, in parts per million.
        public var clockDriftMaxPartsPerMillion: Int64
        public var plantedBug: PlantedFreshnessBug?

        public init(maxClockOffset: Duration = .milliseconds(10), clockDriftMaxPartsPerMillion: Int64 = 1_000,
                    plantedBug: PlantedFreshnessBug? = nil) {
            precondition(maxClockOffset >= .zero && clockDriftMaxPartsPerMillion >= 0 && clockDriftMaxPartsPerMillion < 1_000_000)
            self.maxClockOffset = maxClockOffset
            self.clockDriftMaxPartsPerMillion = clockDriftMaxPartsPerMillion
            self.plantedBug = plantedBug
        }
    }

    /// How good an answer in hand is.
    public enum Quality: Sendable, Equatable {
        /// Linearizable: what a read through consensus returns (staleness zero).
        case linearizable
        /// Certified staleness; nil when nothing bounds it.
        case certified(staleness: Duration?)
        /// Nothing in hand may be returned (a session's minimum not reached yet).
        case unusable

        public var staleness: Duration? {
            switch self {
            case .linearizable: .zero
            case let .certified(staleness): staleness
            case .unusable: nil
            }
        }

        public var guarantee: DeliveredGuarantee {
            switch self {
            case .linearizable: .linearizable
            case let .certified(staleness): staleness.map { .bounded(staleness: $0) } ?? .local
            case .unusable: .local
            }
        }

    }

    public enum Decision: Sendable, Equatable {
        /// Answer now; the answer meets the level at this index.
        case answer(level: Int)
        /// Nothing good enough yet: decide again at this local time (or when the answer improves).
        case wait(until: Duration)
        /// Every level's deadline passed unmet.
        case fail
    }

    public let configuration: Configuration
    public static let deadlineSlack: Duration = .microseconds(100)
    /// A clock may advance in steps (the simulator's drifting clocks step by up to the drift,
    /// in nanoseconds, each millisecond): two readings of it may err by a step each. Fresh seeds
    /// 90130 and 91018 of `bounded` answered 10 and 27 ns past a 20 ms bound without it.
    public static let clockResolutionMargin: Duration = .microseconds(2)

    public init(configuration: Configuration) { self.configuration = configuration }

    /// Checks a read's levels; nil when they are usable, else why not.
    public static func validate(_ levels: [ServiceLevel]) -> String? {
        if levels.isEmpty { return "a read needs at least one service level" }
        if levels.count > 16 { return "at most 16 service levels" }
        for level in levels {
            if level.latency < .zero { return "a negative latency bound (\(level))" }
            if case let .staleness(bound) = level.requirement, bound < .zero { return "a negative staleness bound (\(level))" }
        }
        return nil
    }

    /// The staleness bound of an answer certified fresh as of `certifiedAt` (on any node's
    /// clock), for a read that began at local time `readStart`.
    public func staleness(readStart: Duration, certifiedAt: Duration) -> Duration {
        let margin = configuration.plantedBug == .ignoreClockOffset ? .zero : configuration.maxClockOffset * 2
        return max(.zero, readStart - certifiedAt + margin)
    }

    /// The staleness bound of an answer certified as of `certifiedAt` on this node's own clock
    /// (no offset between clocks to allow for, only the drift of one clock over the interval).
    public func localStaleness(readStart: Duration, certifiedAt: Duration) -> Duration {
        let interval = max(.zero, readStart - certifiedAt)
        let drift = interval.nanoseconds / 1_000_000 * configuration.clockDriftMaxPartsPerMillion + (interval > .zero ? 1 : 0)
        return interval + .nanoseconds(drift)
    }

    /// The local time by which a level must be met: its latency, shortened for a slow clock.
    public func deadline(of level: ServiceLevel, startedAt: Duration) -> Duration {
        let latency = level.latency.nanoseconds
        let shortening = latency / 1_000_000 * configuration.clockDriftMaxPartsPerMillion
            + (latency % 1_000_000) * configuration.clockDriftMaxPartsPerMillion / 1_000_000 + (latency > 0 ? 1 : 0)
        return startedAt + .nanoseconds(max(0, latency - shortening - Self.clockResolutionMargin.nanoseconds))
    }

    public static func satisfies(_ quality: Quality, _ requirement: ReadRequirement) -> Bool {
        if quality == .unusable { return false }
        switch requirement {
        case .any: return true
        case .linearizable: return quality == .linearizable
        case let .staleness(bound): return quality.staleness.map { $0 <= bound } ?? false
        }
    }

    /// What to do with a read that began at `startedAt` and holds an answer of `quality`, at
    /// local time `now`. `atDeadline` says a deadline timer fired now: a level due now is
    /// *closing* (it may still be answered with, but not waited for). The rule, in rank order:
    /// answer with the first open level that the answer meets, unless a better level is still
    /// open and worth waiting for, in which case wait, but no longer than until the met level
    /// closes (then answer with it). Fail when no level is open.
    public func decide(levels: [ServiceLevel], startedAt: Duration, now: Duration, quality: Quality, atDeadline: Bool) -> Decision {
        var waitUntil: Duration?
        for (index, level) in levels.enumerated() {
            let due = deadline(of: level, startedAt: startedAt)
            if now > due { continue }
            // A timer may fire a hair before its time (a shell's clock conversion rounds).
            let closing = atDeadline && now + Self.deadlineSlack >= due
            if Self.satisfies(quality, level.requirement) {
                guard let until = waitUntil, !closing else { return .answer(level: index) }
                waitUntil = min(until, due)
                continue
            }
            if closing { continue }
            waitUntil = min(waitUntil ?? due, due)
        }
        return waitUntil.map { .wait(until: $0) } ?? .fail
    }
}

/// Why a bounded read of consensus state failed; nothing was read.
public enum BoundedReadFailure: Error, Sendable, Equatable {
    case stalenessBoundUnmet(best: Duration?)
    case unavailable(String)
    case invalidRequest(String)
}
