import ArgumentParser
import ContinuumCore
import ContinuumNIO
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// `continuum cluster up|down|status|kill|restart`: a local cluster of node processes on loopback.
struct ClusterCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cluster",
        abstract: "Start, stop and inspect a local cluster of node processes on loopback.",
        subcommands: [Up.self, Down.self, Status.self, Kill.self, Restart.self])

    /// What `up` started, kept in DIR/cluster.json for the other subcommands.
    struct Record: Codable {
        struct Member: Codable {
            var id: String
            var pid: Int32
            var peer: String
            var resp: String
            var metrics: String?
            var arguments: [String]

            func line(pid: Int32) -> String {
                "\(id) peer=\(peer) resp=\(resp)" + (metrics.map { " metrics=\($0)" } ?? "") + " pid=\(pid)"
            }
        }

        var executable: String
        var members: [Member]

        static func path(_ directory: String) -> String { directory + "/cluster.json" }

        static func load(_ directory: String) throws -> Record {
            guard let data = FileManager.default.contents(atPath: path(directory)) else {
                throw ValidationError("no cluster in \(directory) (no cluster.json)")
            }
            return try JSONDecoder().decode(Record.self, from: data)
        }

        func save(_ directory: String) throws {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            try encoder.encode(self).write(to: URL(fileURLWithPath: Record.path(directory)))
            // It holds the nodes' arguments, a --requirepass password among them.
            try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: Record.path(directory))
        }
    }

    /// Whether the process runs: it exists and is not a zombie (a node that died after its
    /// launcher exited stays one until its new parent reaps it).
    static func isAlive(_ pid: Int32) -> Bool {
        guard kill(pid, 0) == 0 else { return false }
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return true }
        return stat[stat.index(after: close)...].split(separator: " ").first != "Z"
    }

    /// This program's own executable, to start nodes with.
    static func executable() -> String {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    }

    /// Starts one node process, its output appended to its log.
    static func launch(_ executable: String, _ arguments: [String], log: String) throws -> Int32 {
        if !FileManager.default.fileExists(atPath: log) { _ = FileManager.default.createFile(atPath: log, contents: nil) }
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        handle.seekToEndOfFile()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.standardOutput = handle
        process.standardError = handle
        process.standardInput = FileHandle.nullDevice
        try process.run()
        return process.processIdentifier
    }

    /// The default user's password a node was started with (`--requirepass`), to sign in with.
    static func credentials(_ arguments: [String]) -> Credentials? {
        guard let index = arguments.firstIndex(of: "--requirepass"), index + 1 < arguments.count else { return nil }
        return Credentials(password: arguments[index + 1])
    }

    /// The CA a node was started with (`--tls-ca`), for clients to trust.
    static func clientTLS(_ arguments: [String]) -> ClientTLS? {
        guard let index = arguments.firstIndex(of: "--tls-ca"), index + 1 < arguments.count else { return nil }
        return ClientTLS(ca: arguments[index + 1])
    }

    /// Waits until the node answers PING on its Redis port, and checks that the answer comes
    /// from the process just started (`process_id` in INFO), not from another one that holds
    /// the port (a cluster left up on the same ports: its node would answer, and the new one
    /// exit).
    static func waitServing(_ resp: String, pid: Int32, arguments: [String], until deadline: ContinuousClock.Instant) async throws -> RESPClient {
        let credentials = credentials(arguments), tls = clientTLS(arguments)
        let address = try NodeServerConfiguration.Address(parsing: resp)
        while ContinuousClock.now < deadline {
            guard isAlive(pid) else { throw ValidationError("the node process \(pid) exited") }
            if let client = try? await RESPClient.connect(host: address.host, port: address.port, timeout: .milliseconds(200),
                                                          credentials: credentials, tls: tls),
               (try? await client.send(["PING"])) == .simple("PONG") {
                if case let .bulk(bytes)? = try? await client.send(["INFO"]),
                   let line = String(decoding: bytes, as: UTF8.self).split(separator: "\r\n").first(where: { $0.hasPrefix("process_id:") }),
                   let answering = Int32(line.dropFirst("process_id:".count)), answering != pid {
                    await client.close()
                    throw ValidationError("""
                        \(resp) is answered by another process (pid \(answering)), not by the node just started (pid \(pid)): \
                        is another cluster up on these ports? Stop it ('continuum cluster down --data-dir DIR') or choose other \
                        ports (--base-port, --resp-base-port)
                        """)
                }
                return client
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw ValidationError("no answer on \(resp)")
    }

    /// Waits until one of the nodes says it leads the consensus group.
    static func waitLeader(_ clients: [RESPClient], until deadline: ContinuousClock.Instant) async throws {
        while ContinuousClock.now < deadline {
            for client in clients {
                if case let .bulk(bytes)? = try? await client.send(["INFO"]), String(decoding: bytes, as: UTF8.self).contains("raft_role:leader") {
                    return
                }
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw ValidationError("no leader elected")
    }

    /// The cluster's secret, `DIR/cluster-secret` (32 random bytes, hex, readable by the owner
    /// only), made on the first `up` and kept for later ones and restarts.
    static func secretFile(_ directory: String) throws -> String {
        let path = directory + "/cluster-secret"
        if FileManager.default.fileExists(atPath: path) { return path }
        let hex = Hex.encode(PeerHandshake.freshNonce())
        guard FileManager.default.createFile(atPath: path, contents: Data((hex + "\n").utf8), attributes: [.posixPermissions: 0o600]) else {
            throw ValidationError("cannot write \(path)")
        }
        return path
    }

    static func tail(_ path: String, lines: Int = 15) -> String {
        guard let data = FileManager.default.contents(atPath: path) else { return "(no log)" }
        return String(decoding: data, as: UTF8.self).split(separator: "\n").suffix(lines).joined(separator: "\n")
    }

    struct Up: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Start N node processes, wait until they serve and a leader is elected, print one line per node.")

        @Option(help: "How many nodes (1...64).")
        var nodes = 3

        @Option(help: "The cluster's directory: one data directory and log per node, and cluster.json.")
        var dataDir: String

        @Option(help: "Node i listens for peers on base-port + i.")
        var basePort = 7000

        @Option(help: "Node i serves the Redis protocol on resp-base-port + i.")
        var respBasePort = 6400

        @Option(help: "Node i serves metrics over HTTP (GET /metrics) on metrics-base-port + i (0: no metrics).")
        var metricsBasePort = 9400

        @Option(help: "The loopback (or other) address the nodes listen on.")
        var host = "127.0.0.1"

        @Option(help: "The policy of keys nobody declared.")
        var defaultPolicy = "linearizable"

        @Option(help: "Seconds to wait for the cluster to serve.")
        var timeout = 20

        @Option(help: "When the nodes acknowledge a write: always (after fsync) or everysec (fsync at least every second).")
        var fsync = "always"

        @Flag(help: "Start the nodes with --fault-injection (CONTINUUM.PARTITION, HEAL and crash points; for tests).")
        var faultInjection = false

        @Option(help: "The nodes' --election-timeout in milliseconds (default: the node's, 1000).")
        var electionTimeout: Int?

        @Option(help: "The nodes' --lazy-relay-delay in milliseconds (default: the node's, 500; 0: no lazy relays).")
        var lazyRelayDelay: Int?

        @Option(help: "The default user's password on every node (--requirepass): clients must AUTH first.")
        var requirepass: String?

        @Flag(help: "TLS on every port: makes a throwaway CA and node certificates in DIR/tls (ca.pem is what clients trust), mutual TLS between nodes.")
        var tls = false

        func validate() throws {
            guard (1...64).contains(nodes) else { throw ValidationError("--nodes must be 1...64") }
            guard ["always", "everysec"].contains(fsync) else { throw ValidationError("--fsync must be always or everysec") }
            if let electionTimeout, !NodeServerConfiguration.electionTimeoutRange.contains(electionTimeout) {
                throw ValidationError("--election-timeout must be in \(NodeServerConfiguration.electionTimeoutRange) ms")
            }
            if let lazyRelayDelay, !NodeServerConfiguration.lazyRelayDelayRange.contains(lazyRelayDelay) {
                throw ValidationError("--lazy-relay-delay must be in \(NodeServerConfiguration.lazyRelayDelayRange) ms")
            }
            guard basePort + nodes <= 65_535, respBasePort + nodes <= 65_535, metricsBasePort + nodes <= 65_535,
                  basePort >= 0, respBasePort >= 0, metricsBasePort >= 0 else {
                throw ValidationError("ports out of range")
            }
        }

        func run() async throws {
            let directory = URL(fileURLWithPath: dataDir).standardizedFileURL.path
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            if let existing = try? Record.load(directory), existing.members.contains(where: { isAlive($0.pid) }) {
                throw ValidationError("a cluster is already up in \(directory); run 'continuum cluster down --data-dir \(dataDir)' first")
            }
            let executable = ClusterCommand.executable()
            let secret = try ClusterCommand.secretFile(directory)
            let ids = (1...nodes).map { "n\($0)" }
            let certificates = tls ? try LocalCertificates.write(to: directory + "/tls", nodes: (1...nodes).map { NodeID(UInt64($0)) }, host: host)
                : [:]
            var record = Record(executable: executable, members: [])
            for (offset, id) in ids.enumerated() {
                let index = offset + 1
                var arguments = ["node", "--id", id, "--listen", "\(host):\(basePort + index)", "--resp", "\(host):\(respBasePort + index)",
                                 "--data-dir", "\(directory)/\(id)", "--default-policy", defaultPolicy, "--fsync", fsync,
                                 "--cluster-secret-file", secret]
                if faultInjection { arguments.append("--fault-injection") }
                if let electionTimeout { arguments += ["--election-timeout", "\(electionTimeout)"] }
                if let lazyRelayDelay { arguments += ["--lazy-relay-delay", "\(lazyRelayDelay)"] }
                if let requirepass { arguments += ["--requirepass", requirepass] }
                if let files = certificates[NodeID(UInt64(index))] {
                    arguments += ["--tls-cert", files.certificate, "--tls-key", files.key, "--tls-ca", files.ca]
                }
                let metrics = metricsBasePort > 0 ? "\(host):\(metricsBasePort + index)" : nil
                if let metrics { arguments += ["--metrics", metrics] }
                for (otherOffset, other) in ids.enumerated() where other != id {
                    arguments += ["--peer", "\(other)=\(host):\(basePort + otherOffset + 1)"]
                }
                try FileManager.default.createDirectory(atPath: "\(directory)/\(id)", withIntermediateDirectories: true)
                let pid = try launch(executable, arguments, log: "\(directory)/\(id)/node.log")
                record.members.append(.init(id: id, pid: pid, peer: "\(host):\(basePort + index)", resp: "\(host):\(respBasePort + index)",
                                            metrics: metrics, arguments: arguments))
            }
            try record.save(directory)
            let deadline = ContinuousClock.now + .seconds(timeout)
            var clients: [RESPClient] = []
            do {
                for member in record.members {
                    clients.append(try await ClusterCommand.waitServing(member.resp, pid: member.pid, arguments: member.arguments,
                                                                       until: deadline))
                }
                try await ClusterCommand.waitLeader(clients, until: deadline)
            } catch {
                for member in record.members {
                    print("\(member.id) log (\(directory)/\(member.id)/node.log):\n\(ClusterCommand.tail("\(directory)/\(member.id)/node.log"))")
                }
                for member in record.members where isAlive(member.pid) { kill(member.pid, SIGKILL) }
                throw ValidationError("the cluster did not come up: \(error)")
            }
            for client in clients { await client.close() }
            for member in record.members { print(member.line(pid: member.pid)) }
            if tls {
                let port = respBasePort + 1
                print("TLS on: redis-cli --tls --cacert \(directory)/tls/ca.pem -h \(host) -p \(port)"
                      + " (or continuum client --tls-ca \(directory)/tls/ca.pem --port \(port) ...)")
            }
        }
    }

    struct Down: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Stop the cluster's node processes (SIGTERM, then SIGKILL after 10 s).")

        @Option(help: "The cluster's directory.")
        var dataDir: String

        func run() async throws {
            let directory = URL(fileURLWithPath: dataDir).standardizedFileURL.path
            let record = try Record.load(directory)
            for member in record.members where isAlive(member.pid) { kill(member.pid, SIGTERM) }
            for member in record.members {
                let deadline = ContinuousClock.now + .seconds(10)
                while isAlive(member.pid) && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
                if isAlive(member.pid) {
                    kill(member.pid, SIGKILL)
                    print("\(member.id) killed after 10 s (pid \(member.pid))")
                } else {
                    print("\(member.id) stopped (pid \(member.pid))")
                }
            }
            try FileManager.default.removeItem(atPath: Record.path(directory))
        }
    }

    /// The cluster and one of its nodes, for `kill` and `restart`.
    struct NodeSelection: ParsableArguments {
        @Option(help: "The cluster's directory.")
        var dataDir: String

        @Option(help: "The node: n1, n2, ...")
        var node: String

        var directory: String { URL(fileURLWithPath: dataDir).standardizedFileURL.path }

        /// The cluster's record and the index of the selected node in it.
        func load() throws -> (Record, Int) {
            let record = try Record.load(directory)
            guard let index = record.members.firstIndex(where: { $0.id == node }) else { throw ValidationError("no node \(node)") }
            return (record, index)
        }
    }

    struct Kill: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "kill -9 one node of the cluster (fault injection).")

        @OptionGroup var selection: NodeSelection

        func run() async throws {
            let (record, index) = try selection.load()
            let member = record.members[index]
            guard isAlive(member.pid) else { throw ValidationError("\(member.id) is not running") }
            kill(member.pid, SIGKILL)
            while isAlive(member.pid) { try await Task.sleep(for: .milliseconds(5)) }
            print("\(member.id) killed (pid \(member.pid))")
        }
    }

    struct Restart: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Start a stopped or killed node again, from its store.")

        @OptionGroup var selection: NodeSelection

        @Option(help: "Seconds to wait for it to serve.")
        var timeout = 20

        func run() async throws {
            var (record, index) = try selection.load()
            let member = record.members[index]
            guard !isAlive(member.pid) else { throw ValidationError("\(member.id) is running") }
            let pid = try ClusterCommand.launch(record.executable, member.arguments, log: "\(selection.directory)/\(member.id)/node.log")
            record.members[index].pid = pid
            try record.save(selection.directory)
            let client = try await ClusterCommand.waitServing(member.resp, pid: pid, arguments: member.arguments,
                                                              until: .now + .seconds(timeout))
            await client.close()
            print(member.line(pid: pid))
        }
    }
}
