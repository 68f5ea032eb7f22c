/// How a `ContinuumError` travels as a one-line error reply (the RESP server's `-` lines), and
/// back: the one vocabulary the server writes and the network client reads, so that the client
/// gets back the typed error the server threw, not text to interpret.
///
/// A line is `CODE text [error=case field=value ...]`:
/// - `CODE` is what a Redis client switches on: Redis's own `ERR`, `WRONGTYPE` and `NOPERM`
///   where a Redis client expects them, and Continuum's `UNAVAILABLE` (nothing was done),
///   `INDETERMINATE` (a write may or may not take effect) and `STALE` (no answer within the
///   staleness bound in time).
/// - `text` is for people (the error's description).
/// - The bracketed tail carries the case and its fields, each value percent-encoded; it is left
///   out where the code and text are the whole error (`invalidRequest` is `ERR reason`, as
///   Redis answers, so `ERR value is not an integer or out of range` is exactly Redis's line).
///
/// Lines from elsewhere (Redis's own `-ERR ...`, or a server older than the tail) still decode,
/// by their code alone.
extension ContinuumError {
    /// The first word of an error reply.
    public enum Code: String, Sendable, CaseIterable {
        case error = "ERR"
        case wrongType = "WRONGTYPE"
        case unavailable = "UNAVAILABLE"
        case indeterminate = "INDETERMINATE"
        case stale = "STALE"
        case noPermission = "NOPERM"
    }

    public var code: Code {
        switch self {
        case .typeMismatch, .wrongPolicy: .wrongType
        case .unavailable: .unavailable
        case .indeterminate: .indeterminate
        case .stalenessBoundUnmet: .stale
        case .notPermitted: .noPermission
        case .notDeclared, .deleted, .invalidName, .refused, .timedOut, .cancelled, .nodeStopped, .tooManyPendingReads,
             .derivedInputMissing, .invalidRequest: .error
        }
    }

    /// The case's name and fields, for the line's tail (nil: the code and text say it all).
    private var fields: (name: String, values: [(String, String)])? {
        switch self {
        case let .notDeclared(register): ("notDeclared", [("register", register)])
        case let .deleted(register): ("deleted", [("register", register)])
        case let .typeMismatch(register, declared, requested):
            ("typeMismatch", [("register", register), ("declared", declared), ("requested", requested)])
        case let .invalidName(name): ("invalidName", [("name", name)])
        case let .refused(reason): ("refused", [("reason", reason)])
        case let .timedOut(after): ("timedOut", [("after_ns", "\(after.nanoseconds)")])
        case .cancelled: ("cancelled", [])
        case .nodeStopped: ("nodeStopped", [])
        case let .tooManyPendingReads(limit): ("tooManyPendingReads", [("limit", "\(limit)")])
        case let .derivedInputMissing(derived, input): ("derivedInputMissing", [("derived", derived), ("input", input)])
        case let .wrongPolicy(register, declared): ("wrongPolicy", [("register", register), ("declared", declared.words.joined(separator: " "))])
        case let .stalenessBoundUnmet(best): ("stalenessBoundUnmet", best.map { [("best_ns", "\($0.nanoseconds)")] } ?? [])
        case .indeterminate: nil
        // Their text is the whole error, unless it could pass for a tail.
        case let .unavailable(reason): reason.contains(" [error=") ? ("unavailable", [("reason", reason)]) : nil
        case let .invalidRequest(reason): reason.contains(" [error=") ? ("invalidRequest", [("reason", reason)]) : nil
        case let .notPermitted(reason): reason.contains(" [error=") ? ("notPermitted", [("reason", reason)]) : nil
        }
    }

    /// The error reply's line (without RESP's leading `-` and trailing CRLF). It holds no CR or
    /// LF, whatever the error's fields hold.
    public var replyLine: String {
        let text: String = switch self {
        case let .unavailable(reason): reason
        case let .invalidRequest(reason): reason
        case let .notPermitted(reason): reason
        default: description
        }
        var line = "\(code.rawValue) \(Self.oneLine(text))"
        if let (name, values) = fields {
            line += " [error=\(name)" + values.map { " \($0.0)=\(Self.escape($0.1))" }.joined() + "]"
        }
        return line
    }

    /// The error a reply line names: the inverse of `replyLine`; a line without a tail, or with
    /// one it cannot read, decodes by its code.
    public init(replyLine line: String) {
        let (word, rest) = line.firstIndex(of: " ").map { (String(line[..<$0]), String(line[line.index(after: $0)...])) } ?? (line, "")
        if rest.hasSuffix("]"), let open = rest.ranges(of: " [error=").last,
           let error = Self.decodeTail(rest[open.upperBound..<rest.index(before: rest.endIndex)]) {
            self = error
            return
        }
        switch Code(rawValue: word) {
        case .unavailable?: self = .unavailable(rest)
        case .indeterminate?: self = .indeterminate
        case .stale?: self = .stalenessBoundUnmet(best: nil)
        case .noPermission?: self = .notPermitted(rest)
        case .wrongType?: self = .typeMismatch(register: "", declared: rest, requested: "")
        case .error?, nil:
            // Redis's sign-in refusals, and any other code, keep their whole line.
            self = ["NOAUTH", "WRONGPASS"].contains(word) ? .notPermitted(line) : .invalidRequest(word == "ERR" ? rest : line)
        }
    }

    private static func decodeTail(_ tail: Substring) -> ContinuumError? {
        let words = tail.split(separator: " ", omittingEmptySubsequences: false)
        guard let name = words.first else { return nil }
        var values: [String: String] = [:]
        for word in words.dropFirst() {
            guard let equals = word.firstIndex(of: "="), let value = unescape(word[word.index(after: equals)...]) else { return nil }
            values[String(word[..<equals])] = value
        }
        func integer(_ key: String) -> Int64? { values[key].flatMap { Int64($0) } }
        switch name {
        case "notDeclared": return values["register"].map { .notDeclared(register: $0) }
        case "deleted": return values["register"].map { .deleted(register: $0) }
        case "typeMismatch":
            guard let register = values["register"], let declared = values["declared"], let requested = values["requested"] else { return nil }
            return .typeMismatch(register: register, declared: declared, requested: requested)
        case "invalidName": return values["name"].map { .invalidName($0) }
        case "refused": return values["reason"].map { .refused($0) }
        case "timedOut": return integer("after_ns").map { .timedOut(after: .nanoseconds($0)) }
        case "unavailable": return values["reason"].map { .unavailable($0) }
        case "invalidRequest": return values["reason"].map { .invalidRequest($0) }
        case "notPermitted": return values["reason"].map { .notPermitted($0) }
        case "cancelled": return .cancelled
        case "nodeStopped": return .nodeStopped
        case "tooManyPendingReads": return integer("limit").map { .tooManyPendingReads(limit: Int($0)) }
        case "derivedInputMissing":
            guard let derived = values["derived"], let input = values["input"] else { return nil }
            return .derivedInputMissing(derived: derived, input: input)
        case "wrongPolicy":
            guard let register = values["register"], let words = values["declared"],
                  let policy = try? Policy(words: words.split(separator: " ").map(String.init)) else { return nil }
            return .wrongPolicy(register: register, declared: policy)
        case "stalenessBoundUnmet": return .stalenessBoundUnmet(best: integer("best_ns").map { .nanoseconds($0) })
        default: return nil
        }
    }

    /// `text` with CR and LF as spaces (a RESP error is one line).
    private static func oneLine(_ text: String) -> String {
        String(text.map { $0 == "\r" || $0 == "\n" || $0 == "\r\n" ? " " : $0 })
    }

    /// Percent-encodes every byte but unreserved ASCII, so that a value holds no space, `=`,
    /// `]`, CR or LF.
    static func escape(_ value: String) -> String {
        var out = ""
        for byte in value.utf8 {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                 UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: "~"), UInt8(ascii: "<"), UInt8(ascii: ">"):
                out.unicodeScalars.append(Unicode.Scalar(byte))
            default:
                out += "%" + (byte < 16 ? "0" : "") + String(byte, radix: 16, uppercase: true)
            }
        }
        return out
    }

    static func unescape(_ value: Substring) -> String? {
        var bytes: [UInt8] = []
        var index = value.utf8.startIndex
        let utf8 = value.utf8
        while index < utf8.endIndex {
            let byte = utf8[index]
            if byte == UInt8(ascii: "%") {
                let high = utf8.index(after: index)
                guard high < utf8.endIndex, utf8.index(after: high) < utf8.endIndex,
                      let decoded = UInt8(String(decoding: [utf8[high], utf8[utf8.index(after: high)]], as: UTF8.self), radix: 16) else {
                    return nil
                }
                bytes.append(decoded)
                index = utf8.index(high, offsetBy: 2)
            } else {
                bytes.append(byte)
                index = utf8.index(after: index)
            }
        }
        return String(validating: bytes, as: UTF8.self)
    }
}
