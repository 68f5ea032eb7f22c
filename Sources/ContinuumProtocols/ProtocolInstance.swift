import ContinuumCore

/// A node's name in a cluster. Small and ordered, so that every iteration over nodes is
/// deterministic.
public struct NodeID: Hashable, Comparable, Sendable, Codable, BinaryCodable, CustomStringConvertible {
    public var rawValue: UInt64

    public init(_ rawValue: UInt64) { self.rawValue = rawValue }

    public static func < (lhs: NodeID, rhs: NodeID) -> Bool { lhs.rawValue < rhs.rawValue }

    /// The replica identity this node uses in CRDT states.
    public var replica: ReplicaID { ReplicaID(rawValue) }

    public var description: String { "n\(rawValue)" }

    public func encode(to writer: inout BinaryWriter) { writer.writeVarint(rawValue) }
    public init(from reader: inout BinaryReader) throws(WireDecodingError) { rawValue = try reader.readVarint() }
}

/// What a protocol instance asks its shell to do. Effects are values; the shell (the
/// simulator, the embedded cluster, the NIO server) carries them out in order, so a `persist`
/// listed before a `send` is durable before the message leaves.
public enum ProtocolEffect<Message: Sendable, Durable: Sendable, Timer: Hashable & Sendable, Output: Sendable>: Sendable {
    /// Send `message` to `to`. Delivery is not guaranteed.
    case send(to: NodeID, Message)
    /// Make `Durable` the node's durable state; it survives crashes and is handed back on restart.
    case persist(Durable)
    /// Fire `timer` after `after` of the node's local time, replacing an earlier setting of it.
    case setTimer(Timer, after: Duration)
    /// Forget a pending timer.
    case cancelTimer(Timer)
    /// Something for the node's clients or observers: an acknowledgement, an applied entry.
    case output(Output)
}

/// What the shell hands an instance when it starts or restarts.
public struct InstanceContext: Sendable {
    /// This node.
    public var node: NodeID
    /// Every node of the cluster, this one included, sorted.
    public var members: [NodeID]
    /// The instance's own random generator, seeded by the shell.
    public var random: DeterministicRandom

    public init(node: NodeID, members: [NodeID], random: DeterministicRandom) {
        self.node = node
        self.members = members.sorted()
        self.random = random
    }

    /// Every member but this node.
    public var peers: [NodeID] { members.filter { $0 != node } }
}

/// The pure-instance shape every Continuum protocol follows (docs/design.md section 4): a value that
/// takes events and returns effects. No I/O, no clock reads, no global randomness, no sleeping:
/// `now` is the node's local clock reading, passed in with every event, and randomness comes
/// from the generator in `InstanceContext`. The same instance runs under the simulator, the
/// embedded cluster and the network server.
public protocol ProtocolInstance: Sendable {
    associatedtype Configuration: Sendable
    associatedtype Message: Sendable & BinaryCodable
    associatedtype Durable: Sendable & BinaryCodable
    associatedtype Timer: Hashable & Sendable
    associatedtype Command: Sendable
    associatedtype Output: Sendable

    typealias Effect = ProtocolEffect<Message, Durable, Timer, Output>

    /// Builds the instance on first start (`durable` nil) or after a crash (`durable` as last
    /// persisted). Volatile state starts empty.
    init(configuration: Configuration, context: InstanceContext, durable: Durable?)

    /// Called once after `init`, at local time `now`.
    mutating func start(now: Duration) -> [Effect]
    /// A message from `from` arrived.
    mutating func receive(_ message: Message, from: NodeID, now: Duration) -> [Effect]
    /// A timer set earlier fired.
    mutating func timerFired(_ timer: Timer, now: Duration) -> [Effect]
    /// A client or workload command arrived at this node.
    mutating func handle(_ command: Command, now: Duration) -> [Effect]

    /// Folds a `persist` effect into what is durable. The default replaces it; an instance
    /// whose persists are patches (the changed registers only) merges them.
    static func accumulate(_ patch: Durable, into durable: inout Durable?)

    /// A name for the kind of `message`, so that shells can count bytes per kind.
    static func trafficClass(of message: Message) -> String
}

extension ProtocolInstance {
    public static func accumulate(_ patch: Durable, into durable: inout Durable?) { durable = patch }
    public static func trafficClass(of message: Message) -> String { "messages" }
}
