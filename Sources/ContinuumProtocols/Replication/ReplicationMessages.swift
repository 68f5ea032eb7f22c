import ContinuumCore

/// One register's delta-interval (or whole state) in a batch. A delta-interval leaves out the
/// type name, which the receiver already has (it acknowledged earlier deltas); a whole state
/// carries it, for a receiver that may not have the register yet. What the payload covers of
/// the sender's numbered deltas is the sender's business: it remembers, for each batch, which
/// deltas went in it, and the receiver acknowledges the batch, not the payloads.
public struct DeltaPayload: Sendable, Equatable, BinaryCodable {
    public var register: String
    public var generation: UInt64
    /// Present exactly when the payload is the whole state.
    public var typeName: String?
    /// The encoded state; nil for a deleted register.
    public var bytes: [UInt8]?
    /// Every delta joined in it was made at the sender (none was received from another node):
    /// the sender ships it to each of its neighbours itself, so a receiver may relay it lazily
    /// (see `RelayReport`). Never set on a register's whole state (it may hold anything).
    public var local: Bool

    public var isFullState: Bool { typeName != nil }

    public init(register: String, slot: RegisterSlot, isFullState: Bool, local: Bool = false) {
        self.register = register
        self.generation = slot.generation
        self.typeName = isFullState ? slot.typeName : nil
        self.bytes = slot.state?.encoded()
        self.local = local
    }

    /// Why a payload could not be decoded.
    public enum DecodingError: Error, Equatable, Sendable {
        /// A delta-interval for a register this node does not have: ask for the whole state.
        case registerUnknown
        case wire(WireDecodingError)
    }

    /// The payload as a slot, typed by the payload (whole state) or by the local slot (delta).
    public func decode(existing: RegisterSlot?, catalog: ReplicableTypeCatalog) throws(DecodingError) -> RegisterSlot {
        guard let typeName = typeName ?? existing?.typeName else { throw .registerUnknown }
        do {
            return try EncodedSlot(generation: generation, typeName: typeName, bytes: bytes).decode(with: catalog)
        } catch {
            throw .wire(error)
        }
    }

    /// The bytes `encode(to:)` writes, counted without encoding (a shipment sizes its batch by
    /// them; encoding each payload to count it copied its state once more).
    public var encodedByteCount: Int {
        var size = BinaryWriter.countedSize(register.utf8.count)
        size += BinaryWriter.varintSize(generation)
        size += 1 + (typeName.map { BinaryWriter.countedSize($0.utf8.count) } ?? 0)
        size += 1 + (bytes.map { BinaryWriter.countedSize($0.count) } ?? 0)
        return size + 1
    }

    public func encode(to writer: inout BinaryWriter) {
        register.encode(to: &writer)
        writer.writeVarint(generation)
        typeName.encode(to: &writer)
        bytes.encode(to: &writer)
        writer.writeByte(local ? 1 : 0)
    }

    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        register = try String(from: &reader)
        generation = try reader.readVarint()
        typeName = try String?(from: &reader)
        bytes = try [UInt8]?(from: &reader)
        switch try reader.readByte() {
        case 0: local = false
        case 1: local = true
        case let flag: throw .invalid("payload flag \(flag)")
        }
    }
}

/// A freshness certificate of replicated state (docs/design.md section 3, CRDT-backed): for each
/// node, a time on that node's clock before which the holder has merged everything that node
/// acknowledged.
public typealias FreshnessVector = [NodeID: Int64]

/// What a batch of deltas tells its receiver besides the deltas, for lazy relaying: a node
/// that received a delta its maker shipped to every neighbour itself holds its own relay of it
/// back until the neighbour is known to hold it, or the relay delay passes (see
/// `ReplicationInstance`).
public struct RelayReport: Sendable, Equatable, BinaryCodable {
    /// The sender's clock when it sent the batch: it held what the batch carries then.
    public var sentAt: Int64
    /// For each node j whose certificate the sender adopted from j itself: a time on j's clock
    /// before which the sender holds every delta j made and held (j's own certificate entry).
    /// Sent on gossip ticks; empty in pushes.
    public var held: FreshnessVector
    /// Nodes whose deltas the sender holds back from the receiver for now: the receiver must
    /// not adopt the certificate's entries for them (it may lack what they cover).
    public var withheld: [NodeID]

    public init(sentAt: Int64, held: FreshnessVector = [:], withheld: [NodeID] = []) {
        self.sentAt = sentAt
        self.held = held
        self.withheld = withheld
    }

    public func encode(to writer: inout BinaryWriter) {
        sentAt.encode(to: &writer)
        held.encode(to: &writer)
        withheld.encode(to: &writer)
    }

    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        sentAt = try Int64(from: &reader)
        held = try FreshnessVector(from: &reader)
        withheld = try [NodeID](from: &reader)
    }
}

/// The messages of `ReplicationInstance`.
public enum ReplicationMessage: Sendable, Equatable, BinaryCodable {
    case membership(MembershipMessage)
    /// Batch number `batch` of the stream from the sender's incarnation `epoch` to the
    /// receiver (numbered from 1, per receiver; an empty batch repeats the last number and
    /// is not acknowledged). `certificate` is present when the batch brings the receiver up to
    /// everything the sender held when it sent it (all its registers), provided the receiver
    /// got every batch numbered from `since` to `batch` (the shipments still unacknowledged
    /// that this one builds on); it is the sender's certificate with the sender's own entry at
    /// the send time, except the entries `relay.withheld` names.
    case deltas(epoch: UInt64, batch: UInt64, since: UInt64, [DeltaPayload], certificate: FreshnessVector?, relay: RelayReport)
    /// The receiver joined (durably) batch `batch` of the stream from incarnation `epoch`;
    /// `wanting` are the registers of it whose deltas it could not use (it lacks them): it
    /// needs their whole states.
    case acks(epoch: UInt64, batch: UInt64, wanting: [String])
    /// A bounded read at the sender (incarnation `epoch`) asks for these registers' states.
    case readRequest(epoch: UInt64, read: UInt64, registers: [String])
    /// The whole states of the requested registers, taken after the request arrived, with the
    /// replier's certificate (its own entry at the reply time).
    case readReply(epoch: UInt64, read: UInt64, [DeltaPayload], certificate: FreshnessVector)

    public func encode(to writer: inout BinaryWriter) {
        switch self {
        case let .membership(message):
            writer.writeByte(0)
            message.encode(to: &writer)
        case let .deltas(epoch, batch, since, payloads, certificate, relay):
            writer.writeByte(1)
            writer.writeVarint(epoch)
            writer.writeVarint(batch)
            writer.writeVarint(since)
            payloads.encode(to: &writer)
            certificate.encode(to: &writer)
            relay.encode(to: &writer)
        case let .acks(epoch, batch, wanting):
            writer.writeByte(2)
            writer.writeVarint(epoch)
            writer.writeVarint(batch)
            wanting.encode(to: &writer)
        case let .readRequest(epoch, read, registers):
            writer.writeByte(3)
            writer.writeVarint(epoch)
            writer.writeVarint(read)
            registers.encode(to: &writer)
        case let .readReply(epoch, read, payloads, certificate):
            writer.writeByte(4)
            writer.writeVarint(epoch)
            writer.writeVarint(read)
            payloads.encode(to: &writer)
            certificate.encode(to: &writer)
        }
    }

    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        switch try reader.readByte() {
        case 0: self = .membership(try MembershipMessage(from: &reader))
        case 1:
            let epoch = try reader.readVarint()
            let batch = try reader.readVarint()
            let since = try reader.readVarint()
            guard since <= batch &+ 1 else { throw .invalid("a batch's dependencies start after it") }
            self = .deltas(epoch: epoch, batch: batch, since: since, try [DeltaPayload](from: &reader), certificate: try FreshnessVector?(from: &reader),
                          relay: try RelayReport(from: &reader))
        case 2: self = .acks(epoch: try reader.readVarint(), batch: try reader.readVarint(), wanting: try [String](from: &reader))
        case 3: self = .readRequest(epoch: try reader.readVarint(), read: try reader.readVarint(), registers: try [String](from: &reader))
        case 4:
            self = .readReply(epoch: try reader.readVarint(), read: try reader.readVarint(), try [DeltaPayload](from: &reader),
                              certificate: try FreshnessVector(from: &reader))
        case let tag: throw .invalid("replication message tag \(tag)")
        }
    }
}

/// What a node keeps on disk: its incarnation count and its registers: each register's state
/// as last written whole, and the deltas written since, which a restart joins onto it. Persist
/// effects carry patches (the registers that changed), merged by `accumulate`: a whole state
/// replaces the register's state and drops its deltas; a delta is added to them.
public struct ReplicaDurableState: Sendable, Equatable, BinaryCodable {
    public var incarnation: UInt64
    public var slots: [String: EncodedSlot]
    /// Deltas written after the register's whole state, oldest first (their order does not
    /// matter to the join; it is kept for reading).
    public var deltas: [String: [EncodedSlot]]

    public init(incarnation: UInt64, slots: [String: EncodedSlot], deltas: [String: [EncodedSlot]] = [:]) {
        self.incarnation = incarnation
        self.slots = slots
        self.deltas = deltas
    }

    public func encode(to writer: inout BinaryWriter) {
        writer.writeVarint(incarnation)
        slots.encode(to: &writer)
        deltas.encode(to: &writer)
    }

    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        incarnation = try reader.readVarint()
        slots = try [String: EncodedSlot](from: &reader)
        deltas = try [String: [EncodedSlot]](from: &reader)
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
    /// A bounded read found no answer within its staleness bound by its latency bound.
    case stalenessBoundUnmet(best: Duration?)
    case invalidRequest(String)

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
        case let .stalenessBoundUnmet(best): "staleness bound unmet; best certified: \(best?.shortDescription ?? "none")"
        case let .invalidRequest(reason): "invalid request: \(reason)"
        }
    }
}

/// A bounded read's answer: the state and what it delivered.
public struct BoundedReadAnswer: Sendable, Equatable {
    public var state: AnyReplicated
    public var receipt: ReadReceipt

    public init(state: AnyReplicated, receipt: ReadReceipt) {
        self.state = state
        self.receipt = receipt
    }
}
