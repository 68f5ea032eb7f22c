import ContinuumCore
import DequeModule
import NIOCore
import NIOPosix
import NIOSSL
import Synchronization

/// A small Redis-protocol client: one connection, commands answered in order. For scripts
/// (`continuum client`), the cluster launcher's readiness checks, and tests.
public final class RESPClient: Sendable {
    private let channel: any Channel
    private let handler: ReplyHandler
    /// How long a command may wait for its reply.
    public let replyTimeout: Duration

    private init(channel: any Channel, handler: ReplyHandler, replyTimeout: Duration) {
        self.channel = channel
        self.handler = handler
        self.replyTimeout = replyTimeout
    }

    /// Connects; with `credentials`, signs in (`AUTH user password`) before returning and
    /// fails with the server's refusal (`WRONGPASS ...`) when it is refused.
    public static func connect(host: String, port: Int, timeout: Duration = .seconds(2), replyTimeout: Duration = .seconds(10),
                               credentials: Credentials? = nil, tls: ClientTLS? = nil,
                               group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) async throws -> RESPClient {
        let client = try await connectUnauthenticated(host: host, port: port, timeout: timeout, replyTimeout: replyTimeout, tls: tls,
                                                      group: group)
        if let credentials {
            let reply = try await client.send(["AUTH", credentials.user, credentials.password])
            guard reply == .ok else {
                await client.close()
                throw RESPClientError(description: "\(host):\(port) refused the credentials of '\(credentials.user)': \(reply)")
            }
        }
        return client
    }

    private static func connectUnauthenticated(host: String, port: Int, timeout: Duration, replyTimeout: Duration, tls: ClientTLS?,
                                               group: any EventLoopGroup) async throws -> RESPClient {
        let handler = ReplyHandler()
        let context = try tls?.context()
        // An address is checked against the certificate's IP addresses, a name against its DNS names.
        let serverName = (try? SocketAddress(ipAddress: host, port: 0)) == nil ? host : nil
        let channel = try await ClientBootstrap(group: group)
            .connectTimeout(.nanoseconds(timeout.nanoseconds))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let context {
                        try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: context, serverHostname: serverName))
                    }
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(RESPReplyDecoder()))
                    try channel.pipeline.syncOperations.addHandler(handler)
                }
            }
            .connect(host: host, port: port).get()
        return RESPClient(channel: channel, handler: handler, replyTimeout: replyTimeout)
    }

    /// Sends one command (as a RESP array of bulk strings) and returns its reply.
    public func send(_ arguments: [String]) async throws -> RESPReply {
        try await send(arguments.map { Array($0.utf8) })
    }

    public func send(_ arguments: [[UInt8]]) async throws -> RESPReply {
        var buffer = channel.allocator.buffer(capacity: 64)
        buffer.writeString("*\(arguments.count)\r\n")
        for argument in arguments {
            buffer.writeString("$\(argument.count)\r\n")
            buffer.writeBytes(argument)
            buffer.writeString("\r\n")
        }
        let promise = channel.eventLoop.makePromise(of: RESPReply.self)
        let handler = self.handler
        let channel = self.channel
        // Queued and written in one event-loop task, so that commands sent concurrently from
        // several tasks are written in the order their replies are expected. A write that fails
        // (the connection is closed) fails the command; a reply that does not come within the
        // timeout closes the connection (later replies could not be matched).
        let request = buffer
        channel.eventLoop.execute {
            handler.expect(promise)
            let written = channel.eventLoop.makePromise(of: Void.self)
            channel.writeAndFlush(request, promise: written)
            written.futureResult.whenFailure { error in handler.fail(promise, error) }
        }
        let replyTimeout = self.replyTimeout
        let timeout = channel.eventLoop.scheduleTask(in: .nanoseconds(replyTimeout.nanoseconds)) {
            handler.fail(promise, RESPClientError(description: "no reply within \(replyTimeout)"))
            channel.close(promise: nil)
        }
        defer { timeout.cancel() }
        return try await promise.futureResult.get()
    }

    /// Whether the connection is still open (as far as this side knows).
    public var isActive: Bool { channel.isActive }

    public func close() async {
        try? await channel.close()
    }
}

/// TLS for a client: the PEM file of the certificate authority it trusts. The server's
/// certificate must chain to it and name the host dialled (a DNS name, or an IP address).
public struct ClientTLS: Sendable, Equatable {
    public var ca: String

    public init(ca: String) { self.ca = ca }

    func context() throws -> NIOSSLContext {
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(ca))
        configuration.certificateVerification = .fullVerification
        configuration.minimumTLSVersion = .tlsv12
        return try NIOSSLContext(configuration: configuration)
    }
}

/// A user name and password for `AUTH` (the user `default` for Redis's `requirepass`).
public struct Credentials: Sendable, Equatable {
    public var user: String
    public var password: String

    public init(user: String = "default", password: String) {
        self.user = user
        self.password = password
    }
}

public struct RESPClientError: Error, CustomStringConvertible {
    public var description: String
    public init(description: String) { self.description = description }
}

/// Matches replies to the commands sent, in order.
final class ReplyHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = RESPReply

    private struct State {
        var waiting = Deque<EventLoopPromise<RESPReply>>()
        var closed = false
    }

    private let state = Mutex(State())

    /// Waits for the next reply; fails at once when the connection is already gone.
    func expect(_ promise: EventLoopPromise<RESPReply>) {
        let closed = state.withLock { state in
            if state.closed { return true }
            state.waiting.append(promise)
            return false
        }
        if closed { promise.fail(RESPClientError(description: "the connection is closed")) }
    }

    /// Fails one waiting command (its write failed, or its reply timed out).
    func fail(_ promise: EventLoopPromise<RESPReply>, _ error: any Error) {
        let found = state.withLock { state in
            guard let index = state.waiting.firstIndex(where: { $0.futureResult === promise.futureResult }) else { return false }
            state.waiting.remove(at: index)
            return true
        }
        if found { promise.fail(error) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let reply = unwrapInboundIn(data)
        state.withLock { $0.waiting.popFirst() }?.succeed(reply)
    }

    func channelInactive(context: ChannelHandlerContext) {
        let failed = state.withLock { state in
            state.closed = true
            defer { state.waiting.removeAll() }
            return Array(state.waiting)
        }
        for promise in failed { promise.fail(RESPClientError(description: "the server closed the connection")) }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

/// Parses RESP2 and RESP3 replies.
struct RESPReplyDecoder: ByteToMessageDecoder {
    typealias InboundOut = RESPReply

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        var cursor = buffer.readerIndex
        guard let reply = try Self.parse(buffer, &cursor) else { return .needMoreData }
        buffer.moveReaderIndex(to: cursor)
        context.fireChannelRead(wrapInboundOut(reply))
        return .continue
    }

    private static func line(_ buffer: ByteBuffer, _ cursor: inout Int) -> String? {
        var index = cursor
        while index + 1 < buffer.writerIndex {
            if buffer.getInteger(at: index, as: UInt8.self) == 13, buffer.getInteger(at: index + 1, as: UInt8.self) == 10 {
                let text = buffer.getString(at: cursor, length: index - cursor) ?? ""
                cursor = index + 2
                return text
            }
            index += 1
        }
        return nil
    }

    static func parse(_ buffer: ByteBuffer, _ cursor: inout Int) throws -> RESPReply? {
        guard let kind = buffer.getInteger(at: cursor, as: UInt8.self) else { return nil }
        var position = cursor + 1
        guard let header = line(buffer, &position) else { return nil }
        func count() throws -> Int {
            guard let value = Int(header) else { throw RESPClientError(description: "bad length '\(header)'") }
            return value
        }
        let reply: RESPReply
        switch kind {
        case UInt8(ascii: "+"): reply = .simple(header)
        case UInt8(ascii: "-"): reply = .error(header)
        case UInt8(ascii: ":"):
            guard let value = Int64(header) else { throw RESPClientError(description: "bad integer '\(header)'") }
            reply = .integer(value)
        case UInt8(ascii: "_"): reply = .null
        case UInt8(ascii: "#"): reply = .integer(header == "t" ? 1 : 0)
        case UInt8(ascii: ","): reply = .bulk(header)
        case UInt8(ascii: "$"), UInt8(ascii: "="), UInt8(ascii: "!"):
            let length = try count()
            if length < 0 {
                reply = .null
            } else {
                guard buffer.writerIndex - position >= length + 2 else { return nil }
                reply = kind == UInt8(ascii: "!") ? .error(buffer.getString(at: position, length: length) ?? "")
                    : .bulk(buffer.getBytes(at: position, length: length)!)
                position += length + 2
            }
        case UInt8(ascii: "*"), UInt8(ascii: "~"), UInt8(ascii: ">"), UInt8(ascii: "%"):
            let length = try count()
            if length < 0 {
                reply = .null
            } else {
                let elements = kind == UInt8(ascii: "%") ? length * 2 : length
                var items: [RESPReply] = []
                for _ in 0..<elements {
                    guard let item = try parse(buffer, &position) else { return nil }
                    items.append(item)
                }
                switch kind {
                case UInt8(ascii: "~"): reply = .set(items)
                case UInt8(ascii: "%"): reply = .map(stride(from: 0, to: items.count, by: 2).map { (items[$0], items[$0 + 1]) })
                default: reply = .array(items)
                }
            }
        default:
            throw RESPClientError(description: "unknown reply type '\(UnicodeScalar(kind))'")
        }
        cursor = position
        return reply
    }
}

extension RESPReply: CustomStringConvertible {
    /// As redis-cli prints replies.
    public var description: String { lines(indent: "").joined(separator: "\n") }

    private func lines(indent: String) -> [String] {
        switch self {
        case let .simple(text): return [text]
        case let .error(text): return ["(error) \(text)"]
        case let .integer(value): return ["(integer) \(value)"]
        case let .bulk(bytes): return ["\"\(String(decoding: bytes, as: UTF8.self))\""]
        case .null: return ["(nil)"]
        case let .array(items), let .set(items):
            if items.isEmpty { return ["(empty array)"] }
            return items.enumerated().flatMap { index, item in
                let nested = item.lines(indent: indent + "   ")
                return ["\(index + 1)) \(nested[0])"] + nested.dropFirst().map { indent + "   " + $0 }
            }
        case let .map(pairs):
            if pairs.isEmpty { return ["(empty hash)"] }
            return pairs.enumerated().flatMap { index, pair in
                ["\(index + 1)# \(pair.0.lines(indent: indent)[0]) => \(pair.1.lines(indent: indent + "   ")[0])"]
            }
        }
    }
}
