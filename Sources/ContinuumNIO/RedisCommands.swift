import Continuum
import ContinuumCore
import ContinuumProtocols
import Logging
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The Redis commands a node serves, routed by each key's policy: the policy declared for it
/// with `CONTINUUM.POLICY`, else the server's default. Declarations live in an available
/// register (`continuum.policies`, a map of last-writer-wins entries): every node keeps and
/// persists the catalogue it has seen, so a restarted node routes as before its crash, at once
/// and without a majority. A declaration reaches the other nodes by anti-entropy (a gossip
/// round, unless partitioned); until then they route the key under the default policy:
/// declare keys before using them.
///
/// - `linearizable`: strings (GET, SET, INCR...), deletes and sets (SADD...) go through Raft.
/// - `available` and `bounded`: CRDT registers, updated locally and merged by anti-entropy:
///   SET writes a last-writer-wins register, INCR a PN-counter, SADD an add-wins set; GET under
///   `bounded` answers within the bound or fails with `STALE`.
/// - `serializable`: integer values through one-operation transactions (2PL and 2PC at every
///   replica).
///
/// Errors use Redis's form: `-ERR`, `-WRONGTYPE`, and Continuum's own prefixes
/// `-UNAVAILABLE` (nothing was done), `-INDETERMINATE` (a write may or may not take effect) and
/// `-STALE` (no answer within the staleness bound in time).
public struct RedisServerConfiguration: Sendable {
    /// The policy of keys nobody declared.
    public var defaultPolicy: Policy
    /// The latency bound of each linearizable or serializable command.
    public var requestLatency: Duration
    /// Whether fault injection is on: `CONTINUUM.PARTITION`/`HEAL` cut and restore links, and
    /// `CONTINUUM.CRASHPOINT` may arm a crash that ends this process (tests only).
    public var faultInjection: Bool
    /// The most bytes a command's arguments may hold together (`max-value-bytes`): a value, or
    /// the members of one SADD, travels as one Raft entry or one delta, in one frame. Larger
    /// commands are refused with an error naming the limit, and nothing is applied.
    public var valueBytesMax: Int
    /// The store's durability mode, as INFO reports it (`fsync:always` or `fsync:everysec`).
    public var fsync = "always"
    /// The users and what each may do; by default one user, `default`, with every right and
    /// no password.
    public var access: AccessControl = try! AccessControl()
    /// Protected mode, as Redis's: while the default user needs no password, only loopback
    /// clients are served; others are answered `-DENIED` and disconnected.
    public var protectedMode = true
    /// Connected clients at most (Redis's `maxclients`); one more is answered
    /// `-ERR max number of clients reached` and disconnected.
    public var clientsMax = RedisServerConfiguration.clientsMaxDefault
    /// A client that sends nothing for this long is disconnected (Redis's `timeout`; nil: never).
    public var idleTimeout: Duration?
    /// Reply bytes waiting for a client that does not read them, at most (Redis's
    /// `client-output-buffer-limit` hard limit); past it the client is disconnected.
    public var outputBufferBytesMax = RedisServerConfiguration.outputBufferBytesMaxDefault

    /// The limits on one request's shape: arguments, bulk bytes, inline bytes.
    public var requestLimits = RESPLimits()

    public static let clientsMaxDefault = 10_000
    public static let outputBufferBytesMaxDefault = 64 << 20

    /// The default `valueBytesMax`, 16 MiB (Redis allows 512 MB; a Continuum value must fit a
    /// peer frame of 64 MiB with its entry around it).
    public static let valueBytesMaxDefault = 16 << 20
    /// The largest `valueBytesMax` a node accepts.
    public static let valueBytesMaxLimit = Framing.maximumPayloadBytes - (4 << 20)

    public init(defaultPolicy: Policy = .linearizable, requestLatency: Duration = .seconds(2), faultInjection: Bool = false,
                valueBytesMax: Int = RedisServerConfiguration.valueBytesMaxDefault) {
        self.defaultPolicy = defaultPolicy
        self.requestLatency = requestLatency
        self.faultInjection = faultInjection
        self.valueBytesMax = valueBytesMax
    }
}

/// One client connection's state and its commands.
final class RedisConnection {
    let node: Node
    let configuration: RedisServerConfiguration
    let transport: NIOTransport?
    let metrics: NodeMetrics?
    var resp3 = false
    private var client: UInt64?
    private var sequence: UInt64 = 0
    /// The policy the running command routed by (a metric label).
    private var routedPolicy: Policy?

    /// Where the client connects from, and where admin commands are written down.
    let remote: String
    let audit: Logger?
    /// Who the client signed in as (nil: nobody yet, and the default user needs a password).
    private(set) var user: AccessUser? {
        didSet { unrestricted = user?.isUnrestricted ?? false }
    }
    /// Whether `user` may do everything: worked out once at sign-in, not per command.
    private var unrestricted = false

    init(node: Node, configuration: RedisServerConfiguration, transport: NIOTransport?, metrics: NodeMetrics? = nil,
         remote: String = "?", audit: Logger? = nil) {
        self.node = node
        self.configuration = configuration
        self.transport = transport
        self.metrics = metrics
        self.remote = remote
        self.audit = audit
        let initial = configuration.access.requiresAuthentication ? nil : configuration.access.defaultUser
        user = initial
        unrestricted = initial?.isUnrestricted ?? false  // didSet does not run in init
    }

    /// Keys that begin with this are the cluster's own registers (the policy catalogue): no
    /// client command may name them, whatever its rights.
    static let reservedPrefix = "continuum."

    /// Refuses the command unless the client's user may run it on these keys under their
    /// policies (and under any policy the command names).
    private func authorize(_ name: String, _ arguments: [[UInt8]]) throws {
        guard let spec = CommandSpec.table[name] else { return }  // unknown: answered as such
        guard let user else {
            guard CommandSpec.alwaysAllowed.contains(name) else { throw CommandError(message: "NOAUTH Authentication required.") }
            return
        }
        guard user.mayRun(name) else {
            throw CommandError(message: "NOPERM User \(user.name) has no permissions to run the '\(name.lowercased())' command")
        }
        let keys: ArraySlice<[UInt8]> = switch spec.keys {
        case .none: []
        case .first: arguments.prefix(1)
        case .all: arguments[...]
        }
        for key in keys where key.starts(with: Self.reservedPrefix.utf8) {
            throw CommandError(message: "ERR keys beginning '\(Self.reservedPrefix)' are the cluster's own; no command may name them")
        }
        // Everyone's default: no pattern, catalogue lookup or policy parse per command.
        if unrestricted { return }
        for key in keys.map(text) {
            guard user.mayTouch(key: key) else { throw CommandError(message: "NOPERM No permissions to access a key") }
            let policy = node.policies.policy(of: key) ?? configuration.defaultPolicy
            guard user.mayUse(policy: policy) else {
                throw CommandError(message: "NOPERM User \(user.name) may not use policy \(policy.kind) (key '\(key)')")
            }
        }
        // A policy the command names: a declaration, or a read's override.
        let named: ArraySlice<[UInt8]> = switch name {
        case "CONTINUUM.POLICY", "CONTINUUM.GET", "CONTINUUM.READ": arguments.dropFirst()
        case "CONTINUUM.DECLARE": arguments.dropFirst(2)
        default: []
        }
        if let policy = try? Policy(words: named.map(text)), !user.mayUse(policy: policy) {
            throw CommandError(message: "NOPERM User \(user.name) may not use policy \(policy.kind)")
        }
    }

    /// Commands that change the cluster rather than a key's value: each one run is written to
    /// the log (who, what, from where), whether it succeeds or not.
    static let adminCommands: Set<String> = ["CONTINUUM.POLICY", "CONTINUUM.PARTITION", "CONTINUUM.HEAL", "CONTINUUM.CRASHPOINT"]

    /// Cutting links and arming crash points are fault injection: only on nodes started with
    /// `--fault-injection`.
    private func requireFaultInjection(_ name: String) throws {
        guard configuration.faultInjection else {
            throw CommandError(message: "ERR \(name): fault injection is off on this node (start it with --fault-injection)")
        }
    }

    /// The commands served (metric labels name these; anything else is `unknown`).
    static let commands: Set<String> = Set(CommandSpec.table.keys)

    enum Outcome {
        case reply(RESPReply)
        case replyAndClose(RESPReply)
    }

    func execute(_ arguments: [[UInt8]]) async -> Outcome {
        let name = String(decoding: arguments[0], as: UTF8.self).uppercased()
        if name == "QUIT" { return .replyAndClose(.ok) }
        guard let metrics else { return .reply(await reply(name, Array(arguments.dropFirst()))) }
        routedPolicy = nil
        let clock = ContinuousClock()
        let start = clock.now
        let reply = await reply(name, Array(arguments.dropFirst()))
        let failure: String? = if case let .error(message) = reply {
            message.prefix { $0 != " " }.lowercased()
        } else {
            nil
        }
        metrics.recordCommand(Self.commands.contains(name) ? name.lowercased() : "unknown", policy: routedPolicy?.kind ?? "none",
                              duration: clock.now - start, error: failure)
        return .reply(reply)
    }

    private func reply(_ name: String, _ arguments: [[UInt8]]) async -> RESPReply {
        let reply: RESPReply
        do {
            try authorize(name, arguments)
            reply = await replyUnaudited(name, arguments)
        } catch {
            reply = .error((error as? CommandError)?.message ?? "ERR \(error)")
        }
        if let audit, Self.adminCommands.contains(name) {
            // Arguments are names and policies (no values), each cut to 64 bytes for the log.
            let words = arguments.prefix(8).map { String(decoding: $0.prefix(64), as: UTF8.self) }
            audit.notice("admin command", metadata: [
                "who": "\(user?.name ?? "(not signed in)")", "from": "\(remote)", "command": "\(name) \(words.joined(separator: " "))",
                "outcome": "\({ if case let .error(message) = reply { message } else { "ok" } }())",
            ])
        }
        return reply
    }

    private func replyUnaudited(_ name: String, _ arguments: [[UInt8]]) async -> RESPReply {
        let bytes = arguments.reduce(0) { $0 + $1.count }
        guard bytes <= configuration.valueBytesMax else {
            return .error("ERR \(name) carries \(bytes) bytes, more than max-value-bytes (\(configuration.valueBytesMax)); nothing was applied")
        }
        do {
            return try await run(name, arguments)
        } catch let error as CommandError {
            return .error(error.message)
        } catch let error as ContinuumError {
            return .error(Self.message(for: error))
        } catch {
            return .error("ERR \(error)")
        }
    }

    struct CommandError: Error {
        var message: String
        static func arity(_ name: String) -> CommandError { CommandError(message: "ERR wrong number of arguments for '\(name.lowercased())' command") }
        static let syntax = CommandError(message: "ERR syntax error")
        static let notInteger = CommandError(message: "ERR value is not an integer or out of range")
        static let wrongType = CommandError(message: "WRONGTYPE Operation against a key holding the wrong kind of value")
    }

    static func message(for error: ContinuumError) -> String {
        switch error {
        case .unavailable: "UNAVAILABLE \(error)"
        case .indeterminate: "INDETERMINATE \(error)"
        case let .stalenessBoundUnmet(best): "STALE \(error) [best_ns=\(best.map { "\($0.nanoseconds)" } ?? "none")]"
        case .typeMismatch, .wrongPolicy: "WRONGTYPE \(error)"
        case let .notPermitted(reason): "NOPERM \(reason)"
        default: "ERR \(error)"
        }
    }

    private func text(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }

    private func integer(_ bytes: [UInt8]) throws -> Int64 {
        guard let value = KeyValueStateMachine.decimal(text(bytes)) else { throw CommandError.notInteger }
        return value
    }

    typealias Catalogue = PolicyCatalogue.State
    static let catalogue = PolicyCatalogue.register

    /// The catalogue here (empty when nobody declared anything this node heard of).
    private func declarations() async -> Catalogue {
        (try? await node.register(Self.catalogue, as: Catalogue.self).read()) ?? Catalogue()
    }

    /// The key's policy: one lookup in the node's typed catalogue, no hop through its actor.
    private func policy(of key: String) -> Policy {
        let policy = node.policies.policy(of: key) ?? configuration.defaultPolicy
        routedPolicy = policy
        return policy
    }

    /// The keys with a declared policy in `node`'s catalogue.
    static func declaredPolicies(at node: Node) -> [(key: String, policy: Policy)] {
        node.policies.all.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
    }

    // MARK: Dispatch

    private func run(_ name: String, _ arguments: [[UInt8]]) async throws -> RESPReply {
        func need(_ range: ClosedRange<Int>) throws { guard range.contains(arguments.count) else { throw CommandError.arity(name) } }
        switch name {
        case "PING":
            try need(0...1)
            return arguments.first.map { .bulk($0) } ?? .simple("PONG")
        case "ECHO":
            try need(1...1)
            return .bulk(arguments[0])
        case "HELLO":
            return try hello(arguments)
        case "AUTH":
            try need(1...2)
            try signIn(arguments.count == 2 ? text(arguments[0]) : "default", arguments[arguments.count - 1])
            return .ok
        case "ACL":
            try need(1...Int.max)
            switch text(arguments[0]).uppercased() {
            case "WHOAMI": return .bulk(user?.name ?? "default")
            case "CAT": return .array(CommandSpec.Category.allCases.map { .bulk($0.rawValue) })
            case "LIST":
                guard user?.isAdmin == true else {
                    throw CommandError(message: "NOPERM User \(user?.name ?? "default") has no permissions to run the 'acl|list' command")
                }
                return .array(configuration.access.users.values.sorted { $0.name < $1.name }.map { .bulk($0.rule) })
            default: throw CommandError(message: "ERR ACL \(text(arguments[0])): WHOAMI, CAT and LIST are supported")
            }
        case "SELECT":
            try need(1...1)
            guard text(arguments[0]) == "0" else { throw CommandError(message: "ERR DB index is out of range") }
            return .ok
        case "CLIENT":
            try need(1...Int.max)
            switch text(arguments[0]).uppercased() {
            case "GETNAME": return .null
            case "ID": return .integer(Int64(bitPattern: try await clientID()))
            default: return .ok
            }
        case "COMMAND":
            return .array([])
        case "CONFIG":
            try need(1...Int.max)
            guard text(arguments[0]).uppercased() == "GET" else { throw CommandError(message: "ERR CONFIG \(text(arguments[0])) is not supported") }
            // What redis-benchmark asks for; durability is Continuum's own (see INFO).
            let known = ["save": "", "appendonly": "no"]
            let pairs = arguments.dropFirst().map(text).compactMap { name in known[name.lowercased()].map { (name.lowercased(), $0) } }
            return resp3 ? .map(pairs.map { (.bulk($0.0), .bulk($0.1)) }) : .array(pairs.flatMap { [.bulk($0.0), .bulk($0.1)] })
        case "INFO":
            return .bulk(try await info())
        case "GET":
            try need(1...1)
            return try await get(text(arguments[0]), policy: nil, receipt: false).reply
        case "SET":
            try need(2...2)
            try await set(text(arguments[0]), arguments[1])
            return .ok
        case "INCR", "DECR":
            try need(1...1)
            return .integer(try await add(text(arguments[0]), name == "INCR" ? 1 : -1))
        case "INCRBY", "DECRBY":
            try need(2...2)
            let amount = try integer(arguments[1])
            guard name == "INCRBY" || amount != .min else { throw CommandError.notInteger }
            return .integer(try await add(text(arguments[0]), name == "INCRBY" ? amount : -amount))
        case "DEL":
            try need(1...Int.max)
            return .integer(try await delete(arguments.map(text)))
        case "SADD", "SREM":
            try need(2...Int.max)
            return .integer(try await setChange(text(arguments[0]), arguments.dropFirst().map(text), insert: name == "SADD"))
        case "SMEMBERS":
            try need(1...1)
            return .set(try await members(text(arguments[0])).sorted().map { .bulk($0) })
        case "SCARD":
            try need(1...1)
            let key = text(arguments[0])
            if let count = try await lookAtSet(key, { $0.count }) { return .integer(Int64(count)) }
            return .integer(Int64(try await members(key).count))
        case "SISMEMBER":
            try need(2...2)
            let member = text(arguments[1])
            let key = text(arguments[0])
            if let found = try await lookAtSet(key, { $0.contains(member) }) { return .integer(found ? 1 : 0) }
            return .integer(try await members(key).contains(member) ? 1 : 0)
        case "CONTINUUM.POLICY":
            try need(1...4)
            return try await declarePolicy(text(arguments[0]), arguments.dropFirst().map(text))
        case "CONTINUUM.GET":
            try need(1...4)
            let override = arguments.count > 1 ? try Policy(words: arguments.dropFirst().map(text)) : nil
            let answer = try await get(text(arguments[0]), policy: override, receipt: true)
            return .array([answer.reply, .bulk(answer.receipt?.guarantee.description ?? "linearizable"),
                           answer.receipt?.staleness.map { .integer($0.nanoseconds / 1_000_000) } ?? .null,
                           .bulk(answer.receipt?.version.description ?? "-"),
                           .array((answer.receipt?.replicas ?? []).map { .bulk("n\($0.rawValue)") })])
        case "CONTINUUM.DECLARE":
            try need(2...5)
            let key = text(arguments[0])
            guard let kind = RegisterKind(rawValue: text(arguments[1]).lowercased()) else {
                throw CommandError(message: "ERR unknown register type '\(text(arguments[1]))': counter, set, flag or max")
            }
            if arguments.count > 2 { _ = try await declarePolicy(key, arguments.dropFirst(2).map(text)) }
            try await declareRegister(key, kind)
            return .ok
        case "CONTINUUM.APPLY", "CONTINUUM.READ":
            // A client may carry the register's declaration (`DECLARATION <entry>`, as
            // `CONTINUUM.DECLARATION` gave it): joined here first, so that a node the
            // declaration has not reached by gossip yet routes the command as declared.
            var arguments = arguments
            if arguments.count >= 3, text(arguments[arguments.count - 2]).uppercased() == "DECLARATION" {
                try await absorbDeclaration(text(arguments[0]), arguments[arguments.count - 1])
                arguments.removeLast(2)
            }
            guard name == "CONTINUUM.READ" else {
                guard (2...3).contains(arguments.count) else { throw CommandError.arity(name) }
                let operation = try CRDTOperation(words: arguments.dropFirst().map(text))
                return Self.reply(state: try await apply(text(arguments[0]), operation))
            }
            guard (1...4).contains(arguments.count) else { throw CommandError.arity(name) }
            let override = arguments.count > 1 ? try Policy(words: arguments.dropFirst().map(text)) : nil
            let (state, receipt) = try await readRegister(text(arguments[0]), policy: override)
            return Self.reply(state: state, receipt: receipt)
        case "CONTINUUM.DECLARATION":
            try need(1...1)
            let entry = await declarations()[text(arguments[0])]
            return entry.isBottom ? .null : .bulk(entry.binaryEncoded())
        case "CONTINUUM.PARTITION":
            try need(1...Int.max)
            try requireFaultInjection(name)
            guard let transport else { throw CommandError(message: "ERR this node has no network transport") }
            var peers: Set<NodeID> = []
            for word in arguments.map(text) {
                guard let raw = UInt64(word.hasPrefix("n") ? String(word.dropFirst()) : word) else {
                    throw CommandError(message: "ERR '\(word)' is not a node id")
                }
                peers.insert(NodeID(raw))
            }
            transport.block(peers)
            return .ok
        case "CONTINUUM.HEAL":
            try requireFaultInjection(name)
            transport?.heal()
            return .ok
        case "CONTINUUM.CRASHPOINT":
            try need(1...1)
            try requireFaultInjection(name)
            let word = text(arguments[0]).lowercased()
            if word == "none" {
                await node.armCrash(nil) {}
                return .ok
            }
            guard let point = Node.CrashPoint(rawValue: word) else {
                throw CommandError(message: "ERR unknown crash point '\(word)': \(Node.CrashPoint.allCases.map(\.rawValue).joined(separator: ", ")) or none")
            }
            let id = node.id
            await node.armCrash(point) {
                // As kill -9: no flush, no goodbye to peers or clients.
                let line = Array("continuum node n\(id.rawValue): crash point \(point.rawValue) reached, exiting\n".utf8)
                _ = line.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
                _exit(137)
            }
            return .ok
        default:
            throw CommandError(message: "ERR unknown command '\(name.lowercased())'")
        }
    }

    /// Signs in as `name` (`AUTH`, `HELLO ... AUTH`); a refusal leaves the connection as it was.
    private func signIn(_ name: String, _ password: [UInt8]) throws {
        guard let signed = configuration.access.authenticate(name, password) else {
            audit?.info("refused credentials", metadata: ["user": "\(name.prefix(64))", "from": "\(remote)"])
            throw CommandError(message: "WRONGPASS invalid username-password pair or user is disabled.")
        }
        user = signed
    }

    /// `HELLO [protover [AUTH username password] [SETNAME clientname]]`.
    private func hello(_ arguments: [[UInt8]]) throws -> RESPReply {
        var wantsRESP3 = resp3
        if let version = arguments.first {
            switch text(version) {
            case "2": wantsRESP3 = false
            case "3": wantsRESP3 = true
            default: throw CommandError(message: "NOPROTO unsupported protocol version")
            }
        }
        var index = 1
        while index < arguments.count {
            switch text(arguments[index]).uppercased() {
            case "AUTH" where index + 2 < arguments.count:
                try signIn(text(arguments[index + 1]), arguments[index + 2])
                index += 3
            case "SETNAME" where index + 1 < arguments.count:
                index += 2
            default:
                throw CommandError(message: "ERR Syntax error in HELLO option '\(text(arguments[index]))'")
            }
        }
        guard user != nil else {
            throw CommandError(message: "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time")
        }
        resp3 = wantsRESP3
        return .map([(.bulk("server"), .bulk("continuum")), (.bulk("version"), .bulk(NodeServer.version)),
                     (.bulk("proto"), .integer(resp3 ? 3 : 2)), (.bulk("id"), .integer(Int64(node.id.rawValue))),
                     (.bulk("mode"), .bulk("cluster")), (.bulk("role"), .bulk("master")), (.bulk("modules"), .array([]))])
    }

    private func info() async throws -> String {
        let status = await node.consensusStatus
        let staleness = await node.certifiedStaleness
        var lines = ["# Server", "redis_version:7.0.0", "continuum_version:\(NodeServer.version)", "continuum_node:n\(node.id.rawValue)",
                     "# Continuum", "default_policy:\(configuration.defaultPolicy.words.joined(separator: " "))"]
        lines.append("fsync:\(configuration.fsync)")
        lines.append("storage_compactions_pending:\(await node.compactionsPending)")
        if let status { lines += ["raft_role:\(status.role)", "raft_term:\(status.term)", "raft_commit_index:\(status.commitIndex)",
                                        "raft_snapshot_index:\(status.snapshotIndex)"] }
        lines.append("certified_staleness_available_ms:\(staleness.available.map { "\($0.nanoseconds / 1_000_000)" } ?? "none")")
        lines.append("certified_staleness_consensus_ms:\(staleness.consensus.map { "\($0.nanoseconds / 1_000_000)" } ?? "none")")
        lines.append("peer_messages_refused:\(await node.peerMessagesRefused.count)")
        let probe = node.responsiveness.current
        lines += ["node_wait_ms:\(probe.last.nanoseconds / 1_000_000)", "node_wait_max_ms:\(probe.maximum.nanoseconds / 1_000_000)"]
        let consensus = node.consensusResponsiveness.current
        lines += ["node_wait_consensus_ms:\(consensus.last.nanoseconds / 1_000_000)",
                  "node_wait_consensus_max_ms:\(consensus.maximum.nanoseconds / 1_000_000)"]
        if let replication = await node.replicationStatistics {
            lines += ["replication_deltas_sent:\(replication.deltaPayloadsSent)", "replication_full_states_sent:\(replication.fullStatesSent)",
                      "replication_deltas_received:\(replication.deltaPayloadsReceived)",
                      "replication_full_states_received:\(replication.fullStatesReceived)",
                      "replication_reachability_changes:\(replication.reachabilityChanges)"]
        }
        return lines.joined(separator: "\r\n") + "\r\n"
    }

    // MARK: Consensus

    private func clientID() async throws -> UInt64 {
        if let client { return client }
        let fresh = await node.newClient()
        client = fresh
        return fresh
    }

    private func consensus(_ operation: KeyValueOperation) async throws -> KeyValueResult {
        try await consensusWithIndex(operation).result
    }

    /// A command through the Raft log, with the log index it was applied at.
    private func consensusWithIndex(_ operation: KeyValueOperation) async throws -> (result: KeyValueResult, index: UInt64) {
        let client = try await clientID()
        sequence += 1
        switch await node.linearizable(operation, client: client, sequence: sequence, latency: configuration.requestLatency) {
        case let .ok(result, index): return (result, index)
        case let .unavailable(reason): throw ContinuumError.unavailable(reason)
        case .indeterminate: throw ContinuumError.indeterminate
        }
    }

    // MARK: Commands by policy

    typealias Bytes = LWWRegister<[UInt8]>

    /// GET (no `receipt`: an available read is then a look at the local state, without the
    /// digest a receipt carries) and CONTINUUM.GET.
    private func get(_ key: String, policy override: Policy?, receipt: Bool) async throws -> (reply: RESPReply, receipt: ReadReceipt?) {
        let declared = policy(of: key)
        let policy = override ?? declared
        routedPolicy = policy
        switch (declared, policy) {
        case (.linearizable, .linearizable):
            guard case let .string(bytes) = try await consensus(.stringGet(key: key)) else { throw CommandError.wrongType }
            return (bytes.map { RESPReply.bulk($0) } ?? .null, nil)
        case (.linearizable, _):
            let answer = try await node.raftBoundedRead(.stringGet(key: key), levels: policy.serviceLevels, minimumIndex: 0).get()
            guard case let .string(bytes) = answer.result else { throw CommandError.wrongType }
            return (bytes.map { RESPReply.bulk($0) } ?? .null, answer.receipt)
        case (.serializable, _):
            let result = try await node.read(serializable: key, policy == .linearizable ? .serializable : policy)
            switch result.value {
            case nil: return (.null, result.receipt)
            case let .int(value)?: return (.bulk("\(value)"), result.receipt)
            case .list?: throw CommandError.wrongType
            }
        case (let declared, .linearizable), (let declared, .serializable):
            throw ContinuumError.wrongPolicy(register: key, declared: declared)
        case (.available, .available) where !receipt, (.bounded, .available) where !receipt:
            do {
                return (try await node.inspect(key, as: Bytes.self) { $0.value.map { RESPReply.bulk($0) } ?? .null }, nil)
            } catch {
                switch error {
                case .notDeclared, .deleted: return (.null, nil)
                case let .typeMismatch(_, declared, _) where declared == replicableTypeName(PNCounter.self):
                    return (try await node.inspect(key, as: PNCounter.self) { .bulk("\($0.value)") }, nil)
                default: throw error
                }
            }
        case (.available, _), (.bounded, _):
            let readPolicy = policy
            let bytes: ReadResult<Bytes>
            do {
                bytes = try await node.register(key, as: Bytes.self).read(readPolicy)
            } catch {
                switch error {
                case .notDeclared, .deleted: return (.null, nil)
                case let .typeMismatch(_, declared, _) where declared == replicableTypeName(PNCounter.self):
                    let result = try await node.register(key, as: PNCounter.self).read(readPolicy)
                    return (.bulk("\(result.value.value)"), result.receipt)
                default: throw error
                }
            }
            return (bytes.value.value.map { RESPReply.bulk($0) } ?? .null, bytes.receipt)
        }
    }

    private func set(_ key: String, _ value: [UInt8]) async throws {
        switch policy(of: key) {
        case .linearizable:
            _ = try await consensus(.stringSet(key: key, value: value))
        case .serializable:
            try await node.write(serializable: key, .int(try integer(value)), latency: configuration.requestLatency)
        case .available, .bounded:
            let physical = UInt64(clamping: wallClockNanoseconds())
            try await node.upsert(key, as: Bytes.self) { register, replica in
                var clock = HybridLogicalClock()
                return (try register.write(value, replica: replica, clock: &clock, physical: physical), ())
            }
        }
    }

    private func add(_ key: String, _ amount: Int64) async throws -> Int64 {
        switch policy(of: key) {
        case .linearizable:
            switch try await consensus(.stringAdd(key: key, amount: amount)) {
            case let .integer(value): return value
            case .notAnInteger: throw CommandError.notInteger
            default: throw CommandError.wrongType
            }
        case .serializable:
            let latency = configuration.requestLatency
            return try await node.transaction(latency: latency) { transaction in
                let current: Int64
                switch try await transaction.read(key) {
                case nil: current = 0
                case let .int(value)?: current = value
                case .list?: throw CommandError.wrongType
                }
                let (sum, overflow) = current.addingReportingOverflow(amount)
                guard !overflow else { throw CommandError.notInteger }
                try await transaction.write(key, .int(sum))
                return sum
            }
        case .available, .bounded:
            return try await node.upsert(key, as: PNCounter.self) { counter, replica in
                let delta = counter.add(amount, replica: replica)
                return (delta, counter.value)
            }
        }
    }

    private func delete(_ keys: [String]) async throws -> Int64 {
        var removed: Int64 = 0
        var consensusKeys: [String] = []
        for key in keys {
            switch policy(of: key) {
            case .linearizable: consensusKeys.append(key)
            case .serializable: throw CommandError(message: "ERR DEL is not supported on serializable keys; SET them instead")
            case .available, .bounded:
                do {
                    try await node.register(key, as: Bytes.self).delete()
                    removed += 1
                } catch {
                    switch error {
                    case .notDeclared, .deleted: break
                    default: throw error
                    }
                }
            }
        }
        if !consensusKeys.isEmpty {
            guard case let .count(count) = try await consensus(.delete(keys: consensusKeys)) else { throw CommandError.wrongType }
            removed += count
        }
        return removed
    }

    private func setChange(_ key: String, _ members: [String], insert: Bool) async throws -> Int64 {
        switch policy(of: key) {
        case .linearizable:
            // One log entry for all the members; the state machine counts what changed when it
            // applies it, so nothing is read first and nothing of the set comes back.
            guard case let .count(changed) = try await consensus(.setChange(key: key, members: members, insert: insert)) else {
                throw CommandError.wrongType
            }
            return changed
        case .serializable:
            throw CommandError(message: "ERR serializable keys hold integers")
        case .available, .bounded:
            // In place, without reading the set first: the cost is the members', not the set's.
            return try await node.upsert(key, as: ORSet<String>.self) { set, replica in
                var delta = ORSet<String>()
                var changed: Int64 = 0
                for member in members {
                    if set.contains(member) != insert { changed += 1 }
                    delta.formJoin(insert ? set.insert(member, replica: replica) : set.remove(member))
                }
                return (delta, changed)
            }
        }
    }

    /// `body` of the key's set under `available`, looked at in place (no copy of its members);
    /// nil under the other policies (read the members then).
    private func lookAtSet<Result: Sendable>(_ key: String, _ body: @escaping @Sendable (ORSet<String>) -> Result) async throws -> Result? {
        guard case .available = policy(of: key) else { return nil }
        do {
            return try await node.inspect(key, as: ORSet<String>.self, body)
        } catch {
            switch error {
            case .notDeclared, .deleted: return body(ORSet())
            default: throw error
            }
        }
    }

    private func members(_ key: String) async throws -> Set<String> {
        switch policy(of: key) {
        case .linearizable:
            switch try await consensus(.crdtRead(key: key)) {
            case .crdt(nil): return []
            case let .crdt(.set(set)?): return set.elements
            default: throw CommandError.wrongType
            }
        case .serializable:
            throw CommandError(message: "ERR serializable keys hold integers")
        case let policy:
            do {
                return try await node.register(key, as: ORSet<String>.self).read(policy).value.elements
            } catch {
                switch error {
                case .notDeclared, .deleted: return []
                default: break
                }
                throw error
            }
        }
    }

    /// Joins a declaration a client carried (a catalogue entry with its own timestamp: a newer
    /// declaration here is kept).
    private func absorbDeclaration(_ key: String, _ bytes: [UInt8]) async throws {
        let entry: LWWRegister<String>
        do {
            entry = try LWWRegister<String>(binary: bytes)
        } catch {
            throw CommandError(message: "ERR the declaration does not decode: \(error)")
        }
        guard !entry.isBottom else { return }
        // A carried declaration names a policy like CONTINUUM.POLICY does: the user must be
        // allowed it.
        if let user, let words = entry.value, words != "default",
           let policy = try? Policy(words: words.split(separator: " ").map(String.init)), !user.mayUse(policy: policy) {
            throw CommandError(message: "NOPERM User \(user.name) may not use policy \(policy.kind)")
        }
        if await declarations()[key] == entry { return }
        let delta = Catalogue([key: entry])
        try await node.declare(Self.catalogue, as: Catalogue.self).update { map, _ in
            map.formJoin(delta)
            return delta
        }
    }

    private func declarePolicy(_ key: String, _ words: [String]) async throws -> RESPReply {
        guard !words.isEmpty else {
            if let declared = await declarations()[key].value, declared != "default" { return .bulk(declared) }
            return .bulk("\(configuration.defaultPolicy.words.joined(separator: " ")) (default)")
        }
        let text = words.count == 1 && words[0].lowercased() == "default" ? "default" : try Policy(words: words).words.joined(separator: " ")
        let catalogue = try await node.declare(Self.catalogue, as: Catalogue.self)
        let physical = UInt64(clamping: wallClockNanoseconds())
        try await catalogue.update { map, replica in
            var failure: (any Error)?
            let delta = map.update(key) { entry in
                var clock = HybridLogicalClock()
                do {
                    return try entry.write(text, replica: replica, clock: &clock, physical: physical)
                } catch {
                    failure = error
                    return LWWRegister()
                }
            }
            if let failure { throw failure }
            return delta
        }
        return .ok
    }

    // MARK: Typed registers (the Swift client library's commands)

    /// The CRDTs a client declares by name; under `linearizable` they live in the Raft log's
    /// CRDT namespace, under `available` and `bounded` they are the node's own CRDT registers.
    enum RegisterKind: String {
        case counter, set, flag, max

        init(_ operation: CRDTOperation) {
            switch operation {
            case .counterAdd: self = .counter
            case .setInsert, .setRemove: self = .set
            case .flagEnable, .flagDisable: self = .flag
            case .maxWrite: self = .max
            }
        }

        init(_ state: LogCRDT) {
            switch state {
            case .counter: self = .counter
            case .set: self = .set
            case .flag: self = .flag
            case .max: self = .max
            }
        }
    }

    private func declareRegister(_ key: String, _ kind: RegisterKind) async throws {
        switch policy(of: key) {
        case .linearizable:
            switch try await consensus(.crdtRead(key: key)) {
            case .crdt(nil): return
            case let .crdt(state?) where RegisterKind(state) == kind: return
            default: throw CommandError.wrongType
            }
        case .serializable:
            throw CommandError(message: "ERR serializable keys hold integers (SET, GET, INCRBY)")
        case .available, .bounded:
            switch kind {
            case .counter: _ = try await node.declare(key, as: PNCounter.self)
            case .set: _ = try await node.declare(key, as: ORSet<String>.self)
            case .flag: _ = try await node.declare(key, as: EWFlag.self)
            case .max: _ = try await node.declare(key, as: MaxRegister<UInt64>.self)
            }
        }
    }

    /// Applies `operation` under the key's policy; the register's state right after.
    private func apply(_ key: String, _ operation: CRDTOperation) async throws -> LogCRDT {
        switch policy(of: key) {
        case .linearizable:
            guard case let .crdt(state?) = try await consensus(.crdt(key: key, operation)) else { throw CommandError.wrongType }
            return state
        case .serializable:
            throw CommandError(message: "ERR serializable keys hold integers (SET, GET, INCRBY)")
        case .available, .bounded:
            switch RegisterKind(operation) {
            case .counter: return try await update(key, PNCounter.self, operation)
            case .set: return try await update(key, ORSet<String>.self, operation)
            case .flag: return try await update(key, EWFlag.self, operation)
            case .max: return try await update(key, MaxRegister<UInt64>.self, operation)
            }
        }
    }

    /// Applies `operation` to this node's CRDT register `key` of type `Value`, as this node.
    private func update<Value: RemoteRegisterValue & Replicable>(_ key: String, _ type: Value.Type, _ operation: CRDTOperation)
        async throws -> LogCRDT
    {
        try await node.declare(key, as: Value.self).update { value, replica in
            var state: LogCRDT? = value.logState
            guard let delta = operation.mutate(&state, replica: replica), let next = state.flatMap(Value.init), let typed = Value(delta) else {
                throw CommandError.wrongType
            }
            value = next
            return typed
        }.logState
    }

    /// This node's CRDT register `key` read as `Value` under `policy`.
    private func read<Value: RemoteRegisterValue & Replicable>(_ key: String, _ type: Value.Type, _ policy: Policy)
        async throws(ContinuumError) -> (LogCRDT?, ReadReceipt)
    {
        let result = try await node.register(key, as: Value.self).read(policy)
        return (result.value.logState, result.receipt)
    }

    /// Reads a typed register under its policy or `override`, with what was delivered.
    private func readRegister(_ key: String, policy override: Policy?) async throws -> (LogCRDT?, ReadReceipt) {
        let declared = policy(of: key)
        let policy = override ?? declared
        routedPolicy = policy
        switch (declared, policy) {
        case (.linearizable, .linearizable):
            let (result, index) = try await consensusWithIndex(.crdtRead(key: key))
            guard case let .crdt(state) = result else { throw CommandError.wrongType }
            let receipt = ReadReceipt(guarantee: .linearizable, staleness: .zero, version: .logIndex(index),
                                      replicas: [node.id.replica], level: 0)
            return (state, receipt)
        case (.linearizable, _):
            let answer = try await node.raftBoundedRead(.crdtRead(key: key), levels: policy.serviceLevels, minimumIndex: 0).get()
            guard case let .crdt(state) = answer.result else { throw CommandError.wrongType }
            return (state, answer.receipt)
        case (.serializable, _):
            throw CommandError(message: "ERR serializable keys hold integers (SET, GET, INCRBY)")
        case (let declared, .linearizable), (let declared, .serializable):
            throw ContinuumError.wrongPolicy(register: key, declared: declared)
        case (.available, _), (.bounded, _):
            do {
                return try await read(key, PNCounter.self, policy)
            } catch {
                guard case let .typeMismatch(_, declared, _) = error else { throw error }
                switch declared {
                case replicableTypeName(ORSet<String>.self): return try await read(key, ORSet<String>.self, policy)
                case replicableTypeName(EWFlag.self): return try await read(key, EWFlag.self, policy)
                case replicableTypeName(MaxRegister<UInt64>.self): return try await read(key, MaxRegister<UInt64>.self, policy)
                default: throw CommandError.wrongType
                }
            }
        }
    }

    /// `[state, description]`: the state's binary encoding (null when absent) and its text.
    static func reply(state: LogCRDT?) -> RESPReply {
        .array([state.map { .bulk($0.binaryEncoded()) } ?? .null, .bulk(state?.description ?? "none")])
    }

    /// `[state, description, guarantee, guarantee staleness ns, staleness ns, version, replicas, level]`.
    static func reply(state: LogCRDT?, receipt: ReadReceipt) -> RESPReply {
        let (guarantee, bound): (String, RESPReply) = switch receipt.guarantee {
        case .linearizable: ("linearizable", .null)
        case let .bounded(staleness): ("bounded", .integer(staleness.nanoseconds))
        case .local: ("local", .null)
        }
        let version = switch receipt.version {
        case let .logIndex(index): "log \(index)"
        case let .stateDigest(digest): "state \(digest)"
        }
        return .array(reply(state: state).elements + [
            .bulk(guarantee), bound, receipt.staleness.map { .integer($0.nanoseconds) } ?? .null, .bulk(version),
            .array(receipt.replicas.map { .integer(Int64(bitPattern: $0.rawValue)) }), .integer(Int64(receipt.level)),
        ])
    }
}

extension RESPReply {
    /// An array's elements (none otherwise).
    var elements: [RESPReply] {
        if case let .array(elements) = self { return elements }
        return []
    }
}
