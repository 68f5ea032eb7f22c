import ContinuumCore
import ContinuumProtocols
import Crypto
import NIOCore

/// The frames on a connection between two nodes: a version byte, a 4-byte big-endian payload
/// length, the payload. A connection opens with a handshake (`PeerHandshake`): the dialer's
/// hello, the listener's challenge, the dialer's proof. Every later frame, dialer to listener,
/// carries one encoded `NodeMessage`.
public enum Framing {
    /// 2: the challenge-response handshake (version 1 had a hello alone).
    public static let version: UInt8 = 2
    /// Frames longer than this close the connection (a Raft snapshot must fit).
    public static let maximumPayloadBytes = 64 << 20
    public static let headerBytes = 5
    /// The largest hello (a magic word, a version, a cluster name of at most
    /// `clusterNameBytesMax` bytes, a node id); a listener refuses a longer first frame before
    /// buffering it.
    public static let helloBytesMax = 1_024
    public static let clusterNameBytesMax = 255
    static let helloMagic: [UInt8] = Array("CNTM".utf8)

    public static func frame(_ payload: [UInt8], into buffer: inout ByteBuffer) {
        buffer.writeInteger(version)
        buffer.writeInteger(UInt32(payload.count))
        buffer.writeBytes(payload)
    }

    /// The hello a dialer sends first: who it is, whom it calls, and its nonce.
    public static func hello(cluster: String, node: NodeID, to listener: NodeID = NodeID(0),
                             nonce: [UInt8] = PeerHandshake.freshNonce()) -> [UInt8] {
        var writer = BinaryWriter()
        for byte in helloMagic { writer.writeByte(byte) }
        writer.writeVarint(UInt64(version))
        cluster.encode(to: &writer)
        writer.writeVarint(node.rawValue)
        writer.writeVarint(listener.rawValue)
        for byte in nonce { writer.writeByte(byte) }
        return writer.bytes
    }

    public struct Hello: Sendable, Equatable {
        public var cluster: String
        public var node: NodeID
        /// The node the dialer means to reach (0: any).
        public var listener: NodeID
        public var nonce: [UInt8]
    }

    public static func parseHello(_ payload: [UInt8]) throws(FramingError) -> Hello {
        guard payload.count >= helloMagic.count, Array(payload.prefix(helloMagic.count)) == helloMagic else {
            throw .badHello("no Continuum magic word")
        }
        var reader = BinaryReader(Array(payload.dropFirst(helloMagic.count)))
        do {
            let frameVersion = try reader.readVarint()
            guard frameVersion == UInt64(version) else { throw FramingError.badHello("frame version \(frameVersion), this node speaks \(version)") }
            let cluster = try String(from: &reader)
            let node = NodeID(try reader.readVarint())
            let listener = NodeID(try reader.readVarint())
            guard reader.remaining == PeerHandshake.nonceBytes else {
                throw FramingError.badHello("a nonce of \(reader.remaining) bytes, not \(PeerHandshake.nonceBytes)")
            }
            let nonce = try (0..<PeerHandshake.nonceBytes).map { _ in try reader.readByte() }
            return Hello(cluster: cluster, node: node, listener: listener, nonce: nonce)
        } catch let error as FramingError {
            throw error
        } catch {
            throw .badHello("\(error)")
        }
    }
}

/// How two nodes prove to each other that they hold the cluster secret before any message
/// passes (challenge-response, HMAC-SHA256):
///
/// 1. the dialer sends its hello: cluster name, its id, the listener's id, a fresh 32-byte nonce;
/// 2. the listener answers with its own nonce and
///    `HMAC(secret, "listener" ‖ transcript)`;
/// 3. the dialer checks that, then sends `HMAC(secret, "dialer" ‖ transcript)`, and only then
///    its messages. The listener checks it before it takes any message.
///
/// The transcript is the cluster name, both node ids and both nonces, so a proof binds this
/// connection and cannot be replayed on another. The secret itself never crosses the wire.
/// Without a secret (`--insecure`, or loopback only) the same exchange runs with an empty key:
/// it checks that both sides speak the protocol and agree on names, and proves nothing about
/// who they are. The secret is shared by the whole cluster: it keeps out everyone who does not
/// hold it, but a node that holds it may claim any member's id (per-node identities need TLS
/// certificates).
public struct PeerHandshake: Sendable {
    public static let nonceBytes = 32
    public static let proofBytes = 32
    /// A secret shorter than this is refused at start: it would be guessable.
    public static let secretBytesMin = 16
    public static let secretBytesMax = 4_096

    private let key: SymmetricKey
    public let authenticates: Bool

    /// `secret`: the cluster secret (nil: no authentication, the empty key).
    public init(secret: [UInt8]?) {
        key = SymmetricKey(data: secret ?? [])
        authenticates = secret != nil
    }

    public static func freshNonce() -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        return (0..<nonceBytes).map { _ in UInt8.random(in: 0...255, using: &generator) }
    }

    public enum Role: String, Sendable { case listener, dialer }

    /// The proof `role` sends on this connection.
    public func proof(_ role: Role, cluster: String, dialer: NodeID, listener: NodeID, dialerNonce: [UInt8], listenerNonce: [UInt8]) -> [UInt8] {
        var transcript = BinaryWriter()
        role.rawValue.encode(to: &transcript)
        cluster.encode(to: &transcript)
        transcript.writeVarint(dialer.rawValue)
        transcript.writeVarint(listener.rawValue)
        for byte in dialerNonce + listenerNonce { transcript.writeByte(byte) }
        return Array(HMAC<SHA256>.authenticationCode(for: transcript.bytes, using: key))
    }

    /// Whether `proof` is the one `role` must send (compared in constant time).
    public func verify(_ proof: [UInt8], _ role: Role, cluster: String, dialer: NodeID, listener: NodeID, dialerNonce: [UInt8],
                       listenerNonce: [UInt8]) -> Bool {
        let expected = self.proof(role, cluster: cluster, dialer: dialer, listener: listener, dialerNonce: dialerNonce,
                                  listenerNonce: listenerNonce)
        guard proof.count == expected.count else { return false }
        return zip(proof, expected).reduce(UInt8(0)) { $0 | ($1.0 ^ $1.1) } == 0
    }

    /// The listener's challenge: its id, its nonce, its proof.
    public static func challenge(listener: NodeID, nonce: [UInt8], proof: [UInt8]) -> [UInt8] {
        var writer = BinaryWriter()
        writer.writeVarint(listener.rawValue)
        for byte in nonce + proof { writer.writeByte(byte) }
        return writer.bytes
    }

    public static func parseChallenge(_ payload: [UInt8]) throws(FramingError) -> (listener: NodeID, nonce: [UInt8], proof: [UInt8]) {
        var reader = BinaryReader(payload)
        do {
            let listener = NodeID(try reader.readVarint())
            guard reader.remaining == nonceBytes + proofBytes else { throw FramingError.badHello("a challenge of the wrong length") }
            let rest = try (0..<(nonceBytes + proofBytes)).map { _ in try reader.readByte() }
            return (listener, Array(rest.prefix(nonceBytes)), Array(rest.suffix(proofBytes)))
        } catch let error as FramingError {
            throw error
        } catch {
            throw .badHello("\(error)")
        }
    }
}

/// Why a connection was closed. The node keeps running; nothing it holds changed.
public enum FramingError: Error, Equatable, CustomStringConvertible {
    case unsupportedVersion(UInt8)
    case oversized(Int)
    case badHello(String)
    case undecodableMessage(String)
    case unexpectedPeer(String)

    public var description: String {
        switch self {
        case let .unsupportedVersion(version): "frame version \(version) (this node speaks \(Framing.version))"
        case let .oversized(bytes): "a frame of \(bytes) bytes (at most \(Framing.maximumPayloadBytes))"
        case let .badHello(reason): "bad hello: \(reason)"
        case let .undecodableMessage(reason): "a message that does not decode: \(reason)"
        case let .unexpectedPeer(reason): "unexpected peer: \(reason)"
        }
    }
}

/// Splits the byte stream into frame payloads, refusing bad versions and oversized frames
/// before buffering them.
struct FrameDecoder: ByteToMessageDecoder {
    typealias InboundOut = [UInt8]

    /// The largest handshake frame, and how many handshake frames are left: on a listener's
    /// connections the first two frames are the hello and the proof, a few dozen bytes each, so
    /// a stranger cannot make the node buffer up to `maximumPayloadBytes` before its handshake
    /// is checked.
    private var handshakeFrameBytesMax: Int
    private var handshakeFramesLeft: Int
    /// The largest frame after the handshake.
    private let frameBytesMax: Int

    init(handshakeFrames: Int = 0, handshakeFrameBytesMax: Int = Framing.helloBytesMax, frameBytesMax: Int = Framing.maximumPayloadBytes) {
        handshakeFramesLeft = handshakeFrames
        self.handshakeFrameBytesMax = handshakeFrameBytesMax
        self.frameBytesMax = frameBytesMax
    }

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard buffer.readableBytes >= Framing.headerBytes else { return .needMoreData }
        let start = buffer.readerIndex
        let version: UInt8 = buffer.getInteger(at: start)!
        guard version == Framing.version else { throw FramingError.unsupportedVersion(version) }
        let length = Int(buffer.getInteger(at: start + 1, as: UInt32.self)!)
        guard length <= (handshakeFramesLeft > 0 ? handshakeFrameBytesMax : frameBytesMax) else { throw FramingError.oversized(length) }
        guard buffer.readableBytes >= Framing.headerBytes + length else { return .needMoreData }
        buffer.moveReaderIndex(forwardBy: Framing.headerBytes)
        handshakeFramesLeft = max(0, handshakeFramesLeft - 1)
        let payload = buffer.readBytes(length: length)!
        context.fireChannelRead(wrapInboundOut(payload))
        return .continue
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        while try decode(context: context, buffer: &buffer) == .continue {}
        return .needMoreData
    }
}
