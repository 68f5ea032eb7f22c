import Continuum
import ContinuumCore
import ContinuumProtocols
import ContinuumStorage
import Foundation
import GRDB
import Synchronization
import Testing

/// A fresh directory per test, removed at the end.
final class TemporaryDirectory {
    let path: String

    init() throws {
        path = NSTemporaryDirectory() + "continuum-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    func file(_ name: String) -> String { path + "/" + name }

    deinit { try? FileManager.default.removeItem(atPath: path) }
}

@Suite struct SQLiteStoreTests {
    let node = NodeID(1)

    func entry(_ index: UInt64, term: UInt64) -> LogEntry {
        LogEntry(term: term, index: index, command: LogCommand(client: 7, sequence: index, operation: .write(key: "k", value: Int64(index))))
    }

    /// Patches of every kind, Raft truncations and a snapshot included.
    var patches: [DurablePatch] {
        let id = TransactionID(timestamp: 5, coordinator: NodeID(2), sequence: 1)
        let other = TransactionID(timestamp: 6, coordinator: NodeID(3), sequence: 1)
        let counter = RegisterSlot(generation: 1, typeName: replicableTypeName(GCounter.self), state: AnyReplicated(GCounter()))
        var count = GCounter()
        let one = RegisterSlot(generation: 1, typeName: counter.typeName, state: AnyReplicated(count.increment(by: 1, replica: ReplicaID(1))))
        let two = RegisterSlot(generation: 1, typeName: counter.typeName, state: AnyReplicated(count.increment(by: 1, replica: ReplicaID(2))))
        return [
            .raft(RaftDurableState(term: 1, votedFor: NodeID(2))),
            .raft(RaftDurableState(term: 1, votedFor: NodeID(2), entries: (1...5).map { entry($0, term: 1) })),
            .replication(ReplicaDurableState(incarnation: 3, slots: ["hits": EncodedSlot(counter)])),
            // Deltas after a whole state: kept, in order, until the next whole state of the register.
            .replication(ReplicaDurableState(incarnation: 3, slots: [:], deltas: ["hits": [EncodedSlot(one), EncodedSlot(two)], "new": [EncodedSlot(one)]])),
            .replication(ReplicaDurableState(incarnation: 3, slots: [:], deltas: ["hits": [EncodedSlot(two)]])),
            .replication(ReplicaDurableState(incarnation: 3, slots: ["new": EncodedSlot(counter)])),
            .raft(RaftDurableState(term: 2, votedFor: nil, entries: [entry(4, term: 2)], replaceFrom: 4)),
            .transactions(TransactionDurableState(prepared: [id: [TransactionWrite(key: "a", value: .int(1))]])),
            .transactions(TransactionDurableState(committed: ["a": .int(1)], decisions: [id: true, other: false], resolved: [id])),
            .raft(RaftDurableState(term: 2, votedFor: nil, snapshot: RaftSnapshot(lastIndex: 2, lastTerm: 1, state: KeyValueStateMachine()))),
            .transactions(TransactionDurableState(forgotten: [other])),
            .replication(ReplicaDurableState(incarnation: 2, slots: [:])),
        ]
    }

    /// A state machine holding `megabytes` MiB of string values.
    static func stateMachine(megabytes: Int) -> KeyValueStateMachine {
        var state = KeyValueStateMachine()
        for index in 0..<(megabytes * 16) {
            _ = state.apply(LogCommand(client: 1, sequence: UInt64(index + 1),
                                       operation: .stringSet(key: "k\(index)", value: [UInt8](repeating: UInt8(index % 251), count: 65_536))))
        }
        return state
    }

    /// Term and vote live apart from the snapshot: a vote writes a few pages, whatever the size
    /// of the state (format 1 kept both in one row, and SQLite rewrote the whole row, snapshot
    /// included, on every vote).
    @Test func votesNeverRewriteTheSnapshot() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("n1.db")
        let snapshot = RaftSnapshot(lastIndex: 10, lastTerm: 1, state: Self.stateMachine(megabytes: 4))
        do {
            let store = try SQLiteStore(path: path, node: node)
            try await store.persist([.raft(RaftDurableState(term: 1, votedFor: nil, snapshot: snapshot))])
        }
        // Start from an empty write-ahead log: closing the store above checkpoints it only once
        // its connection is gone, which under load may be after the next store opens.
        try await DatabaseQueue(path: path).writeWithoutTransaction { try $0.execute(sql: "PRAGMA wal_checkpoint(TRUNCATE)") }
        let store = try SQLiteStore(path: path, node: node)
        for term in UInt64(2)...6 {
            try await store.persist([.raft(RaftDurableState(term: term, votedFor: NodeID(2)))])
        }
        let wal = try FileManager.default.attributesOfItem(atPath: path + "-wal")[.size] as? Int ?? -1
        print("write-ahead log after 5 votes over a 4 MiB snapshot: \(wal) bytes")
        #expect(wal >= 0 && wal < 5 * 16_384, "\(wal) bytes of log for 5 votes")
        #expect(try store.load().raft?.snapshot == snapshot)
        #expect(try store.load().raft?.term == 6)
    }

    /// A compaction written in the background replaces only an older snapshot, keeps the log
    /// after it and never touches the hard state.
    @Test(arguments: [SQLiteStore.Durability.always, .everysec])
    func aBackgroundCompactionReplacesOnlyAnOlderSnapshot(_ durability: SQLiteStore.Durability) async throws {
        let directory = try TemporaryDirectory()
        let store = try SQLiteStore(path: directory.file("n1.db"), node: node, durability: durability)
        try await store.persist([.raft(RaftDurableState(term: 3, votedFor: NodeID(2), entries: (1...10).map { entry($0, term: 1) }))])
        let state = Self.stateMachine(megabytes: 5)  // more than one 4 MiB chunk
        let five = RaftSnapshot(lastIndex: 5, lastTerm: 1, state: state)
        try await store.persistInBackground(.raft(RaftDurableState(term: 1, votedFor: nil, snapshot: five, compaction: true)))
        var raft = try #require(try store.load().raft)
        #expect(raft.snapshot == five && raft.entries.map(\.index) == Array(6...10))
        #expect(raft.term == 3 && raft.votedFor == NodeID(2), "a compaction never writes the hard state")
        if durability == .always {
            // The rows the snapshot covers are gone once the compaction returns (dropped a few
            // per transaction after the switch).
            let other = try DatabaseQueue(path: directory.file("n1.db"))
            let (covered, generations) = try await other.read { db in
                (try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM raft_log WHERE idx <= 5") ?? -1,
                 try Int.fetchOne(db, sql: "SELECT COUNT(DISTINCT generation) FROM raft_snapshot_chunks") ?? -1)
            }
            #expect(covered == 0 && generations == 1, "\(covered) covered log entries and \(generations) generations of chunks left")
        }
        let three = RaftSnapshot(lastIndex: 3, lastTerm: 1, state: KeyValueStateMachine())
        try await store.persistInBackground(.raft(RaftDurableState(term: 1, votedFor: nil, snapshot: three, compaction: true)))
        raft = try #require(try store.load().raft)
        #expect(raft.snapshot == five, "an older compaction landing late replaces nothing")
        if durability == .always {
            let other = try DatabaseQueue(path: directory.file("n1.db"))
            let generations = try await other.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(DISTINCT generation) FROM raft_snapshot_chunks") }
            #expect(generations == 1, "the late compaction's chunks are dropped too")
        }
    }

    /// Log entries that the snapshot covers, left by a compaction cut short between switching
    /// the snapshot and dropping them, are not loaded as the log.
    @Test func coveredLogEntriesLeftByACompactionAreNotLoaded() async throws {
        let directory = try TemporaryDirectory()
        let store = try SQLiteStore(path: directory.file("n1.db"), node: node)
        try await store.persist([.raft(RaftDurableState(term: 3, votedFor: NodeID(2), entries: (1...10).map { entry($0, term: 1) }))])
        let five = RaftSnapshot(lastIndex: 5, lastTerm: 1, state: KeyValueStateMachine())
        try await store.persistInBackground(.raft(RaftDurableState(term: 1, votedFor: nil, snapshot: five, compaction: true)))
        let other = try DatabaseQueue(path: directory.file("n1.db"))
        try await other.write { db in
            for index in [2, 4] {
                try db.execute(sql: "INSERT INTO raft_log (idx, entry) VALUES (?, ?)",
                               arguments: [index, Data(entry(UInt64(index), term: 1).binaryEncoded())])
            }
        }
        let raft = try #require(try store.load().raft)
        #expect(raft.snapshot == five && raft.entries.map(\.index) == Array(6...10))
    }

    /// A format 1 store (snapshot in the hard-state row) is migrated when opened.
    @Test func aFormatOneStoreIsMigrated() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("n1.db")
        let snapshot = RaftSnapshot(lastIndex: 3, lastTerm: 2, state: Self.stateMachine(megabytes: 1))
        do {
            let queue = try DatabaseQueue(path: path)
            try await queue.write { db in
                try db.execute(sql: """
                    CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL);
                    INSERT INTO meta VALUES ('format', 'continuum-node-store'), ('version', '1'), ('node', '1');
                    CREATE TABLE raft_state (id INTEGER PRIMARY KEY CHECK (id = 1), term INTEGER NOT NULL, voted_for INTEGER, snapshot BLOB);
                    CREATE TABLE raft_log (idx INTEGER PRIMARY KEY NOT NULL, entry BLOB NOT NULL);
                    """)
                try db.execute(sql: "INSERT INTO raft_state VALUES (1, 2, 3, ?)", arguments: [Data(snapshot.binaryEncoded())])
                try db.execute(sql: "INSERT INTO raft_log VALUES (4, ?)", arguments: [Data(entry(4, term: 2).binaryEncoded())])
            }
        }
        let store = try SQLiteStore(path: path, node: node)
        let raft = try #require(try store.load().raft)
        #expect(raft.term == 2 && raft.votedFor == NodeID(3) && raft.snapshot == snapshot && raft.entries == [entry(4, term: 2)])
        let queue = try DatabaseQueue(path: path)
        let (version, oldRow) = try await queue.read { db in
            (try String.fetchOne(db, sql: "SELECT value FROM meta WHERE key = 'version'"), try Data.fetchOne(db, sql: "SELECT snapshot FROM raft_state"))
        }
        #expect(version == "\(SQLiteStore.formatVersion)")
        #expect(oldRow == nil, "the old row no longer holds the snapshot")
    }

    @Test(arguments: [SQLiteStore.Durability.always, .everysec])
    func whatItPersistsIsWhatTheInstancesAccumulateAndSurvivesReopening(_ durability: SQLiteStore.Durability) async throws {
        let directory = try TemporaryDirectory()
        var expected = NodeDurableState()
        do {
            let store = try SQLiteStore(path: directory.file("n1.db"), node: node, durability: durability)
            #expect(try store.load() == NodeDurableState(), "a new store holds nothing")
            for (index, patch) in patches.enumerated() {
                try await store.persist([patch])
                expected.apply(patch)
                #expect(try store.load() == expected, "after patch \(index)")
            }
        }
        let reopened = try SQLiteStore(path: directory.file("n1.db"), node: node, durability: durability)
        #expect(try reopened.load() == expected)
        #expect(expected.raft?.entries.map(\.index) == [3, 4], "truncated at 4, compacted through 2")
        #expect(expected.replication?.incarnation == 3)
    }

    /// One batch of every patch (group commit joins the replication patches before writing
    /// them) leaves what the patches one by one leave.
    @Test(arguments: [SQLiteStore.Durability.always, .everysec])
    func oneBatchPersistsWhatThePatchesOneByOnePersist(_ durability: SQLiteStore.Durability) async throws {
        let directory = try TemporaryDirectory()
        var expected = NodeDurableState()
        for patch in patches { expected.apply(patch) }
        let store = try SQLiteStore(path: directory.file("n1.db"), node: node, durability: durability)
        try await store.persist(patches)
        #expect(try store.load() == expected)
        // A whole state after deltas in the same batch drops them; deltas after it stay.
        let counter = RegisterSlot(generation: 1, typeName: replicableTypeName(GCounter.self), state: AnyReplicated(GCounter()))
        var count = GCounter()
        let one = RegisterSlot(generation: 1, typeName: counter.typeName, state: AnyReplicated(count.increment(by: 1, replica: ReplicaID(1))))
        let batch: [DurablePatch] = [
            .replication(ReplicaDurableState(incarnation: 4, slots: [:], deltas: ["b": [EncodedSlot(one)]])),
            .replication(ReplicaDurableState(incarnation: 4, slots: ["b": EncodedSlot(counter)])),
            .replication(ReplicaDurableState(incarnation: 4, slots: [:], deltas: ["b": [EncodedSlot(one)], "c": [EncodedSlot(one)]])),
        ]
        for patch in batch { expected.apply(patch) }
        try await store.persist(batch)
        #expect(try store.load() == expected)
        #expect(expected.replication?.deltas["b"]?.count == 1)
    }

    @Test func aForeignDatabaseIsRefusedAndLeftUntouched() throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("other.db")
        let sqlite = Process()
        sqlite.executableURL = URL(fileURLWithPath: "/usr/bin/sqlite3")
        sqlite.arguments = [path, "CREATE TABLE invoices (id INTEGER PRIMARY KEY); INSERT INTO invoices VALUES (1);"]
        try sqlite.run()
        sqlite.waitUntilExit()
        let before = try Data(contentsOf: URL(fileURLWithPath: path))
        #expect(throws: StorageError.self) { try SQLiteStore(path: path, node: node) }
        do {
            _ = try SQLiteStore(path: path, node: node)
        } catch {
            #expect("\(error)".contains("no Continuum marker"), "\(error)")
        }
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == before)
    }

    @Test func garbageIsRefusedAsCorruptAndLeftUntouched() throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("garbage.db")
        let garbage = Data((0..<8192).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) })
        try garbage.write(to: URL(fileURLWithPath: path))
        do {
            _ = try SQLiteStore(path: path, node: node)
            Issue.record("garbage opened as a store")
        } catch {
            guard case .corrupt = error else {
                Issue.record("expected corrupt, got \(error)")
                return
            }
        }
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == garbage)
    }

    @Test func anotherNodesStoreIsRefused() throws {
        let directory = try TemporaryDirectory()
        _ = try SQLiteStore(path: directory.file("n1.db"), node: node)
        #expect(throws: StorageError.foreign(path: directory.file("n1.db"), reason: "it belongs to node n1, not n2")) {
            try SQLiteStore(path: directory.file("n1.db"), node: NodeID(2))
        }
    }

    /// A node stopped and started again in one process (the tests, an embedded cluster) opens
    /// its store while the previous life may still be finishing a flush: the new store waits for
    /// the write lock instead of failing with "database is locked" (seen once in a suite run).
    @Test func aWriteWaitsForAnotherConnectionsWriteLock() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("n1.db")
        let store = try SQLiteStore(path: path, node: node)
        let other = try DatabaseQueue(path: path)
        let locked = DispatchSemaphore(value: 0)
        let holder = Thread {
            try? other.inTransaction(.immediate) { _ in
                locked.signal()
                Thread.sleep(forTimeInterval: 0.3)
                return .commit
            }
        }
        holder.start()
        #expect(locked.wait(timeout: .now() + 30) == .success, "the other connection never took its lock")
        try await store.persist([.raft(RaftDurableState(term: 2, votedFor: NodeID(3)))])
        #expect(try store.load().raft?.term == 2)
    }

    /// Opening a store waits for another connection's exclusive lock on the file (one that an
    /// earlier store of the file, dropped in this process, holds while its closing connection
    /// checkpoints the write-ahead log) instead of refusing the file as locked (a CI run did).
    @Test func anOpeningWaitsForAnotherConnectionsExclusiveLock() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("n1.db")
        do { _ = try SQLiteStore(path: path, node: node) }
        let other = try DatabaseQueue(path: path)
        let locked = DispatchSemaphore(value: 0)
        let failure = Mutex<String?>(nil)
        let holder = Thread {
            do {
                try other.writeWithoutTransaction { db in
                    try db.execute(sql: "PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE; COMMIT")
                    locked.signal()
                    Thread.sleep(forTimeInterval: 0.3)
                    try db.execute(sql: "PRAGMA locking_mode = NORMAL; SELECT count(*) FROM meta")
                }
            } catch {
                failure.withLock { $0 = "\(error)" }
                locked.signal()
            }
        }
        holder.start()
        #expect(locked.wait(timeout: .now() + 30) == .success, "the other connection never took its lock")
        #expect(failure.withLock { $0 } == nil)
        let store = try SQLiteStore(path: path, node: node)
        #expect(try store.load() == NodeDurableState())
    }

    /// A batch the store fails to commit acknowledges nothing: the node stops as a crash would
    /// (the write is refused inside SQLite by a trigger planted through another connection).
    /// (`everysec` writes to its log first: `PatchLogTests` plant failures there.)
    @Test func aWriteWhoseBatchFailsToCommitIsNeverAcknowledged() async throws {
        let durability = SQLiteStore.Durability.always
        let directory = try TemporaryDirectory()
        let path = directory.file("n1.db")
        let node = Node(id: NodeID(1), members: [NodeID(1)], configuration: EmbeddedCluster.embeddedConfiguration,
                        raftConfiguration: EmbeddedCluster.embeddedRaftConfiguration,
                        storage: try SQLiteStore(path: path, node: NodeID(1), durability: durability), transport: InMemoryNetwork(),
                        seed: 1, clock: NodeClock(epoch: ContinuousClock().now))
        try await node.start()
        let cart = try await node.declare("cart", as: GSet<String>.self)
        try await cart.update { set, _ in set.insert("tea") }
        let other = try DatabaseQueue(path: path)
        try await other.write { db in
            for table in ["replica_slots", "replica_deltas"] {
                try db.execute(sql: "CREATE TRIGGER refuse_\(table) BEFORE INSERT ON \(table) BEGIN SELECT RAISE(ABORT, 'planted failure'); END")
            }
        }
        await #expect(throws: (any Error).self, "acknowledged a write its store refused") {
            try await cart.update { set, _ in set.insert("jam") }
        }
        #expect(await !node.isRunning)
        try await other.write { db in
            for table in ["replica_slots", "replica_deltas"] { try db.execute(sql: "DROP TRIGGER refuse_\(table)") }
        }
        try await node.start()
        #expect(try await node.register("cart", as: GSet<String>.self).read().elements == ["tea"])
        await node.stop()
    }

    @Test func aNodeRestartedOnItsStoreKeepsEverythingItAcknowledged() async throws {
        let directory = try TemporaryDirectory()
        let members = [NodeID(1), NodeID(2), NodeID(3)]
        let clock = NodeClock(epoch: ContinuousClock().now)
        let network = InMemoryNetwork()
        func makeNode(_ id: NodeID) throws -> Node {
            Node(id: id, members: members, configuration: EmbeddedCluster.embeddedConfiguration,
                 raftConfiguration: EmbeddedCluster.embeddedRaftConfiguration,
                 storage: try SQLiteStore(path: directory.file("n\(id.rawValue).db"), node: id), transport: network,
                 seed: id.rawValue, clock: clock)
        }
        var nodes = try members.map(makeNode)
        for node in nodes { network.attach(node) }
        for node in nodes { try await node.start() }
        let cart = try await nodes[0].declare("cart", as: GSet<String>.self)
        for item in ["tea", "jam", "bread"] { try await cart.update { set, _ in set.insert(item) } }
        // Linearizable writes through Raft, once a leader is elected.
        let stock = try await nodes[0].declareLinearizable("stock")
        var written = false
        for _ in 0..<250 where !written {
            written = (try? await stock.write(42, latency: .milliseconds(300))) != nil
            if !written { try await Task.sleep(for: .milliseconds(20)) }
        }
        #expect(written)
        try await nodes[0].write(serializable: "balance", .int(100))
        // A new process: new node objects on the same files.
        for node in nodes { await node.stop() }
        nodes = try members.map(makeNode)
        for node in nodes { network.attach(node) }
        for node in nodes { try await node.start() }
        #expect(try await nodes[0].register("cart", as: GSet<String>.self).read().elements == ["tea", "jam", "bread"])
        let restarted = try await nodes[1].declareLinearizable("stock")
        var value: Int64?
        for _ in 0..<250 where value == nil {
            value = try? await restarted.read(latency: .milliseconds(300))
            if value == nil { try await Task.sleep(for: .milliseconds(20)) }
        }
        #expect(value == 42)
        #expect(try await nodes[2].read(serializable: "balance", .bounded(staleness: .zero, latency: .seconds(1))).value == .int(100))
        for node in nodes { await node.stop() }
    }
}
