import Continuum
import ContinuumCore
import ContinuumNIO
import Foundation
import Logging
import NIOCore
import NIOPosix
import Testing

/// Three node servers in this process, on loopback, with SQLite stores in a temporary directory.
final class LocalCluster {
    let directory: String
    var servers: [NodeServer] = []
    var clients: [RESPClient] = []

    init(nodes: Int = 3, defaultPolicy: String = "linearizable", maxValueBytes: Int? = nil, metricsKeyNames: Bool = true,
         faultInjection: Bool = true, logger given: Logger? = nil, respHost: String = "127.0.0.1", credentials: Credentials? = nil,
         configure: (inout NodeServerConfiguration) -> Void = { _ in }) async throws {
        directory = NSTemporaryDirectory() + "continuum-resp-\(UUID().uuidString)"
        var logger = given ?? Logger(label: "test")
        if given == nil { logger.logLevel = .error }
        let names = (1...nodes).map { "n\($0)" }
        for name in names {
            var configuration = NodeServerConfiguration(
                id: name, listen: .init(host: "127.0.0.1", port: 0),
                peers: Dictionary(uniqueKeysWithValues: names.filter { $0 != name }.map { ($0, .init(host: "127.0.0.1", port: 1)) }),
                resp: .init(host: respHost, port: 0), metrics: .init(host: "127.0.0.1", port: 0),
                dataDirectory: directory + "/" + name, defaultPolicy: defaultPolicy)
            configuration.maxValueBytes = maxValueBytes
            configuration.metricsKeyNames = metricsKeyNames
            configuration.faultInjection = faultInjection
            configure(&configuration)
            servers.append(try NodeServer(configuration: configuration, logger: logger))
        }
        for server in servers { try await server.start() }
        for server in servers {
            for (index, other) in servers.enumerated() where other !== server {
                await server.transport.setAddress(of: NodeID(UInt64(index + 1)), .init(host: "127.0.0.1", port: other.boundPeerPort!))
            }
        }
        for server in servers {
            clients.append(try await RESPClient.connect(host: "127.0.0.1", port: server.boundRESPPort!, credentials: credentials))
        }
    }

    /// Retries while the cluster has no leader yet.
    func untilServed(_ node: Int, _ command: [String]) async throws -> RESPReply {
        for _ in 0..<250 {
            let reply = try await clients[node].send(command)
            if case let .error(text) = reply, text.hasPrefix("UNAVAILABLE") || text.hasPrefix("INDETERMINATE") {
                try await Task.sleep(for: .milliseconds(20))
                continue
            }
            return reply
        }
        throw RESPClientError(description: "no leader")
    }

    func shutdown() async {
        for client in clients { await client.close() }
        for server in servers { await server.stop() }
        try? FileManager.default.removeItem(atPath: directory)
    }
}

@Suite(.timeLimit(.minutes(1))) struct RESPServerTests {
    @Test func redisCommandsWorkAcrossNodesUnderTheirPolicies() async throws {
        let cluster = try await LocalCluster()
        let c = cluster.clients
        #expect(try await cluster.untilServed(0, ["SET", "greeting", "hello"]) == .ok)
        #expect(try await c[1].send(["GET", "greeting"]) == .bulk("hello"), "linearizable: another node reads the write")
        #expect(try await c[2].send(["INCR", "hits"]) == .integer(1))
        #expect(try await c[0].send(["INCRBY", "hits", "41"]) == .integer(42))
        #expect(try await c[1].send(["DECRBY", "hits", "2"]) == .integer(40))
        #expect(try await c[1].send(["INCR", "greeting"]) == .error("ERR value is not an integer or out of range"))
        #expect(try await c[0].send(["SADD", "tags", "a", "b", "a"]) == .integer(2))
        #expect(try await c[2].send(["SMEMBERS", "tags"]) == .array([.bulk("a"), .bulk("b")]), "RESP2 sends sets as arrays")
        #expect(try await c[2].send(["SREM", "tags", "a", "zzz"]) == .integer(1))
        #expect(try await c[1].send(["DEL", "greeting", "tags", "nothing"]) == .integer(2))
        #expect(try await c[0].send(["GET", "greeting"]) == .null)

        // A key declared available: CRDT updates, merged everywhere by anti-entropy.
        #expect(try await c[0].send(["CONTINUUM.POLICY", "cart", "available"]) == .ok)
        #expect(try await c[0].send(["CONTINUUM.POLICY", "cart"]) == .bulk("available"))
        #expect(try await c[0].send(["SADD", "cart", "tea"]) == .integer(1))
        var seen: RESPReply = .null
        for _ in 0..<250 {
            seen = try await c[2].send(["SMEMBERS", "cart"])
            if seen == .array([.bulk("tea")]) { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(seen == .array([.bulk("tea")]))
        // Available strings (last writer wins) and counters replicate the same way.
        #expect(try await c[0].send(["CONTINUUM.POLICY", "title", "available"]) == .ok)
        #expect(try await c[0].send(["CONTINUUM.POLICY", "views", "bounded", "none", "100"]) == .ok)
        #expect(try await c[0].send(["SET", "title", "Hello"]) == .ok)
        #expect(try await c[0].send(["INCRBY", "views", "3"]) == .integer(3))
        var title: RESPReply = .null
        var views: RESPReply = .null
        for _ in 0..<250 {
            title = try await c[2].send(["GET", "title"])
            views = try await c[1].send(["GET", "views"])
            if title == .bulk("Hello") && views == .bulk("3") { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(title == .bulk("Hello") && views == .bulk("3"))
        #expect(try await c[1].send(["SET", "views", "x"]).description.hasPrefix("(error) WRONGTYPE"))
        // A per-command policy, with what was delivered.
        guard case let .array(fields) = try await c[1].send(["CONTINUUM.GET", "hits", "bounded", "10000", "500"]) else {
            Issue.record("CONTINUUM.GET did not answer an array")
            return
        }
        #expect(fields.first == .bulk("40"))
        #expect(fields.count == 5)
        #expect(try await c[0].send(["CONTINUUM.POLICY", "cart", "sometimes"]).description.contains("a policy is"))

        // Errors in Redis's form; the connection goes on.
        #expect(try await c[0].send(["NOSUCH"]) == .error("ERR unknown command 'nosuch'"))
        #expect(try await c[0].send(["GET"]) == .error("ERR wrong number of arguments for 'get' command"))
        #expect(try await c[0].send(["PING"]) == .simple("PONG"))
        guard case .map = try await c[0].send(["HELLO", "3"]) else {
            Issue.record("HELLO 3 did not answer a map")
            return
        }
        #expect(try await c[0].send(["GET", "nothing"]) == .null, "RESP3 null")
        await cluster.shutdown()
    }

    /// A command carrying more than max-value-bytes is refused with an error that names the
    /// limit, and nothing of it is applied; at the limit it is served. A limit outside
    /// 1...60 MiB is refused when the node is configured.
    @Test func valuesLargerThanTheLimitAreRefused() async throws {
        let cluster = try await LocalCluster(nodes: 1, maxValueBytes: 1_000)
        let fits = String(repeating: "v", count: 999)
        #expect(try await cluster.untilServed(0, ["SET", "k", fits]) == .ok)
        let refused = try await cluster.clients[0].send(["SET", "k", String(repeating: "w", count: 2_000)])
        #expect(refused == .error("ERR SET carries 2001 bytes, more than max-value-bytes (1000); nothing was applied"))
        #expect(try await cluster.clients[0].send(["GET", "k"]) == .bulk(Array(fits.utf8)))
        let members = (0..<200).map { "member-\($0)" }
        guard case .error(let message) = try await cluster.clients[0].send(["SADD", "s"] + members) else {
            Issue.record("a SADD of 200 members over the limit was served")
            return
        }
        #expect(message.contains("max-value-bytes (1000)"))
        #expect(try await cluster.clients[0].send(["SCARD", "s"]) == .integer(0))
        await cluster.shutdown()
        var configuration = NodeServerConfiguration(id: "n1", listen: .init(host: "127.0.0.1", port: 0), peers: [:], resp: nil,
                                                    dataDirectory: NSTemporaryDirectory() + "continuum-unused")
        configuration.maxValueBytes = 0
        #expect(throws: ContinuumError.self) { _ = try configuration.validated() }
        configuration.maxValueBytes = 512 << 20
        #expect(throws: ContinuumError.self) { _ = try configuration.validated() }
    }

    /// A node refuses to serve peers beyond loopback with no cluster secret, unless told
    /// `insecure`; a secret file must hold 16 to 4,096 bytes.
    @Test func aNodeBeyondLoopbackNeedsASecret() throws {
        var configuration = NodeServerConfiguration(id: "n1", listen: .init(host: "0.0.0.0", port: 7001), peers: [:], resp: nil,
                                                    dataDirectory: NSTemporaryDirectory() + "continuum-unused")
        #expect(throws: ContinuumError.self) { _ = try configuration.validated() }
        configuration.insecure = true
        _ = try configuration.validated()
        configuration.insecure = nil
        let file = NSTemporaryDirectory() + "continuum-secret-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: file) }
        configuration.clusterSecretFile = file
        _ = try configuration.validated()
        #expect(throws: ContinuumError.self) { _ = try configuration.clusterSecret() }  // no such file
        FileManager.default.createFile(atPath: file, contents: Data("short\n".utf8))
        #expect(throws: ContinuumError.self) { _ = try configuration.clusterSecret() }
        FileManager.default.createFile(atPath: file, contents: Data("0123456789abcdef0123\n".utf8))
        #expect(try configuration.clusterSecret() == Array("0123456789abcdef0123".utf8))
        configuration.listen.host = "127.0.0.1"
        configuration.clusterSecretFile = nil
        _ = try configuration.validated()
    }

    @Test func inlineCommandsPipeliningAndProtocolErrors() async throws {
        let cluster = try await LocalCluster(nodes: 1)
        let port = cluster.servers[0].boundRESPPort!
        // Raw bytes: an inline command and two pipelined array commands, answered in order.
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton).connect(host: "127.0.0.1", port: port).get()
        let collected = Collected()
        try await channel.pipeline.addHandler(collected)
        try await channel.writeAndFlush(ByteBuffer(string: "PING\r\n*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\n"))
        for _ in 0..<200 where collected.text.utf8.count < 22 { try await Task.sleep(for: .milliseconds(10)) }
        #expect(collected.text == "+PONG\r\n+PONG\r\n$2\r\nhi\r\n")
        // A protocol error is answered and closes the connection; the server goes on.
        try await channel.writeAndFlush(ByteBuffer(string: "*1\r\n%4\r\nPING\r\n"))
        for _ in 0..<200 where channel.isActive { try await Task.sleep(for: .milliseconds(10)) }
        #expect(!channel.isActive)
        #expect(collected.text.contains("-ERR Protocol error"))
        let client = try await RESPClient.connect(host: "127.0.0.1", port: port)
        #expect(try await client.send(["PING"]) == .simple("PONG"))
        await client.close()
        await cluster.shutdown()
    }
}

extension RESPServerTests {
    /// Commands the connection starts at once (available writes, plain reads) and commands it
    /// runs in a task (admin commands, SMEMBERS, a linearizable key's) are answered in the order
    /// they were sent, each seeing the effects of those before it, when pipelined in one write.
    @Test func pipelinedCommandsAnswerInOrderWhereverTheyRun() async throws {
        let cluster = try await LocalCluster(nodes: 1, defaultPolicy: "available")
        _ = try await cluster.untilServed(0, ["CONTINUUM.POLICY", "lin", "linearizable"])
        _ = try await cluster.untilServed(0, ["GET", "lin"])  // a leader
        let port = cluster.servers[0].boundRESPPort!
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton).connect(host: "127.0.0.1", port: port).get()
        let collected = Collected()
        try await channel.pipeline.addHandler(collected)
        func command(_ words: String...) -> String { "*\(words.count)\r\n" + words.map { "$\($0.utf8.count)\r\n\($0)\r\n" }.joined() }
        let sent: [(String, String)] = [
            (command("SET", "x", "1"), "+OK\r\n"),
            (command("CONTINUUM.DECLARE", "s", "set"), "+OK\r\n"),  // a task
            (command("SADD", "s", "a", "b"), ":2\r\n"),
            (command("SMEMBERS", "s"), "*2\r\n$1\r\na\r\n$1\r\nb\r\n"),  // a task
            (command("SREM", "s", "a"), ":1\r\n"),
            (command("SISMEMBER", "s", "a"), ":0\r\n"),
            (command("SCARD", "s"), ":1\r\n"),
            (command("INCR", "lin"), ":1\r\n"),  // through Raft: a task
            (command("INCR", "c"), ":1\r\n"),
            (command("GET", "lin"), "$1\r\n1\r\n"),  // a task
            (command("INCR", "lin"), ":2\r\n"),
            (command("SET", "x", "2"), "+OK\r\n"),
            (command("PING"), "+PONG\r\n"),  // a task
            (command("GET", "x"), "$1\r\n2\r\n"),
            (command("GET", "c"), "$1\r\n1\r\n"),
            (command("SADD", "x", "m"), "-WRONGTYPE"),
        ]
        // Then 500 INCRs of one counter, answered 2...501 in order.
        let incrs = String(repeating: command("INCR", "c"), count: 500)
        try await channel.writeAndFlush(ByteBuffer(string: sent.map(\.0).joined() + incrs))
        let counted = (2...501).map { ":\($0)\r\n" }.joined()
        for _ in 0..<500 where !collected.text.hasSuffix(":501\r\n") { try await Task.sleep(for: .milliseconds(10)) }
        let text = collected.text
        #expect(text.hasPrefix(sent.map(\.1).joined()), "\(text.prefix(400))")
        #expect(text.hasSuffix(counted))
        try await channel.close()
        await cluster.shutdown()
    }
}

/// One HTTP/1.1 request on a fresh connection; the whole response as text.
func httpGet(port: Int, _ path: String) async throws -> String {
    let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton).connect(host: "127.0.0.1", port: port).get()
    let collected = Collected()
    try await channel.pipeline.addHandler(collected)
    try await channel.writeAndFlush(ByteBuffer(string: "GET \(path) HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"))
    for _ in 0..<500 where channel.isActive { try await Task.sleep(for: .milliseconds(10)) }
    return collected.text
}

/// The value of the sample whose name and labels are `series` in a Prometheus text page.
func sample(_ page: String, _ series: String) -> Double? {
    for line in page.split(separator: "\n") where line.hasPrefix(series + " ") {
        let value = line.dropFirst(series.count + 1)
        return value == "+Inf" ? .infinity : Double(value)
    }
    return nil
}

@Suite(.serialized) struct MetricsTests {
    @Test func metricsReportLatencyByPolicyStalenessAndErrors() async throws {
        let cluster = try await LocalCluster()
        let c = cluster.clients
        #expect(try await cluster.untilServed(0, ["SET", "k", "v"]) == .ok)
        #expect(try await c[0].send(["CONTINUUM.POLICY", "views", "available"]) == .ok)
        #expect(try await c[0].send(["CONTINUUM.POLICY", "acct", "serializable"]) == .ok)
        for _ in 0..<3 { _ = try await c[0].send(["INCR", "views"]) }
        #expect(try await c[0].send(["INCR", "acct"]) == .integer(1))
        #expect(try await c[0].send(["GET", "k"]) == .bulk("v"))
        let port = try #require(cluster.servers[0].boundMetricsPort)

        let page = try await httpGet(port: port, "/metrics")
        #expect(page.hasPrefix("HTTP/1.1 200 OK"))
        #expect(page.contains("text/plain; version=0.0.4"))
        #expect(sample(page, #"continuum_command_duration_seconds_count{policy="available",command="incr"}"#) == 3)
        #expect(sample(page, #"continuum_command_duration_seconds_count{policy="serializable",command="incr"}"#) == 1)
        #expect(sample(page, #"continuum_command_duration_seconds_count{policy="linearizable",command="get"}"#) == 1)
        let bucketed = sample(page, #"continuum_command_duration_seconds_bucket{policy="available",command="incr",le="+Inf"}"#)
        #expect(bucketed == 3)
        #expect((sample(page, "continuum_raft_commit_index") ?? 0) >= 1)
        #expect((sample(page, "continuum_storage_flushes_total") ?? 0) >= 1)
        #expect((sample(page, "continuum_transport_frames_sent_total") ?? 0) >= 1)
        let healthy = try #require(sample(page, #"continuum_register_staleness_seconds{register="views",policy="available"}"#))
        #expect(healthy < 1, "a connected node certifies its CRDT state within a few gossip rounds")
        #expect(sample(page, #"continuum_register_staleness_seconds{register="acct",policy="serializable"}"#) == 0,
                "nothing is prepared: the committed state is certified now")

        // Cut n1 off: its certificate ages, the gauge follows, and a bounded read that needs
        // 100 ms fails and is counted.
        #expect(try await c[0].send(["CONTINUUM.PARTITION", "n2", "n3"]) == .ok)
        try await Task.sleep(for: .milliseconds(800))
        #expect(try await c[0].send(["CONTINUUM.GET", "views", "bounded", "100", "50"]).description.hasPrefix("(error) STALE"))
        let cut = try await httpGet(port: port, "/metrics")
        let aged = try #require(sample(cut, #"continuum_register_staleness_seconds{register="views",policy="available"}"#))
        #expect(aged > 0.5, "n1 heard from nobody for 800 ms")
        #expect(sample(cut, #"continuum_certified_staleness_seconds{mechanism="crdt"}"#) == aged)
        #expect(sample(cut, #"continuum_command_errors_total{policy="bounded",command="continuum.get",error="stale"}"#) == 1)
        #expect(try await c[0].send(["CONTINUUM.HEAL"]) == .ok)

        #expect(try await httpGet(port: port, "/other").hasPrefix("HTTP/1.1 404"))
        await cluster.shutdown()
    }

    /// Key names may be private and the metrics port has no credentials: without
    /// `metricsKeyNames` the page names no key, only the per-mechanism figures.
    @Test func metricsNameNoKeyUnlessAsked() async throws {
        let cluster = try await LocalCluster(nodes: 1, metricsKeyNames: false)
        #expect(try await cluster.untilServed(0, ["CONTINUUM.POLICY", "user:alice:card", "available"]) == .ok)
        #expect(try await cluster.clients[0].send(["SADD", "user:alice:card", "4111"]) == .integer(1))
        let page = try await httpGet(port: try #require(cluster.servers[0].boundMetricsPort), "/metrics")
        #expect(page.contains("continuum_certified_staleness_seconds"))
        #expect(!page.contains("alice"), "a key name on the metrics page")
        #expect(!page.contains("continuum_register_staleness_seconds{"))
        await cluster.shutdown()
    }
}

/// Admin commands: fault injection only where it was asked for, and every one written down.
@Suite(.timeLimit(.minutes(1))) struct HealthTests {
    /// `/health` while the store is well; `/ready` once the node can serve its default policy:
    /// a linearizable node alone of three (no leader possible) is healthy and not ready, a
    /// serializable one not connected to its peers neither, an available one is.
    @Test func healthAndReadinessFollowTheDefaultPolicy() async throws {
        for (policy, ready) in [("linearizable", false), ("serializable", false), ("available", true)] {
            let directory = NSTemporaryDirectory() + "continuum-health-\(UUID().uuidString)"
            defer { try? FileManager.default.removeItem(atPath: directory) }
            var configuration = NodeServerConfiguration(
                id: "n1", listen: .init(host: "127.0.0.1", port: 0),
                peers: ["n2": .init(host: "127.0.0.1", port: 1), "n3": .init(host: "127.0.0.1", port: 1)],
                resp: nil, metrics: .init(host: "127.0.0.1", port: 0), dataDirectory: directory, defaultPolicy: policy)
            configuration.electionTimeoutMilliseconds = 100
            var logger = Logger(label: "test")
            logger.logLevel = .error
            let server = try NodeServer(configuration: configuration, logger: logger)
            try await server.start()
            let port = server.boundMetricsPort!
            try await Task.sleep(for: .milliseconds(500))  // past a few election timeouts
            #expect(try await httpGet(port: port, "/health").hasPrefix("HTTP/1.1 200"), "\(policy)")
            let readiness = try await httpGet(port: port, "/ready")
            #expect(readiness.hasPrefix(ready ? "HTTP/1.1 200" : "HTTP/1.1 503"), "\(policy): \(readiness)")
            await server.stop()
        }
        // A single node leads itself: ready under linearizable.
        let cluster = try await LocalCluster(nodes: 1)
        _ = try await cluster.untilServed(0, ["SET", "k", "v"])
        let readiness = try await httpGet(port: cluster.servers[0].boundMetricsPort!, "/ready")
        #expect(readiness.hasPrefix("HTTP/1.1 200") && readiness.contains("leader n1"), "\(readiness)")
        await cluster.shutdown()
    }
}

@Suite struct AdminCommandTests {
    @Test func partitionNeedsFaultInjectionAndAdminCommandsAreAudited() async throws {
        let lines = CapturedLog()
        var logger = Logger(label: "audit-test") { _ in lines }
        logger.logLevel = .notice
        let cluster = try await LocalCluster(nodes: 1, faultInjection: false, logger: logger)
        #expect(try await cluster.untilServed(0, ["CONTINUUM.POLICY", "cart", "available"]) == .ok)
        let refused = try await cluster.clients[0].send(["CONTINUUM.PARTITION", "n2"])
        #expect(refused.description.contains("fault injection"), "\(refused)")
        #expect(try await cluster.clients[0].send(["CONTINUUM.HEAL"]).description.contains("fault injection"))
        #expect(try await cluster.untilServed(0, ["SET", "k", "v"]) == .ok)
        let audit = lines.all.filter { $0.contains("admin command") }
        #expect(audit.contains { $0.contains("CONTINUUM.POLICY cart available") && $0.contains("outcome=ok") && $0.contains("127.0.0.1") },
                "\(audit)")
        #expect(audit.contains { $0.contains("CONTINUUM.PARTITION n2") && $0.contains("fault injection") }, "\(audit)")
        #expect(audit.contains { $0.contains("CONTINUUM.HEAL") })
        #expect(!audit.contains { $0.contains("SET") }, "only admin commands are audited")
        await cluster.shutdown()
    }
}

/// Log lines, kept for a test to read.
final class CapturedLog: LogHandler, @unchecked Sendable {
    private let lock = NSLock()
    private var lines: [String] = []
    var logLevel: Logger.Level = .trace
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let fields = (event.metadata ?? [:]).sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        lock.withLock { lines.append("\(event.message) \(fields)") }
    }

    var all: [String] { lock.withLock { lines } }
}

final class Collected: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    private let lock = NSLock()
    private var bytes: [UInt8] = []

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        lock.withLock { bytes += buffer.readBytes(length: buffer.readableBytes) ?? [] }
    }

    var text: String { lock.withLock { String(decoding: bytes, as: UTF8.self) } }
}
