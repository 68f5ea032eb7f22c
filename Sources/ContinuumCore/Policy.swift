/// Where a register sits between availability and consistency (DESIGN.md section 1).
/// Declared next to the data; later issues add `linearizable`, `serializable` and
/// `bounded(staleness:latency:)`.
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

    public var description: String {
        switch self {
        case .available: "available"
        case .linearizable: "linearizable"
        case .serializable: "serializable"
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
        }
    }
}
