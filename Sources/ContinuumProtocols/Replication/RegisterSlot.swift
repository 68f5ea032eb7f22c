import ContinuumCore

/// A register as it is replicated: its generation, its value type, and its state, or nothing
/// once it was deleted. Slots form a lattice too: a higher generation wins outright; within a
/// generation deletion wins (it is final for that generation), and live states join.
///
/// Deleting a register replicates a tombstone of a few bytes (its name and generation) and
/// drops the state everywhere; declaring it again starts the next generation, so an update
/// concurrent with the delete, made in the old generation, is discarded rather than resurrected.
public struct RegisterSlot: Sendable, Equatable, CustomStringConvertible {
    public var generation: UInt64
    public var typeName: String
    /// The state; nil for a deleted register.
    public var state: AnyReplicated?

    public init(generation: UInt64, typeName: String, state: AnyReplicated?) {
        precondition(generation >= 1, "register generations start at 1")
        precondition(state.map { $0.typeName == typeName } ?? true, "slot of \(typeName) holding \(state!.typeName)")
        self.generation = generation
        self.typeName = typeName
        self.state = state
    }

    public var isDeleted: Bool { state == nil }

    /// Why two slots could not be joined.
    public enum JoinError: Error, Equatable, Sendable {
        /// One name, two value types in the same generation: a programming error somewhere.
        case typeMismatch(local: String, remote: String)
    }

    public func joined(with other: RegisterSlot) throws(JoinError) -> RegisterSlot {
        if generation != other.generation { return generation > other.generation ? self : other }
        guard typeName == other.typeName else { throw .typeMismatch(local: typeName, remote: other.typeName) }
        guard let mine = state, let theirs = other.state else {
            return RegisterSlot(generation: generation, typeName: typeName, state: nil)
        }
        return RegisterSlot(generation: generation, typeName: typeName, state: mine.join(theirs)!)
    }

    /// Joins `other` into this slot in place (a small `other` costs about its own size; see
    /// `AnyReplicated.formJoin`) and says whether the slot changed.
    public mutating func formJoin(_ other: RegisterSlot) throws(JoinError) -> Bool {
        if generation != other.generation {
            guard other.generation > generation else { return false }
            self = other
            return true
        }
        guard typeName == other.typeName else { throw .typeMismatch(local: typeName, remote: other.typeName) }
        guard state != nil else { return false }
        guard other.state != nil else {
            state = nil
            return true
        }
        return state!.formJoin(other.state!)!
    }

    /// The slot lattice order.
    public func isBelowOrEqual(_ other: RegisterSlot) -> Bool {
        if generation != other.generation { return generation < other.generation }
        guard typeName == other.typeName else { return false }
        guard let mine = state else { return other.state == nil }
        guard let theirs = other.state else { return true }
        return mine.isBelowOrEqual(theirs) ?? false
    }

    public var description: String {
        "g\(generation) " + (state.map { "\($0)" } ?? "deleted")
    }
}

/// A slot on the wire or on disk: the state as bytes, decoded through a `ReplicableTypeCatalog`.
public struct EncodedSlot: Sendable, Equatable, BinaryCodable {
    public var generation: UInt64
    public var typeName: String
    /// nil for a deleted register.
    public var bytes: [UInt8]?

    public init(_ slot: RegisterSlot) {
        generation = slot.generation
        typeName = slot.typeName
        bytes = slot.state?.encoded()
    }

    public init(generation: UInt64, typeName: String, bytes: [UInt8]?) {
        self.generation = generation
        self.typeName = typeName
        self.bytes = bytes
    }

    public func decode(with catalog: ReplicableTypeCatalog) throws(WireDecodingError) -> RegisterSlot {
        guard generation >= 1 else { throw .invalid("register generation 0") }
        guard let typeName = catalog.canonical(typeName) else { throw .invalid("unknown register type \(typeName)") }
        return RegisterSlot(generation: generation, typeName: typeName,
                            state: try bytes.map { bytes throws(WireDecodingError) in try catalog.decode(typeName: typeName, bytes) })
    }

    public func encode(to writer: inout BinaryWriter) {
        writer.writeVarint(generation)
        typeName.encode(to: &writer)
        bytes.encode(to: &writer)
    }

    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        generation = try reader.readVarint()
        typeName = try String(from: &reader)
        bytes = try [UInt8]?(from: &reader)
    }
}
