import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Three node processes, each in a Linux network namespace of its own with its own address on
/// a bridge (the bridge in a namespace of its own too, so the host's network is untouched):
/// nothing reaches a node over loopback, and a node's link can be cut with `ip link set down`.
/// Clients run inside the namespaces (`ip netns exec … continuum client`), signed in with a
/// password, since no client is on loopback either.
final class NamespaceCluster {
    static let password = "netns-test-password"
    let tag: String
    let subnet: String
    let directory: String
    let executable: String
    var processes: [Int: Process] = [:]

    /// Whether this process may create network namespaces (root, with `ip`), and why not.
    static let unavailableReason: String? = {
        guard FileManager.default.isExecutableFile(atPath: "/usr/sbin/ip") || FileManager.default.isExecutableFile(atPath: "/sbin/ip") else {
            return "no ip command (iproute2)"
        }
        let name = "ctprobe\(getpid() % 100_000)"
        guard run(["netns", "add", name]).status == 0 else { return "ip netns add failed (needs root or CAP_SYS_ADMIN)" }
        _ = run(["netns", "del", name])
        return nil
    }()

    @discardableResult
    static func run(_ arguments: [String], executable: String = "/usr/sbin/ip") -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: FileManager.default.isExecutableFile(atPath: executable) ? executable : "/sbin/ip")
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        do { try process.run() } catch { return (-1, "\(error)") }
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        return (process.terminationStatus, output)
    }

    init(executable: String) throws {
        self.executable = executable
        let id = Int(getpid()) % 10_000
        tag = "ct\(id)"
        subnet = "10.213.\(id % 250)"
        directory = NSTemporaryDirectory() + "continuum-netns-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        tearDownNetwork()  // what a killed earlier run of this process id left
        let steps: [[String]] = [
            ["netns", "add", "\(tag)-br"],
            ["netns", "exec", "\(tag)-br", "ip", "link", "add", "br0", "type", "bridge"],
            ["netns", "exec", "\(tag)-br", "ip", "link", "set", "br0", "up"],
        ] + (1...3).flatMap { node -> [[String]] in
            let namespace = "\(tag)-n\(node)"
            return [
                ["netns", "add", namespace],
                ["link", "add", "\(tag)h\(node)", "type", "veth", "peer", "name", "\(tag)p\(node)"],
                ["link", "set", "\(tag)h\(node)", "netns", "\(tag)-br"],
                ["link", "set", "\(tag)p\(node)", "netns", namespace],
                ["netns", "exec", "\(tag)-br", "ip", "link", "set", "\(tag)h\(node)", "master", "br0", "up"],
                ["netns", "exec", namespace, "ip", "addr", "add", "\(address(node))/24", "dev", "\(tag)p\(node)"],
                ["netns", "exec", namespace, "ip", "link", "set", "\(tag)p\(node)", "up"],
                ["netns", "exec", namespace, "ip", "link", "set", "lo", "up"],
            ]
        }
        for step in steps {
            let (status, output) = Self.run(step)
            guard status == 0 else {
                tearDown()
                throw NamespaceError(description: "ip \(step.joined(separator: " ")) failed: \(output)")
            }
        }
    }

    struct NamespaceError: Error, CustomStringConvertible { let description: String }

    func address(_ node: Int) -> String { "\(subnet).\(node)" }

    func start(_ node: Int) throws {
        let secret = directory + "/secret"
        if !FileManager.default.fileExists(atPath: secret) {
            FileManager.default.createFile(atPath: secret, contents: Data("netns-test-cluster-secret-0123456789\n".utf8),
                                           attributes: [.posixPermissions: 0o600])
        }
        var arguments = ["netns", "exec", "\(tag)-n\(node)", executable, "node", "--id", "n\(node)",
                         "--listen", "\(address(node)):7000", "--resp", "\(address(node)):6379",
                         "--data-dir", "\(directory)/n\(node)", "--cluster-secret-file", secret, "--requirepass", Self.password]
        for other in 1...3 where other != node { arguments += ["--peer", "n\(other)=\(address(other)):7000"] }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
        process.arguments = arguments
        let log = "\(directory)/n\(node).log"
        FileManager.default.createFile(atPath: log, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        processes[node] = process
    }

    /// A command to `node` from inside its namespace: the reply as `continuum client` prints it,
    /// and whether it was not an error.
    func send(_ node: Int, _ command: [String]) -> (reply: String, ok: Bool) {
        let (status, output) = Self.run(["netns", "exec", "\(tag)-n\(node)", executable, "client", "--host", address(node),
                                         "--port", "6379", "--password", Self.password] + command)
        return (output.trimmingCharacters(in: .whitespacesAndNewlines), status == 0)
    }

    /// Cuts (or restores) `node`'s only link, at the bridge.
    func setLink(_ node: Int, up: Bool) {
        Self.run(["netns", "exec", "\(tag)-br", "ip", "link", "set", "\(tag)h\(node)", up ? "up" : "down"])
    }

    /// Retries `send` every 100 ms until `accept` holds (true) or `seconds` pass (false).
    func await(_ node: Int, _ command: [String], seconds: Int = 20, _ accept: ((reply: String, ok: Bool)) -> Bool) async throws -> Bool {
        let deadline = ContinuousClock.now + .seconds(seconds)
        while ContinuousClock.now < deadline {
            if accept(send(node, command)) { return true }
            try await Task.sleep(for: .milliseconds(100))
        }
        return false
    }

    func log(_ node: Int) -> String {
        String(decoding: FileManager.default.contents(atPath: "\(directory)/n\(node).log") ?? Data(), as: UTF8.self)
    }

    func tearDownNetwork() {
        for node in 1...3 { Self.run(["netns", "del", "\(tag)-n\(node)"]) }
        Self.run(["netns", "del", "\(tag)-br"])
    }

    func tearDown() {
        for process in processes.values where process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        tearDownNetwork()
        try? FileManager.default.removeItem(atPath: directory)
    }
}

@Suite(.serialized, .timeLimit(.minutes(3))) struct NamespaceClusterTests {
    static var executable: String {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        return ProcessInfo.processInfo.environment["CONTINUUM_EXECUTABLE"] ?? root.appendingPathComponent(".build/debug/continuum").path
    }

    /// One node's link cut at the bridge: the majority keeps taking linearizable writes, the
    /// cut-off node refuses them (`UNAVAILABLE`), both sides take available writes, and after the
    /// heal every node has everything.
    @Test(.enabled(if: NamespaceCluster.unavailableReason == nil,
                   "network namespaces: \(NamespaceCluster.unavailableReason ?? "available") (skipped)"))
    func aCutLinkKeepsTheMajorityLinearizableAndBothSidesAvailable() async throws {
        let cluster = try NamespaceCluster(executable: Self.executable)
        defer { cluster.tearDown() }
        for node in 1...3 { try cluster.start(node) }
        for node in 1...3 {
            let serving = try await cluster.await(node, ["PING"]) { $0.reply == "PONG" }
            #expect(serving, "n\(node) did not serve:\n\(cluster.log(node))")
            guard serving else { return }
        }
        let elected = try await cluster.await(1, ["SET", "before", "1"]) { $0.ok }
        #expect(elected, "no linearizable write within 20 s: \(cluster.send(1, ["INFO"]).reply)")
        #expect(cluster.send(1, ["CONTINUUM.DECLARE", "cart", "set", "available"]).ok)
        #expect(try await cluster.await(3, ["CONTINUUM.POLICY", "cart"]) { $0.reply == "\"available\"" || $0.reply == "available" })

        cluster.setLink(3, up: false)
        // The majority (n1, n2) elects a leader if n3 led, and takes linearizable writes.
        #expect(try await cluster.await(1, ["SET", "during", "1"]) { $0.ok }, "the majority took no linearizable write")
        // The minority refuses them, and never acknowledges one. (A write it forwarded to the
        // old leader before it knew of the cut may be answered INDETERMINATE: the request can
        // still arrive after the heal, and take effect.) Each attempt writes a key of its own.
        var minority: [(key: String, reply: String)] = []
        let deadline = ContinuousClock.now + .seconds(15)
        while ContinuousClock.now < deadline, !(minority.last?.reply.contains("UNAVAILABLE") ?? false) {
            let key = "minority\(minority.count)"
            minority.append((key, cluster.send(3, ["SET", key, "1"]).reply))
        }
        #expect(minority.last?.reply.contains("UNAVAILABLE") == true, "n3 never answered UNAVAILABLE: \(minority.suffix(3))")
        #expect(!minority.contains { $0.reply == "OK" }, "the cut-off node acknowledged a linearizable write: \(minority)")
        // Both sides take available writes.
        #expect(cluster.send(1, ["SADD", "cart", "from-majority"]).ok)
        #expect(cluster.send(3, ["SADD", "cart", "from-minority"]).ok)
        #expect(!cluster.send(1, ["SMEMBERS", "cart"]).reply.contains("from-minority"))

        cluster.setLink(3, up: true)
        #expect(try await cluster.await(3, ["GET", "during"]) { $0.reply.contains("1") && $0.ok }, "n3 never read the majority's write")
        for node in 1...3 {
            #expect(try await cluster.await(node, ["SMEMBERS", "cart"]) {
                $0.reply.contains("from-majority") && $0.reply.contains("from-minority")
            }, "n\(node) did not converge: \(cluster.send(node, ["SMEMBERS", "cart"]).reply)")
        }
        for attempt in minority where attempt.reply.contains("UNAVAILABLE") {
            #expect(cluster.send(1, ["GET", attempt.key]).reply.contains("nil"), "\(attempt.key) was refused, yet took effect")
        }
        print("the cut-off node's answers: \(minority.map(\.reply))")
    }
}
