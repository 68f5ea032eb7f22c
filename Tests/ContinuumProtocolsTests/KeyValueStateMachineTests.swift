import ContinuumCore
import Testing

@testable import ContinuumProtocols

/// The Redis string namespace and deletes of the Raft state machine.
@Suite struct KeyValueStateMachineTests {
    var machine = KeyValueStateMachine()
    var sequence: UInt64 = 0

    mutating func apply(_ operation: KeyValueOperation) -> KeyValueResult? {
        sequence += 1
        return machine.apply(LogCommand(client: 1, sequence: sequence, operation: operation))
    }

    @Test mutating func stringsCountersAndDeletesBehaveAsRedisDoes() throws {
        #expect(apply(.stringAdd(key: "hits", amount: 1)) == .integer(1), "INCR of an absent key starts at 0")
        #expect(apply(.stringAdd(key: "hits", amount: -5)) == .integer(-4))
        #expect(apply(.stringGet(key: "hits")) == .string(Array("-4".utf8)))
        #expect(apply(.stringSet(key: "name", value: Array("tea".utf8))) == .written)
        #expect(apply(.stringAdd(key: "name", amount: 1)) == .notAnInteger)
        #expect(apply(.stringSet(key: "big", value: Array("9223372036854775807".utf8))) == .written)
        #expect(apply(.stringAdd(key: "big", amount: 1)) == .notAnInteger, "overflow changes nothing")
        #expect(machine.strings["big"] == Array("9223372036854775807".utf8))
        for text in ["+1", " 1", "1 ", "01x", "-", ""] {
            _ = apply(.stringSet(key: "odd", value: Array(text.utf8)))
            #expect(apply(.stringAdd(key: "odd", amount: 1)) == .notAnInteger, "'\(text)' is not a Redis integer")
        }
        _ = apply(.crdt(key: "tags", .setInsert("a")))
        #expect(apply(.delete(keys: ["name", "tags", "missing", "name"])) == .count(2))
        #expect(machine.strings["name"] == nil && machine.crdts["tags"] == nil)
        // All of it survives a snapshot.
        #expect(try KeyValueStateMachine(binary: machine.binaryEncoded()) == machine)
        for operation: KeyValueOperation in [.stringSet(key: "k", value: [0, 255]), .stringSet(key: "k", value: nil), .stringGet(key: "k"),
                                              .stringAdd(key: "k", amount: -3), .delete(keys: ["a", "b"])] {
            #expect(try KeyValueOperation(binary: operation.binaryEncoded()) == operation)
        }
        for result: KeyValueResult in [.string([1, 2]), .string(nil), .integer(-7), .notAnInteger, .count(3)] {
            #expect(try KeyValueResult(binary: result.binaryEncoded()) == result)
        }
    }

    /// Linearizable SADD/SREM: one entry for all members, counted when it applies; the same set
    /// as member-by-member CRDT operations give, and nothing of the set in the result.
    @Test mutating func aSetChangeCountsWhatItChanged() throws {
        #expect(apply(.setChange(key: "s", members: ["a"], insert: false)) == .count(0), "SREM on an absent set")
        #expect(machine.crdts["s"] == nil, "and creates nothing")
        #expect(apply(.setChange(key: "s", members: ["a", "b", "a"], insert: true)) == .count(2))
        #expect(apply(.setChange(key: "s", members: ["b", "c"], insert: true)) == .count(1))
        #expect(apply(.setChange(key: "s", members: ["a", "z"], insert: false)) == .count(1))
        guard case let .set(set)? = machine.crdts["s"] else {
            Issue.record("no set")
            return
        }
        #expect(set.elements == ["b", "c"])
        var reference = KeyValueStateMachine()
        var sequence: UInt64 = 0
        for operation: CRDTOperation in [.setInsert("a"), .setInsert("b"), .setInsert("a"), .setInsert("b"), .setInsert("c"), .setRemove("a")] {
            sequence += 1
            _ = reference.apply(LogCommand(client: 9, sequence: sequence, operation: .crdt(key: "s", operation)))
        }
        // The same members as one CRDT operation per member (a member already present gets no
        // new dot: in log order nothing is concurrent, so a re-insert would only grow the state).
        guard case let .set(expected)? = reference.crdts["s"] else {
            Issue.record("no reference set")
            return
        }
        #expect(expected.elements == set.elements)
        _ = apply(.crdt(key: "n", .counterAdd(1)))
        #expect(apply(.setChange(key: "n", members: ["x"], insert: true)) == .crdtKindMismatch)
        let operation = KeyValueOperation.setChange(key: "s", members: ["m", ""], insert: true)
        #expect(try KeyValueOperation(binary: operation.binaryEncoded()) == operation)
        #expect(try KeyValueOperation(binary: KeyValueOperation.setChange(key: "s", members: [], insert: false).binaryEncoded())
                == .setChange(key: "s", members: [], insert: false))
        #expect(try KeyValueStateMachine(binary: machine.binaryEncoded()) == machine)
    }
}

/// CRDT operations: their text form round-trips, and the delta a mutation returns, joined into
/// the state before, gives the state after (what a node's register ships by anti-entropy).
@Suite struct CRDTOperationTests {
    static let operations: [CRDTOperation] = [.counterAdd(5), .counterAdd(-2), .setInsert("a b"), .setRemove("a b"), .flagEnable,
                                              .flagDisable, .maxWrite(7), .maxWrite(3)]

    @Test(arguments: operations) func wordsRoundTrip(_ operation: CRDTOperation) throws {
        #expect(try CRDTOperation(words: operation.words) == operation)
    }

    @Test func badWordsAreRefused() {
        #expect(throws: ContinuumError.self) { try CRDTOperation(words: ["add", "x"]) }
        #expect(throws: ContinuumError.self) { try CRDTOperation(words: ["write", "-1"]) }
        #expect(throws: ContinuumError.self) { try CRDTOperation(words: ["enable", "now"]) }
        #expect(throws: ContinuumError.self) { try CRDTOperation(words: []) }
    }

    @Test func deltasJoinedIntoTheStateBeforeGiveTheStateAfter() throws {
        var states: [String: LogCRDT?] = ["counter": nil, "set": nil, "flag": nil, "max": nil]
        for operation in Self.operations + Self.operations {
            let kind = switch operation {
            case .counterAdd: "counter"
            case .setInsert, .setRemove: "set"
            case .flagEnable, .flagDisable: "flag"
            case .maxWrite: "max"
            }
            let before = states[kind]!
            var after = before
            let delta = try #require(operation.mutate(&after, replica: ReplicaID(3)))
            let joined: LogCRDT? = switch (before, delta) {
            case (nil, _): delta
            case let (.counter(b)?, .counter(d)): .counter(b.join(d))
            case let (.set(b)?, .set(d)): .set(b.join(d))
            case let (.flag(b)?, .flag(d)): .flag(b.join(d))
            case let (.max(b)?, .max(d)): .max(b.join(d))
            default: nil
            }
            #expect(joined == after, "\(operation) on \(String(describing: before))")
            #expect(operation.apply(to: before) != nil)
            states[kind] = after
        }
        // An operation on a CRDT of another kind changes nothing.
        var counter: LogCRDT? = .counter(PNCounter())
        #expect(CRDTOperation.setInsert("x").mutate(&counter, replica: ReplicaID(3)) == nil)
        #expect(counter == .counter(PNCounter()))
    }
}
