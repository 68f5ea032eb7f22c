import Continuum
import ContinuumCore
import ContinuumProtocols
@testable import ContinuumStorage
import Dispatch
import Foundation
import GRDB
import Synchronization
import Testing

/// The `everysec` log: what a crash leaves is applied when the store opens, a torn tail is cut
/// and nothing before it lost, a damaged closed segment refuses to open, and a write or an
/// application that fails acknowledges nothing and loses nothing acknowledged.
@Suite struct PatchLogTests {
    let node = NodeID(1)
    /// Every kind of patch; the last one changes the state (a new term), so dropping it shows.
    var patches: [DurablePatch] { SQLiteStoreTests().patches + [.raft(RaftDurableState(term: 9, votedFor: NodeID(3)))] }

    /// What a kill -9 (or a crash of the machine after the last fsync) leaves on disk: the
    /// database, its write-ahead log and the log segments, copied while the store is open.
    func crashImage(of directory: TemporaryDirectory) throws -> TemporaryDirectory {
        let image = try TemporaryDirectory()
        for name in try FileManager.default.contentsOfDirectory(atPath: directory.path) where !name.hasSuffix("-shm") {
            try FileManager.default.copyItem(atPath: directory.file(name), toPath: image.file(name))
        }
        return image
    }

    func segments(_ directory: TemporaryDirectory) throws -> [UInt64] { try PatchLog.segments(basePath: directory.file("n1.db")) }

    func appliedThrough(_ path: String) throws -> String? {
        try DatabaseQueue(path: path).read { db in try String.fetchOne(db, sql: "SELECT value FROM meta WHERE key = 'log_applied_through'") }
    }

    /// Persists every fixture patch, one batch each, into an `everysec` store whose segments
    /// never fill; returns the store (still open) and what the patches accumulate to.
    func fill(_ directory: TemporaryDirectory) async throws -> (SQLiteStore, [NodeDurableState]) {
        let store = try SQLiteStore(path: directory.file("n1.db"), node: node, durability: .everysec)
        var states = [NodeDurableState()]
        for patch in patches {
            try await store.persist([patch])
            var next = states.last!
            next.apply(patch)
            states.append(next)
        }
        return (store, states)
    }

    @Test func aCrashLeavesTheLogInSegmentsAndOpeningTheStoreAppliesThem() async throws {
        let directory = try TemporaryDirectory()
        let (store, states) = try await fill(directory)
        let image = try crashImage(of: directory)
        #expect(try segments(image) == [1], "the batches are in the log, not yet in the database")
        withExtendedLifetime(store) {}
        let reopened = try SQLiteStore(path: image.file("n1.db"), node: node, durability: .everysec)
        #expect(try reopened.load() == states.last)
        #expect(try appliedThrough(image.file("n1.db")) == "1")
        // An `always` store opened on them applies them too.
        let other = try crashImage(of: directory)
        #expect(try SQLiteStore(path: other.file("n1.db"), node: node).load() == states.last)
        #expect(try segments(other).isEmpty)
    }

    @Test func fullSegmentsAreAppliedToTheDatabaseAndDeleted() async throws {
        let directory = try TemporaryDirectory()
        let store = try SQLiteStore(path: directory.file("n1.db"), node: node, durability: .everysec, logSegmentBytes: 64)
        var expected = NodeDurableState()
        for patch in patches {
            try await store.persist([patch])
            expected.apply(patch)
        }
        #expect(try store.load() == expected)
        let left = try segments(directory)
        #expect(left.count == 1, "only the segment being written is left: \(left)")
        let applied = try appliedThrough(directory.file("n1.db"))
        #expect(applied.flatMap { Int($0) } ?? 0 >= 3, "segments applied through \(applied ?? "none")")
    }

    /// A record a crash of the machine tore ends the newest segment: the store opens with every
    /// batch before it.
    @Test func aTornTailOfTheNewestSegmentIsCutAndEverythingBeforeItKept() async throws {
        let directory = try TemporaryDirectory()
        let (store, states) = try await fill(directory)
        withExtendedLifetime(store) {}
        // Half of a record: the last batch written again, cut short.
        let half = try crashImage(of: directory)
        let segment = half.file("n1.db-log-1")
        var bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: segment)))
        let lastRecord = try lastRecordOffset(bytes)
        bytes += bytes[lastRecord..<(lastRecord + (bytes.count - lastRecord) / 2)]
        try Data(bytes).write(to: URL(fileURLWithPath: segment))
        #expect(try SQLiteStore(path: half.file("n1.db"), node: node, durability: .everysec).load() == states.last)
        // One byte of the last record changed: that record is dropped, the ones before are kept.
        let flipped = try crashImage(of: directory)
        var damaged = try [UInt8](Data(contentsOf: URL(fileURLWithPath: flipped.file("n1.db-log-1"))))
        damaged[damaged.count - 2] ^= 0x40
        try Data(damaged).write(to: URL(fileURLWithPath: flipped.file("n1.db-log-1")))
        #expect(try SQLiteStore(path: flipped.file("n1.db"), node: node, durability: .everysec).load() == states[states.count - 2])
    }

    /// A segment followed by a newer one was fsynced when it was closed: damage there is not a
    /// torn write, and the store refuses to open rather than drop acknowledged batches.
    @Test func damageInAClosedSegmentRefusesToOpen() async throws {
        let directory = try TemporaryDirectory()
        let (store, states) = try await fill(directory)
        withExtendedLifetime(store) {}
        let intact = try crashImage(of: directory)
        try Data(PatchLog.marker).write(to: URL(fileURLWithPath: intact.file("n1.db-log-2")))
        #expect(try SQLiteStore(path: intact.file("n1.db"), node: node, durability: .everysec).load() == states.last)
        let damaged = try crashImage(of: directory)
        try Data(PatchLog.marker).write(to: URL(fileURLWithPath: damaged.file("n1.db-log-2")))
        var bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: damaged.file("n1.db-log-1"))))
        bytes[PatchLog.marker.count + 9] ^= 0x01
        try Data(bytes).write(to: URL(fileURLWithPath: damaged.file("n1.db-log-1")))
        #expect(throws: StorageError.self) { try SQLiteStore(path: damaged.file("n1.db"), node: node, durability: .everysec) }
        #expect(try segments(damaged) == [1, 2], "nothing was deleted")
    }

    /// A write that fails (here half written, as a full disk would leave it) acknowledges
    /// nothing and stops the node; the segment is cut back, so what the node acknowledges after
    /// its restart is readable behind it.
    @Test func aFailedAppendIsNeverAcknowledgedAndLeavesTheLogReadable() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("n1.db")
        let store = try SQLiteStore(path: path, node: node, durability: .everysec)
        let node = Node(id: NodeID(1), members: [NodeID(1)], configuration: EmbeddedCluster.embeddedConfiguration,
                        raftConfiguration: EmbeddedCluster.embeddedRaftConfiguration, storage: store, transport: InMemoryNetwork(),
                        seed: 1, clock: NodeClock(epoch: ContinuousClock().now))
        try await node.start()
        let cart = try await node.declare("cart", as: GSet<String>.self)
        try await cart.update { set, _ in set.insert("tea") }
        try #require(store.log).plantedWriteFailure.store(true, ordering: .relaxed)
        await #expect(throws: (any Error).self, "acknowledged a write its log did not take") {
            try await cart.update { set, _ in set.insert("jam") }
        }
        #expect(await !node.isRunning)
        try await node.start()
        let restarted = node.register("cart", as: GSet<String>.self)
        #expect(try await restarted.read().elements == ["tea"])
        try await restarted.update { set, _ in set.insert("bread") }
        let image = try crashImage(of: directory)
        await node.stop()
        let again = Node(id: NodeID(1), members: [NodeID(1)], configuration: EmbeddedCluster.embeddedConfiguration,
                         raftConfiguration: EmbeddedCluster.embeddedRaftConfiguration,
                         storage: try SQLiteStore(path: image.file("n1.db"), node: NodeID(1), durability: .everysec),
                         transport: InMemoryNetwork(), seed: 1, clock: NodeClock(epoch: ContinuousClock().now))
        try await again.start()
        #expect(try await again.register("cart", as: GSet<String>.self).read().elements == ["tea", "bread"])
        await again.stop()
    }

    /// A segment the database refuses stops the log (later batches fail, so a later segment is
    /// never applied past it) and stays on disk: the next opening applies it.
    @Test func aSegmentThatFailsToApplyStopsTheLogAndIsKept() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("n1.db")
        let store = try SQLiteStore(path: path, node: node, durability: .everysec, logSegmentBytes: 64)
        let other = try DatabaseQueue(path: path)
        try await other.write { db in
            try db.execute(sql: "CREATE TRIGGER refuse BEFORE INSERT ON replica_slots BEGIN SELECT RAISE(ABORT, 'planted failure'); END")
        }
        let counter = RegisterSlot(generation: 1, typeName: replicableTypeName(GCounter.self), state: AnyReplicated(GCounter()))
        let patch = DurablePatch.replication(ReplicaDurableState(incarnation: 1, slots: ["hits": EncodedSlot(counter)]))
        try await store.persist([patch])  // in the log: acknowledged
        #expect(throws: StorageError.self) { try store.load() }
        await #expect(throws: StorageError.self) { try await store.persist([patch]) }
        #expect(try !segments(directory).isEmpty)
        try await other.write { db in try db.execute(sql: "DROP TRIGGER refuse") }
        let image = try crashImage(of: directory)
        var expected = NodeDurableState()
        expected.apply(patch)
        #expect(try SQLiteStore(path: image.file("n1.db"), node: node, durability: .everysec).load() == expected)
    }

    /// While the database cannot take the closed segments (another connection holds its write
    /// lock), at most `pendingSegmentsMax` of them wait: closing one more waits, and so do the
    /// batches behind it, until the lock goes. Nothing is lost.
    @Test func closedSegmentsWaitingForTheDatabaseAreBounded() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("n1.db")
        let store = try SQLiteStore(path: path, node: node, durability: .everysec, logSegmentBytes: 64)
        let other = try DatabaseQueue(path: path)
        let locked = DispatchSemaphore(value: 0)
        let holder = Thread {
            try? other.inTransaction(.immediate) { _ in
                locked.signal()
                Thread.sleep(forTimeInterval: 0.5)
                return .commit
            }
        }
        holder.start()
        locked.wait()
        var expected = NodeDurableState()
        var most = 0
        for term in UInt64(1)...24 {
            let patch = DurablePatch.raft(RaftDurableState(term: term, votedFor: NodeID(2), entries: [SQLiteStoreTests().entry(term, term: term)]))
            try await store.persist([patch])
            expected.apply(patch)
            most = max(most, try segments(directory).count)
        }
        #expect(most <= PatchLog.pendingSegmentsMax + 1, "\(most) segments on disk at once")
        #expect(try store.load() == expected)
    }

    /// While `pendingSegmentsMax` closed segments wait for a database another connection holds,
    /// a write returns to its caller (a node's thread, which must go on with heartbeats) before
    /// it is acknowledged; the acknowledgement comes once the database takes the segments, and
    /// nothing is lost.
    @Test func aFullLogHoldsTheAcknowledgementNotTheCaller() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("n1.db")
        let store = try SQLiteStore(path: path, node: node, durability: .everysec, logSegmentBytes: 64)
        let other = try DatabaseQueue(path: path)
        let locked = DispatchSemaphore(value: 0), release = DispatchSemaphore(value: 0)
        let holder = Thread {
            try? other.inTransaction(.immediate) { _ in
                locked.signal()
                _ = release.wait(timeout: .now() + 30)
                return .commit
            }
            locked.signal()
        }
        holder.start()
        #expect(locked.wait(timeout: .now() + 30) == .success)
        var expected = NodeDurableState()
        /// One write's acknowledgement.
        final class Acknowledgement: Sendable {
            let done = DispatchSemaphore(value: 0)
            let error = Mutex<String?>(nil)
        }
        var heldBack: Acknowledgement?
        for term in UInt64(1)...40 where heldBack == nil {
            let patch = DurablePatch.raft(RaftDurableState(term: term, votedFor: NodeID(2), entries: [SQLiteStoreTests().entry(term, term: term)]))
            expected.apply(patch)
            let acknowledgement = Acknowledgement()
            store.persist([patch]) { failure in
                acknowledgement.error.withLock { $0 = failure.map { "\($0)" } }
                acknowledgement.done.signal()
            }
            if acknowledgement.done.wait(timeout: .now()) == .success {
                #expect(acknowledgement.error.withLock { $0 } == nil)
            } else {
                heldBack = acknowledgement
            }
        }
        #expect(heldBack != nil, "every write was acknowledged before it returned, with the database held")
        #expect(try segments(directory).count <= PatchLog.pendingSegmentsMax + 1)
        release.signal()
        if let heldBack {
            #expect(heldBack.done.wait(timeout: .now() + 30) == .success, "the held-back write was never acknowledged")
            #expect(heldBack.error.withLock { $0 } == nil)
        }
        #expect(try store.load() == expected)
    }

    /// Where the last record of a segment starts.
    func lastRecordOffset(_ bytes: [UInt8]) throws -> Int {
        var offset = PatchLog.marker.count, last = offset
        while offset < bytes.count {
            last = offset
            offset += 8 + (0..<4).reduce(0) { $0 | Int(bytes[offset + $1]) << (8 * $1) }
        }
        try #require(offset == bytes.count)
        return last
    }
}
