import ArgumentParser
import ContinuumCore
import Foundation

/// `continuum bench-joins`: the CRDT work of SADD into one growing set, in this process, without
/// a cluster, sockets or storage: a writer's deltas, joined `--batch` at a time as a push joins
/// a neighbour's pending deltas, and each join merged into a second replica's state, all through
/// `AnyReplicated` as a node holds them. Its figures do not move with the machine's network or
/// disk, so they show what a change to the CRDT code itself costs or saves.
struct JoinBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-joins",
        abstract: "The CRDT joins of SADD into one growing set, in process: microseconds per insert.")

    @Option(help: "Members inserted (SADDs), at most 10,000,000.")
    var inserts = 200_000

    @Option(help: "Distinct members drawn from (the set's final size is about this, or fewer).")
    var members = 100_000

    @Option(help: "Deltas joined into one before the second replica merges it (a push's batch).")
    var batch = 60

    @Option(help: "Runs, each from empty; each prints its figure.")
    var runs = 3

    @Option(help: "Inserts in the delta-interval whose encoding and decoding are timed after each run.")
    var intervalInserts = 10_000

    @Option(help: "Seed of the members drawn.")
    var seed: UInt64 = 1

    func validate() throws {
        guard (1...10_000_000).contains(inserts) else { throw ValidationError("--inserts must be 1...10,000,000") }
        guard (1...10_000_000).contains(members) else { throw ValidationError("--members must be 1...10,000,000") }
        guard (1...100_000).contains(batch) else { throw ValidationError("--batch must be 1...100,000") }
        guard (1...100).contains(runs) else { throw ValidationError("--runs must be 1...100") }
        guard (1...1_000_000).contains(intervalInserts) else { throw ValidationError("--interval-inserts must be 1...1,000,000") }
    }

    func run() {
        print("bench-joins: \(inserts) inserts of \(members) possible members into one ORSet<String>, joined \(batch) at a time")
        for run in 1...runs {
            var random = DeterministicRandom(seed: seed)
            let writer = ReplicaID(1)
            var local = AnyReplicated(ORSet<String>())
            var remote = AnyReplicated(ORSet<String>())
            var pending: [AnyReplicated] = []
            var shippedBytes = 0
            let clock = ContinuousClock()
            let start = clock.now
            for index in 0..<inserts {
                let member = "element:\(UInt64.random(in: 0..<UInt64(members), using: &random))"
                let delta = local.mutate(as: ORSet<String>.self) { $0.insert(member, replica: writer) }!
                pending.append(AnyReplicated(delta))
                if pending.count == batch || index == inserts - 1 {
                    var joined = pending[0]
                    for next in pending.dropFirst() { _ = joined.formJoin(next) }
                    _ = remote.formJoin(joined)
                    shippedBytes += joined.encoded().count
                    pending.removeAll(keepingCapacity: true)
                }
                if (index + 1) % 1_000_000 == 0 { print("  run \(run): \(index + 1) inserts") }
            }
            let elapsed = clock.now - start
            let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
            let converged = local == remote
            let size = remote.unwrap(as: ORSet<String>.self)?.count ?? 0
            print("run \(run): \(String(format: "%.2f", seconds * 1e6 / Double(inserts))) µs per insert (\(String(format: "%.2f", seconds)) s),"
                  + " set of \(size), \(shippedBytes / max(1, (inserts + batch - 1) / batch)) bytes per join shipped,"
                  + " replicas \(converged ? "equal" : "DIFFERENT")")
            if !converged { Foundation.exit(1) }
            codec(of: remote, interval: local, run: run)
        }
    }

    /// The wire costs a replica pays for this set: encoding and decoding (through the type
    /// catalogue, as a node decodes a payload) the whole state, and a delta-interval of the
    /// last `--interval-inserts` inserts (what a retransmission or a returning neighbour gets).
    private func codec(of state: AnyReplicated, interval local: AnyReplicated, run: Int) {
        var random = DeterministicRandom(seed: seed &+ 1)
        var writer = local
        var interval: AnyReplicated?
        for _ in 0..<intervalInserts {
            let member = "element:\(UInt64.random(in: 0..<UInt64(members), using: &random))"
            let delta = AnyReplicated(writer.mutate(as: ORSet<String>.self) { $0.insert(member, replica: ReplicaID(1)) }!)
            if interval == nil { interval = delta } else { _ = interval!.formJoin(delta) }
        }
        let clock = ContinuousClock()
        func milliseconds(_ body: () -> Void) -> Double {
            let start = clock.now
            body()
            let elapsed = clock.now - start
            return (Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18) * 1e3
        }
        for (name, value) in [("whole state", state), ("interval of \(intervalInserts) inserts", interval!)] {
            var bytes: [UInt8] = []
            let encode = milliseconds { bytes = value.encoded() }
            var decoded: AnyReplicated?
            let decode = milliseconds { decoded = try? ReplicableTypeCatalog.standard.decode(typeName: value.typeName, bytes) }
            guard decoded == value else {
                print("run \(run): \(name) did not decode to itself")
                Foundation.exit(1)
            }
            print("run \(run): \(name): \(bytes.count) bytes, encode \(String(format: "%.1f", encode)) ms, decode \(String(format: "%.1f", decode)) ms")
        }
    }
}
