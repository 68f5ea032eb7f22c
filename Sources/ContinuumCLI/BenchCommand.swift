import ArgumentParser
import ContinuumClient
import ContinuumNIO
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// `continuum bench`: a closed-loop load with the same clients, keys and values against a
/// Continuum cluster (the Redis protocol) or an etcd cluster (its v3 HTTP/JSON gateway), for
/// figures measured side by side on one machine.
struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Closed-loop load on a Continuum cluster (RESP) or an etcd cluster (v3 HTTP/JSON), for side-by-side figures.",
        discussion: """
            Each client holds one connection (clients are spread over the endpoints in turn) and \
            keeps one request in flight. Operations, each run for --requests requests: put \
            (Continuum SET under the key's policy, linearizable unless declared otherwise; etcd \
            kv/put), get (Continuum GET; etcd kv/range, linearizable), local-get (Continuum \
            CONTINUUM.GET key available: the node's own state, no consensus round; etcd kv/range \
            with serializable=true: the member's own state). Prints requests per second and \
            latency percentiles per operation.
            """)

    enum System: String, ExpressibleByArgument, CaseIterable { case continuum, etcd }

    @Option(help: "continuum or etcd.")
    var system: System

    @Option(help: "Comma-separated host:port of every node (Continuum: Redis-protocol ports; etcd: client URLs' ports).")
    var endpoints: String

    @Option(help: "Concurrent clients.")
    var clients = 50

    @Option(help: "Requests per operation.")
    var requests = 20_000

    @Option(help: "Comma-separated operations: put, get, local-get.")
    var operations = "put,get,local-get"

    @Option(help: "Distinct keys.")
    var keys = 1_000

    @Option(help: "Bytes per value.")
    var valueSize = 16

    func validate() throws {
        guard clients > 0, requests > 0, keys > 0, valueSize > 0 else { throw ValidationError("counts must be positive") }
        for operation in operations.split(separator: ",") where !["put", "get", "local-get"].contains(operation) {
            throw ValidationError("unknown operation '\(operation)': put, get or local-get")
        }
    }

    func run() async throws {
        let addresses = try endpoints.split(separator: ",").map { try NodeServerConfiguration.Address(parsing: String($0)) }
        guard !addresses.isEmpty else { throw ValidationError("no endpoints") }
        let value = String(repeating: "x", count: valueSize)
        var connections: [any BenchConnection] = []
        for index in 0..<clients {
            let address = addresses[index % addresses.count]
            switch system {
            case .continuum: connections.append(try await RESPBenchConnection(address))
            case .etcd: connections.append(try await EtcdBenchConnection(address))
            }
        }
        var failed = false
        print("\(system.rawValue): \(clients) clients over \(addresses.count) endpoints, \(keys) keys, \(valueSize)-byte values")
        for operation in operations.split(separator: ",").map(String.init) {
            let tally = Tally()
            let (requests, keys) = (self.requests, self.keys)
            let clock = ContinuousClock()
            let start = clock.now
            await withTaskGroup(of: Void.self) { group in
                for connection in connections {
                    group.addTask {
                        var mine: [Duration] = []
                        while true {
                            let number = tally.next.withLock { counter -> Int? in
                                guard counter < requests else { return nil }
                                counter += 1
                                return counter
                            }
                            guard let number else { break }
                            let key = "bench:\(number % keys)"
                            let began = clock.now
                            do {
                                switch operation {
                                case "put": try await connection.put(key, value)
                                case "get": try await connection.get(key, local: false)
                                default: try await connection.get(key, local: true)
                                }
                                mine.append(clock.now - began)
                            } catch {
                                tally.failures.withLock { $0.append("\(error)") }
                            }
                        }
                        tally.latencies.withLock { $0 += mine }
                    }
                }
            }
            let elapsed = clock.now - start
            let sorted = tally.latencies.withLock { $0 }.sorted()
            func percentile(_ p: Double) -> String {
                guard !sorted.isEmpty else { return "-" }
                let index = min(sorted.count - 1, Int((Double(sorted.count) * p).rounded(.up)) - 1)
                return String(format: "%.2f ms", Double(sorted[max(0, index)].nanoseconds) / 1e6)
            }
            let seconds = Double(elapsed.nanoseconds) / 1e9
            let errors = tally.failures.withLock { $0 }
            print(String(format: "%@ %@: %.0f requests/s, p50 %@, p99 %@, %d errors", system.rawValue, operation,
                         Double(sorted.count) / seconds, percentile(0.5), percentile(0.99), errors.count))
            if let first = errors.first { print("  first error: \(first)") }
            failed = failed || !errors.isEmpty
        }
        for connection in connections { await connection.close() }
        if failed { throw ExitCode(1) }
    }
}

/// One operation's shared counters.
final class Tally: Sendable {
    let next = Mutex(0)
    let failures = Mutex<[String]>([])
    let latencies = Mutex<[Duration]>([])
}

protocol BenchConnection: Sendable {
    func put(_ key: String, _ value: String) async throws
    func get(_ key: String, local: Bool) async throws
    func close() async
}

struct BenchError: Error, CustomStringConvertible {
    var description: String
}

/// A Continuum node through the Redis protocol.
struct RESPBenchConnection: BenchConnection {
    let client: RESPClient

    init(_ address: NodeServerConfiguration.Address) async throws {
        client = try await RESPClient.connect(host: address.host, port: address.port)
    }

    func put(_ key: String, _ value: String) async throws {
        let reply = try await client.send(["SET", key, value])
        guard reply == .simple("OK") else { throw BenchError(description: "SET: \(reply)") }
    }

    func get(_ key: String, local: Bool) async throws {
        let reply = try await client.send(local ? ["CONTINUUM.GET", key, "available"] : ["GET", key])
        if case .error = reply { throw BenchError(description: "GET: \(reply)") }
    }

    func close() async { await client.close() }
}

/// An etcd member through its v3 HTTP/JSON gateway (`/v3/kv/put`, `/v3/kv/range`), one
/// keep-alive HTTP/1.1 connection.
final class EtcdBenchConnection: BenchConnection {
    private let channel: any Channel
    private let handler: HTTPResponses
    private let host: String

    init(_ address: NodeServerConfiguration.Address) async throws {
        let handler = HTTPResponses()
        channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(handler)
                }
            }
            .connect(host: address.host, port: address.port).get()
        self.handler = handler
        host = "\(address.host):\(address.port)"
    }

    private static func base64(_ text: String) -> String { Data(text.utf8).base64EncodedString() }

    private func post(_ path: String, _ body: String) async throws -> (HTTPResponseStatus, String) {
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: host)
        headers.add(name: "Content-Type", value: "application/json")
        headers.add(name: "Content-Length", value: "\(body.utf8.count)")
        let promise = channel.eventLoop.makePromise(of: (HTTPResponseStatus, String).self)
        handler.expect(promise)
        channel.write(HTTPClientRequestPart.head(HTTPRequestHead(version: .http1_1, method: .POST, uri: path, headers: headers)), promise: nil)
        channel.write(HTTPClientRequestPart.body(.byteBuffer(ByteBuffer(string: body))), promise: nil)
        channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
        return try await promise.futureResult.get()
    }

    func put(_ key: String, _ value: String) async throws {
        let (status, body) = try await post("/v3/kv/put", #"{"key":"\#(Self.base64(key))","value":"\#(Self.base64(value))"}"#)
        guard status == .ok else { throw BenchError(description: "put: \(status) \(body)") }
    }

    func get(_ key: String, local: Bool) async throws {
        let (status, body) = try await post("/v3/kv/range", #"{"key":"\#(Self.base64(key))","serializable":\#(local)}"#)
        guard status == .ok else { throw BenchError(description: "range: \(status) \(body)") }
    }

    func close() async { try? await channel.close() }
}

/// Matches HTTP responses to requests, in order.
final class HTTPResponses: ChannelInboundHandler, Sendable {
    typealias InboundIn = HTTPClientResponsePart

    private struct State {
        var waiting: [EventLoopPromise<(HTTPResponseStatus, String)>] = []
        var status: HTTPResponseStatus = .ok
        var body = ""
    }

    private let state = Mutex(State())

    func expect(_ promise: EventLoopPromise<(HTTPResponseStatus, String)>) { state.withLock { $0.waiting.append(promise) } }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case let .head(head): state.withLock { $0.status = head.status; $0.body = "" }
        case var .body(buffer): state.withLock { $0.body += buffer.readString(length: buffer.readableBytes) ?? "" }
        case .end:
            let (promise, response) = state.withLock { state in
                (state.waiting.isEmpty ? nil : state.waiting.removeFirst(), (state.status, state.body))
            }
            promise?.succeed(response)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        for promise in state.withLock({ state in defer { state.waiting = [] }; return state.waiting }) {
            promise.fail(BenchError(description: "the connection closed"))
        }
        context.fireChannelInactive()
    }
}
