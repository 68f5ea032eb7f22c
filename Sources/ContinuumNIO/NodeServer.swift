import Continuum
import ContinuumCore
import ContinuumProtocols
import ContinuumStorage
import Foundation
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization

/// Where a node server listens and who its peers are.
public struct NodeServerConfiguration: Sendable, Codable, Equatable {
    public struct Address: Sendable, Codable, Hashable, CustomStringConvertible {
        public var host: String
        public var port: Int

        public init(host: String, port: Int) {
            self.host = host
            self.port = port
        }

        /// Parses `host:port`.
        public init(parsing text: String) throws(ContinuumError) {
            let (host, port) = try ContinuumClient.hostPort(text)
            self.init(host: host, port: port)
        }

        public var description: String { "\(host):\(port)" }

        public init(from decoder: any Decoder) throws {
            let text = try decoder.singleValueContainer().decode(String.self)
            do {
                try self.init(parsing: text)
            } catch {
                throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "\(error)"))
            }
        }

        public func encode(to encoder: any Encoder) throws {
            var container = encoder.singleValueContainer()
            try container.encode(description)
        }
    }

    /// This node, `n1` style.
    public var id: String
    /// Where peers reach this node.
    public var listen: Address
    /// The other nodes by id.
    public var peers: [String: Address]
    /// Where the Redis-protocol server listens (none: no client port).
    public var resp: Address?
    /// Where metrics are served over HTTP, at `/metrics` in the Prometheus text format (none:
    /// not served).
    public var metrics: Address?
    public var dataDirectory: String
    /// `available`, `linearizable`, `serializable` or `bounded <staleness ms|none> <latency ms>`.
    public var defaultPolicy: String
    public var cluster: String
    /// The bound on clock offsets between nodes that freshness certificates assume.
    public var maxClockOffsetMilliseconds: Int
    /// Whether clients may cut links (`CONTINUUM.PARTITION`, `HEAL`) and arm crash points
    /// (`CONTINUUM.CRASHPOINT`), for tests of real processes; off unless set.
    public var faultInjection: Bool?
    /// The most bytes one command's arguments may hold (a value, or one SADD's members); nil:
    /// `RedisServerConfiguration.valueBytesMaxDefault` (16 MiB).
    public var maxValueBytes: Int?
    /// When a write is acknowledged: `always` (after fsync, the default) or `everysec` (once the
    /// operating system has it, with an fsync at least every second; see `SQLiteStore.Durability`).
    public var fsync: String?
    /// Milliseconds a follower waits without hearing a leader before it stands for election
    /// (randomized between this and twice this); nil: `electionTimeoutDefault`. Heartbeats go
    /// every 50 ms whatever it is.
    public var electionTimeoutMilliseconds: Int?
    /// Milliseconds a node holds back its relay of a delta that the delta's maker ships to every
    /// neighbour itself, waiting for the neighbour to report holding it (see
    /// `ReplicationInstance.Configuration.lazyRelayDelay`); 0: no lazy relays, every received
    /// delta is relayed on the next gossip tick; nil: `lazyRelayDelayDefault`.
    public var lazyRelayDelayMilliseconds: Int?
    /// How long a node gathers local changes of available registers before it ships them to
    /// its neighbours (one batch per neighbour). Writes are acknowledged after the local store
    /// either way; this only delays replication, by at most this much. Measured on one key
    /// with 50 clients (5 alternating rounds against no delay): SET median 17,774 against
    /// 14,388 requests/s, INCR 21,349 against 14,654; no difference with 100,000 keys.
    public static let replicationPushDelay = Duration.milliseconds(2)
    /// Whether `/metrics` names declared keys (`continuum_register_staleness_seconds{register=…}`);
    /// off unless set, as key names may be private and the metrics port has no credentials.
    public var metricsKeyNames: Bool?
    /// A file holding the cluster secret (16 to 4,096 bytes; a trailing newline is dropped).
    /// Peers prove they hold it before any message passes (`PeerHandshake`); every node of a
    /// cluster needs the same one. Nil: peers are not authenticated, allowed only on loopback
    /// or with `insecure`.
    public var clusterSecretFile: String?
    /// Serve peers without authentication on an address other than loopback, and clients
    /// beyond loopback while the default user has no password (protected mode off).
    public var insecure: Bool?
    /// The default user's password, as Redis's `requirepass`: clients must `AUTH` first.
    public var requirePassword: String?
    /// A file of users in Redis's ACL syntax (a subset; see `AccessControl`), loaded at start.
    public var aclFile: String?
    /// This node's certificate, private key and the cluster's CA, PEM files (all three or
    /// none): TLS on the Redis, metrics and peer ports, mutual on the peer port, where a peer's
    /// certificate must name the node id it claims.
    public var tlsCertificateFile: String?
    public var tlsKeyFile: String?
    public var tlsCAFile: String?
    /// Connected Redis-protocol clients at most (nil: 10,000).
    public var maxClients: Int?
    /// Seconds a client may send nothing before it is disconnected (nil or 0: never, as Redis's
    /// default `timeout 0`).
    public var clientIdleTimeoutSeconds: Int?
    /// Unread reply bytes a client may have waiting before it is disconnected (nil: 64 MiB).
    public var clientOutputBufferBytes: Int?

    /// A bulk string's bytes at most (Redis's `proto-max-bulk-len`; nil: 64 MiB).
    public var protoMaxBulkLen: Int?
    /// Arguments of one command at most (nil: 1,048,576).
    public var maxArguments: Int?
    /// Bytes of one inline command at most (nil: 64 KiB).
    public var maxInlineBytes: Int?
    /// Peer connections a node accepts from one address at once (nil: 64).
    public var maxPeerConnectionsPerAddress: Int?

    public static let maxPeerConnectionsPerAddressRange = 1...10_000

    /// The request limits, defaults filled in.
    public var requestLimits: RESPLimits {
        var limits = RESPLimits()
        limits.bulkBytes = protoMaxBulkLen ?? limits.bulkBytes
        limits.arguments = maxArguments ?? limits.arguments
        limits.inlineBytes = maxInlineBytes ?? limits.inlineBytes
        return limits
    }

    public static let maxClientsRange = 1...1_000_000
    public static let clientIdleTimeoutRange = 0...86_400
    public static let clientOutputBufferRange = (1 << 20)...(1 << 30)
    /// 1,000 ms, as etcd's default: a dead leader is replaced after 1 to 2 s, and a node whose
    /// heartbeats are late by less than a second (a busy or descheduled process) costs no
    /// election. At 300 ms, under 50 saturating clients on a 2-core machine, late heartbeats
    /// changed the term (see README).
    public static let electionTimeoutDefault = 1_000
    public static let electionTimeoutRange = 100...60_000
    /// Five gossip intervals (a node server gossips every 100 ms).
    public static let lazyRelayDelayDefault = 500
    public static let lazyRelayDelayRange = 0...60_000

    public init(id: String, listen: Address, peers: [String: Address], resp: Address?, metrics: Address? = nil, dataDirectory: String,
                defaultPolicy: String = "linearizable", cluster: String = "continuum", maxClockOffsetMilliseconds: Int = 10) {
        self.id = id
        self.listen = listen
        self.peers = peers
        self.resp = resp
        self.metrics = metrics
        self.dataDirectory = dataDirectory
        self.defaultPolicy = defaultPolicy
        self.cluster = cluster
        self.maxClockOffsetMilliseconds = maxClockOffsetMilliseconds
    }

    /// Parses a node id: `n3` or `3`.
    public static func nodeID(_ text: String) throws(ContinuumError) -> NodeID {
        guard let raw = UInt64(text.hasPrefix("n") ? String(text.dropFirst()) : text), raw > 0, raw < 1 << 20 else {
            throw .invalidRequest("'\(text)' is not a node id (n1, n2, ...)")
        }
        return NodeID(raw)
    }

    /// Checks everything that can be checked before opening anything.
    public func validated() throws(ContinuumError) -> (me: NodeID, peers: [NodeID: Address], policy: Policy) {
        let me = try Self.nodeID(id)
        var parsed: [NodeID: Address] = [:]
        for (name, address) in peers {
            let peer = try Self.nodeID(name)
            guard peer != me else { throw .invalidRequest("node \(id) is listed as its own peer") }
            guard parsed.updateValue(address, forKey: peer) == nil else { throw .invalidRequest("peer \(name) is listed twice") }
        }
        let policy = try Policy(words: defaultPolicy.split(separator: " ").map(String.init))
        guard maxClockOffsetMilliseconds >= 0 else { throw .invalidRequest("a negative clock offset bound") }
        guard (1...Framing.clusterNameBytesMax).contains(cluster.utf8.count) else {
            throw .invalidRequest("the cluster name has \(cluster.utf8.count) bytes; 1...\(Framing.clusterNameBytesMax) are allowed")
        }
        if let maxValueBytes, !(1...RedisServerConfiguration.valueBytesMaxLimit).contains(maxValueBytes) {
            throw .invalidRequest("max-value-bytes \(maxValueBytes) is outside 1...\(RedisServerConfiguration.valueBytesMaxLimit)")
        }
        guard durability != nil else { throw .invalidRequest("fsync '\(fsync ?? "")' is not always or everysec") }
        if let electionTimeoutMilliseconds, !Self.electionTimeoutRange.contains(electionTimeoutMilliseconds) {
            throw .invalidRequest("election-timeout \(electionTimeoutMilliseconds) ms is outside \(Self.electionTimeoutRange) (heartbeats go every 50 ms)")
        }
        if let lazyRelayDelayMilliseconds, !Self.lazyRelayDelayRange.contains(lazyRelayDelayMilliseconds) {
            throw .invalidRequest("lazy-relay-delay \(lazyRelayDelayMilliseconds) ms is outside \(Self.lazyRelayDelayRange)")
        }
        if let maxClients, !Self.maxClientsRange.contains(maxClients) {
            throw .invalidRequest("maxclients \(maxClients) is outside \(Self.maxClientsRange)")
        }
        if let clientIdleTimeoutSeconds, !Self.clientIdleTimeoutRange.contains(clientIdleTimeoutSeconds) {
            throw .invalidRequest("timeout \(clientIdleTimeoutSeconds) s is outside \(Self.clientIdleTimeoutRange) (0: never)")
        }
        if let clientOutputBufferBytes, !Self.clientOutputBufferRange.contains(clientOutputBufferBytes) {
            throw .invalidRequest("client-output-buffer-limit \(clientOutputBufferBytes) is outside \(Self.clientOutputBufferRange) bytes")
        }
        let limits = requestLimits
        guard RESPLimits.bulkBytesRange.contains(limits.bulkBytes), RESPLimits.argumentsRange.contains(limits.arguments),
              RESPLimits.inlineBytesRange.contains(limits.inlineBytes) else {
            throw .invalidRequest("""
                request limits outside their ranges: proto-max-bulk-len \(RESPLimits.bulkBytesRange), \
                max-arguments \(RESPLimits.argumentsRange), max-inline-bytes \(RESPLimits.inlineBytesRange)
                """)
        }
        if let maxPeerConnectionsPerAddress, !Self.maxPeerConnectionsPerAddressRange.contains(maxPeerConnectionsPerAddress) {
            throw .invalidRequest("max-peer-connections-per-address \(maxPeerConnectionsPerAddress) is outside \(Self.maxPeerConnectionsPerAddressRange)")
        }
        let tlsSet = [tlsCertificateFile, tlsKeyFile, tlsCAFile].filter { $0 != nil }.count
        guard tlsSet == 0 || tlsSet == 3 else {
            throw .invalidRequest("TLS needs a certificate, a key and a CA file (--tls-cert, --tls-key, --tls-ca), or none")
        }
        if clusterSecretFile == nil, tlsSet == 0, !(insecure ?? false), !Self.isLoopback(listen.host) {
            throw .invalidRequest("""
                refusing to serve peers on \(listen) without a cluster secret or TLS: anyone who reaches that port could join \
                the cluster. Give --cluster-secret-file (the same file on every node) or --tls-cert/--tls-key/--tls-ca, or \
                --insecure to run unauthenticated anyway
                """)
        }
        return (me, parsed, policy)
    }

    /// Whether `host` names this machine only (127.0.0.0/8, ::1, IPv4-mapped loopback,
    /// localhost): where a node may listen without a secret, and whom protected mode serves.
    public static func isLoopback(_ host: String) -> Bool {
        host == "localhost" || host == "::1" || host.hasPrefix("127.") || host.hasPrefix("::ffff:127.")
    }

    /// The TLS files (nil: no TLS).
    public var tlsFiles: TLSFiles? {
        guard let tlsCertificateFile, let tlsKeyFile, let tlsCAFile else { return nil }
        return TLSFiles(certificate: tlsCertificateFile, key: tlsKeyFile, ca: tlsCAFile)
    }

    /// The users: the ACL file's, with `requirePassword` set on `default`.
    public func accessControl() throws(ContinuumError) -> AccessControl {
        var text: String?
        if let aclFile {
            guard let data = FileManager.default.contents(atPath: aclFile) else { throw .invalidRequest("cannot read the ACL file \(aclFile)") }
            text = String(decoding: data, as: UTF8.self)
        }
        if let requirePassword, !(1...AccessControl.passwordBytesMax).contains(requirePassword.utf8.count) {
            throw .invalidRequest("requirepass must have 1...\(AccessControl.passwordBytesMax) bytes")
        }
        return try AccessControl(aclFile: text, requirePassword: requirePassword.map { Array($0.utf8) })
    }

    /// Reads the cluster secret file (nil: none configured).
    public func clusterSecret() throws(ContinuumError) -> [UInt8]? {
        guard let clusterSecretFile else { return nil }
        guard let data = FileManager.default.contents(atPath: clusterSecretFile) else {
            throw .invalidRequest("cannot read the cluster secret file \(clusterSecretFile)")
        }
        var bytes = [UInt8](data)
        while let last = bytes.last, last == 0x0A || last == 0x0D { bytes.removeLast() }
        guard (PeerHandshake.secretBytesMin...PeerHandshake.secretBytesMax).contains(bytes.count) else {
            throw .invalidRequest("""
                the cluster secret in \(clusterSecretFile) has \(bytes.count) bytes; \
                \(PeerHandshake.secretBytesMin)...\(PeerHandshake.secretBytesMax) are allowed
                """)
        }
        return bytes
    }

    /// The store's durability mode (nil: not a mode).
    public var durability: SQLiteStore.Durability? { fsync.map { SQLiteStore.Durability(rawValue: $0) } ?? .always }
}

/// A Continuum node as a server process: the node, its SQLite store, TCP to its peers and the
/// Redis-protocol port, run as a service that shuts down gracefully (pending writes made
/// durable, connections closed) on SIGTERM or SIGINT through swift-service-lifecycle.
public final class NodeServer: Service {
    public let configuration: NodeServerConfiguration
    public let node: Node
    public let transport: NIOTransport
    public let resp: RESPServer?
    /// The server's metrics (commands are measured only when `configuration.metrics` serves them).
    public let metrics: NodeMetrics
    private let metricsServer: MetricsHTTPServer?
    private let logger: Logger
    private let group: any EventLoopGroup
    /// The threads nodes' actors and their client connections run on, one per node server in
    /// turn, apart from `group` (the peer connections'); never shut down, as the singleton
    /// group is not.
    private static let nodeThreads = MultiThreadedEventLoopGroup(numberOfThreads: System.coreCount)

    /// Opens the store (refusing a foreign or corrupt one) and builds the node; nothing listens yet.
    public init(configuration: NodeServerConfiguration, logger: Logger, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) throws {
        let (me, peers, policy) = try configuration.validated()
        self.configuration = configuration
        self.logger = logger
        self.group = group
        try FileManager.default.createDirectory(atPath: configuration.dataDirectory, withIntermediateDirectories: true)
        let store = try SQLiteStore(path: configuration.dataDirectory + "/node.sqlite", node: me, durability: configuration.durability ?? .always)
        let tls: NodeTLS?
        do {
            tls = try configuration.tlsFiles.map(NodeTLS.init)
        } catch {
            throw ContinuumError.invalidRequest("TLS: \(error)")
        }
        let transport = NIOTransport(
            node: me, configuration: .init(cluster: configuration.cluster, peers: peers.mapValues { .init(host: $0.host, port: $0.port) },
                                           secret: try configuration.clusterSecret(),
                                           connectionsPerAddressMax: configuration.maxPeerConnectionsPerAddress
                                               ?? NIOTransport.Configuration.connectionsPerAddressMaxDefault,
                                           tls: tls),
            group: group, logger: logger)
        let members = ([me] + peers.keys).sorted()
        let offset = Duration.milliseconds(configuration.maxClockOffsetMilliseconds)
        // The node's thread is none of the transport's: a Raft or SWIM frame is read and
        // decoded on a peer connection's loop, and never waits there for client work or a long
        // join on the node's thread (it did, for seconds, when both came from one group).
        let nodeLoop = NodeServer.nodeThreads.next()
        let node = Node(
            id: me, members: members,
            configuration: .init(gossipInterval: .milliseconds(100), freshness: .init(maxClockOffset: offset),
                                 pushDelay: NodeServerConfiguration.replicationPushDelay,
                                 lazyRelays: configuration.lazyRelayDelayMilliseconds != 0,
                                 lazyRelayDelay: .milliseconds(configuration.lazyRelayDelayMilliseconds ?? NodeServerConfiguration.lazyRelayDelayDefault)),
            raftConfiguration: .init(electionTimeoutMin: .milliseconds(configuration.electionTimeoutMilliseconds ?? NodeServerConfiguration.electionTimeoutDefault),
                                     heartbeatInterval: .milliseconds(50), maxClockOffset: offset),
            storage: store, transport: transport, seed: UInt64.random(in: 1...UInt64.max), clock: .wall(),
            executor: NodeExecutor(loop: nodeLoop))
        self.node = node
        self.transport = transport
        let metrics = NodeMetrics()
        self.metrics = metrics
        var respConfiguration = RedisServerConfiguration(
            defaultPolicy: policy, faultInjection: configuration.faultInjection ?? false,
            valueBytesMax: configuration.maxValueBytes ?? RedisServerConfiguration.valueBytesMaxDefault)
        respConfiguration.fsync = store.durability.rawValue
        respConfiguration.storeBytes = { store.bytesOnDisk }
        respConfiguration.backups = BackupFiles(store: store, directory: configuration.dataDirectory)
        respConfiguration.access = try configuration.accessControl()
        respConfiguration.protectedMode = !(configuration.insecure ?? false)
        respConfiguration.clientsMax = configuration.maxClients ?? RedisServerConfiguration.clientsMaxDefault
        respConfiguration.requestLimits = configuration.requestLimits
        respConfiguration.idleTimeout = configuration.clientIdleTimeoutSeconds.flatMap { $0 > 0 ? .seconds($0) : nil }
        respConfiguration.outputBufferBytesMax = configuration.clientOutputBufferBytes ?? RedisServerConfiguration.outputBufferBytesMaxDefault
        self.resp = configuration.resp.map { _ in
            RESPServer(node: node, configuration: respConfiguration, transport: transport,
                       metrics: configuration.metrics == nil ? nil : metrics, tls: tls?.server, group: nodeLoop, logger: logger)
        }
        let keyNames = configuration.metricsKeyNames ?? false
        let defaultPolicy = policy
        let peerCount = peers.count
        self.metricsServer = configuration.metrics.map { _ in
            MetricsHTTPServer(group: group, logger: logger, tls: tls?.server, probe: { which in
                await Self.probe(which, node: node, transport: transport, defaultPolicy: defaultPolicy, peers: peerCount)
            }) {
                await metrics.render(node: node, transport: transport,
                                     declared: keyNames ? RedisConnection.declaredPolicies(at: node) : [])
            }
        }
    }

    /// The version `continuum --version`, INFO and HELLO report.
    public static let version = "0.1.0"

    /// `/health`: the process answers and its store has not failed. `/ready`: the node can serve
    /// its default policy now: `available` whenever healthy; `bounded` when the staleness it can
    /// certify is within the bound; `linearizable` when it knows a leader; `serializable` when it
    /// is connected to every peer (a transaction needs every replica).
    static func probe(_ which: MetricsHTTPServer.Probe, node: Node, transport: NIOTransport, defaultPolicy: Policy,
                      peers: Int) async -> (ok: Bool, reason: String) {
        if let failure = await node.storageError { return (false, "the store failed: \(failure)") }
        guard which == .ready else { return (true, "ok") }
        switch defaultPolicy {
        case .available:
            return (true, "ready: available")
        case let .bounded(staleness, _):
            guard let bound = staleness else { return (true, "ready: bounded, no staleness bound") }
            guard let certified = await node.certifiedStaleness.available, certified <= bound else {
                return (false, "not ready: the staleness it can certify is past \(bound)")
            }
            return (true, "ready: bounded, certified staleness \(certified)")
        case .linearizable:
            guard let leader = await node.knownLeader else { return (false, "not ready: no leader known") }
            return (true, "ready: linearizable, leader n\(leader.rawValue)")
        case .serializable:
            let connected = transport.connectedPeers.count
            guard connected == peers else { return (false, "not ready: connected to \(connected) of \(peers) peers") }
            return (true, "ready: serializable, every replica reachable")
        }
    }

    private let ports = Mutex<(peer: Int?, resp: Int?, metrics: Int?)>((nil, nil, nil))

    /// The bound ports, once `start` returned.
    public var boundPeerPort: Int? { ports.withLock { $0.peer } }
    public var boundRESPPort: Int? { ports.withLock { $0.resp } }
    public var boundMetricsPort: Int? { ports.withLock { $0.metrics } }

    /// Starts the node and its listeners.
    public func start() async throws {
        let node = self.node
        try await node.start()
        let peerPort = try await transport.listen(host: configuration.listen.host, port: configuration.listen.port) { message, from in
            // Consensus and failure detection go ahead of client work and deltas waiting for the
            // node's actor.
            let priority: TaskPriority? = Node.isUrgent(message) ? .high : nil
            Task(priority: priority) { await node.deliver(message, from: from) }
        }
        ports.withLock { $0.peer = peerPort }
        if let resp, let address = configuration.resp {
            let respPort = try await resp.listen(host: address.host, port: address.port)
            ports.withLock { $0.resp = respPort }
        }
        if let metricsServer, let address = configuration.metrics {
            let metricsPort = try await metricsServer.listen(host: address.host, port: address.port)
            ports.withLock { $0.metrics = metricsPort }
        }
        logger.info("node started", metadata: [
            "node": "\(configuration.id)", "peers": "\(configuration.peers.keys.sorted())", "data": "\(configuration.dataDirectory)",
        ])
    }

    /// Stops listening, makes pending writes durable, stops the node.
    public func stop() async {
        await resp?.shutdown()
        await metricsServer?.shutdown()
        await node.drain()
        await node.stop()
        await transport.shutdown()
        logger.info("node stopped", metadata: ["node": "\(configuration.id)"])
    }

    /// Service: starts, runs until graceful shutdown (SIGTERM) or cancellation, then stops. A
    /// node whose storage fails has stopped (nothing that depended on the failed write went
    /// out): the service logs it and ends with `StorageError`, so that the process exits
    /// non-zero for its supervisor to restart it.
    public func run() async throws {
        try await start()
        let node = self.node
        let failure: String?
        // The same probe into Raft's shell: what a Raft heartbeat waits for it.
        let consensusProbe = Task(priority: .high) {
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(200))
                let asked = ContinuousClock.now
                await node.pingConsensus()
                node.consensusResponsiveness.record(ContinuousClock.now - asked)
            }
        }
        defer { consensusProbe.cancel() }
        do {
            let logger = self.logger
            failure = try await cancelWhenGracefulShutdown {
                var refused = 0
                while true {
                    try await Task.sleep(for: .milliseconds(200))
                    let asked = ContinuousClock.now
                    if let error = await node.storageError { return error }
                    node.responsiveness.record(ContinuousClock.now - asked)
                    // At most one line per probe, however many a broken or hostile peer sends.
                    let refusals = await node.peerMessagesRefused
                    if refusals.count > refused {
                        logger.warning("refused peer messages", metadata: [
                            "count": "\(refusals.count - refused)", "last": "\(refusals.last ?? "")",
                        ])
                        refused = refusals.count
                    }
                }
            }
        } catch {
            failure = nil
        }
        if let failure { logger.critical("the store failed; the node stopped", metadata: ["error": "\(failure)"]) }
        await stop()
        if let failure { throw StorageError.io(failure) }
    }
}
