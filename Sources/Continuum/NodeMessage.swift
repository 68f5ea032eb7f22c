import ContinuumCore
import ContinuumProtocols

/// What travels between nodes: the messages of the node's protocol instances.
public enum NodeMessage: Sendable, Equatable, BinaryCodable {
    case replication(ReplicationMessage)
    case raft(RaftMessage)
    case transaction(TransactionMessage)

    public func encode(to writer: inout BinaryWriter) {
        switch self {
        case let .transaction(message):
            writer.writeByte(2)
            message.encode(to: &writer)
        case let .replication(message):
            writer.writeByte(0)
            message.encode(to: &writer)
        case let .raft(message):
            writer.writeByte(1)
            message.encode(to: &writer)
        }
    }

    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        switch try reader.readByte() {
        case 0: self = .replication(try ReplicationMessage(from: &reader))
        case 1: self = .raft(try RaftMessage(from: &reader))
        case 2: self = .transaction(try TransactionMessage(from: &reader))
        case let tag: throw .invalid("node message tag \(tag)")
        }
    }
}
