import Continuum
import ContinuumCore
import ContinuumProtocols
import Foundation
import GRDB

/// Why a store could not be opened or used. Nothing was changed on disk.
public enum StorageError: Error, Equatable, CustomStringConvertible {
    /// The file is not a SQLite database, or SQLite found it damaged.
    case corrupt(path: String, reason: String)
    /// A SQLite database, but not a Continuum node store (or another node's, or a newer format).
    case foreign(path: String, reason: String)
    /// A stored record does not decode.
    case undecodable(table: String, reason: String)
    case io(String)

    public var description: String {
        switch self {
        case let .corrupt(path, reason): "\(path) is not a usable database (\(reason)); it was left untouched"
        case let .foreign(path, reason): "\(path) is not this node's store (\(reason)); it was left untouched"
        case let .undecodable(table, reason): "a record in \(table) does not decode: \(reason)"
        case let .io(reason): "storage failed: \(reason)"
        }
    }
}

/// A node's durable state in one SQLite database (through GRDB), in WAL mode with
/// `synchronous = FULL`. With `Durability.always` (the default) each batch of patches is one
/// transaction, on disk when its commit returns. With `Durability.everysec` a batch is one
/// record appended to a `PatchLog` next to the database: in the operating system's hands when
/// `write(2)` returns (it survives the process's crash, kill -9 included), fsynced at least
/// once a second (a power loss or a crash of the operating system may lose the last second of
/// acknowledged writes, as Redis's `appendfsync everysec` may). Every `logSegmentBytes` the log
/// starts a new segment and applies the closed one to the database in one transaction (a
/// register written many times in it is written once); opening a store, in either mode,
/// applies the segments a crash left behind. The Raft log is one
/// row per entry (appends and truncations touch only the rows they change); hard state (term
/// and vote) one small row, rewritten only when it changes; the snapshot in 4 MiB chunk rows of
/// its own, written when a snapshot is taken or installed and never by a vote (a compaction
/// one chunk per transaction, through `persistInBackground`; format 2; a format 1 store, which
/// kept the snapshot in the hard-state row, is migrated when opened); CRDT
/// registers one row each, as last written whole, and the deltas written since one row each
/// (format 3; a register is written whole again once its deltas would outgrow it); committed values, prepare records and
/// decisions of two-phase commit one row each. A node's batch of patches is one transaction,
/// so one fsync covers it (group commit, with the node's batching).
///
/// A file that is not a SQLite database, a database without Continuum's marker, another node's
/// store or a newer format is refused with `StorageError` and never written to.
public final class SQLiteStore: NodeStorage {
    /// Written in the `meta` table; a database without it is not opened.
    public static let format = "continuum-node-store"
    public static let formatVersion = 3
    /// Older formats this build opens and migrates.
    public static let migratableVersions: Set<Int> = [1, 2]

    /// When a write is on disk (`--fsync`).
    public enum Durability: String, Sendable, CaseIterable, Codable {
        /// Acknowledge after fsync (group-committed: one fsync covers every write of a batch).
        case always
        /// Acknowledge once the write reaches the operating system; fsync at least every second.
        case everysec
    }

    public let path: String
    public let durability: Durability
    private let queue: DatabaseQueue
    /// `everysec`: where batches go first.
    let log: PatchLog?
    private let syncer: Task<Void, Never>?

    /// Opens (or creates) the store of node `node` at `path`. `logSegmentBytes`: under
    /// `everysec`, how large a log segment grows before it is applied to the database.
    public init(path: String, node: NodeID, durability: Durability = .always, logSegmentBytes: Int = 16 << 20) throws(StorageError) {
        self.path = path
        self.durability = durability
        var configuration = Configuration()
        configuration.journalMode = .wal
        // Another connection to the file may hold its write lock for a moment (the previous
        // life of a node stopped in this process finishing a flush it dropped): wait for it
        // rather than fail the write.
        configuration.busyMode = .timeout(5)
        // A log segment is deleted once it is applied: that transaction must be on disk first.
        configuration.prepareDatabase { db in try db.execute(sql: "PRAGMA synchronous = FULL") }
        configuration.label = "continuum-store-n\(node.rawValue)"
        let exists = FileManager.default.fileExists(atPath: path)
        // Look before writing: a journal-mode change would already write to a foreign file.
        if exists { try Self.inspect(path: path, node: node) }
        do {
            let queue = try DatabaseQueue(path: path, configuration: configuration)
            try queue.write { db in try Self.createSchema(db, node: node) }
            self.queue = queue
            let applied = try Self.applyLeftoverSegments(basePath: path, queue)
            guard durability == .everysec else {
                log = nil
                syncer = nil
                return
            }
            let log = try PatchLog(basePath: path, after: applied, rotationBytes: max(logSegmentBytes, 1),
                                   label: "continuum-log-n\(node.rawValue)") { log, segment in
                queue.asyncWrite({ db in try Self.applySegment(segment, basePath: path, newest: false, db) },
                                 completion: { _, result in
                                     if case let .failure(error) = result {
                                         log.fail(error as? StorageError ?? .io("applying \(PatchLog.segmentPath(path, segment)): \(error)"))
                                     } else {
                                         try? FileManager.default.removeItem(atPath: PatchLog.segmentPath(path, segment))
                                         log.compacted()
                                     }
                                 })
            }
            self.log = log
            syncer = Task.detached(priority: .utility) { [weak log] in
                while !Task.isCancelled {
                    try? await Task.sleep(for: .seconds(1))
                    guard let log else { return }
                    log.sync()
                }
            }
        } catch let error as StorageError {
            throw error
        } catch {
            throw .io("\(error)")
        }
    }

    /// Applies the log segments on disk that the database does not have yet (a crash, or a
    /// stop, left them), oldest first, each in one transaction that also records it as applied,
    /// and deletes them. Returns the number of the last one applied.
    private static func applyLeftoverSegments(basePath: String, _ queue: DatabaseQueue) throws -> UInt64 {
        var applied = try queue.read { db in
            try String.fetchOne(db, sql: "SELECT value FROM meta WHERE key = 'log_applied_through'").flatMap { UInt64($0) } ?? 0
        }
        let segments = try PatchLog.segments(basePath: basePath)
        for segment in segments where segment > applied {
            try queue.write { db in try applySegment(segment, basePath: basePath, newest: segment == segments.last, db) }
            applied = segment
        }
        for segment in segments { try FileManager.default.removeItem(atPath: PatchLog.segmentPath(basePath, segment)) }
        return max(applied, segments.last ?? 0)
    }

    /// Applies log segment `segment` to the database and records it as applied, in the caller's
    /// transaction: its replication patches joined, the others in order.
    private static func applySegment(_ segment: UInt64, basePath: String, newest: Bool, _ db: Database) throws {
        let patches = try PatchLog.read(basePath: basePath, segment: segment, newest: newest).flatMap { $0 }
        try write(patches, replication: joinedReplication(patches), db)
        try db.execute(sql: "INSERT OR REPLACE INTO meta (key, value) VALUES ('log_applied_through', ?)", arguments: ["\(segment)"])
    }

    /// Refuses a file that is not an empty database or this node's store (any node's, when
    /// `node` is nil), opening it read-only.
    private static func inspect(path: String, node: NodeID?) throws(StorageError) {
        var configuration = Configuration()
        configuration.readonly = true
        // The last connection of an earlier store of this file (one dropped in this process)
        // checkpoints the write-ahead log as it closes, under the file's exclusive lock, and
        // may still be closing on its writer's thread: wait for it as writes do, rather than
        // refuse the store as locked.
        configuration.busyMode = .timeout(5)
        do {
            let queue = try DatabaseQueue(path: path, configuration: configuration)
            try queue.read { db in
                let check = try String.fetchOne(db, sql: "PRAGMA quick_check") ?? "no answer"
                guard check == "ok" else { throw StorageError.corrupt(path: path, reason: "quick_check: \(check)") }
                let tables = try String.fetchAll(db, sql: "SELECT name FROM sqlite_master WHERE type = 'table'")
                if tables.isEmpty {  // an empty database: ours to initialize, but no backup
                    guard node != nil else { throw StorageError.foreign(path: path, reason: "an empty database") }
                    return
                }
                guard tables.contains("meta") else {
                    throw StorageError.foreign(path: path, reason: "no Continuum marker; tables \(tables.sorted())")
                }
                let meta = try Dictionary(uniqueKeysWithValues: Row.fetchAll(db, sql: "SELECT key, value FROM meta").map {
                    (String($0["key"]), String($0["value"]))
                })
                guard meta["format"] == format else { throw StorageError.foreign(path: path, reason: "format \(meta["format"] ?? "none")") }
                guard let version = meta["version"].flatMap({ Int($0) }), version == formatVersion || migratableVersions.contains(version) else {
                    throw StorageError.foreign(path: path, reason: "format version \(meta["version"] ?? "none"), this build reads \(formatVersion)")
                }
                if let node, meta["node"] != "\(node.rawValue)" {
                    throw StorageError.foreign(path: path, reason: "it belongs to node n\(meta["node"] ?? "?"), not n\(node.rawValue)")
                }
            }
        } catch let error as StorageError {
            throw error
        } catch let error as DatabaseError where error.resultCode == .SQLITE_NOTADB || error.resultCode == .SQLITE_CORRUPT {
            throw .corrupt(path: path, reason: "\(error.message ?? "\(error.resultCode)")")
        } catch {
            throw .io("\(error)")
        }
    }

    deinit { syncer?.cancel() }

    // MARK: Backup and restore

    /// Writes a consistent copy of the store to `destination`, a new file, while the node runs
    /// on: every write made durable before the call is in it (under `everysec` the log's
    /// current segment is closed and applied first). The copy is read on a connection of its
    /// own, in one read transaction: the store's writer is not held up, and what it writes
    /// meanwhile is not in the copy. Returns the copy's size in bytes.
    @discardableResult
    public func backup(to destination: String) throws(StorageError) -> Int {
        guard !FileManager.default.fileExists(atPath: destination) else {
            throw .io("\(destination) exists; a backup is written to a new file only")
        }
        do {
            try log?.rotateNow()
            // Behind whatever the writer has queued (the closed segment's application).
            try queue.writeWithoutTransaction { _ in }
            try log?.check()
            var configuration = Configuration()
            configuration.readonly = true
            configuration.busyMode = .timeout(5)
            let source = try DatabaseQueue(path: path, configuration: configuration)
            // Every value of the store is in it: readable by the node's user only.
            guard FileManager.default.createFile(atPath: destination, contents: nil, attributes: [.posixPermissions: 0o600]) else {
                throw StorageError.io("cannot create \(destination)")
            }
            let copy = try DatabaseQueue(path: destination)
            try source.backup(to: copy)
            try copy.close()
            try source.close()
        } catch let error as StorageError {
            try? FileManager.default.removeItem(atPath: destination)
            throw error
        } catch {
            try? FileManager.default.removeItem(atPath: destination)
            throw .io("backing up to \(destination): \(error)")
        }
        let attributes = try? FileManager.default.attributesOfItem(atPath: destination)
        return (attributes?[.size] as? NSNumber)?.intValue ?? 0
    }

    /// Seeds the store of node `node` at `path` (which must not exist) from `backup`, a copy
    /// that `backup(to:)` wrote of any node's store. The copy keeps every register, the Raft
    /// log, snapshot and term, and the committed transactions; it becomes `node`'s, and forgets
    /// the vote of the node it was copied from (this node cast none). `backup` is checked
    /// first (a SQLite database, a Continuum store of a format this build reads) and never
    /// written to.
    public static func restore(from backup: String, to path: String, node: NodeID) throws(StorageError) {
        guard FileManager.default.fileExists(atPath: backup) else { throw .io("\(backup) does not exist") }
        guard !FileManager.default.fileExists(atPath: path) else {
            throw .io("\(path) exists; restore seeds a new store only (move the old one away first)")
        }
        try inspect(path: backup, node: nil)
        do {
            var configuration = Configuration()
            configuration.readonly = true
            let source = try DatabaseQueue(path: backup, configuration: configuration)
            let target = try DatabaseQueue(path: path)
            try source.backup(to: target)
            try target.write { db in
                try db.execute(sql: "UPDATE meta SET value = ? WHERE key = 'node'", arguments: ["\(node.rawValue)"])
                // The log segments it counted are the source's.
                try db.execute(sql: "DELETE FROM meta WHERE key = 'log_applied_through'")
                try db.execute(sql: "UPDATE raft_state SET voted_for = NULL")
            }
            try target.close()
            try source.close()
        } catch {
            for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) }
            throw .io("restoring \(backup) to \(path): \(error)")
        }
    }

    /// The bytes the store takes on disk now: the database, its write-ahead log and the patch
    /// log's segments (every file named after `path`).
    public var bytesOnDisk: Int {
        let directory = (path as NSString).deletingLastPathComponent
        let name = (path as NSString).lastPathComponent
        let files = (try? FileManager.default.contentsOfDirectory(atPath: directory.isEmpty ? "." : directory)) ?? []
        return files.filter { $0.hasPrefix(name) }.reduce(0) { total, file in
            let attributes = try? FileManager.default.attributesOfItem(atPath: (directory as NSString).appendingPathComponent(file))
            return total + ((attributes?[.size] as? NSNumber)?.intValue ?? 0)
        }
    }

    private static func createSchema(_ db: Database, node: NodeID) throws {
        try db.execute(sql: """
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS raft_state (id INTEGER PRIMARY KEY CHECK (id = 1), term INTEGER NOT NULL,
                voted_for INTEGER);
            CREATE TABLE IF NOT EXISTS raft_snapshot (id INTEGER PRIMARY KEY CHECK (id = 1), last_index INTEGER NOT NULL,
                generation INTEGER NOT NULL);
            CREATE TABLE IF NOT EXISTS raft_snapshot_chunks (generation INTEGER NOT NULL, number INTEGER NOT NULL, bytes BLOB NOT NULL,
                PRIMARY KEY (generation, number));
            CREATE TABLE IF NOT EXISTS raft_log (idx INTEGER PRIMARY KEY NOT NULL, entry BLOB NOT NULL);
            CREATE TABLE IF NOT EXISTS replica_state (id INTEGER PRIMARY KEY CHECK (id = 1), incarnation INTEGER NOT NULL);
            CREATE TABLE IF NOT EXISTS replica_slots (name TEXT PRIMARY KEY NOT NULL, slot BLOB NOT NULL);
            CREATE TABLE IF NOT EXISTS replica_deltas (seq INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, delta BLOB NOT NULL);
            CREATE INDEX IF NOT EXISTS replica_deltas_by_name ON replica_deltas (name);
            CREATE TABLE IF NOT EXISTS tx_committed (key TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL);
            CREATE TABLE IF NOT EXISTS tx_prepared (id BLOB PRIMARY KEY NOT NULL, writes BLOB NOT NULL);
            CREATE TABLE IF NOT EXISTS tx_decisions (id BLOB PRIMARY KEY NOT NULL, is_commit INTEGER NOT NULL);
            CREATE TABLE IF NOT EXISTS tx_state (id INTEGER PRIMARY KEY CHECK (id = 1), incarnation INTEGER NOT NULL);
            """)
        for (key, value) in [("format", format), ("version", "\(formatVersion)"), ("node", "\(node.rawValue)")] {
            try db.execute(sql: "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", arguments: [key, value])
        }
        if try String.fetchOne(db, sql: "SELECT value FROM meta WHERE key = 'version'") == "1" {
            // Format 1 kept the snapshot in the hard-state row, so every vote rewrote it: move it.
            if let blob = try Data.fetchOne(db, sql: "SELECT snapshot FROM raft_state WHERE id = 1 AND snapshot IS NOT NULL") {
                var reader = BinaryReader([UInt8](blob.prefix(10)))  // the encoding starts with the last index
                let lastIndex = try reader.readVarint()
                try db.execute(sql: "INSERT INTO raft_snapshot_chunks (generation, number, bytes) VALUES (1, 0, ?)", arguments: [blob])
                try db.execute(sql: "INSERT OR REPLACE INTO raft_snapshot (id, last_index, generation) VALUES (1, ?, 1)",
                               arguments: [Int64(bitPattern: lastIndex)])
            }
            try db.execute(sql: """
                UPDATE raft_state SET snapshot = NULL;
                UPDATE meta SET value = '2' WHERE key = 'version';
                """)
        }
        // Format 3 adds the deltas table (created above, empty): nothing to move.
        try db.execute(sql: "UPDATE meta SET value = '3' WHERE key = 'version' AND value = '2'")
    }

    // MARK: NodeStorage

    public func load() throws -> NodeDurableState {
        do {
            // The database is the whole state once every segment is applied: the current one is
            // closed, and the read below queues behind its application.
            try log?.rotateNow()
            let state = try queue.read { db in
                NodeDurableState(replication: try Self.loadReplication(db), raft: try Self.loadRaft(db),
                                 transactions: try Self.loadTransactions(db))
            }
            // A segment that failed to apply is not in what was read (it stays on disk, and the
            // next opening of the store applies it).
            try log?.check()
            return state
        } catch let error as StorageError {
            throw error
        } catch {
            throw StorageError.io("\(error)")
        }
    }

    public func persist(_ patches: [DurablePatch]) async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            persist(patches) { error in
                if let error { continuation.resume(throwing: error) } else { continuation.resume() }
            }
        }
    }

    /// The one write path. Under `everysec` the batch is appended to the log on the caller's
    /// thread and `completion` runs before this returns (unless the log is full: then both run
    /// on the log's waiting queue once a closed segment is applied); under `always` it runs on the store's
    /// writer thread once the transaction commits, so a node hops back to its own thread from
    /// there, not through the task pool.
    public func persist(_ patches: [DurablePatch], then completion: @escaping @Sendable ((any Error)?) -> Void) {
        if let log { return log.append(patches) { completion($0) } }
        // Joined on the writer's thread, not the caller's (the node's).
        queue.asyncWrite({ db in try Self.write(patches, replication: Self.joinedReplication(patches), db) },
                         completion: { _, result in
                             if case let .failure(error) = result { completion(StorageError.io("\(error)")) } else { completion(nil) }
                         })
    }

    /// The replication patches of a batch, joined (they touch only their own tables): a
    /// register written many times in one batch is written once, and the incarnation once, not
    /// once per update.
    private static func joinedReplication(_ patches: [DurablePatch]) -> ReplicaDurableState? {
        var replication: ReplicaDurableState?
        for case let .replication(patch) in patches { ReplicationInstance.accumulate(patch, into: &replication) }
        return replication
    }

    private static func write(_ patches: [DurablePatch], replication: ReplicaDurableState?, _ db: Database) throws {
        if let replication { try apply(replication, db) }
        for patch in patches {
            switch patch {
            case .replication: continue
            case let .raft(patch): try apply(patch, db)
            case let .transactions(patch): try apply(patch, db)
            }
        }
    }

    // MARK: Raft

    private static func apply(_ patch: RaftDurableState, _ db: Database) throws {
        if !patch.compaction { try applyHardState(patch, db) }
        if let snapshot = patch.snapshot {
            let bytes = snapshot.binaryEncoded()
            let generation = try nextGeneration(db)
            for (number, start) in stride(from: 0, to: bytes.count, by: snapshotChunkBytes).enumerated() {
                try writeChunk(bytes[start..<min(bytes.count, start + snapshotChunkBytes)], generation: generation, number: number, db)
            }
            try point(at: generation, lastIndex: snapshot.lastIndex, db)
        }
        if let from = patch.replaceFrom {
            try db.cachedStatement(sql: "DELETE FROM raft_log WHERE idx >= ?").execute(arguments: [Int64(bitPattern: from)])
        }
        for entry in patch.entries {
            try db.cachedStatement(sql: "INSERT OR REPLACE INTO raft_log (idx, entry) VALUES (?, ?)")
                           .execute(arguments: [Int64(bitPattern: entry.index), Data(entry.binaryEncoded())])
        }
    }

    /// A snapshot is kept in chunks of this many bytes, one row each.
    static let snapshotChunkBytes = 4 << 20

    private static func nextGeneration(_ db: Database) throws -> Int64 {
        let stored = try Int64.fetchOne(db, sql: "SELECT MAX(generation) FROM raft_snapshot_chunks") ?? 0
        let current = try Int64.fetchOne(db, sql: "SELECT generation FROM raft_snapshot WHERE id = 1") ?? 0
        return max(stored, current) + 1
    }

    private static func writeChunk(_ bytes: ArraySlice<UInt8>, generation: Int64, number: Int, _ db: Database) throws {
        try db.cachedStatement(sql: "INSERT OR REPLACE INTO raft_snapshot_chunks (generation, number, bytes) VALUES (?, ?, ?)")
                       .execute(arguments: [generation, number, Data(bytes)])
    }

    /// Makes the chunks of `generation` the snapshot, if it is newer than the stored one (a
    /// compaction written in the background may land after a newer installed snapshot), and,
    /// `dropping`, drops the log entries it covers and every other generation's chunks at once,
    /// or its own when it is not newer (else `dropCovered` drops them a piece at a time). Says
    /// whether it made it the snapshot.
    @discardableResult
    private static func point(at generation: Int64, lastIndex: UInt64, dropping: Bool = true, _ db: Database) throws -> Bool {
        let stored = try Int64.fetchOne(db, sql: "SELECT last_index FROM raft_snapshot WHERE id = 1").map { UInt64(bitPattern: $0) }
        guard stored.map({ $0 < lastIndex }) ?? true else {
            if dropping { try db.cachedStatement(sql: "DELETE FROM raft_snapshot_chunks WHERE generation = ?").execute(arguments: [generation]) }
            return false
        }
        try db.cachedStatement(sql: "INSERT OR REPLACE INTO raft_snapshot (id, last_index, generation) VALUES (1, ?, ?)")
                       .execute(arguments: [Int64(bitPattern: lastIndex), generation])
        guard dropping else { return true }
        try db.cachedStatement(sql: "DELETE FROM raft_snapshot_chunks WHERE generation != ?").execute(arguments: [generation])
        try db.cachedStatement(sql: "DELETE FROM raft_log WHERE idx <= ?").execute(arguments: [Int64(bitPattern: lastIndex)])
        return true
    }

    /// Rows a transaction of `dropCovered` drops from each table, at most.
    static let droppedPerTransaction = 8

    /// Drops up to `droppedPerTransaction` chunks of generations other than the snapshot's and
    /// as many log entries up to `lastIndex` (the snapshot covers them); says whether it
    /// dropped any. Dropping 200 MB of rows is seconds of SQLite reading and freeing pages: in
    /// one transaction it held up every batch behind it, and with them the Raft replies that
    /// wait for their batch (a leader lost its quorum for 2 s after each compaction).
    private static func dropCovered(upTo lastIndex: UInt64, _ db: Database) throws -> Bool {
        try db.cachedStatement(sql: """
            DELETE FROM raft_snapshot_chunks WHERE (generation, number) IN (SELECT generation, number FROM raft_snapshot_chunks
            WHERE generation != (SELECT generation FROM raft_snapshot WHERE id = 1) LIMIT ?)
            """).execute(arguments: [droppedPerTransaction])
        var dropped = db.changesCount
        try db.cachedStatement(sql: "DELETE FROM raft_log WHERE idx IN (SELECT idx FROM raft_log WHERE idx <= ? ORDER BY idx LIMIT ?)")
                       .execute(arguments: [Int64(bitPattern: lastIndex), droppedPerTransaction])
        dropped += db.changesCount
        return dropped > 0
    }

    /// A compaction is written in pieces, one transaction per chunk, so that the node's other
    /// batches (which replies wait for) go in between; the last transaction makes it the snapshot.
    public func persistInBackground(_ patch: DurablePatch) async throws {
        // The log keeps the order of everything in it: a snapshot written around it would be
        // overtaken by the older entries of a segment applied after it.
        if log != nil { return try await persist([patch]) }
        guard case let .raft(raft) = patch, raft.compaction, let snapshot = raft.snapshot else { return try await persist([patch]) }
        do {
            let bytes = snapshot.binaryEncoded()
            let chunk = Self.snapshotChunkBytes
            let generation = try await queue.write { db in
                let generation = try Self.nextGeneration(db)
                try Self.writeChunk(bytes[0..<min(bytes.count, chunk)], generation: generation, number: 0, db)
                return generation
            }
            for (number, start) in stride(from: chunk, to: bytes.count, by: chunk).enumerated() {
                try await queue.write { db in
                    try Self.writeChunk(bytes[start..<min(bytes.count, start + chunk)], generation: generation, number: number + 1, db)
                }
            }
            // The switch is one transaction; what the snapshot covers goes after, in pieces
            // (the load skips log entries that a snapshot covers, should a crash come between). A
            // compaction older than the stored snapshot leaves only its own chunks to drop.
            let switched = try await queue.write { db in try Self.point(at: generation, lastIndex: snapshot.lastIndex, dropping: false, db) }
            while try await queue.write({ db in try Self.dropCovered(upTo: switched ? snapshot.lastIndex : 0, db) }) {}
        } catch {
            throw StorageError.io("\(error)")
        }
    }

    private static func applyHardState(_ patch: RaftDurableState, _ db: Database) throws {
        try db.cachedStatement(sql: """
            INSERT INTO raft_state (id, term, voted_for) VALUES (1, ?, ?)
            ON CONFLICT (id) DO UPDATE SET term = excluded.term, voted_for = excluded.voted_for
            WHERE term IS NOT excluded.term OR voted_for IS NOT excluded.voted_for
            """).execute(arguments: [Int64(bitPattern: patch.term), patch.votedFor.map { Int64(bitPattern: $0.rawValue) }])
    }

    private static func loadRaft(_ db: Database) throws -> RaftDurableState? {
        guard let row = try Row.fetchOne(db, sql: "SELECT term, voted_for FROM raft_state WHERE id = 1") else { return nil }
        let term: Int64 = row["term"]
        let votedFor: Int64? = row["voted_for"]
        var snapshotBytes: [UInt8]?
        if let generation = try Int64.fetchOne(db, sql: "SELECT generation FROM raft_snapshot WHERE id = 1") {
            var bytes: [UInt8] = []
            for chunk in try Data.fetchAll(db, sql: "SELECT bytes FROM raft_snapshot_chunks WHERE generation = ? ORDER BY number",
                                           arguments: [generation]) {
                bytes.append(contentsOf: chunk)
            }
            snapshotBytes = bytes
        }
        var state = RaftDurableState(term: UInt64(bitPattern: term), votedFor: votedFor.map { NodeID(UInt64(bitPattern: $0)) },
                                     snapshot: try snapshotBytes.map { try decode(RaftSnapshot.self, Data($0), table: "raft_snapshot_chunks") })
        // Entries a snapshot covers may be left from a compaction cut short: not the log's.
        let covered = Int64(bitPattern: state.snapshot?.lastIndex ?? 0)
        for entry in try Data.fetchAll(db, sql: "SELECT entry FROM raft_log WHERE idx > ? ORDER BY idx", arguments: [covered]) {
            state.entries.append(try decode(LogEntry.self, entry, table: "raft_log"))
        }
        return state
    }

    // MARK: Available registers

    private static func apply(_ patch: ReplicaDurableState, _ db: Database) throws {
        try db.cachedStatement(sql: """
            INSERT INTO replica_state (id, incarnation) VALUES (1, ?)
            ON CONFLICT (id) DO UPDATE SET incarnation = max(incarnation, excluded.incarnation)
            """).execute(arguments: [Int64(bitPattern: patch.incarnation)])
        for (name, slot) in patch.slots.sorted(by: { $0.key < $1.key }) {
            try db.cachedStatement(sql: "INSERT OR REPLACE INTO replica_slots (name, slot) VALUES (?, ?)")
                           .execute(arguments: [name, Data(slot.binaryEncoded())])
            try db.cachedStatement(sql: "DELETE FROM replica_deltas WHERE name = ?").execute(arguments: [name])
        }
        for (name, deltas) in patch.deltas.sorted(by: { $0.key < $1.key }) {
            for delta in deltas {
                try db.cachedStatement(sql: "INSERT INTO replica_deltas (name, delta) VALUES (?, ?)").execute(arguments: [name, Data(delta.binaryEncoded())])
            }
        }
    }

    private static func loadReplication(_ db: Database) throws -> ReplicaDurableState? {
        guard let incarnation = try Int64.fetchOne(db, sql: "SELECT incarnation FROM replica_state WHERE id = 1") else { return nil }
        var slots: [String: EncodedSlot] = [:]
        for row in try Row.fetchAll(db, sql: "SELECT name, slot FROM replica_slots") {
            slots[row["name"]] = try decode(EncodedSlot.self, row["slot"], table: "replica_slots")
        }
        var deltas: [String: [EncodedSlot]] = [:]
        for row in try Row.fetchAll(db, sql: "SELECT name, delta FROM replica_deltas ORDER BY seq") {
            deltas[row["name"], default: []].append(try decode(EncodedSlot.self, row["delta"], table: "replica_deltas"))
        }
        return ReplicaDurableState(incarnation: UInt64(bitPattern: incarnation), slots: slots, deltas: deltas)
    }

    // MARK: Serializable registers

    private static func apply(_ patch: TransactionDurableState, _ db: Database) throws {
        for (key, value) in patch.committed.sorted(by: { $0.key < $1.key }) {
            try db.cachedStatement(sql: "INSERT OR REPLACE INTO tx_committed (key, value) VALUES (?, ?)").execute(arguments: [key, Data(value.binaryEncoded())])
        }
        for (id, writes) in patch.prepared.sorted(by: { $0.key < $1.key }) {
            try db.cachedStatement(sql: "INSERT OR REPLACE INTO tx_prepared (id, writes) VALUES (?, ?)")
                           .execute(arguments: [Data(id.binaryEncoded()), Data(writes.binaryEncoded())])
        }
        for (id, commit) in patch.decisions.sorted(by: { $0.key < $1.key }) {
            try db.cachedStatement(sql: "INSERT OR REPLACE INTO tx_decisions (id, is_commit) VALUES (?, ?)")
                           .execute(arguments: [Data(id.binaryEncoded()), commit])
        }
        for id in patch.resolved {
            try db.cachedStatement(sql: "DELETE FROM tx_prepared WHERE id = ?").execute(arguments: [Data(id.binaryEncoded())])
        }
        for id in patch.forgotten {
            try db.cachedStatement(sql: "DELETE FROM tx_decisions WHERE id = ?").execute(arguments: [Data(id.binaryEncoded())])
        }
        if patch.incarnation > 0 {
            try db.cachedStatement(sql: """
                INSERT INTO tx_state (id, incarnation) VALUES (1, ?)
                ON CONFLICT (id) DO UPDATE SET incarnation = max(incarnation, excluded.incarnation)
                """).execute(arguments: [Int64(bitPattern: patch.incarnation)])
        }
    }

    private static func loadTransactions(_ db: Database) throws -> TransactionDurableState? {
        var state = TransactionDurableState()
        for row in try Row.fetchAll(db, sql: "SELECT key, value FROM tx_committed") {
            state.committed[row["key"]] = try decode(TransactionValue.self, row["value"], table: "tx_committed")
        }
        for row in try Row.fetchAll(db, sql: "SELECT id, writes FROM tx_prepared") {
            state.prepared[try decode(TransactionID.self, row["id"], table: "tx_prepared")] =
                try decode([TransactionWrite].self, row["writes"], table: "tx_prepared")
        }
        for row in try Row.fetchAll(db, sql: "SELECT id, is_commit FROM tx_decisions") {
            state.decisions[try decode(TransactionID.self, row["id"], table: "tx_decisions")] = row["is_commit"]
        }
        state.incarnation = try Int64.fetchOne(db, sql: "SELECT incarnation FROM tx_state WHERE id = 1").map { UInt64(bitPattern: $0) } ?? 0
        return state == TransactionDurableState() ? nil : state
    }

    private static func decode<T: BinaryCodable>(_ type: T.Type, _ data: Data, table: String) throws -> T {
        do {
            return try T(binary: [UInt8](data))
        } catch {
            throw StorageError.undecodable(table: table, reason: "\(error)")
        }
    }
}
