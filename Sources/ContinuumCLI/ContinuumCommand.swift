import ArgumentParser
import ContinuumNIO

@main
struct ContinuumCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "continuum",
        abstract: "Replicated registers that declare their place between availability and consistency.",
        version: NodeServer.version,
        subcommands: [DemoCommand.self, SimulateCommand.self, CheckCommand.self, NodeCommand.self, ClusterCommand.self, ClientCommand.self, BackupCommand.self, RestoreCommand.self, BenchCommand.self, JoinBenchCommand.self])
}
