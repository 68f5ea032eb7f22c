import Foundation

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

    /// A dependency between two transactions: `from` must precede `to`.
    enum Dependency: Hashable {
        /// `to` appended to `key` after `from` did.
        case ww(String)
        /// `to` read `from`'s append to `key`.
        case wr(String)
        /// `from` read `key` without the append `to` made next (an anti-dependency).
        case rw(String)
        /// `from` completed before `to` was invoked.
        case realTime

        var label: String {
            switch self {
            case let .ww(key): "ww \(key)"
            case let .wr(key): "wr \(key)"
            case let .rw(key): "rw \(key)"
            case .realTime: "real time"
            }
        }
    }

    /// Violations found (empty: strictly serializable), each with the transactions involved,
    /// named as Elle names them: an aborted read (G1a), incompatible version orders, a read of
    /// a value nobody appended, and a dependency cycle with each edge's kind (G0: write-write
    /// only; G1c: with write-read; G2: with an anti-dependency; "with real time" when a real-time
    /// edge closes it). Transactions that ended `info` may have happened: their appends explain
    /// what reads saw, but they add no edge of their own otherwise.
    ///
    /// Real time is not one edge per ordered pair (quadratic): barrier nodes chain it. Each
    /// transaction that completed before an invocation points to a new barrier, the barrier to
    /// the one before it... in time order, and the barrier to every transaction invoked after it,
    /// so a path runs from T1 to T2 through barriers exactly when T1 completed before T2 began.
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
        var kinds: [Int: [Int: Dependency]] = [:]
        func edge(_ from: Int, _ to: Int, _ kind: Dependency) {
            guard from != to, edges[from, default: []].insert(to).inserted else { return }
            kinds[from, default: [:]][to] = kind
        }
        for transaction in committed {
            for case let .read(key, observed?) in transaction.operations {
                let longest = order[key] ?? []
                guard Self.isPrefix(observed, of: longest) else {
                    problems.append("incompatible version orders: transaction \(transaction.id) read \(key) = \(observed), not a prefix of \(longest): no single order of appends explains both")
                    continue
                }
                for value in observed {
                    guard let writer = appender[key]?[value] else {
                        problems.append("garbage read: transaction \(transaction.id) read \(value) in \(key), which nobody appended")
                        continue
                    }
                    if byID[writer]?.committed == false {
                        problems.append("aborted read (G1a): transaction \(transaction.id) read \(value) in \(key), appended by aborted transaction \(writer)")
                    }
                }
                if let last = observed.last, let writer = appender[key]?[last] { edge(writer, transaction.id, .wr(key)) }
                if observed.count < longest.count, let next = appender[key]?[longest[observed.count]] { edge(transaction.id, next, .rw(key)) }
            }
        }
        for (key, values) in order {
            for (first, second) in zip(values, values.dropFirst()) {
                if let a = appender[key]?[first], let b = appender[key]?[second] { edge(a, b, .ww(key)) }
            }
        }
        // Real time among committed transactions, through barriers (negative ids). At equal
        // times an invocation comes first: it did not begin after that completion.
        var moments: [(time: Int64, invocation: Bool, id: Int)] = []
        moments.reserveCapacity(committed.count * 2)
        for transaction in committed {
            moments.append((transaction.invoked, true, transaction.id))
            moments.append((transaction.completed, false, transaction.id))
        }
        moments.sort { $0.time != $1.time ? $0.time < $1.time : ($0.invocation && !$1.invocation) }
        var barrier: Int?
        var nextBarrier = -1
        var completedSince: [Int] = []
        for moment in moments {
            guard moment.invocation else {
                completedSince.append(moment.id)
                continue
            }
            if !completedSince.isEmpty {
                for id in completedSince { edge(id, nextBarrier, .realTime) }
                if let barrier { edge(barrier, nextBarrier, .realTime) }
                barrier = nextBarrier
                nextBarrier -= 1
                completedSince.removeAll(keepingCapacity: true)
            }
            if let barrier { edge(barrier, moment.id, .realTime) }
        }
        if var cycle = findCycle(edges) {
            // Started at a transaction (a cycle holds one: barriers only lead to later ones).
            if let start = cycle.firstIndex(where: { $0 >= 0 }), start > 0 {
                cycle = Array(cycle[start..<(cycle.count - 1)] + cycle[0..<start]) + [cycle[start]]
            }
            // Barriers left out: an edge across them is real time.
            var steps: [(from: Int, to: Int, kind: Dependency)] = []
            var from = cycle[0]
            for (index, node) in cycle.enumerated().dropFirst() where node >= 0 {
                let direct = index > 0 && cycle[index - 1] == from ? kinds[from]?[node] : nil
                steps.append((from, node, direct ?? .realTime))
                from = node
            }
            let transactionsInCycle = cycle.filter { $0 >= 0 }
            let name = Self.name(steps.map(\.kind))
            problems.append("dependency cycle: " + transactionsInCycle.map { "T\($0)" }.joined(separator: " → ") + " [\(name)] ("
                            + steps.map { "T\($0.from) -\($0.kind.label)→ T\($0.to)" }.joined(separator: ", ") + "; "
                            + Set(transactionsInCycle).sorted().compactMap { byID[$0].map(describe) }.joined(separator: "; ") + ")")
        }
        return problems
    }

    /// Elle's name for a cycle of these dependencies.
    static func name(_ kinds: [Dependency]) -> String {
        let hasRealTime = kinds.contains(.realTime)
        let base = if kinds.contains(where: { if case .rw = $0 { true } else { false } }) {
            "G2: anti-dependency cycle"
        } else if kinds.contains(where: { if case .wr = $0 { true } else { false } }) {
            "G1c: circular information flow"
        } else if kinds.contains(where: { if case .ww = $0 { true } else { false } }) {
            "G0: write cycle"
        } else {
            "real-time cycle"
        }
        return hasRealTime && base != "real-time cycle" ? base + ", with real time" : base
    }

    static func isPrefix(_ observed: [Int64], of longest: [Int64]) -> Bool {
        guard observed.count <= longest.count else { return false }
        for index in observed.indices where observed[index] != longest[index] { return false }
        return true
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

/// List-append histories as JSON Lines (docs/design.md section 6, the format of Jepsen's and
/// Elle's histories): `txn` events with micro-operations `[f, key, value]`, `f` `append` or `r`.
public enum ListAppendHistory {
    /// Reads `text`: an invocation and its completion (the next event of the same process)
    /// make one transaction. `ok`: committed, its reads as completed; `fail`: did not happen;
    /// `info`, or no completion: may have happened. Events whose `f` is not `txn`, and events of
    /// a process that is not an integer (Jepsen's nemesis), are skipped. Keys may be strings or
    /// integers (an integer key is its decimal text). A transaction's id is the line number of
    /// its invocation. A line that is not such an event, or a completion without an
    /// invocation, is an error naming the line.
    public static func parse(_ text: String) throws(History.ParseError) -> [ListAppendChecker.Transaction] {
        var transactions: [ListAppendChecker.Transaction] = []
        var open: [Int64: (id: Int, operations: [ListAppendChecker.MicroOperation], invoked: Int64)] = [:]
        var number = 0
        var lastTime = Int64.min
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            number += 1
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            guard !trimmed.isEmpty else { continue }
            guard let object = (try? JSONSerialization.jsonObject(with: Data(trimmed.utf8))) as? [String: Any] else {
                throw History.ParseError(line: number, reason: "not a JSON object")
            }
            guard let process = object["process"].flatMap(integer), let f = object["f"] as? String, f == "txn" else { continue }
            guard let type = object["type"] as? String else { throw History.ParseError(line: number, reason: "no type") }
            let time = object["time"].flatMap(integer) ?? Int64(number)
            guard time >= lastTime else { throw History.ParseError(line: number, reason: "events are not in time order") }
            lastTime = time
            let operations = try microOperations(object["value"], line: number)
            switch type {
            case "invoke":
                if let pending = open[process] {
                    // A second invocation: the first never completed, so it may have happened.
                    transactions.append(.init(id: pending.id, operations: pending.operations, invoked: pending.invoked,
                                              completed: .max, committed: nil))
                }
                open[process] = (number, operations, time)
            case "ok", "fail", "info":
                guard let pending = open.removeValue(forKey: process) else {
                    throw History.ParseError(line: number, reason: "a completion of process \(process) without its invocation")
                }
                switch type {
                case "ok":
                    transactions.append(.init(id: pending.id, operations: operations, invoked: pending.invoked, completed: time, committed: true))
                case "fail":
                    transactions.append(.init(id: pending.id, operations: pending.operations, invoked: pending.invoked, completed: time,
                                              committed: false))
                default:
                    transactions.append(.init(id: pending.id, operations: pending.operations, invoked: pending.invoked, completed: .max,
                                              committed: nil))
                }
            default:
                throw History.ParseError(line: number, reason: "unknown type '\(type)'")
            }
        }
        for pending in open.values {
            transactions.append(.init(id: pending.id, operations: pending.operations, invoked: pending.invoked, completed: .max, committed: nil))
        }
        return transactions
    }

    /// A JSON integer (not a boolean, which Foundation also reads as a number, nor a fraction).
    static func integer(_ value: Any) -> Int64? {
        guard let number = value as? NSNumber else { return nil }
        let type = String(cString: number.objCType)
        return type == "c" || type == "d" || type == "f" ? nil : number.int64Value
    }

    static func microOperations(_ value: Any?, line: Int) throws(History.ParseError) -> [ListAppendChecker.MicroOperation] {
        guard let list = value as? [Any] else { throw History.ParseError(line: line, reason: "a txn's value is not a list of micro-operations") }
        var operations: [ListAppendChecker.MicroOperation] = []
        for item in list {
            guard let triple = item as? [Any], triple.count == 3, let f = triple[0] as? String else {
                throw History.ParseError(line: line, reason: "a micro-operation is not [f, key, value]")
            }
            let key: String
            if let text = triple[1] as? String {
                key = text
            } else if let number = integer(triple[1]) {
                key = "\(number)"
            } else {
                throw History.ParseError(line: line, reason: "a key is neither a string nor an integer")
            }
            switch f {
            case "append":
                guard let number = integer(triple[2]) else { throw History.ParseError(line: line, reason: "an append of a non-integer") }
                operations.append(.append(key: key, value: number))
            case "r":
                if triple[2] is NSNull {
                    operations.append(.read(key: key, observed: nil))
                } else if let values = triple[2] as? [Any] {
                    var observed: [Int64] = []
                    observed.reserveCapacity(values.count)
                    for value in values {
                        guard let number = integer(value) else { throw History.ParseError(line: line, reason: "a read of a non-integer") }
                        observed.append(number)
                    }
                    operations.append(.read(key: key, observed: observed))
                } else {
                    throw History.ParseError(line: line, reason: "a read's value is neither null nor a list")
                }
            default:
                throw History.ParseError(line: line, reason: "unknown micro-operation '\(f)'")
            }
        }
        return operations
    }
}
