import Continuum
import ContinuumCore
import ContinuumProtocols
import ContinuumStorage
import Foundation
import Synchronization

/// Online backups of a node's store, over its Redis-protocol port, in pieces (a store may be
/// larger than one reply may be):
///
/// - `CONTINUUM.BACKUP BEGIN [LOCAL]`: writes a consistent copy of the store
///   (`SQLiteStore.backup(to:)`) into the data directory and answers `[token, bytes]`. First,
///   unless `LOCAL`, it waits until this node has applied every linearizable write
///   acknowledged anywhere before the command (a read at the linearizable level served here,
///   after this node applied the leader's read index), so that a follower's copy misses none; without a leader that fails
///   (`-UNAVAILABLE`), and `LOCAL` copies the node's state as it is.
/// - `CONTINUUM.BACKUP READ token offset`: up to `chunkBytes` of the copy from `offset`
///   (an empty string at its end).
/// - `CONTINUUM.BACKUP END token`: deletes the copy.
///
/// Admin commands, audited. One backup at a time per node; a copy nobody read for
/// `abandonedAfter` is deleted by the next BEGIN, and a node deletes the copies an earlier life
/// left behind when it starts. What the copy holds of available registers is what had reached
/// this node (their staleness, as INFO reports it).
public final class BackupFiles: Sendable {
    public static let chunkBytes = 4 << 20
    public static let abandonedAfter = Duration.seconds(600)
    static let prefix = "backup-"
    static let suffix = ".sqlite"

    let store: SQLiteStore
    let directory: String

    struct Open {
        var token: String
        var path: String
        var bytes: Int
        var lastUsed: ContinuousClock.Instant
    }

    /// Nothing, a copy being written (another BEGIN is refused), or a copy open for READs.
    enum State {
        case writing
        case open(Open)
    }

    private let state = Mutex<State?>(nil)

    /// Deletes the copies a previous life of the node left in `directory`.
    public init(store: SQLiteStore, directory: String) {
        self.store = store
        self.directory = directory
        for file in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        where file.hasPrefix(Self.prefix) && file.hasSuffix(Self.suffix) {
            try? FileManager.default.removeItem(atPath: directory + "/" + file)
        }
    }

    func begin() throws(RedisConnection.CommandError) -> (token: String, bytes: Int) {
        let now = ContinuousClock.now
        let abandoned = try state.withLock { (state: inout State?) throws(RedisConnection.CommandError) -> String? in
            switch state {
            case nil:
                state = .writing
                return nil
            case .writing:
                throw .init(message: "ERR a backup is being written; try again when it is done")
            case let .open(current):
                guard now - current.lastUsed >= Self.abandonedAfter else {
                    throw .init(message: "ERR backup \(current.token) is in progress; END it first (or it is dropped after \(Self.abandonedAfter.components.seconds) s unread)")
                }
                state = .writing
                return current.path
            }
        }
        if let abandoned { try? FileManager.default.removeItem(atPath: abandoned) }
        let token = Hex.encode((0..<8).map { _ in UInt8.random(in: 0...255) })
        let path = directory + "/" + Self.prefix + token + Self.suffix
        do {
            let bytes = try store.backup(to: path)
            state.withLock { $0 = .open(Open(token: token, path: path, bytes: bytes, lastUsed: .now)) }
            return (token, bytes)
        } catch {
            state.withLock { $0 = nil }
            throw .init(message: "ERR backup failed: \(error)")
        }
    }

    func current(_ token: String) throws(RedisConnection.CommandError) -> Open {
        try state.withLock { (state: inout State?) throws(RedisConnection.CommandError) -> Open in
            guard case var .open(current) = state, current.token == token else { throw .init(message: "ERR no backup \(token) in progress") }
            current.lastUsed = .now
            state = .open(current)
            return current
        }
    }

    func read(_ token: String, offset: Int) throws(RedisConnection.CommandError) -> [UInt8] {
        let current = try current(token)
        guard offset >= 0, offset <= current.bytes else {
            throw .init(message: "ERR offset \(offset) is outside the backup's \(current.bytes) bytes")
        }
        guard offset < current.bytes else { return [] }
        guard let handle = FileHandle(forReadingAtPath: current.path) else { throw .init(message: "ERR the backup's file is gone") }
        defer { try? handle.close() }
        do {
            try handle.seek(toOffset: UInt64(offset))
            return [UInt8](try handle.read(upToCount: min(Self.chunkBytes, current.bytes - offset)) ?? Data())
        } catch {
            throw .init(message: "ERR reading the backup: \(error)")
        }
    }

    func end(_ token: String) throws(RedisConnection.CommandError) {
        let current = try current(token)
        state.withLock { $0 = nil }
        try? FileManager.default.removeItem(atPath: current.path)
    }

    /// Waits until this node has applied every linearizable write acknowledged before (anywhere
    /// in the cluster): a read at the `linearizable` level served here, which Raft answers only
    /// once this node applied the leader's read index. Such a read asks the leader it knows
    /// once: one started while no leader was known (just after a partition heals, say) waits
    /// out its bound unanswered. So each attempt is bounded by `attempt`, and a failed one is
    /// tried again until `latency` has passed.
    static let attempt = Duration.milliseconds(250)

    static func catchUp(_ node: Node, latency: Duration) async throws(RedisConnection.CommandError) {
        guard await node.consensusStatus != nil else { return }
        let deadline = ContinuousClock.now + latency
        var last = "no answer"
        while ContinuousClock.now < deadline {
            let bound = min(attempt, deadline - .now)
            let answer = await node.raftBoundedRead(.read(key: ""), levels: [.linearizable(within: bound)], minimumIndex: 0)
            switch answer {
            case let .success(read) where read.receipt.guarantee == .linearizable: return
            case let .success(read): last = "the read delivered \(read.receipt.guarantee)"
            case let .failure(error): last = "\(error)"
            }
            try? await Task.sleep(for: .milliseconds(20))
        }
        throw .init(message: "UNAVAILABLE \(last): this node cannot tell that it holds every acknowledged linearizable write (BEGIN LOCAL copies its state as it is)")
    }

    static let entries: [RedisCommandEntry] = [
        RedisCommandEntry(name: "CONTINUUM.BACKUP", arguments: 1...3, spec: CommandSpec(category: .admin, keys: .none), audited: true) {
            connection, arguments in
            guard let backups = connection.configuration.backups else {
                throw RedisConnection.CommandError(message: "ERR this node has no store to back up")
            }
            let words = arguments.map(RedisCommandTable.text)
            switch (words[0].uppercased(), words.count) {
            case ("BEGIN", 1), ("BEGIN", 2):
                if words.count == 2 {
                    guard words[1].uppercased() == "LOCAL" else {
                        throw RedisConnection.CommandError(message: "ERR usage: CONTINUUM.BACKUP BEGIN [LOCAL]")
                    }
                } else {
                    try await catchUp(connection.node, latency: connection.configuration.requestLatency)
                }
                let (token, bytes) = try backups.begin()
                return .array([.bulk(Array(token.utf8)), .integer(Int64(bytes))])
            case ("READ", 3):
                guard let offset = Int(words[2]) else { throw RedisConnection.CommandError(message: "ERR offset '\(words[2])' is not an integer") }
                return .bulk(try backups.read(words[1], offset: offset))
            case ("END", 2):
                try backups.end(words[1])
                return .ok
            default:
                throw RedisConnection.CommandError(message: "ERR usage: CONTINUUM.BACKUP BEGIN [LOCAL] | READ token offset | END token")
            }
        },
    ]
}
