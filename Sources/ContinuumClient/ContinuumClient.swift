import ContinuumCore
import ContinuumProtocols
import NIOCore
import NIOPosix

/// A Swift application's connection to a Continuum cluster over the network: declare registers
/// with their policies and use them as in the embedded cluster (`Node.declare`,
/// `Register.read(_:)`, `LinearizableRegister.apply(_:)`), with the same `Policy`,
/// `ReadResult`, `ReadReceipt` and `ContinuumError`.
///
/// ```swift
/// let cluster = try await ContinuumClient.connect(to: ["127.0.0.1:6401", "127.0.0.1:6402", "127.0.0.1:6403"])
/// let views = try await cluster.declare("views", as: PNCounter.self, policy: .available)
/// try await views.increment(by: 1)
/// let seen = try await views.read(.bounded(staleness: .seconds(1), latency: .milliseconds(50)))
/// print(seen.value.value, seen.receipt)
/// ```
///
/// It speaks the Redis protocol to one node at a time (`CONTINUUM.DECLARE`, `CONTINUUM.APPLY`,
/// `CONTINUUM.READ` and the string commands), and moves to the next address when that node
/// cannot be reached or answers `UNAVAILABLE` (it is on the minority side of a partition, say).
/// A read is retried at the next node; a write is retried only when it certainly took no effect
/// (the connection could not be made, or the node answered `UNAVAILABLE`). A write whose
/// connection broke after it was sent fails with `ContinuumError.indeterminate`: it may or may
/// not take effect, and retrying it could apply it twice.
///
/// What differs from the embedded API: updates are operations (`CRDTOperation`), not closures,
/// because closures cannot cross the network (the Lasp client's way); the register types are
/// the ones the server stores under every policy (`PNCounter`, `ORSet<String>`, `EWFlag`,
/// `MaxRegister<UInt64>`, and byte strings).
///
/// A client is a session (unless `Configuration.session` is off): it keeps, per typed register,
/// the join of every state it wrote or read, and joins it into what it reads next, so that
/// reads show its own writes and never go back, on whichever node it lands (a node that missed
/// its writes, being cut off or behind on anti-entropy, included). Byte strings are not covered.
public actor ContinuumClient {
    public struct Configuration: Sendable {
        /// How long to wait for a connection to one node.
        public var connectTimeout: Duration = .seconds(2)
        /// How long one command may wait for its reply (then the connection is closed).
        public var replyTimeout: Duration = .seconds(10)
        /// Session guarantees for typed registers: every state this client wrote or read is
        /// joined into what it reads next, wherever it reads (read-your-writes, monotonic reads).
        /// The client keeps one state per register it used.
        public var session: Bool = true
        /// Who to sign in as on every connection (nil: the default user, no `AUTH`).
        public var credentials: Credentials?
        /// TLS to every node (nil: plain TCP).
        public var tls: ClientTLS?

        public init(connectTimeout: Duration = .seconds(2), replyTimeout: Duration = .seconds(10), session: Bool = true,
                    credentials: Credentials? = nil, tls: ClientTLS? = nil) {
            self.credentials = credentials
            self.tls = tls
            self.connectTimeout = connectTimeout
            self.replyTimeout = replyTimeout
            self.session = session
        }
    }

    /// The nodes' Redis-protocol addresses, tried in order (from the one in use).
    public nonisolated let addresses: [(host: String, port: Int)]
    public nonisolated let configuration: Configuration
    private var connection: RESPClient?
    /// The join of the states this client wrote and read, per typed register.
    private var seen: [String: LogCRDT] = [:]
    private var connecting: Task<RESPClient?, Never>?
    private var current = 0

    private init(addresses: [(host: String, port: Int)], configuration: Configuration) {
        self.addresses = addresses
        self.configuration = configuration
    }

    /// Connects to the first node of `addresses` (`host:port`, each a node's Redis-protocol
    /// port) that answers; fails with `unavailable` when none does.
    public static func connect(to addresses: [String], configuration: Configuration = Configuration()) async throws(ContinuumError)
        -> ContinuumClient
    {
        guard !addresses.isEmpty else { throw .invalidRequest("no node addresses") }
        var parsed: [(host: String, port: Int)] = []
        for text in addresses {
            let address = try hostPort(text)
            guard address.port > 0 else { throw .invalidRequest("'\(text)': port 0 names no node") }
            parsed.append(address)
        }
        let client = ContinuumClient(addresses: parsed, configuration: configuration)
        _ = try await client.send(["PING"], retry: .always)
        return client
    }

    /// Parses `host:port` (a port in 0...65,535).
    public nonisolated static func hostPort(_ text: String) throws(ContinuumError) -> (host: String, port: Int) {
        guard let colon = text.lastIndex(of: ":"), colon != text.startIndex, let port = Int(text[text.index(after: colon)...]),
              (0...65_535).contains(port) else {
            throw .invalidRequest("'\(text)' is not host:port")
        }
        return (String(text[..<colon]), port)
    }

    /// The address of the node in use (`host:port`), if connected.
    public var connectedNode: String? {
        connection == nil ? nil : "\(addresses[current].host):\(addresses[current].port)"
    }

    public func close() async {
        await connection?.close()
        connection = nil
    }

    // MARK: Registers

    /// Declares a register of `type` under `policy` (nil: whatever the key has, or the cluster's
    /// default) and returns its handle. The declaration is stored at the node in use and reaches
    /// the others by anti-entropy: declare before use. Fails with `typeMismatch` when the
    /// register exists with another type.
    public func declare<Value: RemoteRegisterValue>(_ name: String, as type: Value.Type, policy: Policy? = nil) async throws(ContinuumError)
        -> RemoteRegister<Value>
    {
        try Self.checkName(name)
        let reply = try await send(["CONTINUUM.DECLARE", name, Value.kind] + (policy?.words ?? []), retry: .always, register: name,
                                   type: Value.kind)
        guard reply == .simple("OK") else { throw .invalidRequest("unexpected reply \(reply)") }
        // The declaration as this node stored it, carried with every command on the register:
        // a node it has not reached by gossip yet joins it before routing the command.
        let declaration: [UInt8]? = switch try await send(["CONTINUUM.DECLARATION", name], retry: .always) {
        case let .bulk(bytes): bytes
        default: nil
        }
        return RemoteRegister(name: name, policy: policy, declaration: declaration, client: self)
    }

    /// A byte-string register (Redis strings): `SET`/`GET` under the key's policy.
    public nonisolated func string(_ name: String) throws(ContinuumError) -> RemoteString {
        try Self.checkName(name)
        return RemoteString(name: name, client: self)
    }

    /// Declares `name`'s policy without declaring a type (a string or serializable integer key).
    public func declarePolicy(_ name: String, _ policy: Policy) async throws(ContinuumError) {
        try Self.checkName(name)
        _ = try await send(["CONTINUUM.POLICY", name] + policy.words, retry: .always)
    }

    /// The policy the node in use routes `name` by (`"... (default)"` when nobody declared one).
    public func policy(of name: String) async throws(ContinuumError) -> String {
        guard case let .bulk(bytes) = try await send(["CONTINUUM.POLICY", name], retry: .always) else {
            throw .invalidRequest("unexpected reply")
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    private nonisolated static func checkName(_ name: String) throws(ContinuumError) {
        guard !name.isEmpty, !name.hasPrefix("continuum.") else { throw .invalidName(name) }
    }

    // MARK: Session

    /// `state` joined with what this client saw of `name` before (and remembered for next time).
    /// A join of register states is never older than either: a node that has not yet heard of
    /// this client's writes (it moved there, or anti-entropy has not run) still shows them.
    func observe(_ name: String, _ state: LogCRDT) -> LogCRDT {
        guard configuration.session else { return state }
        let joined = seen[name].flatMap { $0.joined(with: state) } ?? state
        seen[name] = joined
        return joined
    }

    // MARK: Sending

    enum Retry {
        /// Reads and declarations: any failure moves to the next node and tries again.
        case always
        /// Writes: only when the command certainly took no effect.
        case ifNotApplied
    }

    /// Sends one command, moving between nodes as `retry` allows; maps error replies to
    /// `ContinuumError`.
    func send(_ arguments: [String], retry: Retry, register: String? = nil, type: String? = nil) async throws(ContinuumError) -> RESPReply {
        try await send(arguments.map { Array($0.utf8) }, retry: retry, register: register, type: type)
    }

    func send(_ arguments: [[UInt8]], retry: Retry, register: String? = nil, type: String? = nil) async throws(ContinuumError) -> RESPReply {
        var lastProblem = "no node answered"
        // Each attempt moves on from the node that failed it (unless a concurrent command
        // already did), so every node gets a turn.
        for _ in 0..<addresses.count {
            let index = current
            guard let connection = await connected() else {
                lastProblem = "\(addresses[index].host):\(addresses[index].port) did not accept a connection"
                await moveOn(from: index)
                continue
            }
            let reply: RESPReply
            do {
                reply = try await connection.send(arguments)
            } catch {
                lastProblem = "\(error)"
                await moveOn(from: index)
                if retry == .ifNotApplied { throw .indeterminate }
                continue
            }
            guard case let .error(message) = reply else { return reply }
            let mapped = Self.error(message, register: register ?? "", type: type ?? "")
            if case let .unavailable(reason) = mapped {
                lastProblem = reason
                await moveOn(from: index)
                continue
            }
            throw mapped
        }
        throw .unavailable(lastProblem)
    }

    /// The connection to the current node, made once even when several commands ask at once.
    private func connected() async -> RESPClient? {
        // A connection the node closed while idle: nothing was sent on it, start afresh.
        if let connection, connection.isActive { return connection }
        if let connecting { return await connecting.value }
        connection = nil
        let index = current
        let address = addresses[index]
        let configuration = self.configuration
        let attempt = Task {
            try? await RESPClient.connect(host: address.host, port: address.port, timeout: configuration.connectTimeout,
                                          replyTimeout: configuration.replyTimeout, credentials: configuration.credentials,
                                          tls: configuration.tls)
        }
        connecting = attempt
        let made = await attempt.value
        connecting = nil
        guard current == index else {
            // A concurrent command moved on meanwhile: this connection is to the node it left.
            await made?.close()
            return nil
        }
        connection = made
        return made
    }

    /// Leaves node `index` for the next one, unless a concurrent command already moved on.
    private func moveOn(from index: Int) async {
        guard current == index else { return }
        current = (index + 1) % addresses.count
        let old = connection
        connection = nil
        await old?.close()
    }

    /// The error a node's reply names: the typed error the node threw, read back from its line
    /// (`ContinuumError.replyLine`).
    static func error(_ message: String, register: String, type: String) -> ContinuumError {
        let error = ContinuumError(replyLine: message)
        // A WRONGTYPE line without Continuum's tail (another server's) names no register: it is
        // the one this command asked about.
        if case let .typeMismatch("", declared, "") = error {
            return .typeMismatch(register: register, declared: declared, requested: type.isEmpty ? "this operation" : type)
        }
        return error
    }

    /// A `CONTINUUM.READ` reply's state and receipt: `[state, description, receipt]`, the state
    /// and the receipt in binary.
    static func decodeRead(_ reply: RESPReply) throws(ContinuumError) -> (LogCRDT?, ReadReceipt) {
        guard case let .array(fields) = reply, fields.count == 3, case let .bulk(bytes) = fields[2] else {
            throw .invalidRequest("unexpected CONTINUUM.READ reply \(reply)")
        }
        do {
            return (try decodeState(fields[0]), try ReadReceipt(binary: bytes))
        } catch let error as ContinuumError {
            throw error
        } catch {
            throw .invalidRequest("the read receipt does not decode: \(error)")
        }
    }

    static func decodeState(_ field: RESPReply) throws(ContinuumError) -> LogCRDT? {
        switch field {
        case .null: return nil
        case let .bulk(bytes):
            do {
                return try LogCRDT(binary: bytes)
            } catch {
                throw .invalidRequest("the node sent a state that does not decode: \(error)")
            }
        default: throw .invalidRequest("unexpected state \(field)")
        }
    }
}

extension LogCRDT {
    /// The join of two states of one register (nil when they are of different types).
    func joined(with other: LogCRDT) -> LogCRDT? {
        switch (self, other) {
        case (.counter(var mine), .counter(let theirs)):
            mine.formJoin(theirs)
            return .counter(mine)
        case (.set(var mine), .set(let theirs)):
            mine.formJoin(theirs)
            return .set(mine)
        case (.flag(var mine), .flag(let theirs)):
            mine.formJoin(theirs)
            return .flag(mine)
        case (.max(var mine), .max(let theirs)):
            mine.formJoin(theirs)
            return .max(mine)
        default:
            return nil
        }
    }
}

/// A register in a remote cluster, used under its declared policy (as `Register` and
/// `LinearizableRegister` are in the embedded cluster).
public struct RemoteRegister<Value: RemoteRegisterValue>: Sendable {
    public let name: String
    /// The policy it was declared with (nil: the key's existing or default policy).
    public let policy: Policy?
    /// The catalogue entry of the register's declaration (see `ContinuumClient.declare`).
    let declaration: [UInt8]?
    let client: ContinuumClient

    /// `arguments` with the declaration the register carries.
    private func carrying(_ arguments: [String]) -> [[UInt8]] {
        arguments.map { Array($0.utf8) } + (declaration.map { [Array("DECLARATION".utf8), $0] } ?? [])
    }

    /// Applies `operation` under the register's policy (locally at the node and merged by
    /// anti-entropy when `available`; through the Raft log when `linearizable`) and returns the
    /// state right after it.
    @discardableResult
    public func apply(_ operation: CRDTOperation) async throws(ContinuumError) -> Value {
        let reply = try await client.send(carrying(["CONTINUUM.APPLY", name] + operation.words), retry: .ifNotApplied, register: name,
                                          type: Value.kind)
        guard case let .array(fields) = reply, let first = fields.first, let answered = try ContinuumClient.decodeState(first) else {
            throw .invalidRequest("unexpected CONTINUUM.APPLY reply \(reply)")
        }
        let state = await client.observe(name, answered)
        guard let value = Value(state) else {
            throw .typeMismatch(register: name, declared: "\(state)", requested: Value.kind)
        }
        return value
    }

    /// The value under the register's policy.
    public func read() async throws(ContinuumError) -> Value {
        try await read(nil).value
    }

    /// The value under `policy` (nil: the register's own), with what was delivered.
    public func read(_ policy: Policy?) async throws(ContinuumError) -> ReadResult<Value> {
        let reply = try await client.send(carrying(["CONTINUUM.READ", name] + (policy?.words ?? [])), retry: .always, register: name,
                                          type: Value.kind)
        let (answered, nodeReceipt) = try ContinuumClient.decodeRead(reply)
        var receipt = nodeReceipt
        guard let answered else { return ReadResult(value: Value.bottom, receipt: receipt) }
        let state = await client.observe(name, answered)
        // The session added what the node had not seen: the version is the joined state's.
        if state != answered { receipt.version = .digest(of: state) }
        guard let value = Value(state) else { throw .typeMismatch(register: name, declared: "\(state)", requested: Value.kind) }
        return ReadResult(value: value, receipt: receipt)
    }
}

extension RemoteRegister where Value == PNCounter {
    /// Adds `amount` (negative to subtract); the counter's value right after.
    @discardableResult
    public func increment(by amount: Int64 = 1) async throws(ContinuumError) -> Int64 { try await apply(.counterAdd(amount)).value }
}

extension RemoteRegister where Value == ORSet<String> {
    @discardableResult
    public func insert(_ element: String) async throws(ContinuumError) -> Set<String> { try await apply(.setInsert(element)).elements }
    @discardableResult
    public func remove(_ element: String) async throws(ContinuumError) -> Set<String> { try await apply(.setRemove(element)).elements }
}

extension RemoteRegister where Value == EWFlag {
    public func enable() async throws(ContinuumError) { try await apply(.flagEnable) }
    public func disable() async throws(ContinuumError) { try await apply(.flagDisable) }
}

extension RemoteRegister where Value == MaxRegister<UInt64> {
    @discardableResult
    public func write(_ value: UInt64) async throws(ContinuumError) -> UInt64? { try await apply(.maxWrite(value)).value }
}

/// A byte-string key (a Redis string) under its policy: linearizable (Raft), available (a
/// last-writer-wins register) or serializable (integers, in one-operation transactions).
public struct RemoteString: Sendable {
    public let name: String
    let client: ContinuumClient

    public func set(_ value: [UInt8]) async throws(ContinuumError) {
        _ = try await client.send([Array("SET".utf8), Array(name.utf8), value], retry: .ifNotApplied, register: name, type: "string")
    }

    public func set(_ value: String) async throws(ContinuumError) { try await set(Array(value.utf8)) }

    /// The value under the key's policy (nil: none).
    public func get() async throws(ContinuumError) -> [UInt8]? {
        switch try await client.send(["GET", name], retry: .always, register: name, type: "string") {
        case .null: return nil
        case let .bulk(bytes): return bytes
        case let reply: throw .invalidRequest("unexpected GET reply \(reply)")
        }
    }

    /// The value under `policy` for this read (`CONTINUUM.GET`), for example a bounded read of
    /// a linearizable key that a follower may answer.
    public func get(_ policy: Policy) async throws(ContinuumError) -> [UInt8]? {
        let reply = try await client.send(["CONTINUUM.GET", name] + policy.words, retry: .always, register: name, type: "string")
        switch reply {
        case let .array(fields) where fields.first == .null: return nil
        case let .array(fields):
            guard case let .bulk(bytes)? = fields.first else { throw .invalidRequest("unexpected CONTINUUM.GET reply \(reply)") }
            return bytes
        default: throw .invalidRequest("unexpected CONTINUUM.GET reply \(reply)")
        }
    }

    /// Adds `amount` to an integer value; the value right after.
    @discardableResult
    public func increment(by amount: Int64 = 1) async throws(ContinuumError) -> Int64 {
        guard case let .integer(value) = try await client.send(["INCRBY", name, "\(amount)"], retry: .ifNotApplied) else {
            throw .invalidRequest("unexpected INCRBY reply")
        }
        return value
    }

    @discardableResult
    public func delete() async throws(ContinuumError) -> Bool {
        guard case let .integer(count) = try await client.send(["DEL", name], retry: .ifNotApplied) else {
            throw .invalidRequest("unexpected DEL reply")
        }
        return count > 0
    }
}
