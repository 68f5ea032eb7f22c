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
}
