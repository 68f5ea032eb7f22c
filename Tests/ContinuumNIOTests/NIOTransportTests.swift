import Continuum
import ContinuumCore
import ContinuumNIO
import ContinuumProtocols
import NIOCore
import NIOPosix
import Synchronization
import Testing

/// What a transport delivered.
final class Inbox: Sendable {
    private let messages = Mutex<[(NodeMessage, NodeID)]>([])

    func add(_ message: NodeMessage, _ from: NodeID) { messages.withLock { $0.append((message, from)) } }
    var all: [(NodeMessage, NodeID)] { messages.withLock { $0 } }

    /// Waits up to 5 s for `count` messages.
    func wait(for count: Int) async throws {
        for _ in 0..<500 where all.count < count { try await Task.sleep(for: .milliseconds(10)) }
    }
}


@Suite(.timeLimit(.minutes(1))) struct NIOTransportTests {
    let group = MultiThreadedEventLoopGroup.singleton
    let a = NodeID(1)
    let b = NodeID(2)
    let probe = NodeMessage.raft(.timeoutNow(term: 7))

    func pair() async throws -> (NIOTransport, NIOTransport, Inbox, Int) {
        let inbox = Inbox()
        let receiver = NIOTransport(node: b, configuration: .init(peers: [a: .init(host: "127.0.0.1", port: 1)]), group: group)
        let port = try await receiver.listen(host: "127.0.0.1", port: 0) { inbox.add($0, $1) }
        let sender = NIOTransport(node: a, configuration: .init(peers: [b: .init(host: "127.0.0.1", port: port)]), group: group)
        return (sender, receiver, inbox, port)
    }

    @Test func messagesArriveInOrderFromTheNamedPeer() async throws {
        let (sender, receiver, inbox, _) = try await pair()
        for term in 1...200 as ClosedRange<UInt64> { sender.send(NodeMessage.raft(.timeoutNow(term: term)).binaryEncoded(), from: a, to: b) }
        try await inbox.wait(for: 200)
        #expect(inbox.all.map(\.1) == Array(repeating: a, count: 200))
        #expect(inbox.all.map(\.0) == (1...200).map { NodeMessage.raft(.timeoutNow(term: $0)) })
        await sender.shutdown()
        await receiver.shutdown()
    }

    @Test func aSenderReconnectsWhenThePeerComesBack() async throws {
        let (sender, receiver, inbox, port) = try await pair()
        sender.send(probe.binaryEncoded(), from: a, to: b)
        try await inbox.wait(for: 1)
        await receiver.shutdown()
        // The peer is down: frames wait in the queue while the sender retries with backoff.
        try await Task.sleep(for: .milliseconds(100))
        for _ in 0..<5 { sender.send(probe.binaryEncoded(), from: a, to: b) }
        try await Task.sleep(for: .milliseconds(200))
        let back = NIOTransport(node: b, configuration: .init(peers: [a: .init(host: "127.0.0.1", port: 1)]), group: group)
        try await back.listen(host: "127.0.0.1", port: port) { inbox.add($0, $1) }
        try await inbox.wait(for: 6)
        #expect(inbox.all.count == 6)
        #expect(sender.currentStatistics.connects >= 2)
        await sender.shutdown()
        await back.shutdown()
    }

    /// Opens a raw connection, writes `bytes`, and says whether the listener closed it.
    func closedAfterSending(_ bytes: [UInt8], to port: Int, waitingUpTo attempts: Int = 200) async throws -> Bool {
        let channel = try await ClientBootstrap(group: group).connect(host: "127.0.0.1", port: port).get()
        try await channel.writeAndFlush(ByteBuffer(bytes: bytes))
        for _ in 0..<attempts where channel.isActive { try await Task.sleep(for: .milliseconds(10)) }
        let closed = !channel.isActive
        try? await channel.close()
        return closed
    }

    func frame(_ payload: [UInt8], version: UInt8 = Framing.version) -> [UInt8] {
        var buffer = ByteBuffer()
        Framing.frame(payload, into: &buffer)
        var bytes = Array(buffer.readableBytesView)
        bytes[0] = version
        return bytes
    }

    @Test func badFramesCloseTheirConnectionAndNothingElse() async throws {
        let (sender, receiver, inbox, port) = try await pair()
        let hello = frame(Framing.hello(cluster: "continuum", node: a))
        let cases: [(String, [UInt8])] = [
            ("random bytes", (0..<64).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }),
            ("another frame version", frame(Framing.hello(cluster: "continuum", node: a), version: 9)),
            ("an oversized frame", [Framing.version, 0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3]),
            // The probe sent most of a 64 MiB first frame on four connections: 287 MB buffered
            // before any hello was checked. A first frame past a hello's size is refused at once.
            ("a first frame larger than a hello", [Framing.version] + withUnsafeBytes(of: UInt32(Framing.helloBytesMax + 1).bigEndian, Array.init)
                + [UInt8](repeating: 0x41, count: 64)),
            ("a message before the hello", frame(probe.binaryEncoded())),
            ("a hello from another cluster", frame(Framing.hello(cluster: "other", node: a))),
            ("a hello from a stranger", frame(Framing.hello(cluster: "continuum", node: NodeID(9)))),
            ("a message that does not decode", hello + frame([0xEE, 1, 2])),
            ("a truncated message", hello + frame(Array(probe.binaryEncoded().dropLast()))),
        ]
        for (name, bytes) in cases {
            #expect(try await closedAfterSending(bytes, to: port), "\(name) left the connection open")
        }
        #expect(receiver.currentStatistics.connectionsRefused == cases.count)
        // A truncated frame (the connection ends mid-frame) delivers nothing either.
        _ = try await closedAfterSending(Array(frame(probe.binaryEncoded()).prefix(4)), to: port, waitingUpTo: 10)
        #expect(inbox.all.isEmpty)
        // The listener still serves a good peer.
        sender.send(probe.binaryEncoded(), from: a, to: b)
        try await inbox.wait(for: 1)
        #expect(inbox.all.count == 1)
        await sender.shutdown()
        await receiver.shutdown()
    }

    @Test func nodesFormAClusterOverTCP() async throws {
        let members = [NodeID(1), NodeID(2), NodeID(3)]
        let clock = NodeClock(epoch: ContinuousClock().now)
        var transports: [NIOTransport] = []
        var nodes: [Node] = []
        var ports: [Int] = []
        for id in members {
            let transport = NIOTransport(node: id, configuration: .init(peers: [:]), group: group)
            let node = Node(id: id, members: members, configuration: EmbeddedCluster.embeddedConfiguration,
                            raftConfiguration: EmbeddedCluster.embeddedRaftConfiguration, storage: MemoryStore(), transport: transport,
                            seed: id.rawValue, clock: clock)
            ports.append(try await transport.listen(host: "127.0.0.1", port: 0) { message, from in
                Task { await node.deliver(message, from: from) }
            })
            transports.append(transport)
            nodes.append(node)
        }
        for (index, transport) in transports.enumerated() {
            for (other, id) in members.enumerated() where other != index {
                await transport.setAddress(of: id, .init(host: "127.0.0.1", port: ports[other]))
            }
        }
        for node in nodes { try await node.start() }
        for node in nodes { _ = try await node.declare("cart", as: GSet<String>.self) }
        let cart = nodes[0].register("cart", as: GSet<String>.self)
        let added = try await cart.update { set, _ in set.insert("tea") }
        let elsewhere = try await nodes[2].register("cart", as: GSet<String>.self).read(atLeast: added, timeout: .seconds(5))
        #expect(elsewhere.elements == ["tea"])
        let stock = try await nodes[1].declareLinearizable("stock")
        var written = false
        for _ in 0..<250 where !written {
            written = (try? await stock.write(5, latency: .milliseconds(300))) != nil
            if !written { try await Task.sleep(for: .milliseconds(20)) }
        }
        #expect(written)
        #expect(try await nodes[2].declareLinearizable("stock").read(latency: .seconds(2)) == 5)
        for node in nodes { await node.stop() }
        for transport in transports { await transport.shutdown() }
    }
}
