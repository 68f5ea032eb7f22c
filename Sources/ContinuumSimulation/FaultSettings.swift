import ContinuumCore

/// The kinds of network partition the simulator makes.
public enum PartitionKind: String, Sendable, CaseIterable {
    /// One node cut off from all others, both ways.
    case isolateOne
    /// The nodes split into two halves that cannot talk to each other.
    case splitHalves
    /// One node can still receive but not send (or send but not receive): an asymmetric cut.
    case oneWayCut
}

/// The faults of one simulation run. In swarm mode each seed draws its own settings, so that
/// across many seeds some runs have heavy loss and no crashes, others many partitions and no
/// skew: varied settings find bugs that one fixed mix hides (Groce et al., "Swarm Testing",
/// 2012; TigerBeetle's VOPR).
public struct FaultSettings: Sendable, Equatable, CustomStringConvertible {
    /// Each link's base one-way latency is drawn once from this range.
    public var linkLatencyMin: Duration
    public var linkLatencyMax: Duration
    /// Mean of the exponential extra latency added to every message.
    public var jitterMean: Duration
    public var lossProbability: Double
    public var duplicateProbability: Double
    /// Probability that a message is held back by up to `reorderDelayMax`, arriving after later ones.
    public var reorderProbability: Double
    public var reorderDelayMax: Duration
    /// Mean time between partition starts; nil for no partitions.
    public var partitionMeanInterval: Duration?
    public var partitionDurationMax: Duration
    public var partitionKinds: [PartitionKind]
    /// Mean time between crashes; nil for no crashes.
    public var crashMeanInterval: Duration?
    public var restartDelayMax: Duration
    /// Each node's clock offset is drawn from ±`clockSkewMax`.
    public var clockSkewMax: Duration
    /// Each node's clock rate error is drawn from ±`clockDriftMaxPartsPerMillion`.
    public var clockDriftMaxPartsPerMillion: Int64

    /// A perfect network: fixed 1 ms latency, nothing lost, no crashes, no skew.
    public static let none = FaultSettings(
        linkLatencyMin: .milliseconds(1), linkLatencyMax: .milliseconds(1), jitterMean: .zero,
        lossProbability: 0, duplicateProbability: 0, reorderProbability: 0, reorderDelayMax: .zero,
        partitionMeanInterval: nil, partitionDurationMax: .zero, partitionKinds: [],
        crashMeanInterval: nil, restartDelayMax: .zero, clockSkewMax: .zero, clockDriftMaxPartsPerMillion: 0)

    /// Draws a fault mix: each kind of fault is switched on or off by a coin, then its
    /// intensity is drawn.
    public static func swarm(using random: inout DeterministicRandom) -> FaultSettings {
        var settings = FaultSettings.none
        let minimumLatency = Int64.random(in: 100...5_000, using: &random)  // microseconds
        settings.linkLatencyMin = .microseconds(minimumLatency)
        settings.linkLatencyMax = .microseconds(minimumLatency + Int64.random(in: 0...20_000, using: &random))
        settings.jitterMean = .microseconds(Int64.random(in: 0...5_000, using: &random))
        if Bool.random(using: &random) { settings.lossProbability = Double.random(in: 0...0.3, using: &random) }
        if Bool.random(using: &random) { settings.duplicateProbability = Double.random(in: 0...0.2, using: &random) }
        if Bool.random(using: &random) {
            settings.reorderProbability = Double.random(in: 0...0.3, using: &random)
            settings.reorderDelayMax = .milliseconds(Int64.random(in: 10...500, using: &random))
        }
        if Bool.random(using: &random) {
            settings.partitionMeanInterval = .milliseconds(Int64.random(in: 500...5_000, using: &random))
            settings.partitionDurationMax = .milliseconds(Int64.random(in: 200...8_000, using: &random))
            let kinds = PartitionKind.allCases.filter { _ in Bool.random(using: &random) }
            settings.partitionKinds = kinds.isEmpty ? [.isolateOne] : kinds
        }
        if Bool.random(using: &random) {
            settings.crashMeanInterval = .milliseconds(Int64.random(in: 500...8_000, using: &random))
            settings.restartDelayMax = .milliseconds(Int64.random(in: 10...5_000, using: &random))
        }
        if Bool.random(using: &random) {
            settings.clockSkewMax = .milliseconds(Int64.random(in: 1...1_000, using: &random))
            settings.clockDriftMaxPartsPerMillion = Int64.random(in: 0...500, using: &random)
        }
        return settings
    }

    public var description: String {
        let ms = milliseconds
        var parts = ["latency \(ms(linkLatencyMin))-\(ms(linkLatencyMax))+exp(\(ms(jitterMean)))"]
        if lossProbability > 0 { parts.append("loss \(fixed(lossProbability, 2))") }
        if duplicateProbability > 0 { parts.append("dup \(fixed(duplicateProbability, 2))") }
        if reorderProbability > 0 { parts.append("reorder \(fixed(reorderProbability, 2))≤\(ms(reorderDelayMax))") }
        if let interval = partitionMeanInterval {
            parts.append("partitions every ~\(ms(interval)) ≤\(ms(partitionDurationMax)) \(partitionKinds.map(\.rawValue))")
        }
        if let interval = crashMeanInterval { parts.append("crashes every ~\(ms(interval)) restart ≤\(ms(restartDelayMax))") }
        if clockSkewMax > .zero || clockDriftMaxPartsPerMillion > 0 {
            parts.append("skew ±\(ms(clockSkewMax)) drift ±\(clockDriftMaxPartsPerMillion)ppm")
        }
        return parts.joined(separator: ", ")
    }
}
