import ContinuumCore

/// The kinds of CRDT a client declares by name. Under `linearizable` they live in the Raft
/// log's CRDT namespace (Raft applies their operations in log order); under `available` and
/// `bounded` they are the node's own CRDT registers.
public enum RegisterKind: String, Sendable, CaseIterable {
    case counter, set, flag, max

    public init(_ operation: CRDTOperation) {
        switch operation {
        case .counterAdd: self = .counter
        case .setInsert, .setRemove: self = .set
        case .flagEnable, .flagDisable: self = .flag
        case .maxWrite: self = .max
        }
    }

    public init(_ state: LogCRDT) {
        switch state {
        case .counter: self = .counter
        case .set: self = .set
        case .flag: self = .flag
        case .max: self = .max
        }
    }
}

/// The CRDT types every policy stores (a `LogCRDT` under `linearizable`, a node's own
/// register under `available` and `bounded`): what a `ContinuumClient` declares and what the
/// router applies `CRDTOperation`s to.
public protocol RemoteRegisterValue: Lattice, Sendable {
    /// The type's name in `CONTINUUM.DECLARE`.
    static var kind: String { get }
    /// The value in `state`, nil when it holds another type.
    init?(_ state: LogCRDT)
    /// The value as a register state of the Raft log's CRDT namespace.
    var logState: LogCRDT { get }
}

extension PNCounter: RemoteRegisterValue {
    public static var kind: String { "counter" }
    public init?(_ state: LogCRDT) {
        guard case let .counter(counter) = state else { return nil }
        self = counter
    }

    public var logState: LogCRDT { .counter(self) }
}

extension ORSet<String>: RemoteRegisterValue {
    public static var kind: String { "set" }
    public init?(_ state: LogCRDT) {
        guard case let .set(set) = state else { return nil }
        self = set
    }

    public var logState: LogCRDT { .set(self) }
}

extension EWFlag: RemoteRegisterValue {
    public static var kind: String { "flag" }
    public init?(_ state: LogCRDT) {
        guard case let .flag(flag) = state else { return nil }
        self = flag
    }

    public var logState: LogCRDT { .flag(self) }
}

extension MaxRegister<UInt64>: RemoteRegisterValue {
    public static var kind: String { "max" }
    public init?(_ state: LogCRDT) {
        guard case let .max(register) = state else { return nil }
        self = register
    }

    public var logState: LogCRDT { .max(self) }
}

extension RegisterKind {
    /// The kind of register `type` is, if the Raft log can hold it.
    public init?(type: Any.Type) {
        switch type {
        case is PNCounter.Type: self = .counter
        case is ORSet<String>.Type: self = .set
        case is EWFlag.Type: self = .flag
        case is MaxRegister<UInt64>.Type: self = .max
        default: return nil
        }
    }
}
