import Continuum
import ContinuumCore
import ContinuumProtocols
import DequeModule
import Logging
import NIOCore
import NIOPosix
import Synchronization

/// TCP between the nodes of a cluster (SwiftNIO). Each node dials every peer for its own
/// outbound messages and accepts the peers' connections for inbound ones. A connection starts
/// with the dialer's hello (cluster name and node id); a listener closes a connection whose
/// hello, frame or message is bad, with a logged reason, and nothing else changes. Outbound
/// messages wait in a bounded queue per peer while it is unreachable (the newest are dropped
/// when it is full: the protocols retry), and the dialer reconnects with jittered exponential
/// backoff.
public final class NIOTransport: NodeTransport {
    public struct Peer: Sendable, Hashable {
        public var host: String
        public var port: Int

        public init(host: String, port: Int) {
            self.host = host
            self.port = port
        }
    }

    public struct Configuration: Sendable {
        public var cluster: String
        public var peers: [NodeID: Peer]
        /// Frames queued per unreachable peer, at most.
        public var queuedFramesMax: Int
        /// Bytes buffered per connected peer before frames are dropped (back-pressure).
        public var writeBufferBytesMax: Int
        public var backoffMin: Duration
        public var backoffMax: Duration
        public var connectTimeout: Duration

        public init(cluster: String = "continuum", peers: [NodeID: Peer], queuedFramesMax: Int = 4_096,
                    writeBufferBytesMax: Int = 16 << 20, backoffMin: Duration = .milliseconds(50),
                    backoffMax: Duration = .seconds(2), connectTimeout: Duration = .seconds(1)) {
            self.cluster = cluster
            self.peers = peers
            self.queuedFramesMax = queuedFramesMax
            self.writeBufferBytesMax = writeBufferBytesMax
            self.backoffMin = backoffMin
            self.backoffMax = backoffMax
            self.connectTimeout = connectTimeout
        }
    }

    /// Counters for metrics and tests.
    public struct Statistics: Sendable, Equatable {
        public var framesSent = 0
        public var framesDropped = 0
        public var framesReceived = 0
        public var connectionsRefused = 0
        public var connects = 0
    }

    public let node: NodeID
    public let configuration: Configuration
    private let group: any EventLoopGroup
    private let logger: Logger
    private let links: Mutex<[NodeID: PeerLink]>
    private let listener = Mutex<(any Channel)?>(nil)
    /// Peers cut off by fault injection: nothing is sent to them or taken from them.
    private let blocked = Mutex<Set<NodeID>>([])
    /// Accepted connections, closed on shutdown.
    private let inbound = Mutex<[ObjectIdentifier: any Channel]>([:])
    let statistics = Counters()

    public init(node: NodeID, configuration: Configuration, group: any EventLoopGroup, logger: Logger = Logger(label: "continuum.transport")) {
        self.node = node
        self.configuration = configuration
        self.group = group
        self.logger = logger
        var links: [NodeID: PeerLink] = [:]
        for (peer, address) in configuration.peers where peer != node {
            links[peer] = PeerLink(peer: peer, address: address)
        }
        self.links = Mutex(links)
    }

    /// Sets (or changes) where `peer` listens; a connection to its old address is closed.
    public func setAddress(of peer: NodeID, _ address: Peer) async {
        guard peer != node else { return }
        let old = links.withLock { links in
            defer { links[peer] = PeerLink(peer: peer, address: address) }
            return links[peer]
        }
        await old?.close()
    }

    public var currentStatistics: Statistics { statistics.withLock { $0 } }

    /// The counters, shared with the connection handlers.
    final class Counters: Sendable {
        private let state = Mutex(Statistics())
        func withLock<T>(_ body: (inout Statistics) -> T) -> T { state.withLock { body(&$0) } }
    }

    /// Listens on `host:port` (port 0: any free port) and hands every good inbound message to
    /// `deliver`. Returns the bound port.
    @discardableResult
    public func listen(host: String, port: Int, deliver: @escaping @Sendable (NodeMessage, NodeID) -> Void) async throws -> Int {
        let cluster = configuration.cluster
        let isPeer: @Sendable (NodeID) -> Bool = { [self] peer in links.withLock { $0[peer] != nil } }
        let isBlocked: @Sendable (NodeID) -> Bool = { [self] peer in blocked.withLock { $0.contains(peer) } }
        let me = node
        let logger = self.logger
        let statistics = self.statistics
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { [self] channel in
                let key = ObjectIdentifier(channel)
                inbound.withLock { $0[key] = channel }
                channel.closeFuture.whenComplete { [self] _ in _ = inbound.withLock { $0.removeValue(forKey: key) } }
                return channel.eventLoop.makeCompletedFuture {
                    let handler = InboundHandler(cluster: cluster, isPeer: isPeer, isBlocked: isBlocked, me: me, logger: logger,
                                                 statistics: statistics, deliver: deliver)
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder(firstFrameBytesMax: Framing.helloBytesMax)))
                    try channel.pipeline.syncOperations.addHandler(handler)
                }
            }
            .bind(host: host, port: port).get()
        listener.withLock { $0 = channel }
        logger.info("listening for peers", metadata: ["address": "\(host):\(channel.localAddress?.port ?? port)"])
        return channel.localAddress?.port ?? port
    }

    /// Cuts this node off from `peers` both ways (fault injection for tests and the demo): their
    /// messages are dropped on arrival and nothing is sent to them, until `heal`.
    public func block(_ peers: Set<NodeID>) { blocked.withLock { $0.formUnion(peers) } }

    /// Restores every link `block` cut.
    public func heal() { blocked.withLock { $0.removeAll() } }

    /// The peers cut off now.
    public var blockedPeers: Set<NodeID> { blocked.withLock { $0 } }

    public func send(_ bytes: [UInt8], from: NodeID, to: NodeID) {
        if blocked.withLock({ $0.contains(to) }) {
            statistics.withLock { $0.framesDropped += 1 }
            return
        }
        guard let link = links.withLock({ $0[to] }) else { return }
        var frame = ByteBuffer()
        frame.reserveCapacity(Framing.headerBytes + bytes.count)
        Framing.frame(bytes, into: &frame)
        switch link.enqueue(frame, queuedMax: configuration.queuedFramesMax, writeBufferMax: configuration.writeBufferBytesMax) {
        case .written: statistics.withLock { $0.framesSent += 1 }
        case .dropped: statistics.withLock { $0.framesDropped += 1 }
        case .queued: break
        case .queuedNeedsConnect: connect(link)
        }
    }

    /// Closes the listener and every connection; later sends are dropped.
    public func shutdown() async {
        let channel = listener.withLock { channel in
            defer { channel = nil }
            return channel
        }
        try? await channel?.close()
        for accepted in inbound.withLock({ Array($0.values) }) { try? await accepted.close() }
        for link in links.withLock({ Array($0.values) }) { await link.close() }
    }

    private func connect(_ link: PeerLink) {
        let hello = Framing.hello(cluster: configuration.cluster, node: node)
        let logger = self.logger
        ClientBootstrap(group: group)
            .connectTimeout(.nanoseconds(configuration.connectTimeout.nanoseconds))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelOption(.writeBufferWaterMark, value: .init(low: configuration.writeBufferBytesMax / 2, high: configuration.writeBufferBytesMax))
            .connect(host: link.address.host, port: link.address.port)
            .whenComplete { [self] result in
                switch result {
                case let .success(channel):
                    var frame = ByteBuffer()
                    Framing.frame(hello, into: &frame)
                    channel.write(frame, promise: nil)
                    let flushed = link.connected(channel)
                    channel.flush()
                    statistics.withLock {
                        $0.connects += 1
                        $0.framesSent += flushed
                    }
                    logger.debug("connected", metadata: ["peer": "n\(link.peer.rawValue)"])
                    channel.closeFuture.whenComplete { [self] _ in
                        if link.disconnected(channel) { scheduleReconnect(link) }
                    }
                case let .failure(error):
                    logger.debug("connect failed", metadata: ["peer": "n\(link.peer.rawValue)", "error": "\(error)"])
                    scheduleReconnect(link)
                }
            }
    }

    /// Tries again after a jittered exponential backoff, if frames wait.
    private func scheduleReconnect(_ link: PeerLink) {
        guard let attempt = link.connectFailed() else { return }
        let base = configuration.backoffMin.nanoseconds << min(attempt, 20)
        let capped = min(base, configuration.backoffMax.nanoseconds)
        let delay = Int64.random(in: capped / 2...max(capped / 2, capped))
        group.next().scheduleTask(in: .nanoseconds(delay)) { [self] in
            if link.shouldConnect() { connect(link) }
        }
    }
}

/// The outbound side of one peer: its connection, or the frames waiting for one.
final class PeerLink: Sendable {
    enum Outcome { case written, queued, queuedNeedsConnect, dropped }

    private struct State {
        var channel: (any Channel)?
        var connecting = false
        var queue = Deque<ByteBuffer>()
        var failures = 0
        var closed = false
    }

    let peer: NodeID
    let address: NIOTransport.Peer
    private let state = Mutex(State())

    init(peer: NodeID, address: NIOTransport.Peer) {
        self.peer = peer
        self.address = address
    }

    func enqueue(_ frame: ByteBuffer, queuedMax: Int, writeBufferMax: Int) -> Outcome {
        state.withLock { state in
            if state.closed { return .dropped }
            if let channel = state.channel {
                // Back-pressure: a peer that does not keep up loses frames, not our memory.
                guard channel.isWritable else { return .dropped }
                channel.writeAndFlush(frame, promise: nil)
                return .written
            }
            guard state.queue.count < queuedMax else { return .dropped }
            state.queue.append(frame)
            if state.connecting { return .queued }
            state.connecting = true
            return .queuedNeedsConnect
        }
    }

    /// The connection is up: sends the queued frames (unflushed) and returns how many.
    func connected(_ channel: any Channel) -> Int {
        state.withLock { state in
            guard !state.closed else {
                channel.close(promise: nil)
                return 0
            }
            state.channel = channel
            state.connecting = false
            state.failures = 0
            let count = state.queue.count
            while let frame = state.queue.popFirst() { channel.write(frame, promise: nil) }
            return count
        }
    }

    /// The connection closed; returns whether to reconnect now.
    func disconnected(_ channel: any Channel) -> Bool {
        state.withLock { state in
            guard state.channel === channel else { return false }
            state.channel = nil
            guard !state.closed, !state.queue.isEmpty else { return false }
            state.connecting = true
            return true
        }
    }

    /// A connect attempt failed (or the connection dropped): the attempt number, or nil when
    /// nothing waits (the next send reconnects).
    func connectFailed() -> Int? {
        state.withLock { state in
            guard !state.closed, !state.queue.isEmpty else {
                state.connecting = false
                return nil
            }
            state.failures += 1
            return state.failures
        }
    }

    func shouldConnect() -> Bool {
        state.withLock { state in
            guard !state.closed, state.channel == nil else {
                state.connecting = false
                return false
            }
            return true
        }
    }

    func close() async {
        let channel = state.withLock { state in
            state.closed = true
            state.queue.removeAll()
            defer { state.channel = nil }
            return state.channel
        }
        try? await channel?.close()
    }
}

/// The listener's side of one connection: the hello, then messages, each checked.
final class InboundHandler: ChannelInboundHandler {
    typealias InboundIn = [UInt8]

    private let cluster: String
    private let isPeer: @Sendable (NodeID) -> Bool
    private let isBlocked: @Sendable (NodeID) -> Bool
    private let me: NodeID
    private let logger: Logger
    private let statistics: NIOTransport.Counters
    private let deliver: @Sendable (NodeMessage, NodeID) -> Void
    private var peer: NodeID?

    init(cluster: String, isPeer: @escaping @Sendable (NodeID) -> Bool, isBlocked: @escaping @Sendable (NodeID) -> Bool, me: NodeID, logger: Logger, statistics: NIOTransport.Counters,
         deliver: @escaping @Sendable (NodeMessage, NodeID) -> Void) {
        self.cluster = cluster
        self.isPeer = isPeer
        self.isBlocked = isBlocked
        self.me = me
        self.logger = logger
        self.statistics = statistics
        self.deliver = deliver
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let payload = unwrapInboundIn(data)
        guard let peer else {
            do {
                let hello = try Framing.parseHello(payload)
                guard hello.cluster == cluster else { throw FramingError.unexpectedPeer("cluster '\(hello.cluster)', not '\(cluster)'") }
                guard hello.node != me, isPeer(hello.node) else {
                    throw FramingError.unexpectedPeer("n\(hello.node.rawValue) is not a peer of n\(me.rawValue)")
                }
                self.peer = hello.node
            } catch {
                refuse(context, error)
            }
            return
        }
        do {
            let message = try NodeMessage(binary: payload)
            statistics.withLock { $0.framesReceived += 1 }
            if !isBlocked(peer) { deliver(message, peer) }
        } catch {
            refuse(context, FramingError.undecodableMessage("\(error)"))
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        refuse(context, error)
    }

    private func refuse(_ context: ChannelHandlerContext, _ error: any Error) {
        statistics.withLock { $0.connectionsRefused += 1 }
        logger.warning("closing a peer connection", metadata: [
            "remote": "\(context.remoteAddress.map { "\($0)" } ?? "?")", "peer": "\(peer.map { "n\($0.rawValue)" } ?? "unknown")",
            "reason": "\(error)",
        ])
        context.close(promise: nil)
    }
}
