import ContinuumCore
import ContinuumProtocols
import Testing

@testable import ContinuumSimulation

/// A protocol that does what its commands say, to test the simulator's mechanics.
struct Probe: ProtocolInstance {
    enum Command: Sendable {
        case send(to: NodeID, UInt64)
        case persist(UInt64)
        case remember(UInt64)
        case setTimer(after: Duration)
    }

    enum Output: Sendable, Equatable {
        case received(from: NodeID, UInt64, localTime: Duration)
        case timerFired(localTime: Duration)
        case started(durable: UInt64?)
    }

    enum Timer: Hashable, Sendable { case alarm }
    struct Configuration: Sendable {}
    typealias Message = UInt64
    typealias Durable = UInt64

    /// Volatile: lost in a crash.
    var remembered: [UInt64] = []
    let durable: UInt64?

    init(configuration: Configuration, context: InstanceContext, durable: UInt64?) { self.durable = durable }

    mutating func start(now: Duration) -> [Effect] { [.output(.started(durable: durable))] }

    mutating func receive(_ message: UInt64, from: NodeID, now: Duration) -> [Effect] {
        [.output(.received(from: from, message, localTime: now))]
    }

    mutating func timerFired(_ timer: Timer, now: Duration) -> [Effect] { [.output(.timerFired(localTime: now))] }

    mutating func handle(_ command: Command, now: Duration) -> [Effect] {
        switch command {
        case let .send(to, value): return [.send(to: to, value)]
        case let .persist(value): return [.persist(value)]
        case let .remember(value):
            remembered.append(value)
            return []
        case let .setTimer(after): return [.setTimer(.alarm, after: after)]
        }
    }
}

@Suite struct SimulatorTests {
    let n1 = NodeID(1)
    let n2 = NodeID(2)

    func makeSimulation(_ faults: FaultSettings = .none) -> (Simulation<Probe>, Outputs) {
        let simulation = Simulation<Probe>(nodeCount: 3, seed: 1, faults: faults, configuration: .init())
        let outputs = Outputs()
        simulation.onOutput = { node, output in outputs.all.append((node, output)) }
        return (simulation, outputs)
    }

    final class Outputs {
        var all: [(NodeID, Probe.Output)] = []
        func received(at node: NodeID) -> [UInt64] {
            all.compactMap { if $0.0 == node, case let .received(_, value, _) = $0.1 { value } else { nil } }
        }
    }

    @Test func perfectNetworkDeliversInOrderAfterLatency() {
        let (simulation, outputs) = makeSimulation()
        for value in 1...5 as ClosedRange<UInt64> { simulation.scheduleCommand(.send(to: n2, value), to: n1, at: 1_000) }
        simulation.run(until: 1_000 + 999_999)
        #expect(outputs.received(at: n2).isEmpty)  // 1 ms latency not yet elapsed
        simulation.run(until: 1_000 + 1_000_000)
        #expect(outputs.received(at: n2) == [1, 2, 3, 4, 5])
    }

    @Test func cutLinksDropMessagesOneWayUntilHealed() {
        let (simulation, outputs) = makeSimulation()
        simulation.cut(from: n1, to: n2)
        simulation.scheduleCommand(.send(to: n2, 1), to: n1, at: 0)
        simulation.scheduleCommand(.send(to: n1, 2), to: n2, at: 0)
        simulation.run(until: 10_000_000)
        #expect(outputs.received(at: n2).isEmpty)
        #expect(outputs.received(at: n1) == [2])  // the other direction still works
        #expect(simulation.statistics.messagesCutByPartition == 1)
        simulation.healAll()
        simulation.scheduleCommand(.send(to: n2, 3), to: n1, at: simulation.now)
        simulation.run(until: simulation.now + 10_000_000)
        #expect(outputs.received(at: n2) == [3])
    }

    @Test func crashKeepsDurableStateAndDropsVolatileStateAndTimers() {
        var faults = FaultSettings.none
        faults.crashMeanInterval = .milliseconds(1)
        faults.restartDelayMax = .milliseconds(1)
        let (simulation, outputs) = makeSimulation(faults)
        simulation.scheduleCommand(.persist(7), to: n1, at: 0)
        simulation.scheduleCommand(.remember(9), to: n1, at: 0)
        simulation.run(until: 0)
        #expect(simulation.instance(n1)?.remembered == [9])
        simulation.injectFaults(until: 100_000_000)
        simulation.run(until: 100_000_000)
        simulation.healAll()
        simulation.run(until: 200_000_000)
        #expect(simulation.statistics.crashes > 0)
        #expect(simulation.statistics.restarts == simulation.statistics.crashes)
        // n1 crashed at least once in 100 crashes over 3 nodes: check a restart of n1 saw 7.
        let n1Starts = outputs.all.filter { $0.0 == NodeID(1) }.compactMap { if case let .started(durable) = $0.1 { durable } else { nil } }
        #expect(n1Starts.count >= 2)
        #expect(n1Starts.dropFirst().allSatisfy { $0 == 7 })
        #expect(simulation.instance(n1)?.remembered == [])
        #expect(simulation.durableState(n1) == 7)
    }

    @Test func timersOfACrashedIncarnationNeverFire() {
        func timerFirings(crashAt crash: Int64?) -> Int {
            let (simulation, outputs) = makeSimulation()
            simulation.scheduleCommand(.setTimer(after: .milliseconds(50)), to: n1, at: 0)
            if let crash {
                simulation.scheduleCrash(of: n1, at: crash)
                simulation.scheduleRestart(of: n1, at: crash + 1_000_000)
            }
            simulation.run(until: 1_000_000_000)
            return outputs.all.filter { if $0.0 == NodeID(1), case .timerFired = $0.1 { true } else { false } }.count
        }
        #expect(timerFirings(crashAt: nil) == 1)
        #expect(timerFirings(crashAt: 10_000_000) == 0)  // crashed before the 50 ms elapsed
        #expect(timerFirings(crashAt: 60_000_000) == 1)  // crashed after it fired
    }

    @Test func skewedClocksReadDifferentLocalTimes() {
        var faults = FaultSettings.none
        faults.clockSkewMax = .seconds(1)
        faults.clockDriftMaxPartsPerMillion = 500
        let simulation = Simulation<Probe>(nodeCount: 3, seed: 9, faults: faults, configuration: .init())
        simulation.run(until: 10_000_000_000)
        let local = simulation.nodes.map { simulation.localTime($0) }
        #expect(Set(local).count == 3)
        for time in local {
            // Within skew + drift of true time (10 s ± 1 s ± 5 ms).
            #expect(abs(time.nanoseconds - 10_000_000_000) <= 1_005_000_000)
        }
    }

    @Test func lossAndDuplicationHappenAtTheConfiguredRate() {
        var faults = FaultSettings.none
        faults.lossProbability = 0.2
        faults.duplicateProbability = 0.1
        let (simulation, outputs) = makeSimulation(faults)
        for value in 0..<5_000 as Range<UInt64> { simulation.scheduleCommand(.send(to: n2, value), to: n1, at: 0) }
        simulation.run(until: 1_000_000_000)
        let lost = Double(simulation.statistics.messagesLost) / 5_000
        let duplicated = Double(simulation.statistics.messagesDuplicated) / Double(5_000 - simulation.statistics.messagesLost)
        #expect(abs(lost - 0.2) < 0.03)
        #expect(abs(duplicated - 0.1) < 0.03)
        #expect(outputs.received(at: n2).count == 5_000 - simulation.statistics.messagesLost + simulation.statistics.messagesDuplicated)
    }

    @Test func swarmDrawsVariedFaultMixes() {
        var random = DeterministicRandom(seed: 1)
        let mixes = (0..<64).map { _ in FaultSettings.swarm(using: &random) }
        #expect(mixes.contains { $0.lossProbability == 0 } && mixes.contains { $0.lossProbability > 0 })
        #expect(mixes.contains { $0.partitionMeanInterval == nil } && mixes.contains { $0.partitionMeanInterval != nil })
        #expect(mixes.contains { $0.crashMeanInterval == nil } && mixes.contains { $0.crashMeanInterval != nil })
        #expect(mixes.contains { $0.clockSkewMax > .zero })
        for kind in PartitionKind.allCases { #expect(mixes.contains { $0.partitionKinds.contains(kind) }) }
    }

    @Test func logarithmIsAccurate() {
        for (x, expected) in [(1.0, 0.0), (2.718281828459045, 1.0), (0.5, -0.6931471805599453), (1e-300, -690.7755278982137)] {
            #expect(abs(log(x) - expected) < 1e-9)
        }
    }
}
