import Continuum
import ContinuumCore
import ContinuumProtocols

/// One command of the Redis-protocol front end, declared: its name, how many arguments it
/// takes, what access control sees of it (`spec`), whether it is written to the audit log, and
/// what it does. A register command parses its arguments into a typed `RegisterCommand`, which
/// the connection's `Router` runs under the key's policy, and formats the typed answer; the
/// policy itself never shows here.
struct RedisCommandEntry: Sendable {
    let name: String
    /// How many arguments it takes, the name aside.
    let arguments: ClosedRange<Int>
    let spec: CommandSpec
    /// Whether each run is written to the audit log (who, what, from where), whether it succeeds
    /// or not: commands that change the cluster rather than a key's value.
    var audited = false
    /// For a register command, how it parses its arguments and formats the answer, so that a
    /// connection can start it without a task (`RedisConnection.executeNow`).
    var register: RegisterSyntax? = nil
    let run: @Sendable (RedisConnection, [[UInt8]]) async throws -> RESPReply

    struct RegisterSyntax: Sendable {
        let parse: @Sendable ([[UInt8]]) throws -> RegisterCommand
        let format: @Sendable (RegisterAnswer, RedisConnection) throws -> RESPReply
    }
}

/// Every command the Redis-protocol front end serves, by upper-case name.
enum RedisCommandTable {
    static let entries: [String: RedisCommandEntry] = {
        var table: [String: RedisCommandEntry] = [:]
        for entry in connection + registers + continuum + FaultInjectionCommands.entries + BackupFiles.entries {
            precondition(table[entry.name] == nil, "\(entry.name) is declared twice")
            table[entry.name] = entry
        }
        return table
    }()

    /// A register command: `parse` makes the typed command of the arguments, the router runs
    /// it, `format` makes the reply of its answer.
    static func register(
        _ name: String, _ arguments: ClosedRange<Int>, _ category: CommandSpec.Category, keys: CommandSpec.Keys = .first,
        namedPolicyAt: Int? = nil,
        parse: @escaping @Sendable ([[UInt8]]) throws -> RegisterCommand,
        format: @escaping @Sendable (RegisterAnswer, RedisConnection) throws -> RESPReply
    ) -> RedisCommandEntry {
        RedisCommandEntry(name: name, arguments: arguments, spec: CommandSpec(category: category, keys: keys, namedPolicyAt: namedPolicyAt),
                          register: .init(parse: parse, format: format)) { connection, arguments in
            try format(try await connection.route(try parse(arguments)), connection)
        }
    }

    // MARK: Registers

    static let registers: [RedisCommandEntry] = [
        register("GET", 1...1, .read, parse: { .get(key: text($0[0])) }, format: { answer, _ in try bytes(answer) }),
        register("SET", 2...2, .write, parse: { .set(key: text($0[0]), value: $0[1]) }, format: { _, _ in .ok }),
        register("INCR", 1...1, .write, parse: { .add(key: text($0[0]), amount: 1) }, format: integer),
        register("DECR", 1...1, .write, parse: { .add(key: text($0[0]), amount: -1) }, format: integer),
        register("INCRBY", 2...2, .write, parse: { .add(key: text($0[0]), amount: try decimal($0[1])) }, format: integer),
        register("DECRBY", 2...2, .write, parse: {
            let amount = try decimal($0[1])
            guard amount != .min else { throw Router.notAnInteger }
            return .add(key: text($0[0]), amount: -amount)
        }, format: integer),
        register("DEL", 1...Int.max, .write, keys: .all, parse: { .delete(keys: $0.map(text)) }, format: integer),
        register("SADD", 2...Int.max, .write, parse: { .changeSet(key: text($0[0]), members: $0.dropFirst().map(text), insert: true) },
                 format: integer),
        register("SREM", 2...Int.max, .write, parse: { .changeSet(key: text($0[0]), members: $0.dropFirst().map(text), insert: false) },
                 format: integer),
        register("SMEMBERS", 1...1, .read, parse: { .members(key: text($0[0])) }, format: { answer, _ in
            guard case let .members(members) = answer else { throw unexpected(answer) }
            return .set(members.sorted().map { .bulk($0) })
        }),
        register("SCARD", 1...1, .read, parse: { .count(key: text($0[0])) }, format: integer),
        register("SISMEMBER", 2...2, .read, parse: { .contains(key: text($0[0]), member: text($0[1])) }, format: integer),
    ]

    // MARK: Continuum's own

    static let continuum: [RedisCommandEntry] = [
        // CONTINUUM.POLICY key [policy...]: declares the key's policy (`default` withdraws the
        // declaration), or answers it.
        RedisCommandEntry(name: "CONTINUUM.POLICY", arguments: 1...4, spec: CommandSpec(category: .write, keys: .first, namedPolicyAt: 1),
                          audited: true) { connection, arguments in
            let key = text(arguments[0])
            let words = arguments.dropFirst().map(text)
            guard !words.isEmpty else {
                if let declared = PolicyCatalogue.policy(declared: await connection.router.declaration(of: key).value) {
                    return .bulk(declared.words.joined(separator: " "))
                }
                return .bulk("\(connection.router.defaultPolicy.words.joined(separator: " ")) (default)")
            }
            let withdraw = words.count == 1 && words[0].lowercased() == "default"
            try await connection.router.declare(policy: withdraw ? nil : try Policy(words: words), for: key)
            return .ok
        },
        // CONTINUUM.GET key [policy...]: the value with what the read delivered.
        register("CONTINUUM.GET", 1...4, .read, namedPolicyAt: 1, parse: {
            .get(key: text($0[0]), policy: $0.count > 1 ? try Policy(words: $0.dropFirst().map(text)) : nil, receipt: true)
        }, format: { answer, _ in
            guard case let .bytes(value, receipt) = answer else { throw unexpected(answer) }
            return .array([value.map { .bulk($0) } ?? .null, .bulk(receipt?.guarantee.description ?? "linearizable"),
                           receipt?.staleness.map { .integer($0.nanoseconds / 1_000_000) } ?? .null,
                           .bulk(receipt?.version.description ?? "-"),
                           .array((receipt?.replicas ?? []).map { .bulk("n\($0.rawValue)") })])
        }),
        // CONTINUUM.DECLARE key kind [policy...]: a typed CRDT register, declared under the
        // key's policy (declared first when given).
        RedisCommandEntry(name: "CONTINUUM.DECLARE", arguments: 2...5, spec: CommandSpec(category: .write, keys: .first, namedPolicyAt: 2)) {
            connection, arguments in
            let key = text(arguments[0])
            guard let kind = RegisterKind(rawValue: text(arguments[1]).lowercased()) else {
                throw ContinuumError.invalidRequest("unknown register type '\(text(arguments[1]))': counter, set, flag or max")
            }
            if arguments.count > 2 { try await connection.router.declare(policy: try Policy(words: arguments.dropFirst(2).map(text)), for: key) }
            _ = try await connection.route(.declare(key: key, kind: kind))
            return .ok
        },
        // CONTINUUM.APPLY key operation... [DECLARATION entry]: the register's state after.
        RedisCommandEntry(name: "CONTINUUM.APPLY", arguments: 2...5, spec: CommandSpec(category: .write, keys: .first)) { connection, arguments in
            let arguments = try await absorbingDeclaration(arguments, connection)
            guard (2...3).contains(arguments.count) else { throw RedisConnection.CommandError.arity("CONTINUUM.APPLY") }
            let operation = try CRDTOperation(words: arguments.dropFirst().map(text))
            guard case let .state(state, _) = try await connection.route(.apply(key: text(arguments[0]), operation: operation)) else {
                throw ContinuumError.invalidRequest("unexpected answer")
            }
            return reply(state: state, receipt: nil)
        },
        // CONTINUUM.READ key [policy...] [DECLARATION entry]: the state and its read receipt.
        RedisCommandEntry(name: "CONTINUUM.READ", arguments: 1...6, spec: CommandSpec(category: .read, keys: .first, namedPolicyAt: 1)) {
            connection, arguments in
            let arguments = try await absorbingDeclaration(arguments, connection)
            guard (1...4).contains(arguments.count) else { throw RedisConnection.CommandError.arity("CONTINUUM.READ") }
            let policy = arguments.count > 1 ? try Policy(words: arguments.dropFirst().map(text)) : nil
            let answer = try await connection.route(.read(key: text(arguments[0]), policy: policy))
            guard case let .state(state, receipt) = answer else { throw unexpected(answer) }
            return reply(state: state, receipt: receipt)
        },
        // CONTINUUM.DECLARATION key: the key's catalogue entry, for a client to carry.
        RedisCommandEntry(name: "CONTINUUM.DECLARATION", arguments: 1...1, spec: CommandSpec(category: .read, keys: .first)) {
            connection, arguments in
            let entry = await connection.router.declaration(of: text(arguments[0]))
            return entry.isBottom ? .null : .bulk(entry.binaryEncoded())
        },
    ]

    /// A client may carry the register's declaration (`DECLARATION <entry>`, as
    /// `CONTINUUM.DECLARATION` gave it): joined here first, so that a node the declaration has
    /// not reached by gossip yet routes the command as declared. The arguments without it.
    static func absorbingDeclaration(_ arguments: [[UInt8]], _ connection: RedisConnection) async throws -> [[UInt8]] {
        guard arguments.count >= 3, text(arguments[arguments.count - 2]).uppercased() == "DECLARATION" else { return arguments }
        let entry: LWWRegister<String>
        do {
            entry = try LWWRegister<String>(binary: arguments[arguments.count - 1])
        } catch {
            throw ContinuumError.invalidRequest("the declaration does not decode: \(error)")
        }
        // A carried declaration names a policy as CONTINUUM.POLICY does: the user must be
        // allowed it.
        if let policy = PolicyCatalogue.policy(declared: entry.value) { try connection.requireUse(of: policy) }
        try await connection.router.absorb(declaration: entry, for: text(arguments[0]))
        return Array(arguments.dropLast(2))
    }

    // MARK: The connection's own

    static func connectionCommand(_ name: String, _ arguments: ClosedRange<Int>,
                                  _ run: @escaping @Sendable (RedisConnection, [[UInt8]]) async throws -> RESPReply) -> RedisCommandEntry {
        RedisCommandEntry(name: name, arguments: arguments, spec: CommandSpec(category: .connection, keys: .none), run: run)
    }

    static let connection: [RedisCommandEntry] = [
        connectionCommand("PING", 0...1) { _, arguments in arguments.first.map { .bulk($0) } ?? .simple("PONG") },
        connectionCommand("ECHO", 1...1) { _, arguments in .bulk(arguments[0]) },
        connectionCommand("QUIT", 0...Int.max) { _, _ in .ok },  // answered (and the connection closed) before the table
        connectionCommand("HELLO", 0...Int.max) { connection, arguments in try connection.hello(arguments) },
        connectionCommand("AUTH", 1...2) { connection, arguments in
            try connection.signIn(arguments.count == 2 ? text(arguments[0]) : "default", arguments[arguments.count - 1])
            return .ok
        },
        connectionCommand("ACL", 1...Int.max) { connection, arguments in
            switch text(arguments[0]).uppercased() {
            case "WHOAMI": return .bulk(connection.user?.name ?? "default")
            case "CAT": return .array(CommandSpec.Category.allCases.map { .bulk($0.rawValue) })
            case "LIST":
                guard connection.user?.isAdmin == true else {
                    throw RedisConnection.CommandError(
                        message: "NOPERM User \(connection.user?.name ?? "default") has no permissions to run the 'acl|list' command")
                }
                return .array(connection.configuration.access.users.values.sorted { $0.name < $1.name }.map { .bulk($0.rule) })
            default: throw RedisConnection.CommandError(message: "ERR ACL \(text(arguments[0])): WHOAMI, CAT and LIST are supported")
            }
        },
        connectionCommand("SELECT", 1...1) { _, arguments in
            guard text(arguments[0]) == "0" else { throw RedisConnection.CommandError(message: "ERR DB index is out of range") }
            return .ok
        },
        connectionCommand("CLIENT", 1...Int.max) { connection, arguments in
            switch text(arguments[0]).uppercased() {
            case "GETNAME": return .null
            case "ID": return .integer(Int64(bitPattern: await connection.clientID()))
            default: return .ok
            }
        },
        connectionCommand("COMMAND", 0...Int.max) { _, _ in .array([]) },
        connectionCommand("CONFIG", 1...Int.max) { connection, arguments in
            guard text(arguments[0]).uppercased() == "GET" else {
                throw RedisConnection.CommandError(message: "ERR CONFIG \(text(arguments[0])) is not supported")
            }
            // What redis-benchmark asks for; durability is Continuum's own (see INFO).
            let known = ["save": "", "appendonly": "no"]
            let pairs = arguments.dropFirst().map(text).compactMap { name in known[name.lowercased()].map { (name.lowercased(), $0) } }
            return connection.resp3 ? .map(pairs.map { (.bulk($0.0), .bulk($0.1)) }) : .array(pairs.flatMap { [.bulk($0.0), .bulk($0.1)] })
        },
        connectionCommand("INFO", 0...Int.max) { connection, _ in .bulk(try await connection.info()) },
    ]

    // MARK: Parsing and formatting

    static func text(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }

    static func decimal(_ bytes: [UInt8]) throws(ContinuumError) -> Int64 {
        guard let value = KeyValueStateMachine.decimal(text(bytes)) else { throw Router.notAnInteger }
        return value
    }

    static func unexpected(_ answer: RegisterAnswer) -> ContinuumError { .invalidRequest("unexpected answer \(answer)") }

    static func bytes(_ answer: RegisterAnswer) throws -> RESPReply {
        guard case let .bytes(value, _) = answer else { throw unexpected(answer) }
        return value.map { .bulk($0) } ?? .null
    }

    static let integer: @Sendable (RegisterAnswer, RedisConnection) throws -> RESPReply = { answer, _ in
        switch answer {
        case let .integer(value): .integer(value)
        case let .boolean(value): .integer(value ? 1 : 0)
        default: throw unexpected(answer)
        }
    }

    /// `[state, description, receipt]`: the state's binary encoding (null when absent), its
    /// text, and the read receipt's binary encoding (`ReadReceipt`'s; null for a write).
    static func reply(state: LogCRDT?, receipt: ReadReceipt?) -> RESPReply {
        .array([state.map { .bulk($0.binaryEncoded()) } ?? .null, .bulk(state?.description ?? "none"),
                receipt.map { .bulk($0.binaryEncoded()) } ?? .null])
    }
}
