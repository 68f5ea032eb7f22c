import NIOCore
import ContinuumClient

/// Splits a client's byte stream into commands: RESP arrays of bulk strings (what every client
/// library sends) or inline commands (what a person types into telnet).
struct RESPRequestDecoder: ByteToMessageDecoder {
    typealias InboundOut = [[UInt8]]

    static let argumentsMax = 1 << 20
    static let bulkBytesMax = 64 << 20
    static let inlineBytesMax = 64 << 10

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let first = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) else { return .needMoreData }
        var cursor = buffer.readerIndex
        let command: [[UInt8]]?
        if first == UInt8(ascii: "*") {
            command = try Self.parseArray(buffer, &cursor)
        } else {
            command = try Self.parseInline(buffer, &cursor)
        }
        guard let command else { return .needMoreData }
        buffer.moveReaderIndex(to: cursor)
        if !command.isEmpty { context.fireChannelRead(wrapInboundOut(command)) }
        return .continue
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        while buffer.readableBytes > 0, try decode(context: context, buffer: &buffer) == .continue {}
        return .needMoreData
    }

    /// A line ending in CRLF from `cursor` (nil: incomplete), at most `limit` bytes.
    private static func line(_ buffer: ByteBuffer, _ cursor: inout Int, limit: Int) throws(RESPProtocolError) -> [UInt8]? {
        let end = buffer.writerIndex
        var index = cursor
        while index < end {
            if buffer.getInteger(at: index, as: UInt8.self) == UInt8(ascii: "\n") {
                var line = buffer.getBytes(at: cursor, length: index - cursor)!
                if line.last == UInt8(ascii: "\r") { line.removeLast() }
                cursor = index + 1
                return line
            }
            index += 1
            if index - cursor > limit { throw RESPProtocolError(reason: "too big line") }
        }
        return nil
    }

    private static func number(_ bytes: ArraySlice<UInt8>, what: String) throws(RESPProtocolError) -> Int {
        guard let value = Int(String(decoding: bytes, as: UTF8.self)) else {
            throw RESPProtocolError(reason: "invalid \(what)")
        }
        return value
    }

    private static func parseArray(_ buffer: ByteBuffer, _ cursor: inout Int) throws(RESPProtocolError) -> [[UInt8]]? {
        guard let header = try line(buffer, &cursor, limit: 32) else { return nil }
        let count = try number(header.dropFirst(), what: "multibulk length")
        guard count <= argumentsMax else { throw RESPProtocolError(reason: "invalid multibulk length") }
        guard count > 0 else { return [] }
        var arguments: [[UInt8]] = []
        arguments.reserveCapacity(min(count, 1_024))
        for _ in 0..<count {
            guard let lengthLine = try line(buffer, &cursor, limit: 32) else { return nil }
            guard lengthLine.first == UInt8(ascii: "$") else {
                throw RESPProtocolError(reason: "expected '$', got '\(lengthLine.first.map { String(UnicodeScalar($0)) } ?? "")'")
            }
            let length = try number(lengthLine.dropFirst(), what: "bulk length")
            guard (0...bulkBytesMax).contains(length) else { throw RESPProtocolError(reason: "invalid bulk length") }
            guard buffer.writerIndex - cursor >= length + 2 else { return nil }
            arguments.append(buffer.getBytes(at: cursor, length: length)!)
            guard buffer.getInteger(at: cursor + length, as: UInt8.self) == UInt8(ascii: "\r"),
                  buffer.getInteger(at: cursor + length + 1, as: UInt8.self) == UInt8(ascii: "\n") else {
                throw RESPProtocolError(reason: "bulk string not followed by CRLF")
            }
            cursor += length + 2
        }
        return arguments
    }

    private static func parseInline(_ buffer: ByteBuffer, _ cursor: inout Int) throws(RESPProtocolError) -> [[UInt8]]? {
        guard let text = try line(buffer, &cursor, limit: inlineBytesMax) else { return nil }
        return text.split(whereSeparator: { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\t") }).map(Array.init)
    }
}
