/// A grow-only counter: one entry per replica, each incremented only by its own replica; the
/// value is the sum and the join is the pointwise maximum (Shapiro et al. 2011).
public struct GCounter: Lattice, Hashable, BinaryCodable, CustomStringConvertible {
    public private(set) var entries: VersionVector

    public init() { entries = VersionVector() }
    init(entries: VersionVector) { self.entries = entries }

    public static var bottom: GCounter { GCounter() }

    public var value: UInt64 { entries.total }

    /// This replica's own contribution.
    public subscript(replica: ReplicaID) -> UInt64 { entries[replica] }

    @discardableResult
    public mutating func increment(by amount: UInt64 = 1, replica: ReplicaID) -> GCounter {
        guard amount > 0 else { return .bottom }
        let (next, overflow) = entries[replica].addingReportingOverflow(amount)
        precondition(!overflow, "GCounter entry of \(replica) would overflow UInt64")
        entries[replica] = next
        return GCounter(entries: VersionVector([replica: next]))
    }

    public mutating func formJoin(_ other: GCounter) { entries.formJoin(other.entries) }
    public func isBelowOrEqual(_ other: GCounter) -> Bool { entries.isBelowOrEqual(other.entries) }

    public var description: String { "GCounter(\(value) \(entries))" }

    public func encode(to writer: inout BinaryWriter) { entries.encode(to: &writer) }
    public init(from reader: inout BinaryReader) throws(WireDecodingError) { entries = try VersionVector(from: &reader) }
}

/// A counter that goes up and down: a pair of grow-only counters, increments and decrements.
public struct PNCounter: Lattice, Hashable, BinaryCodable, CustomStringConvertible {
    public private(set) var increments: GCounter
    public private(set) var decrements: GCounter

    public init() {
        increments = GCounter()
        decrements = GCounter()
    }

    public static var bottom: PNCounter { PNCounter() }

    /// Increments minus decrements. Traps only if the true value leaves Int64's range.
    public var value: Int64 {
        Int64(exactly: Int128(increments.value) - Int128(decrements.value))!
    }

    /// Adds `amount` (negative to subtract) and returns the delta.
    @discardableResult
    public mutating func add(_ amount: Int64, replica: ReplicaID) -> PNCounter {
        var delta = PNCounter()
        if amount >= 0 {
            delta.increments = increments.increment(by: UInt64(amount), replica: replica)
        } else {
            delta.decrements = decrements.increment(by: amount.magnitude, replica: replica)
        }
        return delta
    }

    public mutating func formJoin(_ other: PNCounter) {
        increments.formJoin(other.increments)
        decrements.formJoin(other.decrements)
    }

    public func isBelowOrEqual(_ other: PNCounter) -> Bool {
        increments.isBelowOrEqual(other.increments) && decrements.isBelowOrEqual(other.decrements)
    }

    public var description: String { "PNCounter(\(value) +\(increments.entries) -\(decrements.entries))" }

    public func encode(to writer: inout BinaryWriter) {
        increments.encode(to: &writer)
        decrements.encode(to: &writer)
    }

    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        increments = try GCounter(from: &reader)
        decrements = try GCounter(from: &reader)
    }
}
