import ContinuumCore
import ContinuumProtocols

/// A bug planted in the gossip protocol, to show that the checkers catch it. Each is a real
/// class of replication bug.
public enum PlantedGossipBug: String, Sendable, CaseIterable {
    /// Every tenth received state replaces the receiver's state instead of being joined into it
    /// (a "merge" that is an overwrite). Breaks inflation and loses updates.
    case adoptEveryTenthMerge = "adopt-every-tenth-merge"
    /// Messages from the lowest-numbered node are dropped on receipt: its updates never spread.
    /// Breaks convergence.
    case ignoreLowestNode = "ignore-lowest-node"
    /// Merged states are applied in memory but never persisted; a crash forgets them. Breaks
    /// inflation across crashes.
    case forgetToPersistMerges = "forget-to-persist-merges"
}

/// The gossip protocol as the simulation workload runs it: `FullStateGossip`, effects passed
/// through untouched, unless a bug is planted, in which case the wrapper alters exactly what
/// the bug's description says.
public struct GossipUnderTest<Value: Lattice & BinaryCodable>: ProtocolInstance {
    public typealias Inner = FullStateGossip<Value>

    public struct Configuration: Sendable {
        public var gossip: Inner.Configuration
        public var plantedBug: PlantedGossipBug?

        public init(gossip: Inner.Configuration, plantedBug: PlantedGossipBug?) {
            self.gossip = gossip
            self.plantedBug = plantedBug
        }
    }

    public typealias Message = Inner.Message
    public typealias Durable = Inner.Durable
    public typealias Timer = Inner.Timer
    public typealias Command = Inner.Command
    public typealias Output = Inner.Output

    public private(set) var inner: Inner
    private let configuration: Configuration
    private let context: InstanceContext
    private var receivedCount = 0

    public var value: Value { inner.value }

    public init(configuration: Configuration, context: InstanceContext, durable: Durable?) {
        self.configuration = configuration
        self.context = context
        inner = Inner(configuration: configuration.gossip, context: context, durable: durable)
    }

    public mutating func start(now: Duration) -> [Effect] { inner.start(now: now) }
    public mutating func timerFired(_ timer: Timer, now: Duration) -> [Effect] { inner.timerFired(timer, now: now) }
    public mutating func handle(_ command: Command, now: Duration) -> [Effect] { inner.handle(command, now: now) }

    public mutating func receive(_ message: Message, from: NodeID, now: Duration) -> [Effect] {
        receivedCount += 1
        switch configuration.plantedBug {
        case nil:
            return inner.receive(message, from: from, now: now)
        case .adoptEveryTenthMerge:
            guard receivedCount % 10 == 0 else { return inner.receive(message, from: from, now: now) }
            let incoming: Value
            switch message {
            case let .push(value), let .answer(value): incoming = value
            }
            inner = Inner(configuration: configuration.gossip, context: context, durable: incoming)
            return [.persist(incoming)]
        case .ignoreLowestNode:
            if from == context.members.first { return [] }
            return inner.receive(message, from: from, now: now)
        case .forgetToPersistMerges:
            return inner.receive(message, from: from, now: now).filter {
                if case .persist = $0 { return false }
                return true
            }
        }
    }
}
