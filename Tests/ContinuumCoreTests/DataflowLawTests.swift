import ContinuumCore
import ContinuumSimulation
import PropertyBased
import Testing

/// Laws of Lasp's combinators: each is monotone (a derived register grows as its inputs grow,
/// so threshold reads on it mean something), `map` and `filter` over OR-sets are join
/// homomorphisms (so applying them before or after merging, in any delivery order, gives the
/// same state), and the product-lattice outputs obey the lattice laws.
@Suite struct DataflowLawTests {
    static let scripts = Gen<UInt64>.value(in: 0...1_000_000).array(of: 1...40)

    /// Reachable OR-set states of three replicas, from one script.
    static func sets(_ codes: [UInt64]) -> [ORSet<UInt64>] {
        let outcome = LawScenario.play(ORSetOperations.self, codes)
        return outcome.samples + outcome.finalStates
    }

    @Test func mapAndFilterAreMonotoneJoinHomomorphisms() async {
        await propertyCheck(count: 200, input: Self.scripts) { codes in
            let states = Self.sets(codes)
            let map: (ORSet<UInt64>) -> ORSet<UInt64> = { $0.mapElements { $0 % 3 } }
            let filter: (ORSet<UInt64>) -> ORSet<UInt64> = { $0.filterElements { $0 % 2 == 0 } }
            #expect(LatticeLaws.monotonicityViolations(map, samples: states).isEmpty)
            #expect(LatticeLaws.monotonicityViolations(filter, samples: states).isEmpty)
            for a in states {
                for b in states {
                    #expect(map(a.join(b)) == map(a).join(map(b)), "map(\(a) ⊔ \(b))")
                    #expect(filter(a.join(b)) == filter(a).join(filter(b)), "filter(\(a) ⊔ \(b))")
                    #expect(map(a.join(b)).elements == Set(a.join(b).elements.map { $0 % 3 }))
                }
            }
        }
    }

    @Test func binaryCombinatorsAreMonotoneAndLattices() async {
        await propertyCheck(count: 100, input: Self.scripts, Self.scripts) { left, right in
            let lefts = Self.sets(left)
            let rights = Self.sets(right)
            let unions = zip(lefts, rights).map { Union($0, $1) }
            let products = zip(lefts, rights).map { Product($0, $1) }
            let intersections = zip(lefts, rights).map { Intersection($0, $1) }
            #expect(LatticeLaws.joinViolations(unions, triplesMax: 200).isEmpty)
            #expect(LatticeLaws.joinViolations(products, triplesMax: 200).isEmpty)
            #expect(LatticeLaws.joinViolations(intersections, triplesMax: 200).isEmpty)
            for (index, union) in unions.enumerated() {
                #expect(union.elements == lefts[index].elements.union(rights[index].elements))
                #expect(intersections[index].elements == lefts[index].elements.intersection(rights[index].elements))
                #expect(products[index].elements.count == lefts[index].elements.count * rights[index].elements.count)
            }
        }
    }

    @Test func foldOverAGrowOnlySetIsMonotone() async {
        await propertyCheck(count: 200, input: Self.scripts) { codes in
            let outcome = LawScenario.play(GSetOperations.self, codes)
            let largest: (GSet<UInt64>) -> MaxRegister<UInt64> = { set in
                set.elements.reduce(MaxRegister()) { $0.join(MaxRegister($1)) }
            }
            #expect(LatticeLaws.monotonicityViolations(largest, samples: outcome.samples + outcome.finalStates).isEmpty)
        }
    }

    /// The monotonicity check can fail: a "count of elements" over an OR-set shrinks on removal.
    @Test func aNonMonotoneFunctionIsCaught() {
        var set = ORSet<UInt64>()
        set.insert(1, replica: ReplicaID(1))
        let before = set
        set.remove(1)
        let count: (ORSet<UInt64>) -> MaxRegister<Int> = { MaxRegister($0.count) }
        #expect(!LatticeLaws.monotonicityViolations(count, samples: [before, set]).isEmpty)
    }
}
