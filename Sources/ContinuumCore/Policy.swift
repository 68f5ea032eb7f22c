/// Where a register sits between availability and consistency (DESIGN.md section 1).
/// Declared next to the data; later issues add `linearizable`, `serializable` and
/// `bounded(staleness:latency:)`.
public enum Policy: Sendable, Equatable, CustomStringConvertible {
    /// A CRDT replicated by anti-entropy (the Lasp model): updates apply locally and never wait
    /// for the network, also on a node cut off from all others; replicas converge once they
    /// can talk. Strong eventual consistency; monotone threshold reads.
    case available

    public var description: String {
        switch self {
        case .available: "available"
        }
    }
}

/// Why an operation failed. Every case here means the operation took no effect.
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
        }
    }
}
