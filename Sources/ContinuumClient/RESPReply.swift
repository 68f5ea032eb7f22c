import NIOCore

/// A reply in the Redis protocol. Encoded as RESP2 or, after `HELLO 3`, RESP3 (maps, sets and
/// nulls of their own; RESP2 folds them into arrays and null bulk strings).
public indirect enum RESPReply: Sendable, Equatable {
    case simple(String)
    case error(String)
    case integer(Int64)
    case bulk([UInt8])
    case null
    case array([RESPReply])
    case map([(RESPReply, RESPReply)])
    case set([RESPReply])

    public static func == (lhs: RESPReply, rhs: RESPReply) -> Bool {
        switch (lhs, rhs) {
        case let (.simple(a), .simple(b)), let (.error(a), .error(b)): a == b
        case let (.integer(a), .integer(b)): a == b
        case let (.bulk(a), .bulk(b)): a == b
        case (.null, .null): true
        case let (.array(a), .array(b)), let (.set(a), .set(b)): a == b
        case let (.map(a), .map(b)): a.count == b.count && zip(a, b).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        default: false
        }
    }

    public static func bulk(_ text: String) -> RESPReply { .bulk(Array(text.utf8)) }
    public static let ok = RESPReply.simple("OK")

    public func encode(into buffer: inout ByteBuffer, resp3: Bool) {
        switch self {
        case let .simple(text):
            buffer.writeString("+\(Self.oneLine(text))\r\n")
        case let .error(text):
            buffer.writeString("-\(Self.oneLine(text))\r\n")
        case let .integer(value):
            buffer.writeString(":\(value)\r\n")
        case let .bulk(bytes):
            buffer.writeString("$\(bytes.count)\r\n")
            buffer.writeBytes(bytes)
            buffer.writeString("\r\n")
        case .null:
            buffer.writeString(resp3 ? "_\r\n" : "$-1\r\n")
        case let .array(items):
            buffer.writeString("*\(items.count)\r\n")
            for item in items { item.encode(into: &buffer, resp3: resp3) }
        case let .set(items):
            buffer.writeString("\(resp3 ? "~" : "*")\(items.count)\r\n")
            for item in items { item.encode(into: &buffer, resp3: resp3) }
        case let .map(pairs):
            buffer.writeString(resp3 ? "%\(pairs.count)\r\n" : "*\(pairs.count * 2)\r\n")
            for (key, value) in pairs {
                key.encode(into: &buffer, resp3: resp3)
                value.encode(into: &buffer, resp3: resp3)
            }
        }
    }

    /// Simple strings and errors cannot hold line breaks.
    private static func oneLine(_ text: String) -> String {
        String(text.map { $0 == "\r" || $0 == "\n" ? " " : $0 })
    }
}

/// Why a client's bytes are not a Redis request; the connection is answered with an error and
/// closed, as Redis does.
public struct RESPProtocolError: Error, Equatable, CustomStringConvertible {
    public var reason: String
    public init(reason: String) { self.reason = reason }
    public var description: String { "Protocol error: \(reason)" }
}

