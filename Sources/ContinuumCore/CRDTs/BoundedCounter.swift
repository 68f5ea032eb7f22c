/// Why a bounded counter refused an operation. Nothing changed.
public enum BoundedCounterError: Error, Equatable, Sendable {
    /// The replica holds fewer rights than the operation needs.
    case insufficientRights(replica: ReplicaID, requested: UInt64, available: UInt64)
    /// A transfer to the replica itself.
    case transferToSelf(ReplicaID)
}

/// A counter that never goes below zero, updated without coordination: the escrow technique
/// (O'Neil 1986) as a CRDT (Balegas et al., "Extending Eventually Consistent Cloud Databases
/// for Enforcing Numeric Invariants", SRDS 2015).
///
/// Every unit of the value is a *right* held by one replica. An increment creates rights at the
/// replica that makes it; a decrement spends rights the replica holds; a transfer moves rights
/// from one replica to another. A replica only spends its own rights, and only it can lower
/// them, so its local view of its rights is never more than it truly holds: the sum of
/// all rights, which is the value, never goes negative, even when replicas decrement
/// concurrently without talking. An available inventory or account built on it never
/// oversells; a replica that runs short asks another for a transfer.
///
/// State: grow-only increments and decrements per replica and grow-only transfer totals per
/// (from, to) pair; join is the pointwise maximum.
public struct BoundedCounter: Lattice, CustomStringConvertible {
    /// An ordered pair of replicas: rights moved from `from` to `to`.
    public struct Transfer: Hashable, Comparable, Sendable, Codable, BinaryCodable {
        public var from: ReplicaID
        public var to: ReplicaID

        public static func < (lhs: Transfer, rhs: Transfer) -> Bool { (lhs.from, lhs.to) < (rhs.from, rhs.to) }

        public func encode(to writer: inout BinaryWriter) {
            from.encode(to: &writer)
            to.encode(to: &writer)
        }

        public init(from: ReplicaID, to: ReplicaID) {
            self.from = from
            self.to = to
        }

        public init(from reader: inout BinaryReader) throws(WireDecodingError) {
            from = try ReplicaID(from: &reader)
            to = try ReplicaID(from: &reader)
        }
    }

    public private(set) var increments: GCounter
    public private(set) var decrements: GCounter
    public private(set) var transfers: [Transfer: UInt64]

    public init() {
        increments = GCounter()
        decrements = GCounter()
        transfers = [:]
    }

    public static var bottom: BoundedCounter { BoundedCounter() }

    /// The counter's value: all increments minus all decrements; never negative.
    public var value: UInt64 { increments.value - decrements.value }

    /// The rights `replica` holds as far as this state knows (exact at `replica` itself).
    public func rights(of replica: ReplicaID) -> UInt64 {
        var received: UInt64 = 0
        var sent: UInt64 = 0
        for (transfer, amount) in transfers {
            if transfer.to == replica { received += amount }
            if transfer.from == replica { sent += amount }
        }
        let credit = increments[replica] + received
        let debit = decrements[replica] + sent
        precondition(credit >= debit, "replica \(replica) spent more rights than it held: \(credit) < \(debit)")
        return credit - debit
    }

    @discardableResult
    public mutating func increment(by amount: UInt64 = 1, replica: ReplicaID) -> BoundedCounter {
        var delta = BoundedCounter()
        delta.increments = increments.increment(by: amount, replica: replica)
        return delta
    }

    /// Spends `amount` of `replica`'s rights; fails, changing nothing, if it holds fewer.
    @discardableResult
    public mutating func decrement(by amount: UInt64 = 1, replica: ReplicaID) throws(BoundedCounterError) -> BoundedCounter {
        let available = rights(of: replica)
        guard amount <= available else { throw .insufficientRights(replica: replica, requested: amount, available: available) }
        var delta = BoundedCounter()
        delta.decrements = decrements.increment(by: amount, replica: replica)
        return delta
    }

    /// Moves `amount` of `from`'s rights to `to`; must run at replica `from`.
    @discardableResult
    public mutating func transfer(_ amount: UInt64, from: ReplicaID, to: ReplicaID) throws(BoundedCounterError) -> BoundedCounter {
        guard from != to else { throw .transferToSelf(from) }
        let available = rights(of: from)
        guard amount <= available else { throw .insufficientRights(replica: from, requested: amount, available: available) }
        let key = Transfer(from: from, to: to)
        let total = transfers[key, default: 0] + amount
        transfers[key] = total
        var delta = BoundedCounter()
        delta.transfers[key] = total
        return delta
    }

    public mutating func formJoin(_ other: BoundedCounter) {
        increments.formJoin(other.increments)
        decrements.formJoin(other.decrements)
        transfers.merge(other.transfers, uniquingKeysWith: max)
    }

    public func isBelowOrEqual(_ other: BoundedCounter) -> Bool {
        increments.isBelowOrEqual(other.increments) && decrements.isBelowOrEqual(other.decrements)
            && transfers.allSatisfy { other.transfers[$0.key, default: 0] >= $0.value }
    }

    public var description: String {
        let moved = transfers.sorted { $0.key < $1.key }.map { "\($0.key.from)→\($0.key.to):\($0.value)" }
        return "BoundedCounter(\(value) +\(increments.entries) -\(decrements.entries) \(moved))"
    }
}

extension BoundedCounter: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) {
        increments.encode(to: &writer)
        decrements.encode(to: &writer)
        transfers.encode(to: &writer)
    }

    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        increments = try GCounter(from: &reader)
        decrements = try GCounter(from: &reader)
        transfers = try [Transfer: UInt64](from: &reader)
        guard transfers.allSatisfy({ $0.value > 0 && $0.key.from != $0.key.to }) else {
            throw .invalid("bounded counter with an empty or self transfer")
        }
    }
}
