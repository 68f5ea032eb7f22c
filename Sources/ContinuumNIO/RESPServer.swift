import Continuum
import ContinuumCore
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import Synchronization
import DequeModule

/// A Redis-protocol (RESP2 and RESP3) server for one node, so that `redis-cli`,
/// `redis-benchmark` and every language's Redis client can use the cluster (see
/// `RedisServerConfiguration` for the commands). Each connection's commands run one at a time
/// in arrival order (pipelining keeps its order); connections run concurrently. A server
/// passes the event loop of the node's actor as `group` (`NodeServer` does): then a command is
/// read, applied and answered on that one thread, an available write or plain read without a
/// task (see `RESPConnectionHandler`).
public final class RESPServer: Sendable {
    public let node: Node
    public let configuration: RedisServerConfiguration
    private let transport: NIOTransport?
    /// Where command latencies and errors go (none: not measured).
    public let metrics: NodeMetrics?
    private let group: any EventLoopGroup
    let logger: Logger
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
                let connection = RedisConnection(node: node, configuration: configuration, transport: transport, metrics: metrics,
                                                 remote: channel.remoteAddress.map { "\($0)" } ?? "?", audit: logger)
                return channel.eventLoop.makeCompletedFuture {
                    if let tls { try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls)) }
                    if let idle = configuration.idleTimeout {
                        try channel.pipeline.syncOperations.addHandler(IdleStateHandler(readTimeout: .nanoseconds(idle.nanoseconds)))
                    }
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(RESPRequestDecoder(limits: configuration.requestLimits)))
                    try channel.pipeline.syncOperations.addHandler(RESPConnectionHandler(server: self, connection: connection))
                }
            }
            .bind(host: host, port: port).get()
        self.channel.withLock { $0 = channel }
        let bound = channel.localAddress?.port ?? port
        logger.info("serving the Redis protocol", metadata: ["address": "\(host):\(bound)", "tls": "\(tls != nil)"])
        return bound
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

/// Runs one connection's commands one at a time, in arrival order (pipelining keeps its
/// order), and writes their replies. A register command the router starts at once
/// (`RedisConnection.executeNow`: an available write, a plain read) runs right here, on the
/// channel's loop, which is the node's executor in a server; any other runs in a task on that
/// loop (`LoopTaskExecutor`), and the next command waits for it. A protocol error is answered
/// and closes the connection.
final class RESPConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = [[UInt8]]
    typealias OutboundOut = ByteBuffer

    private let server: RESPServer
    private let connection: RedisConnection
    /// Commands received and not yet started.
    private var waiting = Deque<[[UInt8]]>()
    /// Whether a command is running: its reply is not written yet.
    private var running = false
    /// Whether the connection is closing or closed: nothing more runs or is written.
    private var closing = false
    /// Replies written and not yet flushed.
    private var unflushed = false
    /// Whether `executeNow` is running, and the outcome it completed with meanwhile.
    private var starting = false
    private var startedOutcome: RedisConnection.Outcome?
    private var context: ChannelHandlerContext?

    init(server: RESPServer, connection: RedisConnection) {
        self.server = server
        self.connection = connection
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        closing = true
        waiting.removeAll()
    }

    func channelActive(context: ChannelHandlerContext) {
        let configuration = server.configuration
        if configuration.protectedMode, !configuration.access.requiresAuthentication, !RESPServer.isLoopback(context.remoteAddress) {
            server.logger.info("refused a client in protected mode", metadata: ["from": "\(context.remoteAddress.map { "\($0)" } ?? "?")"])
            closeAfter(.error(RESPServer.protectedModeRefusal), context: context)
        }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !closing else { return }
        guard waiting.count < RESPServer.pipelinedCommandsMax else {
            errorCaught(context: context, error: RESPProtocolError(reason: "more than \(RESPServer.pipelinedCommandsMax) commands waiting"))
            return
        }
        waiting.append(unwrapInboundIn(data))
        if !running { runWaiting(context: context) }
    }

    func channelInactive(context: ChannelHandlerContext) {
        closing = true
        waiting.removeAll()
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let idle = event as? IdleStateHandler.IdleStateEvent, idle == .read {
            closing = true
            waiting.removeAll()
            server.logger.info("closing an idle client connection", metadata: ["from": "\(context.remoteAddress.map { "\($0)" } ?? "?")"])
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard !closing else { return }
        server.logger.info("closing a client connection", metadata: ["reason": "\(error)"])
        let reason = (error as? RESPProtocolError).map { "ERR \($0)" } ?? "ERR \(error)"
        closeAfter(.error(reason), context: context)
    }

    /// Starts the waiting commands in order, as long as each finishes at once; stops at one
    /// that finishes later (its completion carries on).
    private func runWaiting(context: ChannelHandlerContext) {
        while !running, !closing, let request = waiting.popFirst() {
            running = true
            // A completion during `executeNow` is kept and written after it returns, here, so
            // that the next command never starts inside the node's call.
            starting = true
            let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
            let started = connection.executeNow(request) { outcome in
                let handler = handler.value
                if handler.starting {
                    handler.startedOutcome = outcome
                } else {
                    handler.finished(outcome)
                }
            }
            starting = false
            if let outcome = startedOutcome {
                startedOutcome = nil
                write(outcome, context: context)
                continue
            }
            if !started { runInTask(request, context: context) }
        }
        flush(context: context)
    }

    /// Runs a command that needs a task (a linearizable or serializable one, a bounded read,
    /// an admin command) on the channel's loop.
    private func runInTask(_ request: [[UInt8]], context: ChannelHandlerContext) {
        let loop = context.eventLoop
        let handler = NIOLoopBound(self, eventLoop: loop)
        let connection = self.connection
        Task(executorPreference: LoopTaskExecutor(loop)) {
            let outcome = await connection.execute(request)
            if loop.inEventLoop {
                handler.value.finished(outcome)
            } else {
                loop.execute { handler.value.finished(outcome) }
            }
        }
    }

    /// A command's completion that came after it was started (from the node's executor, or its
    /// task): writes the reply, then starts the commands that waited, on a later turn of the
    /// loop (never inside the node's call).
    private func finished(_ outcome: RedisConnection.Outcome) {
        guard let context, !closing else { return }
        write(outcome, context: context)
        flush(context: context)
        if !waiting.isEmpty {
            let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
            context.eventLoop.execute {
                let handler = handler.value
                if let context = handler.context, !handler.running { handler.runWaiting(context: context) }
            }
        }
    }

    private func write(_ outcome: RedisConnection.Outcome, context: ChannelHandlerContext) {
        running = false
        switch outcome {
        case let .reply(reply):
            var buffer = context.channel.allocator.buffer(capacity: 64)
            reply.encode(into: &buffer, resp3: connection.resp3)
            context.write(wrapOutboundOut(buffer), promise: nil)
            unflushed = true
        case let .replyAndClose(reply):
            closeAfter(reply, context: context)
        }
    }

    private func flush(context: ChannelHandlerContext) {
        guard unflushed, !closing else { return }
        unflushed = false
        context.flush()
        if !context.channel.isWritable {
            // More than `outputBufferBytesMax` of replies wait for a client that does not read them.
            server.overflowedClients.add(1, ordering: .relaxed)
            server.logger.warning("closing a client connection", metadata: [
                "from": "\(connection.remote)",
                "reason": "more than \(server.configuration.outputBufferBytesMax) bytes of replies unread (output buffer limit)",
            ])
            closing = true
            waiting.removeAll()
            context.close(promise: nil)
        }
    }

    /// Writes `reply` after the replies before it, then closes the connection.
    private func closeAfter(_ reply: RESPReply, context: ChannelHandlerContext) {
        closing = true
        waiting.removeAll()
        unflushed = false
        var buffer = context.channel.allocator.buffer(capacity: 64)
        reply.encode(into: &buffer, resp3: connection.resp3)
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
