import Continuum
import Foundation
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

    func pair(receiverSecret: [UInt8]? = nil, senderSecret: [UInt8]? = nil, handshakeTimeout: Duration = .seconds(5),
              connectionsPerAddressMax: Int = NIOTransport.Configuration.connectionsPerAddressMaxDefault) async throws -> (NIOTransport, NIOTransport, Inbox, Int) {
        let inbox = Inbox()
        let receiver = NIOTransport(node: b, configuration: .init(peers: [a: .init(host: "127.0.0.1", port: 1)], secret: receiverSecret,
                                                                  handshakeTimeout: handshakeTimeout,
                                                                  connectionsPerAddressMax: connectionsPerAddressMax), group: group)
        let port = try await receiver.listen(host: "127.0.0.1", port: 0) { inbox.add($0, $1) }
        let sender = NIOTransport(node: a, configuration: .init(peers: [b: .init(host: "127.0.0.1", port: port)], secret: senderSecret), group: group)
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

    /// Each mechanism has its own connection and queue: a peer that cannot be reached while
    /// CRDT deltas pile up past the queue's bound loses deltas, not the Raft message sent
    /// after them (with one connection for all, the full queue dropped it).
    @Test func deltasThatFillTheirLaneDropNoConsensusMessage() async throws {
        let placeholder = NIOTransport(node: b, configuration: .init(peers: [a: .init(host: "127.0.0.1", port: 1)]), group: group)
        let port = try await placeholder.listen(host: "127.0.0.1", port: 0) { _, _ in }
        await placeholder.shutdown()
        let sender = NIOTransport(node: a, configuration: .init(peers: [b: .init(host: "127.0.0.1", port: port)], queuedFramesMax: 10), group: group)
        let delta = NodeMessage.replication(.acks(epoch: 1, batch: 1, wanting: []))
        for _ in 0..<50 { sender.send(delta.binaryEncoded(), from: a, to: b, lane: .replication) }
        sender.send(probe.binaryEncoded(), from: a, to: b, lane: .consensus)
        let inbox = Inbox()
        let receiver = NIOTransport(node: b, configuration: .init(peers: [a: .init(host: "127.0.0.1", port: 1)]), group: group)
        try await receiver.listen(host: "127.0.0.1", port: port) { inbox.add($0, $1) }
        try await inbox.wait(for: 11)
        #expect(inbox.all.filter { $0.0 == probe }.count == 1, "the consensus message arrived")
        #expect(inbox.all.filter { $0.0 == delta }.count == 10, "deltas past their lane's bound were dropped")
        #expect(sender.currentStatistics.connects == 2, "one connection per lane used")
        await sender.shutdown()
        await receiver.shutdown()
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
        let hello = frame(Framing.hello(cluster: "continuum", node: a, to: b))
        let cases: [(String, [UInt8])] = [
            ("random bytes", (0..<64).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }),
            ("another frame version", frame(Framing.hello(cluster: "continuum", node: a, to: b), version: 9)),
            ("an oversized frame", [Framing.version, 0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3]),
            // The probe sent most of a 64 MiB first frame on four connections: 287 MB buffered
            // before any hello was checked. A first frame past a hello's size is refused at once.
            ("a first frame larger than a hello", [Framing.version] + withUnsafeBytes(of: UInt32(Framing.helloBytesMax + 1).bigEndian, Array.init)
                + [UInt8](repeating: 0x41, count: 64)),
            // The proof too: no large frame before the handshake is done.
            ("a proof larger than a hello", hello + [Framing.version] + withUnsafeBytes(of: UInt32(Framing.helloBytesMax + 1).bigEndian, Array.init)),
            ("a message before the hello", frame(probe.binaryEncoded())),
            ("a hello from another cluster", frame(Framing.hello(cluster: "other", node: a, to: b))),
            ("a hello from a stranger", frame(Framing.hello(cluster: "continuum", node: NodeID(9), to: b))),
            ("a hello calling another node", frame(Framing.hello(cluster: "continuum", node: a, to: NodeID(3)))),
            ("a message instead of the proof", hello + frame(probe.binaryEncoded())),
        ]
        for (name, bytes) in cases {
            #expect(try await closedAfterSending(bytes, to: port), "\(name) left the connection open")
        }
        // After a good handshake, a message that does not decode, or is cut short, closes it.
        for (name, bytes) in [("a message that does not decode", frame([0xEE, 1, 2])),
                              ("a truncated message", frame(Array(probe.binaryEncoded().dropLast())))] {
            let peer = try await RawPeer.handshake(port: port, cluster: "continuum", me: a, listener: b, secret: nil)
            #expect(try await peer.closedAfterSending(bytes), "\(name) left the connection open")
        }
        #expect(receiver.currentStatistics.connectionsRefused == cases.count + 2)
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

    static let secret = Array("a cluster secret of 32 bytes....".utf8)

    /// The probe's peer was accepted on a guessed cluster name and node id. With a secret, a
    /// node that lacks it (or holds another) gets no message through, in either direction.
    @Test func aPeerWithoutTheSecretIsRefused() async throws {
        for senderSecret in [nil, Array("another secret, also 32 bytes...".utf8)] {
            let (sender, receiver, inbox, port) = try await pair(receiverSecret: Self.secret, senderSecret: senderSecret)
            for _ in 0..<5 { sender.send(probe.binaryEncoded(), from: a, to: b) }
            // The sender finds the listener's proof wrong and hangs up before it proves anything.
            try await Task.sleep(for: .milliseconds(300))
            #expect(inbox.all.isEmpty)
            #expect(sender.currentStatistics.framesSent == 0)
            #expect(sender.currentStatistics.connects == 0)
            // A forger that knows the cluster name and a member's id, with a made-up proof.
            let forger = try await RawPeer.handshake(port: port, cluster: "continuum", me: a, listener: b, secret: senderSecret,
                                                     checkingListener: false)
            #expect(try await forger.closedAfterSending(frame(probe.binaryEncoded())))
            #expect(receiver.currentStatistics.connectionsRefused == 1)
            #expect(inbox.all.isEmpty)
            await sender.shutdown()
            await receiver.shutdown()
        }
        // The same secret on both sides: messages pass.
        let (sender, receiver, inbox, port) = try await pair(receiverSecret: Self.secret, senderSecret: Self.secret)
        for _ in 0..<5 { sender.send(probe.binaryEncoded(), from: a, to: b) }
        try await inbox.wait(for: 5)
        #expect(inbox.all.count == 5)
        let peer = try await RawPeer.handshake(port: port, cluster: "continuum", me: a, listener: b, secret: Self.secret)
        #expect(try await !peer.closedAfterSending(frame(probe.binaryEncoded()), waitingUpTo: 20))
        try await inbox.wait(for: 6)
        #expect(inbox.all.count == 6)
        await peer.close()
        // A dialer checks the listener too: one without the secret cannot pose as a member.
        let (impostorSender, impostor, impostorInbox, _) = try await pair(receiverSecret: nil, senderSecret: Self.secret)
        for _ in 0..<5 { impostorSender.send(probe.binaryEncoded(), from: a, to: b) }
        try await Task.sleep(for: .milliseconds(300))
        #expect(impostorSender.currentStatistics.framesSent == 0)
        #expect(impostorInbox.all.isEmpty)
        for transport in [sender, receiver, impostorSender, impostor] { await transport.shutdown() }
    }

    /// Mutual TLS between peers: a certificate from another CA is refused, and so is one from the
    /// right CA that names another node than the hello claims.
    @Test func tlsPeersNeedACertificateOfTheClusterCAThatNamesThem() async throws {
        let directory = NSTemporaryDirectory() + "continuum-tls-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let nodes = [NodeID(1), NodeID(2), NodeID(3)]
        let cluster = try LocalCertificates.write(to: directory + "/cluster", nodes: nodes)
        let other = try LocalCertificates.write(to: directory + "/other", nodes: nodes)
        func run(sender files: TLSFiles) async throws -> (delivered: Int, refused: Int) {
            let inbox = Inbox()
            let receiver = NIOTransport(node: b, configuration: .init(peers: [a: .init(host: "127.0.0.1", port: 1)], secret: Self.secret,
                                                                      tls: try NodeTLS(cluster[b]!)), group: group)
            let port = try await receiver.listen(host: "127.0.0.1", port: 0) { inbox.add($0, $1) }
            let sender = NIOTransport(node: a, configuration: .init(peers: [b: .init(host: "127.0.0.1", port: port)], secret: Self.secret,
                                                                    tls: try NodeTLS(files)), group: group)
            for _ in 0..<3 { sender.send(probe.binaryEncoded(), from: a, to: b) }
            for _ in 0..<100 where inbox.all.count < 3 && receiver.currentStatistics.connectionsRefused == 0 {
                try await Task.sleep(for: .milliseconds(10))
            }
            try await Task.sleep(for: .milliseconds(200))
            let outcome = (inbox.all.count, receiver.currentStatistics.connectionsRefused)
            await sender.shutdown()
            await receiver.shutdown()
            return outcome
        }
        let good = try await run(sender: cluster[a]!)
        #expect(good.delivered == 3 && good.refused == 0)
        // Another CA's certificate for n1, on a dialer that trusts the cluster's CA (so only the
        // listener's check stands between it and the cluster).
        let foreign = try await run(sender: TLSFiles(certificate: other[a]!.certificate, key: other[a]!.key, ca: cluster[a]!.ca))
        #expect(foreign.delivered == 0, "a certificate of another CA got messages through")
        #expect(foreign.refused >= 1)
        // A node of another cluster altogether: its dialer does not trust the listener either.
        #expect(try await run(sender: other[a]!).delivered == 0)
        // n3's certificate, from the right CA, on a connection whose hello claims n1.
        let impostor = try await run(sender: cluster[NodeID(3)]!)
        #expect(impostor.delivered == 0, "a certificate naming n3 spoke for n1")
        #expect(impostor.refused >= 1)
    }

    @Test func aConnectionThatDoesNotFinishItsHandshakeIsClosed() async throws {
        let (sender, receiver, _, port) = try await pair(receiverSecret: Self.secret, handshakeTimeout: .milliseconds(200))
        let silent = try await RawPeer.connect(port: port)
        let hello = try await RawPeer.connect(port: port)
        hello.send(frame(Framing.hello(cluster: "continuum", node: a, to: b)))
        for _ in 0..<100 where silent.isActive || hello.isActive { try await Task.sleep(for: .milliseconds(10)) }
        #expect(!silent.isActive)
        #expect(!hello.isActive)
        #expect(receiver.currentStatistics.connectionsRefused == 2)
        await sender.shutdown()
        await receiver.shutdown()
    }

    @Test func aListenerHoldsBoundedConnectionsPerAddress() async throws {
        let (sender, receiver, inbox, _) = try await pair(connectionsPerAddressMax: 3)
        let port = try #require(receiver.boundPort)
        var peers: [RawPeer] = []
        for _ in 0..<6 { peers.append(try await RawPeer.connect(port: port)) }
        for _ in 0..<100 where peers.filter(\.isActive).count > 3 { try await Task.sleep(for: .milliseconds(10)) }
        #expect(peers.filter(\.isActive).count == 3)
        #expect(receiver.currentStatistics.connectionsRefused == 3)
        for peer in peers { await peer.close() }
        // Closed connections free their places: a real peer gets in.
        try await Task.sleep(for: .milliseconds(50))
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

/// A raw peer connection for tests: bytes out, frames in.
final class RawPeer: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer

    private let received = Mutex<[UInt8]>([])
    private let channel = Mutex<(any Channel)?>(nil)

    var isActive: Bool { channel.withLock { $0?.isActive ?? false } }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        received.withLock { $0 += buffer.readableBytesView }
    }

    static func connect(port: Int) async throws -> RawPeer {
        let peer = RawPeer()
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(peer) } }
            .connect(host: "127.0.0.1", port: port).get()
        peer.channel.withLock { $0 = channel }
        return peer
    }

    func send(_ bytes: [UInt8]) { channel.withLock { $0 }?.writeAndFlush(ByteBuffer(bytes: bytes), promise: nil) }

    /// The next frame's payload, waiting up to 2 s.
    func frame() async throws -> [UInt8]? {
        for _ in 0..<200 {
            let payload: [UInt8]? = received.withLock { bytes in
                guard bytes.count >= Framing.headerBytes else { return nil }
                let length = bytes[1..<5].reduce(0) { $0 << 8 | Int($1) }
                guard bytes.count >= Framing.headerBytes + length else { return nil }
                defer { bytes.removeFirst(Framing.headerBytes + length) }
                return Array(bytes[Framing.headerBytes..<(Framing.headerBytes + length)])
            }
            if let payload { return payload }
            try await Task.sleep(for: .milliseconds(10))
        }
        return nil
    }

    static func framed(_ payload: [UInt8]) -> [UInt8] {
        var buffer = ByteBuffer()
        Framing.frame(payload, into: &buffer)
        return Array(buffer.readableBytesView)
    }

    /// Connects and runs the dialer's side of the handshake with `secret` (nil: the empty key);
    /// `checkingListener`: require the listener's proof to match.
    static func handshake(port: Int, cluster: String, me: NodeID, listener: NodeID, secret: [UInt8]?,
                          checkingListener: Bool = true) async throws -> RawPeer {
        let peer = try await connect(port: port)
        let nonce = PeerHandshake.freshNonce()
        peer.send(framed(Framing.hello(cluster: cluster, node: me, to: listener, nonce: nonce)))
        let challenge = try PeerHandshake.parseChallenge(try #require(await peer.frame()))
        let keys = PeerHandshake(secret: secret)
        if checkingListener {
            #expect(keys.verify(challenge.proof, .listener, cluster: cluster, dialer: me, listener: listener, dialerNonce: nonce,
                                listenerNonce: challenge.nonce))
        }
        peer.send(framed(keys.proof(.dialer, cluster: cluster, dialer: me, listener: listener, dialerNonce: nonce, listenerNonce: challenge.nonce)))
        return peer
    }

    /// Sends `bytes` and says whether the other side closed the connection.
    func closedAfterSending(_ bytes: [UInt8], waitingUpTo attempts: Int = 200) async throws -> Bool {
        send(bytes)
        for _ in 0..<attempts where isActive { try await Task.sleep(for: .milliseconds(10)) }
        let closed = !isActive
        await close()
        return closed
    }

    func close() async { try? await channel.withLock { $0 }?.close() }
}
