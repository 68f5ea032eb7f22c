/// The compact binary wire encoding of Continuum values.
///
/// Integers are LEB128 varints (signed ones zig-zag first), strings and byte strings are
/// length-prefixed, and collections are count-prefixed. Sets and dictionaries are written in a
/// canonical order (sorted by the encoded bytes of their elements or keys), so equal values
/// always encode to equal bytes, whatever the process's hash seed: the simulator hashes these
/// bytes into its trace, and the trace of a seed must not change between runs.
///
/// Decoding treats its input as untrusted: every count is checked against the bytes left
/// before anything is allocated, and a decode that leaves bytes unread is refused.
public protocol BinaryCodable {
    /// Appends the encoding of `self` to `writer`.
    func encode(to writer: inout BinaryWriter)
    /// Reads one value from `reader`, advancing it past the value.
    init(from reader: inout BinaryReader) throws(WireDecodingError)
}

/// Why bytes could not be decoded into a value. Decoding never crashes on bad input.
public enum WireDecodingError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The input ended inside a value.
    case truncated(needed: Int, remaining: Int)
    /// A varint ran past 64 bits.
    case varintOverflow
    /// A count or length is larger than the bytes that are left could hold.
    case countExceedsInput(count: UInt64, remaining: Int)
    /// A value's bytes were read but do not form a valid value.
    case invalid(String)
    /// A whole-message decode left bytes unread.
    case trailingBytes(Int)

    public var description: String {
        switch self {
        case let .truncated(needed, remaining): "truncated input: needed \(needed) bytes, \(remaining) left"
        case .varintOverflow: "varint longer than 64 bits"
        case let .countExceedsInput(count, remaining): "count \(count) exceeds the \(remaining) bytes left"
        case let .invalid(reason): "invalid value: \(reason)"
        case let .trailingBytes(count): "\(count) bytes left after the value"
        }
    }
}

/// Builds an encoding. Appending never fails.
public struct BinaryWriter: Sendable {
    public private(set) var bytes: [UInt8] = []

    public init() {}

    public mutating func writeVarint(_ value: UInt64) {
        var rest = value
        while rest >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: rest) | 0x80)
            rest >>= 7
        }
        bytes.append(UInt8(rest))
    }

    /// The bytes `writeVarint(value)` writes.
    public static func varintSize(_ value: UInt64) -> Int {
        var size = 1
        var rest = value
        while rest >= 0x80 {
            size += 1
            rest >>= 7
        }
        return size
    }

    /// The bytes `writeBytes` writes for `count` bytes (or a string of `count` UTF-8 bytes).
    public static func countedSize(_ count: Int) -> Int { varintSize(UInt64(count)) + count }

    public mutating func writeZigZag(_ value: Int64) {
        writeVarint(UInt64(bitPattern: (value << 1) ^ (value >> 63)))
    }

    public mutating func writeByte(_ byte: UInt8) { bytes.append(byte) }

    /// Bytes as they are, without a count.
    public mutating func writeRaw(_ data: [UInt8]) { bytes.append(contentsOf: data) }

    public mutating func writeBytes(_ data: some Collection<UInt8>) {
        writeVarint(UInt64(data.count))
        bytes.append(contentsOf: data)
    }

    /// Whole arrays are copied at once, not byte by byte (it matters in debug builds).
    public mutating func writeBytes(_ data: [UInt8]) {
        writeVarint(UInt64(data.count))
        bytes.append(contentsOf: data)
    }

    @inlinable public mutating func write<T: BinaryCodable>(_ value: T) { value.encode(to: &self) }

    /// Writes elements in a canonical order: sorted by their own encodings. The elements are
    /// encoded one after another into one buffer and their ranges sorted (not one array per
    /// element); a single element is written in place (a delta of one update is the common case).
    /// Inlinable, as the other generic encodings below are: specialized where it is called, it
    /// looks up no type metadata at run time.
    @inlinable public mutating func writeCanonical<C: Collection>(_ elements: C) where C.Element: BinaryCodable {
        writeVarint(UInt64(elements.count))
        if elements.count <= 1 {
            for element in elements { element.encode(to: &self) }
            return
        }
        var scratch = BinaryWriter()
        var ranges: [Range<Int>] = []
        ranges.reserveCapacity(elements.count)
        for element in elements {
            let start = scratch.bytes.count
            element.encode(to: &scratch)
            ranges.append(start..<scratch.bytes.count)
        }
        appendSorted(scratch.bytes, &ranges)
    }

    /// Appends the ranges of `scratch` in lexicographic byte order of their bytes (the end of
    /// `writeCanonical`).
    @usableFromInline mutating func appendSorted(_ scratch: [UInt8], _ ranges: inout [Range<Int>]) {
        scratch.withUnsafeBufferPointer { buffer in
            ranges.sort { Self.precedes(buffer, $0, $1) }
            bytes.reserveCapacity(bytes.count + buffer.count)
            for range in ranges { bytes.append(contentsOf: UnsafeBufferPointer(rebasing: buffer[range])) }
        }
    }

    /// Whether `buffer[a]` comes before `buffer[b]` in lexicographic byte order (a prefix first).
    private static func precedes(_ buffer: UnsafeBufferPointer<UInt8>, _ a: Range<Int>, _ b: Range<Int>) -> Bool {
        let common = min(a.count, b.count)
        var index = 0
        while index < common {
            let x = buffer[a.lowerBound + index], y = buffer[b.lowerBound + index]
            if x != y { return x < y }
            index += 1
        }
        return a.count < b.count
    }
}

/// Reads an encoding. Every read checks bounds and throws rather than trapping.
public struct BinaryReader: Sendable {
    public let bytes: [UInt8]
    public private(set) var position: Int = 0

    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    public var remaining: Int { bytes.count - position }

    public mutating func readByte() throws(WireDecodingError) -> UInt8 {
        guard remaining >= 1 else { throw .truncated(needed: 1, remaining: remaining) }
        defer { position += 1 }
        return bytes[position]
    }

    public mutating func readVarint() throws(WireDecodingError) -> UInt64 {
        var result: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            let byte = try readByte()
            if shift == 63, byte > 1 { throw .varintOverflow }
            result |= UInt64(byte & 0x7F) << shift
            if byte & 0x80 == 0 { return result }
            shift += 7
            if shift > 63 { throw .varintOverflow }
        }
    }

    public mutating func readZigZag() throws(WireDecodingError) -> Int64 {
        let raw = try readVarint()
        return Int64(bitPattern: (raw >> 1) ^ (0 &- (raw & 1)))
    }

    /// Reads a count of items that each take at least `minimumBytesEach` bytes, refusing counts
    /// that the remaining input cannot hold (so a hostile count cannot force a huge allocation).
    public mutating func readCount(minimumBytesEach: Int = 1) throws(WireDecodingError) -> Int {
        let count = try readVarint()
        let bound = UInt64(remaining / max(minimumBytesEach, 1))
        guard count <= bound else { throw .countExceedsInput(count: count, remaining: remaining) }
        return Int(count)
    }

    public mutating func readBytes() throws(WireDecodingError) -> [UInt8] {
        let count = try readCount()
        defer { position += count }
        return Array(bytes[position..<(position + count)])
    }

    @inlinable public mutating func read<T: BinaryCodable>(_: T.Type = T.self) throws(WireDecodingError) -> T {
        try T(from: &self)
    }
}

extension BinaryCodable {
    /// The canonical compact encoding of `self`.
    @inlinable public func binaryEncoded() -> [UInt8] {
        var writer = BinaryWriter()
        encode(to: &writer)
        return writer.bytes
    }

    /// Decodes a whole message: fails if bytes are left over.
    @inlinable public init(binary bytes: [UInt8]) throws(WireDecodingError) {
        var reader = BinaryReader(bytes)
        self = try Self(from: &reader)
        guard reader.remaining == 0 else { throw .trailingBytes(reader.remaining) }
    }
}

// MARK: - Standard library conformances

extension UInt64: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) { writer.writeVarint(self) }
    public init(from reader: inout BinaryReader) throws(WireDecodingError) { self = try reader.readVarint() }
}

extension UInt32: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) { writer.writeVarint(UInt64(self)) }
    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        let raw = try reader.readVarint()
        guard let value = UInt32(exactly: raw) else { throw .invalid("\(raw) does not fit UInt32") }
        self = value
    }
}

extension UInt8: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) { writer.writeByte(self) }
    public init(from reader: inout BinaryReader) throws(WireDecodingError) { self = try reader.readByte() }
}

extension Int64: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) { writer.writeZigZag(self) }
    public init(from reader: inout BinaryReader) throws(WireDecodingError) { self = try reader.readZigZag() }
}

extension Int: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) { writer.writeZigZag(Int64(self)) }
    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        let raw = try reader.readZigZag()
        guard let value = Int(exactly: raw) else { throw .invalid("\(raw) does not fit Int") }
        self = value
    }
}

extension Bool: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) { writer.writeByte(self ? 1 : 0) }
    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        switch try reader.readByte() {
        case 0: self = false
        case 1: self = true
        case let other: throw .invalid("boolean byte \(other)")
        }
    }
}

extension Double: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) {
        var bits = bitPattern
        for _ in 0..<8 {
            writer.writeByte(UInt8(truncatingIfNeeded: bits))
            bits >>= 8
        }
    }

    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        var bits: UInt64 = 0
        for index in 0..<8 { bits |= UInt64(try reader.readByte()) << (8 * UInt64(index)) }
        self = Double(bitPattern: bits)
    }
}

extension String: BinaryCodable {
    /// The UTF-8 bytes are appended from the string's own storage, not from a copy.
    public func encode(to writer: inout BinaryWriter) { writer.writeBytes(utf8) }
    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        let raw = try reader.readBytes()
        guard let string = String(validating: raw, as: UTF8.self) else { throw .invalid("string is not UTF-8") }
        self = string
    }
}

extension Optional: BinaryCodable where Wrapped: BinaryCodable {
    @inlinable public func encode(to writer: inout BinaryWriter) {
        switch self {
        case .none: writer.writeByte(0)
        case let .some(value):
            writer.writeByte(1)
            value.encode(to: &writer)
        }
    }

    @inlinable public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        switch try reader.readByte() {
        case 0: self = .none
        case 1: self = .some(try Wrapped(from: &reader))
        case let other: throw .invalid("optional tag \(other)")
        }
    }
}

extension Array: BinaryCodable where Element: BinaryCodable {
    @inlinable public func encode(to writer: inout BinaryWriter) {
        // Bytes are copied whole (the same encoding: a count, then one byte each). The array is
        // reinterpreted, not cast: `as? [UInt8]` converts element by element in a debug build
        // (a 200 MB snapshot took most of a minute to stream).
        if Element.self == UInt8.self {
            writer.writeBytes(unsafeBitCast(self, to: [UInt8].self))
            return
        }
        writer.writeVarint(UInt64(count))
        for element in self { element.encode(to: &writer) }
    }

    @inlinable public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        if Element.self == UInt8.self {
            self = unsafeBitCast(try reader.readBytes(), to: [Element].self)
            return
        }
        let count = try reader.readCount()
        var elements: [Element] = []
        elements.reserveCapacity(count)
        for _ in 0..<count { elements.append(try Element(from: &reader)) }
        self = elements
    }
}

extension Set: BinaryCodable where Element: BinaryCodable {
    @inlinable public func encode(to writer: inout BinaryWriter) { writer.writeCanonical(self) }

    @inlinable public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        let count = try reader.readCount()
        var elements = Set(minimumCapacity: count)
        for _ in 0..<count {
            guard elements.insert(try Element(from: &reader)).inserted else { throw .invalid("duplicate set element") }
        }
        self = elements
    }
}

/// A key and its value, so that dictionaries can be written in canonical key order.
@usableFromInline struct BinaryEntry<Key: BinaryCodable, Value: BinaryCodable>: BinaryCodable {
    @usableFromInline var key: Key
    @usableFromInline var value: Value

    @inlinable init(key: Key, value: Value) {
        self.key = key
        self.value = value
    }

    @inlinable func encode(to writer: inout BinaryWriter) {
        key.encode(to: &writer)
        value.encode(to: &writer)
    }

    @inlinable init(from reader: inout BinaryReader) throws(WireDecodingError) {
        key = try Key(from: &reader)
        value = try Value(from: &reader)
    }
}

extension Dictionary: BinaryCodable where Key: BinaryCodable, Value: BinaryCodable {
    @inlinable public func encode(to writer: inout BinaryWriter) {
        writer.writeCanonical(lazy.map { BinaryEntry(key: $0.key, value: $0.value) })
    }

    @inlinable public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        let count = try reader.readCount(minimumBytesEach: 2)
        var entries: [Key: Value] = Dictionary(minimumCapacity: count)
        for _ in 0..<count {
            let entry = try BinaryEntry<Key, Value>(from: &reader)
            guard entries.updateValue(entry.value, forKey: entry.key) == nil else {
                throw .invalid("duplicate dictionary key")
            }
        }
        self = entries
    }
}
