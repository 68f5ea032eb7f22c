import ArgumentParser
import ContinuumCore
import ContinuumNIO
import Foundation

extension ClusterCommand {
    /// `continuum cluster status`: one line per node, from each node's INFO.
    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show each node's role, term, commit and applied index, reachable peers, certified staleness, registers and store size.",
            discussion: """
                The nodes are those of a local cluster (--data-dir, as 'cluster up' recorded them) or the ones named \
                with --node host:port (repeat it). Each is asked for INFO over its Redis-protocol port. A node that \
                does not answer within --timeout is shown as down, with the reason. Exit status 0 when every node \
                answered, 1 when one did not. --json prints one object per node instead of the table.
                """)

        @Option(help: "A local cluster's directory (cluster.json).")
        var dataDir: String?

        @Option(name: .customLong("node"), help: "A node's Redis-protocol address, host:port (repeat for each).")
        var nodes: [String] = []

        @Option(help: "The default user's password (AUTH), when the nodes need one and --data-dir does not say it.")
        var password: String?

        @Option(help: "Connect over TLS, trusting this CA (PEM), when --data-dir does not say it.")
        var tlsCa: String?

        @Option(help: "Milliseconds to wait for each node (100...60000).")
        var timeout = 1000

        @Flag(help: "Print JSON: an array with one object per node.")
        var json = false

        func validate() throws {
            guard (dataDir == nil) != nodes.isEmpty else { throw ValidationError("give either --data-dir or --node (not both)") }
            guard nodes.count <= 1024 else { throw ValidationError("at most 1024 --node") }
            guard (100...60_000).contains(timeout) else { throw ValidationError("--timeout must be 100...60000 ms") }
            for node in nodes { _ = try NodeServerConfiguration.Address(parsing: node) }
        }

        /// A node to ask: its name, address and how to connect.
        struct Target {
            var name: String
            var address: String
            var credentials: Credentials?
            var tls: ClientTLS?
        }

        /// What one node said (nil `fields`: it did not answer, for `reason`).
        struct Answer: Encodable {
            var node: String
            var address: String
            var up: Bool
            var reason: String?
            var fields: [String: String]
        }

        func targets() throws -> [Target] {
            let credentials = password.map { Credentials(password: $0) }
            let tls = tlsCa.map(ClientTLS.init(ca:))
            guard let dataDir else {
                return nodes.map { Target(name: $0, address: $0, credentials: credentials, tls: tls) }
            }
            let record = try Record.load(URL(fileURLWithPath: dataDir).standardizedFileURL.path)
            return record.members.map {
                Target(name: $0.id, address: $0.resp, credentials: credentials ?? ClusterCommand.credentials($0.arguments),
                       tls: tls ?? ClusterCommand.clientTLS($0.arguments))
            }
        }

        static func ask(_ target: Target, timeout: Duration) async -> Answer {
            var answer = Answer(node: target.name, address: target.address, up: false, reason: nil, fields: [:])
            do {
                let address = try NodeServerConfiguration.Address(parsing: target.address)
                let client = try await RESPClient.connect(host: address.host, port: address.port, timeout: timeout,
                                                          credentials: target.credentials, tls: target.tls)
                defer { Task { await client.close() } }
                switch try await client.send(["INFO"]) {
                case let .bulk(bytes):
                    answer.fields = Self.fields(String(decoding: bytes, as: UTF8.self))
                    answer.up = true
                    if let name = answer.fields["continuum_node"] { answer.node = name }
                case let .error(message):
                    answer.reason = message
                case let other:
                    answer.reason = "INFO answered \(other)"
                }
            } catch {
                let text = "\(error)"
                answer.reason = text.contains("Connection refused") ? "connection refused" : text
            }
            return answer
        }

        /// INFO's `key:value` lines (sections and blank lines skipped).
        static func fields(_ info: String) -> [String: String] {
            var fields: [String: String] = [:]
            for line in info.split(whereSeparator: \.isNewline) where !line.hasPrefix("#") {
                guard let colon = line.firstIndex(of: ":") else { continue }
                fields[String(line[..<colon])] = String(line[line.index(after: colon)...])
            }
            return fields
        }

        static func bytes(_ text: String?) -> String {
            guard let text, let count = Double(text) else { return "-" }
            let units = ["B", "KiB", "MiB", "GiB", "TiB"]
            var value = count, unit = 0
            while value >= 1024, unit < units.count - 1 {
                value /= 1024
                unit += 1
            }
            return unit == 0 ? "\(Int(value)) B" : String(format: "%.1f %@", value, units[unit])
        }

        /// The table: a header and one row per node, columns padded to their widest cell.
        static func table(_ answers: [Answer]) -> String {
            let header = ["node", "address", "state", "role", "term", "commit", "applied", "reachable peers",
                          "staleness available", "staleness consensus", "registers a/l/s", "store"]
            var rows = [header]
            for answer in answers {
                guard answer.up else {
                    rows.append([answer.node, answer.address, "down: \(answer.reason ?? "no answer")"])
                    continue
                }
                let f = answer.fields
                func ms(_ key: String) -> String { f[key].map { $0 == "none" ? "none" : "\($0) ms" } ?? "-" }
                let peers = f["peers_reachable"].map { $0.isEmpty ? "none" : $0 } ?? "-"
                let registers = [f["registers_available"], f["registers_linearizable"], f["registers_serializable"]]
                    .map { $0 ?? "-" }.joined(separator: "/")
                rows.append([answer.node, answer.address, "up", f["raft_role"] ?? "-", f["raft_term"] ?? "-",
                             f["raft_commit_index"] ?? "-", f["raft_applied_index"] ?? "-", peers,
                             ms("certified_staleness_available_ms"), ms("certified_staleness_consensus_ms"), registers,
                             bytes(f["store_bytes"])])
            }
            // A down row's reason runs on past the columns it spans.
            let widths = (0..<header.count).map { column in rows.filter { $0.count == header.count }.map { $0[column].count }.max() ?? 0 }
            return rows.map { row in
                row.enumerated().map { column, cell in
                    column == row.count - 1 ? cell : cell.padding(toLength: max(widths[column], cell.count), withPad: " ", startingAt: 0)
                }.joined(separator: "  ")
            }.joined(separator: "\n")
        }

        func run() async throws {
            let timeout = Duration.milliseconds(timeout)
            var answers: [Answer] = []
            for target in try targets() { answers.append(await Self.ask(target, timeout: timeout)) }
            if json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                print(String(decoding: try encoder.encode(answers), as: UTF8.self))
            } else {
                print(Self.table(answers))
            }
            if answers.contains(where: { !$0.up }) { throw ExitCode(1) }
        }
    }
}
