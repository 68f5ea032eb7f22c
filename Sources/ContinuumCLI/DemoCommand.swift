import ArgumentParser
import Continuum
import ContinuumCore

/// The newcomer's tour, on the embedded default: a 5-node cluster inside this process, in real
/// time, over an in-memory network whose links the demo cuts and heals.
struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "The tour on an embedded 5-node cluster: available, linearizable, serializable and bounded registers under partitions.")

    enum Part: String, CaseIterable, ExpressibleByArgument {
        case cart, tickets, ads, account, austere, cdn
    }

    @Option(help: "Run only these parts (\(Part.allCases.map(\.rawValue).joined(separator: ", "))); all by default.")
    var only: [Part] = []

    func run() async throws {
        print("Continuum demo: an embedded cluster of 5 nodes in this process, real time, in-memory network.")
        let clock = ContinuousClock()
        let started = clock.now
        for part in Part.allCases where only.isEmpty || only.contains(part) {
            print("")
            switch part {
            case .cart: try await shoppingCart()
            case .tickets: try await ticketInventory()
            case .ads: try await advertisementCounter()
            case .account: try await linearizableAccount()
            case .austere: try await austereContrast()
            case .cdn: try await CDNExample().run()
            }
        }
        print("\nDemo finished in \(milliseconds(clock.now - started)) ms.")
    }

    /// Updates on both sides of a partition, and the add-wins merge after it heals.
    private func shoppingCart() async throws {
        print("1. An add-wins set (ORSet) updated on both sides of a partition")
        let cluster = await EmbeddedCluster(nodes: 5)
        defer { Task { await cluster.shutdown() } }
        let carts = try await cluster.declare("cart", as: ORSet<String>.self)
        try await carts[0].update { set, replica in set.insert("apple", replica: replica) }
        let withBread = try await carts[1].update { set, replica in set.insert("bread", replica: replica) }
        try await waitAll(carts, atLeast: withBread.join(try await carts[0].read()))
        try await show(carts, "   after gossip:")
        cluster.isolate(5)
        print("   -- n5 is cut off from everyone --")
        try await carts[4].update { set, _ in set.remove("apple") }
        let isolatedSide = try await carts[4].update { set, replica in set.insert("cheese", replica: replica) }
        print("   n5 removes apple and adds cheese: its updates return at once (\(isolatedSide.elements.sorted()))")
        let majority = try await carts[1].update { set, replica in set.insert("apple", replica: replica) }
        let majority2 = try await carts[2].update { set, _ in set.remove("bread") }
        print("   meanwhile n2 adds apple again and n3 removes bread")
        _ = try await carts[0].read(atLeast: majority.join(majority2), timeout: .seconds(5))
        try await show(carts, "   during the partition:")
        cluster.healAll()
        let clock = ContinuousClock()
        let healed = clock.now
        try await waitAll(carts, atLeast: isolatedSide.join(majority).join(majority2))
        print("   -- healed; all 5 replicas equal after \(milliseconds(clock.now - healed)) ms --")
        try await show(carts, "   after the heal (the concurrent add of apple wins over n5's remove):")
    }

    /// An escrow counter: sold out, never oversold, though nodes sell while cut off.
    private func ticketInventory() async throws {
        print("2. A bounded counter: 10 tickets sold from 5 nodes, two of them cut off, never oversold")
        let cluster = await EmbeddedCluster(nodes: 5)
        defer { Task { await cluster.shutdown() } }
        let tickets = try await cluster.declare("tickets", as: BoundedCounter.self)
        var stocked = try await tickets[0].update { counter, replica in counter.increment(by: 10, replica: replica) }
        for target in 2...5 {
            stocked = try await tickets[0].update { counter, replica in
                try counter.transfer(2, from: replica, to: ReplicaID(UInt64(target)))
            }
        }
        print("   n1 stocks 10 tickets and hands 2 selling rights to each of n2...n5")
        try await waitAll(tickets, atLeast: stocked)
        cluster.isolate(1)
        cluster.isolate(2)
        print("   -- n1 and n2 are each cut off --")
        var sold = 0
        var refused = 0
        for _ in 0..<4 {
            for ticket in tickets {
                do {
                    try await ticket.update { counter, replica in try counter.decrement(replica: replica) }
                    sold += 1
                } catch {
                    refused += 1
                }
            }
        }
        print("   20 sale attempts, 4 per node: \(sold) sold, \(refused) refused locally for lack of rights")
        cluster.healAll()
        var all = BoundedCounter()
        for ticket in tickets { all.formJoin(try await ticket.read()) }
        try await waitAll(tickets, atLeast: all)
        print("   after the heal every node shows \(all.value) tickets left; \(all.decrements.value) sold of 10")
    }

    /// Lasp's advertisement counter (Meiklejohn and Van Roy 2015, section 5).
    private func advertisementCounter() async throws {
        print("3. Lasp's advertisement counter: ads of two vendors, impressions counted on clients, ads retired at a cap")
        let cap: UInt64 = 6
        let cluster = await EmbeddedCluster(nodes: 5)
        defer { Task { await cluster.shutdown() } }
        let server = cluster.node(1)
        let vendorA = try await cluster.declare("ads-vendor-a", as: ORSet<String>.self)
        let vendorB = try await cluster.declare("ads-vendor-b", as: ORSet<String>.self)
        let impressions = try await cluster.declare("impressions", as: GMap<String, GCounter>.self)
        // Every client shows the union of the vendors' ads: a derived register on each node.
        var shown: [Register<Union<ORSet<String>, ORSet<String>>>] = []
        for index in 0..<5 { shown.append(try await vendorA[index].union(vendorB[index], into: "ads")) }
        var ads = try await vendorA[0].update { set, replica in set.insert("shoes", replica: replica) }
        ads = try await vendorA[0].update { set, replica in set.insert("tea", replica: replica) }
        let bAds = try await vendorB[0].update { set, replica in set.insert("hats", replica: replica) }
        for index in 0..<5 { _ = try await shown[index].read(atLeast: Union(ads, bAds), timeout: .seconds(5)) }
        print("   vendors publish shoes, tea (A) and hats (B); every client sees the union")

        // The server retires an ad once its impressions reach the cap: a monotone condition read.
        let serverImpressions = server.register("impressions", as: GMap<String, GCounter>.self)
        let serverVendorA = server.register("ads-vendor-a", as: ORSet<String>.self)
        let serverVendorB = server.register("ads-vendor-b", as: ORSet<String>.self)
        let watchers = ["shoes", "tea", "hats"].map { ad in
            Task {
                _ = try await serverImpressions.read(until: { $0[ad].value >= cap }, timeout: .seconds(20))
                if ad == "hats" {
                    try await serverVendorB.update { set, _ in set.remove(ad) }
                } else {
                    try await serverVendorA.update { set, _ in set.remove(ad) }
                }
                return ad
            }
        }
        cluster.isolate(5)
        print("   -- client n5 goes offline and keeps counting impressions locally --")
        var rounds = 0
        while rounds < 100 {
            rounds += 1
            var anyShown = false
            for client in 1..<4 {  // n2, n3 and n4 are online
                let visible = try await shown[client].read().elements.sorted()
                guard let ad = visible.first else { continue }
                anyShown = true
                try await impressions[client].update { map, replica in map.update(ad) { $0.increment(replica: replica) } }
            }
            let offline = try await shown[4].read().elements.sorted()  // n5 is not
            if let ad = offline.first {
                try await impressions[4].update { map, replica in map.update(ad) { $0.increment(replica: replica) } }
            }
            if !anyShown { break }
            _ = try? await shown[1].read(until: { _ in false }, timeout: .milliseconds(20))
        }
        var retired: [String] = []
        for watcher in watchers { retired.append(try await watcher.value) }
        print("   the server retired \(retired.sorted().joined(separator: ", ")) at \(cap) impressions each; online clients stopped showing them")
        cluster.healAll()
        let counted = try await impressions[4].read()
        let total = try await impressions[0].read(atLeast: counted, timeout: .seconds(5))
        for ad in ["hats", "shoes", "tea"] {
            let offline = total[ad][ReplicaID(5)]
            print("   \(ad): \(total[ad].value) impressions: \(total[ad].value - offline) online, \(offline) offline on n5 (cap \(cap))")
        }
        print("   -- healed: n5's offline impressions merged in; the overshoot beyond the cap is what n5 showed offline --")
    }

    /// The other end of the line: a linearizable register refuses on the minority side.
    private func linearizableAccount() async throws {
        print("4. A linearizable register (Raft): compare-and-set, and a minority that refuses rather than diverge")
        let cluster = await EmbeddedCluster(nodes: 5)
        defer { Task { await cluster.shutdown() } }
        var accounts: [LinearizableRegister] = []
        for index in 1...5 { accounts.append(try await cluster.node(index).declareLinearizable("account")) }
        // A fresh cluster elects a leader first: retry every 20 ms, as a client would.
        var opened = false
        for _ in 0..<250 where !opened {
            opened = (try? await accounts[0].compareAndSet(expected: nil, new: 100, latency: .milliseconds(300))) != nil
            if !opened { try await Task.sleep(for: .milliseconds(20)) }
        }
        print("   n1 opens the account with 100; n3 reads \(try await accounts[2].read().map(String.init) ?? "nothing")")
        let swapped = try await accounts[3].compareAndSet(expected: 100, new: 60)
        let lost = try await accounts[4].compareAndSet(expected: 100, new: 10)
        print("   n4 withdraws 40 by compare-and-set (\(swapped ? "swapped" : "refused")); n5's concurrent withdrawal from 100 is \(lost ? "swapped" : "refused")")
        cluster.isolate(4)
        cluster.isolate(5)
        print("   -- n4 and n5 are cut off: a minority of 2 --")
        try await Task.sleep(for: .milliseconds(400))  // an election timeout: they notice
        let clock = ContinuousClock()
        let started = clock.now
        do {
            try await accounts[4].write(0, latency: .seconds(1))
            print("   n5's write succeeded (unexpected)")
        } catch {
            print("   n5's write fails in \(milliseconds(clock.now - started)) ms: \(error)")
        }
        let stillServes = try await accounts[1].compareAndSet(expected: 60, new: 55, latency: .seconds(1))
        print("   the majority keeps serving: n2's compare-and-set \(stillServes ? "swapped 60 to 55" : "was refused")")
        cluster.healAll()
        print("   -- healed --")
    }

    /// The two ends side by side: one replica cut off stops serializable transactions (which
    /// lock at every replica) while available updates go on; after the heal both proceed.
    private func austereContrast() async throws {
        print("5. Serializable (Austere: 2PL and 2PC at every replica) beside available, one replica cut off")
        let cluster = await EmbeddedCluster(nodes: 3)
        defer { Task { await cluster.shutdown() } }
        let likes = try await cluster.declare("likes", as: GCounter.self)
        @Sendable func transfer(_ node: Node, _ amount: Int64) async throws {
            try await node.transaction(latency: .milliseconds(300)) { tx in
                let alice = try await tx.readInt("alice") ?? 100
                let bob = try await tx.readInt("bob") ?? 100
                try await tx.write("alice", .int(alice - amount))
                try await tx.write("bob", .int(bob + amount))
            }
        }
        try await transfer(cluster.node(1), 10)
        print("   n1 transfers 10 from alice to bob: committed at all 3 replicas")
        cluster.isolate(3)
        print("   -- n3 is cut off --")
        do {
            try await transfer(cluster.node(1), 10)
            print("   the second transfer committed (unexpected)")
        } catch {
            print("   the second transfer stops: \(error)")
        }
        try await likes[0].update { counter, replica in counter.increment(replica: replica) }
        try await likes[2].update { counter, replica in counter.increment(replica: replica) }
        print("   meanwhile available likes go on at n1 and at the cut-off n3")
        cluster.healAll()
        var done = false
        for _ in 0..<100 where !done {
            done = (try? await transfer(cluster.node(2), 10)) != nil
            if !done { try await Task.sleep(for: .milliseconds(20)) }
        }
        let (alice, bob) = try await cluster.node(3).transaction { tx in (try await tx.readInt("alice"), try await tx.readInt("bob")) }
        var both = try await likes[0].read()
        both.formJoin(try await likes[2].read())
        _ = try await likes[1].read(atLeast: both, timeout: .seconds(5))
        print("   -- healed: a transfer commits again; n3 reads alice \(alice ?? 0), bob \(bob ?? 0); likes \(both.value) everywhere --")
    }

    private func waitAll<Value: Replicable>(_ registers: [Register<Value>], atLeast target: Value) async throws {
        for register in registers { _ = try await register.read(atLeast: target, timeout: .seconds(5)) }
    }

    private func show(_ carts: [Register<ORSet<String>>], _ heading: String) async throws {
        print(heading)
        for (index, cart) in carts.enumerated() {
            print("     n\(index + 1): {" + (try await cart.read()).elements.sorted().joined(separator: ", ") + "}")
        }
    }

    private func milliseconds(_ duration: Duration) -> Int { Int(duration.nanoseconds / 1_000_000) }
}
