import ContinuumCore
import Testing

private let r1 = ReplicaID(1)
private let r2 = ReplicaID(2)
private let r3 = ReplicaID(3)

/// Scenario tests of what each CRDT means, beyond the lattice laws.
@Suite struct CRDTSemanticsTests {
    /// Concurrent add and remove on two replicas, as an introduction would show it.
    @Test func aliceAndBobEditOneCart() {
        let alice = ReplicaID(1), bob = ReplicaID(2)
        var cartAtAlice = ORSet<String>()
        cartAtAlice.insert("apple", replica: alice)
        var cartAtBob = cartAtAlice                 // Bob has seen the apple...
        cartAtBob.remove("apple")                   // ...and removes it,
        cartAtBob.insert("bread", replica: bob)
        let delta = cartAtAlice.insert("apple", replica: alice)  // while Alice adds it again.
        cartAtBob.formJoin(delta)                   // Only the small delta travels.
        cartAtAlice.formJoin(cartAtBob)
        #expect(cartAtAlice == cartAtBob && cartAtBob.elements == ["apple", "bread"])  // the concurrent add wins
    }

    @Test func orSetConcurrentAddWinsOverRemove() {
        var a = ORSet<String>()
        a.insert("x", replica: r1)
        var b = a
        b.remove("x")  // b removes the x it observed...
        a.insert("x", replica: r1)  // ...while a adds x again, concurrently
        #expect(!b.contains("x"))
        #expect(a.join(b).contains("x"))
        #expect(b.join(a).contains("x"))
    }

    @Test func orSetRemoveOfObservedAddSticks() {
        var a = ORSet<String>()
        a.insert("x", replica: r1)
        var b = ORSet<String>()
        b.formJoin(a)
        b.remove("x")
        #expect(!a.join(b).contains("x"))
    }

    @Test func orSetKeepsNoTombstonesAfterRemoves() {
        var set = ORSet<Int>()
        for element in 0..<1_000 { set.insert(element, replica: r1) }
        for element in 0..<1_000 { set.remove(element) }
        #expect(set.elements.isEmpty)
        // The context stays one version-vector entry, not one tombstone per removed element.
        #expect(set.causal.context.cloud.isEmpty)
        #expect(set.causal.context.versionVector.counters == [r1: 1_000])
        #expect(set.binaryEncoded().count < 16)
    }

    @Test func orSetDeltaCarriesOnlyTheChange() {
        var set = ORSet<Int>()
        for element in 0..<100 { set.insert(element, replica: r1) }
        let delta = set.insert(7, replica: r2)
        #expect(delta.elements == [7])
        #expect(delta.binaryEncoded().count < 32)
    }

    @Test func ewFlagEnableWins() {
        var a = EWFlag()
        a.enable(replica: r1)
        var b = a
        b.disable()
        a.enable(replica: r1)
        #expect(a.join(b).isEnabled)
        var c = a.join(b)
        c.disable()
        #expect(!c.join(a).isEnabled)
    }

    @Test func mvRegisterKeepsConcurrentWritesUntilOverwritten() {
        var a = MVRegister<Int>()
        var b = MVRegister<Int>()
        a.write(1, replica: r1)
        b.write(2, replica: r2)
        var merged = a.join(b)
        #expect(merged.values.sorted() == [1, 2])
        merged.write(3, replica: r3)
        #expect(merged.values == [3])
        #expect(merged.join(a).values == [3])
    }

    @Test func lwwRegisterLaterTimestampWinsAndTiesGoToHigherReplica() throws {
        var clock1 = HybridLogicalClock()
        var clock2 = HybridLogicalClock()
        var a = LWWRegister<String>()
        var b = LWWRegister<String>()
        try a.write("early", replica: r1, clock: &clock1, physical: 100)
        try b.write("late", replica: r2, clock: &clock2, physical: 200)
        #expect(a.join(b).value == "late")
        #expect(b.join(a).value == "late")
        // Equal stamps: the higher replica id wins, on both sides.
        var c = LWWRegister<String>()
        var d = LWWRegister<String>()
        var clock3 = HybridLogicalClock()
        var clock4 = HybridLogicalClock()
        try c.write("from r1", replica: r1, clock: &clock3, physical: 500)
        try d.write("from r2", replica: r2, clock: &clock4, physical: 500)
        #expect(c.timestamp == d.timestamp)
        #expect(c.join(d).value == "from r2")
        #expect(d.join(c).value == "from r2")
    }

    @Test func lwwWriteSupersedesWhatTheReplicaSawEvenWithASlowClock() throws {
        var fast = HybridLogicalClock()
        var slow = HybridLogicalClock()
        var register = LWWRegister<Int>()
        try register.write(1, replica: r1, clock: &fast, physical: 1_000_000)
        // A replica whose physical clock is far behind still overwrites what it has seen.
        try register.write(2, replica: r2, clock: &slow, physical: 5)
        #expect(register.value == 2)
    }

    @Test func twoPhaseSetRemovedElementNeverReturns() {
        var set = TwoPhaseSet<String>()
        set.insert("x")
        set.remove("x")
        set.insert("x")
        #expect(!set.contains("x"))
        // Removing an absent element changes nothing.
        var other = TwoPhaseSet<String>()
        #expect(other.remove("y") == .bottom)
    }

    @Test func orMapRemoveResetsObservedValueButKeepsConcurrentUpdate() {
        var a = ORMap<String, ORSet<Int>>()
        a.update("cart") { $0.insert(1, replica: r1) }
        var b = a
        b.remove("cart")
        a.update("cart") { $0.insert(2, replica: r1) }
        let merged = a.join(b)
        #expect(merged["cart"]?.elements == [2])
        #expect(b["cart"] == nil)
        #expect(merged.join(b) == merged)
    }

    @Test func nestedMapsShareOneContext() {
        var map = ORMap<String, ORMap<Int, MVRegister<String>>>()
        map.update("user") { $0.update(1) { $0.write("a", replica: r1) } }
        map.update("user") { $0.update(2) { $0.write("b", replica: r1) } }
        #expect(map["user"]?[1]?.values == ["a"])
        #expect(map["user"]?[2]?.values == ["b"])
        #expect(map.causal.context.versionVector.counters == [r1: 2])
    }

    @Test func boundedCounterSpendsOnlyOwnRights() throws {
        var counter = BoundedCounter()
        counter.increment(by: 5, replica: r1)
        #expect(throws: BoundedCounterError.insufficientRights(replica: r2, requested: 1, available: 0)) {
            try counter.decrement(by: 1, replica: r2)
        }
        try counter.transfer(3, from: r1, to: r2)
        #expect(counter.rights(of: r1) == 2)
        #expect(counter.rights(of: r2) == 3)
        // Two replicas spend concurrently from their own rights; the merge cannot go negative.
        var atR1 = counter
        var atR2 = counter
        try atR1.decrement(by: 2, replica: r1)
        try atR2.decrement(by: 3, replica: r2)
        #expect(throws: BoundedCounterError.self) { try atR1.decrement(by: 1, replica: r1) }
        #expect(atR1.join(atR2).value == 0)
        #expect(throws: BoundedCounterError.transferToSelf(r1)) { try counter.transfer(1, from: r1, to: r1) }
    }

    @Test func pnCounterGoesBothWays() {
        var counter = PNCounter()
        counter.add(5, replica: r1)
        counter.add(-8, replica: r2)
        #expect(counter.value == -3)
        #expect(counter.add(0, replica: r1) == .bottom)
    }
}

@Suite struct ClockTests {
    @Test func hlcFollowsPhysicalTimeAndCountsWithinIt() throws {
        var clock = HybridLogicalClock()
        #expect(try clock.tick(physical: 100) == HLCTimestamp(wallTimeNanoseconds: 100, logical: 0))
        #expect(try clock.tick(physical: 100) == HLCTimestamp(wallTimeNanoseconds: 100, logical: 1))
        // Physical time going backwards never makes the clock go backwards.
        #expect(try clock.tick(physical: 50) == HLCTimestamp(wallTimeNanoseconds: 100, logical: 2))
        #expect(try clock.tick(physical: 200) == HLCTimestamp(wallTimeNanoseconds: 200, logical: 0))
    }

    @Test func hlcReceiveIsAboveBothSides() throws {
        var clock = HybridLogicalClock()
        _ = try clock.tick(physical: 100)
        let remote = HLCTimestamp(wallTimeNanoseconds: 300, logical: 4)
        let stamp = try clock.observe(remote, physical: 120)
        #expect(stamp == HLCTimestamp(wallTimeNanoseconds: 300, logical: 5))
        #expect(try clock.observe(HLCTimestamp(wallTimeNanoseconds: 300, logical: 9), physical: 120)
                == HLCTimestamp(wallTimeNanoseconds: 300, logical: 10))
    }

    @Test func hlcRefusesRemoteTooFarAhead() {
        var clock = HybridLogicalClock(maxOffsetNanoseconds: 1_000)
        let remote = HLCTimestamp(wallTimeNanoseconds: 10_000, logical: 0)
        #expect(throws: ClockError.self) { try clock.observe(remote, physical: 100) }
        #expect(clock.latest == .zero)
    }

    @Test func causalContextCompactsOutOfOrderDots() {
        var context = CausalContext()
        context.insert(Dot(r1, 3))
        context.insert(Dot(r1, 2))
        #expect(context.cloud == [Dot(r1, 2), Dot(r1, 3)])
        context.insert(Dot(r1, 1))
        #expect(context.cloud.isEmpty)
        #expect(context.versionVector[r1] == 3)
        #expect(context.nextDot(for: r1) == Dot(r1, 4))
        var other = CausalContext(dots: [Dot(r1, 5), Dot(r2, 1)])
        other.formJoin(CausalContext(dots: [Dot(r1, 4)]))
        #expect(other.cloud == [Dot(r1, 4), Dot(r1, 5)])
        other.formJoin(context)
        #expect(other.cloud.isEmpty)
        #expect(other.versionVector.counters == [r1: 5, r2: 1])
        #expect(context.isBelowOrEqual(other))
        #expect(!other.isBelowOrEqual(context))
    }

    /// A join is the union of the dots seen, kept compact: cloud dots that the joined vector
    /// covers are dropped (the cases here grow the vector, leave it alone, and mix both),
    /// compared with the context built from the union one dot at a time.
    @Test func causalContextJoinIsTheUnionOfTheDots() {
        var covered = CausalContext(dots: [Dot(r1, 5), Dot(r2, 3)])
        covered.formJoin(CausalContext(dots: (1...6).map { Dot(r1, $0) }))
        #expect(covered.cloud == [Dot(r2, 3)] && covered.versionVector[r1] == 6)
        var random = DeterministicRandom(seed: 7)
        for _ in 0..<500 {
            func dots() -> Set<Dot> {
                Set((0..<Int.random(in: 0...8, using: &random)).map { _ in
                    Dot([r1, r2][Int.random(in: 0...1, using: &random)], UInt64.random(in: 1...12, using: &random))
                })
            }
            let (a, b) = (dots(), dots())
            var joined = CausalContext(dots: a)
            joined.formJoin(CausalContext(dots: b))
            #expect(joined == CausalContext(dots: a.union(b)), "\(a.sorted()) ⊔ \(b.sorted())")
        }
    }

    /// A context is the set of its dots: checked against a plain `Set<Dot>` (the
    /// specification) over 2,000 seeded random pairs, with dots scattered over three replicas
    /// so that runs form, merge and split: membership, the order, the count, the largest
    /// counter, enumeration, the cloud (what the vector does not cover), the join, and the
    /// wire form (the same bytes whatever the order the dots came in, read back equal).
    @Test func aCausalContextIsTheSetOfItsDots() throws {
        let replicas = [r1, r2, r3]
        var random = DeterministicRandom(seed: 11)
        func dots() -> [Dot] {
            (0..<Int.random(in: 0...30, using: &random)).map { _ in
                Dot(replicas[Int.random(in: 0...2, using: &random)], UInt64.random(in: 1...40, using: &random))
            }
        }
        func check(_ context: CausalContext, _ model: Set<Dot>, _ label: @autoclosure () -> String) {
            for replica in replicas {
                for counter in UInt64(1)...42 {
                    let dot = Dot(replica, counter)
                    #expect(context.contains(dot) == model.contains(dot), "\(label()): \(dot)")
                }
                let prefix = model.contains(Dot(replica, 1)) ? (1...).prefix { model.contains(Dot(replica, UInt64($0))) }.count : 0
                #expect(context.versionVector[replica] == UInt64(prefix), "\(label()): vector of \(replica)")
                #expect(context.maxCounter(of: replica) == model.filter { $0.replica == replica }.map(\.counter).max() ?? 0)
            }
            #expect(context.dotCount == UInt64(model.count), "\(label())")
            var seen: [Dot] = []
            context.forEachDot { seen.append($0); return true }
            #expect(seen.count == model.count && Set(seen) == model, "\(label())")
            #expect(context.cloud == model.filter { $0.counter > context.versionVector[$0.replica] }, "\(label())")
        }
        for _ in 0..<2_000 {
            let (a, b) = (dots(), dots())
            let (setA, setB) = (Set(a), Set(b))
            let contextA = CausalContext(dots: a)
            let contextB = CausalContext(dots: b.reversed())
            check(contextA, setA, "\(a)")
            #expect(contextA.isBelowOrEqual(contextB) == setA.isSubset(of: setB), "\(a.sorted()) ≤ \(b.sorted())")
            #expect(contextB.isBelowOrEqual(contextA) == setB.isSubset(of: setA), "\(b.sorted()) ≤ \(a.sorted())")
            // One dot less: never above, always below.
            if let missing = setA.randomElement(using: &random) {
                let fewer = CausalContext(dots: setA.subtracting([missing]))
                #expect(!contextA.isBelowOrEqual(fewer) && fewer.isBelowOrEqual(contextA), "\(a.sorted()) without \(missing)")
            }
            var joined = contextA
            joined.formJoin(contextB)
            check(joined, setA.union(setB), "\(a.sorted()) ⊔ \(b.sorted())")
            #expect(joined == CausalContext(dots: setA.union(setB).shuffled(using: &random)))
            let bytes = joined.binaryEncoded()
            #expect(bytes == CausalContext(dots: Array(setA.union(setB)).sorted().reversed()).binaryEncoded())
            #expect(try CausalContext(binary: bytes) == joined)
        }
    }

    @Test func versionVectorsDetectConcurrency() {
        let a = VersionVector([r1: 2, r2: 1])
        let b = VersionVector([r1: 1, r2: 3])
        #expect(a.isConcurrent(with: b))
        #expect(a.isBelowOrEqual(a.join(b)))
        #expect(!a.isConcurrent(with: a.join(b)))
        #expect(VersionVector([r1: 0]) == VersionVector())
    }
}
