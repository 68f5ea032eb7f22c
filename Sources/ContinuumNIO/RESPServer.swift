import Continuum
import ContinuumCore
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import Synchronization

/// A Redis-protocol (RESP2 and RESP3) server for one node, so that `redis-cli`,
/// `redis-benchmark` and every language's Redis client can use the cluster (see
/// `RedisServerConfiguration` for the commands). Each connection's commands run one at a time
/// in arrival order (pipelining keeps its order); connections run concurrently. A server
/// passes the event loop of the node's actor as `group` (`NodeServer` does): then a command is
/// read, applied and answered on that one thread, its connection's command loop a task whose
/// nonisolated code runs on the channel's loop (`LoopTaskExecutor`).
public final class RESPServer: Sendable {
    public let node: Node
    public let configuration: RedisServerConfiguration
    private let transport: NIOTransport?
    /// Where command latencies and errors go (none: not measured).
    public let metrics: NodeMetrics?
    private let group: any EventLoopGroup
    private let logger: Logger
    private let channel = Mutex<(any Channel)?>(nil)
    private let connections = Mutex<[ObjectIdentifier: any Channel]>([:])
    /// Clients refused because `clientsMax` were connected, and clients disconnected for an
    /// output buffer past its limit.
    let refusedClients = Atomic<Int>(0)
    let overflowedClients = Atomic<Int>(0)

    /// Clients connected now.
    public var connectedClients: Int { connections.withLock { $0.count } }
    public var clientsRefused: Int { refusedClients.load(ordering: .relaxed) }
    public var clientsOverflowed: Int { overflowedClients.load(ordering: .relaxed) }
    /// Commands a connection may have waiting (pipelined); a client that sends more without
    /// reading its replies is answered with an error and disconnected.
    public static let pipelinedCommandsMax = 10_000

    /// TLS on every connection (nil: plain TCP).
    private let tls: NIOSSLContext?

    public init(node: Node, configuration: RedisServerConfiguration, transport: NIOTransport?, metrics: NodeMetrics? = nil,
                tls: NIOSSLContext? = nil, group: any EventLoopGroup, logger: Logger = Logger(label: "continuum.resp")) {
        self.tls = tls
        self.node = node
        self.metrics = metrics
        self.configuration = configuration
        self.transport = transport
        self.group = group
        self.logger = logger
    }

    /// Listens on `host:port` (0: any free port); returns the bound port.
    @discardableResult
    public func listen(host: String, port: Int) async throws -> Int {
        let configuration = self.configuration
        let tls = self.tls
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 512)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.writeBufferWaterMark, value: .init(low: configuration.outputBufferBytesMax / 2,
                                                                    high: configuration.outputBufferBytesMax))
            .childChannelInitializer { [self] channel in
                let key = ObjectIdentifier(channel)
                let admitted = connections.withLock { connections in
                    guard connections.count < configuration.clientsMax else { return false }
                    connections[key] = channel
                    return true
                }
                guard admitted else {
                    // Refused before anything is read or a task started: the answer, then close.
                    refusedClients.add(1, ordering: .relaxed)
                    return channel.eventLoop.makeCompletedFuture {
                        if let tls { try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls)) }
                        try channel.pipeline.syncOperations.addHandler(RefuseOnActive(reply: .error("ERR max number of clients reached")))
                    }
                }
                channel.closeFuture.whenComplete { [self] _ in _ = connections.withLock { $0.removeValue(forKey: key) } }
                let (stream, continuation) = AsyncStream<[[UInt8]]>.makeStream(bufferingPolicy: .bufferingOldest(Self.pipelinedCommandsMax))
                Task(executorPreference: LoopTaskExecutor(channel.eventLoop)) { [self] in await serve(channel, stream) }
                return channel.eventLoop.makeCompletedFuture {
                    if let tls { try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls)) }
                    if let idle = configuration.idleTimeout {
                        try channel.pipeline.syncOperations.addHandler(IdleStateHandler(readTimeout: .nanoseconds(idle.nanoseconds)))
                    }
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(RESPRequestDecoder(limits: configuration.requestLimits)))
                    try channel.pipeline.syncOperations.addHandler(RESPRequestHandler(continuation: continuation, logger: logger))
                }
            }
            .bind(host: host, port: port).get()
        self.channel.withLock { $0 = channel }
        let bound = channel.localAddress?.port ?? port
        logger.info("serving the Redis protocol", metadata: ["address": "\(host):\(bound)", "tls": "\(tls != nil)"])
        return bound
    }

    /// Runs one connection's commands in order and writes their replies.
    private func serve(_ channel: any Channel, _ requests: AsyncStream<[[UInt8]]>) async {
        let connection = RedisConnection(node: node, configuration: configuration, transport: transport, metrics: metrics,
                                         remote: channel.remoteAddress.map { "\($0)" } ?? "?", audit: logger)
        if configuration.protectedMode, !configuration.access.requiresAuthentication, !Self.isLoopback(channel.remoteAddress) {
            logger.info("refused a client in protected mode", metadata: ["from": "\(channel.remoteAddress.map { "\($0)" } ?? "?")"])
            var buffer = channel.allocator.buffer(capacity: 256)
            RESPReply.error(Self.protectedModeRefusal).encode(into: &buffer, resp3: false)
            try? await channel.writeAndFlush(buffer)
            try? await channel.close()
            return
        }
        for await request in requests {
            let outcome = await connection.execute(request)
            var buffer = channel.allocator.buffer(capacity: 64)
            switch outcome {
            case let .reply(reply):
                reply.encode(into: &buffer, resp3: connection.resp3)
                channel.writeAndFlush(buffer, promise: nil)
                if !channel.isWritable {
                    // More than `outputBufferBytesMax` of replies wait for a client that does not
                    // read them (writability flips on the event loop: look again there).
                    let overflowed = try? await channel.eventLoop.submit { !channel.isWritable }.get()
                    if overflowed == true {
                        overflowedClients.add(1, ordering: .relaxed)
                        logger.warning("closing a client connection", metadata: [
                            "from": "\(connection.remote)",
                            "reason": "more than \(configuration.outputBufferBytesMax) bytes of replies unread (output buffer limit)",
                        ])
                        try? await channel.close()
                        return
                    }
                }
            case let .replyAndClose(reply):
                reply.encode(into: &buffer, resp3: connection.resp3)
                try? await channel.writeAndFlush(buffer)
                try? await channel.close()
                return
            }
        }
    }

    static let protectedModeRefusal = """
        DENIED Continuum is running in protected mode: the default user has no password, so only loopback clients are \
        served. Set one (--requirepass, or an ACL file with --acl-file), or start the node with --insecure to serve \
        everyone without a password.
        """

    /// Whether a client connects from this machine (a Unix socket, or a loopback address).
    static func isLoopback(_ address: SocketAddress?) -> Bool {
        guard let ip = address?.ipAddress else { return address?.protocol == .unix }
        return NodeServerConfiguration.isLoopback(ip)
    }

    public func shutdown() async {
        let listener = channel.withLock { channel in
            defer { channel = nil }
            return channel
        }
        try? await listener?.close()
        for connection in connections.withLock({ Array($0.values) }) { try? await connection.close() }
    }
}

/// Hands decoded requests to the connection's command loop; a protocol error is answered and
/// closes the connection.
final class RESPRequestHandler: ChannelInboundHandler {
    typealias InboundIn = [[UInt8]]
    typealias OutboundOut = ByteBuffer

    private let continuation: AsyncStream<[[UInt8]]>.Continuation
    private let logger: Logger

    init(continuation: AsyncStream<[[UInt8]]>.Continuation, logger: Logger) {
        self.continuation = continuation
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .dropped = continuation.yield(unwrapInboundIn(data)) {
            errorCaught(context: context, error: RESPProtocolError(reason: "more than \(RESPServer.pipelinedCommandsMax) commands waiting"))
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        continuation.finish()
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let idle = event as? IdleStateHandler.IdleStateEvent, idle == .read {
            continuation.finish()
            logger.info("closing an idle client connection", metadata: ["from": "\(context.remoteAddress.map { "\($0)" } ?? "?")"])
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        continuation.finish()
        logger.info("closing a client connection", metadata: ["reason": "\(error)"])
        var buffer = context.channel.allocator.buffer(capacity: 64)
        let reason = (error as? RESPProtocolError).map { "ERR \($0)" } ?? "ERR \(error)"
        RESPReply.error(reason).encode(into: &buffer, resp3: false)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(buffer)).whenComplete { _ in channel.close(promise: nil) }
    }
}

/// Answers one reply as soon as the connection is up, then closes it (a client past `maxclients`).
final class RefuseOnActive: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let reply: RESPReply

    init(reply: RESPReply) { self.reply = reply }

    func channelActive(context: ChannelHandlerContext) {
        var buffer = context.channel.allocator.buffer(capacity: 64)
        reply.encode(into: &buffer, resp3: false)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(buffer)).whenComplete { _ in channel.close(promise: nil) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}
}
