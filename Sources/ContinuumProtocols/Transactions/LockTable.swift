/// Shared and exclusive locks per register, for strict two-phase locking (Bernstein,
/// Hadzilacos and Goodman 1987, chapter 3): locks are held until the transaction's commit
/// decision is applied.
///
/// Deadlocks are prevented by **wait-die** on transaction age (Rosenkrantz, Stearns and Lewis
/// 1978): a transaction may wait only for younger ones; a younger one that meets an older
/// conflicting holder or waiter dies (aborts and may retry). Waits-for edges then always run
/// from older to younger, so no cycle can form, and no detector, timeout guessing or message
/// round is needed, which matters here because every lock is taken at every replica. Wound-wait
/// would abort holders that may already be preparing at other replicas; wait-die only ever
/// aborts the requester, which has nothing prepared yet. Waiters are served first come, first
/// served; an upgrade (shared to exclusive) goes to the head of the queue.
public struct LockTable: Sendable {
    public enum Outcome: Equatable, Sendable {
        case granted
        case waiting
        /// The requester must abort: it is younger than `conflict`, which it would wait for.
        case die(conflict: TransactionID)
    }

    struct KeyLock {
        var exclusive: TransactionID?
        var shared: Set<TransactionID> = []
        var waiting: [(transaction: TransactionID, mode: LockMode)] = []

        var isFree: Bool { exclusive == nil && shared.isEmpty && waiting.isEmpty }
    }

    private var keys: [String: KeyLock] = [:]
    private var held: [TransactionID: Set<String>] = [:]

    public init() {}

    /// Requests `mode` on `key` for `transaction`.
    public mutating func acquire(_ transaction: TransactionID, _ key: String, _ mode: LockMode) -> Outcome {
        var lock = keys[key] ?? KeyLock()
        defer { keys[key] = lock }
        if lock.exclusive == transaction || (mode == .shared && lock.shared.contains(transaction)) { return .granted }
        let upgrading = mode == .exclusive && lock.shared.contains(transaction)
        // Whom the request would wait for: conflicting holders, and (first come, first served)
        // conflicting waiters ahead of it; an upgrade waits only for the other shared holders.
        var conflicts: [TransactionID] = []
        if let holder = lock.exclusive { conflicts.append(holder) }
        if mode == .exclusive { conflicts += lock.shared.filter { $0 != transaction } }
        if !upgrading {
            conflicts += lock.waiting.filter { $0.mode == .exclusive || mode == .exclusive }.map(\.transaction)
        }
        if conflicts.isEmpty {
            grant(transaction, key, mode, in: &lock)
            return .granted
        }
        // (The oldest conflict is named: set order must not leak into messages.)
        if let older = conflicts.filter({ transaction > $0 }).min() {
            return .die(conflict: older)
        }
        if upgrading {
            lock.waiting.insert((transaction, mode), at: 0)
        } else {
            lock.waiting.append((transaction, mode))
        }
        return .waiting
    }

    /// Releases every lock and wait of `transaction`; returns the requests granted as a result.
    public mutating func release(_ transaction: TransactionID) -> [(transaction: TransactionID, key: String)] {
        var touched = held.removeValue(forKey: transaction) ?? []
        for (key, lock) in keys where lock.waiting.contains(where: { $0.transaction == transaction }) { touched.insert(key) }
        var granted: [(TransactionID, String)] = []
        for key in touched.sorted() {
            guard var lock = keys[key] else { continue }
            if lock.exclusive == transaction { lock.exclusive = nil }
            lock.shared.remove(transaction)
            lock.waiting.removeAll { $0.transaction == transaction }
            granted += grantWaiters(key, &lock)
            keys[key] = lock.isFree ? nil : lock
        }
        return granted
    }

    private mutating func grantWaiters(_ key: String, _ lock: inout KeyLock) -> [(TransactionID, String)] {
        var granted: [(TransactionID, String)] = []
        while let (transaction, mode) = lock.waiting.first {
            let othersShared = lock.shared.subtracting([transaction])
            let compatible = lock.exclusive == nil && (mode == .shared || othersShared.isEmpty)
            guard compatible else { break }
            lock.waiting.removeFirst()
            grant(transaction, key, mode, in: &lock)
            granted.append((transaction, key))
        }
        return granted
    }

    private mutating func grant(_ transaction: TransactionID, _ key: String, _ mode: LockMode, in lock: inout KeyLock) {
        switch mode {
        case .exclusive:
            lock.shared.remove(transaction)
            lock.exclusive = transaction
        case .shared:
            lock.shared.insert(transaction)
        }
        held[transaction, default: []].insert(key)
    }

    /// Whether `transaction` holds `key` in at least `mode`.
    public func holds(_ transaction: TransactionID, _ key: String, _ mode: LockMode) -> Bool {
        guard let lock = keys[key] else { return false }
        return lock.exclusive == transaction || (mode == .shared && lock.shared.contains(transaction))
    }

    /// Whether `transaction` waits for some lock.
    public func isWaiting(_ transaction: TransactionID) -> Bool {
        keys.values.contains { $0.waiting.contains { $0.transaction == transaction } }
    }

    /// Locks granted in conflict with each other; empty in a correct table.
    public var conflicts: [String] {
        keys.compactMap { key, lock in
            guard let holder = lock.exclusive, !lock.shared.isEmpty else { return nil }
            return "\(key): exclusive \(holder) with shared \(lock.shared.sorted())"
        }.sorted()
    }

    public var lockedKeyCount: Int { keys.count }
}
