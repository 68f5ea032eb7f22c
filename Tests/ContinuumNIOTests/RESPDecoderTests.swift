@testable import ContinuumNIO
import Foundation
import NIOCore
import NIOPosix
import Testing

/// The Redis-protocol request decoder on its own: what it accepts, what closes a connection,
/// and how much it looks at.
@Suite struct RESPDecoderTests {
    /// Feeds `bytes` in chunks of `chunk` bytes, as reads would bring them; every whole command.
    static func decode(_ bytes: [UInt8], chunk: Int, into decoder: inout RESPRequestDecoder) throws -> [[[UInt8]]] {
        var buffer = ByteBufferAllocator().buffer(capacity: 0)
        var commands: [[[UInt8]]] = []
        var offset = 0
        while offset < bytes.count {
            buffer.writeBytes(bytes[offset..<min(offset + chunk, bytes.count)])
            offset += chunk
            while let command = try decoder.next(&buffer) { commands.append(command) }
            buffer.discardReadBytes()
        }
        return commands
    }

    /// A million-argument command sent a few bytes at a time used to be parsed again from its
    /// start on every read (8 to 10 s of CPU for 7 MB in the probe, other clients stalled).
    @Test func aCommandArrivingInManyReadsIsParsedOnce() throws {
        let count = 100_000
        var bytes = Array("*\(count)\r\n".utf8)
        for _ in 0..<count { bytes += Array("$1\r\nx\r\n".utf8) }
        var decoder = RESPRequestDecoder()
        let commands = try Self.decode(bytes, chunk: 5, into: &decoder)
        #expect(commands.count == 1)
        #expect(commands.first?.count == count)
        // Each byte once, and the length line of a bulk again when the bulk was cut (at most
        // 32 bytes per read).
        #expect(decoder.bytesExamined <= 2 * bytes.count, "\(decoder.bytesExamined) bytes examined for \(bytes.count)")
        // A long inline line arriving a byte at a time is searched once too.
        var inline = RESPRequestDecoder()
        let line = Array(("SET k " + String(repeating: "v", count: 8_000) + "\r\n").utf8)
        let parsed = try Self.decode(line, chunk: 1, into: &inline)
        #expect(parsed.first?.count == 3)
        #expect(inline.bytesExamined <= 2 * line.count, "\(inline.bytesExamined) bytes examined for \(line.count)")
    }

    @Test func httpRequestsAreRefusedAndCommandsAreNot() throws {
        for request in ["POST / HTTP/1.1\r\nHost: x\r\n\r\nSET xproto pwned\r\n", "GET / HTTP/1.1\r\n", "Host: 127.0.0.1:6401\r\n",
                        "post /\r\n"] {
            var decoder = RESPRequestDecoder()
            #expect(throws: RESPProtocolError.self, "\(request)") { _ = try Self.decode(Array(request.utf8), chunk: 1_024, into: &decoder) }
        }
        var decoder = RESPRequestDecoder()
        let commands = try Self.decode(Array("GET key\r\n*2\r\n$3\r\nGET\r\n$4\r\nPOST\r\n".utf8), chunk: 3, into: &decoder)
        #expect(commands == [[Array("GET".utf8), Array("key".utf8)], [Array("GET".utf8), Array("POST".utf8)]])
    }

    /// The probe's cross-protocol request, on a real server: curl's POST carrying a SET in its
    /// body closes the connection and sets nothing.
    @Test func anHTTPPostToTheRedisPortRunsNothing() async throws {
        let cluster = try await LocalCluster(nodes: 1)
        let port = cluster.servers[0].boundRESPPort!
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton).connect(host: "127.0.0.1", port: port).get()
        let collected = Collected()
        try await channel.pipeline.addHandler(collected)
        let body = "SET xproto pwned\r\n"
        try await channel.writeAndFlush(ByteBuffer(string: "POST / HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)"))
        for _ in 0..<200 where channel.isActive { try await Task.sleep(for: .milliseconds(10)) }
        #expect(!channel.isActive)
        #expect(collected.text.contains("HTTP request"))
        let client = try await RESPClient.connect(host: "127.0.0.1", port: port)
        var reply = try await client.send(["GET", "xproto"])
        for _ in 0..<100 {
            guard case let .error(text) = reply, text.hasPrefix("UNAVAILABLE") else { break }  // until a leader is elected
            try await Task.sleep(for: .milliseconds(50))
            reply = try await client.send(["GET", "xproto"])
        }
        #expect(reply == .null, "\(reply)")
        await client.close()
        await cluster.shutdown()
    }
}
