import Continuum
import ContinuumCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The commands that inject faults, for tests: cut and restore links, arm a crash. They are
/// admin commands, audited, and refused unless the node was started with `--fault-injection`.
enum FaultInjectionCommands {
    static let entries: [RedisCommandEntry] = [
        // CONTINUUM.PARTITION node...: drops every message to and from these nodes.
        entry("CONTINUUM.PARTITION", 1...Int.max) { connection, arguments in
            guard let transport = connection.transport else {
                throw RedisConnection.CommandError(message: "ERR this node has no network transport")
            }
            var peers: Set<NodeID> = []
            for word in arguments.map(RedisCommandTable.text) {
                guard let raw = UInt64(word.hasPrefix("n") ? String(word.dropFirst()) : word) else {
                    throw RedisConnection.CommandError(message: "ERR '\(word)' is not a node id")
                }
                peers.insert(NodeID(raw))
            }
            transport.block(peers)
            return .ok
        },
        // CONTINUUM.HEAL: restores every link.
        entry("CONTINUUM.HEAL", 0...Int.max) { connection, _ in
            connection.transport?.heal()
            return .ok
        },
        // CONTINUUM.CRASHPOINT point|none: the process ends, as kill -9, when it reaches `point`.
        entry("CONTINUUM.CRASHPOINT", 1...1) { connection, arguments in
            let word = RedisCommandTable.text(arguments[0]).lowercased()
            let node = connection.node
            if word == "none" {
                await node.armCrash(nil) {}
                return .ok
            }
            guard let point = Node.CrashPoint(rawValue: word) else {
                throw RedisConnection.CommandError(
                    message: "ERR unknown crash point '\(word)': \(Node.CrashPoint.allCases.map(\.rawValue).joined(separator: ", ")) or none")
            }
            let id = node.id
            await node.armCrash(point) {
                // As kill -9: no flush, no goodbye to peers or clients.
                let line = Array("continuum node n\(id.rawValue): crash point \(point.rawValue) reached, exiting\n".utf8)
                _ = line.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
                _exit(137)
            }
            return .ok
        },
    ]

    /// An admin command that runs only with fault injection on.
    private static func entry(_ name: String, _ arguments: ClosedRange<Int>,
                              _ run: @escaping @Sendable (RedisConnection, [[UInt8]]) async throws -> RESPReply) -> RedisCommandEntry {
        RedisCommandEntry(name: name, arguments: arguments, spec: CommandSpec(category: .admin, keys: .none), audited: true) {
            connection, arguments in
            guard connection.configuration.faultInjection else {
                throw RedisConnection.CommandError(message: "ERR \(name): fault injection is off on this node (start it with --fault-injection)")
            }
            return try await run(connection, arguments)
        }
    }
}
