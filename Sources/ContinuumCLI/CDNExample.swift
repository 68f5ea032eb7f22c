import Continuum
import ContinuumCore
import Synchronization

/// The CDN example of the Spry paper, on the embedded cluster: an origin (n1) publishes new
/// revisions of a few pages; four edges (n2...n5) serve them, each read under one of several
/// policies, from "whatever is cached" to "never older than S, answer within L". The example
/// runs three phases (healthy, a slow origin, the origin cut off) and prints, per policy, how
/// many reads were served and refused, the largest staleness the edges certified, the largest
/// true age of what they served (measured against the origin's publication times), and the
/// latency. Run it alone with `swift run continuum demo --only cdn`.
struct CDNExample {
    struct EdgePolicy: Sendable {
        var label: String
        var policy: Policy
    }

    static let latency: Duration = .milliseconds(50)
    static let policies: [EdgePolicy] = [
        EdgePolicy(label: "cached, any age (available)", policy: .available),
        EdgePolicy(label: "never older than 1 s", policy: .bounded(staleness: .seconds(1), latency: latency)),
        EdgePolicy(label: "never older than 100 ms", policy: .bounded(staleness: .milliseconds(100), latency: latency)),
        EdgePolicy(label: "the latest (staleness 0)", policy: .bounded(staleness: .zero, latency: latency)),
    ]
    static let pages = ["index.html", "news.html", "video.html"]
    static let publishInterval: Duration = .milliseconds(100)
    static let phaseLength: Duration = .milliseconds(1500)
    static let slowOriginDelay: Duration = .milliseconds(60)
    static let requestInterval: Duration = .milliseconds(10)

    /// What the origin published when (for the true age of a served revision).
    final class Publications: Sendable {
        private let log = Mutex<[String: [(revision: UInt64, at: ContinuousClock.Instant)]]>([:])

        func record(_ page: String, _ revision: UInt64, at instant: ContinuousClock.Instant) {
            log.withLock { $0[page, default: []].append((revision, instant)) }
        }

        /// How long before `instant` a newer revision than `revision` was first published
        /// (zero when `revision` was the latest at `instant`).
        func age(of page: String, revision: UInt64?, at instant: ContinuousClock.Instant) -> Duration {
            let newer = log.withLock { log in log[page, default: []].first { $0.revision > (revision ?? 0) && $0.at <= instant } }
            return newer.map { instant - $0.at } ?? .zero
        }
    }

    struct BoundViolated: Error, CustomStringConvertible {
        var policies: Int
        var description: String { "\(policies) bounded policies served content older than their bound" }
    }

    struct Sample: Sendable {
        var policy: Int
        var served: Bool
        var certified: Duration?
        var trueAge: Duration
        var latency: Duration
    }

    func run() async throws {
        print("6. The CDN of the Spry paper: an origin publishes pages, edges serve them under staleness and latency bounds")
        print("   n1 is the origin (a new revision every \(Self.publishInterval.shortDescription)); n2...n5 are edges; each read must answer")
        print("   within \(Self.latency.shortDescription), and the bounded ones must never serve content older than their bound")
        let cluster = await EmbeddedCluster(nodes: 5)
        defer { Task { await cluster.shutdown() } }
        var registers: [String: [Register<MaxRegister<UInt64>>]] = [:]
        for page in Self.pages { registers[page] = try await cluster.declare("page/\(page)", as: MaxRegister<UInt64>.self) }
        let publications = Publications()
        let clock = ContinuousClock()
        let origin = Task {
            var revision: UInt64 = 0
            while !Task.isCancelled {
                revision += 1
                let page = Self.pages[Int(revision) % Self.pages.count]
                let published = revision
                try await registers[page]![0].update { register, _ in register.write(published) }
                publications.record(page, revision, at: clock.now)
                try await Task.sleep(for: Self.publishInterval)
            }
        }
        defer { origin.cancel() }
        try await Task.sleep(for: .milliseconds(300))  // the first revisions reach the edges

        var violations = try await phase("healthy", cluster, registers, publications)
        cluster.slowDown(1, by: Self.slowOriginDelay)
        violations += try await phase("a slow origin (+\(Self.slowOriginDelay.shortDescription) each way)", cluster, registers, publications)
        cluster.healAll()
        try await Task.sleep(for: .milliseconds(500))
        cluster.isolate(1)
        violations += try await phase("the origin cut off from every edge", cluster, registers, publications)
        cluster.healAll()
        if violations > 0 { throw BoundViolated(policies: violations) }
        print("   Bounded reads refuse rather than serve content older than their bound; the available one always serves,")
        print("   however old. 'certified' is what the edges could vouch for; 'true age' is measured against the origin's log.")
    }

    /// Runs one phase and prints its table; returns how many policies served content older
    /// than their bound (a bug).
    private func phase(_ name: String, _ cluster: EmbeddedCluster, _ registers: [String: [Register<MaxRegister<UInt64>>]],
                       _ publications: Publications) async throws -> Int {
        var violations = 0
        let clock = ContinuousClock()
        let end = clock.now + Self.phaseLength
        let samples = try await withThrowingTaskGroup(of: [Sample].self) { group in
            // Every edge serves a request every 10 ms under each policy, each policy in its own loop.
            for edge in 1..<5 {
                for policyIndex in Self.policies.indices {
                    group.addTask {
                        var samples: [Sample] = []
                        var turn = edge
                        while clock.now < end {
                            turn += 1
                            let page = Self.pages[turn % Self.pages.count]
                            let start = clock.now
                            do {
                                let result = try await registers[page]![edge].read(Self.policies[policyIndex].policy)
                                let age = publications.age(of: page, revision: result.value.value, at: start)
                                samples.append(Sample(policy: policyIndex, served: true, certified: result.staleness, trueAge: age,
                                                      latency: clock.now - start))
                            } catch ContinuumError.stalenessBoundUnmet {
                                samples.append(Sample(policy: policyIndex, served: false, certified: nil, trueAge: .zero,
                                                      latency: clock.now - start))
                            }
                            try await Task.sleep(until: start + Self.requestInterval, clock: clock)
                        }
                        return samples
                    }
                }
            }
            return try await group.reduce(into: []) { $0 += $1 }
        }
        print("\n   Phase: \(name), \(Self.phaseLength.shortDescription)")
        print("     " + ["policy".padded(28), "served".padded(7, left: true), "refused".padded(8, left: true),
                         "max certified".padded(14, left: true), "max true age".padded(13, left: true),
                         "p50".padded(9, left: true), "p99".padded(9, left: true)].joined(separator: " "))
        for (index, policy) in Self.policies.enumerated() {
            let mine = samples.filter { $0.policy == index }
            let served = mine.filter(\.served)
            let certified: String = served.isEmpty ? "-"
                : served.contains { $0.certified == nil } ? "none" : served.compactMap(\.certified).max()!.roundedDescription
            let trueAge = served.map(\.trueAge).max()?.roundedDescription ?? "-"
            let latencies = mine.map(\.latency).sorted()
            let p50 = latencies.isEmpty ? "-" : latencies[latencies.count / 2].roundedDescription
            let p99 = latencies.isEmpty ? "-" : latencies[(latencies.count - 1) * 99 / 100].roundedDescription
            print("     " + [policy.label.padded(28), "\(served.count)".padded(7, left: true), "\(mine.count - served.count)".padded(8, left: true),
                             certified.padded(14, left: true), trueAge.padded(13, left: true),
                             p50.padded(9, left: true), p99.padded(9, left: true)].joined(separator: " "))
            if case let .bounded(bound?, _) = policy.policy, let worst = served.map(\.trueAge).max(), worst > bound {
                print("     !! a read served content \(worst.roundedDescription) old under a bound of \(bound.shortDescription)")
                violations += 1
            }
        }
        return violations
    }
}

extension String {
    func padded(_ width: Int, left: Bool = false) -> String {
        let padding = String(repeating: " ", count: max(0, width - count))
        return left ? padding + self : self + padding
    }
}

extension Duration {
    /// Milliseconds with one decimal: "12.3 ms".
    var roundedDescription: String {
        let tenths = (nanoseconds + 50_000) / 100_000
        return "\(tenths / 10).\(tenths % 10) ms"
    }
}
