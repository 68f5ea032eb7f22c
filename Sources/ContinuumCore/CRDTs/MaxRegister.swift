/// A register that keeps the largest value written (a lattice for any total order). Bottom is
/// "no value".
public struct MaxRegister<Value: Comparable & Sendable & Codable>: Lattice, CustomStringConvertible {
    public private(set) var value: Value?

    public init(_ value: Value? = nil) { self.value = value }

    public static var bottom: MaxRegister { MaxRegister() }

    /// Writes `candidate`; a value not above the current one changes nothing (bottom delta).
    @discardableResult
    public mutating func write(_ candidate: Value) -> MaxRegister {
        guard value.map({ candidate > $0 }) ?? true else { return .bottom }
        value = candidate
        return MaxRegister(candidate)
    }

    public mutating func formJoin(_ other: MaxRegister) {
        guard let theirs = other.value else { return }
        if value.map({ theirs > $0 }) ?? true { value = theirs }
    }

    public func isBelowOrEqual(_ other: MaxRegister) -> Bool {
        guard let mine = value else { return true }
        guard let theirs = other.value else { return false }
        return mine <= theirs
    }

    public var description: String { "MaxRegister(\(value.map { "\($0)" } ?? "⊥"))" }
}

extension MaxRegister: BinaryCodable where Value: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) { value.encode(to: &writer) }
    public init(from reader: inout BinaryReader) throws(WireDecodingError) { value = try Value?(from: &reader) }
}
