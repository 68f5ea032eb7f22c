import ContinuumCore
import ContinuumProtocols
import NIOCore

/// The frames on a connection between two nodes: a version byte, a 4-byte big-endian payload
/// length, the payload. The first frame of a connection is the dialer's hello (a magic word,
/// the frame version, the cluster name and the dialer's node id); every later frame carries
/// one encoded `NodeMessage`.
public enum Framing {
    public static let version: UInt8 = 1
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

    /// The hello a dialer sends first.
    public static func hello(cluster: String, node: NodeID) -> [UInt8] {
        var writer = BinaryWriter()
        for byte in helloMagic { writer.writeByte(byte) }
        writer.writeVarint(UInt64(version))
        cluster.encode(to: &writer)
        writer.writeVarint(node.rawValue)
        return writer.bytes
    }

    public static func parseHello(_ payload: [UInt8]) throws(FramingError) -> (cluster: String, node: NodeID) {
        guard payload.count >= helloMagic.count, Array(payload.prefix(helloMagic.count)) == helloMagic else {
            throw .badHello("no Continuum magic word")
        }
        var reader = BinaryReader(Array(payload.dropFirst(helloMagic.count)))
        do {
            let frameVersion = try reader.readVarint()
            guard frameVersion == UInt64(version) else { throw FramingError.badHello("frame version \(frameVersion), this node speaks \(version)") }
            let cluster = try String(from: &reader)
            let node = NodeID(try reader.readVarint())
            guard reader.remaining == 0 else { throw FramingError.badHello("\(reader.remaining) trailing bytes") }
            return (cluster, node)
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

    /// The largest first frame: on a listener's connections the first frame is the hello, a
    /// few dozen bytes, so a stranger cannot make the node buffer up to
    /// `maximumPayloadBytes` before its hello is checked.
    private var firstFrameBytesMax: Int?

    init(firstFrameBytesMax: Int? = nil) { self.firstFrameBytesMax = firstFrameBytesMax }

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard buffer.readableBytes >= Framing.headerBytes else { return .needMoreData }
        let start = buffer.readerIndex
        let version: UInt8 = buffer.getInteger(at: start)!
        guard version == Framing.version else { throw FramingError.unsupportedVersion(version) }
        let length = Int(buffer.getInteger(at: start + 1, as: UInt32.self)!)
        guard length <= firstFrameBytesMax ?? Framing.maximumPayloadBytes else { throw FramingError.oversized(length) }
        guard buffer.readableBytes >= Framing.headerBytes + length else { return .needMoreData }
        buffer.moveReaderIndex(forwardBy: Framing.headerBytes)
        firstFrameBytesMax = nil
        let payload = buffer.readBytes(length: length)!
        context.fireChannelRead(wrapInboundOut(payload))
        return .continue
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        while try decode(context: context, buffer: &buffer) == .continue {}
        return .needMoreData
    }
}
