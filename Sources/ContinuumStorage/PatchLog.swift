import Continuum
import ContinuumCore
import ContinuumProtocols
import Foundation
import Synchronization

/// The append-only log of a store in `everysec` mode: each batch of patches is one record,
/// written with `write(2)` (in the operating system's hands when the call returns, so it
/// survives the process's crash) and fsynced at least once a second, as Redis's AOF with
/// `appendfsync everysec` is. The log is a sequence of segment files next to the database
/// (`PATH-log-N`); a segment that reaches `rotationBytes` is fsynced, closed and handed to
/// `compact`, which applies it to the database and deletes it. Opening a store applies the
/// segments a crash left behind.
///
/// A segment starts with an 8-byte marker; a record is the payload's length and CRC-32 (four
/// bytes each, little-endian) followed by the payload: a count and the patches, each a tag
/// byte and its instance's binary encoding. A record torn by a crash of the operating system
/// can only be in the newest segment (older ones were fsynced when they were closed): there
/// the log ends at the first record that does not check, and what follows is dropped. Anywhere
/// else such a record is corruption, and the store is not opened.
final class PatchLog: @unchecked Sendable {
    static let marker: [UInt8] = Array("CNTMLOG1".utf8)
    /// A record longer than this is not one the log wrote (its length field is damaged).
    static let maximumRecordBytes = 1 << 30

    let basePath: String
    let rotationBytes: Int
    private let queue: DispatchQueue
    /// Where an append waits while `pendingSegmentsMax` closed segments wait for the database,
    /// so that the caller's thread (a node's event loop, which also carries its heartbeats and
    /// reads) never blocks on SQLite: only the acknowledgement waits.
    private let waiting: DispatchQueue
    /// Hands a closed segment's number to compaction (called with `lock` held, in order).
    private let compact: @Sendable (PatchLog, UInt64) -> Void
    /// Guards the current segment (appends and rotations run on their caller's thread, the
    /// once-a-second sync on `queue`).
    private let lock = NSLock()
    private var descriptor: Int32 = -1
    private var segment: UInt64
    private var segmentBytes = 0
    private var unsynced = false
    /// Appends handed to `waiting` and not written yet (guarded by `lock`): while any is, later
    /// appends go there too, behind it, so records keep the order of the calls. A node has one
    /// batch in flight at a time, so it hands over at most one.
    private var deferred = 0
    /// Set once a segment could not be compacted: the log refuses every later batch, so that a
    /// later segment is never applied past one that was not.
    private let failure = Mutex<StorageError?>(nil)
    /// Closed segments not yet applied to the database, at most: while this many wait, an append
    /// waits on `waiting` for one to be applied before it writes (backpressure on
    /// acknowledgements, and a bound on the disk the log takes: this many segments plus the one
    /// being written).
    static let pendingSegmentsMax = 4
    /// Guards `pendingSegments` (a condition, not a semaphore: the log may go away with
    /// applications still running).
    private let pendingChanged = NSCondition()
    private var pendingSegments = 0
    /// Testing: the next append writes half its record, then fails as a full disk would.
    let plantedWriteFailure = Atomic<Bool>(false)

    /// Opens a new segment numbered after `after` (every older one is already applied).
    init(basePath: String, after: UInt64, rotationBytes: Int, label: String,
         compact: @escaping @Sendable (PatchLog, UInt64) -> Void) throws(StorageError) {
        self.basePath = basePath
        self.rotationBytes = rotationBytes
        self.compact = compact
        queue = DispatchQueue(label: label)
        waiting = DispatchQueue(label: label + "-waiting")
        segment = after
        try openNextSegment()
    }

    deinit {
        if descriptor >= 0 {
            _ = fsync(descriptor)
            close(descriptor)
        }
    }

    static func segmentPath(_ basePath: String, _ number: UInt64) -> String { "\(basePath)-log-\(number)" }

    /// The numbers of the segments on disk, oldest first.
    static func segments(basePath: String) throws(StorageError) -> [UInt64] {
        let url = URL(fileURLWithPath: basePath)
        let directory = url.deletingLastPathComponent().path
        let prefix = url.lastPathComponent + "-log-"
        do {
            return try FileManager.default.contentsOfDirectory(atPath: directory).compactMap { name in
                name.hasPrefix(prefix) ? UInt64(name.dropFirst(prefix.count)) : nil
            }.sorted()
        } catch {
            throw .io("listing \(directory): \(error)")
        }
    }

    /// The batches of segment `number`, in order. `newest`: a record that does not check ends
    /// the log there (the file is cut back to it); otherwise it is corruption.
    static func read(basePath: String, segment number: UInt64, newest: Bool) throws(StorageError) -> [[DurablePatch]] {
        let path = segmentPath(basePath, number)
        guard let data = FileManager.default.contents(atPath: path) else { throw .io("cannot read \(path)") }
        let bytes = [UInt8](data)
        /// A record that does not check: the end of the newest segment, corruption in any other.
        func damaged(at offset: Int, _ reason: String) throws(StorageError) {
            guard newest else { throw .corrupt(path: path, reason: "\(reason) at byte \(offset) of a closed segment") }
            guard truncate(path, off_t(offset)) == 0 else { throw .io("cannot cut \(path) back to \(offset) bytes: errno \(errno)") }
        }
        guard bytes.count >= marker.count, Array(bytes[0..<marker.count]) == marker else {
            // A crash while the newest segment was being created leaves it shorter than its marker.
            if newest && bytes.count < marker.count { return [] }
            throw .corrupt(path: path, reason: "no log marker")
        }
        var batches: [[DurablePatch]] = []
        var offset = marker.count
        while offset < bytes.count {
            guard bytes.count - offset >= 8 else {
                try damaged(at: offset, "a torn record header")
                break
            }
            let length = Int(littleEndian32(bytes, offset)), checksum = littleEndian32(bytes, offset + 4)
            guard length <= maximumRecordBytes, bytes.count - offset - 8 >= length else {
                try damaged(at: offset, "a record of \(length) bytes past the end")
                break
            }
            let payload = Array(bytes[(offset + 8)..<(offset + 8 + length)])
            guard payload.withUnsafeBytes({ CRC32.checksum($0) }) == checksum else {
                try damaged(at: offset, "a record whose checksum does not match")
                break
            }
            do {
                var reader = BinaryReader(payload)
                let count = try reader.readCount(minimumBytesEach: 2)
                var batch: [DurablePatch] = []
                batch.reserveCapacity(count)
                for _ in 0..<count { batch.append(try DurablePatch(from: &reader)) }
                batches.append(batch)
            } catch {
                // The checksum matched: the log wrote this, and this build cannot read it.
                throw .undecodable(table: path, reason: "\(error)")
            }
            offset += 8 + length
        }
        return batches
    }

    /// Appends `patches` as one record, on the caller's thread (a node's own: a write to the
    /// operating system's cache, where a writer thread of the log's own cost two thread hops
    /// per batch), and calls `completion` before returning, once `write(2)` returned for all of
    /// the record (nil), or with the error (the segment is cut back to where it was, so the
    /// log stays readable and the batch counts as never written). While `pendingSegmentsMax`
    /// closed segments wait for the database, or an earlier append waits, the record is
    /// written on `waiting` once one is applied, and `completion` runs there: the caller's
    /// thread goes on.
    func append(_ patches: [DurablePatch], then completion: @escaping @Sendable (StorageError?) -> Void) {
        var writer = BinaryWriter()
        writer.writeRaw([0, 0, 0, 0, 0, 0, 0, 0])
        writer.writeVarint(UInt64(patches.count))
        for patch in patches { patch.encode(to: &writer) }
        var record = writer.bytes
        let length = record.count - 8
        // A record the reader would refuse is never written (nothing is acknowledged).
        guard length <= Self.maximumRecordBytes else {
            return completion(.io("a batch of \(length) bytes exceeds the log's record limit of \(Self.maximumRecordBytes)"))
        }
        let checksum = record.withUnsafeBytes { CRC32.checksum(UnsafeRawBufferPointer(rebasing: $0[8...])) }
        for index in 0..<4 {
            record[index] = UInt8(truncatingIfNeeded: UInt32(length) >> (8 * index))
            record[4 + index] = UInt8(truncatingIfNeeded: checksum >> (8 * index))
        }
        lock.lock()
        guard deferred == 0, !segmentsAtMax() else {
            deferred += 1
            lock.unlock()
            waiting.async { [self, record] in
                waitForPendingSegments()
                lock.lock()
                let error = appendLocked(record)
                deferred -= 1
                lock.unlock()
                completion(error)
            }
            return
        }
        let error = appendLocked(record)
        lock.unlock()
        completion(error)
    }

    /// Writes `record` at the end of the current segment, closing the segment once it is full;
    /// nil, or why the record was not written. Called with `lock` held.
    private func appendLocked(_ record: [UInt8]) -> StorageError? {
        if let failed = failure.withLock({ $0 }) { return failed }
        var written = 0
        var error: StorageError?
        if plantedWriteFailure.load(ordering: .relaxed), plantedWriteFailure.exchange(false, ordering: .relaxed) {
            written = record.count / 2
            _ = record.withUnsafeBytes { Foundation.write(descriptor, $0.baseAddress, written) }
            error = .io("planted write failure after \(written) of \(record.count) bytes")
        }
        while error == nil, written < record.count {
            let result = record.withUnsafeBytes { Foundation.write(descriptor, $0.baseAddress! + written, record.count - written) }
            if result < 0 {
                if errno == EINTR { continue }
                error = .io("writing \(Self.segmentPath(basePath, segment)): errno \(errno)")
            } else {
                written += result
            }
        }
        if let error {
            if ftruncate(descriptor, off_t(segmentBytes)) != 0 {
                failure.withLock { $0 = .io("a failed write could not be cut back from \(Self.segmentPath(basePath, segment)): errno \(errno)") }
            }
            return error
        }
        segmentBytes += record.count
        unsynced = true
        if segmentBytes >= rotationBytes {
            do throws(StorageError) { try rotate() } catch { failure.withLock { $0 = error } }
        }
        return nil
    }

    /// Fsyncs what was written since the last sync (the once-a-second sync of `everysec`), on
    /// the log's queue, outside `lock`: appends go on meanwhile. A rotation may close the
    /// descriptor during the fsync; it fsyncs the closed segment itself, so nothing is missed
    /// (and should the number name another file by then, fsyncing that file is harmless).
    func sync() {
        queue.async { [self] in
            lock.lock()
            let open = descriptor, dirty = unsynced
            unsynced = false
            lock.unlock()
            guard dirty, open >= 0 else { return }
            if fsync(open) != 0 {
                lock.lock()
                if descriptor == open { unsynced = true }
                lock.unlock()
            }
        }
    }

    /// Closes the current segment (if it holds a record) and hands it to compaction; returns
    /// once that is enqueued, so work the compactor's queue takes afterwards sees it applied.
    func rotateNow() throws(StorageError) {
        lock.lock()
        var outcome: Result<Bool, StorageError> = .success(false)
        if segmentBytes > Self.marker.count {
            do throws(StorageError) {
                try rotate()
                outcome = .success(true)
            } catch {
                failure.withLock { if $0 == nil { $0 = error } }
                outcome = .failure(error)
            }
        }
        lock.unlock()
        if try outcome.get() { waitForPendingSegments() }
        try check()
    }

    /// Throws the failure that stopped the log, if one did.
    func check() throws(StorageError) {
        if let failed = failure.withLock({ $0 }) { throw failed }
    }

    /// A closed segment was applied, or failed to be (`compact` calls one or the other).
    func compacted() {
        pendingChanged.lock()
        pendingSegments -= 1
        pendingChanged.signal()
        pendingChanged.unlock()
    }

    /// Records that a segment could not be applied: later batches are refused (and the
    /// segment no longer counts as pending).
    func fail(_ error: StorageError) {
        failure.withLock { if $0 == nil { $0 = error } }
        compacted()
    }

    /// Whether `pendingSegmentsMax` closed segments wait for the database (so a rotation now
    /// would make one more).
    private func segmentsAtMax() -> Bool {
        pendingChanged.lock()
        defer { pendingChanged.unlock() }
        return pendingSegments >= Self.pendingSegmentsMax
    }

    /// Blocks while `pendingSegmentsMax` closed segments wait for the database, so the next
    /// rotation makes at most that many (called without `lock`, so the once-a-second sync is
    /// never held up).
    private func waitForPendingSegments() {
        pendingChanged.lock()
        while pendingSegments >= Self.pendingSegmentsMax { pendingChanged.wait() }
        pendingChanged.unlock()
    }

    /// Closes the current segment and opens the next one (with `lock` held). The closed
    /// segment is fsynced before the next one exists, so a crash of the operating system can
    /// tear only the newest segment (the reader's rule); its application is queued on the
    /// database's writer.
    private func rotate() throws(StorageError) {
        guard fsync(descriptor) == 0 else { throw .io("fsync of \(Self.segmentPath(basePath, segment)): errno \(errno)") }
        close(descriptor)
        descriptor = -1
        let closed = segment
        try openNextSegment()
        pendingChanged.lock()
        pendingSegments += 1
        pendingChanged.unlock()
        compact(self, closed)
    }

    private func openNextSegment() throws(StorageError) {
        segment += 1
        let path = Self.segmentPath(basePath, segment)
        let opened = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0o644)
        guard opened >= 0 else { throw .io("cannot create \(path): errno \(errno)") }
        let written = Self.marker.withUnsafeBytes { Foundation.write(opened, $0.baseAddress, Self.marker.count) }
        // The marker and the file's name are on disk before any record is acknowledged in it.
        let directory = open(URL(fileURLWithPath: path).deletingLastPathComponent().path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        defer { if directory >= 0 { close(directory) } }
        guard written == Self.marker.count, fsync(opened) == 0, directory >= 0, fsync(directory) == 0 else {
            close(opened)
            throw .io("cannot start \(path): errno \(errno)")
        }
        descriptor = opened
        segmentBytes = Self.marker.count
        unsynced = false
    }

    private static func littleEndian32(_ bytes: [UInt8], _ offset: Int) -> UInt32 {
        (0..<4).reduce(0) { $0 | UInt32(bytes[offset + $1]) << (8 * $1) }
    }
}

extension DurablePatch: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) {
        switch self {
        case let .replication(state):
            writer.writeByte(0)
            state.encode(to: &writer)
        case let .raft(state):
            writer.writeByte(1)
            state.encode(to: &writer)
        case let .transactions(state):
            writer.writeByte(2)
            state.encode(to: &writer)
        }
    }

    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        switch try reader.readByte() {
        case 0: self = .replication(try ReplicaDurableState(from: &reader))
        case 1: self = .raft(try RaftDurableState(from: &reader))
        case 2: self = .transactions(try TransactionDurableState(from: &reader))
        case let tag: throw .invalid("durable patch tag \(tag)")
        }
    }
}

/// CRC-32 as Ethernet, zlib and PNG use it (reflected, polynomial 0xEDB88320).
enum CRC32 {
    static let table: [UInt32] = (0..<256).map { index in
        (0..<8).reduce(UInt32(index)) { crc, _ in crc & 1 == 1 ? (crc >> 1) ^ 0xEDB8_8320 : crc >> 1 }
    }

    static func checksum(_ bytes: UnsafeRawBufferPointer) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        table.withUnsafeBufferPointer { table in
            for byte in bytes { crc = table[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8) }
        }
        return crc ^ 0xFFFF_FFFF
    }
}
