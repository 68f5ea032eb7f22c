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

    /// What a dictionary or set probes with (see `seededMix`): the dot index of every OR-set
    /// and each element's dot set hash dots on every insert and join.
    public func _rawHashValue(seed: Int) -> Int {
        seededMix(counter ^ (replica.rawValue &* 0x9E37_79B9_7F4A_7C15), seed: seed)
    }

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
/// The cloud is kept per replica as sorted runs of consecutive counters (disjoint, and never
/// adjacent: touching runs are one run). Deltas joined into one (a replica's delta buffer, a
/// shipment of many updates) carry their dots as one run per writer, so such a join costs the
/// number of runs, not of dots: a cloud of single dots cost a pass over every dot per join,
/// and the join of n deltas n² (a profile of SADD into a set of 100,000 members had 5% of all
/// CPU in that pass).
///
/// This is what lets an observed-remove set forget removed elements: a remove drops the
/// element's dots from the store, and the context still records them as seen, so a concurrent
/// replica that still holds those dots learns that they were removed (Almeida et al. 2018,
/// section 5; Preguiça et al., "Dotted Version Vectors", 2012).
public struct CausalContext: Lattice, Hashable, BinaryCodable, CustomStringConvertible {
    public private(set) var versionVector: VersionVector
    /// For each replica with dots seen out of order, their runs: sorted, disjoint, not
    /// adjacent, each starting past the vector's entry plus one. No empty arrays.
    private var runs: [ReplicaID: [ClosedRange<UInt64>]]

    public init() {
        versionVector = VersionVector()
        runs = [:]
    }

    public init(dots: some Sequence<Dot>) {
        self.init()
        for dot in dots { insert(dot) }
    }

    public static var bottom: CausalContext { CausalContext() }

    /// The dots seen out of order.
    public var cloud: Set<Dot> { Set(cloudDots) }

    /// The dots seen out of order, by replica and counter.
    private var cloudDots: [Dot] {
        var dots: [Dot] = []
        for (replica, ranges) in runs {
            for range in ranges {
                for counter in range { dots.append(Dot(replica, counter)) }
            }
        }
        return dots
    }

    public func contains(_ dot: Dot) -> Bool {
        if dot.counter <= versionVector[dot.replica] { return true }
        guard let ranges = runs[dot.replica] else { return false }
        return Self.run(in: ranges, containing: dot.counter) != nil
    }

    /// The index of the run of `ranges` that holds `counter`, if any (binary search).
    private static func run(in ranges: [ClosedRange<UInt64>], containing counter: UInt64) -> Int? {
        var low = 0
        var high = ranges.count
        while low < high {
            let middle = (low + high) / 2
            if ranges[middle].upperBound < counter {
                low = middle + 1
            } else {
                high = middle
            }
        }
        return low < ranges.count && ranges[low].contains(counter) ? low : nil
    }

    /// How many dots the context has seen.
    public var dotCount: UInt64 {
        var count = versionVector.counters.values.reduce(0) { $0 &+ $1 }
        for ranges in runs.values {
            for range in ranges { count &+= range.upperBound - range.lowerBound + 1 }
        }
        return count
    }

    /// Calls `body` with every dot seen, until it returns false.
    public func forEachDot(_ body: (Dot) -> Bool) {
        for (replica, counter) in versionVector.counters where counter > 0 {
            for value in 1...counter where !body(Dot(replica, value)) { return }
        }
        for (replica, ranges) in runs {
            for range in ranges {
                for counter in range where !body(Dot(replica, counter)) { return }
            }
        }
    }

    /// The largest counter seen from `replica`, counting cloud dots.
    public func maxCounter(of replica: ReplicaID) -> UInt64 {
        max(versionVector[replica], runs[replica]?.last?.upperBound ?? 0)
    }

    /// A dot that this context has not seen, for `replica` to tag its next update with.
    public func nextDot(for replica: ReplicaID) -> Dot {
        Dot(replica, maxCounter(of: replica) + 1)
    }

    public mutating func insert(_ dot: Dot) {
        guard !contains(dot) else { return }
        Self.add(dot.counter...dot.counter, to: &runs[dot.replica, default: []])
        normalize(dot.replica)
    }

    public mutating func formJoin(_ other: CausalContext) {
        var touched: [ReplicaID] = []
        for (replica, counter) in other.versionVector.counters where counter > versionVector[replica] {
            versionVector[replica] = counter
            if runs[replica] != nil { touched.append(replica) }
        }
        for (replica, ranges) in other.runs {
            if var mine = runs.removeValue(forKey: replica) {
                for range in ranges { Self.add(range, to: &mine) }
                runs[replica] = mine
            } else {
                runs[replica] = ranges
            }
            touched.append(replica)
        }
        for replica in touched { normalize(replica) }
    }

    public func isBelowOrEqual(_ other: CausalContext) -> Bool {
        // Both are compact: if other's vector entry is below ours, the dot just after it is
        // not in other's cloud (it would have been absorbed), so we have a dot other lacks.
        guard versionVector.counters.allSatisfy({ replica, counter in other.versionVector[replica] >= counter }) else { return false }
        for (replica, ranges) in runs {
            let covered = other.versionVector[replica]
            let theirs = other.runs[replica] ?? []
            for range in ranges where range.upperBound > covered {
                // The part past other's vector lies in one run of other's, or some dot is missing
                // (other's runs are maximal: a gap between two of them is a dot it lacks).
                let first = max(range.lowerBound, covered + 1)
                guard let index = Self.run(in: theirs, containing: first), theirs[index].upperBound >= range.upperBound else { return false }
            }
        }
        return true
    }

    /// Adds `range` to sorted, disjoint, non-adjacent `ranges`, merging what it overlaps or
    /// touches.
    private static func add(_ range: ClosedRange<UInt64>, to ranges: inout [ClosedRange<UInt64>]) {
        // The common case: past the last run (a writer's next dots).
        if let last = ranges.last, range.lowerBound > last.upperBound {
            if range.lowerBound == last.upperBound + 1 {
                ranges[ranges.count - 1] = last.lowerBound...range.upperBound
            } else {
                ranges.append(range)
            }
            return
        }
        if ranges.isEmpty {
            ranges.append(range)
            return
        }
        // The first run that ends at or after the dot before `range`.
        var low = 0
        var high = ranges.count
        while low < high {
            let middle = (low + high) / 2
            if ranges[middle].upperBound + 1 < range.lowerBound {
                low = middle + 1
            } else {
                high = middle
            }
        }
        var lower = range.lowerBound
        var upper = range.upperBound
        var end = low
        while end < ranges.count, ranges[end].lowerBound <= upper &+ 1 {
            lower = min(lower, ranges[end].lowerBound)
            upper = max(upper, ranges[end].upperBound)
            end += 1
        }
        ranges.replaceSubrange(low..<end, with: [lower...upper])
    }

    /// Restores compactness for `replica`: drops what its vector entry covers, and moves a run
    /// that continues the entry into it.
    private mutating func normalize(_ replica: ReplicaID) {
        guard var ranges = runs.removeValue(forKey: replica) else { return }
        var covered = versionVector[replica]
        var dropped = 0
        while dropped < ranges.count, ranges[dropped].lowerBound <= covered &+ 1 {
            covered = max(covered, ranges[dropped].upperBound)
            dropped += 1
        }
        if covered != versionVector[replica] { versionVector[replica] = covered }
        if dropped > 0 { ranges.removeFirst(dropped) }
        if !ranges.isEmpty { runs[replica] = ranges }
    }

    public var description: String {
        runs.isEmpty ? "\(versionVector)" : "\(versionVector)+{\(cloud.sorted().map(\.description).joined(separator: ","))}"
    }

    public func encode(to writer: inout BinaryWriter) {
        versionVector.encode(to: &writer)
        // The bytes of the cloud as a set of dots (its canonical order).
        writer.writeCanonical(cloudDots)
    }

    /// The cloud's bytes are a set of dots (`Set<Dot>`'s encoding); they are read into runs
    /// directly: sorted by replica and counter, each dot extends its replica's last run or starts
    /// one, and each replica is made compact once. Reading them as a set first, then inserting
    /// each dot, hashed every dot twice and looked its replica up once per dot.
    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        let vector = try VersionVector(from: &reader)
        let count = try reader.readCount(minimumBytesEach: 2)
        var dots: [Dot] = []
        dots.reserveCapacity(count)
        for _ in 0..<count { dots.append(try Dot(from: &reader)) }
        dots.sort()
        var context = CausalContext()
        context.versionVector = vector
        var start = 0
        while start < dots.count {
            let replica = dots[start].replica
            var ranges: [ClosedRange<UInt64>] = []
            var end = start
            while end < dots.count, dots[end].replica == replica {
                let counter = dots[end].counter
                if end > start, dots[end - 1].counter == counter { throw .invalid("duplicate set element") }
                if let last = ranges.last, last.upperBound + 1 == counter {
                    ranges[ranges.count - 1] = last.lowerBound...counter
                } else {
                    ranges.append(counter...counter)
                }
                end += 1
            }
            context.runs[replica] = ranges
            context.normalize(replica)
            start = end
        }
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
