import ContinuumCore

/// One register's delta-interval (or whole state) in a batch.
public struct DeltaPayload: Sendable, Equatable, BinaryCodable {
    public var register: String
    /// The sender's last buffered sequence number that this payload covers.
    public var upTo: UInt64
    /// True when the payload is the whole state rather than a delta-interval.
    public var isFullState: Bool
    public var slot: EncodedSlot

    public init(register: String, upTo: UInt64, isFullState: Bool, slot: EncodedSlot) {
        self.register = register
        self.upTo = upTo
        self.isFullState = isFullState
        self.slot = slot
    }

    public func encode(to writer: inout BinaryWriter) {
        register.encode(to: &writer)
        writer.writeVarint(upTo)
        isFullState.encode(to: &writer)
        slot.encode(to: &writer)
    }

    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        register = try String(from: &reader)
        upTo = try reader.readVarint()
        isFullState = try Bool(from: &reader)
        slot = try EncodedSlot(from: &reader)
    }
}

/// An acknowledgement of one register's payload.
public struct DeltaAck: Sendable, Equatable, BinaryCodable {
    public var register: String
    public var upTo: UInt64

    public init(register: String, upTo: UInt64) {
        self.register = register
        self.upTo = upTo
    }

    public func encode(to writer: inout BinaryWriter) {
        register.encode(to: &writer)
        writer.writeVarint(upTo)
    }

    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        register = try String(from: &reader)
        upTo = try reader.readVarint()
    }
}

/// The messages of `ReplicationInstance`.
public enum ReplicationMessage: Sendable, Equatable, BinaryCodable {
    case membership(MembershipMessage)
    /// Delta-intervals from the sender's incarnation `epoch`.
    case deltas(epoch: UInt64, [DeltaPayload])
    /// What the receiver of `deltas` from incarnation `epoch` has joined.
    case acks(epoch: UInt64, [DeltaAck])

    public func encode(to writer: inout BinaryWriter) {
        switch self {
        case let .membership(message):
            writer.writeByte(0)
            message.encode(to: &writer)
        case let .deltas(epoch, payloads):
            writer.writeByte(1)
            writer.writeVarint(epoch)
            payloads.encode(to: &writer)
        case let .acks(epoch, acks):
            writer.writeByte(2)
            writer.writeVarint(epoch)
            acks.encode(to: &writer)
        }
    }

    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        switch try reader.readByte() {
        case 0: self = .membership(try MembershipMessage(from: &reader))
        case 1: self = .deltas(epoch: try reader.readVarint(), try [DeltaPayload](from: &reader))
        case 2: self = .acks(epoch: try reader.readVarint(), try [DeltaAck](from: &reader))
        case let tag: throw .invalid("replication message tag \(tag)")
        }
    }
}

/// What a node keeps on disk: its incarnation count and its registers.
/// Persist effects carry patches (the registers that changed), merged by `accumulate`.
public struct ReplicaDurableState: Sendable, Equatable, BinaryCodable {
    public var incarnation: UInt64
    public var slots: [String: EncodedSlot]

    public init(incarnation: UInt64, slots: [String: EncodedSlot]) {
        self.incarnation = incarnation
        self.slots = slots
    }

    public func encode(to writer: inout BinaryWriter) {
        writer.writeVarint(incarnation)
        slots.encode(to: &writer)
    }

    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        incarnation = try reader.readVarint()
        slots = try [String: EncodedSlot](from: &reader)
    }
}

/// Why a replication command failed. Each case says nothing changed.
public enum ReplicationError: Error, Equatable, Sendable, CustomStringConvertible {
    case notDeclared(String)
    case deleted(String)
    case typeMismatch(register: String, declared: String, requested: String)
    case tooManyPendingReads(limit: Int)
    case invalidName(String)
    case derivedInputMissing(derived: String, input: String)
    /// The mutator refused (for example a bounded counter without enough rights).
    case mutationRefused(String)
    case readCancelled

    public var description: String {
        switch self {
        case let .notDeclared(name): "register '\(name)' is not declared"
        case let .deleted(name): "register '\(name)' was deleted"
        case let .typeMismatch(name, declared, requested): "register '\(name)' holds \(declared), not \(requested)"
        case let .tooManyPendingReads(limit): "more than \(limit) threshold reads pending"
        case let .invalidName(name): "invalid register name '\(name)': 1 to \(ReplicationInstance.registerNameBytesMax) bytes"
        case let .derivedInputMissing(derived, input): "derived register '\(derived)' reads '\(input)', which is not declared"
        case let .mutationRefused(reason): "update refused: \(reason)"
        case .readCancelled: "threshold read cancelled"
        }
    }
}
