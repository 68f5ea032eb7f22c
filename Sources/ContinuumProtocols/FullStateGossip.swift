import ContinuumCore

/// Naive full-state push-pull gossip of one lattice register: the first protocol run under the
/// simulator, to prove the harness with something real. (Delta anti-entropy with per-peer
/// acknowledgements is the replication protocol proper, `ReplicationInstance`, in its own
/// issue.)
///
/// Every `gossipInterval` (jittered by up to `gossipJitter`, from the instance's generator) a
/// node sends its whole state to one random peer. The receiver joins it and, if the sender
/// lacks something the receiver has, answers with its own state once (an answer is never
/// answered). A local update applies a delta mutator, persists the new state and only then
/// acknowledges it. Because join is idempotent, commutative and associative, lost, duplicated
/// and reordered messages are harmless and replicas converge once the network heals.
public struct FullStateGossip<Value: Lattice & BinaryCodable>: ProtocolInstance {
    public struct Configuration: Sendable {
        public var gossipInterval: Duration
        public var gossipJitter: Duration

        public init(gossipInterval: Duration = .milliseconds(100), gossipJitter: Duration = .milliseconds(20)) {
            precondition(gossipInterval > .zero && gossipJitter >= .zero && gossipJitter < gossipInterval,
                         "gossip interval \(gossipInterval) must be positive and exceed its jitter \(gossipJitter)")
            self.gossipInterval = gossipInterval
            self.gossipJitter = gossipJitter
        }
    }

    public enum Message: Sendable, BinaryCodable, Equatable {
        /// A periodic push of the sender's whole state.
        case push(Value)
        /// The receiver's answer to a push, when the sender lacked something.
        case answer(Value)

        public func encode(to writer: inout BinaryWriter) {
            switch self {
            case let .push(value): writer.writeByte(0); value.encode(to: &writer)
            case let .answer(value): writer.writeByte(1); value.encode(to: &writer)
            }
        }

        public init(from reader: inout BinaryReader) throws(WireDecodingError) {
            switch try reader.readByte() {
            case 0: self = .push(try Value(from: &reader))
            case 1: self = .answer(try Value(from: &reader))
            case let tag: throw .invalid("gossip message tag \(tag)")
            }
        }
    }

    /// A local update: a delta mutator applied at this node.
    public struct Update: Sendable {
        public var id: UInt64
        public var label: String
        /// Mutates the state in place and returns the delta. Receives this replica and the
        /// node's local time in nanoseconds (for timestamps).
        public var mutate: @Sendable (inout Value, ReplicaID, UInt64) -> Value

        public init(id: UInt64, label: String, mutate: @escaping @Sendable (inout Value, ReplicaID, UInt64) -> Value) {
            self.id = id
            self.label = label
            self.mutate = mutate
        }
    }

    public enum Output: Sendable {
        /// The update is durable and applied; `delta` is what it added.
        case acknowledged(updateID: UInt64, delta: Value)
    }

    public enum Timer: Hashable, Sendable { case gossip }

    public typealias Command = Update
    public typealias Durable = Value

    public private(set) var value: Value
    private let configuration: Configuration
    private let context: InstanceContext
    private var random: DeterministicRandom

    public init(configuration: Configuration, context: InstanceContext, durable: Value?) {
        self.configuration = configuration
        self.context = context
        self.random = context.random
        self.value = durable ?? .bottom
    }

    public mutating func start(now: Duration) -> [Effect] {
        [.setTimer(.gossip, after: nextGossipDelay())]
    }

    public mutating func timerFired(_ timer: Timer, now: Duration) -> [Effect] {
        var effects: [Effect] = [.setTimer(.gossip, after: nextGossipDelay())]
        let peers = context.peers
        if !peers.isEmpty {
            let peer = peers[Int.random(in: 0..<peers.count, using: &random)]
            effects.append(.send(to: peer, .push(value)))
        }
        return effects
    }

    public mutating func receive(_ message: Message, from: NodeID, now: Duration) -> [Effect] {
        switch message {
        case let .push(incoming):
            var effects = merge(incoming)
            if value != incoming { effects.append(.send(to: from, .answer(value))) }
            return effects
        case let .answer(incoming):
            return merge(incoming)
        }
    }

    public mutating func handle(_ update: Update, now: Duration) -> [Effect] {
        let before = value
        let delta = update.mutate(&value, context.node.replica, UInt64(clamping: now.nanoseconds))
        precondition(before.isBelowOrEqual(value), "update \(update.label) did not inflate: \(before) -> \(value)")
        return [.persist(value), .output(.acknowledged(updateID: update.id, delta: delta))]
    }

    /// Joins `incoming`; persists when that changed the state.
    private mutating func merge(_ incoming: Value) -> [Effect] {
        let before = value
        value.formJoin(incoming)
        return value == before ? [] : [.persist(value)]
    }

    private mutating func nextGossipDelay() -> Duration {
        let jitter = configuration.gossipJitter.nanoseconds
        let offset = jitter == 0 ? 0 : Int64.random(in: -jitter...jitter, using: &random)
        return configuration.gossipInterval + .nanoseconds(offset)
    }
}
