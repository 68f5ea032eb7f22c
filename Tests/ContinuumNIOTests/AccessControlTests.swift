import Continuum
import ContinuumCore
import ContinuumNIO
import Foundation
import Logging
import NIOCore
import NIOPosix
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Every door of the Redis port: who may sign in, and what each user may run, touch and use.
@Suite(.timeLimit(.minutes(1))) struct AccessControlTests {
    /// Writes `text` to a fresh file and returns its path.
    static func file(_ text: String) -> String {
        let path = NSTemporaryDirectory() + "continuum-acl-\(UUID().uuidString)"
        FileManager.default.createFile(atPath: path, contents: Data(text.utf8))
        return path
    }

    /// With `requirepass`, nothing but AUTH, HELLO ... AUTH and QUIT is served before the client
    /// signs in, a wrong password changes nothing, and the right one opens the connection.
    @Test func aClientMustSignInWhenThereIsAPassword() async throws {
        let cluster = try await LocalCluster(nodes: 1, defaultPolicy: "available") { $0.requirePassword = "s3cret-password" }
        let port = cluster.servers[0].boundRESPPort!
        let stranger = cluster.clients[0]
        #expect(try await stranger.send(["PING"]) == .error("NOAUTH Authentication required."))
        #expect(try await stranger.send(["SET", "k", "stolen"]) == .error("NOAUTH Authentication required."))
        #expect(try await stranger.send(["CONTINUUM.PARTITION", "n2"]) == .error("NOAUTH Authentication required."))
        let wrong = RESPReply.error("WRONGPASS invalid username-password pair or user is disabled.")
        #expect(try await stranger.send(["AUTH", "guess"]) == wrong)
        #expect(try await stranger.send(["AUTH", "default", "guess"]) == wrong)
        #expect(try await stranger.send(["HELLO", "3", "AUTH", "default", "guess"]) == wrong)
        #expect(try await stranger.send(["HELLO", "3"]).description.contains("NOAUTH"))
        #expect(try await stranger.send(["GET", "k"]) == .error("NOAUTH Authentication required."))
        #expect(try await stranger.send(["AUTH", "s3cret-password"]) == .ok)
        #expect(try await stranger.send(["GET", "k"]) == .null, "the refused SET wrote nothing")
        #expect(try await stranger.send(["SET", "k", "mine"]) == .ok)
        #expect(try await stranger.send(["ACL", "WHOAMI"]) == .bulk("default"))
        // HELLO 3 AUTH signs in and switches protocol in one step.
        let hello = try await RESPClient.connect(host: "127.0.0.1", port: port)
        guard case .map = try await hello.send(["HELLO", "3", "AUTH", "default", "s3cret-password"]) else {
            Issue.record("HELLO 3 AUTH did not answer a map")
            return
        }
        #expect(try await hello.send(["GET", "k"]) == .bulk("mine"))
        await hello.close()
        // The Swift clients take credentials; wrong ones fail with the server's refusal.
        let signed = try await RESPClient.connect(host: "127.0.0.1", port: port, credentials: Credentials(password: "s3cret-password"))
        #expect(try await signed.send(["GET", "k"]) == .bulk("mine"))
        await signed.close()
        await #expect(throws: RESPClientError.self) {
            _ = try await RESPClient.connect(host: "127.0.0.1", port: port, credentials: Credentials(password: "guess"))
        }
        let library = try await ContinuumClient.connect(to: ["127.0.0.1:\(port)"],
                                                        configuration: .init(credentials: Credentials(password: "s3cret-password")))
        #expect(try await library.string("k").get() == Array("mine".utf8))
        await library.close()
        await cluster.shutdown()
    }

    static let acl = """
        # Continuum ACL test file
        user default off
        user admin on >admin-password ~* +@all
        user cart on >cart-password ~cart:* +@read +@write +@connection policies:available,bounded
        user reader on #\(sha256Hex("reader-password")) ~* +@read +@connection
        """

    static func sha256Hex(_ text: String) -> String {
        // The digest the node keeps, computed the way an operator would (sha256sum).
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["sha256sum"]
        let input = Pipe(), output = Pipe()
        process.standardInput = input
        process.standardOutput = output
        try? process.run()
        input.fileHandleForWriting.write(Data(text.utf8))
        try? input.fileHandleForWriting.close()
        process.waitUntilExit()
        return String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self).prefix(64).description
    }

    /// A user outside its key patterns, categories or policies is refused, and the refused
    /// command changes nothing; nobody may name the policy catalogue; only admins partition.
    @Test func usersAreConfinedToTheirKeysCommandsAndPolicies() async throws {
        let path = Self.file(Self.acl)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let lines = CapturedLog()
        var logger = Logger(label: "acl-test") { _ in lines }
        logger.logLevel = .notice
        let cluster = try await LocalCluster(nodes: 1, defaultPolicy: "available", faultInjection: true, logger: logger) { $0.aclFile = path }
        let port = cluster.servers[0].boundRESPPort!
        func client(_ user: String, _ password: String) async throws -> RESPClient {
            try await RESPClient.connect(host: "127.0.0.1", port: port, credentials: Credentials(user: user, password: password))
        }
        // The default user is off: a connection starts signed out.
        #expect(try await cluster.clients[0].send(["PING"]) == .error("NOAUTH Authentication required."))
        #expect(try await cluster.clients[0].send(["AUTH", "anything"]).description.contains("WRONGPASS"))
        let admin = try await client("admin", "admin-password")
        let cart = try await client("cart", "cart-password")
        let reader = try await client("reader", "reader-password")
        #expect(try await admin.send(["CONTINUUM.POLICY", "cart:orders", "serializable"]) == .ok)
        // Keys.
        #expect(try await cart.send(["SET", "cart:1", "tea"]) == .ok)
        #expect(try await cart.send(["SET", "user:1", "x"]) == .error("NOPERM No permissions to access a key"))
        #expect(try await cart.send(["DEL", "cart:1", "user:1"]) == .error("NOPERM No permissions to access a key"))
        #expect(try await admin.send(["GET", "user:1"]) == .null)
        #expect(try await admin.send(["GET", "cart:1"]) == .bulk("tea"), "the refused DEL deleted nothing")
        // Policies: a user limited to available and bounded runs no serializable transaction
        // and declares nothing linearizable.
        #expect(try await cart.send(["INCR", "cart:orders"]).description.contains("may not use policy serializable"))
        #expect(try await cart.send(["CONTINUUM.POLICY", "cart:2", "linearizable"]).description.contains("may not use policy linearizable"))
        #expect(try await cart.send(["CONTINUUM.POLICY", "cart:2", "bounded", "100", "50"]) == .ok)
        #expect(try await admin.send(["INCR", "cart:orders"]) == .integer(1))
        // Categories.
        #expect(try await reader.send(["GET", "cart:1"]) == .bulk("tea"))
        #expect(try await reader.send(["SET", "cart:1", "x"]) == .error("NOPERM User reader has no permissions to run the 'set' command"))
        #expect(try await reader.send(["CONTINUUM.POLICY", "cart:1", "linearizable"]).description.contains("NOPERM"))
        // Admin commands: not for users without @admin, though fault injection is on.
        #expect(try await cart.send(["CONTINUUM.PARTITION", "n2"]).description.contains("NOPERM"))
        #expect(try await reader.send(["CONTINUUM.HEAL"]).description.contains("NOPERM"))
        #expect(try await admin.send(["CONTINUUM.PARTITION", "n2"]) == .ok)
        #expect(try await admin.send(["CONTINUUM.HEAL"]) == .ok)
        // The catalogue is nobody's key: the probe redeclared it, then deleted it.
        for (who, command) in [(admin, ["CONTINUUM.POLICY", "continuum.policies", "available"]), (admin, ["DEL", "continuum.policies"]),
                               (cart, ["SET", "continuum.policies", "x"])] {
            #expect(try await who.send(command).description.contains("the cluster's own"), "\(command)")
        }
        #expect(try await admin.send(["CONTINUUM.POLICY", "cart:orders"]) == .bulk("serializable"), "the catalogue survived")
        // ACL LIST for admins only, with digests, never passwords.
        #expect(try await reader.send(["ACL", "LIST"]).description.contains("NOPERM"))
        guard case let .array(rules) = try await admin.send(["ACL", "LIST"]) else {
            Issue.record("ACL LIST answered no array")
            return
        }
        let listed = rules.map(\.description).joined(separator: "\n")
        #expect(listed.contains("user cart on #") && listed.contains("~cart:*") && listed.contains("policies:available,bounded"), "\(listed)")
        #expect(listed.contains("user default off"))
        #expect(!listed.contains("password"), "a password in ACL LIST: \(listed)")
        #expect(try await reader.send(["ACL", "WHOAMI"]) == .bulk("reader"))
        // The audit log names who ran each admin command.
        let audit = lines.all.filter { $0.contains("admin command") }
        #expect(audit.contains { $0.contains("who=cart") && $0.contains("CONTINUUM.PARTITION") && $0.contains("NOPERM") }, "\(audit)")
        #expect(audit.contains { $0.contains("who=admin") && $0.contains("CONTINUUM.PARTITION n2") && $0.contains("outcome=ok") }, "\(audit)")
        for client in [admin, cart, reader] { await client.close() }
        await cluster.shutdown()
    }

    /// A carried declaration (CONTINUUM.APPLY ... DECLARATION) names a policy too: a user may not
    /// smuggle in one it may not declare.
    @Test func aCarriedDeclarationNeedsThePolicyToo() async throws {
        let path = Self.file(Self.acl)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let cluster = try await LocalCluster(nodes: 1, defaultPolicy: "available") { $0.aclFile = path }
        let port = cluster.servers[0].boundRESPPort!
        let admin = try await RESPClient.connect(host: "127.0.0.1", port: port, credentials: Credentials(user: "admin", password: "admin-password"))
        let cart = try await RESPClient.connect(host: "127.0.0.1", port: port, credentials: Credentials(user: "cart", password: "cart-password"))
        var declared = RESPReply.null
        for _ in 0..<250 where declared != .ok {  // a single node elects itself first
            declared = try await admin.send(["CONTINUUM.DECLARE", "cart:lin", "counter", "linearizable"])
            if declared != .ok { try await Task.sleep(for: .milliseconds(20)) }
        }
        #expect(declared == .ok)
        guard case let .bulk(declaration) = try await admin.send(["CONTINUUM.DECLARATION", "cart:lin"]) else {
            Issue.record("no declaration")
            return
        }
        let smuggled = try await cart.send([Array("CONTINUUM.APPLY".utf8), Array("cart:other".utf8), Array("add".utf8), Array("1".utf8),
                                            Array("DECLARATION".utf8), declaration])
        #expect(smuggled.description.contains("NOPERM"), "\(smuggled)")
        await admin.close()
        await cart.close()
        await cluster.shutdown()
    }

    /// With no password for the default user, only loopback clients are served; a password
    /// (or --insecure) opens the port to others.
    @Test func protectedModeServesOnlyLoopbackWithoutAPassword() async throws {
        guard let outside = Self.nonLoopbackAddress() else {
            // The refusal itself is then untestable here; the address check still is.
            #expect(!NodeServerConfiguration.isLoopback("192.0.2.2") && NodeServerConfiguration.isLoopback("::ffff:127.0.0.1"))
            return
        }
        for (requirePassword, insecure) in [(String?.none, false), ("s3cret-password", false), (nil, true)] {
            let cluster = try await LocalCluster(nodes: 1, defaultPolicy: "available", respHost: "0.0.0.0",
                                                 credentials: requirePassword.map { Credentials(password: $0) }) {
                $0.requirePassword = requirePassword
                $0.insecure = insecure
            }
            let port = cluster.servers[0].boundRESPPort!
            #expect(try await cluster.clients[0].send(["PING"]) == .simple("PONG"), "loopback is served")
            let remote = try await RESPClient.connect(host: outside, port: port)
            // Refused, the server writes DENIED and closes at once: the PING may find it closed.
            let reply = try? await remote.send(requirePassword == nil ? ["PING"] : ["AUTH", requirePassword!])
            if requirePassword == nil, !insecure {
                #expect(reply == nil || reply!.description.contains("DENIED"), "\(String(describing: reply))")
                for _ in 0..<100 where remote.isActive { try await Task.sleep(for: .milliseconds(10)) }
                #expect(!remote.isActive)
            } else {
                #expect(reply == (requirePassword == nil ? .simple("PONG") : .ok), "\(reply)")
            }
            await remote.close()
            await cluster.shutdown()
        }
    }

    /// An address of this machine's that is not loopback (nil: it has none).
    static func nonLoopbackAddress() -> String? {
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0 else { return nil }
        defer { freeifaddrs(list) }
        var cursor = list
        while let entry = cursor {
            defer { cursor = entry.pointee.ifa_next }
            guard let address = entry.pointee.ifa_addr, address.pointee.sa_family == sa_family_t(AF_INET) else { continue }
            var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
            guard getnameinfo(address, socklen_t(MemoryLayout<sockaddr_in>.size), &host, socklen_t(host.count), nil, 0, NI_NUMERICHOST) == 0
            else { continue }
            let text = String(cString: host)
            if !text.hasPrefix("127.") { return text }
        }
        return nil
    }

    @Test func aclFilesAreCheckedLineByLine() throws {
        let bad: [(String, String)] = [
            ("user alice on >pw ~* +@sometimes", "line 1: unknown category"),
            ("\nuser alice on #abc", "line 2: '#abc' is not"),
            ("user alice on +FLUSHALL", "unknown command"),
            ("user alice on policies:fast", "policies are"),
            ("user alice on\nuser alice off", "named twice"),
            ("group admins", "a line must be"),
            ("user alice on ~", "a key pattern"),
            ("user alice on sometimes", "unknown rule"),
        ]
        for (text, message) in bad {
            #expect { _ = try AccessControl(aclFile: text) } throws: { "\($0)".contains(message) }
        }
        let control = try AccessControl(aclFile: Self.acl)
        #expect(control.requiresAuthentication)
        #expect(control.authenticate("reader", Array("reader-password".utf8))?.name == "reader")
        #expect(control.authenticate("reader", Array("Reader-password".utf8)) == nil)
        #expect(control.authenticate("nobody", Array("reader-password".utf8)) == nil)
        #expect(control.authenticate("admin", Array("admin-password".utf8))?.isAdmin == true)
        #expect(control.authenticate("cart", Array("cart-password".utf8))?.isAdmin == false)
        #expect(!(try AccessControl()).requiresAuthentication)
        #expect(try AccessControl(requirePassword: Array("x".utf8)).requiresAuthentication)
        #expect(throws: ContinuumError.self) { _ = try AccessControl(aclFile: String(repeating: "#", count: AccessControl.fileBytesMax + 1)) }
    }

    @Test func globsMatchAsRedisDoes() {
        let cases: [(String, String, Bool)] = [
            ("cart:*", "cart:1", true), ("cart:*", "cart:", true), ("cart:*", "car", false), ("cart:*", "user:cart:1", false),
            ("*", "", true), ("?", "a", true), ("?", "", false), ("a?c", "abc", true), ("a?c", "ac", false),
            ("[abc]x", "bx", true), ("[abc]x", "dx", false), ("[a-c]x", "cx", true), ("[^a-c]x", "dx", true), ("[^a-c]x", "ax", false),
            ("\\*", "*", true), ("\\*", "a", false), ("*:*:end", "a:b:end", true), ("*:*:end", "a:b:en", false),
            ("a*b*c", "a__b__c", true), ("a*b*c", "a__c__b", false),
        ]
        for (pattern, key, expected) in cases {
            #expect(Glob.matches(pattern, key) == expected, "\(pattern) ~ \(key)")
        }
        // No backtracking blow-up: this takes pattern × key steps, not exponential ones.
        let key = String(repeating: "a", count: 10_000)
        #expect(!Glob.matches(String(repeating: "a*", count: 50) + "b", key))
    }
}
