import ContinuumCore

/// The CRDTs a linearizable register can hold. Their operations are applied by the state
/// machine in log order, as one replica (the log), so every replica applies the same sequence
/// and the register is linearizable, not just convergent.
public enum LogCRDT: Sendable, Equatable, BinaryCodable, CustomStringConvertible {
    case counter(PNCounter)
    case set(ORSet<String>)
    case flag(EWFlag)
    case max(MaxRegister<UInt64>)

    public var description: String {
        switch self {
        case let .counter(counter): "counter \(counter.value)"
        case let .set(set): "set \(set.elements.sorted())"
        case let .flag(flag): "flag \(flag.isEnabled)"
        case let .max(register): "max \(register.value.map(String.init) ?? "nil")"
        }
    }

    public func encode(to writer: inout BinaryWriter) {
        switch self {
        case let .counter(value): writer.writeByte(0); value.encode(to: &writer)
        case let .set(value): writer.writeByte(1); value.encode(to: &writer)
        case let .flag(value): writer.writeByte(2); value.encode(to: &writer)
        case let .max(value): writer.writeByte(3); value.encode(to: &writer)
        }
    }

    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        switch try reader.readByte() {
        case 0: self = .counter(try PNCounter(from: &reader))
        case 1: self = .set(try ORSet<String>(from: &reader))
        case 2: self = .flag(try EWFlag(from: &reader))
        case 3: self = .max(try MaxRegister<UInt64>(from: &reader))
        case let tag: throw .invalid("log CRDT tag \(tag)")
        }
    }
}

/// An operation on a linearizable CRDT register.
public enum CRDTOperation: Sendable, Equatable, BinaryCodable, CustomStringConvertible {
    case counterAdd(Int64)
    case setInsert(String)
    case setRemove(String)
    case flagEnable
    case flagDisable
    case maxWrite(UInt64)

    /// The log applies every operation as this replica.
    public static let logReplica = ReplicaID(0)

    /// Applies the operation to `state` (a fresh CRDT of the right kind when absent); nil when
    /// `state` is a CRDT of another kind.
    public func apply(to state: LogCRDT?) -> LogCRDT? {
        var state = state
        return mutate(&state, replica: Self.logReplica) == nil ? nil : state
    }

    /// Applies the operation to `state` as `replica` (a fresh CRDT of the right kind when
    /// absent) and returns the delta it produced; nil, with `state` unchanged, when `state` is a
    /// CRDT of another kind. The log applies as `logReplica`; a node's own CRDT register as the
    /// node.
    public func mutate(_ state: inout LogCRDT?, replica: ReplicaID) -> LogCRDT? {
        switch self {
        case let .counterAdd(amount):
            guard var counter = Self.counter(state) else { return nil }
            let delta = counter.add(amount, replica: replica)
            state = .counter(counter)
            return .counter(delta)
        case let .setInsert(element):
            guard var set = Self.set(state) else { return nil }
            let delta = set.insert(element, replica: replica)
            state = .set(set)
            return .set(delta)
        case let .setRemove(element):
            guard var set = Self.set(state) else { return nil }
            let delta = set.remove(element)
            state = .set(set)
            return .set(delta)
        case .flagEnable, .flagDisable:
            guard var flag = Self.flag(state) else { return nil }
            let delta = self == .flagEnable ? flag.enable(replica: replica) : flag.disable()
            state = .flag(flag)
            return .flag(delta)
        case let .maxWrite(value):
            guard var register = Self.max(state) else { return nil }
            let delta = register.write(value)
            state = .max(register)
            return .max(delta)
        }
    }

    /// The operation as the Redis protocol's `CONTINUUM.APPLY` takes it: `add N`, `insert E`,
    /// `remove E`, `enable`, `disable`, `write N`.
    public var words: [String] {
        switch self {
        case let .counterAdd(amount): ["add", "\(amount)"]
        case let .setInsert(element): ["insert", element]
        case let .setRemove(element): ["remove", element]
        case .flagEnable: ["enable"]
        case .flagDisable: ["disable"]
        case let .maxWrite(value): ["write", "\(value)"]
        }
    }

    /// Parses `words` (the inverse of `words`).
    public init(words: [String]) throws(ContinuumError) {
        switch (words.first?.lowercased(), words.count) {
        case ("add", 2):
            guard let amount = KeyValueStateMachine.decimal(words[1]) else {
                throw .invalidRequest("'\(words[1])' is not an integer or out of range")
            }
            self = .counterAdd(amount)
        case ("insert", 2): self = .setInsert(words[1])
        case ("remove", 2): self = .setRemove(words[1])
        case ("enable", 1): self = .flagEnable
        case ("disable", 1): self = .flagDisable
        case ("write", 2):
            guard let value = UInt64(words[1]) else { throw .invalidRequest("'\(words[1])' is not an unsigned integer") }
            self = .maxWrite(value)
        default:
            throw .invalidRequest("unknown operation '\(words.joined(separator: " "))': add N, insert E, remove E, enable, disable or write N")
        }
    }

    private static func counter(_ state: LogCRDT?) -> PNCounter? {
        switch state { case nil: PNCounter(); case let .counter(counter)?: counter; default: nil }
    }
    private static func set(_ state: LogCRDT?) -> ORSet<String>? {
        switch state { case nil: ORSet(); case let .set(set)?: set; default: nil }
    }
    private static func flag(_ state: LogCRDT?) -> EWFlag? {
        switch state { case nil: EWFlag(); case let .flag(flag)?: flag; default: nil }
    }
    private static func max(_ state: LogCRDT?) -> MaxRegister<UInt64>? {
        switch state { case nil: MaxRegister(); case let .max(register)?: register; default: nil }
    }

    public var description: String {
        switch self {
        case let .counterAdd(amount): "add \(amount)"
        case let .setInsert(element): "insert \(element)"
        case let .setRemove(element): "remove \(element)"
        case .flagEnable: "enable"
        case .flagDisable: "disable"
        case let .maxWrite(value): "max \(value)"
        }
    }

    public func encode(to writer: inout BinaryWriter) {
        switch self {
        case let .counterAdd(amount): writer.writeByte(0); amount.encode(to: &writer)
        case let .setInsert(element): writer.writeByte(1); element.encode(to: &writer)
        case let .setRemove(element): writer.writeByte(2); element.encode(to: &writer)
        case .flagEnable: writer.writeByte(3)
        case .flagDisable: writer.writeByte(4)
        case let .maxWrite(value): writer.writeByte(5); value.encode(to: &writer)
        }
    }

    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        switch try reader.readByte() {
        case 0: self = .counterAdd(try Int64(from: &reader))
        case 1: self = .setInsert(try String(from: &reader))
        case 2: self = .setRemove(try String(from: &reader))
        case 3: self = .flagEnable
        case 4: self = .flagDisable
        case 5: self = .maxWrite(try UInt64(from: &reader))
        case let tag: throw .invalid("CRDT operation tag \(tag)")
        }
    }
}

/// A client's operation on the replicated key-value state machine. Values are integers; nil
/// means absent.
public enum KeyValueOperation: Sendable, Equatable, BinaryCodable, CustomStringConvertible {
    case read(key: String)
    case write(key: String, value: Int64?)
    case compareAndSet(key: String, expected: Int64?, new: Int64?)
    /// A CRDT operation on a CRDT-valued key (a separate namespace from integer keys).
    case crdt(key: String, CRDTOperation)
    case crdtRead(key: String)
    /// A byte string under `key` (the Redis string namespace; nil deletes it).
    case stringSet(key: String, value: [UInt8]?)
    case stringGet(key: String)
    /// Adds to the decimal integer a string holds (absent: 0), as Redis INCRBY does.
    case stringAdd(key: String, amount: Int64)
    /// Removes the keys from every namespace (strings, integers, CRDTs); counts those that existed.
    case delete(keys: [String])
    /// Inserts (or removes) members of the add-wins set under `key` in one entry; the result is
    /// how many were absent (present) when it applied, so the caller reads nothing first and
    /// nothing of the set travels back.
    case setChange(key: String, members: [String], insert: Bool)

    /// About the bytes of the operation's encoding: its keys and values, plus 16 per key.
    public var approximateBytes: Int {
        switch self {
        case let .stringSet(key, value): key.utf8.count + (value?.count ?? 0) + 16
        case let .crdt(key, .setInsert(member)), let .crdt(key, .setRemove(member)): key.utf8.count + member.utf8.count + 16
        case let .delete(keys): keys.reduce(0) { $0 + $1.utf8.count + 16 }
        case let .setChange(key, members, _): members.reduce(key.utf8.count + 16) { $0 + $1.utf8.count + 8 }
        default: key.utf8.count + 16
        }
    }

    public var key: String {
        switch self {
        case let .read(key), let .write(key, _), let .compareAndSet(key, _, _), let .crdt(key, _), let .crdtRead(key),
             let .stringSet(key, _), let .stringGet(key), let .stringAdd(key, _), let .setChange(key, _, _): key
        case let .delete(keys): keys.first ?? ""
        }
    }

    public var isRead: Bool {
        switch self {
        case .read, .crdtRead, .stringGet: true
        default: false
        }
    }

    public var description: String {
        switch self {
        case let .read(key): "read \(key)"
        case let .write(key, value): "write \(key)=\(value.map(String.init) ?? "nil")"
        case let .compareAndSet(key, expected, new): "cas \(key) \(expected.map(String.init) ?? "nil")→\(new.map(String.init) ?? "nil")"
        case let .crdt(key, operation): "\(operation) \(key)"
        case let .crdtRead(key): "read CRDT \(key)"
        case let .stringSet(key, value): "set \(key)=\(value.map { "\($0.count) bytes" } ?? "nil")"
        case let .stringGet(key): "get \(key)"
        case let .stringAdd(key, amount): "incrby \(key) \(amount)"
        case let .delete(keys): "delete \(keys)"
        case let .setChange(key, members, insert): "\(insert ? "insert" : "remove") \(members.count) members \(key)"
        }
    }

    public func encode(to writer: inout BinaryWriter) {
        switch self {
        case let .read(key):
            writer.writeByte(0)
            key.encode(to: &writer)
        case let .write(key, value):
            writer.writeByte(1)
            key.encode(to: &writer)
            value.encode(to: &writer)
        case let .compareAndSet(key, expected, new):
            writer.writeByte(2)
            key.encode(to: &writer)
            expected.encode(to: &writer)
            new.encode(to: &writer)
        case let .crdt(key, operation):
            writer.writeByte(3)
            key.encode(to: &writer)
            operation.encode(to: &writer)
        case let .crdtRead(key):
            writer.writeByte(4)
            key.encode(to: &writer)
        case let .stringSet(key, value):
            writer.writeByte(5)
            key.encode(to: &writer)
            value.encode(to: &writer)
        case let .stringGet(key):
            writer.writeByte(6)
            key.encode(to: &writer)
        case let .stringAdd(key, amount):
            writer.writeByte(7)
            key.encode(to: &writer)
            amount.encode(to: &writer)
        case let .delete(keys):
            writer.writeByte(8)
            keys.encode(to: &writer)
        case let .setChange(key, members, insert):
            writer.writeByte(9)
            key.encode(to: &writer)
            members.encode(to: &writer)
            writer.writeByte(insert ? 1 : 0)
        }
    }

    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        switch try reader.readByte() {
        case 0: self = .read(key: try String(from: &reader))
        case 1: self = .write(key: try String(from: &reader), value: try Int64?(from: &reader))
        case 2: self = .compareAndSet(key: try String(from: &reader), expected: try Int64?(from: &reader), new: try Int64?(from: &reader))
        case 3: self = .crdt(key: try String(from: &reader), try CRDTOperation(from: &reader))
        case 4: self = .crdtRead(key: try String(from: &reader))
        case 5: self = .stringSet(key: try String(from: &reader), value: try [UInt8]?(from: &reader))
        case 6: self = .stringGet(key: try String(from: &reader))
        case 7: self = .stringAdd(key: try String(from: &reader), amount: try Int64(from: &reader))
        case 8: self = .delete(keys: try [String](from: &reader))
        case 9:
            let key = try String(from: &reader), members = try [String](from: &reader)
            switch try reader.readByte() {
            case 0: self = .setChange(key: key, members: members, insert: false)
            case 1: self = .setChange(key: key, members: members, insert: true)
            case let flag: throw .invalid("set change flag \(flag)")
            }
        case let tag: throw .invalid("key-value operation tag \(tag)")
        }
    }
}

/// What an operation returned.
public enum KeyValueResult: Sendable, Equatable, BinaryCodable, CustomStringConvertible {
    case value(Int64?)
    case written
    case compareAndSet(swapped: Bool)
    /// A CRDT key's state (nil: absent).
    case crdt(LogCRDT?)
    /// The operation does not fit the kind of CRDT the key holds; nothing changed.
    case crdtKindMismatch
    case string([UInt8]?)
    case integer(Int64)
    /// The string is not a decimal integer, or the sum overflows; nothing changed.
    case notAnInteger
    case count(Int64)

    public var description: String {
        switch self {
        case let .value(value): "value \(value.map(String.init) ?? "nil")"
        case .written: "written"
        case let .compareAndSet(swapped): swapped ? "swapped" : "not swapped"
        case let .crdt(state): state.map { "\($0)" } ?? "absent"
        case .crdtKindMismatch: "CRDT kind mismatch"
        case let .string(bytes): bytes.map { "\($0.count) bytes" } ?? "absent"
        case let .integer(value): "integer \(value)"
        case .notAnInteger: "not an integer"
        case let .count(count): "count \(count)"
        }
    }

    public func encode(to writer: inout BinaryWriter) {
        switch self {
        case let .value(value):
            writer.writeByte(0)
            value.encode(to: &writer)
        case .written:
            writer.writeByte(1)
        case let .compareAndSet(swapped):
            writer.writeByte(2)
            swapped.encode(to: &writer)
        case let .crdt(state):
            writer.writeByte(3)
            state.encode(to: &writer)
        case .crdtKindMismatch:
            writer.writeByte(4)
        case let .string(bytes):
            writer.writeByte(5)
            bytes.encode(to: &writer)
        case let .integer(value):
            writer.writeByte(6)
            value.encode(to: &writer)
        case .notAnInteger:
            writer.writeByte(7)
        case let .count(count):
            writer.writeByte(8)
            count.encode(to: &writer)
        }
    }

    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        switch try reader.readByte() {
        case 0: self = .value(try Int64?(from: &reader))
        case 1: self = .written
        case 2: self = .compareAndSet(swapped: try Bool(from: &reader))
        case 3: self = .crdt(try LogCRDT?(from: &reader))
        case 4: self = .crdtKindMismatch
        case 5: self = .string(try [UInt8]?(from: &reader))
        case 6: self = .integer(try Int64(from: &reader))
        case 7: self = .notAnInteger
        case 8: self = .count(try Int64(from: &reader))
        case let tag: throw .invalid("key-value result tag \(tag)")
        }
    }
}

/// A command in the log: a client's write or compare-and-set, or a leader's no-op.
public struct LogCommand: Sendable, Equatable, BinaryCodable {
    /// The client and its request number: a retried request applies once.
    public var client: UInt64
    public var sequence: UInt64
    /// nil for the no-op a new leader appends to commit its term.
    public var operation: KeyValueOperation?

    public init(client: UInt64, sequence: UInt64, operation: KeyValueOperation?) {
        self.client = client
        self.sequence = sequence
        self.operation = operation
    }

    public static let noop = LogCommand(client: 0, sequence: 0, operation: nil)

    public func encode(to writer: inout BinaryWriter) {
        writer.writeVarint(client)
        writer.writeVarint(sequence)
        operation.encode(to: &writer)
    }

    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        client = try reader.readVarint()
        sequence = try reader.readVarint()
        operation = try KeyValueOperation?(from: &reader)
    }
}

public struct LogEntry: Sendable, Equatable, BinaryCodable, CustomStringConvertible {
    public var term: UInt64
    public var index: UInt64
    public var command: LogCommand

    /// About the bytes of the entry's encoding (exact for the bytes of keys and values, plus a
    /// fixed 32 for numbers and tags): the unit of batch and compaction limits, without encoding.
    public var approximateBytes: Int {
        32 + (command.operation?.approximateBytes ?? 0)
    }

    public init(term: UInt64, index: UInt64, command: LogCommand) {
        self.term = term
        self.index = index
        self.command = command
    }

    public var description: String { "\(index)@\(term) \(command.operation.map { "\($0)" } ?? "no-op")" }

    public func encode(to writer: inout BinaryWriter) {
        writer.writeVarint(term)
        writer.writeVarint(index)
        command.encode(to: &writer)
    }

    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        term = try reader.readVarint()
        index = try reader.readVarint()
        command = try LogCommand(from: &reader)
    }
}

/// The replicated key-value state machine: registers by key, and the last request applied per
/// client with its result, so that a retried request is answered, not applied again.
public struct KeyValueStateMachine: Sendable, Equatable, BinaryCodable {
    public private(set) var values: [String: Int64] = [:]
    public private(set) var crdts: [String: LogCRDT] = [:]
    public private(set) var strings: [String: [UInt8]] = [:]
    public private(set) var sessions: [UInt64: Session] = [:]
    /// About the bytes of the state's encoding, kept as it changes (a function of the content:
    /// strings' keys and values plus 16 each, 16 more per integer key, 64 more per CRDT key
    /// whatever its size, 32 per session). Compaction waits until as many bytes were applied.
    public private(set) var approximateBytes = 0

    static func bytes(string key: String, _ value: [UInt8]) -> Int { key.utf8.count + value.count + 16 }
    static func bytes(integer key: String) -> Int { key.utf8.count + 16 }
    static func bytes(crdt key: String) -> Int { key.utf8.count + 64 }
    static let sessionBytes = 32

    private mutating func setString(_ key: String, _ value: [UInt8]?) {
        if let old = strings[key] { approximateBytes -= Self.bytes(string: key, old) }
        strings[key] = value
        if let value { approximateBytes += Self.bytes(string: key, value) }
    }

    private mutating func setInteger(_ key: String, _ value: Int64?) {
        if values[key] != nil { approximateBytes -= Self.bytes(integer: key) }
        values[key] = value
        if value != nil { approximateBytes += Self.bytes(integer: key) }
    }

    private mutating func setCRDT(_ key: String, _ value: LogCRDT?) {
        if crdts[key] != nil { approximateBytes -= Self.bytes(crdt: key) }
        crdts[key] = value
        if value != nil { approximateBytes += Self.bytes(crdt: key) }
    }

    public struct Session: Sendable, Equatable, BinaryCodable {
        public var sequence: UInt64
        public var result: KeyValueResult

        public func encode(to writer: inout BinaryWriter) {
            writer.writeVarint(sequence)
            result.encode(to: &writer)
        }

        public init(sequence: UInt64, result: KeyValueResult) {
            self.sequence = sequence
            self.result = result
        }

        public init(from reader: inout BinaryReader) throws(WireDecodingError) {
            sequence = try reader.readVarint()
            result = try KeyValueResult(from: &reader)
        }
    }

    public init() {}

    public func read(_ key: String) -> Int64? { values[key] }

    /// The answer to a read operation, from the current state.
    public func query(_ operation: KeyValueOperation) -> KeyValueResult {
        switch operation {
        case let .crdtRead(key): .crdt(crdts[key])
        case let .stringGet(key): .string(strings[key])
        default: .value(values[operation.key])
        }
    }

    /// Applies a committed command; returns its result (the remembered one for a duplicate).
    public mutating func apply(_ command: LogCommand) -> KeyValueResult? {
        guard let operation = command.operation else { return nil }
        if let session = sessions[command.client], command.sequence <= session.sequence {
            return command.sequence == session.sequence ? session.result : nil
        }
        let result: KeyValueResult
        switch operation {
        case let .read(key):
            result = .value(values[key])
        case let .write(key, value):
            setInteger(key, value)
            result = .written
        case let .compareAndSet(key, expected, new):
            let swapped = values[key] == expected
            if swapped { setInteger(key, new) }
            result = .compareAndSet(swapped: swapped)
        case let .crdt(key, crdtOperation):
            if let next = crdtOperation.apply(to: crdts[key]) {
                setCRDT(key, next)
                result = .crdt(next)
            } else {
                result = .crdtKindMismatch
            }
        case let .crdtRead(key):
            result = .crdt(crdts[key])
        case let .stringSet(key, value):
            setString(key, value)
            result = .written
        case let .stringGet(key):
            result = .string(strings[key])
        case let .stringAdd(key, amount):
            let current = strings[key].map { String(decoding: $0, as: UTF8.self) }
            if let current, Self.decimal(current) == nil {
                result = .notAnInteger
            } else {
                let (sum, overflow) = (current.flatMap(Self.decimal) ?? 0).addingReportingOverflow(amount)
                if overflow {
                    result = .notAnInteger
                } else {
                    setString(key, Array(String(sum).utf8))
                    result = .integer(sum)
                }
            }
        case let .setChange(key, members, insert):
            // In place: the set leaves the dictionary while it changes, so nothing else holds its
            // storage and no member is copied.
            switch crdts[key] {
            case nil where !insert:
                result = .count(0)
            case nil, .set?:
                let existed = crdts[key] != nil
                var set: ORSet<String>
                if case let .set(existing)? = crdts.removeValue(forKey: key) { set = existing } else { set = ORSet() }
                var changed: Int64 = 0
                for member in members where set.contains(member) != insert {
                    changed += 1
                    _ = insert ? set.insert(member, replica: CRDTOperation.logReplica) : set.remove(member)
                }
                crdts[key] = .set(set)
                if !existed { approximateBytes += Self.bytes(crdt: key) }  // the accounting counts keys, not members
                result = .count(changed)
            default:
                result = .crdtKindMismatch
            }
        case let .delete(keys):
            var removed: Int64 = 0
            for key in Set(keys) {
                let string = strings[key]
                let integer = values[key]
                let crdt = crdts[key]
                setString(key, nil)
                setInteger(key, nil)
                setCRDT(key, nil)
                if string != nil || integer != nil || crdt != nil { removed += 1 }
            }
            result = .count(removed)
        }
        if sessions.updateValue(Session(sequence: command.sequence, result: result), forKey: command.client) == nil {
            approximateBytes += Self.sessionBytes
        }
        return result
    }

    /// A Redis decimal integer: optional minus, digits, no spaces or leading plus, fits 64 bits.
    public static func decimal(_ text: String) -> Int64? {
        guard !text.isEmpty, text.utf8.count <= 20, !text.hasPrefix("+"), text != "-" else { return nil }
        guard text.utf8.dropFirst(text.hasPrefix("-") ? 1 : 0).allSatisfy({ $0 >= 48 && $0 <= 57 }) else { return nil }
        return Int64(text)
    }

    public func encode(to writer: inout BinaryWriter) {
        values.encode(to: &writer)
        crdts.encode(to: &writer)
        strings.encode(to: &writer)
        sessions.encode(to: &writer)
    }

    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        values = try [String: Int64](from: &reader)
        crdts = try [String: LogCRDT](from: &reader)
        strings = try [String: [UInt8]](from: &reader)
        sessions = try [UInt64: Session](from: &reader)
        approximateBytes = strings.reduce(0) { $0 + Self.bytes(string: $1.key, $1.value) }
            + values.keys.reduce(0) { $0 + Self.bytes(integer: $1) }
            + crdts.keys.reduce(0) { $0 + Self.bytes(crdt: $1) }
            + sessions.count * Self.sessionBytes
    }
}

/// A snapshot: the state machine as of `lastIndex`, which had term `lastTerm`.
public struct RaftSnapshot: Sendable, Equatable, BinaryCodable {
    public var lastIndex: UInt64
    public var lastTerm: UInt64
    public var state: KeyValueStateMachine

    public init(lastIndex: UInt64, lastTerm: UInt64, state: KeyValueStateMachine) {
        self.lastIndex = lastIndex
        self.lastTerm = lastTerm
        self.state = state
    }

    public func encode(to writer: inout BinaryWriter) {
        writer.writeVarint(lastIndex)
        writer.writeVarint(lastTerm)
        state.encode(to: &writer)
    }

    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        lastIndex = try reader.readVarint()
        lastTerm = try reader.readVarint()
        state = try KeyValueStateMachine(from: &reader)
    }
}

/// What Raft keeps on disk, and the patches that change it: every persist carries the hard
/// state (term and vote); `replaceFrom` drops the entries from that index on before `entries`
/// are appended; a snapshot replaces the log prefix it covers.
public struct RaftDurableState: Sendable, Equatable, BinaryCodable {
    public var term: UInt64
    public var votedFor: NodeID?
    public var snapshot: RaftSnapshot?
    public var entries: [LogEntry]
    public var replaceFrom: UInt64?
    /// Patch only: a compaction of this node's own log into `snapshot`. It acknowledges
    /// nothing, so nothing waits for it: a store may write it after later patches (only ever
    /// replacing an older snapshot, never the hard state). A snapshot installed from the
    /// leader is not a compaction: the follower acknowledges it.
    public var compaction: Bool

    public init(term: UInt64, votedFor: NodeID?, snapshot: RaftSnapshot? = nil, entries: [LogEntry] = [], replaceFrom: UInt64? = nil,
                compaction: Bool = false) {
        self.term = term
        self.votedFor = votedFor
        self.snapshot = snapshot
        self.entries = entries
        self.replaceFrom = replaceFrom
        self.compaction = compaction
    }

    public func encode(to writer: inout BinaryWriter) {
        writer.writeVarint(term)
        votedFor.encode(to: &writer)
        snapshot.encode(to: &writer)
        entries.encode(to: &writer)
        replaceFrom.encode(to: &writer)
        compaction.encode(to: &writer)
    }

    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        term = try reader.readVarint()
        votedFor = try NodeID?(from: &reader)
        snapshot = try RaftSnapshot?(from: &reader)
        entries = try [LogEntry](from: &reader)
        replaceFrom = try UInt64?(from: &reader)
        compaction = try Bool(from: &reader)
    }
}

/// Raft's messages (Ongaro and Ousterhout 2014; thesis 2014 for pre-vote, ReadIndex and
/// leadership transfer), plus forwarding of client requests from followers to the leader.
public enum RaftMessage: Sendable, Equatable, BinaryCodable {
    case requestVote(term: UInt64, lastLogIndex: UInt64, lastLogTerm: UInt64, preVote: Bool, transfer: Bool)
    case vote(term: UInt64, granted: Bool, preVote: Bool)
    /// `round` numbers the leader's heartbeat rounds, for ReadIndex and leases. `stamp`: a
    /// leader holding its quorum lease certifies freshness (docs/design.md section 3).
    case appendEntries(term: UInt64, previousIndex: UInt64, previousTerm: UInt64, entries: [LogEntry], leaderCommit: UInt64, round: UInt64,
                       stamp: FreshnessStamp?)
    /// `matchIndex`: on success the last index known to match; on failure a hint (the
    /// follower's last index) from which to retry.
    case appendResult(term: UInt64, success: Bool, matchIndex: UInt64, round: UInt64)
    /// One chunk of the leader's snapshot as of `lastIndex` (term `lastTerm`): the bytes of its
    /// encoding from `offset` on; `done` on the last (InstallSnapshot with offsets, section 7
    /// of the Raft paper). An empty chunk probes where the follower is.
    case installSnapshot(term: UInt64, lastIndex: UInt64, lastTerm: UInt64, offset: UInt64, chunk: [UInt8], done: Bool, round: UInt64)
    /// A follower's answer to a chunk: `received` bytes of the snapshot as of `lastIndex` are
    /// buffered; `accepted` is false when the chunk did not continue them (lost or reordered).
    case snapshotProgress(term: UInt64, lastIndex: UInt64, received: UInt64, accepted: Bool, round: UInt64)
    case timeoutNow(term: UInt64)
    case forward(request: UInt64, client: UInt64, sequence: UInt64, KeyValueOperation)
    /// `index`: the leader's applied index when it answered.
    case forwardedResult(request: UInt64, KeyValueResult, index: UInt64)
    /// A follower's bounded read asks the leader for a read index (thesis 6.4).
    case readIndexRequest(read: UInt64)
    /// The leader's applied index once it confirmed leadership after the request arrived: a
    /// follower that has applied it can answer linearizably.
    case readIndexReply(read: UInt64, index: UInt64)

    /// The sender's term, for the messages that carry one.
    public var term: UInt64? {
        switch self {
        case let .requestVote(term, _, _, _, _), let .vote(term, _, _), let .appendEntries(term, _, _, _, _, _, _),
             let .appendResult(term, _, _, _), let .installSnapshot(term, _, _, _, _, _, _), let .snapshotProgress(term, _, _, _, _),
             let .timeoutNow(term):
            term
        case .forward, .forwardedResult, .readIndexRequest, .readIndexReply:
            nil
        }
    }

    public func encode(to writer: inout BinaryWriter) {
        switch self {
        case let .requestVote(term, lastLogIndex, lastLogTerm, preVote, transfer):
            writer.writeByte(0)
            writer.writeVarint(term)
            writer.writeVarint(lastLogIndex)
            writer.writeVarint(lastLogTerm)
            preVote.encode(to: &writer)
            transfer.encode(to: &writer)
        case let .vote(term, granted, preVote):
            writer.writeByte(1)
            writer.writeVarint(term)
            granted.encode(to: &writer)
            preVote.encode(to: &writer)
        case let .appendEntries(term, previousIndex, previousTerm, entries, leaderCommit, round, stamp):
            writer.writeByte(2)
            writer.writeVarint(term)
            writer.writeVarint(previousIndex)
            writer.writeVarint(previousTerm)
            entries.encode(to: &writer)
            writer.writeVarint(leaderCommit)
            writer.writeVarint(round)
            stamp.encode(to: &writer)
        case let .appendResult(term, success, matchIndex, round):
            writer.writeByte(3)
            writer.writeVarint(term)
            success.encode(to: &writer)
            writer.writeVarint(matchIndex)
            writer.writeVarint(round)
        case let .installSnapshot(term, lastIndex, lastTerm, offset, chunk, done, round):
            writer.writeByte(4)
            writer.writeVarint(term)
            writer.writeVarint(lastIndex)
            writer.writeVarint(lastTerm)
            writer.writeVarint(offset)
            writer.writeBytes(chunk)
            done.encode(to: &writer)
            writer.writeVarint(round)
        case let .snapshotProgress(term, lastIndex, received, accepted, round):
            writer.writeByte(10)
            writer.writeVarint(term)
            writer.writeVarint(lastIndex)
            writer.writeVarint(received)
            accepted.encode(to: &writer)
            writer.writeVarint(round)
        case let .timeoutNow(term):
            writer.writeByte(5)
            writer.writeVarint(term)
        case let .forward(request, client, sequence, operation):
            writer.writeByte(6)
            writer.writeVarint(request)
            writer.writeVarint(client)
            writer.writeVarint(sequence)
            operation.encode(to: &writer)
        case let .forwardedResult(request, result, index):
            writer.writeByte(7)
            writer.writeVarint(request)
            result.encode(to: &writer)
            writer.writeVarint(index)
        case let .readIndexRequest(read):
            writer.writeByte(8)
            writer.writeVarint(read)
        case let .readIndexReply(read, index):
            writer.writeByte(9)
            writer.writeVarint(read)
            writer.writeVarint(index)
        }
    }

    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        switch try reader.readByte() {
        case 0:
            self = .requestVote(term: try reader.readVarint(), lastLogIndex: try reader.readVarint(), lastLogTerm: try reader.readVarint(),
                                preVote: try Bool(from: &reader), transfer: try Bool(from: &reader))
        case 1: self = .vote(term: try reader.readVarint(), granted: try Bool(from: &reader), preVote: try Bool(from: &reader))
        case 2:
            self = .appendEntries(term: try reader.readVarint(), previousIndex: try reader.readVarint(), previousTerm: try reader.readVarint(),
                                  entries: try [LogEntry](from: &reader), leaderCommit: try reader.readVarint(), round: try reader.readVarint(),
                                  stamp: try FreshnessStamp?(from: &reader))
        case 3:
            self = .appendResult(term: try reader.readVarint(), success: try Bool(from: &reader), matchIndex: try reader.readVarint(), round: try reader.readVarint())
        case 4:
            self = .installSnapshot(term: try reader.readVarint(), lastIndex: try reader.readVarint(), lastTerm: try reader.readVarint(),
                                    offset: try reader.readVarint(), chunk: try reader.readBytes(), done: try Bool(from: &reader),
                                    round: try reader.readVarint())
        case 10:
            self = .snapshotProgress(term: try reader.readVarint(), lastIndex: try reader.readVarint(), received: try reader.readVarint(),
                                     accepted: try Bool(from: &reader), round: try reader.readVarint())
        case 5: self = .timeoutNow(term: try reader.readVarint())
        case 6:
            self = .forward(request: try reader.readVarint(), client: try reader.readVarint(), sequence: try reader.readVarint(),
                            try KeyValueOperation(from: &reader))
        case 7: self = .forwardedResult(request: try reader.readVarint(), try KeyValueResult(from: &reader), index: try reader.readVarint())
        case 8: self = .readIndexRequest(read: try reader.readVarint())
        case 9: self = .readIndexReply(read: try reader.readVarint(), index: try reader.readVarint())
        case let tag: throw .invalid("raft message tag \(tag)")
        }
    }
}

/// A consensus-backed freshness certificate: the leader, holding its quorum lease, had
/// committed `index` when its clock read `leaderTime` (nanoseconds). A replica that has applied
/// `index` reflects every write acknowledged before true time `leaderTime - maxClockOffset`.
public struct FreshnessStamp: Sendable, Equatable, BinaryCodable {
    public var index: UInt64
    public var leaderTime: Int64

    public init(index: UInt64, leaderTime: Int64) {
        self.index = index
        self.leaderTime = leaderTime
    }

    public func encode(to writer: inout BinaryWriter) {
        writer.writeVarint(index)
        writer.writeZigZag(leaderTime)
    }

    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        index = try reader.readVarint()
        leaderTime = try reader.readZigZag()
    }
}

/// A bounded read's answer from consensus state.
public struct RaftReadAnswer: Sendable, Equatable {
    public var result: KeyValueResult
    public var receipt: ReadReceipt

    public init(result: KeyValueResult, receipt: ReadReceipt) {
        self.result = result
        self.receipt = receipt
    }
}

/// A snapshot's encoding produced piece by piece, in order, so that a leader sends a large
/// snapshot chunk by chunk without ever encoding it whole (which would stall the node). The
/// bytes are exactly `snapshot.binaryEncoded()`: a dictionary's canonical order (entries
/// sorted by their encodings) is the order of its keys' encodings, which are prefix-free.
public struct SnapshotStream: Sendable {
    enum Part: Sendable {
        case raw([UInt8])
        case value(String)
        case crdt(String)
        case string(String)
        case session(UInt64)
    }

    public let snapshot: RaftSnapshot
    private let parts: [Part]
    /// Where chunks produced so far ended: byte offset to the index of the next part.
    private var boundaries: [Int: Int] = [0: 0]

    public init(_ snapshot: RaftSnapshot) {
        self.snapshot = snapshot
        let state = snapshot.state
        func sorted<Key: BinaryCodable>(_ keys: some Collection<Key>) -> [Key] {
            keys.map { ($0, $0.binaryEncoded()) }.sorted { $0.1.lexicographicallyPrecedes($1.1) }.map(\.0)
        }
        func count(_ value: Int) -> Part {
            var writer = BinaryWriter()
            writer.writeVarint(UInt64(value))
            return .raw(writer.bytes)
        }
        var header = BinaryWriter()
        header.writeVarint(snapshot.lastIndex)
        header.writeVarint(snapshot.lastTerm)
        var parts: [Part] = [.raw(header.bytes), count(state.values.count)]
        parts += sorted(state.values.keys).map(Part.value)
        parts.append(count(state.crdts.count))
        parts += sorted(state.crdts.keys).map(Part.crdt)
        parts.append(count(state.strings.count))
        parts += sorted(state.strings.keys).map(Part.string)
        parts.append(count(state.sessions.count))
        parts += sorted(state.sessions.keys).map(Part.session)
        self.parts = parts
    }

    private func encode(_ part: Part, into writer: inout BinaryWriter) {
        let state = snapshot.state
        switch part {
        case let .raw(bytes): writer.writeRaw(bytes)
        case let .value(key): key.encode(to: &writer); state.values[key]!.encode(to: &writer)
        case let .crdt(key): key.encode(to: &writer); state.crdts[key]!.encode(to: &writer)
        case let .string(key): key.encode(to: &writer); state.strings[key]!.encode(to: &writer)
        case let .session(client): client.encode(to: &writer); state.sessions[client]!.encode(to: &writer)
        }
    }

    /// Whether `offset` is the end of the encoding.
    public func isEnd(_ offset: Int) -> Bool { boundaries[offset] == parts.count }

    /// Whether a chunk can start at `offset` (the start, or where a chunk ended).
    public func isBoundary(_ offset: Int) -> Bool { boundaries[offset] != nil }

    /// The bytes from `offset` (a boundary) on: whole parts, at least one, until `maxBytes`.
    public mutating func chunk(from offset: Int, maxBytes: Int) -> [UInt8] {
        guard var next = boundaries[offset] else { return [] }
        var writer = BinaryWriter()
        while next < parts.count, writer.bytes.isEmpty || writer.bytes.count < maxBytes {
            encode(parts[next], into: &writer)
            next += 1
        }
        boundaries[offset + writer.bytes.count] = next
        return writer.bytes
    }
}
