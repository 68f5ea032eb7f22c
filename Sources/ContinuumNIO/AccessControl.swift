import ContinuumCore
import Crypto

/// What a Redis-protocol command is, for access control: its category and which of its
/// arguments name keys. Every command the server answers has an entry; a command without one
/// is unknown.
public struct CommandSpec: Sendable {
    public enum Category: String, Sendable, CaseIterable {
        /// Reads of keys.
        case read
        /// Writes of keys, and declarations of their policies and types.
        case write
        /// Commands that change the cluster, not a key: fault injection, the ACL list.
        case admin
        /// The connection's own business and the server's state (PING, HELLO, INFO, CONFIG GET).
        case connection
    }

    public enum Keys: Sendable {
        case none
        /// The first argument.
        case first
        /// Every argument (DEL).
        case all
    }

    public var category: Category
    public var keys: Keys
    /// Where the policy words the command names begin, if it names one (a declaration, or a
    /// read's override): the user must be allowed that policy too.
    public var namedPolicyAt: Int?

    public init(category: Category, keys: Keys, namedPolicyAt: Int? = nil) {
        self.category = category
        self.keys = keys
        self.namedPolicyAt = namedPolicyAt
    }

    /// The commands served, by upper-case name (the front end's command table).
    public static let table: [String: CommandSpec] = RedisCommandTable.entries.mapValues(\.spec)

    /// The commands in `category`.
    public static func commands(in category: Category) -> Set<String> {
        Set(table.filter { $0.value.category == category }.keys)
    }

    /// Commands every connection may send, signed in or not: how one signs in, and how one leaves.
    public static let alwaysAllowed: Set<String> = ["AUTH", "HELLO", "QUIT"]
}

/// One client identity (a subset of Redis ACL users): passwords kept as SHA-256 digests, the
/// key patterns it may touch, the commands it may run, and the policies it may read, write or
/// declare under.
public struct AccessUser: Sendable, Equatable {
    public var name: String
    public var enabled = false
    /// Signs in with any password (or none).
    public var noPassword = false
    /// SHA-256 digests of its passwords.
    public var passwordDigests: Set<[UInt8]> = []
    /// Glob patterns of the keys it may name (Redis's `~pattern`); `*` for every key.
    public var keyPatterns: [String] = []
    /// The commands it may run, by upper-case name.
    public var commands: Set<String> = []
    /// The policy kinds (`available`, `bounded`, `linearizable`, `serializable`) of keys it may
    /// use or declare; nil: all.
    public var policies: Set<String>?

    public init(name: String) { self.name = name }

    /// Everything, with no password: the default user when nothing else is configured.
    public static func unrestricted(_ name: String) -> AccessUser {
        var user = AccessUser(name: name)
        user.enabled = true
        user.noPassword = true
        user.keyPatterns = ["*"]
        user.commands = Set(CommandSpec.table.keys)
        return user
    }

    public func accepts(password: [UInt8]) -> Bool {
        guard enabled else { return false }
        if noPassword { return true }
        return passwordDigests.contains(Array(SHA256.hash(data: password)))
    }

    public func mayRun(_ command: String) -> Bool {
        CommandSpec.alwaysAllowed.contains(command) || commands.contains(command)
    }

    public func mayTouch(key: String) -> Bool {
        keyPatterns.contains { Glob.matches($0, key) }
    }

    public func mayUse(policy: Policy) -> Bool {
        policies.map { $0.contains(policy.kind) } ?? true
    }

    /// Every command, every key, every policy (the default user unless configured otherwise):
    /// nothing to check per command but the reserved keys.
    public var isUnrestricted: Bool {
        policies == nil && keyPatterns.contains("*") && commands.count == CommandSpec.table.count
    }

    /// Admin: may run every admin command.
    public var isAdmin: Bool { CommandSpec.commands(in: .admin).isSubset(of: commands) }

    /// The user as an ACL file line (password digests, never passwords).
    public var rule: String {
        var words = ["user", name, enabled ? "on" : "off"]
        if noPassword { words.append("nopass") }
        words += passwordDigests.map { "#" + Hex.encode($0) }.sorted()
        words += keyPatterns.map { "~" + $0 }
        let all = Set(CommandSpec.table.keys)
        if commands == all {
            words.append("+@all")
        } else {
            words.append("-@all")
            for category in CommandSpec.Category.allCases where CommandSpec.commands(in: category).isSubset(of: commands) {
                words.append("+@" + category.rawValue)
            }
            let covered = CommandSpec.Category.allCases.filter { CommandSpec.commands(in: $0).isSubset(of: commands) }
                .reduce(into: Set<String>()) { $0.formUnion(CommandSpec.commands(in: $1)) }
            words += commands.subtracting(covered).sorted().map { "+" + $0.lowercased() }
        }
        if let policies { words.append("policies:" + policies.sorted().joined(separator: ",")) }
        return words.joined(separator: " ")
    }
}

/// The users a node knows: an ACL file's (Redis's rule syntax, a subset) and the `default`
/// user, whom every new connection is until it signs in.
public struct AccessControl: Sendable {
    public private(set) var users: [String: AccessUser]

    /// Limits on an ACL file.
    public static let fileBytesMax = 1 << 20
    public static let usersMax = 10_000
    public static let patternBytesMax = 1_024
    public static let passwordBytesMax = 4_096

    /// `default` with every right and no password, unless the file says otherwise;
    /// `requirepass` sets its password (as Redis's `requirepass`).
    public init(aclFile text: String? = nil, requirePassword: [UInt8]? = nil) throws(ContinuumError) {
        users = ["default": .unrestricted("default")]
        if let text { try load(text) }
        if let requirePassword {
            users["default"]!.noPassword = false
            users["default"]!.passwordDigests = [Array(SHA256.hash(data: requirePassword))]
        }
    }

    public var defaultUser: AccessUser { users["default"]! }

    /// Whether a new connection must sign in first: the default user has a password or is off.
    public var requiresAuthentication: Bool { !(defaultUser.enabled && defaultUser.noPassword) }

    /// The user `name` with `password`, or nil (no such user, wrong password, or off).
    public func authenticate(_ name: String, _ password: [UInt8]) -> AccessUser? {
        guard password.count <= Self.passwordBytesMax, let user = users[name], user.accepts(password: password) else { return nil }
        return user
    }

    private mutating func load(_ text: String) throws(ContinuumError) {
        guard text.utf8.count <= Self.fileBytesMax else {
            throw .invalidRequest("the ACL file has \(text.utf8.count) bytes, more than \(Self.fileBytesMax)")
        }
        var seen: Set<String> = []
        for (index, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" }).map(String.init)
            guard let first = words.first, !first.hasPrefix("#") else { continue }
            do throws(ContinuumError) {
                guard first == "user", words.count >= 2 else { throw .invalidRequest("a line must be 'user <name> <rule>...'") }
                let name = words[1]
                guard !name.isEmpty, name.utf8.count <= 128, seen.insert(name).inserted else {
                    throw .invalidRequest("user '\(name)' is empty, longer than 128 bytes, or named twice")
                }
                guard seen.count <= Self.usersMax else { throw .invalidRequest("more than \(Self.usersMax) users") }
                var user = AccessUser(name: name)
                for rule in words.dropFirst(2) { try Self.apply(rule, to: &user) }
                users[name] = user
            } catch {
                guard case let .invalidRequest(reason) = error else { throw error }
                throw .invalidRequest("ACL file line \(index + 1): \(reason)")
            }
        }
    }

    /// Applies one rule, as Redis does, left to right.
    static func apply(_ rule: String, to user: inout AccessUser) throws(ContinuumError) {
        let lower = rule.lowercased()
        switch lower {
        case "on": user.enabled = true
        case "off": user.enabled = false
        case "nopass": user.noPassword = true
            user.passwordDigests = []
        case "resetpass": user.noPassword = false
            user.passwordDigests = []
        case "allkeys": user.keyPatterns = ["*"]
        case "resetkeys": user.keyPatterns = []
        case "allcommands", "+@all": user.commands = Set(CommandSpec.table.keys)
        case "nocommands", "-@all": user.commands = []
        case "allpolicies": user.policies = nil
        default:
            if rule.hasPrefix(">") {
                let password = Array(rule.utf8.dropFirst())
                guard password.count <= passwordBytesMax else { throw .invalidRequest("a password longer than \(passwordBytesMax) bytes") }
                user.passwordDigests.insert(Array(SHA256.hash(data: password)))
                user.noPassword = false
            } else if rule.hasPrefix("#") {
                let hex = Array(lower.utf8.dropFirst())
                guard hex.count == 64, let digest = Hex.decode(hex) else {
                    throw .invalidRequest("'\(rule)' is not '#' and 64 hex digits (a SHA-256 digest)")
                }
                user.passwordDigests.insert(digest)
                user.noPassword = false
            } else if rule.hasPrefix("~") {
                let pattern = String(rule.dropFirst())
                guard !pattern.isEmpty, pattern.utf8.count <= patternBytesMax else {
                    throw .invalidRequest("a key pattern must have 1...\(patternBytesMax) bytes")
                }
                user.keyPatterns.append(pattern)
            } else if lower.hasPrefix("+@") || lower.hasPrefix("-@") {
                guard let category = CommandSpec.Category(rawValue: String(lower.dropFirst(2))) else {
                    throw .invalidRequest("unknown category '\(rule.dropFirst(2))': \(CommandSpec.Category.allCases.map(\.rawValue).joined(separator: ", ")), all")
                }
                let commands = CommandSpec.commands(in: category)
                if lower.hasPrefix("+") { user.commands.formUnion(commands) } else { user.commands.subtract(commands) }
            } else if lower.hasPrefix("+") || lower.hasPrefix("-") {
                let command = String(rule.dropFirst()).uppercased()
                guard CommandSpec.table[command] != nil else { throw .invalidRequest("unknown command '\(rule.dropFirst())'") }
                if lower.hasPrefix("+") { user.commands.insert(command) } else { user.commands.remove(command) }
            } else if lower.hasPrefix("policies:") {
                let kinds = Set(lower.dropFirst("policies:".count).split(separator: ",").map(String.init))
                let known: Set<String> = ["available", "bounded", "linearizable", "serializable"]
                guard !kinds.isEmpty, kinds.isSubset(of: known) else {
                    throw .invalidRequest("'\(rule)': policies are \(known.sorted().joined(separator: ", "))")
                }
                user.policies = kinds
            } else {
                throw .invalidRequest("unknown rule '\(rule)'")
            }
        }
    }

}

/// Lower-case hexadecimal: password digests in ACL files, the cluster secret `cluster up` writes.
public enum Hex {
    public static func encode(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        return String(decoding: bytes.flatMap { [digits[Int($0 >> 4)], digits[Int($0 & 15)]] }, as: UTF8.self)
    }

    /// The bytes of an even number of lower-case hex digits (nil: anything else).
    public static func decode(_ hex: [UInt8]) -> [UInt8]? {
        guard hex.count % 2 == 0 else { return nil }
        func nibble(_ c: UInt8) -> UInt8? {
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
            default: nil
            }
        }
        var bytes: [UInt8] = []
        var index = 0
        while index + 1 < hex.count {
            guard let high = nibble(hex[index]), let low = nibble(hex[index + 1]) else { return nil }
            bytes.append(high << 4 | low)
            index += 2
        }
        return bytes
    }
}

/// Redis-style glob patterns on keys: `*` any run, `?` one byte, `[abc]`, `[a-z]`, `[^a]`, and
/// `\` to match the next byte as it is. Matching takes at most patterns × key steps (no
/// backtracking blow-up: only the last `*` is retried).
public enum Glob {
    public static func matches(_ pattern: String, _ key: String) -> Bool {
        let p = Array(pattern.utf8), k = Array(key.utf8)
        var pi = 0, ki = 0
        var star: (p: Int, k: Int)?
        while ki < k.count {
            if pi < p.count, p[pi] == UInt8(ascii: "*") {
                star = (pi, ki)
                pi += 1
                continue
            }
            if pi < p.count, let (matched, next) = one(p, pi, k[ki]), matched {
                pi = next
                ki += 1
                continue
            }
            guard let last = star else { return false }
            star = (last.p, last.k + 1)
            pi = last.p + 1
            ki = last.k + 1
        }
        while pi < p.count, p[pi] == UInt8(ascii: "*") { pi += 1 }
        return pi == p.count
    }

    /// Whether the pattern element at `pi` matches `byte`, and where the next element starts.
    private static func one(_ p: [UInt8], _ pi: Int, _ byte: UInt8) -> (Bool, Int)? {
        switch p[pi] {
        case UInt8(ascii: "?"): return (true, pi + 1)
        case UInt8(ascii: "\\") where pi + 1 < p.count: return (p[pi + 1] == byte, pi + 2)
        case UInt8(ascii: "["):
            var i = pi + 1
            let negate = i < p.count && p[i] == UInt8(ascii: "^")
            if negate { i += 1 }
            var found = false
            var first = true
            while i < p.count, first || p[i] != UInt8(ascii: "]") {
                first = false
                if p[i] == UInt8(ascii: "\\"), i + 1 < p.count {
                    found = found || p[i + 1] == byte
                    i += 2
                } else if i + 2 < p.count, p[i + 1] == UInt8(ascii: "-"), p[i + 2] != UInt8(ascii: "]") {
                    found = found || (min(p[i], p[i + 2])...max(p[i], p[i + 2])).contains(byte)
                    i += 3
                } else {
                    found = found || p[i] == byte
                    i += 1
                }
            }
            guard i < p.count else { return (p[pi] == byte, pi + 1) }  // no closing ']': a literal '['
            return (found != negate, i + 1)
        default: return (p[pi] == byte, pi + 1)
        }
    }
}
