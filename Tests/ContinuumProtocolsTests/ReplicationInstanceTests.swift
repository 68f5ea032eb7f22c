import ContinuumCore
import ContinuumProtocols
import Testing

/// Drives a few `ReplicationInstance`s by hand: every message is delivered when the test says.
struct Harness {
    typealias Instance = ReplicationInstance
    var instances: [NodeID: Instance] = [:]
    var inFlight: [(from: NodeID, to: NodeID, message: ReplicationMessage)] = []
    var outputs: [(NodeID, Instance.Output)] = []
    var persisted: [NodeID: [ReplicaDurableState]] = [:]
    var now: Duration = .zero
    var nextID: UInt64 = 1

    init(nodes: Int, configuration: Instance.Configuration = .init(membership: .init())) {
        let members = (1...nodes).map { NodeID(UInt64($0)) }
        for node in members {
            var instance = Instance(configuration: configuration,
                                    context: InstanceContext(node: node, members: members, random: DeterministicRandom(seed: node.rawValue)),
                                    durable: nil)
            let effects = instance.start(now: now)
            instances[node] = instance
            carryOut(effects, at: node)
        }
        inFlight.removeAll { if case .membership = $0.message { true } else { false } }
    }

    /// Carries out `effects`; the push timer (set with no delay) fires at once. Returns the
    /// effects with those of the push after them.
    @discardableResult
    mutating func carryOut(_ effects: [Instance.Effect], at node: NodeID) -> [Instance.Effect] {
        var all = effects
        for effect in effects {
            switch effect {
            case let .send(to, message): inFlight.append((node, to, message))
            case let .persist(state): persisted[node, default: []].append(state)
            case let .output(output): outputs.append((node, output))
            case .setTimer(.push, _):
                all += carryOut(instances[node]!.timerFired(.push, now: now), at: node)
            case .setTimer, .cancelTimer: break
            }
        }
        return all
    }

    mutating func command(_ node: NodeID, _ make: (UInt64) -> Instance.Command) -> [Instance.Effect] {
        let id = nextID
        nextID += 1
        let effects = instances[node]!.handle(make(id), now: now)
        return carryOut(effects, at: node)
    }

    mutating func declare<L: Replicable>(_ name: String, _: L.Type, at nodes: [NodeID]) {
        for node in nodes { _ = command(node) { .declare(id: $0, register: name, bottom: AnyReplicated(L.bottom)) } }
    }

    mutating func update<L: Replicable>(_ name: String, at node: NodeID, _ mutate: @escaping @Sendable (inout L, ReplicaID) -> L) -> [Instance.Effect] {
        command(node) { id in
            .update(id: id, register: name, typeName: replicableTypeName(L.self)) { state, replica, _ in
                var typed = state.unwrap(as: L.self)!
                let delta = mutate(&typed, replica)
                state = AnyReplicated(typed)
                return AnyReplicated(delta)
            }
        }
    }

    /// An upsert: declares `name` as `L` where it does not exist, then applies `mutate`.
    mutating func update<L: Replicable>(_ name: String, at node: NodeID, declaring: Bool, _ mutate: @escaping @Sendable (inout L, ReplicaID) -> L) -> [Instance.Effect] {
        command(node) { id in
            .upsert(id: id, register: name, bottom: AnyReplicated(L.bottom)) { state, replica, _ in
                AnyReplicated(state.mutate(as: L.self) { mutate(&$0, replica) }!)
            }
        }
    }

    /// Delivers every message in flight (and those they cause), except membership traffic.
    mutating func deliverAll(dropping shouldDrop: (NodeID, NodeID, ReplicationMessage) -> Bool = { _, _, _ in false }) {
        var rounds = 0
        while !inFlight.isEmpty, rounds < 10_000 {
            rounds += 1
            let (from, to, message) = inFlight.removeFirst()
            if case .membership = message { continue }
            if shouldDrop(from, to, message) { continue }
            let effects = instances[to]!.receive(message, from: from, now: now)
            carryOut(effects, at: to)
        }
    }

    /// `node` hears from `witness` that `peer` is unreachable (`peer` itself hears nothing).
    mutating func hearUnreachable(_ peer: NodeID, at node: NodeID, from witness: NodeID) {
        let away = MembershipUpdate(node: peer, status: .unreachable, incarnation: 0)
        carryOut(instances[node]!.receive(.membership(.ping(sequence: 1, updates: [away])), from: witness, now: now), at: node)
    }

    /// `peer` answers `node` again, with a higher incarnation.
    mutating func hearBack(_ peer: NodeID, at node: NodeID) {
        let back = MembershipUpdate(node: peer, status: .alive, incarnation: 1)
        carryOut(instances[node]!.receive(.membership(.ping(sequence: 2, updates: [back])), from: peer, now: now), at: node)
    }

    mutating func gossip(_ node: NodeID) {
        let effects = instances[node]!.timerFired(.gossip, now: now)
        carryOut(effects, at: node)
    }

    /// The members a shipped OR-set payload carries, decoded as `node` holds the register.
    func elements(of payload: DeltaPayload, at node: NodeID) -> [String]? {
        let slot = try? payload.decode(existing: instances[node]!.slots[RegisterKey(payload.register)], catalog: .standard)
        return slot?.state?.unwrap(as: ORSet<String>.self)?.elements.sorted()
    }

    func value<L: Replicable>(_ name: String, at node: NodeID, as _: L.Type) -> L? {
        instances[node]!.value(of: name)?.unwrap(as: L.self)
    }
}

let n1 = NodeID(1), n2 = NodeID(2), n3 = NodeID(3)
/// Every received delta relayed on the next tick (no lazy relays): the path of Algorithm 2,
/// which lazy relays still take once a relay falls due.
let eager = ReplicationInstance.Configuration(lazyRelays: false, membership: .init())

@Suite struct ReplicationInstanceTests {
    @Test func updatePersistsBeforeAcknowledgingAndShipsDeltas() {
        var harness = Harness(nodes: 3)
        harness.declare("cart", ORSet<String>.self, at: [n1, n2, n3])
        harness.deliverAll()
        let effects = harness.update("cart", at: n1) { (set: inout ORSet<String>, replica) in set.insert("apple", replica: replica) }
        let persistIndex = effects.firstIndex { if case .persist = $0 { true } else { false } }
        let completedIndex = effects.firstIndex { if case .output(.completed) = $0 { true } else { false } }
        #expect(persistIndex != nil && completedIndex != nil && persistIndex! < completedIndex!)
        // Shipped at once to the neighbors, as a delta-interval without the type name.
        let payloads = effects.compactMap { effect -> [DeltaPayload]? in
            if case let .send(_, .deltas(_, _, _, payloads, _, _)) = effect { payloads } else { nil }
        }.flatMap { $0 }
        #expect(!payloads.isEmpty)
        #expect(payloads.allSatisfy { !$0.isFullState && $0.typeName == nil })
        harness.deliverAll()
        #expect(harness.value("cart", at: n2, as: ORSet<String>.self)?.elements == ["apple"])
        #expect(harness.value("cart", at: n3, as: ORSet<String>.self)?.elements == ["apple"])
    }

    /// An update of a large register writes its delta, not its state, until the deltas would
    /// outgrow the state; a restart joins the deltas onto the last whole state. The same holds
    /// at the replicas that merge the delta.
    @Test func largeRegistersWriteDeltasAndRestartFromThem() {
        var harness = Harness(nodes: 3)
        harness.declare("big", ORSet<String>.self, at: [n1])
        harness.deliverAll()
        _ = harness.command(n1) { id in
            .upsert(id: id, register: "big", bottom: AnyReplicated(ORSet<String>.bottom)) { state, replica, _ in
                AnyReplicated(state.mutate(as: ORSet<String>.self) { set in
                    var delta = ORSet<String>()
                    for member in 0..<5_000 { delta.formJoin(set.insert("member-\(member)", replica: replica)) }
                    return delta
                }!)
            }
        }
        harness.deliverAll()
        func bytes(_ patch: ReplicaDurableState) -> Int { patch.binaryEncoded().count }
        let whole = bytes(harness.persisted[n1]!.last!)
        #expect(whole > 50_000, "the first write of the register is whole: \(whole) bytes")
        for round in 0..<20 {
            _ = harness.command(n1) { id in
                .upsert(id: id, register: "big", bottom: AnyReplicated(ORSet<String>.bottom)) { state, replica, _ in
                    AnyReplicated(state.mutate(as: ORSet<String>.self) { $0.insert("late-\(round)", replica: replica) }!)
                }
            }
            harness.deliverAll()
            #expect(bytes(harness.persisted[n1]!.last!) < 200, "update \(round) writes its delta")
            #expect(bytes(harness.persisted[n2]!.last!) < 200, "the replica that merges it writes the delta too")
        }
        for node in [n1, n2, n3] {
            var durable: ReplicaDurableState?
            for patch in harness.persisted[node]! { ReplicationInstance.accumulate(patch, into: &durable) }
            #expect(durable!.deltas["big"]?.count == 20)
            let restarted = ReplicationInstance(
                configuration: .init(), context: InstanceContext(node: node, members: [n1, n2, n3], random: DeterministicRandom(seed: 9)),
                durable: durable)
            #expect(restarted.value(of: "big") == harness.instances[node]!.value(of: "big"))
            #expect(restarted.value(of: "big")?.unwrap(as: ORSet<String>.self)?.count == 5_020)
        }
    }

    /// Updates before the push timer fires share one message per neighbour.
    @Test func updatesBeforeThePushShareOneMessage() {
        var harness = Harness(nodes: 3)
        harness.declare("c", GCounter.self, at: [n1, n2, n3])
        harness.deliverAll()
        var effects: [ReplicationInstance.Effect] = []
        for _ in 0..<10 {
            effects += harness.instances[n1]!.handle(.update(id: 0, register: "c", typeName: replicableTypeName(GCounter.self)) { state, replica, _ in
                AnyReplicated(state.mutate(as: GCounter.self) { $0.increment(replica: replica) }!)
            }, now: .zero)
        }
        let pushes = effects.filter { if case .setTimer(.push, _) = $0 { true } else { false } }
        #expect(pushes.count == 1, "one push for ten updates")
        #expect(!effects.contains { if case .send(_, .deltas) = $0 { true } else { false } }, "nothing sent before the push")
        let sent = harness.instances[n1]!.timerFired(.push, now: .zero).filter { if case .send(_, .deltas) = $0 { true } else { false } }
        #expect(sent.count == 2, "one message per neighbour")
    }

    /// A register first heard of from a peer is not shipped back to it: its deltas all came
    /// from that peer, which holds them. Before, each new register went back to its writer as a
    /// whole state from every other replica (in a 3-node cluster, 2 of 6 payloads per new key).
    @Test func aRegisterThatCameFromAPeerIsNotSentBackToIt() {
        var harness = Harness(nodes: 3, configuration: eager)
        for key in ["a", "b", "c"] {
            _ = harness.update(key, at: n1, declaring: true) { (counter: inout GCounter, replica) in counter.increment(replica: replica) }
        }
        harness.deliverAll()
        var toWriter = 0
        var forwarded = 0
        for node in [n2, n3] {
            let effects = harness.instances[node]!.timerFired(.gossip, now: .zero)
            for case let .send(to, .deltas(_, _, _, payloads, _, _)) in effects where !payloads.isEmpty {
                if to == n1 { toWriter += payloads.count } else { forwarded += payloads.count }
            }
            harness.carryOut(effects, at: node)
        }
        #expect(toWriter == 0, "nothing goes back to the writer")
        #expect(forwarded == 6, "each replica still forwards what it received to the other (Algorithm 2 relays)")
        harness.deliverAll()
        for node in [n1, n2, n3] { #expect(harness.value("a", at: node, as: GCounter.self)?.value == 1) }
    }

    /// A relay that adds nothing tells the receiver what the relaying peer holds: n3, which
    /// had n1's updates already, does not relay them back to n2 that just relayed them to it.
    /// Nothing is lost by it: every replica converges, also when the relay is the only path.
    @Test func aRelayThatAddsNothingSparesTheRelayBack() {
        var harness = Harness(nodes: 3, configuration: eager)
        for key in ["a", "b"] {
            _ = harness.update(key, at: n1, declaring: true) { (counter: inout GCounter, replica) in counter.increment(replica: replica) }
        }
        harness.deliverAll()
        // Existing registers: deltas, not whole states.
        for key in ["a", "b"] {
            _ = harness.update(key, at: n1, declaring: true) { (counter: inout GCounter, replica) in counter.increment(replica: replica) }
        }
        harness.deliverAll()
        func payloads(from node: NodeID, to peer: NodeID, _ effects: [ReplicationInstance.Effect]) -> Int {
            var count = 0
            for case let .send(to, .deltas(_, _, _, payloads, _, _)) in effects where to == peer { count += payloads.count }
            return count
        }
        let relay = harness.instances[n2]!.timerFired(.gossip, now: .zero)
        #expect(payloads(from: n2, to: n3, relay) == 2, "n2 relays n1's deltas to n3")
        harness.carryOut(relay, at: n2)
        harness.deliverAll()
        let back = harness.instances[n3]!.timerFired(.gossip, now: .zero)
        #expect(payloads(from: n3, to: n2, back) == 0, "n3 learnt that n2 holds them")
        harness.carryOut(back, at: n3)
        harness.deliverAll()
        for node in [n1, n2, n3] { #expect(harness.value("b", at: node, as: GCounter.self)?.value == 2) }
        // The relay is still there when it is the only path: n1's link to n3 is cut.
        _ = harness.update("a", at: n1, declaring: true) { (counter: inout GCounter, replica) in counter.increment(replica: replica) }
        harness.deliverAll { from, to, _ in (from == n1 && to == n3) || (from == n3 && to == n1) }
        harness.gossip(n2)
        harness.deliverAll { from, to, _ in (from == n1 && to == n3) || (from == n3 && to == n1) }
        #expect(harness.value("a", at: n3, as: GCounter.self)?.value == 3)
    }

    /// A relay that adds nothing counts as an acknowledgement only of what it covers: n3 sends
    /// n1 n2's increment, which n1 already holds, while n1's own increment is still pending for
    /// n3; n1 ships it to n3 again once its retransmit interval has passed.
    @Test func aRelayCoveringLessThanWhatIsPendingAcknowledgesNothing() {
        var harness = Harness(nodes: 3, configuration: eager)
        harness.declare("c", GCounter.self, at: [n1, n2, n3])
        harness.deliverAll()
        _ = harness.update("c", at: n2) { (counter: inout GCounter, replica) in counter.increment(replica: replica) }
        harness.deliverAll()
        _ = harness.update("c", at: n1) { (counter: inout GCounter, replica) in counter.increment(replica: replica) }
        harness.deliverAll { _, to, _ in to == n3 }  // n1's increment reaches n2 only
        let relay = harness.instances[n3]!.timerFired(.gossip, now: .zero)
        let toN1 = relay.contains { if case .send(n1, .deltas(_, _, _, let payloads, _, _)) = $0 { !payloads.isEmpty } else { false } }
        #expect(toN1, "n3 relays n2's increment to n1")
        harness.carryOut(relay, at: n3)
        harness.deliverAll { _, to, _ in to == n3 }
        harness.now = .seconds(2)  // past the retransmit interval
        harness.gossip(n1)
        harness.deliverAll { from, to, _ in from == n2 && to == n3 }  // only n1 can bring it
        #expect(harness.value("c", at: n3, as: GCounter.self)?.value == 2)
    }

    /// A push computes a register's pending join once for all neighbours only when every delta
    /// in it was made here: n1 holds n2's increment (which n3 never got) and makes its own; its
    /// push sends n2 only its own, and n3 both.
    @Test func aJoinSharedAcrossNeighboursHoldsOnlyLocalDeltas() {
        var harness = Harness(nodes: 3, configuration: eager)
        harness.declare("c", GCounter.self, at: [n1, n2, n3])
        harness.deliverAll()
        _ = harness.update("c", at: n2) { (counter: inout GCounter, replica) in counter.increment(replica: replica) }
        harness.deliverAll { from, to, _ in from == n2 && to == n3 }
        _ = harness.update("c", at: n1) { (counter: inout GCounter, replica) in counter.increment(replica: replica) }
        harness.deliverAll { from, to, _ in from == n2 && to == n3 }
        #expect(harness.value("c", at: n3, as: GCounter.self)?.value == 2, "n1's push carried n2's increment to n3")
    }

    /// Lazy relays: in a full mesh each replica hears every delta from its maker, so no replica
    /// relays it to another. The replicas report on their ticks what they hold of each maker,
    /// the relays held back are dropped unsent, and no buffer keeps anything.
    @Test func aDeltaFromItsMakerIsNotRelayedToTheNeighboursItReaches() {
        var harness = Harness(nodes: 3)
        for _ in 1...2 {
            for key in ["a", "b", "c"] {
                _ = harness.update(key, at: n1, declaring: true) { (counter: inout GCounter, replica) in counter.increment(replica: replica) }
            }
            harness.deliverAll()
        }
        var relayed = 0
        // Ticks 200 ms apart, within the relay delay (1 s).
        for round in 1...4 {
            harness.now = .milliseconds(200 * round)
            for node in [n1, n2, n3] {
                let effects = harness.instances[node]!.timerFired(.gossip, now: harness.now)
                for case let .send(to, .deltas(_, _, _, payloads, _, _)) in effects where node != n1 && to != n1 { relayed += payloads.count }
                harness.carryOut(effects, at: node)
            }
            harness.deliverAll()
        }
        #expect(relayed == 0, "no replica relays to the other")
        for node in [n2, n3] {
            let statistics = harness.instances[node]!.statistics
            #expect(statistics.relaysHeldBack == 3, "one relay held back per register")
            #expect(statistics.relaysSpared == 3 && statistics.relaysDue == 0)
        }
        for node in [n1, n2, n3] {
            #expect(harness.instances[node]!.bufferedDeltaCount == 0, "\(node) keeps nothing")
            for key in ["a", "b", "c"] { #expect(harness.value(key, at: node, as: GCounter.self)?.value == 2) }
        }
    }

    /// The link between n1 and n3, cut (both ways).
    static func cut(_ from: NodeID, _ to: NodeID, _: ReplicationMessage) -> Bool { (from == n1 && to == n3) || (from == n3 && to == n1) }

    /// Three replicas of a counter; n1 increments it, and only n2 hears of it (`cut`).
    static func incrementedAtN1WithItsLinkToN3Cut() -> Harness {
        var harness = Harness(nodes: 3)
        harness.declare("c", GCounter.self, at: [n1, n2, n3])
        harness.deliverAll()
        _ = harness.update("c", at: n1) { (counter: inout GCounter, replica) in counter.increment(replica: replica) }
        harness.deliverAll(dropping: cut)
        return harness
    }

    /// A lazy relay still goes when it is the only path, once the relay delay has passed: n1's
    /// link to n3 is cut, so n3 never reports holding n1's increment.
    @Test func aLazyRelayGoesOnceItFallsDue() {
        var harness = Self.incrementedAtN1WithItsLinkToN3Cut()
        for round in 1...4 {
            harness.now = .milliseconds(200 * round)
            for node in [n1, n2, n3] { harness.gossip(node) }
            harness.deliverAll(dropping: Self.cut)
        }
        #expect(harness.value("c", at: n3, as: GCounter.self)?.value == 0, "held back within the delay")
        harness.now = .milliseconds(1_200)
        harness.gossip(n2)
        harness.deliverAll(dropping: Self.cut)
        #expect(harness.value("c", at: n3, as: GCounter.self)?.value == 1, "relayed once due")
        #expect(harness.instances[n2]!.statistics.relaysDue == 1)
    }

    /// A delta from a neighbour leaves its register out of that neighbour's backlog (the
    /// neighbour holds it) and puts it in the others'. With no other neighbour, what the source
    /// acknowledged so is dropped at once.
    @Test func aDeltaIsAcknowledgedForItsSourceOnReceipt() {
        var harness = Harness(nodes: 3)
        harness.declare("c", GCounter.self, at: [n1, n2, n3])
        harness.deliverAll()
        harness.now = .milliseconds(200)
        for node in [n1, n2, n3] { harness.gossip(node) }
        harness.deliverAll()
        #expect(harness.instances[n2]!.backlogCount(of: n1) == 0 && harness.instances[n2]!.backlogCount(of: n3) == 0)
        _ = harness.update("c", at: n1) { (counter: inout GCounter, replica) in counter.increment(replica: replica) }
        harness.deliverAll()
        #expect(harness.instances[n2]!.backlogCount(of: n1) == 0, "n1 made it")
        #expect(harness.instances[n2]!.backlogCount(of: n3) == 1)

        var pair = Harness(nodes: 2)
        pair.declare("c", GCounter.self, at: [n1, n2])
        pair.deliverAll()
        pair.now = .milliseconds(200)
        for node in [n1, n2] { pair.gossip(node) }
        pair.deliverAll()
        _ = pair.update("c", at: n1) { (counter: inout GCounter, replica) in counter.increment(replica: replica) }
        pair.deliverAll()
        #expect(pair.instances[n2]!.backlogCount(of: n1) == 0)
        #expect(pair.instances[n2]!.bufferedDeltaCount == 0, "n1, the only neighbour, holds it")
        #expect(pair.value("c", at: n2, as: GCounter.self)?.value == 1)
    }

    /// A register that changes on every tick while its relay waits is held back once: the
    /// queue keeps one entry per register, and the relay that falls due carries every change.
    @Test func aRegisterThatKeepsChangingWaitsOnceInTheQueue() {
        var harness = Self.incrementedAtN1WithItsLinkToN3Cut()
        for round in 1...4 {
            harness.now = .milliseconds(200 * round)
            _ = harness.update("c", at: n1) { (counter: inout GCounter, replica) in counter.increment(replica: replica) }
            for node in [n1, n2, n3] { harness.gossip(node) }
            harness.deliverAll(dropping: Self.cut)
            #expect(harness.instances[n2]!.statistics.relaysWaiting == 1, "round \(round)")
        }
        #expect(harness.instances[n2]!.statistics.relaysHeldBack == 1)
        #expect(harness.value("c", at: n3, as: GCounter.self)?.value == 0, "held back within the delay")
        for round in 6...12 {
            harness.now = .milliseconds(200 * round)
            for node in [n1, n2, n3] { harness.gossip(node) }
            harness.deliverAll(dropping: Self.cut)
        }
        #expect(harness.value("c", at: n3, as: GCounter.self)?.value == 5, "every change relayed once due")
        #expect(harness.instances[n2]!.statistics.relaysWaiting == 0)
    }

    /// While n2 holds back n1's delta from n3, n2's certificate to n3 leaves out n1's entry: n3
    /// may lack what it covers (here it does: n1's link to n3 is cut). n3 adopts the rest.
    @Test func aCertificateLeavesOutTheMakersWhoseRelaysAreHeldBack() {
        var harness = Self.incrementedAtN1WithItsLinkToN3Cut()
        harness.now = .milliseconds(200)
        harness.gossip(n1)
        harness.deliverAll(dropping: Self.cut)
        #expect(harness.instances[n2]!.certificate[n1] == .milliseconds(200))
        harness.now = .milliseconds(400)
        let effects = harness.instances[n2]!.timerFired(.gossip, now: harness.now)
        let toN3 = effects.compactMap { if case .send(n3, .deltas(_, _, _, _, let certificate?, let relay)) = $0 { (certificate, relay) } else { nil } }
        #expect(toN3.count == 1 && toN3.first?.0[n1] != nil && toN3.first?.1.withheld == [n1])
        harness.carryOut(effects, at: n2)
        harness.deliverAll(dropping: Self.cut)
        #expect(harness.instances[n3]!.certificate[n2] == .milliseconds(400), "n2's own entry is adopted")
        #expect(harness.instances[n3]!.certificate[n1] == nil, "n1's is not: n3 lacks n1's increment")
        #expect(harness.value("c", at: n3, as: GCounter.self)?.value == 0)
    }

    /// A register restored from the store has history the delta buffer never saw: a peer that
    /// never acknowledged it gets the whole state, not the join of the deltas since the restart.
    @Test func aRestoredRegisterGoesWholeToAPeerThatNeverAcknowledgedIt() {
        var harness = Harness(nodes: 2)
        for member in ["a", "b"] {
            _ = harness.update("s", at: n1, declaring: true) { (set: inout ORSet<String>, replica) in set.insert(member, replica: replica) }
        }
        harness.inFlight.removeAll()  // n2 never hears of it
        var durable: ReplicaDurableState?
        for patch in harness.persisted[n1]! { ReplicationInstance.accumulate(patch, into: &durable) }
        var restarted = ReplicationInstance(configuration: .init(membership: .init()),
                                            context: InstanceContext(node: n1, members: [n1, n2], random: DeterministicRandom(seed: 5)),
                                            durable: durable)
        let started = restarted.start(now: harness.now)
        harness.instances[n1] = restarted
        harness.carryOut(started, at: n1)
        harness.inFlight.removeAll { if case .membership = $0.message { true } else { false } }
        _ = harness.update("s", at: n1, declaring: true) { (set: inout ORSet<String>, replica) in set.insert("c", replica: replica) }
        harness.deliverAll()
        harness.gossip(n1)
        harness.deliverAll()
        #expect(harness.value("s", at: n2, as: ORSet<String>.self)?.elements == ["a", "b", "c"])
    }

    @Test func declarationsReplicateAsWholeStates() {
        var harness = Harness(nodes: 2)
        harness.declare("flag", EWFlag.self, at: [n1])
        harness.deliverAll()
        #expect(harness.value("flag", at: n2, as: EWFlag.self) == EWFlag())
        #expect(harness.instances[n2]!.slots["flag"]?.typeName == replicableTypeName(EWFlag.self))
    }

    @Test func lostDeltasAreResentUntilAcknowledged() {
        var harness = Harness(nodes: 2)
        harness.declare("count", GCounter.self, at: [n1, n2])
        harness.deliverAll()
        _ = harness.update("count", at: n1) { (counter: inout GCounter, replica) in counter.increment(by: 3, replica: replica) }
        harness.deliverAll { _, _, message in if case .deltas = message { true } else { false } }  // lost
        #expect(harness.value("count", at: n2, as: GCounter.self)?.value == 0)
        harness.now = .seconds(2)  // past the retransmit interval
        harness.gossip(n1)
        harness.deliverAll()
        #expect(harness.value("count", at: n2, as: GCounter.self)?.value == 3)
        // Acknowledged now: the next gossip sends no delta, only the freshness certificate.
        harness.gossip(n1)
        #expect(!harness.inFlight.contains { if case let .deltas(_, _, _, payloads, _, _) = $0.message { !payloads.isEmpty } else { false } })
        #expect(harness.inFlight.contains { if case let .deltas(_, _, _, [], certificate?, _) = $0.message { certificate[n1] != nil } else { false } })
    }

    /// While a whole state is on its way to a neighbour, pushes ship only the deltas after it,
    /// and gossip ticks do not ship it again until `fullStateRetransmitInterval` has passed
    /// without an acknowledgement: a large register is not resent to a slow peer on every
    /// update.
    /// A shipment that stays unacknowledged is sent again after the retransmit interval, then
    /// after twice and four times it: a neighbour slow to join a large state is not sent it
    /// again every interval. Once it arrives, all is acknowledged.
    @Test func unacknowledgedShipmentsBackOffUpToFourIntervals() {
        var harness = Harness(nodes: 2)  // gossip every 200 ms: retransmit interval 1 s
        harness.declare("count", GCounter.self, at: [n1, n2])
        harness.deliverAll()
        _ = harness.update("count", at: n1) { (counter: inout GCounter, replica) in counter.increment(by: 3, replica: replica) }
        harness.inFlight.removeAll()  // the push is lost
        var resentAt: [Int] = []
        for second in 1...11 {
            harness.now = .seconds(second)
            harness.gossip(n1)
            let resent = harness.inFlight.contains { entry in
                if case let .deltas(_, _, _, payloads, _, _) = entry.message { !payloads.isEmpty } else { false }
            }
            if resent { resentAt.append(second) }
            harness.inFlight.removeAll()  // lost too
        }
        #expect(resentAt == [1, 3, 7, 11], "resent after 1, 2, 4 and 4 intervals")
        harness.now = .seconds(15)
        harness.gossip(n1)
        harness.deliverAll()
        #expect(harness.value("count", at: n2, as: GCounter.self)?.value == 3)
    }

    @Test func aWholeStateInFlightIsNotShippedAgainOnEveryUpdate() {
        var harness = Harness(nodes: 2, configuration: .init(gossipInterval: .milliseconds(100), retransmitInterval: .seconds(1)))
        harness.declare("big", ORSet<String>.self, at: [n1])
        for member in 0..<50 {
            _ = harness.update("big", at: n1) { (set: inout ORSet<String>, replica) in set.insert("m\(member)", replica: replica) }
        }
        func shipped(_ from: NodeID) -> [DeltaPayload] {
            harness.inFlight.filter { $0.from == from }.compactMap { if case let .deltas(_, _, _, payloads, _, _) = $0.message { payloads } else { nil } }.flatMap { $0 }
        }
        let wholes = shipped(n1).filter(\.isFullState).count
        #expect(wholes == 1, "one whole state while none is acknowledged, not one per update: \(wholes)")
        #expect(shipped(n1).filter { !$0.isFullState }.count == 50, "then one delta per update")
        harness.now = .milliseconds(500)
        harness.gossip(n1)
        #expect(shipped(n1).count == 51, "a tick within the interval sends nothing of it")
        harness.now = .milliseconds(1_200)
        harness.gossip(n1)
        #expect(shipped(n1).filter(\.isFullState).count == 2, "a tick past the interval does")
        harness.deliverAll()
        #expect(harness.value("big", at: n2, as: ORSet<String>.self)?.elements.count == 50)
        harness.gossip(n1)
        #expect(!harness.inFlight.contains { if case let .deltas(_, _, _, payloads, _, _) = $0.message { !payloads.isEmpty } else { false } },
                "all acknowledged: \(harness.inFlight)")
    }

    /// A push ships only the deltas after what was shipped before, not everything after the
    /// acknowledgement; the sender counts it delivered only once the shipment before it is
    /// acknowledged too. A lost push is joined late (by a tick that ships again from the
    /// acknowledgement), and the gap is never acknowledged over.
    @Test func pushesShipOnlyNewDeltasAndAGapIsNeverAcknowledged() {
        var harness = Harness(nodes: 2)
        harness.declare("cart", ORSet<String>.self, at: [n1, n2])
        harness.deliverAll()
        _ = harness.update("cart", at: n1) { (set: inout ORSet<String>, replica) in set.insert("apple", replica: replica) }
        harness.inFlight.removeAll()  // the first push is lost
        _ = harness.update("cart", at: n1) { (set: inout ORSet<String>, replica) in set.insert("pear", replica: replica) }
        let second = harness.inFlight.compactMap { if case let .deltas(_, _, _, payloads, _, _) = $0.message { payloads } else { nil } }.flatMap { $0 }
        #expect(second.count == 1 && harness.elements(of: second[0], at: n1) == ["pear"], "only the new delta: \(second)")
        harness.deliverAll()
        // Joined (a join is safe) but not acknowledged: n2 lacks the first delta.
        #expect(harness.value("cart", at: n2, as: ORSet<String>.self)?.elements == ["pear"])
        harness.now = .seconds(2)  // past the retransmit interval
        harness.gossip(n1)
        let retransmitted = harness.inFlight.compactMap { if case let .deltas(_, _, _, payloads, _, _) = $0.message { payloads } else { nil } }.flatMap { $0 }
        #expect(retransmitted.contains { $0.register == "cart" && harness.elements(of: $0, at: n1) == ["apple", "pear"] },
                "the tick ships from the acknowledgement again")
        harness.deliverAll()
        #expect(harness.value("cart", at: n2, as: ORSet<String>.self)?.elements == ["apple", "pear"])
        harness.gossip(n1)
        #expect(!harness.inFlight.contains { if case let .deltas(_, _, _, payloads, _, _) = $0.message { !payloads.isEmpty } else { false } })
    }

    /// A certificate rides on a tick's batch, which names the oldest batch that what is in
    /// flight builds on; the receiver adopts it only if it has every batch since. A lost push
    /// therefore never certifies a replica that lacks it, and once the tick ships again from
    /// the acknowledgement, the certificate is adopted.
    @Test func aCertificateIsAdoptedOnlyWithEveryShipmentItBuildsOn() {
        var harness = Harness(nodes: 2, configuration: .init(gossipInterval: .milliseconds(100), retransmitInterval: .milliseconds(500)))
        harness.declare("cart", ORSet<String>.self, at: [n1, n2])
        harness.deliverAll()
        harness.now = .milliseconds(50)
        harness.gossip(n1)
        harness.deliverAll()
        let certified = harness.instances[n2]!.certificate[n1]
        #expect(certified == .milliseconds(50))
        harness.now = .milliseconds(100)
        _ = harness.update("cart", at: n1) { (set: inout ORSet<String>, replica) in set.insert("apple", replica: replica) }
        harness.inFlight.removeAll()  // the push is lost
        harness.now = .milliseconds(200)
        harness.gossip(n1)
        let tick = harness.inFlight.compactMap { if case let .deltas(_, _, _, payloads, certificate?, _) = $0.message { (payloads, certificate) } else { nil } }
        #expect(tick.count == 1 && tick[0].0.isEmpty, "the certificate alone, not the delta again: \(tick)")
        harness.deliverAll()
        #expect(harness.instances[n2]!.certificate[n1] == certified, "not adopted: n2 lacks the apple")
        #expect(harness.instances[n2]!.statistics.certificatesRefusedGap == 1)
        #expect(harness.instances[n2]!.certifiedStalenessByMember(now: .milliseconds(200)).map(\.staleness)
                    == [harness.instances[n2]!.certifiedStaleness(now: .milliseconds(200))])
        harness.now = .milliseconds(700)
        harness.gossip(n1)
        harness.deliverAll()
        #expect(harness.value("cart", at: n2, as: ORSet<String>.self)?.elements == ["apple"])
        #expect(harness.instances[n2]!.certificate[n1] == .milliseconds(700))
        #expect(harness.instances[n1]!.statistics.certificatesSent == 3)
        #expect(harness.instances[n2]!.statistics.certificatesAdopted == 2)
    }

    /// A neighbour that still acknowledges batches one after the other is slow, not cut off:
    /// what is queued at it is not shipped again, however long it takes. Once it acknowledges
    /// nothing for the retransmit interval, or acknowledges a batch after one that never
    /// arrived, a tick ships again from the acknowledgement.
    @Test func aSlowNeighbourStillAcknowledgingIsNotSentAgainWhatIsQueuedAtIt() {
        var harness = Harness(nodes: 2)  // retransmit interval 1 s
        harness.declare("cart", ORSet<String>.self, at: [n1, n2])
        harness.deliverAll()
        func shipped() -> [DeltaPayload] {
            harness.inFlight.compactMap { if case let .deltas(_, _, _, payloads, _, _) = $0.message { payloads } else { nil } }.flatMap { $0 }
        }
        _ = harness.update("cart", at: n1) { (set: inout ORSet<String>, replica) in set.insert("apple", replica: replica) }
        let first = harness.inFlight
        harness.inFlight.removeAll()
        _ = harness.update("cart", at: n1) { (set: inout ORSet<String>, replica) in set.insert("pear", replica: replica) }
        let second = harness.inFlight
        harness.inFlight.removeAll()
        // n2 gets to the first batch only after 1.5 s; its acknowledgement comes back then.
        harness.now = .milliseconds(1_500)
        harness.inFlight = first
        harness.deliverAll()
        harness.gossip(n1)
        #expect(shipped().isEmpty, "the second batch is still queued at n2: not sent again")
        // Nothing acknowledged for the interval since: it may be lost, and goes again.
        harness.now = .milliseconds(2_600)
        harness.gossip(n1)
        #expect(shipped().contains { $0.register == "cart" && harness.elements(of: $0, at: n1) == ["pear"] }, "\(shipped())")
        harness.inFlight += second
        harness.deliverAll()
        #expect(harness.value("cart", at: n2, as: ORSet<String>.self)?.elements == ["apple", "pear"])
        // A batch lost, and the one after it acknowledged 0.9 s later: the loss shows before any
        // silence does.
        harness.now = .seconds(10)
        _ = harness.update("cart", at: n1) { (set: inout ORSet<String>, replica) in set.insert("fig", replica: replica) }
        harness.inFlight.removeAll()
        harness.now = .milliseconds(10_900)
        _ = harness.update("cart", at: n1) { (set: inout ORSet<String>, replica) in set.insert("kiwi", replica: replica) }
        harness.deliverAll()
        harness.now = .milliseconds(11_100)
        harness.gossip(n1)
        #expect(shipped().contains { $0.register == "cart" && harness.elements(of: $0, at: n1) == ["fig", "kiwi"] }, "\(shipped())")
        harness.deliverAll()
        #expect(harness.value("cart", at: n2, as: ORSet<String>.self)?.elements == ["apple", "fig", "kiwi", "pear"])
    }

    /// The receiver acknowledges every batch it joined, and only those; the sender counts a
    /// shipment that starts after an earlier one as delivered only once the earlier one is
    /// acknowledged too: an acknowledgement of the later batch alone keeps the deltas of the
    /// lost one in flight.
    @Test func anAcknowledgementPastALostBatchDeliversNothingBeforeIt() {
        var harness = Harness(nodes: 2)
        harness.declare("cart", ORSet<String>.self, at: [n1, n2])
        harness.deliverAll()
        _ = harness.update("cart", at: n1) { (set: inout ORSet<String>, replica) in set.insert("apple", replica: replica) }
        harness.inFlight.removeAll()  // batch 2 (the first update's) is lost
        _ = harness.update("cart", at: n1) { (set: inout ORSet<String>, replica) in set.insert("pear", replica: replica) }
        let third = harness.inFlight.compactMap { if case let .deltas(_, batch, _, payloads, _, _) = $0.message { (batch, payloads) } else { nil } }
        #expect(third.count == 1 && third[0].0 == 3, "\(third)")
        harness.deliverAll()
        #expect(harness.value("cart", at: n2, as: ORSet<String>.self)?.elements == ["pear"], "joined: the pear only")
        // The acknowledgement of batch 3 came back; the apple is still due.
        harness.now = .seconds(2)  // past the retransmit interval
        harness.gossip(n1)
        let again = harness.inFlight.compactMap { if case let .deltas(_, _, _, payloads, _, _) = $0.message { payloads } else { nil } }.flatMap { $0 }
        #expect(again.contains { $0.register == "cart" && harness.elements(of: $0, at: n1) == ["apple", "pear"] }, "shipped again from the acknowledgement: \(again)")
        harness.deliverAll()
        #expect(harness.value("cart", at: n2, as: ORSet<String>.self)?.elements == ["apple", "pear"])
        // An acknowledgement of a batch never shipped changes nothing (and does not trap).
        _ = harness.instances[n1]!.receive(.acks(epoch: 1, batch: 999, wanting: ["cart"]), from: n2, now: harness.now)
        harness.gossip(n1)
        #expect(!harness.inFlight.contains { if case let .deltas(_, _, _, payloads, _, _) = $0.message { !payloads.isEmpty } else { false } })
    }

    /// The updates made before the push timer fires are kept as one delta, joined as they
    /// come: ten updates between two pushes take one place in a buffer of two, and nothing
    /// overflows (one entry per update made a buffer overflow under load, and an overflow's
    /// join of the oldest entries was then never acknowledged past).
    @Test func updatesBetweenTwoPushesTakeOnePlaceInTheBuffer() {
        var harness = Harness(nodes: 2, configuration: .init(deltaBufferMax: 2))
        harness.declare("cart", ORSet<String>.self, at: [n1, n2])
        harness.deliverAll()
        for index in 0..<10 {
            let effects = harness.instances[n1]!.handle(.update(id: 100 + UInt64(index), register: "cart", typeName: replicableTypeName(ORSet<String>.self)) { state, replica, _ in
                AnyReplicated(state.mutate(as: ORSet<String>.self) { $0.insert("item \(index)", replica: replica) }!)
            }, now: harness.now)
            #expect(effects.contains { if case .output(.completed(_, _, .success)) = $0 { true } else { false } })
        }
        harness.carryOut(harness.instances[n1]!.timerFired(.push, now: harness.now), at: n1)
        harness.deliverAll()
        #expect(harness.value("cart", at: n2, as: ORSet<String>.self)?.elements.count == 10)
        #expect(harness.instances[n1]!.statistics.bufferOverflows == 0)
    }

    /// A peer far behind catches up over several shipments, each joining at most
    /// `shipmentJoinMax` deltas, so that no tick spends seconds on one register; a batch that
    /// leaves it behind carries no certificate.
    @Test func aPeerFarBehindCatchesUpInBoundedShipments() {
        var harness = Harness(nodes: 2)  // retransmit interval 1 s
        harness.declare("cart", ORSet<String>.self, at: [n1, n2])
        harness.deliverAll()
        for index in 0..<600 {
            _ = harness.update("cart", at: n1) { (set: inout ORSet<String>, replica) in set.insert("e\(index)", replica: replica) }
            harness.inFlight.removeAll()  // n2 is cut off
        }
        var sizes: [Int] = []
        for tick in 1...6 {
            harness.now = .seconds(tick)
            harness.gossip(n1)
            for entry in harness.inFlight {
                guard case let .deltas(_, _, _, payloads, certificate, _) = entry.message, let payload = payloads.first(where: { $0.register == "cart" }) else { continue }
                sizes.append(harness.elements(of: payload, at: n1)?.count ?? -1)
                if harness.elements(of: payload, at: n1)?.count != 600 - 512 { #expect(certificate == nil, "a partial batch certifies nothing") }
            }
            harness.deliverAll()
        }
        #expect(sizes == [256, 256, 88], "\(sizes)")
        #expect(harness.value("cart", at: n2, as: ORSet<String>.self)?.elements.count == 600)
    }

    /// What a stream's unacknowledged batches shipped is remembered for 8,192 batches at most:
    /// a neighbour that acknowledges nothing does not grow it without bound, and what it
    /// missed still arrives once it answers again.
    @Test func unacknowledgedBatchesAreRememberedUpToALimit() {
        var harness = Harness(nodes: 2)
        harness.declare("count", GCounter.self, at: [n1, n2])
        harness.deliverAll()
        for _ in 0..<8_300 {
            _ = harness.update("count", at: n1) { (counter: inout GCounter, replica) in counter.increment(replica: replica) }
            harness.inFlight.removeAll()  // n2 answers nothing
        }
        #expect(harness.instances[n1]!.batchesAwaitingAcknowledgement == 8_192)
        // It answers again: a shipment from the acknowledgement, then the rest, 256 deltas each.
        for tick in 2...40 {
            harness.now = .seconds(tick)
            harness.gossip(n1)
            harness.deliverAll()
        }
        #expect(harness.value("count", at: n2, as: GCounter.self)?.value == 8_300)
        #expect(harness.instances[n1]!.batchesAwaitingAcknowledgement == 0)
    }

    /// Past `deltaBufferMax` the oldest deltas are joined, not dropped: a peer behind all of
    /// them gets one delta covering them, not the whole state.
    @Test func aPeerBehindAFullBufferGetsTheJoinOfTheOldDeltas() {
        var harness = Harness(nodes: 2, configuration: .init(deltaBufferMax: 2))
        harness.declare("count", GCounter.self, at: [n1, n2])
        harness.deliverAll()
        for _ in 0..<5 {
            _ = harness.update("count", at: n1) { (counter: inout GCounter, replica) in counter.increment(replica: replica) }
            harness.deliverAll { _, _, message in if case .deltas = message { true } else { false } }
        }
        harness.now = .seconds(2)  // past the retransmit interval
        harness.gossip(n1)
        let payloads = harness.inFlight.compactMap { if case let .deltas(_, _, _, payloads, _, _) = $0.message { payloads } else { nil } }.flatMap { $0 }
        #expect(payloads.contains { $0.register == "count" && !$0.isFullState })
        #expect(!payloads.contains { $0.isFullState })
        harness.deliverAll()
        #expect(harness.value("count", at: n2, as: GCounter.self)?.value == 5)
        #expect(harness.instances[n1]!.statistics.bufferOverflows > 0)
    }

    /// The same with a set, whose deltas do not subsume each other (a counter's do): an oldest
    /// delta dropped instead of joined would lose an element at the peer.
    @Test func aPeerBehindAFullBufferGetsEveryElementOfTheJoinedDeltas() {
        var harness = Harness(nodes: 2, configuration: .init(deltaBufferMax: 2))
        harness.declare("cart", ORSet<String>.self, at: [n1, n2])
        harness.deliverAll()
        let items = (1...6).map { "item\($0)" }
        for item in items {
            _ = harness.update("cart", at: n1) { (set: inout ORSet<String>, replica) in set.insert(item, replica: replica) }
            harness.deliverAll { _, _, message in if case .deltas = message { true } else { false } }
        }
        #expect(harness.instances[n1]!.statistics.bufferOverflows > 0)
        harness.now = .seconds(2)  // past the retransmit interval
        harness.gossip(n1)
        let payloads = harness.inFlight.compactMap { if case let .deltas(_, _, _, payloads, _, _) = $0.message { payloads } else { nil } }.flatMap { $0 }
        #expect(!payloads.isEmpty && !payloads.contains { $0.isFullState })
        harness.deliverAll()
        #expect(harness.value("cart", at: n2, as: ORSet<String>.self)?.elements.sorted() == items)
    }

    @Test func aMalformedBatchChangesNothingAndIsNotAcknowledged() {
        var harness = Harness(nodes: 2)
        harness.declare("count", GCounter.self, at: [n1, n2])
        harness.deliverAll()
        let good = DeltaPayload(register: "count", slot: RegisterSlot(
            generation: 1, typeName: replicableTypeName(GCounter.self), state: AnyReplicated({ var c = GCounter(); c.increment(replica: ReplicaID(9)); return c }())), isFullState: true)
        var bad = good
        bad.typeName = "NoSuchType"
        let effects = harness.instances[n2]!.receive(.deltas(epoch: 1, batch: 1, since: 2, [good, bad], certificate: nil, relay: RelayReport(sentAt: 0)), from: n1, now: .zero)
        #expect(effects.isEmpty)
        #expect(harness.value("count", at: n2, as: GCounter.self)?.value == 0)
        #expect(harness.instances[n2]!.statistics.rejectedMessages == 1)
    }

    @Test func deletionReplicatesAndANewGenerationStartsClean() {
        var harness = Harness(nodes: 2)
        harness.declare("tmp", GSet<String>.self, at: [n1, n2])
        harness.deliverAll()
        _ = harness.update("tmp", at: n2) { (set: inout GSet<String>, _) in set.insert("old") }
        harness.deliverAll()
        _ = harness.command(n1) { .delete(id: $0, register: "tmp") }
        harness.deliverAll()
        #expect(harness.instances[n2]!.slots["tmp"]?.isDeleted == true)
        #expect(harness.instances[n2]!.value(of: "tmp") == nil)
        // An update at a node that has seen the delete is refused.
        let refused = harness.update("tmp", at: n2) { (set: inout GSet<String>, _) in set.insert("late") }
        #expect(refused.contains { if case .output(.completed(_, _, .failure(.deleted("tmp")))) = $0 { true } else { false } })
        // Declaring again starts generation 2, empty.
        harness.declare("tmp", GSet<String>.self, at: [n1])
        harness.deliverAll()
        #expect(harness.instances[n2]!.slots["tmp"]?.generation == 2)
        #expect(harness.value("tmp", at: n2, as: GSet<String>.self)?.elements == [])
    }

    @Test func anUpdateConcurrentWithDeleteIsDiscardedNotResurrected() {
        var harness = Harness(nodes: 2)
        harness.declare("tmp", GSet<String>.self, at: [n1, n2])
        harness.deliverAll()
        _ = harness.command(n1) { .delete(id: $0, register: "tmp") }
        _ = harness.update("tmp", at: n2) { (set: inout GSet<String>, _) in set.insert("concurrent") }
        harness.deliverAll()
        #expect(harness.instances[n1]!.slots["tmp"]?.isDeleted == true)
        #expect(harness.instances[n2]!.slots["tmp"]?.isDeleted == true)
    }

    @Test func thresholdReadsWaitUntilTheStateReachesThem() {
        var harness = Harness(nodes: 2)
        harness.declare("count", GCounter.self, at: [n1, n2])
        harness.deliverAll()
        var threshold = GCounter()
        threshold.increment(by: 2, replica: n1.replica)
        _ = harness.command(n2) { .thresholdRead(id: $0, register: "count", threshold: AnyReplicated(threshold)) }
        #expect(harness.instances[n2]!.pendingReadCount == 1)
        _ = harness.update("count", at: n1) { (counter: inout GCounter, replica) in counter.increment(replica: replica) }
        harness.deliverAll()
        #expect(!harness.outputs.contains { if case .thresholdReached = $0.1 { true } else { false } })
        _ = harness.update("count", at: n1) { (counter: inout GCounter, replica) in counter.increment(replica: replica) }
        harness.deliverAll()
        let reached = harness.outputs.compactMap { if case let .thresholdReached(_, value) = $0.1 { value } else { nil } }
        #expect(reached.count == 1)
        #expect(reached.first.flatMap { threshold.isBelowOrEqual($0.unwrap(as: GCounter.self)!) } == true)
        #expect(harness.instances[n2]!.pendingReadCount == 0)
        // A read of an unknown register fails at once; a pending read can be cancelled.
        _ = harness.command(n2) { .thresholdRead(id: $0, register: "nope", threshold: AnyReplicated(threshold)) }
        #expect(harness.outputs.contains { if case .thresholdFailed(_, .notDeclared("nope")) = $0.1 { true } else { false } })
        var far = GCounter()
        far.increment(by: 100, replica: n1.replica)
        let effects = harness.command(n2) { .thresholdRead(id: $0, register: "count", threshold: AnyReplicated(far)) }
        #expect(effects.isEmpty)
        let pendingID = harness.nextID - 1
        _ = harness.command(n2) { _ in .cancelRead(id: pendingID) }
        #expect(harness.outputs.contains { if case .thresholdFailed(_, .readCancelled) = $0.1 { true } else { false } })
    }

    @Test func derivedRegistersFollowTheirInputsAndChain() {
        var harness = Harness(nodes: 2)
        harness.declare("ads", ORSet<String>.self, at: [n1, n2])
        harness.deliverAll()
        for node in [n1, n2] {
            _ = harness.command(node) { .defineDerived(id: $0, DerivedDefinition(name: "long", inputs: ["ads"]) {
                AnyReplicated($0[0].unwrap(as: ORSet<String>.self)!.filterElements { $0.count > 3 })
            }) }
            _ = harness.command(node) { .defineDerived(id: $0, DerivedDefinition(name: "shouted", inputs: ["long"]) {
                AnyReplicated($0[0].unwrap(as: ORSet<String>.self)!.mapElements { $0.uppercased() })
            }) }
        }
        _ = harness.update("ads", at: n1) { (set: inout ORSet<String>, replica) in set.insert("shoes", replica: replica) }
        _ = harness.update("ads", at: n1) { (set: inout ORSet<String>, replica) in set.insert("tea", replica: replica) }
        harness.deliverAll()
        #expect(harness.value("shouted", at: n2, as: ORSet<String>.self)?.elements == ["SHOES"])
        _ = harness.update("ads", at: n2) { (set: inout ORSet<String>, _) in set.remove("shoes") }
        harness.deliverAll()
        #expect(harness.value("shouted", at: n1, as: ORSet<String>.self)?.elements == [])
        // A derived register over a register nobody declared is refused.
        _ = harness.command(n1) { .defineDerived(id: $0, DerivedDefinition(name: "bad", inputs: ["missing"]) { $0[0] }) }
        #expect(harness.outputs.contains { if case .completed(_, "bad", .failure(.derivedInputMissing)) = $0.1 { true } else { false } })
    }

    @Test func acknowledgementsFromAnEarlierIncarnationAreIgnored() {
        var harness = Harness(nodes: 2)
        harness.declare("count", GCounter.self, at: [n1, n2])
        harness.deliverAll()
        _ = harness.update("count", at: n1) { (counter: inout GCounter, replica) in counter.increment(replica: replica) }
        harness.inFlight.removeAll()
        // An acknowledgement naming another epoch must not mark the delta delivered.
        for batch: UInt64 in 1...5 { _ = harness.instances[n1]!.receive(.acks(epoch: 99, batch: batch, wanting: []), from: n2, now: .zero) }
        harness.now = .seconds(2)  // past the retransmit interval
        harness.gossip(n1)
        harness.deliverAll()
        #expect(harness.value("count", at: n2, as: GCounter.self)?.value == 1)
    }

    @Test func badNamesAndTypeMismatchesAreTypedErrors() {
        var harness = Harness(nodes: 1)
        _ = harness.command(n1) { .declare(id: $0, register: "", bottom: AnyReplicated(GCounter())) }
        _ = harness.command(n1) { .declare(id: $0, register: "x", bottom: AnyReplicated(GCounter())) }
        _ = harness.command(n1) { .declare(id: $0, register: "x", bottom: AnyReplicated(PNCounter())) }
        _ = harness.update("y", at: n1) { (counter: inout GCounter, replica) in counter.increment(replica: replica) }
        let failures = harness.outputs.compactMap { if case let .completed(_, _, .failure(error)) = $0.1 { error } else { nil } }
        #expect(failures.contains(.invalidName("")))
        #expect(failures.contains { if case .typeMismatch(register: "x", _, _) = $0 { true } else { false } })
        #expect(failures.contains(.notDeclared("y")))
    }

    @Test func overlayIsSparseAndConnected() {
        for size in [2, 3, 5, 16, 64, 256] {
            let members = (1...size).map { NodeID(UInt64($0)) }
            var edges: [NodeID: [NodeID]] = [:]
            for node in members {
                var instance = ReplicationInstance(
                    configuration: .init(), context: InstanceContext(node: node, members: members, random: DeterministicRandom(seed: 1)), durable: nil)
                edges[node] = instance.neighbors()
            }
            // Connected: a breadth-first search from n1 reaches everyone.
            var reached: Set<NodeID> = [members[0]]
            var frontier = [members[0]]
            var hops = 0
            while !frontier.isEmpty {
                frontier = frontier.flatMap { edges[$0]! }.filter { reached.insert($0).inserted }
                if !frontier.isEmpty { hops += 1 }
            }
            #expect(reached.count == size, "overlay of \(size) nodes not connected")
            let degree = edges.values.map(\.count).max()!
            if size == 256 {
                #expect(degree <= 12, "degree \(degree)")
                #expect(hops <= 10, "diameter \(hops)")
            }
        }
    }
}

@Suite struct MembershipTests {
    @Test func swimPrecedence() {
        let alive3 = MembershipUpdate(node: n2, status: .alive, incarnation: 3)
        let suspect3 = MembershipUpdate(node: n2, status: .suspect, incarnation: 3)
        let unreachable3 = MembershipUpdate(node: n2, status: .unreachable, incarnation: 3)
        let alive4 = MembershipUpdate(node: n2, status: .alive, incarnation: 4)
        #expect(suspect3.overrides(alive3))
        #expect(!alive3.overrides(suspect3))
        #expect(unreachable3.overrides(suspect3))
        #expect(alive4.overrides(unreachable3))
        #expect(!suspect3.overrides(suspect3))
    }

    @Test func aSuspectedNodeRefutesWithAHigherIncarnation() {
        var membership = Membership(node: n1, seeds: [], knownMembers: [n2], configuration: .init())
        var random = DeterministicRandom(seed: 1)
        _ = membership.start(now: .zero, random: &random)
        let suspicion = MembershipUpdate(node: n1, status: .suspect, incarnation: 0)
        let directives = membership.receive(.ping(sequence: 7, updates: [suspicion]), from: n2, now: .zero, random: &random)
        #expect(membership.incarnation == 1)
        // The answer carries the refutation.
        let carried = directives.compactMap { directive -> [MembershipUpdate]? in
            if case let .send(_, .ack(_, _, updates)) = directive { updates } else { nil }
        }.flatMap { $0 }
        #expect(carried.contains(MembershipUpdate(node: n1, status: .alive, incarnation: 1)))
    }

    @Test func unansweredProbesLeadToSuspicionThenUnreachable() {
        let configuration = Membership.Configuration()
        var membership = Membership(node: n1, seeds: [], knownMembers: [n2], configuration: configuration)
        var random = DeterministicRandom(seed: 1)
        _ = membership.start(now: .zero, random: &random)
        var now = Duration.zero
        var became: [Membership.Directive] = []
        for _ in 0..<40 {
            now += configuration.probeInterval
            became += membership.timerFired(.probe, now: now, random: &random).filter {
                if case .reachabilityChanged = $0 { true } else { false }
            }
        }
        #expect(membership.status(of: n2) == .unreachable)
        #expect(became == [.reachabilityChanged(n2, reachable: false)])
    }

    /// A neighbour that was unreachable for less than `absentNeighbourRetention` gets the deltas
    /// it missed when it returns, not the whole state; past the retention, the whole state.
    @Test(arguments: [false, true]) func aNeighbourBackWithinTheRetentionGetsDeltas(pastRetention: Bool) {
        var harness = Harness(nodes: 3)
        harness.declare("cart", ORSet<String>.self, at: [n1])
        harness.deliverAll()
        _ = harness.update("cart", at: n1) { (set: inout ORSet<String>, replica) in set.insert("first", replica: replica) }
        harness.deliverAll()
        // n3 tells n1 that n2 is unreachable; n2 hears nothing while it is away.
        harness.hearUnreachable(n2, at: n1, from: n3)
        #expect(harness.instances[n1]!.neighbors() == [n3])
        for index in 0..<20 {
            _ = harness.update("cart", at: n1) { (set: inout ORSet<String>, replica) in set.insert("item \(index)", replica: replica) }
        }
        harness.deliverAll { _, to, _ in to == n2 }
        if pastRetention { harness.now += ReplicationInstance.Configuration().absentNeighbourRetention }
        harness.gossip(n1)
        harness.deliverAll { _, to, _ in to == n2 }
        harness.hearBack(n2, at: n1)
        #expect(harness.instances[n1]!.neighbors() == [n2, n3])
        harness.gossip(n1)
        harness.deliverAll { from, _, _ in from == n3 }
        #expect(harness.value("cart", at: n2, as: ORSet<String>.self)?.count == 21)
        #expect(harness.instances[n1]!.statistics.fullStatesSent == (pastRetention ? 1 : 0))
    }

    /// Both neighbours lost in one step (a node that was held up expires both suspicions at one
    /// tick) keep their deltas, and get them, not whole states, when they return, one after the
    /// other.
    @Test func twoNeighboursLostAtOnceBothKeepTheirDeltas() {
        var harness = Harness(nodes: 3)
        harness.declare("cart", ORSet<String>.self, at: [n1])
        harness.deliverAll()
        _ = harness.update("cart", at: n1) { (set: inout ORSet<String>, replica) in set.insert("first", replica: replica) }
        harness.deliverAll()
        let away = [MembershipUpdate(node: n2, status: .unreachable, incarnation: 0), MembershipUpdate(node: n3, status: .unreachable, incarnation: 0)]
        harness.carryOut(harness.instances[n1]!.receive(.membership(.ping(sequence: 1, updates: away)), from: n3, now: harness.now), at: n1)
        #expect(harness.instances[n1]!.neighbors().isEmpty)
        for index in 0..<20 {
            _ = harness.update("cart", at: n1) { (set: inout ORSet<String>, replica) in set.insert("item \(index)", replica: replica) }
        }
        harness.deliverAll { _, _, _ in true }
        // n2 comes back first and takes everything in; n3's acknowledgement alone must now hold
        // the deltas back.
        func back(_ peer: NodeID) {
            let update = MembershipUpdate(node: peer, status: .alive, incarnation: 1)
            harness.carryOut(harness.instances[n1]!.receive(.membership(.ping(sequence: 2, updates: [update])), from: peer, now: harness.now), at: n1)
            harness.gossip(n1)
        }
        back(n2)
        harness.deliverAll { from, to, _ in from == n3 || to == n3 }
        #expect(harness.value("cart", at: n2, as: ORSet<String>.self)?.count == 21)
        back(n3)
        harness.deliverAll()
        #expect(harness.value("cart", at: n2, as: ORSet<String>.self)?.count == 21)
        #expect(harness.value("cart", at: n3, as: ORSet<String>.self)?.count == 21)
        #expect(harness.instances[n1]!.statistics.fullStatesSent == 0)
    }

    /// A register made while a neighbour was away, and acknowledged meanwhile by the others,
    /// still reaches that neighbour as deltas when it returns: the buffer keeps the register's
    /// history for a neighbour that never acknowledged it, rather than leaving it a whole state.
    @Test func aRegisterMadeWhileANeighbourWasAwayReachesItAsDeltas() {
        var harness = Harness(nodes: 3)
        // n2 acknowledged something here before: it was a neighbour, and is absent now.
        _ = harness.update("seen", at: n1, declaring: true) { (counter: inout GCounter, replica) in counter.increment(replica: replica) }
        harness.deliverAll()
        harness.hearUnreachable(n2, at: n1, from: n3)
        #expect(harness.instances[n1]!.neighbors() == [n3])
        for index in 0..<20 {
            _ = harness.update("cart", at: n1, declaring: true) { (set: inout ORSet<String>, replica) in set.insert("item \(index)", replica: replica) }
            // n3 acknowledges each update before the next.
            harness.deliverAll { _, to, _ in to == n2 }
        }
        #expect(harness.value("cart", at: n3, as: ORSet<String>.self)?.count == 20)
        harness.hearBack(n2, at: n1)
        #expect(harness.instances[n1]!.neighbors() == [n2, n3])
        harness.gossip(n1)
        harness.deliverAll { from, _, _ in from == n3 }
        #expect(harness.value("cart", at: n2, as: ORSet<String>.self)?.count == 20)
        #expect(harness.instances[n1]!.statistics.fullStatesSent == 0)
    }

    /// A neighbour back from a brief absence is looked at for the registers that changed
    /// meanwhile, not for every register: with more registers than one tick takes
    /// (`backlogPerTickMax`), the first tick after its return already certifies. Before, its
    /// backlog started again with every register, and ticks went without a certificate until
    /// they had looked through them all.
    @Test func aNeighbourBackFromABriefAbsenceIsLookedAtOnlyForWhatChanged() {
        var harness = Harness(nodes: 3)
        for index in 0..<4_100 {
            _ = harness.update("k\(index)", at: n1, declaring: true) { (counter: inout GCounter, replica) in counter.increment(replica: replica) }
        }
        harness.deliverAll()
        harness.gossip(n1)
        harness.deliverAll()
        harness.hearUnreachable(n2, at: n1, from: n3)
        harness.gossip(n1)
        _ = harness.update("k7", at: n1, declaring: true) { (counter: inout GCounter, replica) in counter.increment(replica: replica) }
        harness.deliverAll { _, to, _ in to == n2 }
        harness.hearBack(n2, at: n1)
        harness.now = .milliseconds(200)
        let tick = harness.instances[n1]!.timerFired(.gossip, now: harness.now)
        let toN2 = tick.compactMap { if case .send(n2, .deltas(_, _, _, let payloads, let certificate, _)) = $0 { (payloads, certificate) } else { nil } }
        #expect(toN2.count == 1)
        #expect(toN2.first?.0.map(\.register) == ["k7"], "only what changed meanwhile")
        #expect(toN2.first?.1 != nil, "with a certificate")
        harness.carryOut(tick, at: n1)
        harness.deliverAll()
        #expect(harness.value("k7", at: n2, as: GCounter.self)?.value == 2)
    }

    /// A probe tick that fires later than due by more than the probe timeout judges nothing:
    /// this node was held up, and the answer may be waiting behind what held it. The next tick
    /// on time judges the probe sent at the late one.
    @Test(arguments: [false, true]) func aLateProbeTickSuspectsNobody(late: Bool) {
        let configuration = Membership.Configuration()
        var membership = Membership(node: n1, seeds: [], knownMembers: [n2], configuration: configuration)
        var random = DeterministicRandom(seed: 1)
        func due(_ directives: [Membership.Directive], after now: Duration) -> Duration {
            for case let .setTimer(.probe, after) in directives { return now + after }
            Issue.record("no probe timer set")
            return now
        }
        var now = due(membership.start(now: .zero, random: &random), after: .zero)
        // The first tick probes n2, which does not answer.
        now = due(membership.timerFired(.probe, now: now, random: &random), after: now)
        if late { now += configuration.probeTimeout + .milliseconds(1) }
        now = due(membership.timerFired(.probe, now: now, random: &random), after: now)
        #expect(membership.status(of: n2) == (late ? .alive : .suspect))
        #expect(membership.lateProbeTicks == (late ? 1 : 0))
        _ = membership.timerFired(.probe, now: now, random: &random)
        #expect(membership.status(of: n2) == .suspect)
    }

    @Test func messagesRoundTripOnTheWire() throws {
        let messages: [MembershipMessage] = [
            .join, .welcome(members: [MembershipUpdate(node: n2, status: .suspect, incarnation: 9)]),
            .ping(sequence: 3, updates: []), .pingRequest(sequence: 4, target: n3, updates: []),
            .ack(sequence: 5, target: n2, updates: [MembershipUpdate(node: n1, status: .alive, incarnation: 1)]),
        ]
        for message in messages { #expect(try MembershipMessage(binary: message.binaryEncoded()) == message) }
        #expect(throws: WireDecodingError.self) { try MembershipMessage(binary: [9]) }
    }

    /// Batches and their acknowledgements round-trip; a batch whose dependencies start after
    /// it is refused on decoding.
    @Test func batchesRoundTripAndDependenciesAfterTheBatchAreRefused() throws {
        let slot = RegisterSlot(generation: 2, typeName: replicableTypeName(GCounter.self), state: AnyReplicated(GCounter()))
        let messages: [ReplicationMessage] = [
            .deltas(epoch: 3, batch: 7, since: 5, [DeltaPayload(register: "k", slot: slot, isFullState: true, local: true)], certificate: [n1: 12],
                    relay: RelayReport(sentAt: -5, held: [n2: 40], withheld: [n3])),
            .deltas(epoch: 3, batch: 0, since: 1, [], certificate: nil, relay: RelayReport(sentAt: 9)),
            .acks(epoch: 3, batch: 7, wanting: ["k", "other"]),
        ]
        for message in messages { #expect(try ReplicationMessage(binary: message.binaryEncoded()) == message) }
        let bad = ReplicationMessage.deltas(epoch: 3, batch: 7, since: 9, [], certificate: nil, relay: RelayReport(sentAt: 0))
        #expect(throws: WireDecodingError.self) { try ReplicationMessage(binary: bad.binaryEncoded()) }
    }

    /// A payload's size is counted without encoding it, to the byte.
    @Test func payloadSizesAreCountedExactly() throws {
        var set = ORSet<String>()
        for index in 0..<300 { set.insert("member \(index) é", replica: ReplicaID(UInt64(index % 3))) }
        let slot = RegisterSlot(generation: 1, typeName: replicableTypeName(ORSet<String>.self), state: AnyReplicated(set))
        let tombstone = RegisterSlot(generation: 200, typeName: "t", state: nil)
        let long = String(repeating: "r", count: 200)
        let payloads: [DeltaPayload] = [
            DeltaPayload(register: "k", slot: slot, isFullState: true),
            DeltaPayload(register: long, slot: slot, isFullState: false),
            DeltaPayload(register: "gone", slot: tombstone, isFullState: true),
            DeltaPayload(register: "gone", slot: tombstone, isFullState: false),
        ]
        for payload in payloads {
            #expect(payload.encodedByteCount == payload.binaryEncoded().count)
            #expect(try DeltaPayload(binary: payload.binaryEncoded()) == payload)
        }
    }
}
