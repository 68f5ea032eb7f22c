import NIOCore
import ContinuumClient

/// Splits a client's byte stream into commands: RESP arrays of bulk strings (what every client
/// library sends) or inline commands (what a person types into telnet).
struct RESPRequestDecoder: ByteToMessageDecoder {
    typealias InboundOut = [[UInt8]]

    /// The default limits: arguments of one command, bytes of one bulk string (stricter than
    /// Redis's 512 MB `proto-max-bulk-len`: a value must fit a 64 MiB peer frame), bytes of one
    /// inline command.
    static let argumentsMax = 1 << 20
    static let bulkBytesMax = 64 << 20
    static let inlineBytesMax = 64 << 10

    /// The limits this decoder holds a client to (see `RESPLimits`).
    let limits: RESPLimits

    init(limits: RESPLimits = RESPLimits()) { self.limits = limits }

    /// The array being received: how many arguments are still to come, and those that came.
    /// Each argument is consumed from the buffer as it completes, so a command that arrives in
    /// many reads is parsed once, not again from its start on every read.
    private var partial: (remaining: Int, arguments: [[UInt8]])?
    /// Bytes after the reader index already searched for the end of the current line.
    private var lineSearched = 0
    /// Bytes looked at so far (for tests: parsing is linear in what arrives).
    private(set) var bytesExamined = 0

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let command = try next(&buffer) else { return .needMoreData }
        if !command.isEmpty { context.fireChannelRead(wrapInboundOut(command)) }
        return .continue
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        while buffer.readableBytes > 0, try decode(context: context, buffer: &buffer) == .continue {}
        return .needMoreData
    }

    /// The next whole command in `buffer` (consumed), or nil until more bytes come.
    mutating func next(_ buffer: inout ByteBuffer) throws(RESPProtocolError) -> [[UInt8]]? {
        if partial == nil {
            guard let first = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) else { return nil }
            var cursor = buffer.readerIndex
            guard first == UInt8(ascii: "*") else {
                guard let command = try parseInline(buffer, &cursor) else { return nil }
                buffer.moveReaderIndex(to: cursor)
                return command
            }
            guard let header = try line(buffer, &cursor, limit: 32) else { return nil }
            let count = try Self.number(header.dropFirst(), what: "multibulk length")
            guard count <= limits.arguments else { throw RESPProtocolError(reason: "invalid multibulk length") }
            buffer.moveReaderIndex(to: cursor)
            guard count > 0 else { return [] }
            var arguments: [[UInt8]] = []
            arguments.reserveCapacity(min(count, 1_024))
            partial = (count, arguments)
        }
        while var current = partial {
            var cursor = buffer.readerIndex
            guard let lengthLine = try line(buffer, &cursor, limit: 32) else { return nil }
            guard lengthLine.first == UInt8(ascii: "$") else {
                throw RESPProtocolError(reason: "expected '$', got '\(lengthLine.first.map { String(UnicodeScalar($0)) } ?? "")'")
            }
            let length = try Self.number(lengthLine.dropFirst(), what: "bulk length")
            guard (0...limits.bulkBytes).contains(length) else { throw RESPProtocolError(reason: "invalid bulk length") }
            // The length line is read again when the bulk is not all here: at most 32 bytes.
            guard buffer.writerIndex - cursor >= length + 2 else { return nil }
            guard buffer.getInteger(at: cursor + length, as: UInt8.self) == UInt8(ascii: "\r"),
                  buffer.getInteger(at: cursor + length + 1, as: UInt8.self) == UInt8(ascii: "\n") else {
                throw RESPProtocolError(reason: "bulk string not followed by CRLF")
            }
            bytesExamined += length + 2
            partial = nil  // the arguments move, not copied
            current.arguments.append(buffer.getBytes(at: cursor, length: length)!)
            current.remaining -= 1
            buffer.moveReaderIndex(to: cursor + length + 2)
            if current.remaining == 0 { return current.arguments }
            partial = current
        }
        return nil
    }

    /// A line ending in CRLF from `cursor`, which is the reader index (nil: incomplete), at most
    /// `limit` bytes. Where an incomplete line was already searched is remembered, so a line
    /// that arrives in many reads is searched once.
    private mutating func line(_ buffer: ByteBuffer, _ cursor: inout Int, limit: Int) throws(RESPProtocolError) -> [UInt8]? {
        let start = cursor
        let end = buffer.writerIndex
        var index = start + lineSearched
        while index < end {
            bytesExamined += 1
            if buffer.getInteger(at: index, as: UInt8.self) == UInt8(ascii: "\n") {
                var line = buffer.getBytes(at: start, length: index - start)!
                if line.last == UInt8(ascii: "\r") { line.removeLast() }
                cursor = index + 1
                lineSearched = 0
                return line
            }
            index += 1
            if index - start > limit { throw RESPProtocolError(reason: "too big line") }
        }
        lineSearched = index - start
        return nil
    }

    private static func number(_ bytes: ArraySlice<UInt8>, what: String) throws(RESPProtocolError) -> Int {
        guard let value = Int(String(decoding: bytes, as: UTF8.self)) else {
            throw RESPProtocolError(reason: "invalid \(what)")
        }
        return value
    }

    /// An inline command. One that is the start of an HTTP request (`POST`, `GET / HTTP/1.1`,
    /// `Host:`) closes the connection before anything after it runs, as Redis does: a web page
    /// can make a browser send such a request to this port, with Redis commands in its body.
    private mutating func parseInline(_ buffer: ByteBuffer, _ cursor: inout Int) throws(RESPProtocolError) -> [[UInt8]]? {
        guard let text = try line(buffer, &cursor, limit: limits.inlineBytes) else { return nil }
        let words = text.split(whereSeparator: { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\t") }).map(Array.init)
        if let first = words.first.map({ String(decoding: $0, as: UTF8.self).lowercased() }),
           first == "post" || first == "host:" || words.last.map({ String(decoding: $0.prefix(5), as: UTF8.self) }) == "HTTP/" {
            throw RESPProtocolError(reason: "an HTTP request on the Redis port (a cross-protocol attack?)")
        }
        return words
    }
}

/// The limits on one client request (Redis's `proto-max-bulk-len` and its fixed multibulk and
/// inline limits), each refused with a protocol error that closes only that connection, before
/// anything of the refused size is allocated.
public struct RESPLimits: Sendable, Equatable {
    public var arguments = RESPRequestDecoder.argumentsMax
    public var bulkBytes = RESPRequestDecoder.bulkBytesMax
    public var inlineBytes = RESPRequestDecoder.inlineBytesMax

    public init() {}

    public static let argumentsRange = 1...(1 << 24)
    public static let bulkBytesRange = 1_024...RESPRequestDecoder.bulkBytesMax
    public static let inlineBytesRange = 1_024...(1 << 20)
}
