import ArgumentParser
import ContinuumSimulation
import Foundation

struct CheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Check a JSON Lines history for linearizability against a register model.",
        discussion: """
            Exit status 0: linearizable. 1: not linearizable (the operations that could not be \
            ordered are printed). 2: unknown (the search budget ran out, or the history is malformed).
            """)

    @Option(help: "The model: register (a read/write/cas register per key).")
    var model = "register"

    @Option(help: "The history file, one JSON event per line (docs/design.md section 6).")
    var history: String

    @Option(help: "Search steps per key before answering unknown.")
    var searchStepsMax = 20_000_000

    func run() throws {
        guard model == "register" else { throw ValidationError("unknown model '\(model)'; known: register") }
        guard let data = FileManager.default.contents(atPath: history) else {
            print("unknown: cannot read \(history)")
            throw ExitCode(2)
        }
        let events: [HistoryEvent]
        do {
            events = try History.parse(String(decoding: data, as: UTF8.self))
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
}
