import ContinuumCore
import Testing

/// The in-place join of causal CRDTs (`DotMap.formJoin`, which looks only at the other side and
/// the dots its context names unless a dot here may be removed) against the reference join that
/// rebuilds the map from both sides (`DotStore.join`), on replicas that insert, remove, and
/// exchange deltas and whole states in random order.
@Suite struct InPlaceJoinTests {
    /// A map's dot index says which key holds each dot it holds, nested maps' too.
    static func dotIndexIsConsistent<Store: DotStore>(_ store: Store) -> Bool {
        guard let map = store as? any DotIndexed else { return true }
        return map.isIndexConsistent
    }

    /// The reference: the join as `DotStore.join` defines it, rebuilt from both sides.
    static func reference<Store: DotStore>(_ a: Causal<Store>, _ b: Causal<Store>) -> Causal<Store> {
        var context = a.context
        context.formJoin(b.context)
        return Causal(store: Store.join(a.store, a.context, b.store, b.context), context: context)
    }

    /// Joins `other` into `replica` in place and compares with the reference join.
    static func joinInPlaceAndCompare<CRDT: CausalCRDT>(_ replica: inout CRDT, _ other: CRDT, seed: UInt64) {
        let expected = reference(replica.causal, other.causal)
        let before = replica
        let changed = replica.formJoinReportingChange(other)
        #expect(replica.causal.store == expected.store, "seed \(seed)")
        #expect(replica.causal.context == expected.context, "seed \(seed)")
        #expect(changed == (replica != before), "seed \(seed): the change report")
        #expect(dotIndexIsConsistent(replica.causal.store), "seed \(seed): the dot index")
    }

    @Test(arguments: 1...40)
    func orSetJoinsInPlaceAsTheReferenceDoes(seed: UInt64) {
        var random = DeterministicRandom(seed: seed)
        var replicas = (1...3).map { _ in ORSet<UInt64>() }
        var deltas: [ORSet<UInt64>] = []
        for _ in 0..<200 {
            let index = Int.random(in: 0..<3, using: &random)
            let element = UInt64.random(in: 0..<12, using: &random)
            switch Int.random(in: 0..<10, using: &random) {
            case 0..<4:
                deltas.append(replicas[index].insert(element, replica: ReplicaID(UInt64(index + 1))))
            case 4..<6:
                deltas.append(replicas[index].remove(element))
            default:
                // Join a delta (or another replica's whole state), in place, and compare.
                let other = deltas.isEmpty || random.chance(0.2)
                    ? replicas[Int.random(in: 0..<3, using: &random)] : deltas.randomElement(using: &random)!
                Self.joinInPlaceAndCompare(&replicas[index], other, seed: seed)
            }
        }
    }

    @Test(arguments: 1...20)
    func orMapJoinsInPlaceAsTheReferenceDoes(seed: UInt64) {
        var random = DeterministicRandom(seed: seed)
        var replicas = (1...3).map { _ in ORMap<String, ORSet<UInt64>>() }
        var deltas: [ORMap<String, ORSet<UInt64>>] = []
        for _ in 0..<150 {
            let index = Int.random(in: 0..<3, using: &random)
            let key = ["a", "b", "c"].randomElement(using: &random)!
            let element = UInt64.random(in: 0..<5, using: &random)
            switch Int.random(in: 0..<10, using: &random) {
            case 0..<4:
                deltas.append(replicas[index].update(key) { $0.insert(element, replica: ReplicaID(UInt64(index + 1))) })
            case 4..<5:
                deltas.append(replicas[index].update(key) { $0.remove(element) })
            case 5..<6:
                deltas.append(replicas[index].remove(key))
            default:
                let other = deltas.isEmpty || random.chance(0.2)
                    ? replicas[Int.random(in: 0..<3, using: &random)] : deltas.randomElement(using: &random)!
                Self.joinInPlaceAndCompare(&replicas[index], other, seed: seed)
            }
        }
    }

    /// A remove delta must reach an element held under a key the delta does not hold: the case
    /// the cheap path must not skip.
    @Test func aRemoveDeltaRemovesWhatItObserved() {
        var a = ORSet<String>()
        var b = ORSet<String>()
        _ = a.insert("x", replica: ReplicaID(1))
        _ = a.insert("y", replica: ReplicaID(1))
        b.formJoin(a)
        let removal = b.remove("x")
        let first = a.formJoinReportingChange(removal)
        #expect(first)
        #expect(a.elements == ["y"])
        let again = a.formJoinReportingChange(removal)
        #expect(!again, "joining it again changes nothing")
    }

    /// `AnyReplicated.mutate` moves the value out of its box, so that a mutation does not copy
    /// the state: the storage of a set of 10,000 members keeps its address across an insert.
    @Test func aMutationInTheBoxDoesNotCopyTheState() {
        var set = ORSet<UInt64>()
        for element in 0..<10_000 as Range<UInt64> { set.insert(element, replica: ReplicaID(1)) }
        var box = AnyReplicated(set)
        set = ORSet()
        func address(_ box: AnyReplicated) -> UnsafeRawPointer? {
            box.unwrap(as: ORSet<UInt64>.self)!.causal.store.entries.withUnsafeStorageAddress()
        }
        let before = address(box)
        _ = box.mutate(as: ORSet<UInt64>.self) { $0.insert(10_001, replica: ReplicaID(1)) }
        #expect(box.unwrap(as: ORSet<UInt64>.self)!.count == 10_001)
        #expect(address(box) == before, "the dictionary was copied")
    }
}

extension Dictionary {
    /// The address of the dictionary's storage (the same before and after an in-place change).
    fileprivate func withUnsafeStorageAddress() -> UnsafeRawPointer? {
        unsafeBitCast(self, to: UnsafeRawPointer?.self)
    }
}
