import ArgumentParser
import ContinuumCore
import ContinuumNIO
import ContinuumStorage
import Foundation

/// `continuum backup`: a consistent copy of a live node's store, over its Redis-protocol port.
struct BackupCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backup",
        abstract: "Copy a running node's store to a file, without stopping it (CONTINUUM.BACKUP; an admin command).",
        discussion: """
            The copy holds every write the node made durable before the command, and, unless --local, every \
            linearizable write acknowledged anywhere in the cluster before it (the node catches up first; \
            without a leader that fails). Available registers are in it as far as they had reached the node. \
            Restore it with 'continuum restore FILE --data-dir DIR --id nK'. FILE must not exist. The user \
            signed in as needs the admin category.
            """)

    @Option(help: "The node's Redis-protocol address, host:port.")
    var node: String

    @Option(help: "The file to write (it must not exist).")
    var out: String

    @Flag(help: "Copy the node's state as it is, without first catching up with the cluster's linearizable writes.")
    var local = false

    /// The user needs the admin category.
    @OptionGroup var signIn: SignInOptions

    func run() async throws {
        let address = try NodeServerConfiguration.Address(parsing: node)
        guard !FileManager.default.fileExists(atPath: out) else { throw ValidationError("\(out) exists; give a new file") }
        let client: RESPClient
        do {
            client = try await RESPClient.connect(host: address.host, port: address.port, credentials: signIn.credentials, tls: signIn.tls)
        } catch {
            throw ValidationError("cannot connect to \(node): \(error)")
        }
        defer { Task { await client.close() } }
        let begun = try await client.send(["CONTINUUM.BACKUP", "BEGIN"] + (local ? ["LOCAL"] : []))
        guard case let .array(parts) = begun, parts.count == 2, case let .bulk(tokenBytes) = parts[0], case let .integer(total) = parts[1] else {
            throw ValidationError("\(node) refused the backup: \(begun)")
        }
        let token = String(decoding: tokenBytes, as: UTF8.self)
        let partial = out + ".partial"
        try? FileManager.default.removeItem(atPath: partial)
        guard FileManager.default.createFile(atPath: partial, contents: nil, attributes: [.posixPermissions: 0o600]), let handle = FileHandle(forWritingAtPath: partial) else {
            _ = try? await client.send(["CONTINUUM.BACKUP", "END", token])
            throw ValidationError("cannot write \(partial)")
        }
        var offset = 0
        var lastReport = ContinuousClock.now
        do {
            while offset < Int(total) {
                let reply = try await client.send(["CONTINUUM.BACKUP", "READ", token, "\(offset)"])
                guard case let .bulk(bytes) = reply, !bytes.isEmpty else {
                    throw ValidationError("\(node) stopped the backup at byte \(offset) of \(total): \(reply)")
                }
                try handle.write(contentsOf: bytes)
                offset += bytes.count
                if ContinuousClock.now - lastReport > .seconds(1) {
                    print("copied \(offset) of \(total) bytes")
                    lastReport = .now
                }
            }
            try handle.synchronize()
            try handle.close()
            _ = try await client.send(["CONTINUUM.BACKUP", "END", token])
            try FileManager.default.moveItem(atPath: partial, toPath: out)
        } catch {
            try? handle.close()
            try? FileManager.default.removeItem(atPath: partial)
            _ = try? await client.send(["CONTINUUM.BACKUP", "END", token])
            throw error
        }
        print("backed up \(total) bytes of \(node) to \(out)")
    }
}

/// `continuum restore`: seeds a node's store from a backup.
struct RestoreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore",
        abstract: "Seed a node's data directory from a backup, as node --id.",
        discussion: """
            The store gets every register, the Raft log, snapshot and term, and the committed transactions of \
            the backup, as node --id (the vote of the node it was copied from is dropped). It seeds a new node \
            or every node of a new cluster (restore the same file into each node's data directory); a node of \
            a running cluster must not be restored from an older copy of its own store, which would undo what \
            it acknowledged since. DIR must not hold a store yet.
            """)

    @Argument(help: "The backup file.")
    var file: String

    @Option(help: "The node's data directory (created if missing).")
    var dataDir: String

    @Option(help: "The node's id: n1, n2, ...")
    var id: String

    func run() throws {
        guard let raw = UInt64(id.hasPrefix("n") ? String(id.dropFirst()) : id), raw > 0 else {
            throw ValidationError("--id '\(id)' is not a node id (n1, n2, ...)")
        }
        try FileManager.default.createDirectory(atPath: dataDir, withIntermediateDirectories: true)
        let path = dataDir + "/node.sqlite"
        do {
            try SQLiteStore.restore(from: file, to: path, node: NodeID(raw))
        } catch {
            throw ValidationError("\(error)")
        }
        print("restored \(file) to \(path) as n\(raw)")
    }
}
