import ArgumentParser
import ContinuumSimulation
import Foundation

struct CheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Check a JSON Lines history: linearizability of registers, or strict serializability of list-append transactions.",
        discussion: """
            --model register: a read/write/cas register per key. Exit 0: linearizable. 1: not (the operations \
            that could not be ordered are printed). 2: unknown (the search budget ran out, or the history is malformed).
            --model list-append: Jepsen's and Elle's list-append transactions (f txn, micro-operations \
            [append|r, key, value]). Exit 0: strict serializable. 1: not (each anomaly named: aborted read, \
            incompatible version orders, garbage read, or a dependency cycle with its edges ww, wr, rw and real \
            time). 2: the history is malformed. Transactions that end info may or may not have happened, fail \
            did not; nemesis events and any f other than txn are skipped. The format: docs/design.md section 6.
            """)

    @Option(help: "The model: register or list-append.")
    var model = "register"

    @Option(help: "The history file, one JSON event per line (docs/design.md section 6).")
    var history: String

    @Option(help: "Search steps per key before answering unknown (register).")
    var searchStepsMax = 20_000_000

    /// A history file is read whole; larger ones are refused.
    static let historyBytesMax = 1 << 30

    func run() throws {
        guard ["register", "list-append"].contains(model) else { throw ValidationError("unknown model '\(model)'; known: register, list-append") }
        let size = ((try? FileManager.default.attributesOfItem(atPath: history))?[.size] as? NSNumber)?.intValue ?? 0
        guard size <= Self.historyBytesMax else {
            print("unknown: \(history) is \(size) bytes, more than \(Self.historyBytesMax)")
            throw ExitCode(2)
        }
        guard let data = FileManager.default.contents(atPath: history) else {
            print("unknown: cannot read \(history)")
            throw ExitCode(2)
        }
        let text = String(decoding: data, as: UTF8.self)
        if model == "list-append" { return try checkListAppend(text) }
        let events: [HistoryEvent]
        do {
            events = try History.parse(text)
        } catch {
            print("unknown: \(history): \(error)")
            throw ExitCode(2)
        }
        switch LinearizabilityChecker.check(events, searchStepsMax: searchStepsMax) {
        case .linearizable:
            print("linearizable: \(events.count) events")
        case let .notLinearizable(key, explanation):
            print("not linearizable: key '\(key)'")
            for line in explanation { print("  \(line)") }
            throw ExitCode(1)
        case let .unknown(reason):
            print("unknown: \(reason)")
            throw ExitCode(2)
        }
    }

    func checkListAppend(_ text: String) throws {
        let start = ContinuousClock.now
        let transactions: [ListAppendChecker.Transaction]
        do {
            transactions = try ListAppendHistory.parse(text)
        } catch {
            print("unknown: \(history): \(error)")
            throw ExitCode(2)
        }
        let parsed = ContinuousClock.now
        let violations = ListAppendChecker.violations(transactions)
        let checked = ContinuousClock.now
        let committed = transactions.filter { $0.committed == true }.count
        let aborted = transactions.filter { $0.committed == false }.count
        let counts = "\(transactions.count) transactions (\(committed) ok, \(aborted) fail, \(transactions.count - committed - aborted) info)"
        let times = "read in \(Self.seconds(parsed - start)), checked in \(Self.seconds(checked - parsed))"
        guard violations.isEmpty else {
            print("not strict serializable: \(counts); \(times)")
            for violation in violations.prefix(20) { print("  \(violation)") }
            if violations.count > 20 { print("  ... and \(violations.count - 20) more") }
            throw ExitCode(1)
        }
        print("strict serializable: \(counts); \(times)")
    }

    static func seconds(_ duration: Duration) -> String {
        String(format: "%.2f s", Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18)
    }
}
