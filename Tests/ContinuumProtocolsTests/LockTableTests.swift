import ContinuumCore
import ContinuumProtocols
import Testing

/// Strict two-phase locking with wait-die (Bernstein, Hadzilacos and Goodman 1987, chapter 3).
@Suite struct LockTableTests {
    let older = TransactionID(timestamp: 1, coordinator: NodeID(1), sequence: 1)
    let middle = TransactionID(timestamp: 2, coordinator: NodeID(1), sequence: 2)
    let younger = TransactionID(timestamp: 3, coordinator: NodeID(2), sequence: 1)

    @Test func sharedLocksAreCompatibleExclusiveOnesAreNot() {
        var table = LockTable()
        #expect(table.acquire(middle, "k", .shared) == .granted)
        #expect(table.acquire(younger, "k", .shared) == .granted)
        // An older writer waits for the younger readers; a younger writer would die.
        #expect(table.acquire(older, "k", .exclusive) == .waiting)
        #expect(table.conflicts.isEmpty)
        let granted = table.release(middle) + table.release(younger)
        #expect(granted.map(\.transaction) == [older])
        #expect(table.holds(older, "k", .exclusive))
    }

    @Test func aYoungerRequesterDiesAndAnOlderOneWaits() {
        var table = LockTable()
        #expect(table.acquire(middle, "k", .exclusive) == .granted)
        #expect(table.acquire(younger, "k", .shared) == .die(conflict: middle))
        #expect(table.acquire(older, "k", .shared) == .waiting)
        #expect(!table.holds(younger, "k", .shared))
    }

    @Test func waitersAreServedFirstComeFirstServed() {
        var table = LockTable()
        let oldest = TransactionID(timestamp: 0, coordinator: NodeID(1), sequence: 0)
        #expect(table.acquire(younger, "k", .exclusive) == .granted)
        #expect(table.acquire(middle, "k", .exclusive) == .waiting)
        // A shared request may not overtake the waiting writer; being older than both, it waits.
        #expect(table.acquire(oldest, "k", .shared) == .waiting)
        #expect(table.release(younger).map(\.transaction) == [middle])
        #expect(table.release(middle).map(\.transaction) == [oldest])
    }

    @Test func upgradesWaitOnlyForOtherReaders() {
        var table = LockTable()
        #expect(table.acquire(older, "k", .shared) == .granted)
        #expect(table.acquire(older, "k", .exclusive) == .granted)  // sole reader: upgraded at once
        var other = LockTable()
        #expect(other.acquire(older, "k", .shared) == .granted)
        #expect(other.acquire(younger, "k", .shared) == .granted)
        #expect(other.acquire(older, "k", .exclusive) == .waiting)  // waits for the younger reader
        #expect(other.acquire(younger, "k", .exclusive) == .die(conflict: older))
        #expect(other.release(younger).map(\.transaction) == [older])
        #expect(other.holds(older, "k", .exclusive))
    }

    /// Random schedules: the table never grants conflicting locks, and waits only run from
    /// older to younger transactions (so no deadlock can form).
    @Test func randomSchedulesNeverConflict() {
        var random = DeterministicRandom(seed: 3)
        var table = LockTable()
        let transactions = (0..<6).map { TransactionID(timestamp: UInt64($0), coordinator: NodeID(1), sequence: UInt64($0)) }
        var alive = Set(transactions)
        for _ in 0..<2_000 {
            let transaction = transactions.randomElement(using: &random)!
            if Int.random(in: 0..<4, using: &random) == 0 || !alive.contains(transaction) {
                _ = table.release(transaction)
                alive.insert(transaction)
                continue
            }
            let outcome = table.acquire(transaction, ["a", "b", "c"].randomElement(using: &random)!, Bool.random(using: &random) ? .shared : .exclusive)
            if case let .die(conflict) = outcome {
                #expect(conflict < transaction, "died for a younger transaction")
                _ = table.release(transaction)
            }
            #expect(table.conflicts.isEmpty)
        }
    }
}
