import ContinuumCore
import Testing

/// The error vocabulary the server writes and the client reads: every error comes back as it
/// was thrown, whatever its fields hold, and Redis's own lines stay Redis's.
@Suite struct ErrorReplyTests {
    /// Names a hostile client could choose: spaces, the tail's own brackets and `=`, percent
    /// signs, line ends, non-ASCII.
    static let awkward = ["views", "a b", "x]", " [error=deleted register=y]", "k=v", "100%", "line\r\nbreak", "ключ", ""]

    static var everyError: [ContinuumError] {
        var errors: [ContinuumError] = [
            .timedOut(after: .milliseconds(250)), .cancelled, .nodeStopped, .tooManyPendingReads(limit: 64), .indeterminate,
            .stalenessBoundUnmet(best: nil), .stalenessBoundUnmet(best: .nanoseconds(1_234_567)),
        ]
        for name in awkward {
            errors += [
                .notDeclared(register: name), .deleted(register: name),
                .typeMismatch(register: name, declared: "ContinuumCore.PNCounter", requested: "ContinuumCore.ORSet<Swift.String>"),
                .typeMismatch(register: "r", declared: name, requested: name), .invalidName(name), .refused(name),
                .derivedInputMissing(derived: name, input: name), .wrongPolicy(register: name, declared: .available),
                .wrongPolicy(register: name, declared: .bounded(staleness: .milliseconds(100), latency: .milliseconds(20))),
                .wrongPolicy(register: name, declared: .serializable),
            ]
        }
        // A reason may quote a client's input, a would-be tail among it.
        for reason in ["no leader known", "lock on 'k' not granted [wait-die]", "unknown type ' [error=nodeStopped]'", "x [error=cancelled]"] {
            errors += [.unavailable(reason), .invalidRequest(reason), .notPermitted(reason)]
        }
        return errors
    }

    @Test func everyErrorComesBackAsItWasThrown() {
        for error in Self.everyError {
            let line = error.replyLine
            #expect(!line.contains("\r") && !line.contains("\n"), "one line: \(line)")
            #expect(line.hasPrefix(error.code.rawValue + " "))
            #expect(ContinuumError(replyLine: line) == error, "\(line)")
        }
    }

    @Test func redisLinesStayRedisLines() {
        #expect(ContinuumError.invalidRequest("value is not an integer or out of range").replyLine == "ERR value is not an integer or out of range")
        #expect(ContinuumError.unavailable("no leader known").replyLine == "UNAVAILABLE no leader known")
        #expect(ContinuumError.typeMismatch(register: "k", declared: "a", requested: "b").replyLine.hasPrefix("WRONGTYPE "))
        // Lines without Continuum's tail (another server's) decode by their code.
        #expect(ContinuumError(replyLine: "ERR syntax error") == .invalidRequest("syntax error"))
        #expect(ContinuumError(replyLine: "NOAUTH Authentication required.") == .notPermitted("NOAUTH Authentication required."))
        #expect(ContinuumError(replyLine: "STALE no answer") == .stalenessBoundUnmet(best: nil))
        #expect(ContinuumError(replyLine: "LOADING the dataset") == .invalidRequest("LOADING the dataset"))
        // A broken tail is not trusted: the line decodes by its code.
        #expect(ContinuumError(replyLine: "ERR x [error=deleted register=%ZZ]") == .invalidRequest("x [error=deleted register=%ZZ]"))
    }

    @Test func receiptsCrossTheWireWhole() throws {
        let receipts = [
            ReadReceipt(guarantee: .linearizable, staleness: .zero, version: .logIndex(42), replicas: [ReplicaID(1)], level: 0),
            ReadReceipt(guarantee: .bounded(staleness: .milliseconds(100)), staleness: .milliseconds(37), version: .stateDigest(.max),
                        replicas: [ReplicaID(1), ReplicaID(3)], level: 1),
            ReadReceipt(guarantee: .local, staleness: nil, version: .stateDigest(0), replicas: [], level: 2),
        ]
        for receipt in receipts {
            #expect(try ReadReceipt(binary: receipt.binaryEncoded()) == receipt)
        }
        let bytes = receipts[1].binaryEncoded()
        for length in 0..<bytes.count {
            #expect(throws: WireDecodingError.self) { try ReadReceipt(binary: Array(bytes.prefix(length))) }
        }
    }
}
