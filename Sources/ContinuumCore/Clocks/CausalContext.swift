/// A dot: the `counter`-th event minted by `replica`. Every add, write or enable in a causal
/// CRDT is tagged with a fresh dot, so each dot names exactly one update.
public struct Dot: Hashable, Comparable, Codable, Sendable, BinaryCodable, CustomStringConvertible {
    public var replica: ReplicaID
    public var counter: UInt64

    public init(_ replica: ReplicaID, _ counter: UInt64) {
        precondition(counter > 0, "dot counters start at 1, got \(counter) for \(replica)")
        self.replica = replica
        self.counter = counter
    }

    public static func < (lhs: Dot, rhs: Dot) -> Bool { (lhs.replica, lhs.counter) < (rhs.replica, rhs.counter) }

    public var description: String { "\(replica).\(counter)" }

    public func encode(to writer: inout BinaryWriter) {
        replica.encode(to: &writer)
        writer.writeVarint(counter)
    }

    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        let replica = try ReplicaID(from: &reader)
        let counter = try reader.readVarint()
        guard counter > 0 else { throw .invalid("dot counter 0") }
        self.init(replica, counter)
    }
}

/// The causal context of a causal CRDT: the set of every dot the replica has seen, stored as a
/// dotted version vector, a version vector (for each replica, all dots `1...n`) plus a "dot
/// cloud" of dots seen out of order. The representation is kept compact (no cloud dot is
/// covered by, or contiguous with, the vector), so `==` is set equality.
///
/// This is what lets an observed-remove set forget removed elements: a remove drops the
/// element's dots from the store, and the context still records them as seen, so a concurrent
/// replica that still holds those dots learns that they were removed (Almeida et al. 2018,
/// section 5; Preguiça et al., "Dotted Version Vectors", 2012).
public struct CausalContext: Lattice, Hashable, BinaryCodable, CustomStringConvertible {
    public private(set) var versionVector: VersionVector
    public private(set) var cloud: Set<Dot>

    public init() {
        versionVector = VersionVector()
        cloud = []
    }

    public init(dots: some Sequence<Dot>) {
        self.init()
        for dot in dots { insert(dot) }
    }

    public static var bottom: CausalContext { CausalContext() }

    public func contains(_ dot: Dot) -> Bool {
        dot.counter <= versionVector[dot.replica] || cloud.contains(dot)
    }

    /// How many dots the context has seen.
    public var dotCount: UInt64 {
        versionVector.counters.values.reduce(UInt64(cloud.count)) { $0 &+ $1 }
    }

    /// Calls `body` with every dot seen, until it returns false.
    public func forEachDot(_ body: (Dot) -> Bool) {
        for (replica, counter) in versionVector.counters where counter > 0 {
            for value in 1...counter where !body(Dot(replica, value)) { return }
        }
        for dot in cloud where !body(dot) { return }
    }

    /// The largest counter seen from `replica`, counting cloud dots.
    public func maxCounter(of replica: ReplicaID) -> UInt64 {
        cloud.reduce(versionVector[replica]) { $1.replica == replica ? max($0, $1.counter) : $0 }
    }

    /// A dot that this context has not seen, for `replica` to tag its next update with.
    public func nextDot(for replica: ReplicaID) -> Dot {
        Dot(replica, maxCounter(of: replica) + 1)
    }

    public mutating func insert(_ dot: Dot) {
        guard !contains(dot) else { return }
        if dot.counter == versionVector[dot.replica] + 1 {
            versionVector[dot.replica] = dot.counter
            absorbCloud(of: dot.replica)
        } else {
            cloud.insert(dot)
        }
    }

    public mutating func formJoin(_ other: CausalContext) {
        versionVector.formJoin(other.versionVector)
        var touched = Set(other.versionVector.counters.keys)
        for dot in other.cloud where !contains(dot) {
            cloud.insert(dot)
            touched.insert(dot.replica)
        }
        // Dots that the joined vector now covers, or that became contiguous with it (an empty
        // cloud, the common case, is not rebuilt).
        if !cloud.isEmpty { cloud = cloud.filter { $0.counter > versionVector[$0.replica] } }
        for replica in touched { absorbCloud(of: replica) }
    }

    public func isBelowOrEqual(_ other: CausalContext) -> Bool {
        // Both are compact: if other's vector entry is below ours, the dot just after it is
        // not in other's cloud (it would have been absorbed), so we have a dot other lacks.
        versionVector.counters.allSatisfy { replica, counter in
            other.versionVector[replica] >= counter
        } && cloud.allSatisfy(other.contains)
    }

    /// Moves cloud dots that continue `replica`'s contiguous prefix into the vector.
    private mutating func absorbCloud(of replica: ReplicaID) {
        var next = Dot(replica, versionVector[replica] + 1)
        while cloud.remove(next) != nil {
            versionVector[replica] = next.counter
            next = Dot(replica, next.counter + 1)
        }
    }

    public var description: String {
        cloud.isEmpty ? "\(versionVector)" : "\(versionVector)+{\(cloud.sorted().map(\.description).joined(separator: ","))}"
    }

    public func encode(to writer: inout BinaryWriter) {
        versionVector.encode(to: &writer)
        cloud.encode(to: &writer)
    }

    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        let vector = try VersionVector(from: &reader)
        let cloud = try Set<Dot>(from: &reader)
        var context = CausalContext()
        context.versionVector = vector
        for dot in cloud { context.insert(dot) }
        self = context
    }

    private enum CodingKeys: String, CodingKey { case versionVector, cloud }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        var context = CausalContext()
        context.versionVector = try container.decode(VersionVector.self, forKey: .versionVector)
        for dot in try container.decode([Dot].self, forKey: .cloud) { context.insert(dot) }
        self = context
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(versionVector, forKey: .versionVector)
        try container.encode(cloud.sorted(), forKey: .cloud)
    }
}
