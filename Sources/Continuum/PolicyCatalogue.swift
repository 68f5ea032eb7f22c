import ContinuumCore
import Synchronization

/// The policies declared for registers by name, as every node knows them: kept in an
/// available register (`PolicyCatalogue.register`, a map of last-writer-wins entries, so that
/// a node routes by what it has seen at once and without a majority, and a restarted node
/// routes as before its crash), and held here typed, in memory, for routing.
///
/// The node refreshes this copy each time the catalogue register changes (a declaration here,
/// or one that arrived by anti-entropy), and once at start, so that routing a command is one
/// dictionary lookup, with no hop through the node's actor and no parsing.
public final class PolicyCatalogue: Sendable {
    /// The name of the register that holds the declarations.
    public static let register = "continuum.policies"
    /// The register's type: policy words (`Policy.words`, or `default` for a withdrawn
    /// declaration) by register name.
    public typealias State = GMap<String, LWWRegister<String>>

    private let policies = Mutex<[String: Policy]>([:])

    public init() {}

    /// The policy declared for `name`, if any.
    public func policy(of name: String) -> Policy? { policies.withLock { $0[name] } }

    /// Every declaration, by name.
    public var all: [String: Policy] { policies.withLock { $0 } }

    /// Replaces the declarations with those of the catalogue register's state `state` (nil or
    /// another type: none). Entries that do not parse (from a newer build) are skipped.
    func load(_ state: AnyReplicated?) {
        var parsed: [String: Policy] = [:]
        if let catalogue = state?.unwrap(as: State.self) {
            for key in catalogue.keys {
                if let policy = Self.policy(declared: catalogue[key].value) { parsed[key] = policy }
            }
        }
        policies.withLock { $0 = parsed }
    }

    /// The policy an entry's words declare (nil for none or `default`).
    public static func policy(declared: String?) -> Policy? {
        guard let declared, declared != "default" else { return nil }
        return try? Policy(words: declared.split(separator: " ").map(String.init))
    }
}
