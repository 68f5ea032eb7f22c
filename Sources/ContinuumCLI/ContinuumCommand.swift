import ArgumentParser

@main
struct ContinuumCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "continuum",
        abstract: "Replicated registers that declare their place between availability and consistency.",
        subcommands: [DemoCommand.self, SimulateCommand.self, CheckCommand.self, NodeCommand.self, ClusterCommand.self, ClientCommand.self, BenchCommand.self])
}
