import Continuum
import ContinuumCore
import CoreMetrics
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Prometheus
import Synchronization

/// A node server's metrics: swift-metrics instruments on a Prometheus registry of the server's
/// own (not the process-wide `MetricsSystem`, so that several nodes in one process keep theirs
/// apart; an application can still bootstrap `MetricsSystem` for its own), rendered in the
/// Prometheus text format by `MetricsHTTPServer`.
///
/// - `continuum_command_duration_seconds{policy,command}`: a histogram of each Redis-protocol
///   command's latency, by the policy it ran under (`available`, `bounded`, `linearizable`,
///   `serializable`; `none` for commands without a key).
/// - `continuum_command_errors_total{policy,command,error}`: failed commands by error kind
///   (`unavailable`, `indeterminate`, `stale`, `wrongtype`, `err`).
/// - `continuum_register_staleness_seconds{register,policy}`: only with `--metrics-key-names`
///   (key names may be private), for each register with a declared
///   policy (at most `registersReportedMax`), the staleness this node can certify for its value
///   now; `+Inf` when it can certify none. Registers of the default policy have the figure of
///   their mechanism, `continuum_certified_staleness_seconds{mechanism}` (`crdt`, `raft`,
///   `transactions`).
/// - `continuum_raft_term`, `continuum_raft_commit_index`, `continuum_raft_leader` (1 or 0).
/// - `continuum_transport_*_total`: frames sent, received and dropped (queue full or peer
///   cut off), connections made and refused.
/// - `continuum_storage_flushes_total` and `continuum_storage_patches_total`: group commit
///   (patches per flush is their ratio).
public final class NodeMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry
    private let factory: PrometheusMetricsFactory
    private let timers = Mutex<[[String]: CoreMetrics.Timer]>([:])
    private let counters = Mutex<[[String]: CoreMetrics.Counter]>([:])
    private let gauges = Mutex<[[String]: CoreMetrics.Gauge]>([:])
    /// The policy each reported register's gauge carries, to drop the old series on a change.
    private let reported = Mutex<[String: String]>([:])
    /// The totals of the last scrape, to turn absolute figures into counter increments.
    private let lastTotals = Mutex<[String: Int]>([:])

    /// Registers reported one by one; past this, only the per-mechanism figures.
    public static let registersReportedMax = 1_000

    /// Latency buckets from 100 µs to 10 s.
    public static let durationBuckets: [Duration] = [
        .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5),
        .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500),
        .seconds(1), .milliseconds(2_500), .seconds(5), .seconds(10),
    ]

    public init() {
        registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.defaultDurationHistogramBuckets = Self.durationBuckets
        self.factory = factory
    }

    /// Records one command's latency (and its error kind, when it failed).
    public func recordCommand(_ command: String, policy: String, duration: Duration, error: String?) {
        let key = [command, policy]
        let timer = timers.withLock { timers in
            if let timer = timers[key] { return timer }
            let timer = CoreMetrics.Timer(label: "continuum_command_duration_seconds",
                                          dimensions: [("policy", policy), ("command", command)], factory: factory)
            timers[key] = timer
            return timer
        }
        timer.recordNanoseconds(duration.nanoseconds)
        if let error { counter("continuum_command_errors_total", [("policy", policy), ("command", command), ("error", error)]).increment() }
    }

    private func counter(_ label: String, _ dimensions: [(String, String)]) -> CoreMetrics.Counter {
        Self.cached(counters, label, dimensions) { CoreMetrics.Counter(label: label, dimensions: dimensions, factory: factory) }
    }

    private func gauge(_ label: String, _ dimensions: [(String, String)] = []) -> CoreMetrics.Gauge {
        Self.cached(gauges, label, dimensions) { CoreMetrics.Gauge(label: label, dimensions: dimensions, factory: factory) }
    }

    /// The instrument of `label` and `dimensions` in `cache`, made on first use.
    private static func cached<Instrument>(_ cache: borrowing Mutex<[[String]: Instrument]>, _ label: String,
                                           _ dimensions: [(String, String)], make: () -> Instrument) -> Instrument {
        let key = [label] + dimensions.flatMap { [$0.0, $0.1] }
        return cache.withLock { cache in
            if let instrument = cache[key] { return instrument }
            let instrument = make()
            cache[key] = instrument
            return instrument
        }
    }

    private func dropGauge(_ label: String, _ dimensions: [(String, String)]) {
        let key = [label] + dimensions.flatMap { [$0.0, $0.1] }
        gauges.withLock { $0.removeValue(forKey: key) }?.destroy()
    }

    /// Adds to a counter what an absolute total grew by since the last scrape.
    private func advance(_ label: String, to total: Int) {
        let delta = lastTotals.withLock { totals in
            defer { totals[label] = total }
            return total - (totals[label] ?? 0)
        }
        let counter = counter(label, [])
        if delta > 0 { counter.increment(by: Int64(delta)) }
    }

    private static func seconds(_ staleness: Duration?) -> Double {
        guard let staleness else { return .infinity }
        return Double(staleness.nanoseconds) / 1e9
    }

    /// Refreshes the figures read at scrape time from the node, then renders every metric.
    public func render(node: Node, transport: NIOTransport?, declared: [(key: String, policy: Policy)]) async -> [UInt8] {
        let staleness = await node.certifiedStaleness
        let transactions = await node.certifiedStaleness(serializable: nil)
        gauge("continuum_certified_staleness_seconds", [("mechanism", "crdt")]).record(Self.seconds(staleness.available))
        gauge("continuum_certified_staleness_seconds", [("mechanism", "raft")]).record(Self.seconds(staleness.consensus))
        gauge("continuum_certified_staleness_seconds", [("mechanism", "transactions")]).record(Self.seconds(transactions))

        var current: [String: String] = [:]
        for (key, policy) in declared.sorted(by: { $0.key < $1.key }).prefix(Self.registersReportedMax) {
            let kind = policy.kind
            let figure: Duration? = switch policy {
            case .available, .bounded: staleness.available
            case .linearizable: staleness.consensus
            case .serializable: await node.certifiedStaleness(serializable: key)
            }
            current[key] = kind
            gauge("continuum_register_staleness_seconds", [("register", key), ("policy", kind)]).record(Self.seconds(figure))
        }
        let previous = reported.withLock { reported in
            defer { reported = current }
            return reported
        }
        for (key, kind) in previous where current[key] != kind {
            dropGauge("continuum_register_staleness_seconds", [("register", key), ("policy", kind)])
        }

        if let status = await node.consensusStatus {
            gauge("continuum_raft_term").record(Int64(clamping: status.term))
            gauge("continuum_raft_commit_index").record(Int64(clamping: status.commitIndex))
            gauge("continuum_raft_leader").record(status.role == "leader" ? 1 : 0)
        }
        if let statistics = transport?.currentStatistics {
            advance("continuum_transport_frames_sent_total", to: statistics.framesSent)
            advance("continuum_transport_frames_received_total", to: statistics.framesReceived)
            advance("continuum_transport_frames_dropped_total", to: statistics.framesDropped)
            advance("continuum_transport_connects_total", to: statistics.connects)
            advance("continuum_transport_connections_refused_total", to: statistics.connectionsRefused)
        }
        advance("continuum_peer_messages_refused_total", to: await node.peerMessagesRefused.count)
        let probe = node.responsiveness.current
        gauge("continuum_node_wait_seconds").record(Self.seconds(probe.last))
        gauge("continuum_node_wait_max_seconds").record(Self.seconds(probe.maximum))
        let consensus = node.consensusResponsiveness.current
        gauge("continuum_node_wait_consensus_seconds").record(Self.seconds(consensus.last))
        gauge("continuum_node_wait_consensus_max_seconds").record(Self.seconds(consensus.maximum))
        if let replication = await node.replicationStatistics {
            advance("continuum_replication_delta_payloads_sent_total", to: replication.deltaPayloadsSent)
            advance("continuum_replication_full_states_sent_total", to: replication.fullStatesSent)
            advance("continuum_replication_retransmissions_total", to: replication.retransmissions)
            advance("continuum_membership_late_probe_ticks_total", to: replication.lateProbeTicks)
            advance("continuum_replication_delta_payloads_received_total", to: replication.deltaPayloadsReceived)
            advance("continuum_replication_full_states_received_total", to: replication.fullStatesReceived)
            advance("continuum_replication_reachability_changes_total", to: replication.reachabilityChanges)
        }
        let durability = await node.durability
        advance("continuum_storage_flushes_total", to: durability.flushes)
        advance("continuum_storage_patches_total", to: durability.patches)
        return registry.emitToBuffer()
    }
}

extension Policy {
    /// The policy's name without its bounds (a metric label).
    var kind: String {
        switch self {
        case .available: "available"
        case .bounded: "bounded"
        case .linearizable: "linearizable"
        case .serializable: "serializable"
        }
    }
}

/// Serves `GET /metrics` in the Prometheus text format (version 0.0.4) over HTTP/1.1; other
/// paths answer 404 and other methods 405.
public final class MetricsHTTPServer: Sendable {
    private let render: @Sendable () async -> [UInt8]
    private let group: any EventLoopGroup
    private let logger: Logger
    private let channel = Mutex<(any Channel)?>(nil)

    /// TLS on every connection (nil: plain HTTP).
    private let tls: NIOSSLContext?

    /// Answers `/health` and `/ready`: whether the node is so, and why (nil: not served).
    private let probe: (@Sendable (Probe) async -> (ok: Bool, reason: String))?

    public enum Probe: String, Sendable { case health, ready }

    public init(group: any EventLoopGroup, logger: Logger, tls: NIOSSLContext? = nil,
                probe: (@Sendable (Probe) async -> (ok: Bool, reason: String))? = nil, render: @escaping @Sendable () async -> [UInt8]) {
        self.tls = tls
        self.probe = probe
        self.render = render
        self.group = group
        self.logger = logger
    }

    /// Limits of the metrics port: a scraper sends one short GET; anything much larger is not one.
    public static let headerBytesMax = 8 << 10
    public static let headerFieldsMax = 64
    public static let connectionsMax = 256
    public static let idleTimeout = TimeAmount.seconds(30)

    private let open = OpenCount()

    final class OpenCount: Sendable {
        private let count = Mutex(0)
        func withLock<T>(_ body: (inout Int) -> T) -> T { count.withLock { body(&$0) } }
    }

    /// Listens on `host:port` (0: any free port); returns the bound port. Requests with headers
    /// past `headerBytesMax` or `headerFieldsMax` are answered 431 or 400 and closed, connections past
    /// `connectionsMax` are closed on accept, and a connection idle for `idleTimeout` is closed.
    @discardableResult
    public func listen(host: String, port: Int) async throws -> Int {
        let render = self.render
        let open = self.open
        let tls = self.tls
        let probe = self.probe
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 64)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                let admitted = open.withLock { count in
                    guard count < Self.connectionsMax else { return false }
                    count += 1
                    return true
                }
                guard admitted else { return channel.close() }
                channel.closeFuture.whenComplete { _ in open.withLock { $0 -= 1 } }
                return channel.eventLoop.makeCompletedFuture {
                    var limits = NIOHTTPDecoderLimitConfiguration()
                    limits.maxHeaderFieldSize = Self.headerBytesMax
                    limits.maxHeaderListSize = Self.headerBytesMax
                    limits.maxHeaderFieldCount = Self.headerFieldsMax
                    let responses = HTTPResponseEncoder()
                    let sync = channel.pipeline.syncOperations
                    if let tls { try sync.addHandler(NIOSSLServerHandler(context: tls)) }
                    try sync.addHandler(IdleStateHandler(allTimeout: Self.idleTimeout))
                    try sync.addHandler(responses)
                    try sync.addHandler(ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .dropBytes, limitConfiguration: limits)))
                    try sync.addHandler(HTTPServerPipelineHandler())
                    try sync.addHandler(HTTPServerProtocolErrorHandler())
                    try sync.addHandler(MetricsRequestHandler(render: render, probe: probe))
                }
            }
            .bind(host: host, port: port).get()
        self.channel.withLock { $0 = channel }
        let bound = channel.localAddress?.port ?? port
        logger.info("serving metrics", metadata: ["address": "\(tls == nil ? "http" : "https")://\(host):\(bound)/metrics"])
        return bound
    }

    public func shutdown() async {
        let listener = channel.withLock { channel in
            defer { channel = nil }
            return channel
        }
        try? await listener?.close()
    }
}

final class MetricsRequestHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let render: @Sendable () async -> [UInt8]
    private let probe: (@Sendable (MetricsHTTPServer.Probe) async -> (ok: Bool, reason: String))?
    private var request: HTTPRequestHead?

    init(render: @escaping @Sendable () async -> [UInt8],
         probe: (@Sendable (MetricsHTTPServer.Probe) async -> (ok: Bool, reason: String))? = nil) {
        self.render = render
        self.probe = probe
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case let .head(head): request = head
        case .body: break
        case .end:
            guard let head = request else { return }
            request = nil
            let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
            guard head.method == .GET || head.method == .HEAD else {
                respond(context, head, status: .methodNotAllowed, body: Array("only GET\n".utf8))
                return
            }
            if let probe, let which = MetricsHTTPServer.Probe(rawValue: String(path.dropFirst())), path.hasPrefix("/") {
                let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
                context.eventLoop.makeFutureWithTask { await probe(which) }.whenSuccess { answer in
                    let (handler, context) = bound.value
                    handler.respond(context, head, status: answer.ok ? .ok : .serviceUnavailable, body: Array((answer.reason + "\n").utf8))
                }
                return
            }
            guard path == "/metrics" else {
                respond(context, head, status: .notFound, body: Array("metrics are at /metrics (and /health, /ready)\n".utf8))
                return
            }
            let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            let render = self.render
            context.eventLoop.makeFutureWithTask { await render() }.whenSuccess { body in
                let (handler, context) = bound.value
                handler.respond(context, head, status: .ok, body: body)
            }
        }
    }

    /// A request past the limits (or not HTTP): answered 400 by the error handler before this,
    /// then closed.
    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    private func respond(_ context: ChannelHandlerContext, _ request: HTTPRequestHead, status: HTTPResponseStatus, body: [UInt8]) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: status == .ok ? "text/plain; version=0.0.4; charset=utf-8" : "text/plain; charset=utf-8")
        headers.add(name: "Content-Length", value: "\(body.count)")
        let keepAlive = request.isKeepAlive
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: request.version, status: status, headers: headers))), promise: nil)
        if request.method != .HEAD {
            context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: body)))), promise: nil)
        }
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
            if !keepAlive { channel.close(promise: nil) }
        }
    }
}
