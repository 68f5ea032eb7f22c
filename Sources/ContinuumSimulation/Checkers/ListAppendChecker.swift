/// Strict serializability of list-append transactions, in the manner of Elle (Kingsbury and
/// Alvaro, VLDB 2020): every appended value is unique, so each read of a list reveals which
/// transactions' appends precede which. From the committed transactions it builds the
/// dependency graph (write-write from the version order of each list, write-read from what a
/// read saw, read-write anti-dependencies to the append a read missed, and real time: a
/// transaction that completed before another began precedes it) and searches it for a cycle.
public enum ListAppendChecker {
    public enum MicroOperation: Sendable, Hashable {
        case append(key: String, value: Int64)
        /// `observed` is nil until the transaction completes.
        case read(key: String, observed: [Int64]?)
    }

    public struct Transaction: Sendable {
        public var id: Int
        public var operations: [MicroOperation]
        public var invoked: Int64
        public var completed: Int64
        /// true: committed; false: aborted (definitely not); nil: unknown.
        public var committed: Bool?

        public init(id: Int, operations: [MicroOperation], invoked: Int64, completed: Int64, committed: Bool?) {
            self.id = id
            self.operations = operations
            self.invoked = invoked
            self.completed = completed
            self.committed = committed
        }
    }

    /// Violations found (empty: strictly serializable), each with the transactions involved.
    public static func violations(_ transactions: [Transaction]) -> [String] {
        var problems: [String] = []
        var appender: [String: [Int64: Int]] = [:]
        for transaction in transactions {
            for case let .append(key, value) in transaction.operations { appender[key, default: [:]][value] = transaction.id }
        }
        let byID = Dictionary(transactions.map { ($0.id, $0) }) { first, _ in first }
        let committed = transactions.filter { $0.committed == true }
        // Version order per key: the longest list read; every read must be a prefix of it.
        var order: [String: [Int64]] = [:]
        for transaction in committed {
            for case let .read(key, observed?) in transaction.operations where observed.count > (order[key]?.count ?? 0) {
                order[key] = observed
            }
        }
        var edges: [Int: Set<Int>] = [:]
        func edge(_ from: Int, _ to: Int) { if from != to { edges[from, default: []].insert(to) } }
        for transaction in committed {
            for case let .read(key, observed?) in transaction.operations {
                let longest = order[key] ?? []
                guard Array(longest.prefix(observed.count)) == observed else {
                    problems.append("transaction \(transaction.id) read \(key) = \(observed), not a prefix of \(longest): no single order of appends explains both")
                    continue
                }
                for value in observed {
                    guard let writer = appender[key]?[value] else {
                        problems.append("transaction \(transaction.id) read \(value) in \(key), which nobody appended")
                        continue
                    }
                    if byID[writer]?.committed == false {
                        problems.append("transaction \(transaction.id) read \(value) in \(key), appended by aborted transaction \(writer)")
                    }
                }
                if let last = observed.last, let writer = appender[key]?[last] { edge(writer, transaction.id) }
                if observed.count < longest.count, let next = appender[key]?[longest[observed.count]] { edge(transaction.id, next) }
            }
        }
        for (key, values) in order {
            for (first, second) in zip(values, values.dropFirst()) {
                if let a = appender[key]?[first], let b = appender[key]?[second] { edge(a, b) }
            }
        }
        // Real time, among committed transactions (sorted, so each links to the later ones it precedes).
        let byCompletion = committed.sorted { $0.completed < $1.completed }
        for transaction in committed {
            for earlier in byCompletion where earlier.completed < transaction.invoked { edge(earlier.id, transaction.id) }
        }
        if let cycle = findCycle(edges) {
            problems.append("dependency cycle: " + cycle.map { "T\($0)" }.joined(separator: " → ")
                            + " (" + cycle.compactMap { byID[$0].map(describe) }.joined(separator: "; ") + ")")
        }
        return problems
    }

    static func describe(_ transaction: Transaction) -> String {
        "T\(transaction.id): " + transaction.operations.map { operation in
            switch operation {
            case let .append(key, value): "append \(key) \(value)"
            case let .read(key, observed): "read \(key) \(observed.map { "\($0)" } ?? "?")"
            }
        }.joined(separator: ", ")
    }

    /// A cycle in the graph, if any (iterative depth-first search with colors).
    static func findCycle(_ edges: [Int: Set<Int>]) -> [Int]? {
        var color: [Int: Int] = [:]  // 1: on the stack, 2: done
        var parent: [Int: Int] = [:]
        for start in edges.keys.sorted() where color[start] == nil {
            var stack: [(node: Int, next: [Int])] = [(start, (edges[start] ?? []).sorted())]
            color[start] = 1
            while !stack.isEmpty {
                guard let successor = stack[stack.count - 1].next.popLast() else {
                    color[stack.removeLast().node] = 2
                    continue
                }
                let current = stack[stack.count - 1].node
                switch color[successor] {
                case 1?:
                    var cycle = [successor]
                    var walk = current
                    while walk != successor {
                        cycle.append(walk)
                        walk = parent[walk]!
                    }
                    cycle.append(successor)
                    return cycle.reversed()
                case nil:
                    color[successor] = 1
                    parent[successor] = current
                    stack.append((successor, (edges[successor] ?? []).sorted()))
                default:
                    continue
                }
            }
        }
        return nil
    }
}
