import ContinuumNIO
import Foundation
import Synchronization
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

    /// A field of INFO's text.
    static func field(_ info: String, _ name: String) -> String? {
        info.split(whereSeparator: \.isNewline).first { $0.hasPrefix(name + ":") }.map { String($0.dropFirst(name.count + 1)) }
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

/// `continuum backup` of a live node under load, and `continuum restore` into a new cluster.
@Suite(.serialized, .timeLimit(.minutes(5))) struct BackupRestoreTests {
    /// Writes under load until `stop`: linearizable SETs through the leader, and SADDs to an
    /// available set through `follower`; records what was acknowledged, in order.
    final class Load: Sendable {
        let keys = Mutex<[Int]>([])
        let members = Mutex<[Int]>([])
        let stop = Atomic<Bool>(false)
    }

    static func write(_ cluster: ProcessCluster, leader: Int, follower: Int, load: Load) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                guard let client = try? await cluster.client(leader) else { return }
                var index = 0
                while !load.stop.load(ordering: .relaxed) {
                    if (try? await client.send(["SET", "key\(index)", "value\(index)"])) == .ok { load.keys.withLock { $0.append(index) } }
                    index += 1
                }
                await client.close()
            }
            group.addTask {
                guard let client = try? await cluster.client(follower) else { return }
                var index = 0
                while !load.stop.load(ordering: .relaxed) {
                    if case .integer? = try? await client.send(["SADD", "cart", "item\(index)"]) { load.members.withLock { $0.append(index) } }
                    index += 1
                }
                await client.close()
            }
        }
    }

    @Test func aBackupOfAFollowerUnderLoadRestoresIntoANewClusterWithEverythingAcknowledgedBeforeIt() async throws {
        let cluster = try ProcessCluster()
        let file = cluster.directory + "-backup.sqlite"
        defer {
            cluster.down()
            cluster.remove()
            try? FileManager.default.removeItem(atPath: file)
        }
        try cluster.up()
        let leader = try #require(try await LargeStateTests.awaitLeader(cluster))
        let follower = leader % 3 + 1
        let setup = try await cluster.client(follower)
        #expect(try await setup.send(["CONTINUUM.DECLARE", "cart", "set", "available"]) == .ok)
        await setup.close()
        #expect(try await cluster.awaitDeclaration(of: "cart", as: "available"))

        let load = Load()
        let writers = Task { await Self.write(cluster, leader: leader, follower: follower, load: load) }
        try await Task.sleep(for: .milliseconds(1500))
        // Acknowledged before the backup began: all of it must be in the copy.
        let keysBefore = load.keys.withLock { $0 }
        let membersBefore = load.members.withLock { $0 }
        let output = try cluster.cli(["backup", "--node", "127.0.0.1:\(cluster.respPort(follower))", "--out", file])
        try await Task.sleep(for: .milliseconds(300))
        load.stop.store(true, ordering: .relaxed)
        await writers.value
        print("backup under load: \(keysBefore.count) SETs and \(membersBefore.count) SADDs acknowledged before it; \(output)")
        #expect(keysBefore.count > 20 && membersBefore.count > 20)
        cluster.down()

        // A new cluster of three nodes, each seeded from the one copy.
        let restored = try ProcessCluster()
        defer {
            restored.down()
            restored.remove()
        }
        for node in 1...3 {
            try restored.cli(["restore", file, "--data-dir", "\(restored.directory)/n\(node)", "--id", "n\(node)"])
        }
        try restored.up()
        let newLeader = try #require(try await LargeStateTests.awaitLeader(restored))
        let client = try await restored.client(newLeader)
        var missing: [String] = []
        for index in keysBefore {
            let value = try await client.send(["GET", "key\(index)"])
            if value != .bulk(Array("value\(index)".utf8)) { missing.append("key\(index)=\(value)") }
        }
        #expect(missing.isEmpty, "acknowledged before the backup, missing after restore: \(missing.prefix(10))")
        let members = try await client.send(["SMEMBERS", "cart"])
        guard case let .array(items) = members else { Issue.record("SMEMBERS answered \(members)"); return }
        let present = Set(items.compactMap { if case let .bulk(bytes) = $0 { String(decoding: bytes, as: UTF8.self) } else { nil } })
        let lost = membersBefore.filter { !present.contains("item\($0)") }
        #expect(lost.isEmpty, "SADDs acknowledged before the backup, missing after restore: \(lost.prefix(10))")
        // The restored cluster takes new writes.
        #expect(try await client.send(["SET", "after", "restore"]) == .ok)
        #expect(try await client.send(["CONTINUUM.POLICY", "cart"]) == .bulk(Array("available".utf8)))
        await client.close()
    }

    /// BEGIN first catches up with the linearizable writes acknowledged anywhere: a follower
    /// cut off from the leader refuses (LOCAL copies what it has), and once healed, BEGIN
    /// returns only after it applied what the leader had committed.
    @Test func aBackupOfAFollowerWaitsForTheWritesItMissed() async throws {
        let cluster = try ProcessCluster()
        defer {
            cluster.down()
            cluster.remove()
        }
        try cluster.up(["--fault-injection"])
        let leader = try #require(try await LargeStateTests.awaitLeader(cluster))
        let follower = leader % 3 + 1
        let cutOff = try await cluster.client(follower)
        #expect(try await cutOff.send(["CONTINUUM.PARTITION"] + (1...3).filter { $0 != follower }.map { "n\($0)" }) == .ok)
        let writer = try await cluster.client(leader)
        for index in 0..<50 { #expect(try await writer.send(["SET", "missed\(index)", "v"]) == .ok) }
        let committed = try #require(await RealClusterTests.info(cluster, leader, "raft_commit_index").flatMap { UInt64($0) })
        await writer.close()

        let refused = try await cutOff.send(["CONTINUUM.BACKUP", "BEGIN"])
        guard case let .error(message) = refused else { Issue.record("a cut-off follower began a backup: \(refused)"); return }
        #expect(message.hasPrefix("UNAVAILABLE"), "\(message)")
        let local = try await cutOff.send(["CONTINUUM.BACKUP", "BEGIN", "LOCAL"])
        guard case let .array(parts) = local, case let .bulk(token)? = parts.first else { Issue.record("BEGIN LOCAL: \(local)"); return }
        #expect(try await cutOff.send(["CONTINUUM.BACKUP", "END", .init(decoding: token, as: UTF8.self)]) == .ok)
        let appliedCutOff = await RealClusterTests.info(cluster, follower, "raft_applied_index").flatMap { UInt64($0) } ?? 0
        #expect(appliedCutOff < committed)

        // Healed, and at once (on the same connection) a backup: it waits for the missed writes.
        #expect(try await cutOff.send(["CONTINUUM.HEAL"]) == .ok)
        let begun = try await cutOff.send(["CONTINUUM.BACKUP", "BEGIN"])
        guard case let .array(parts) = begun, case let .bulk(token)? = parts.first else { Issue.record("BEGIN after the heal: \(begun)"); return }
        guard case let .bulk(info) = try await cutOff.send(["INFO"]) else { Issue.record("no INFO"); return }
        let applied = OperationsTests.field(String(decoding: info, as: UTF8.self), "raft_applied_index").flatMap { UInt64($0) } ?? 0
        #expect(applied >= committed, "applied \(applied), the leader had committed \(committed) before the backup")
        #expect(try await cutOff.send(["CONTINUUM.BACKUP", "END", .init(decoding: token, as: UTF8.self)]) == .ok)
        await cutOff.close()
    }

    @Test func aBackupNeverOverwritesAFileAndRestoreNeverOverwritesAStore() async throws {
        let cluster = try ProcessCluster(nodes: 1)
        defer {
            cluster.down()
            cluster.remove()
        }
        try cluster.up()
        let file = cluster.directory + "/existing"
        try Data("keep me".utf8).write(to: URL(fileURLWithPath: file))
        #expect(throws: (any Error).self) { try cluster.cli(["backup", "--node", "127.0.0.1:\(cluster.respPort(1))", "--out", file]) }
        #expect(FileManager.default.contents(atPath: file) == Data("keep me".utf8))
        // Not a store: refused, nothing created.
        #expect(throws: (any Error).self) { try cluster.cli(["restore", file, "--data-dir", cluster.directory + "/n9", "--id", "n9"]) }
        #expect(!FileManager.default.fileExists(atPath: cluster.directory + "/n9/node.sqlite"))
        // Over a node's own store: refused.
        let copy = cluster.directory + "/copy.sqlite"
        try cluster.cli(["backup", "--node", "127.0.0.1:\(cluster.respPort(1))", "--out", copy])
        #expect(throws: (any Error).self) { try cluster.cli(["restore", copy, "--data-dir", cluster.directory + "/n1", "--id", "n1"]) }
        // The node's copy was deleted once read.
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: cluster.directory + "/n1").filter { $0.hasPrefix("backup-") }
        #expect(leftovers.isEmpty, "\(leftovers)")
    }
}

/// `continuum check --model list-append`: its exit statuses (0 strict serializable, 1 not,
/// naming the anomaly, 2 a malformed history).
@Suite struct CheckCommandTests {
    static func check(_ lines: [String]) throws -> (status: Int32, output: String) {
        let cluster = try ProcessCluster(nodes: 1)
        let path = NSTemporaryDirectory() + "continuum-check-\(UUID().uuidString).jsonl"
        defer { try? FileManager.default.removeItem(atPath: path) }
        try (lines.joined(separator: "\n") + "\n").write(toFile: path, atomically: true, encoding: .utf8)
        return try cluster.run(["check", "--model", "list-append", "--history", path])
    }

    static let serial = [
        #"{"process":0,"type":"invoke","f":"txn","value":[["append","x",1]],"time":1}"#,
        #"{"process":0,"type":"ok","f":"txn","value":[["append","x",1]],"time":2}"#,
        #"{"process":1,"type":"invoke","f":"txn","value":[["r","x",null]],"time":3}"#,
    ]

    @Test func exitStatusesSayTheVerdict() throws {
        let valid = try Self.check(Self.serial + [#"{"process":1,"type":"ok","f":"txn","value":[["r","x",[1]]],"time":4}"#])
        #expect(valid.status == 0 && valid.output.hasPrefix("strict serializable: 2 transactions"), "\(valid)")
        let stale = try Self.check(Self.serial + [#"{"process":1,"type":"ok","f":"txn","value":[["r","x",[]]],"time":4}"#,
                                                   #"{"process":2,"type":"invoke","f":"txn","value":[["r","x",null]],"time":5}"#,
                                                   #"{"process":2,"type":"ok","f":"txn","value":[["r","x",[1]]],"time":6}"#])
        #expect(stale.status == 1 && stale.output.contains("G2: anti-dependency cycle, with real time"), "\(stale)")
        let malformed = try Self.check(Self.serial + [#"{"process":1,"type":"ok""#])
        #expect(malformed.status == 2 && malformed.output.contains("line 4"), "\(malformed)")
    }
}
