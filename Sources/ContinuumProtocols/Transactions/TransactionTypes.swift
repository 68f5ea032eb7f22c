import ContinuumCore

/// A serializable register's value: an integer (an account) or a list of integers (the
/// list-append registers that histories are checked with).
public enum TransactionValue: Sendable, Hashable, BinaryCodable, CustomStringConvertible {
    case int(Int64)
    case list([Int64])

    public var description: String {
        switch self {
        case let .int(value): "\(value)"
        case let .list(values): "\(values)"
        }
    }

    public func encode(to writer: inout BinaryWriter) {
        switch self {
        case let .int(value): writer.writeByte(0); value.encode(to: &writer)
        case let .list(values): writer.writeByte(1); values.encode(to: &writer)
        }
    }

    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        switch try reader.readByte() {
        case 0: self = .int(try Int64(from: &reader))
        case 1: self = .list(try [Int64](from: &reader))
        case let tag: throw .invalid("transaction value tag \(tag)")
        }
    }
}

/// A transaction's identity and its age: (start time at its coordinator, coordinator), ordered.
/// Wait-die compares ages: an older transaction may wait for a younger one, a younger one dies.
public struct TransactionID: Sendable, Hashable, Comparable, BinaryCodable, CustomStringConvertible {
    public var timestamp: UInt64
    public var coordinator: NodeID
    public var sequence: UInt64

    public init(timestamp: UInt64, coordinator: NodeID, sequence: UInt64) {
        self.timestamp = timestamp
        self.coordinator = coordinator
        self.sequence = sequence
    }

    /// Older first.
    public static func < (lhs: TransactionID, rhs: TransactionID) -> Bool {
        (lhs.timestamp, lhs.coordinator, lhs.sequence) < (rhs.timestamp, rhs.coordinator, rhs.sequence)
    }

    /// `t<coordinator>.<incarnation>.<number>`: a coordinator's sequence carries the
    /// incarnation it was drawn in (high 32 bits) and a counter within it (low 32 bits).
    public var description: String { "t\(coordinator.rawValue).\(sequence >> 32).\(sequence & 0xFFFF_FFFF)" }

    public func encode(to writer: inout BinaryWriter) {
        writer.writeVarint(timestamp)
        coordinator.encode(to: &writer)
        writer.writeVarint(sequence)
    }

    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        timestamp = try reader.readVarint()
        coordinator = try NodeID(from: &reader)
        sequence = try reader.readVarint()
    }
}

public enum LockMode: UInt8, Sendable, Hashable, BinaryCodable {
    case shared = 0
    case exclusive = 1

    public func encode(to writer: inout BinaryWriter) { writer.writeByte(rawValue) }
    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        let raw = try reader.readByte()
        guard let mode = LockMode(rawValue: raw) else { throw .invalid("lock mode \(raw)") }
        self = mode
    }
}

public struct LockRequest: Sendable, Hashable, BinaryCodable {
    public var key: String
    public var mode: LockMode

    public init(key: String, mode: LockMode) {
        self.key = key
        self.mode = mode
    }

    public func encode(to writer: inout BinaryWriter) {
        key.encode(to: &writer)
        mode.encode(to: &writer)
    }

    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        key = try String(from: &reader)
        mode = try LockMode(from: &reader)
    }
}

/// A write of a committed transaction: the key's new value.
public struct TransactionWrite: Sendable, Hashable, BinaryCodable {
    public var key: String
    public var value: TransactionValue

    public init(key: String, value: TransactionValue) {
        self.key = key
        self.value = value
    }

    public func encode(to writer: inout BinaryWriter) {
        key.encode(to: &writer)
        value.encode(to: &writer)
    }

    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        key = try String(from: &reader)
        value = try TransactionValue(from: &reader)
    }
}

/// The messages of the Austere protocol: two-phase locking at every replica, then two-phase
/// commit at every replica.
public enum TransactionMessage: Sendable, Equatable, BinaryCodable {
    /// Coordinator to participant: lock these keys for the transaction (operation `step`).
    case lock(TransactionID, step: UInt64, [LockRequest])
    /// Participant: all granted; the committed values of the keys (absent ones omitted).
    case locked(TransactionID, step: UInt64, [TransactionWrite])
    /// Participant: the transaction must die (wait-die: `retryable`, with its age), or is over
    /// here; it holds nothing here now.
    case refused(TransactionID, reason: String, retryable: Bool)
    /// Coordinator: prepare to commit these writes; the participant's vote is durable before its answer.
    case prepare(TransactionID, [TransactionWrite])
    case prepared(TransactionID, yes: Bool)
    /// Coordinator: the decision, durable at the coordinator before it is sent.
    case decision(TransactionID, commit: Bool)
    case decisionApplied(TransactionID)
    /// Participant to coordinator, for a prepared transaction whose decision it has not heard.
    case decisionQuery(TransactionID)
    /// Coordinator: the transaction is over (aborted before prepare); release its locks.
    case release(TransactionID)

    public func encode(to writer: inout BinaryWriter) {
        switch self {
        case let .lock(id, step, requests):
            writer.writeByte(0); id.encode(to: &writer); writer.writeVarint(step); requests.encode(to: &writer)
        case let .locked(id, step, values):
            writer.writeByte(1); id.encode(to: &writer); writer.writeVarint(step); values.encode(to: &writer)
        case let .refused(id, reason, retryable):
            writer.writeByte(2); id.encode(to: &writer); reason.encode(to: &writer); retryable.encode(to: &writer)
        case let .prepare(id, writes):
            writer.writeByte(3); id.encode(to: &writer); writes.encode(to: &writer)
        case let .prepared(id, yes):
            writer.writeByte(4); id.encode(to: &writer); yes.encode(to: &writer)
        case let .decision(id, commit):
            writer.writeByte(5); id.encode(to: &writer); commit.encode(to: &writer)
        case let .decisionApplied(id):
            writer.writeByte(6); id.encode(to: &writer)
        case let .decisionQuery(id):
            writer.writeByte(7); id.encode(to: &writer)
        case let .release(id):
            writer.writeByte(8); id.encode(to: &writer)
        }
    }

    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        switch try reader.readByte() {
        case 0: self = .lock(try TransactionID(from: &reader), step: try reader.readVarint(), try [LockRequest](from: &reader))
        case 1: self = .locked(try TransactionID(from: &reader), step: try reader.readVarint(), try [TransactionWrite](from: &reader))
        case 2: self = .refused(try TransactionID(from: &reader), reason: try String(from: &reader), retryable: try Bool(from: &reader))
        case 3: self = .prepare(try TransactionID(from: &reader), try [TransactionWrite](from: &reader))
        case 4: self = .prepared(try TransactionID(from: &reader), yes: try Bool(from: &reader))
        case 5: self = .decision(try TransactionID(from: &reader), commit: try Bool(from: &reader))
        case 6: self = .decisionApplied(try TransactionID(from: &reader))
        case 7: self = .decisionQuery(try TransactionID(from: &reader))
        case 8: self = .release(try TransactionID(from: &reader))
        case let tag: throw .invalid("transaction message tag \(tag)")
        }
    }
}

/// What a transaction node keeps on disk: the committed registers, the participant's prepare
/// records (its yes votes and their writes), and the coordinator's commit decisions.
/// Persist effects are patches merged by `accumulate`.
public struct TransactionDurableState: Sendable, Equatable, BinaryCodable {
    public var committed: [String: TransactionValue]
    public var prepared: [TransactionID: [TransactionWrite]]
    /// Decisions this node made as coordinator, and decisions it applied as participant.
    public var decisions: [TransactionID: Bool]
    /// Patch only: prepare records to drop (their decision is applied).
    public var resolved: [TransactionID]
    /// Patch only: decisions no participant can ask about any more.
    public var forgotten: [TransactionID]
    /// The coordinator's latest incarnation (0: none yet): each start, and each 2^32
    /// transactions, take the next one, so a transaction identifier is never drawn twice.
    public var incarnation: UInt64

    public init(committed: [String: TransactionValue] = [:], prepared: [TransactionID: [TransactionWrite]] = [:],
                decisions: [TransactionID: Bool] = [:], resolved: [TransactionID] = [], forgotten: [TransactionID] = [],
                incarnation: UInt64 = 0) {
        self.committed = committed
        self.prepared = prepared
        self.decisions = decisions
        self.resolved = resolved
        self.forgotten = forgotten
        self.incarnation = incarnation
    }

    public func encode(to writer: inout BinaryWriter) {
        committed.encode(to: &writer)
        prepared.encode(to: &writer)
        decisions.encode(to: &writer)
        resolved.encode(to: &writer)
        forgotten.encode(to: &writer)
        writer.writeVarint(incarnation)
    }

    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        committed = try [String: TransactionValue](from: &reader)
        prepared = try [TransactionID: [TransactionWrite]](from: &reader)
        decisions = try [TransactionID: Bool](from: &reader)
        resolved = try [TransactionID](from: &reader)
        forgotten = try [TransactionID](from: &reader)
        incarnation = try reader.readVarint()
    }
}

/// A staleness-bounded read of a serializable register at one replica: the committed value
/// (nil: never written) and what was delivered.
public struct TransactionReadAnswer: Sendable, Equatable {
    public var value: TransactionValue?
    public var receipt: ReadReceipt

    public init(value: TransactionValue?, receipt: ReadReceipt) {
        self.value = value
        self.receipt = receipt
    }
}
