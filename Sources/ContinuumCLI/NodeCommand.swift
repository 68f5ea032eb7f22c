import ArgumentParser
import Continuum
import ContinuumCore
import ContinuumNIO
import Foundation
import Logging
import ServiceLifecycle

/// `continuum node`: one node of a real cluster, until SIGTERM or SIGINT.
struct NodeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "node",
        abstract: "Run one node: TCP to its peers, a SQLite store in --data-dir, and a Redis-protocol port.",
        discussion: """
            Each option comes from its flag, else from its environment variable, else from a JSON file \
            (--config, or CONTINUUM_CONFIG), else its default. A variable is CONTINUUM_ and the flag's name \
            in capitals with - as _ (--data-dir: CONTINUUM_DATA_DIR; CONTINUUM_PEERS=n2=host:port,n3=host:port; \
            switches true or false; CONTINUUM_MAX_CLOCK_OFFSET in milliseconds has no flag). The file's keys: \
            id, listen, peers (an object of id to host:port), resp, metrics, dataDirectory, defaultPolicy, \
            cluster, maxClockOffsetMilliseconds, faultInjection, maxValueBytes, fsync, electionTimeoutMilliseconds, \
            lazyRelayDelayMilliseconds, metricsKeyNames, clusterSecretFile, insecure, requirePassword, aclFile, \
            maxClients, clientIdleTimeoutSeconds, clientOutputBufferBytes, tlsCertificateFile, tlsKeyFile, tlsCAFile, \
            protoMaxBulkLen, maxArguments, maxInlineBytes, maxPeerConnectionsPerAddress, logLevel; an unknown key \
            is refused. SIGTERM or SIGINT shuts the node down gracefully: pending writes are made durable, \
            connections closed.
            """)

    @Option(help: "A JSON configuration file.")
    var config: String?

    @Option(help: "This node's id: n1, n2, ...")
    var id: String?

    @Option(help: "Where peers reach this node, host:port.")
    var listen: String?

    @Option(name: .customLong("peer"), help: "A peer, id=host:port (repeat for each).")
    var peers: [String] = []

    @Option(help: "Where the Redis-protocol server listens, host:port.")
    var resp: String?

    @Option(help: "Where metrics are served over HTTP (GET /metrics, Prometheus text format), host:port.")
    var metrics: String?

    @Option(help: "The directory of this node's store.")
    var dataDir: String?

    @Option(help: "The policy of keys nobody declared: available, linearizable, serializable, or 'bounded <staleness ms|none> <latency ms>'.")
    var defaultPolicy: String?

    @Option(help: "The cluster's name; nodes of another cluster are refused.")
    var cluster: String?

    @Flag(help: "Let clients cut links (CONTINUUM.PARTITION, HEAL) and arm crash points (CONTINUUM.CRASHPOINT), which end this process: for tests only.")
    var faultInjection = false

    @Option(help: "The most bytes one command may carry (a value, or one SADD's members); larger ones are refused. Default 16 MiB, at most 60 MiB.")
    var maxValueBytes: Int?

    @Option(help: "When a write is acknowledged: always (after fsync; the default) or everysec (once the operating system has it, fsync at least every second: a power loss may lose the last second).")
    var fsync: String?

    @Option(help: "Milliseconds without a leader before a follower stands for election (randomized up to twice it; 100...60000, default 1000 as etcd's). Lower: faster failover, more elections when a node is busy.")
    var electionTimeout: Int?

    @Option(help: "Milliseconds a node holds back its relay of a delta whose maker ships it to every neighbour itself, until the neighbour reports holding it (0...60000, default 500; 0: relay every delta on the next tick).")
    var lazyRelayDelay: Int?

    @Flag(help: "Let /metrics name declared keys (per-register staleness); off by default, as the metrics port has no credentials.")
    var metricsKeyNames = false

    @Option(help: "A file holding the cluster secret (16 to 4096 bytes), the same on every node: peers prove they hold it (HMAC-SHA256 challenge-response) before any message passes. Required to listen on an address other than loopback, unless --insecure.")
    var clusterSecretFile: String?

    @Flag(help: "Serve peers without a cluster secret on an address other than loopback (anyone who reaches the peer port can join), and clients beyond loopback while the default user has no password (protected mode off).")
    var insecure = false

    @Option(help: "The default user's password, as Redis's requirepass: clients must AUTH first (NOAUTH otherwise).")
    var requirepass: String?

    @Option(help: "A file of users in Redis's ACL syntax (user NAME on #<sha256>|>password ~pattern +@read|write|admin|connection policies:available,...), loaded at start.")
    var aclFile: String?

    @Option(help: "This node's certificate (PEM): TLS on the Redis, metrics and peer ports (with --tls-key and --tls-ca). Its DNS names must include n<id>.")
    var tlsCert: String?

    @Option(help: "This node's private key (PEM).")
    var tlsKey: String?

    @Option(help: "The CA (PEM) that signs every node's certificate: peers must present a certificate it signed (mutual TLS).")
    var tlsCa: String?

    @Option(help: "Bytes of one bulk string at most (1024...67108864, default 64 MiB; Redis's proto-max-bulk-len).")
    var protoMaxBulkLen: Int?

    @Option(help: "Arguments of one command at most (default 1048576).")
    var maxArguments: Int?

    @Option(help: "Bytes of one inline command at most (default 65536).")
    var maxInlineBytes: Int?

    @Option(help: "Peer connections accepted from one address at once (default 64).")
    var maxPeerConnectionsPerAddress: Int?

    @Option(help: "Connected Redis-protocol clients at most (default 10000); one more is answered '-ERR max number of clients reached'.")
    var maxclients: Int?

    @Option(help: "Seconds a client may send nothing before it is disconnected (default 0: never, as Redis).")
    var timeout: Int?

    @Option(help: "Unread reply bytes a client may have waiting before it is disconnected (default 64 MiB, 1 MiB...1 GiB).")
    var clientOutputBufferLimit: Int?

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical (default info).")
    var logLevel: String?

    /// The options below the flags: the environment's over the file's (`--config`, or
    /// `CONTINUUM_CONFIG`), and the `CONTINUUM_*` variables nobody reads.
    func layers(environment: [String: String]) throws -> (base: NodeOptionLayer, unknownVariables: [String]) {
        let (variables, unknown) = try NodeOptionLayer.environment(environment)
        let path = config ?? environment[NodeOptionLayer.configVariable].flatMap { $0.isEmpty ? nil : $0 }
        let file = try path.map(NodeOptionLayer.file) ?? NodeOptionLayer()
        return (file.overlaid(by: variables), unknown)
    }

    /// Each option from its flag, else the environment, else the file, else its default.
    func configurationFromOptions(environment: [String: String] = ProcessInfo.processInfo.environment) throws -> NodeServerConfiguration {
        let base = try layers(environment: environment).base
        guard let id = id ?? base.id else { throw ValidationError("--id is missing (or CONTINUUM_ID, or 'id' in --config)") }
        guard let listen = try listen.map(NodeServerConfiguration.Address.init(parsing:)) ?? base.listen else {
            throw ValidationError("--listen is missing (or CONTINUUM_LISTEN, or 'listen' in --config)")
        }
        guard let dataDirectory = dataDir ?? base.dataDirectory else {
            throw ValidationError("--data-dir is missing (or CONTINUUM_DATA_DIR, or 'dataDirectory' in --config)")
        }
        var peerAddresses = base.peers ?? [:]
        if !peers.isEmpty {
            // Peers on the command line replace the environment's and the file's list.
            peerAddresses = [:]
            for peer in peers {
                let parts = peer.split(separator: "=", maxSplits: 1).map(String.init)
                guard parts.count == 2 else { throw ValidationError("--peer '\(peer)' is not id=host:port") }
                peerAddresses[parts[0]] = try NodeServerConfiguration.Address(parsing: parts[1])
            }
        }
        var configuration = NodeServerConfiguration(
            id: id, listen: listen, peers: peerAddresses, resp: try resp.map(NodeServerConfiguration.Address.init(parsing:)) ?? base.resp,
            metrics: try metrics.map(NodeServerConfiguration.Address.init(parsing:)) ?? base.metrics,
            dataDirectory: dataDirectory, defaultPolicy: defaultPolicy ?? base.defaultPolicy ?? "linearizable",
            cluster: cluster ?? base.cluster ?? "continuum")
        configuration.maxClockOffsetMilliseconds = base.maxClockOffsetMilliseconds ?? configuration.maxClockOffsetMilliseconds
        configuration.faultInjection = faultInjection || (base.faultInjection ?? false)
        configuration.maxValueBytes = maxValueBytes ?? base.maxValueBytes
        configuration.fsync = fsync ?? base.fsync
        configuration.electionTimeoutMilliseconds = electionTimeout ?? base.electionTimeoutMilliseconds
        configuration.lazyRelayDelayMilliseconds = lazyRelayDelay ?? base.lazyRelayDelayMilliseconds
        configuration.metricsKeyNames = metricsKeyNames || (base.metricsKeyNames ?? false)
        configuration.clusterSecretFile = clusterSecretFile ?? base.clusterSecretFile
        configuration.insecure = insecure || (base.insecure ?? false)
        configuration.requirePassword = requirepass ?? base.requirePassword
        configuration.aclFile = aclFile ?? base.aclFile
        configuration.maxClients = maxclients ?? base.maxClients
        configuration.protoMaxBulkLen = protoMaxBulkLen ?? base.protoMaxBulkLen
        configuration.maxArguments = maxArguments ?? base.maxArguments
        configuration.maxInlineBytes = maxInlineBytes ?? base.maxInlineBytes
        configuration.maxPeerConnectionsPerAddress = maxPeerConnectionsPerAddress ?? base.maxPeerConnectionsPerAddress
        configuration.tlsCertificateFile = tlsCert ?? base.tlsCertificateFile
        configuration.tlsKeyFile = tlsKey ?? base.tlsKeyFile
        configuration.tlsCAFile = tlsCa ?? base.tlsCAFile
        configuration.clientIdleTimeoutSeconds = timeout ?? base.clientIdleTimeoutSeconds
        configuration.clientOutputBufferBytes = clientOutputBufferLimit ?? base.clientOutputBufferBytes
        _ = try configuration.accessControl()
        _ = try configuration.validated()
        return configuration
    }

    func run() async throws {
        let environment = ProcessInfo.processInfo.environment
        let (base, unknownVariables) = try layers(environment: environment)
        let levelName = logLevel ?? base.logLevel ?? "info"
        guard let level = Logger.Level(rawValue: levelName) else { throw ValidationError("unknown log level '\(levelName)'") }
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "continuum.node")
        for name in unknownVariables {
            logger.warning("ignoring \(name): no option reads it (see continuum node --help)")
        }
        let configuration = try configurationFromOptions(environment: environment)
        let server = try NodeServer(configuration: configuration, logger: logger)
        let group = ServiceGroup(services: [server], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        try await group.run()
    }
}

/// `continuum client`: one Redis-protocol command, its reply printed as redis-cli prints it.
struct ClientCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "client",
        abstract: "Send one command to a node's Redis-protocol port and print the reply.",
        discussion: "Exit status 1 when the reply is an error. Example: continuum client --port 6401 SET greeting hello")

    @Option(help: "The node's host.")
    var host = "127.0.0.1"

    @Option(help: "The node's Redis-protocol port.")
    var port = 6401

    @OptionGroup var signIn: SignInOptions

    @Argument(help: "The command and its arguments.")
    var command: [String]

    func run() async throws {
        guard !command.isEmpty else { throw ValidationError("no command") }
        let client: RESPClient
        do {
            client = try await RESPClient.connect(host: host, port: port, credentials: signIn.credentials, tls: signIn.tls)
        } catch {
            throw ValidationError("cannot connect to \(host):\(port): \(error)")
        }
        let reply = try await client.send(command)
        await client.close()
        print(reply)
        if case .error = reply { throw ExitCode(1) }
    }
}

/// How a command signs in to a node's Redis-protocol port: `--user`, `--password`, `--tls-ca`.
struct SignInOptions: ParsableArguments {
    @Option(help: "Sign in as this user (with --password).")
    var user = "default"

    @Option(help: "The password to sign in with (AUTH) first.")
    var password: String?

    @Option(help: "Connect over TLS, trusting this CA (PEM), e.g. DIR/tls/ca.pem of 'cluster up --tls'.")
    var tlsCa: String?

    var credentials: Credentials? { password.map { Credentials(user: user, password: $0) } }
    var tls: ClientTLS? { tlsCa.map(ClientTLS.init(ca:)) }
}
