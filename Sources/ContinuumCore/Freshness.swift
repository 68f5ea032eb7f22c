/// What one entry of a read's service levels asks for (Spry's two annotations; Pileus's
/// consistency choices).
public enum ReadRequirement: Sendable, Hashable, CustomStringConvertible {
    /// The value a linearizable read would return (a consensus-backed register only).
    case linearizable
    /// Every write acknowledged at least this long before the read began is reflected.
    case staleness(Duration)
    /// Whatever the replica holds, with its certified staleness if it has one.
    case any

    public var description: String {
        switch self {
        case .linearizable: "linearizable"
        case let .staleness(bound): "staleness ≤ \(bound.shortDescription)"
        case .any: "any"
        }
    }
}

/// One ranked choice of a read: a requirement and the latency within which it is worth
/// waiting for (Pileus's consistency-based SLA entry, without utilities: entries are ranked by
/// their order).
public struct ServiceLevel: Sendable, Hashable, CustomStringConvertible {
    public var requirement: ReadRequirement
    public var latency: Duration

    public init(_ requirement: ReadRequirement, within latency: Duration) {
        precondition(latency >= .zero, "a latency bound cannot be negative")
        if case let .staleness(bound) = requirement { precondition(bound >= .zero, "a staleness bound cannot be negative") }
        self.requirement = requirement
        self.latency = latency
    }

    public static func linearizable(within latency: Duration) -> ServiceLevel { ServiceLevel(.linearizable, within: latency) }
    public static func staleness(_ bound: Duration, within latency: Duration) -> ServiceLevel { ServiceLevel(.staleness(bound), within: latency) }
    /// The local value, at once.
    public static var local: ServiceLevel { ServiceLevel(.any, within: .zero) }

    public var description: String { "\(requirement) within \(latency.shortDescription)" }
}

/// The guarantee a read actually met. Nothing is silently weakened: a read that asked for more
/// and got less says so here, or fails.
public enum DeliveredGuarantee: Sendable, Hashable, CustomStringConvertible {
    case linearizable
    /// Every write acknowledged `staleness` or longer before the read began is reflected.
    case bounded(staleness: Duration)
    /// The replica's local state, whose staleness nobody can bound right now (no certificate).
    case local

    public var description: String {
        switch self {
        case .linearizable: "linearizable"
        case let .bounded(staleness): "bounded(staleness ≤ \(staleness.shortDescription))"
        case .local: "local (staleness unknown)"
        }
    }
}

/// Which state a read saw: a position in a consensus log, or a digest of a lattice state (whose
/// order is the lattice's own).
public enum ReadVersion: Sendable, Hashable, CustomStringConvertible {
    case logIndex(UInt64)
    case stateDigest(UInt64)

    public var description: String {
        switch self {
        case let .logIndex(index): "log index \(index)"
        case let .stateDigest(digest): "state \(String(digest, radix: 16))"
        }
    }

    /// FNV-1a over a state's canonical encoding.
    public static func digest(of state: AnyReplicated?) -> ReadVersion { digest(of: state?.encoded() ?? []) }

    /// FNV-1a over a value's binary encoding (none: the empty encoding).
    public static func digest<Value: BinaryCodable>(of value: Value?) -> ReadVersion { digest(of: value?.binaryEncoded() ?? []) }

    private static func digest(of bytes: [UInt8]) -> ReadVersion {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in bytes {
            hash ^= UInt64(byte)
            hash &*= 0x0000_0100_0000_01b3
        }
        return .stateDigest(hash)
    }
}

/// What a read delivered, besides its value.
public struct ReadReceipt: Sendable, Hashable, CustomStringConvertible {
    public var guarantee: DeliveredGuarantee
    /// An upper bound on the read's staleness (nil: unbounded, nothing certifies the state).
    public var staleness: Duration?
    public var version: ReadVersion
    /// The replicas whose state the answer contains: this node, and those that answered it.
    public var replicas: [ReplicaID]
    /// The index of the service level that was met, in the order the read gave them.
    public var level: Int

    public init(guarantee: DeliveredGuarantee, staleness: Duration?, version: ReadVersion, replicas: [ReplicaID], level: Int) {
        self.guarantee = guarantee
        self.staleness = staleness
        self.version = version
        self.replicas = replicas
        self.level = level
    }

    public var description: String {
        "\(guarantee), level \(level), \(version), from \(replicas.map { "n\($0.rawValue)" }.joined(separator: ","))"
    }
}

/// A read's value with what it delivered.
public struct ReadResult<Value: Sendable>: Sendable {
    public var value: Value
    public var receipt: ReadReceipt

    public init(value: Value, receipt: ReadReceipt) {
        self.value = value
        self.receipt = receipt
    }

    public var guarantee: DeliveredGuarantee { receipt.guarantee }
    public var staleness: Duration? { receipt.staleness }
    public var version: ReadVersion { receipt.version }
    public var replicas: [ReplicaID] { receipt.replicas }

    public func map<T: Sendable>(_ transform: (Value) throws -> T) rethrows -> ReadResult<T> {
        ReadResult<T>(value: try transform(value), receipt: receipt)
    }
}

extension Duration {
    /// "250 ms", "1.5 s", "unbounded" style, for messages and tables.
    public var shortDescription: String {
        let nanoseconds = self.nanoseconds
        if nanoseconds == 0 { return "0" }
        if nanoseconds % 1_000_000_000 == 0 { return "\(nanoseconds / 1_000_000_000) s" }
        if nanoseconds % 1_000_000 == 0 { return "\(nanoseconds / 1_000_000) ms" }
        if nanoseconds >= 1_000_000 {
            let tenths = nanoseconds / 100_000
            return "\(tenths / 10).\(tenths % 10) ms"
        }
        return "\(nanoseconds / 1_000) µs"
    }
}

/// A receipt in binary, as it crosses the wire to a network client (the RESP server's
/// `CONTINUUM.READ` answer): the client decodes it as the server built it.
extension ReadReceipt: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) {
        switch guarantee {
        case .linearizable: writer.writeByte(0)
        case let .bounded(bound): writer.writeByte(1); bound.nanoseconds.encode(to: &writer)
        case .local: writer.writeByte(2)
        }
        staleness.map(\.nanoseconds).encode(to: &writer)
        switch version {
        case let .logIndex(index): writer.writeByte(0); index.encode(to: &writer)
        case let .stateDigest(digest): writer.writeByte(1); digest.encode(to: &writer)
        }
        replicas.encode(to: &writer)
        level.encode(to: &writer)
    }

    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        let guarantee: DeliveredGuarantee = switch try reader.readByte() {
        case 0: .linearizable
        case 1: .bounded(staleness: .nanoseconds(try Int64(from: &reader)))
        case 2: .local
        case let tag: throw .invalid("delivered guarantee tag \(tag)")
        }
        let staleness = try Int64?(from: &reader).map { Duration.nanoseconds($0) }
        let version: ReadVersion = switch try reader.readByte() {
        case 0: .logIndex(try UInt64(from: &reader))
        case 1: .stateDigest(try UInt64(from: &reader))
        case let tag: throw .invalid("read version tag \(tag)")
        }
        self.init(guarantee: guarantee, staleness: staleness, version: version, replicas: try [ReplicaID](from: &reader),
                  level: try Int(from: &reader))
    }
}
