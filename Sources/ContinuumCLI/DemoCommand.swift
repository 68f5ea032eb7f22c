import ArgumentParser
import ContinuumCore
import ContinuumProtocols
import ContinuumSimulation

/// The newcomer's tour. For now it runs the gossip protocol inside the deterministic simulator
/// (virtual time, so it finishes at once) and shows available registers at work: updates on a
/// node cut off from the rest, add-wins under concurrent remove, an inventory that cannot be
/// oversold, and convergence after the heal.
struct DemoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Show available (CRDT) registers converging across a partition, in an embedded simulation.")

    @Option(help: "Seed of the simulated network.")
    var seed: UInt64 = 7

    func run() throws {
        print("Continuum demo: 5 nodes gossiping CRDT registers in a deterministic simulation (seed \(seed)).\n")
        shoppingCart()
        print("")
        try ticketInventory()
    }

    private func shoppingCart() {
        print("1. An add-wins set (ORSet), updated on both sides of a partition")
        let cluster = DemoCluster<ORSet<String>>(seed: seed)
        cluster.update(1, "n1 adds apple") { set, replica, _ in set.insert("apple", replica: replica) }
        cluster.update(2, "n2 adds bread") { set, replica, _ in set.insert("bread", replica: replica) }
        cluster.advance(milliseconds: 1_000)
        cluster.show("after gossip")
        cluster.isolate(5)
        print("   -- n5 is cut off from everyone --")
        cluster.update(5, "n5 (cut off) removes apple") { set, _, _ in set.remove("apple") }
        cluster.update(5, "n5 (cut off) adds cheese") { set, replica, _ in set.insert("cheese", replica: replica) }
        cluster.update(2, "n2 adds apple again, concurrently") { set, replica, _ in set.insert("apple", replica: replica) }
        cluster.update(3, "n3 removes bread") { set, _, _ in set.remove("bread") }
        cluster.advance(milliseconds: 1_000)
        cluster.show("during the partition: both sides kept taking updates")
        cluster.healAndConverge()
        cluster.show("after the heal: the concurrent add of apple wins over n5's remove")
    }

    private func ticketInventory() throws {
        print("2. A bounded counter: 10 tickets sold from 5 nodes, partitioned, never oversold")
        let cluster = DemoCluster<BoundedCounter>(seed: seed &+ 1)
        cluster.update(1, "n1 stocks 10 tickets") { counter, replica, _ in counter.increment(by: 10, replica: replica) }
        cluster.advance(milliseconds: 500)
        for target in 2...5 {
            cluster.update(1, "n1 hands 2 ticket rights to n\(target)") { counter, replica, _ in
                (try? counter.transfer(2, from: replica, to: ReplicaID(UInt64(target)))) ?? .bottom
            }
        }
        cluster.advance(milliseconds: 500)
        cluster.isolate(1)
        cluster.isolate(2)
        print("   -- n1 and n2 are each cut off --")
        var sold = 0
        for _ in 0..<4 {
            for node in 1...5 {
                cluster.update(UInt64(node), nil) { counter, replica, _ in
                    guard let delta = try? counter.decrement(by: 1, replica: replica) else { return .bottom }
                    return delta
                }
            }
        }
        cluster.advance(milliseconds: 200)
        for node in cluster.nodes {
            let state = cluster.state(node)!
            sold += Int(state.decrements[node.replica])
        }
        print("   20 sale attempts, 4 per node: \(sold) sold, \(20 - sold) refused for lack of local rights")
        cluster.healAndConverge()
        let final = cluster.state(NodeID(1))!
        print("   after the heal every node shows \(final.value) tickets left; sold \(final.decrements.value) of 10")
        precondition(final.value == 10 - UInt64(sold), "inventory does not add up")
    }
}

/// A small scripted cluster for the demo: the real gossip instances under the simulator.
final class DemoCluster<Value: Lattice & BinaryCodable> {
    typealias Instance = FullStateGossip<Value>
    let simulation: Simulation<Instance>
    private var nextUpdate: UInt64 = 0

    init(seed: UInt64) {
        var faults = FaultSettings.none
        faults.linkLatencyMin = .milliseconds(1)
        faults.linkLatencyMax = .milliseconds(8)
        simulation = Simulation(nodeCount: 5, seed: seed, faults: faults, configuration: .init())
    }

    var nodes: [NodeID] { simulation.nodes }

    func state(_ node: NodeID) -> Value? { simulation.instance(node)?.value }

    func update(_ node: UInt64, _ label: String?, _ mutate: @escaping @Sendable (inout Value, ReplicaID, UInt64) -> Value) {
        nextUpdate += 1
        if let label { print("   \(label)") }
        simulation.scheduleCommand(.init(id: nextUpdate, label: label ?? "update", mutate: mutate), to: NodeID(node), at: simulation.now)
        simulation.run(until: simulation.now)
    }

    func advance(milliseconds: Int64) { simulation.run(until: simulation.now + milliseconds * 1_000_000) }

    func isolate(_ node: UInt64) {
        for other in nodes where other != NodeID(node) {
            simulation.cut(from: NodeID(node), to: other)
            simulation.cut(from: other, to: NodeID(node))
        }
    }

    func healAndConverge() {
        simulation.healAll()
        let start = simulation.now
        var rounds = 0
        while Set(nodes.map { state($0)?.binaryEncoded() ?? [] }).count > 1, rounds < 100 {
            advance(milliseconds: 100)
            rounds += 1
        }
        print("   -- healed; all 5 replicas equal after \(rounds) gossip rounds (\((simulation.now - start) / 1_000_000) ms virtual) --")
    }

    func show(_ heading: String) {
        print("   \(heading):")
        for node in nodes {
            print("     \(node): \(state(node).map(render) ?? "down")")
        }
    }

    private func render(_ value: Value) -> String {
        if let set = value as? ORSet<String> { return "{" + set.elements.sorted().joined(separator: ", ") + "}" }
        return "\(value)"
    }
}
