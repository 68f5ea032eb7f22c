/// A last-writer-wins register: the write with the greatest hybrid logical clock timestamp
/// wins, and equal timestamps are broken by replica id. Concurrent writes lose all but one
/// value; use `MVRegister` to keep them.
public struct LWWRegister<Value: Sendable & Equatable & Codable>: Lattice, CustomStringConvertible {
    /// A written value and the stamp that orders it.
    public struct Entry: Sendable, Equatable, Codable {
        public var value: Value
        public var timestamp: HLCTimestamp
        public var replica: ReplicaID

        var order: (HLCTimestamp, ReplicaID) { (timestamp, replica) }
    }

    public private(set) var entry: Entry?

    public init() { entry = nil }
    init(entry: Entry?) { self.entry = entry }

    public static var bottom: LWWRegister { LWWRegister() }

    public var value: Value? { entry?.value }
    public var timestamp: HLCTimestamp? { entry?.timestamp }

    /// Writes `value`, stamped by `clock` at physical time `physical` after observing the
    /// current stamp, so the write supersedes everything this replica has seen.
    @discardableResult
    public mutating func write(
        _ value: Value, replica: ReplicaID, clock: inout HybridLogicalClock, physical: UInt64
    ) throws(ClockError) -> LWWRegister {
        let timestamp = try clock.observe(entry?.timestamp ?? .zero, physical: physical)
        let delta = LWWRegister(entry: Entry(value: value, timestamp: timestamp, replica: replica))
        formJoin(delta)
        return delta
    }

    public mutating func formJoin(_ other: LWWRegister) {
        guard let theirs = other.entry else { return }
        guard let mine = entry else {
            entry = theirs
            return
        }
        if mine.order < theirs.order { entry = theirs }
    }

    public func isBelowOrEqual(_ other: LWWRegister) -> Bool {
        guard let mine = entry else { return true }
        guard let theirs = other.entry else { return false }
        return mine.order < theirs.order || mine == theirs
    }

    public var description: String {
        entry.map { "LWWRegister(\($0.value) @\($0.timestamp)/\($0.replica))" } ?? "LWWRegister(⊥)"
    }
}

extension LWWRegister: BinaryCodable where Value: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) {
        guard let entry else { return writer.writeByte(0) }
        writer.writeByte(1)
        entry.value.encode(to: &writer)
        entry.timestamp.encode(to: &writer)
        entry.replica.encode(to: &writer)
    }

    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        switch try reader.readByte() {
        case 0: entry = nil
        case 1:
            entry = Entry(
                value: try Value(from: &reader), timestamp: try HLCTimestamp(from: &reader), replica: try ReplicaID(from: &reader))
        case let tag: throw .invalid("LWW register tag \(tag)")
        }
    }
}
