/// Where a register sits between availability and consistency (docs/design.md section 1).
/// Declared next to the data as a register's default, and passed per operation to override it
/// where the register's mechanism can honour the override.
public enum Policy: Sendable, Equatable, CustomStringConvertible {
    /// A CRDT replicated by anti-entropy (the Lasp model): updates apply locally and never wait
    /// for the network, also on a node cut off from all others; replicas converge once they
    /// can talk. Strong eventual consistency; monotone threshold reads.
    case available
    /// An integer register replicated by Raft consensus: every operation is linearizable, and
    /// available only on the side of a partition that holds a majority; elsewhere operations
    /// fail with `unavailable` (or `indeterminate` for a write that may still commit).
    case linearizable
    /// Registers read and written in transactions that lock at every replica and commit by
    /// two-phase commit at every replica (the Austere model): strictly serializable, one system
    /// image, and no progress while any replica is unreachable.
    case serializable
    /// Spry's two knobs on a read (Meiklejohn, PMLDC 2017): never return anything older than
    /// `staleness` (consistency over availability), and answer within `latency` with the
    /// freshest value that can be had (availability and latency over consistency). The read
    /// returns as soon as an answer within the staleness bound is in hand, and fails with
    /// `stalenessBoundUnmet` at the latency bound otherwise. `staleness` nil means unbounded:
    /// the local value, at once, with whatever staleness can be certified.
    case bounded(staleness: Duration?, latency: Duration)

    public var description: String {
        switch self {
        case .available: "available"
        case .linearizable: "linearizable"
        case .serializable: "serializable"
        case let .bounded(staleness, latency):
            "bounded(staleness: \(staleness?.shortDescription ?? "unbounded"), latency: \(latency.shortDescription))"
        }
    }

    /// The ranked service levels of a read under this policy. `linearizable` and
    /// `serializable` carry no latency of their own and get 5 s; pass levels to choose one.
    public var serviceLevels: [ServiceLevel] {
        switch self {
        case .available: [.local]
        case .linearizable: [.linearizable(within: .seconds(5))]
        case .serializable: [.linearizable(within: .seconds(5))]
        case let .bounded(staleness, latency):
            [staleness.map { .staleness($0, within: latency) } ?? ServiceLevel(.any, within: latency)]
        }
    }
}

/// Why an operation failed. Every case but `indeterminate` means the operation took no effect.
public enum ContinuumError: Error, Equatable, Sendable, CustomStringConvertible {
    case notDeclared(register: String)
    case deleted(register: String)
    case typeMismatch(register: String, declared: String, requested: String)
    case invalidName(String)
    /// The update's own logic refused (for example a bounded counter without enough rights).
    case refused(String)
    /// A threshold read did not reach its threshold within its timeout.
    case timedOut(after: Duration)
    case cancelled
    /// The node was stopped (or crashed) before the operation finished.
    case nodeStopped
    case tooManyPendingReads(limit: Int)
    case derivedInputMissing(derived: String, input: String)
    /// The operation cannot be served here now (no majority, no leader): definitely not applied.
    case unavailable(String)
    /// A write whose outcome is unknown: it may have been applied, or may still be.
    case indeterminate
    /// The register is declared with another policy than the call needs.
    case wrongPolicy(register: String, declared: Policy)
    /// No answer within the read's staleness bound could be had by its latency bound; `best` is
    /// the smallest staleness the node could certify (nil: none at all). Nothing was read.
    case stalenessBoundUnmet(best: Duration?)
    /// The request itself is malformed (an empty list of service levels, say).
    case invalidRequest(String)
    /// The client has not signed in, or its user may not run this command, touch this key or
    /// use this policy (`NOAUTH`, `NOPERM`, `WRONGPASS` on the Redis protocol).
    case notPermitted(String)

    public var description: String {
        switch self {
        case let .notDeclared(name): "register '\(name)' is not declared"
        case let .deleted(name): "register '\(name)' was deleted"
        case let .typeMismatch(name, declared, requested): "register '\(name)' holds \(declared), not \(requested)"
        case let .invalidName(name): "invalid register name '\(name)'"
        case let .refused(reason): "refused: \(reason)"
        case let .timedOut(after): "no answer within \(after)"
        case .cancelled: "cancelled"
        case .nodeStopped: "the node stopped"
        case let .tooManyPendingReads(limit): "more than \(limit) threshold reads pending"
        case let .derivedInputMissing(derived, input): "derived register '\(derived)' reads '\(input)', which is not declared"
        case let .unavailable(reason): "unavailable: \(reason)"
        case .indeterminate: "indeterminate: the write may or may not take effect"
        case let .wrongPolicy(register, declared): "register '\(register)' is declared \(declared)"
        case let .stalenessBoundUnmet(best):
            "staleness bound unmet within the latency bound; best certified staleness: \(best?.shortDescription ?? "none")"
        case let .invalidRequest(reason): "invalid request: \(reason)"
        case let .notPermitted(reason): "not permitted: \(reason)"
        }
    }
}

extension Policy {
    /// Parses a policy from words: `available`, `linearizable`, `serializable`, or
    /// `bounded <staleness ms | none> <latency ms>` (the form the command line and the RESP
    /// server take).
    public init(words: [String]) throws(ContinuumError) {
        switch words.first?.lowercased() {
        case "available" where words.count == 1: self = .available
        case "linearizable" where words.count == 1: self = .linearizable
        case "serializable" where words.count == 1: self = .serializable
        case "bounded" where words.count == 3:
            let staleness: Duration?
            if words[1].lowercased() == "none" {
                staleness = nil
            } else if let milliseconds = Int64(words[1]), milliseconds >= 0 {
                staleness = .milliseconds(milliseconds)
            } else {
                throw .invalidRequest("staleness '\(words[1])' is neither milliseconds nor 'none'")
            }
            guard let latency = Int64(words[2]), latency >= 0 else { throw .invalidRequest("latency '\(words[2])' is not milliseconds") }
            self = .bounded(staleness: staleness, latency: .milliseconds(latency))
        default:
            throw .invalidRequest("a policy is 'available', 'linearizable', 'serializable' or 'bounded <staleness ms|none> <latency ms>', not '\(words.joined(separator: " "))'")
        }
    }

    /// The words `init(words:)` reads back.
    public var words: [String] {
        switch self {
        case .available: ["available"]
        case .linearizable: ["linearizable"]
        case .serializable: ["serializable"]
        case let .bounded(staleness, latency):
            ["bounded", staleness.map { "\($0.nanoseconds / 1_000_000)" } ?? "none", "\(latency.nanoseconds / 1_000_000)"]
        }
    }
}
