import Continuum
import ContinuumCore
import ContinuumProtocols
import DequeModule
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import Synchronization

/// TCP between the nodes of a cluster (SwiftNIO). Each node dials every peer for its own
/// outbound messages, one connection per mechanism (`TransportLane`: replication, consensus,
/// transactions, membership), opened when the first message of the lane goes out, and accepts the peers'
/// connections for inbound ones. Lanes keep mechanisms apart on the wire: a Raft heartbeat
/// never waits behind megabytes of CRDT deltas in one socket buffer, and deltas that fill
/// their lane's buffer drop only deltas. A connection starts
/// with a handshake (`PeerHandshake`: hello, challenge, proof over the cluster secret); a
/// listener closes a connection whose handshake, frame or message is bad, or that does not
/// finish its handshake within `handshakeTimeout`, with a logged reason, and nothing else
/// changes. A listener holds at most `connectionsPerAddressMax` connections from one address. Outbound
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
        /// The cluster secret both sides of a connection must prove they hold (nil: none; see
        /// `PeerHandshake`).
        public var secret: [UInt8]?
        /// A connection that has not finished its handshake by then is closed.
        public var handshakeTimeout: Duration
        /// Connections a listener holds from one address at once; more are closed on accept.
        public var connectionsPerAddressMax: Int
        /// Mutual TLS on every connection (nil: plain TCP): each side's certificate must chain to
        /// the CA and name the node it speaks for.
        public var tls: NodeTLS?

        public static let connectionsPerAddressMaxDefault = 64

        public init(cluster: String = "continuum", peers: [NodeID: Peer], queuedFramesMax: Int = 4_096,
                    writeBufferBytesMax: Int = 16 << 20, backoffMin: Duration = .milliseconds(50),
                    backoffMax: Duration = .seconds(2), connectTimeout: Duration = .seconds(1), secret: [UInt8]? = nil,
                    handshakeTimeout: Duration = .seconds(5), connectionsPerAddressMax: Int = Configuration.connectionsPerAddressMaxDefault,
                    tls: NodeTLS? = nil) {
            self.tls = tls
            self.secret = secret
            self.handshakeTimeout = handshakeTimeout
            self.connectionsPerAddressMax = connectionsPerAddressMax
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
    /// Each peer's links, one per lane (indexed by the lane's raw value).
    private let links: Mutex<[NodeID: [PeerLink]]>
    private let listener = Mutex<(any Channel)?>(nil)
    /// Peers cut off by fault injection: nothing is sent to them or taken from them.
    private let blocked = Mutex<Set<NodeID>>([])
    /// Accepted connections, closed on shutdown.
    private let inbound = Mutex<[ObjectIdentifier: any Channel]>([:])
    /// Accepted connections open now, by remote address (without the port).
    private let inboundPerAddress = Mutex<[String: Int]>([:])
    private let handshake: PeerHandshake
    let statistics = Counters()

    public init(node: NodeID, configuration: Configuration, group: any EventLoopGroup, logger: Logger = Logger(label: "continuum.transport")) {
        self.node = node
        self.configuration = configuration
        self.group = group
        self.logger = logger
        handshake = PeerHandshake(secret: configuration.secret)
        var links: [NodeID: [PeerLink]] = [:]
        for (peer, address) in configuration.peers where peer != node {
            links[peer] = TransportLane.allCases.map { PeerLink(peer: peer, address: address, lane: $0) }
        }
        self.links = Mutex(links)
    }

    /// Sets (or changes) where `peer` listens; a connection to its old address is closed.
    public func setAddress(of peer: NodeID, _ address: Peer) async {
        guard peer != node else { return }
        let old = links.withLock { links in
            defer { links[peer] = TransportLane.allCases.map { PeerLink(peer: peer, address: address, lane: $0) } }
            return links[peer] ?? []
        }
        for link in old { await link.close() }
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
        let handshake = self.handshake
        let handshakeTimeout = configuration.handshakeTimeout
        let perAddressMax = configuration.connectionsPerAddressMax
        let tls = configuration.tls
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { [self] channel in
                let address = channel.remoteAddress?.ipAddress ?? "?"
                let admitted = inboundPerAddress.withLock { counts in
                    guard counts[address, default: 0] < perAddressMax else { return false }
                    counts[address, default: 0] += 1
                    return true
                }
                guard admitted else {
                    statistics.withLock { $0.connectionsRefused += 1 }
                    logger.debug("closing a peer connection", metadata: [
                        "remote": "\(address)", "reason": "more than \(perAddressMax) connections from this address",
                    ])
                    return channel.close()
                }
                let key = ObjectIdentifier(channel)
                inbound.withLock { $0[key] = channel }
                channel.closeFuture.whenComplete { [self] _ in
                    _ = inbound.withLock { $0.removeValue(forKey: key) }
                    inboundPerAddress.withLock { counts in
                        counts[address, default: 1] -= 1
                        if counts[address] == 0 { counts[address] = nil }
                    }
                }
                return channel.eventLoop.makeCompletedFuture {
                    let handler = InboundHandler(cluster: cluster, isPeer: isPeer, isBlocked: isBlocked, me: me, handshake: handshake,
                                                 handshakeTimeout: handshakeTimeout, requiresCertificate: tls != nil, logger: logger,
                                                 statistics: statistics, deliver: deliver)
                    if let tls { try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls.peerServer)) }
                    // The hello and the proof: small frames only until the handshake is done.
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder(handshakeFrames: 2)))
                    try channel.pipeline.syncOperations.addHandler(handler)
                }
            }
            .bind(host: host, port: port).get()
        listener.withLock { $0 = channel }
        logger.info("listening for peers", metadata: [
            "address": "\(host):\(channel.localAddress?.port ?? port)", "authenticated": "\(handshake.authenticates)",
        ])
        return channel.localAddress?.port ?? port
    }

    /// The peers this node has a connection to now, past its handshake (its own messages go out).
    public var connectedPeers: Set<NodeID> {
        Set(links.withLock { links in links.filter { $0.value.contains { $0.isConnected } }.map(\.key) })
    }

    /// The port the listener is bound to, once `listen` returned.
    public var boundPort: Int? { listener.withLock { $0?.localAddress?.port } }

    /// Cuts this node off from `peers` both ways (fault injection for tests and the demo): their
    /// messages are dropped on arrival and nothing is sent to them, until `heal`.
    public func block(_ peers: Set<NodeID>) { blocked.withLock { $0.formUnion(peers) } }

    /// Restores every link `block` cut.
    public func heal() { blocked.withLock { $0.removeAll() } }

    /// The peers cut off now.
    public var blockedPeers: Set<NodeID> { blocked.withLock { $0 } }

    public func send(_ bytes: [UInt8], from: NodeID, to: NodeID) {
        send(bytes, from: from, to: to, lane: .replication)
    }

    public func send(_ bytes: [UInt8], from: NodeID, to: NodeID, lane: TransportLane) {
        if blocked.withLock({ $0.contains(to) }) {
            statistics.withLock { $0.framesDropped += 1 }
            return
        }
        guard let link = links.withLock({ $0[to]?[lane.rawValue] }) else { return }
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
        for link in links.withLock({ Array($0.values.joined()) }) { await link.close() }
    }

    private func connect(_ link: PeerLink) {
        let nonce = PeerHandshake.freshNonce()
        let hello = Framing.hello(cluster: configuration.cluster, node: node, to: link.peer, nonce: nonce)
        let logger = self.logger
        let dialer = DialerHandshakeHandler(cluster: configuration.cluster, me: node, peer: link.peer, nonce: nonce, handshake: handshake,
                                            timeout: configuration.handshakeTimeout, logger: logger) { [self] channel in
            let flushed = link.connected(channel)
            channel.flush()
            statistics.withLock {
                $0.connects += 1
                $0.framesSent += flushed
            }
            logger.debug("connected", metadata: ["peer": "n\(link.peer.rawValue)", "lane": "\(link.lane)"])
        }
        ClientBootstrap(group: group)
            .connectTimeout(.nanoseconds(configuration.connectTimeout.nanoseconds))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelOption(.writeBufferWaterMark, value: .init(low: configuration.writeBufferBytesMax / 2, high: configuration.writeBufferBytesMax))
            .channelInitializer { [tls = configuration.tls, peer = link.peer] channel in
                channel.eventLoop.makeCompletedFuture {
                    // The listener's certificate must name the node called.
                    if let tls {
                        try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: tls.peerClient,
                                                                                               serverHostname: "n\(peer.rawValue)"))
                    }
                    // A listener sends one challenge and nothing else.
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder(frameBytesMax: Framing.helloBytesMax)))
                    try channel.pipeline.syncOperations.addHandler(dialer)
                }
            }
            .connect(host: link.address.host, port: link.address.port)
            .whenComplete { [self] result in
                switch result {
                case let .success(channel):
                    var frame = ByteBuffer()
                    Framing.frame(hello, into: &frame)
                    channel.writeAndFlush(frame, promise: nil)
                    channel.closeFuture.whenComplete { [self] _ in
                        // Closed after the handshake: reconnect if frames wait. Closed during it
                        // (refused, or no answer): try again after a backoff.
                        if link.disconnected(channel) || !dialer.established { scheduleReconnect(link) }
                    }
                case let .failure(error):
                    logger.debug("connect failed", metadata: ["peer": "n\(link.peer.rawValue)", "lane": "\(link.lane)", "error": "\(error)"])
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
    let lane: TransportLane
    private let state = Mutex(State())

    init(peer: NodeID, address: NIOTransport.Peer, lane: TransportLane) {
        self.peer = peer
        self.address = address
        self.lane = lane
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

    var isConnected: Bool { state.withLock { $0.channel != nil } }

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

/// The dialer's side of the handshake: checks the listener's challenge, sends the proof, then
/// hands the connection to its link. Nothing else is expected from the listener.
final class DialerHandshakeHandler: ChannelInboundHandler, @unchecked Sendable {
    // Touched only on the channel's event loop, except `established`, which is read after close.
    typealias InboundIn = [UInt8]
    typealias OutboundOut = ByteBuffer

    private let cluster: String
    private let me: NodeID
    private let peer: NodeID
    private let nonce: [UInt8]
    private let handshake: PeerHandshake
    private let timeout: Duration
    private let logger: Logger
    private let onEstablished: (any Channel) -> Void
    private let done = Mutex(false)
    var established: Bool { done.withLock { $0 } }

    init(cluster: String, me: NodeID, peer: NodeID, nonce: [UInt8], handshake: PeerHandshake, timeout: Duration, logger: Logger,
         onEstablished: @escaping (any Channel) -> Void) {
        self.cluster = cluster
        self.me = me
        self.peer = peer
        self.nonce = nonce
        self.handshake = handshake
        self.timeout = timeout
        self.logger = logger
        self.onEstablished = onEstablished
    }

    func channelActive(context: ChannelHandlerContext) {
        let channel = context.channel
        context.eventLoop.scheduleTask(in: .nanoseconds(timeout.nanoseconds)) { [self] in
            if !established { fail(channel, "no challenge within \(timeout)") }
        }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !established else { return fail(context.channel, "a frame after the handshake") }
        do {
            let challenge = try PeerHandshake.parseChallenge(unwrapInboundIn(data))
            guard challenge.listener == peer else {
                throw FramingError.unexpectedPeer("answered as n\(challenge.listener.rawValue), not n\(peer.rawValue)")
            }
            guard handshake.verify(challenge.proof, .listener, cluster: cluster, dialer: me, listener: peer, dialerNonce: nonce,
                                   listenerNonce: challenge.nonce) else {
                throw FramingError.unexpectedPeer("its proof does not match (another cluster secret?)")
            }
            let proof = handshake.proof(.dialer, cluster: cluster, dialer: me, listener: peer, dialerNonce: nonce, listenerNonce: challenge.nonce)
            var frame = context.channel.allocator.buffer(capacity: Framing.headerBytes + proof.count)
            Framing.frame(proof, into: &frame)
            context.write(wrapOutboundOut(frame), promise: nil)
            done.withLock { $0 = true }
            onEstablished(context.channel)
        } catch {
            fail(context.channel, "\(error)")
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        fail(context.channel, "\(error)")
    }

    private func fail(_ channel: any Channel, _ reason: String) {
        logger.warning("closing a connection to a peer", metadata: [
            "peer": "n\(peer.rawValue)", "remote": "\(channel.remoteAddress.map { "\($0)" } ?? "?")", "reason": "\(reason)",
        ])
        channel.close(promise: nil)
    }
}

/// The listener's side of one connection: the handshake (hello, challenge, proof), then
/// messages, each checked. Nothing is delivered before the proof checks out.
final class InboundHandler: ChannelInboundHandler {
    typealias InboundIn = [UInt8]
    typealias OutboundOut = ByteBuffer

    private enum State {
        case awaitingHello
        case awaitingProof(Framing.Hello, listenerNonce: [UInt8])
        case established(NodeID)
    }

    private let cluster: String
    private let isPeer: @Sendable (NodeID) -> Bool
    private let isBlocked: @Sendable (NodeID) -> Bool
    private let me: NodeID
    private let handshake: PeerHandshake
    private let handshakeTimeout: Duration
    private let requiresCertificate: Bool
    private let logger: Logger
    private let statistics: NIOTransport.Counters
    private let deliver: @Sendable (NodeMessage, NodeID) -> Void
    private var state = State.awaitingHello
    private var closed = false

    init(cluster: String, isPeer: @escaping @Sendable (NodeID) -> Bool, isBlocked: @escaping @Sendable (NodeID) -> Bool, me: NodeID,
         handshake: PeerHandshake, handshakeTimeout: Duration, requiresCertificate: Bool = false, logger: Logger,
         statistics: NIOTransport.Counters, deliver: @escaping @Sendable (NodeMessage, NodeID) -> Void) {
        self.requiresCertificate = requiresCertificate
        self.cluster = cluster
        self.isPeer = isPeer
        self.isBlocked = isBlocked
        self.me = me
        self.handshake = handshake
        self.handshakeTimeout = handshakeTimeout
        self.logger = logger
        self.statistics = statistics
        self.deliver = deliver
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        context.eventLoop.scheduleTask(in: .nanoseconds(handshakeTimeout.nanoseconds)) {
            let (handler, context) = bound.value
            if case .established = handler.state { return }
            handler.refuse(context, FramingError.badHello("no handshake within \(handler.handshakeTimeout)"))
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let payload = unwrapInboundIn(data)
        switch state {
        case .awaitingHello:
            do {
                let hello = try Framing.parseHello(payload)
                guard hello.cluster == cluster else { throw FramingError.unexpectedPeer("cluster '\(hello.cluster)', not '\(cluster)'") }
                guard hello.node != me, isPeer(hello.node) else {
                    throw FramingError.unexpectedPeer("n\(hello.node.rawValue) is not a peer of n\(me.rawValue)")
                }
                guard hello.listener == me else {
                    throw FramingError.unexpectedPeer("it calls n\(hello.listener.rawValue), this is n\(me.rawValue)")
                }
                if requiresCertificate {
                    // Mutual TLS checked the chain; the certificate must also name the node claimed.
                    let certificate = try? context.pipeline.syncOperations.handler(type: NIOSSLServerHandler.self).peerCertificate
                    let named = certificate.flatMap(NodeTLS.node(named:))
                    guard named == hello.node else {
                        throw FramingError.unexpectedPeer("""
                            its certificate names \(named.map { "n\($0.rawValue)" } ?? "no node"), its hello n\(hello.node.rawValue)
                            """)
                    }
                }
                let nonce = PeerHandshake.freshNonce()
                let proof = handshake.proof(.listener, cluster: cluster, dialer: hello.node, listener: me, dialerNonce: hello.nonce,
                                            listenerNonce: nonce)
                let challenge = PeerHandshake.challenge(listener: me, nonce: nonce, proof: proof)
                var frame = context.channel.allocator.buffer(capacity: Framing.headerBytes + challenge.count)
                Framing.frame(challenge, into: &frame)
                context.writeAndFlush(wrapOutboundOut(frame), promise: nil)
                state = .awaitingProof(hello, listenerNonce: nonce)
            } catch {
                refuse(context, error)
            }
        case let .awaitingProof(hello, listenerNonce):
            guard handshake.verify(payload, .dialer, cluster: cluster, dialer: hello.node, listener: me, dialerNonce: hello.nonce,
                                   listenerNonce: listenerNonce) else {
                return refuse(context, FramingError.unexpectedPeer("n\(hello.node.rawValue)'s proof does not match (no or another cluster secret)"))
            }
            state = .established(hello.node)
        case let .established(peer):
            do {
                let message = try NodeMessage(binary: payload)
                statistics.withLock { $0.framesReceived += 1 }
                if !isBlocked(peer) { deliver(message, peer) }
            } catch {
                refuse(context, FramingError.undecodableMessage("\(error)"))
            }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        refuse(context, error)
    }

    private var claimed: String {
        switch state {
        case .awaitingHello: "unknown"
        case let .awaitingProof(hello, _): "n\(hello.node.rawValue) (unproven)"
        case let .established(peer): "n\(peer.rawValue)"
        }
    }

    private func refuse(_ context: ChannelHandlerContext, _ error: any Error) {
        guard !closed else { return }
        closed = true
        statistics.withLock { $0.connectionsRefused += 1 }
        logger.warning("closing a peer connection", metadata: [
            "remote": "\(context.remoteAddress.map { "\($0)" } ?? "?")", "peer": "\(claimed)", "reason": "\(error)",
        ])
        context.close(promise: nil)
    }
}
