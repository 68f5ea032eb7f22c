/// A hybrid logical clock timestamp (Kulkarni et al., "Logical Physical Clocks", 2014): the
/// largest physical time seen, in nanoseconds, and a logical counter that orders events within
/// the same physical time. Ordered lexicographically; it stays close to physical time while
/// respecting causality, which is what last-writer-wins values and versions need.
public struct HLCTimestamp: Hashable, Comparable, Codable, Sendable, BinaryCodable, CustomStringConvertible {
    public var wallTimeNanoseconds: UInt64
    public var logical: UInt32

    public static let zero = HLCTimestamp(wallTimeNanoseconds: 0, logical: 0)

    public init(wallTimeNanoseconds: UInt64, logical: UInt32) {
        self.wallTimeNanoseconds = wallTimeNanoseconds
        self.logical = logical
    }

    public static func < (lhs: HLCTimestamp, rhs: HLCTimestamp) -> Bool {
        (lhs.wallTimeNanoseconds, lhs.logical) < (rhs.wallTimeNanoseconds, rhs.logical)
    }

    public var description: String { "\(wallTimeNanoseconds).\(logical)" }

    public func encode(to writer: inout BinaryWriter) {
        writer.writeVarint(wallTimeNanoseconds)
        writer.writeVarint(UInt64(logical))
    }

    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        wallTimeNanoseconds = try reader.readVarint()
        logical = try UInt32(from: &reader)
    }
}

/// Why a hybrid logical clock refused a timestamp.
public enum ClockError: Error, Equatable, Sendable {
    /// A remote timestamp is further ahead of the local physical clock than the configured
    /// maximum offset: adopting it would drag this clock into the future.
    case remoteTooFarAhead(remote: HLCTimestamp, localPhysicalNanoseconds: UInt64, maxOffsetNanoseconds: UInt64)
    /// The logical counter would overflow (more than 2^32 events within one physical nanosecond).
    case logicalOverflow
}

/// A hybrid logical clock. Pure: the physical time is passed in by the caller, never read.
///
/// - `tick(physical:)` stamps a local or send event;
/// - `observe(_:physical:)` stamps a receive event, so that the result is greater than both the
///   last local stamp and the remote one.
public struct HybridLogicalClock: Sendable, Equatable, Codable {
    /// The last timestamp this clock issued.
    public private(set) var latest: HLCTimestamp
    /// A remote timestamp more than this far ahead of local physical time is refused;
    /// `nil` accepts any.
    public var maxOffsetNanoseconds: UInt64?

    public init(latest: HLCTimestamp = .zero, maxOffsetNanoseconds: UInt64? = nil) {
        self.latest = latest
        self.maxOffsetNanoseconds = maxOffsetNanoseconds
    }

    /// A timestamp for a local or send event at physical time `physical`.
    public mutating func tick(physical: UInt64) throws(ClockError) -> HLCTimestamp {
        if physical > latest.wallTimeNanoseconds {
            latest = HLCTimestamp(wallTimeNanoseconds: physical, logical: 0)
        } else {
            guard latest.logical < .max else { throw .logicalOverflow }
            latest.logical += 1
        }
        return latest
    }

    /// A timestamp for receiving `remote` at physical time `physical`: greater than `remote`
    /// and than every timestamp this clock issued before.
    public mutating func observe(_ remote: HLCTimestamp, physical: UInt64) throws(ClockError) -> HLCTimestamp {
        if let maxOffset = maxOffsetNanoseconds, remote.wallTimeNanoseconds > physical &+ maxOffset {
            throw .remoteTooFarAhead(remote: remote, localPhysicalNanoseconds: physical, maxOffsetNanoseconds: maxOffset)
        }
        let wall = max(latest.wallTimeNanoseconds, remote.wallTimeNanoseconds, physical)
        let logical: UInt64
        switch (wall == latest.wallTimeNanoseconds, wall == remote.wallTimeNanoseconds) {
        case (true, true): logical = UInt64(max(latest.logical, remote.logical)) + 1
        case (true, false): logical = UInt64(latest.logical) + 1
        case (false, true): logical = UInt64(remote.logical) + 1
        case (false, false): logical = 0
        }
        guard let logical32 = UInt32(exactly: logical) else { throw .logicalOverflow }
        latest = HLCTimestamp(wallTimeNanoseconds: wall, logical: logical32)
        return latest
    }
}
