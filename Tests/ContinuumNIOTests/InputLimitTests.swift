import Continuum
import ContinuumCore
import ContinuumNIO
import Foundation
import NIOCore
import NIOPosix
import Testing

/// The limits on what a client may make a node hold: connections, idle connections, unread
/// replies, and headers on the metrics port. Each refusal closes only the connection at fault.
@Suite(.timeLimit(.minutes(1))) struct InputLimitTests {
    /// A raw connection that collects what it is sent.
    static func raw(_ port: Int) async throws -> (any Channel, Collected) {
        let collected = Collected()
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(collected) } }
            .connect(host: "127.0.0.1", port: port).get()
        return (channel, collected)
    }

    static func waitClosed(_ channel: any Channel, seconds: Int = 5) async throws {
        for _ in 0..<(seconds * 100) where channel.isActive { try await Task.sleep(for: .milliseconds(10)) }
    }

    @Test func clientsPastMaxclientsAreRefused() async throws {
        let cluster = try await LocalCluster(nodes: 1, defaultPolicy: "available") { $0.maxClients = 3 }
        let port = cluster.servers[0].boundRESPPort!
        var admitted: [RESPClient] = []
        for _ in 0..<2 { admitted.append(try await RESPClient.connect(host: "127.0.0.1", port: port)) }
        for _ in 0..<100 where cluster.servers[0].resp!.connectedClients < 3 { try await Task.sleep(for: .milliseconds(10)) }
        #expect(cluster.servers[0].resp!.connectedClients == 3)
        let (extra, collected) = try await Self.raw(port)
        try await Self.waitClosed(extra)
        #expect(!extra.isActive)
        #expect(collected.text == "-ERR max number of clients reached\r\n")
        #expect(cluster.servers[0].resp!.clientsRefused == 1)
        for client in admitted { #expect(try await client.send(["PING"]) == .simple("PONG")) }
        // A place freed is a place taken.
        await admitted.removeLast().close()
        for _ in 0..<100 where cluster.servers[0].resp!.connectedClients > 2 { try await Task.sleep(for: .milliseconds(10)) }
        let next = try await RESPClient.connect(host: "127.0.0.1", port: port)
        #expect(try await next.send(["PING"]) == .simple("PONG"))
        await next.close()
        for client in admitted { await client.close() }
        await cluster.shutdown()
    }

    @Test func idleClientsAreDisconnected() async throws {
        let cluster = try await LocalCluster(nodes: 1, defaultPolicy: "available") { $0.clientIdleTimeoutSeconds = 1 }
        let port = cluster.servers[0].boundRESPPort!
        let (idle, _) = try await Self.raw(port)
        let busy = try await RESPClient.connect(host: "127.0.0.1", port: port)
        for _ in 0..<8 {
            #expect(try await busy.send(["PING"]) == .simple("PONG"))
            try await Task.sleep(for: .milliseconds(250))
        }
        #expect(!idle.isActive, "a client silent for 2 s outlived a 1 s timeout")
        #expect(busy.isActive)
        await busy.close()
        await cluster.shutdown()
    }

    /// The probe pipelined 400 GETs of a 1 MiB value and read nothing: 82 MB more in the node.
    /// Past the output buffer limit the client is disconnected instead.
    @Test func aClientThatDoesNotReadItsRepliesIsDisconnected() async throws {
        let cluster = try await LocalCluster(nodes: 1, defaultPolicy: "available") { $0.clientOutputBufferBytes = 1 << 20 }
        let port = cluster.servers[0].boundRESPPort!
        #expect(try await cluster.clients[0].send(["SET", "big", String(repeating: "v", count: 512 << 10)]) == .ok)
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelOption(.autoRead, value: false)  // never reads: replies pile up in the node
            .connect(host: "127.0.0.1", port: port).get()
        let request = String(repeating: "*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n", count: 400)
        try await channel.writeAndFlush(ByteBuffer(string: request))
        for _ in 0..<500 where cluster.servers[0].resp!.clientsOverflowed == 0 { try await Task.sleep(for: .milliseconds(10)) }
        #expect(cluster.servers[0].resp!.clientsOverflowed == 1)
        #expect(try await cluster.clients[0].send(["PING"]) == .simple("PONG"), "the others are still served")
        try? await channel.close()
        await cluster.shutdown()
    }

    /// The metrics port takes a scraper's short GET; a request with headers past the limit is
    /// answered with an error and closed.
    @Test func theMetricsPortLimitsHeaders() async throws {
        let cluster = try await LocalCluster(nodes: 1, defaultPolicy: "available")
        let port = cluster.servers[0].boundMetricsPort!
        #expect(try await httpGet(port: port, "/metrics").hasPrefix("HTTP/1.1 200"))
        let many = (0..<(MetricsHTTPServer.headerFieldsMax + 1)).map { "X-\($0): y\r\n" }.joined()
        let long = "X-Long: " + String(repeating: "z", count: MetricsHTTPServer.headerBytesMax + 1) + "\r\n"
        for headers in [many, long] {
            let (channel, collected) = try await Self.raw(port)
            try await channel.writeAndFlush(ByteBuffer(string: "GET /metrics HTTP/1.1\r\nHost: localhost\r\n" + headers + "\r\n"))
            try await Self.waitClosed(channel)
            #expect(!channel.isActive, "\(collected.text.prefix(300))")
            #expect(!collected.text.contains("200 OK") && collected.text.hasPrefix("HTTP/1.1 4"), "\(collected.text.prefix(80))")
        }
        #expect(try await httpGet(port: port, "/metrics").hasPrefix("HTTP/1.1 200"))
        await cluster.shutdown()
    }

    /// Each request limit is an option: past it, a protocol error closes that connection only.
    @Test func requestLimitsAreOptions() async throws {
        let cluster = try await LocalCluster(nodes: 1, defaultPolicy: "available") {
            $0.protoMaxBulkLen = 1_024
            $0.maxArguments = 3
            $0.maxInlineBytes = 1_024
        }
        let port = cluster.servers[0].boundRESPPort!
        let within = "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1000\r\n" + String(repeating: "v", count: 1_000) + "\r\n"
        let cases = [
            ("a bulk past proto-max-bulk-len", "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1025\r\n", "invalid bulk length"),
            ("more arguments than max-arguments", "*4\r\n", "invalid multibulk length"),
            ("an inline command past max-inline-bytes", "SET k " + String(repeating: "w", count: 1_100), "too big"),
        ]
        for (name, request, error) in cases {
            let (channel, collected) = try await Self.raw(port)
            try await channel.writeAndFlush(ByteBuffer(string: request))
            try await Self.waitClosed(channel)
            #expect(!channel.isActive, "\(name) left the connection open")
            #expect(collected.text.contains(error), "\(name): \(collected.text)")
        }
        let (channel, collected) = try await Self.raw(port)
        try await channel.writeAndFlush(ByteBuffer(string: within))
        for _ in 0..<200 where collected.text.isEmpty { try await Task.sleep(for: .milliseconds(10)) }
        #expect(collected.text == "+OK\r\n")
        try await channel.close()
        #expect(try await cluster.clients[0].send(["GET", "k"]) == .bulk(Array(repeating: UInt8(ascii: "v"), count: 1_000)))
        await cluster.shutdown()
    }

    @Test func limitsOutsideTheirRangesAreRefused() throws {
        var configuration = NodeServerConfiguration(id: "n1", listen: .init(host: "127.0.0.1", port: 0), peers: [:], resp: nil,
                                                    dataDirectory: NSTemporaryDirectory() + "continuum-unused")
        for change in [{ (c: inout NodeServerConfiguration) in c.maxClients = 0 }, { $0.clientIdleTimeoutSeconds = -1 },
                       { $0.clientOutputBufferBytes = 1_000 }, { $0.maxClients = 2_000_000 }, { $0.protoMaxBulkLen = 10 },
                       { $0.maxArguments = 0 }, { $0.maxInlineBytes = 1 << 30 }, { $0.maxPeerConnectionsPerAddress = 0 },
                       { $0.lazyRelayDelayMilliseconds = -1 }, { $0.lazyRelayDelayMilliseconds = 60_001 }] {
            var changed = configuration
            change(&changed)
            #expect(throws: ContinuumError.self) { _ = try changed.validated() }
        }
        configuration.maxClients = 10
        configuration.clientIdleTimeoutSeconds = 0
        configuration.clientOutputBufferBytes = 1 << 20
        configuration.lazyRelayDelayMilliseconds = 0
        _ = try configuration.validated()
    }
}
