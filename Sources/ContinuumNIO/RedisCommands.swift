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
    /// The bytes the node's store takes on disk now, as INFO reports it (`store_bytes`; nil:
    /// not reported).
    public var storeBytes: (@Sendable () -> Int)?
    /// Where `CONTINUUM.BACKUP` writes its copies (nil: the command is refused).
    public var backups: BackupFiles?
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

/// One client connection's state and its commands. Unchecked: its connection's handler runs
/// one command at a time (`RESPConnectionHandler`), on the channel's loop or in one task at a
/// time that it starts and waits for, so no two threads touch it at once.
final class RedisConnection: @unchecked Sendable {
    let node: Node
    let configuration: RedisServerConfiguration
    let transport: NIOTransport?
    let metrics: NodeMetrics?
    /// Routes the register commands by each key's policy.
    let router: Router
    var resp3 = false
    /// This connection's identity for linearizable writes.
    private var caller = RouterCaller()
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
        router = Router(node: node, defaultPolicy: configuration.defaultPolicy, requestLatency: configuration.requestLatency,
                        commandBytesMax: configuration.valueBytesMax)
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
    private func authorize(_ name: String, _ entry: RedisCommandEntry?, _ arguments: [[UInt8]]) throws {
        guard let spec = entry?.spec else { return }  // unknown: answered as such
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
        let named = arguments.dropFirst(spec.namedPolicyAt ?? arguments.count)
        if let policy = try? Policy(words: named.map(text)), !user.mayUse(policy: policy) {
            throw CommandError(message: "NOPERM User \(user.name) may not use policy \(policy.kind)")
        }
    }

    enum Outcome {
        case reply(RESPReply)
        case replyAndClose(RESPReply)
    }

    func execute(_ arguments: [[UInt8]]) async -> Outcome {
        let name = String(decoding: arguments[0], as: UTF8.self).uppercased()
        if name == "QUIT" { return .replyAndClose(.ok) }
        // Looked up once per command: access control, the audit log and the run read it.
        let entry = RedisCommandTable.entries[name]
        guard metrics != nil else { return .reply(await reply(name, entry, Array(arguments.dropFirst()))) }
        routedPolicy = nil
        let start = ContinuousClock().now
        let reply = await reply(name, entry, Array(arguments.dropFirst()))
        return .reply(finish(name, entry, reply, since: start))
    }

    /// `execute` without a task, for a register command the router starts at once
    /// (`Router.start`: an available write, a plain read) when this runs on the node's
    /// executor: `then` gets the outcome on that executor, possibly before this returns. False:
    /// nothing was done, and `execute` serves the command.
    func executeNow(_ arguments: [[UInt8]], then: @escaping @Sendable (Outcome) -> Void) -> Bool {
        let name = String(decoding: arguments[0], as: UTF8.self).uppercased()
        guard let entry = RedisCommandTable.entries[name], let syntax = entry.register, !entry.audited, node.isCurrentExecutor else { return false }
        let arguments = Array(arguments.dropFirst())
        let clock = ContinuousClock()
        let start = clock.now
        let command: RegisterCommand
        do {
            // The checks of `reply` and `replyUnaudited`, in their order.
            try authorize(name, entry, arguments)
            guard entry.arguments.contains(arguments.count) else { throw CommandError.arity(name) }
            let bytes = arguments.reduce(0) { $0 + $1.count }
            guard bytes <= configuration.valueBytesMax else {
                throw CommandError(message: "ERR \(name) carries \(bytes) bytes, more than max-value-bytes (\(configuration.valueBytesMax)); nothing was applied")
            }
            command = try syntax.parse(arguments)
        } catch {
            routedPolicy = nil
            then(.reply(finish(name, entry, Self.errorReply(error), since: start)))
            return true
        }
        let declared = router.policy(of: command.key)
        let router = self.router
        let complete: @Sendable (Result<RegisterAnswer, ContinuumError>) -> Void = { [self] result in
            let reply: RESPReply
            do {
                reply = try syntax.format(try result.get(), self)
            } catch {
                reply = Self.errorReply(error)
            }
            routedPolicy = declared
            then(.reply(finish(name, entry, reply, since: start)))
        }
        return node.assumeIsolated { node in router.start(command, declared: declared, on: node, then: complete) }
    }

    /// Records the command's metrics (when measured) and returns its reply.
    private func finish(_ name: String, _ entry: RedisCommandEntry?, _ reply: RESPReply, since start: ContinuousClock.Instant) -> RESPReply {
        guard let metrics else { return reply }
        let failure: String? = if case let .error(message) = reply {
            message.prefix { $0 != " " }.lowercased()
        } else {
            nil
        }
        metrics.recordCommand(entry != nil ? name.lowercased() : "unknown", policy: routedPolicy?.kind ?? "none",
                              duration: ContinuousClock().now - start, error: failure)
        return reply
    }

    /// The error line of a command's failure.
    static func errorReply(_ error: any Error) -> RESPReply {
        switch error {
        case let error as CommandError: .error(error.message)
        case let error as ContinuumError: .error(error.replyLine)
        default: .error("ERR \(error)")
        }
    }

    private func reply(_ name: String, _ entry: RedisCommandEntry?, _ arguments: [[UInt8]]) async -> RESPReply {
        let reply: RESPReply
        do {
            try authorize(name, entry, arguments)
            reply = await replyUnaudited(name, entry, arguments)
        } catch {
            reply = .error((error as? CommandError)?.message ?? "ERR \(error)")
        }
        if let audit, entry?.audited == true {
            // Arguments are names and policies (no values), each cut to 64 bytes for the log.
            let words = arguments.prefix(8).map { String(decoding: $0.prefix(64), as: UTF8.self) }
            audit.notice("admin command", metadata: [
                "who": "\(user?.name ?? "(not signed in)")", "from": "\(remote)", "command": "\(name) \(words.joined(separator: " "))",
                "outcome": "\({ if case let .error(message) = reply { message } else { "ok" } }())",
            ])
        }
        return reply
    }

    private func replyUnaudited(_ name: String, _ entry: RedisCommandEntry?, _ arguments: [[UInt8]]) async -> RESPReply {
        guard let entry else { return .error("ERR unknown command '\(name.lowercased())'") }
        guard entry.arguments.contains(arguments.count) else { return .error(CommandError.arity(name).message) }
        let bytes = arguments.reduce(0) { $0 + $1.count }
        guard bytes <= configuration.valueBytesMax else {
            return .error("ERR \(name) carries \(bytes) bytes, more than max-value-bytes (\(configuration.valueBytesMax)); nothing was applied")
        }
        do {
            return try await entry.run(self, arguments)
        } catch {
            return Self.errorReply(error)
        }
    }

    /// A command's own errors that are no register's business (sign-in, arity, syntax).
    struct CommandError: Error {
        var message: String
        static func arity(_ name: String) -> CommandError { CommandError(message: "ERR wrong number of arguments for '\(name.lowercased())' command") }
    }

    func text(_ bytes: [UInt8]) -> String { RedisCommandTable.text(bytes) }

    /// This connection's client number for linearizable writes (`CLIENT ID`).
    func clientID() async -> UInt64 { await caller.identity(at: node) }

    /// Runs a register command through the router, under the connection's identity.
    func route(_ command: RegisterCommand) async throws(ContinuumError) -> RegisterAnswer {
        // One catalogue lookup: the metric's label and the route.
        let declared = router.policy(of: command.key)
        routedPolicy = switch command {
        case let .get(_, policy?, _), let .read(_, policy?): policy
        default: declared
        }
        return try await router.run(command, declared: declared, as: &caller)
    }

    /// The client's user may use `policy` (a declaration a client carried, say).
    func requireUse(of policy: Policy) throws {
        if let user, !user.mayUse(policy: policy) {
            throw CommandError(message: "NOPERM User \(user.name) may not use policy \(policy.kind)")
        }
    }

    /// The keys with a declared policy in `node`'s catalogue.
    static func declaredPolicies(at node: Node) -> [(key: String, policy: Policy)] {
        node.policies.all.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
    }

    /// Signs in as `name` (`AUTH`, `HELLO ... AUTH`); a refusal leaves the connection as it was.
    func signIn(_ name: String, _ password: [UInt8]) throws {
        guard let signed = configuration.access.authenticate(name, password) else {
            audit?.info("refused credentials", metadata: ["user": "\(name.prefix(64))", "from": "\(remote)"])
            throw CommandError(message: "WRONGPASS invalid username-password pair or user is disabled.")
        }
        user = signed
    }

    /// `HELLO [protover [AUTH username password] [SETNAME clientname]]`.
    func hello(_ arguments: [[UInt8]]) throws -> RESPReply {
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

    func info() async throws -> String {
        let status = await node.consensusStatus
        let staleness = await node.certifiedStaleness
        var lines = ["# Server", "redis_version:7.0.0", "continuum_version:\(NodeServer.version)", "process_id:\(getpid())",
                     "continuum_node:n\(node.id.rawValue)",
                     "# Continuum", "default_policy:\(configuration.defaultPolicy.words.joined(separator: " "))"]
        lines.append("fsync:\(configuration.fsync)")
        lines.append("storage_compactions_pending:\(await node.compactionsPending)")
        if let storeBytes = configuration.storeBytes { lines.append("store_bytes:\(storeBytes())") }
        if let status { lines += ["raft_role:\(status.role)", "raft_term:\(status.term)", "raft_commit_index:\(status.commitIndex)",
                                  "raft_applied_index:\(status.appliedIndex)", "raft_snapshot_index:\(status.snapshotIndex)",
                                  "registers_linearizable:\(status.keys)"] }
        if let replica = await node.replicaStatus {
            lines += ["registers_available:\(replica.availableRegisters)", "registers_serializable:\(replica.serializableKeys)",
                      "peers_reachable:\(replica.reachablePeers.map { "n\($0.rawValue)" }.joined(separator: ","))"]
        }
        lines.append("certified_staleness_available_ms:\(staleness.available.map { "\($0.nanoseconds / 1_000_000)" } ?? "none")")
        let byMember = await node.certifiedStalenessByMember.map { "n\($0.member.rawValue)=\($0.staleness.map { "\($0.nanoseconds / 1_000_000)" } ?? "none")" }
        lines.append("certified_staleness_available_by_member_ms:\(byMember.joined(separator: ","))")
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
                      "replication_retransmissions:\(replication.retransmissions)",
                      "membership_late_probe_ticks:\(replication.lateProbeTicks)",
                      "replication_reachability_changes:\(replication.reachabilityChanges)",
                      "replication_certificates_sent:\(replication.certificatesSent)",
                      "replication_certificates_withheld:\(replication.certificatesWithheld)",
                      "replication_certificates_adopted:\(replication.certificatesAdopted)",
                      "replication_certificates_refused_gap:\(replication.certificatesRefusedGap)",
                      "replication_certificates_refused_wanting:\(replication.certificatesRefusedWanting)",
                      "replication_relays_held_back:\(replication.relaysHeldBack)",
                      "replication_relays_spared:\(replication.relaysSpared)",
                      "replication_relays_due:\(replication.relaysDue)",
                      "replication_relays_waiting:\(replication.relaysWaiting)"]
        }
        return lines.joined(separator: "\r\n") + "\r\n"
    }

}

extension RESPReply {
    /// An array's elements (none otherwise).
    var elements: [RESPReply] {
        if case let .array(elements) = self { return elements }
        return []
    }
}
