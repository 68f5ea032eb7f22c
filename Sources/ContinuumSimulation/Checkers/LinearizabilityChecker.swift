/// Checks a history against a register (key-value) model for linearizability: the search of
/// Wing and Gong (1993) with Lowe's cache of (linearized set, model state) pairs (Lowe, "Testing
/// for linearizability", 2017), split by key (linearizability is compositional: a history is
/// linearizable exactly when each key's sub-history is, Herlihy and Wing 1990).
///
/// Operations that completed `ok` must take effect between invocation and completion; `fail`
/// ones never took effect and are dropped; `info` ones may take effect at any time after their
/// invocation or never (they are given an infinite completion time: placing one last is the
/// same as never, so the search may do either). The search is bounded by a step budget, so
/// that it answers "unknown" rather than guess, and the same history always gets the same
/// answer.
public enum LinearizabilityChecker {
    public enum Verdict: Equatable, Sendable {
        case linearizable
        /// The operations of `key` that could not be ordered: every order of them breaks the
        /// register's rules.
        case notLinearizable(key: String, explanation: [String])
        case unknown(reason: String)
    }

    public struct Operation: Sendable, CustomStringConvertible {
        public var process: Int
        public var function: String
        public var input: HistoryValue
        /// What the operation returned: the value read, or for `cas` whether it swapped; nil
        /// when unknown (`info`).
        public var output: HistoryValue?
        public var call: Int64
        /// Int64.max for indeterminate operations.
        public var completion: Int64

        public var description: String {
            let outcome = output.map { " -> \($0)" } ?? " (indeterminate)"
            let end = completion == .max ? "∞" : "\(completion)"
            return "process \(process) \(function) \(input)\(outcome) in [\(call), \(end)]"
        }
    }

    public enum HistoryError: Error, Equatable, CustomStringConvertible {
        case unmatchedCompletion(process: Int, time: Int64)
        case overlappingInvocations(process: Int, time: Int64)
        case unknownFunction(String)

        public var description: String {
            switch self {
            case let .unmatchedCompletion(process, time): "process \(process) completes an operation it did not invoke (at \(time))"
            case let .overlappingInvocations(process, time): "process \(process) invokes again before completing (at \(time))"
            case let .unknownFunction(name): "function '\(name)' is not one of read, write, cas"
            }
        }
    }

    /// Pairs invocations with completions, per key.
    public static func operations(_ events: [HistoryEvent]) throws(HistoryError) -> [String: [Operation]] {
        var open: [Int: (HistoryEvent, Int64)] = [:]
        var byKey: [String: [Operation]] = [:]
        for event in events {
            switch event.type {
            case .invoke:
                guard ["read", "write", "cas"].contains(event.f) else { throw .unknownFunction(event.f) }
                guard open[event.process] == nil else { throw .overlappingInvocations(process: event.process, time: event.time) }
                open[event.process] = (event, event.time)
            case .ok, .fail, .info:
                guard let (invocation, call) = open.removeValue(forKey: event.process) else {
                    throw .unmatchedCompletion(process: event.process, time: event.time)
                }
                if event.type == .fail { continue }
                if event.type == .info && invocation.f == "read" { continue }  // no effect either way
                let operation = Operation(
                    process: event.process, function: invocation.f, input: invocation.value,
                    output: event.type == .ok ? event.value : nil, call: call,
                    completion: event.type == .ok ? event.time : .max)
                byKey[invocation.key, default: []].append(operation)
            }
        }
        // Invoked and never completed: indeterminate.
        for (process, (invocation, call)) in open.sorted(by: { $0.key < $1.key }) where invocation.f != "read" {
            byKey[invocation.key, default: []].append(Operation(
                process: process, function: invocation.f, input: invocation.value, output: nil, call: call, completion: .max))
        }
        return byKey
    }

    /// Checks a whole history. `searchStepsMax` bounds the work per key.
    public static func check(_ events: [HistoryEvent], searchStepsMax: Int = 20_000_000) -> Verdict {
        let byKey: [String: [Operation]]
        do {
            byKey = try operations(events)
        } catch {
            return .unknown(reason: "malformed history: \(error)")
        }
        for key in byKey.keys.sorted() {
            let verdict = checkWithPrefixes(key: key, byKey[key]!, searchStepsMax: searchStepsMax)
            if verdict != .linearizable { return verdict }
        }
        return .linearizable
    }

    /// Proving a violation can take an exhaustive search, and indeterminate operations make that
    /// search exponential. Every prefix of a linearizable history is linearizable (operations
    /// still open at the cut become indeterminate), so a violation in a short prefix is a
    /// violation of the whole: check prefixes of 32, 64, 128, … operations (in invocation
    /// order) first, then the whole history, and answer unknown only if none decides.
    static func checkWithPrefixes(key: String, _ operations: [Operation], searchStepsMax: Int) -> Verdict {
        let ordered = operations.sorted { ($0.call, $0.process) < ($1.call, $1.process) }
        var size = 32
        var budget = searchStepsMax
        while size < ordered.count {
            let cut = ordered[size].call
            let prefix = ordered.prefix(size).map { operation -> Operation in
                guard operation.completion >= cut else { return operation }
                var open = operation
                open.completion = .max
                open.output = nil
                return open
            }.filter { !($0.function == "read" && $0.output == nil) }
            let verdict = check(key: key, prefix, searchStepsMax: max(1, budget / 4))
            if case .notLinearizable = verdict { return verdict }
            budget -= budget / 4
            size *= 2
        }
        return check(key: key, operations, searchStepsMax: max(1, budget))
    }

    /// The register model: applies `operation` to `state` (nil: absent); nil when the operation
    /// cannot have returned what it did in that state.
    static func step(_ state: HistoryValue, _ operation: Operation) -> HistoryValue? {
        switch operation.function {
        case "write":
            return operation.input
        case "read":
            guard let output = operation.output else { return state }
            return output == state ? state : nil
        default:  // cas
            guard case let .array(pair) = operation.input, pair.count == 2 else { return nil }
            let swaps = state == pair[0]
            switch operation.output {
            case .bool(true)?: return swaps ? pair[1] : nil
            case .bool(false)?: return swaps ? nil : state
            default: return swaps ? pair[1] : state
            }
        }
    }

    struct CacheKey: Hashable {
        var linearized: [UInt64]
        var state: HistoryValue
    }

    /// One key's sub-history.
    static func check(key: String, _ operations: [Operation], searchStepsMax: Int) -> Verdict {
        // Events in time order; at equal times invocations come first (the lenient reading).
        struct Event {
            var time: Int64
            var isCall: Bool
            var operation: Int
        }
        var events: [Event] = []
        for (index, operation) in operations.enumerated() {
            events.append(Event(time: operation.call, isCall: true, operation: index))
            events.append(Event(time: operation.completion, isCall: false, operation: index))
        }
        events.sort { ($0.time, $0.isCall ? 0 : 1, $0.operation) < ($1.time, $1.isCall ? 0 : 1, $1.operation) }
        // A doubly linked list over `events`; index `count` is a sentinel before the first
        // event and after the last.
        let count = events.count
        var next = [Int](repeating: count, count: count + 1)
        var previous = [Int](repeating: count, count: count + 1)
        for position in 0..<count {
            next[position] = position + 1 < count ? position + 1 : count
            previous[position] = position > 0 ? position - 1 : count
        }
        next[count] = count > 0 ? 0 : count
        previous[count] = count > 0 ? count - 1 : count
        var callEvent = [Int](repeating: 0, count: operations.count)
        var returnEvent = [Int](repeating: 0, count: operations.count)
        for (position, event) in events.enumerated() {
            if event.isCall { callEvent[event.operation] = position } else { returnEvent[event.operation] = position }
        }
        func unlink(_ position: Int) {
            next[previous[position]] = next[position]
            previous[next[position]] = previous[position]
        }
        func relink(_ position: Int) {
            next[previous[position]] = position
            previous[next[position]] = position
        }

        var linearized = [UInt64](repeating: 0, count: (operations.count + 63) / 64)
        var state = HistoryValue.null
        var cache: Set<CacheKey> = [CacheKey(linearized: linearized, state: state)]
        var stack: [(operation: Int, state: HistoryValue)] = []
        var cursor = next[count]
        var steps = 0
        var deepest: (depth: Int, blocked: Int, pending: [Int]) = (-1, -1, [])
        while next[count] != count {
            steps += 1
            if steps > searchStepsMax {
                return .unknown(reason: "key '\(key)': search exceeded \(searchStepsMax) steps over \(operations.count) operations")
            }
            let event = events[cursor]
            if event.isCall {
                let operation = event.operation
                if let newState = step(state, operations[operation]) {
                    var extended = linearized
                    extended[operation / 64] |= 1 << UInt64(operation % 64)
                    if cache.insert(CacheKey(linearized: extended, state: newState)).inserted {
                        stack.append((operation, state))
                        state = newState
                        linearized = extended
                        unlink(callEvent[operation])
                        unlink(returnEvent[operation])
                        cursor = next[count]
                        continue
                    }
                }
                cursor = next[cursor]
            } else {
                // An operation completes before any order could place it: back up.
                if stack.count > deepest.depth {
                    var pending: [Int] = []
                    var scan = next[count]
                    while scan != cursor {
                        if events[scan].isCall { pending.append(events[scan].operation) }
                        scan = next[scan]
                    }
                    deepest = (stack.count, event.operation, pending)
                }
                guard let (operation, previousState) = stack.popLast() else {
                    let blocked = operations[deepest.blocked]
                    var explanation = ["\(blocked) cannot be ordered after the \(deepest.depth) operations before it"]
                    explanation += deepest.pending.filter { $0 != deepest.blocked }.map { "  concurrent with: \(operations[$0])" }
                    return .notLinearizable(key: key, explanation: explanation)
                }
                state = previousState
                linearized[operation / 64] &= ~(1 << UInt64(operation % 64))
                relink(returnEvent[operation])
                relink(callEvent[operation])
                cursor = next[callEvent[operation]]
            }
        }
        return .linearizable
    }
}
