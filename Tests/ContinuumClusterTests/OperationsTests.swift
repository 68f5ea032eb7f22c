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
