import ContinuumNIO
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Day-two operations on real node processes: status.
@Suite(.serialized, .timeLimit(.minutes(3))) struct OperationsTests {
    /// The rows of `cluster status`'s table that start with a node's name.
    static func rows(_ output: String) -> [String: String] {
        var rows: [String: String] = [:]
        for line in output.split(separator: "\n") where line.hasPrefix("n") && line.dropFirst().first?.isNumber == true {
            rows[String(line.prefix { $0 != " " })] = String(line)
        }
        return rows
    }

    @Test func clusterStatusShowsEveryNodeAndSaysWhichIsDown() async throws {
        let cluster = try ProcessCluster()
        defer {
            cluster.down()
            cluster.remove()
        }
        try cluster.up()
        let client = try await cluster.client(await LargeStateTests.awaitLeader(cluster) ?? 1)
        for index in 0..<5 { #expect(try await client.send(["SET", "k\(index)", "v"]) == .ok) }
        #expect(try await client.send(["CONTINUUM.DECLARE", "cart", "set", "available"]) == .ok)
        #expect(try await client.send(["SADD", "cart", "apple"]) == .integer(1))
        await client.close()

        // Every node reports the 5 linearizable keys once it applied them, and the cart once it got it.
        var rows: [String: String] = [:]
        for _ in 0..<100 {
            rows = Self.rows(try cluster.cli(["cluster", "status", "--data-dir", cluster.directory]))
            if rows.count == 3, rows.values.allSatisfy({ $0.contains(" 1/5/0 ") }) { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(rows.keys.sorted() == ["n1", "n2", "n3"], "\(rows)")
        #expect(rows.values.allSatisfy { $0.contains(" up ") && $0.contains(" 1/5/0 ") && $0.contains("KiB") }, "\(rows)")
        #expect(rows.values.filter { $0.contains(" leader ") }.count == 1, "\(rows)")
        #expect(rows["n1"]?.contains("n2,n3") == true, "\(rows)")

        // INFO carries what the table shows.
        let applied = await RealClusterTests.info(cluster, 2, "raft_applied_index")
        let commit = await RealClusterTests.info(cluster, 2, "raft_commit_index")
        #expect(applied != nil && applied == commit)

        // A killed node is shown down, and the command fails.
        _ = try cluster.cli(["cluster", "kill", "--data-dir", cluster.directory, "--node", "n3"])
        do {
            _ = try cluster.cli(["cluster", "status", "--data-dir", cluster.directory])
            Issue.record("cluster status succeeded with n3 down")
        } catch {
            let rows = Self.rows("\(error)")
            #expect(rows["n3"]?.contains("down: connection refused") == true, "\(error)")
            #expect(rows["n1"]?.contains(" up ") == true, "\(error)")
        }

        // One node by address, as JSON.
        let json = try cluster.cli(["cluster", "status", "--node", "127.0.0.1:\(cluster.respPort(2))", "--json"])
        let answers = try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [[String: Any]]
        #expect(answers?.count == 1)
        #expect(answers?.first?["node"] as? String == "n2")
        #expect((answers?.first?["fields"] as? [String: String])?["registers_available"] == "1")
    }
}

/// `continuum node`'s options from flags, the `CONTINUUM_*` environment and a `--config` file.
@Suite(.serialized, .timeLimit(.minutes(3))) struct NodeOptionSourceTests {
    /// Starts `continuum node` with `arguments` and `environment` (added to this process's,
    /// without its `CONTINUUM_*`); returns the process and its output file.
    static func start(_ cluster: ProcessCluster, _ arguments: [String], environment: [String: String]) throws -> (Process, String) {
        let output = cluster.directory + "/node-\(UUID().uuidString).log"
        try FileManager.default.createDirectory(atPath: cluster.directory, withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: output, contents: nil)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: cluster.executable)
        process.arguments = ["node"] + arguments
        process.environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("CONTINUUM_") }.merging(environment) { $1 }
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: output))
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        return (process, output)
    }

    /// Waits (up to 10 s) until the process exits; its status and output.
    static func exit(_ process: Process, _ output: String) async throws -> (Int32, String)? {
        for _ in 0..<200 where process.isRunning { try await Task.sleep(for: .milliseconds(50)) }
        guard !process.isRunning else { return nil }
        return (process.terminationStatus, String(decoding: FileManager.default.contents(atPath: output) ?? Data(), as: UTF8.self))
    }

    // Ports 5 and 9 of this process's range: a cluster test of this process uses 1 to 3.
    @Test func eachOptionComesFromItsFlagElseTheEnvironmentElseTheFile() async throws {
        let cluster = try ProcessCluster(nodes: 1)
        defer { cluster.remove() }
        try FileManager.default.createDirectory(atPath: cluster.directory, withIntermediateDirectories: true)
        let config = cluster.directory + "/node.json"
        // The file names every option below; the environment overrides two, a flag one of those.
        let file = """
            {"id": "n1", "listen": "127.0.0.1:\(cluster.peerPort(5))", "resp": "127.0.0.1:\(cluster.respPort(9))",
             "dataDirectory": "\(cluster.directory)/n1", "defaultPolicy": "serializable", "cluster": "from-file"}
            """
        try Data(file.utf8).write(to: URL(fileURLWithPath: config))
        let (process, output) = try Self.start(cluster, ["--default-policy", "available"], environment: [
            "CONTINUUM_CONFIG": config, "CONTINUUM_RESP": "127.0.0.1:\(cluster.respPort(5))",
            "CONTINUUM_DEFAULT_POLICY": "linearizable", "CONTINUUM_NO_SUCH_OPTION": "1",
        ])
        defer { process.terminate(); process.waitUntilExit() }
        var info: String?
        for _ in 0..<200 where info == nil {
            info = await RealClusterTests.info(cluster, 5, "default_policy")
            if info == nil { try await Task.sleep(for: .milliseconds(50)) }
        }
        // The environment's port (not the file's), the flag's policy (not the environment's).
        #expect(info == "available")
        #expect(await RealClusterTests.info(cluster, 5, "continuum_node") == "n1")
        let log = String(decoding: FileManager.default.contents(atPath: output) ?? Data(), as: UTF8.self)
        #expect(log.contains("ignoring CONTINUUM_NO_SUCH_OPTION"), "\(log)")
    }

    @Test(arguments: [
        (["CONTINUUM_MAXCLIENTS": "many"], "CONTINUUM_MAXCLIENTS='many' is not an integer"),
        (["CONTINUUM_INSECURE": "perhaps"], "CONTINUUM_INSECURE='perhaps' is not true or false"),
        (["CONTINUUM_PEERS": "n2=127.0.0.1:1,n2=127.0.0.1:2"], "CONTINUUM_PEERS: n2 is listed twice"),
        (["CONTINUUM_LISTEN": "nowhere"], "CONTINUUM_LISTEN='nowhere' is not host:port"),
    ])
    func aBadVariableIsRefusedByName(environment: [String: String], message: String) async throws {
        let cluster = try ProcessCluster(nodes: 1)
        defer { cluster.remove() }
        let base = ["CONTINUUM_ID": "n1", "CONTINUUM_LISTEN": "127.0.0.1:\(cluster.peerPort(5))",
                    "CONTINUUM_DATA_DIR": cluster.directory + "/n1"]
        let (process, output) = try Self.start(cluster, [], environment: base.merging(environment) { $1 })
        defer { if process.isRunning { process.terminate() } }
        let ended = try await Self.exit(process, output)
        #expect(ended?.0 != 0)
        #expect(ended?.1.contains(message) == true, "\(ended?.1 ?? "still running")")
        #expect(!FileManager.default.fileExists(atPath: cluster.directory + "/n1/node.sqlite"))
    }

    @Test func aConfigFileWithAnUnknownKeyIsRefused() async throws {
        let cluster = try ProcessCluster(nodes: 1)
        defer { cluster.remove() }
        try FileManager.default.createDirectory(atPath: cluster.directory, withIntermediateDirectories: true)
        let config = cluster.directory + "/node.json"
        try Data(#"{"id": "n1", "dataDir": "/tmp/x"}"#.utf8).write(to: URL(fileURLWithPath: config))
        let (process, output) = try Self.start(cluster, ["--config", config], environment: [:])
        defer { if process.isRunning { process.terminate() } }
        let ended = try await Self.exit(process, output)
        #expect(ended?.0 != 0)
        #expect(ended?.1.contains("unknown key dataDir") == true, "\(ended?.1 ?? "still running")")
    }
}
