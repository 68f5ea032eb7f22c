import ContinuumCore
import ContinuumProtocols
import Testing

/// Peer messages that no correct node sends: each must be refused before it changes or persists
/// anything, and none may trap, whatever its fields hold.
@Suite struct HostilePeerTests {
    private static let n1 = NodeID(1), n2 = NodeID(2), n3 = NodeID(3)

    /// A 3-node cluster with n1 leading and two writes committed.
    private static func cluster() -> RaftHarness {
        var cluster = RaftHarness(nodes: 3, configuration: .init())
        let everyone: Set<NodeID> = [n1, n2, n3]
        cluster.election(at: n1)
        cluster.deliver(among: everyone)
        cluster.request(1, at: n1, .write(key: "a", value: 1))
        cluster.request(2, at: n1, .write(key: "b", value: 2))
        cluster.deliver(among: everyone)
        cluster.heartbeat(at: n1)
        cluster.deliver(among: everyone)
        return cluster
    }

    /// The frames a probe of a real cluster sent: an `appendResult` matching index 2^64-1 killed
    /// the leader, and a `requestVote` of term 2^64-1 with `transfer` crashed every node for good
    /// (the term was persisted, and `term + 1` trapped at the next election timeout).
    @Test func theProbesForgedFramesChangeNothing() {
        var cluster = Self.cluster()
        let leader = cluster.instances[Self.n1]!
        #expect(leader.role == .leader)
        #expect(leader.commitIndex == 3)
        let forgedResult = RaftMessage.appendResult(term: leader.term, success: true, matchIndex: .max, round: 0)
        let effects = cluster.instances[Self.n1]!.receive(forgedResult, from: Self.n2, now: cluster.now)
        #expect(effects.isEmpty)
        #expect(cluster.instances[Self.n1]!.messagesRefused == 1)
        #expect(cluster.instances[Self.n1]!.lastRefusal?.contains("appendResult from n2") == true)
        let forgedVote = RaftMessage.requestVote(term: .max, lastLogIndex: .max, lastLogTerm: .max, preVote: false, transfer: true)
        for node in [Self.n1, Self.n2, Self.n3] {
            let before = cluster.instances[node]!
            let effects = cluster.instances[node]!.receive(forgedVote, from: node == Self.n2 ? Self.n3 : Self.n2, now: cluster.now)
            #expect(effects.isEmpty, "nothing sent, nothing persisted")
            #expect(cluster.instances[node]!.term == before.term)
            #expect(cluster.instances[node]!.votedFor == before.votedFor)
            #expect(cluster.instances[node]!.role == before.role)
        }
        // Far ahead but within `termJumpMax` of a node's term, a vote request is a vote
        // request: the term is adopted, and the cluster elects a leader past it and commits.
        let jump = RaftMessage.requestVote(term: leader.term + RaftInstance.termJumpMax, lastLogIndex: 0, lastLogTerm: 0, preVote: false, transfer: true)
        cluster.carryOut(cluster.instances[Self.n2]!.receive(jump, from: Self.n3, now: cluster.now), at: Self.n2)
        #expect(cluster.instances[Self.n2]!.term == leader.term + RaftInstance.termJumpMax)
        cluster.heartbeat(at: Self.n1)
        cluster.deliver(among: [Self.n1, Self.n2, Self.n3])
        #expect(cluster.instances[Self.n1]!.role == .follower, "the old leader learnt the new term")
        var newLeader: NodeID?
        for attempt in 0..<6 where newLeader == nil {
            cluster.election(at: [Self.n1, Self.n2, Self.n3][attempt % 3])
            cluster.deliver(among: [Self.n1, Self.n2, Self.n3])
            newLeader = [Self.n1, Self.n2, Self.n3].first { cluster.instances[$0]!.role == .leader }
        }
        #expect(newLeader != nil)
        if let newLeader {
            #expect(cluster.instances[newLeader]!.term > leader.term + RaftInstance.termJumpMax)
            cluster.request(3, at: newLeader, .write(key: "c", value: 3))
            cluster.deliver(among: [Self.n1, Self.n2, Self.n3])
            cluster.heartbeat(at: newLeader)
            cluster.deliver(among: [Self.n1, Self.n2, Self.n3])
            #expect(cluster.replies[3].map { if case .ok = $0 { true } else { false } } == true, "\(String(describing: cluster.replies[3]))")
        }
        #expect(cluster.violations.isEmpty, "\(cluster.violations)")
    }

    /// Entries that do not follow the previous index one by one would leave holes in the log;
    /// acknowledgements of rounds a leader never sent would confirm reads it never checked.
    @Test func messagesNoStateAllowsAreRefused() {
        var cluster = Self.cluster()
        let term = cluster.instances[Self.n1]!.term
        let gap = RaftMessage.appendEntries(term: term, previousIndex: 3, previousTerm: term,
                                            entries: [LogEntry(term: term, index: 5, command: .noop)], leaderCommit: 3, round: 1, stamp: nil)
        #expect(cluster.instances[Self.n2]!.receive(gap, from: Self.n1, now: cluster.now).isEmpty)
        let backwards = RaftMessage.appendEntries(term: term, previousIndex: 3, previousTerm: term,
                                                  entries: [LogEntry(term: term - 1, index: 4, command: .noop)], leaderCommit: 3, round: 1, stamp: nil)
        #expect(cluster.instances[Self.n2]!.receive(backwards, from: Self.n1, now: cluster.now).isEmpty)
        let future = RaftMessage.appendResult(term: term, success: false, matchIndex: 0, round: 1_000_000)
        #expect(cluster.instances[Self.n1]!.receive(future, from: Self.n2, now: cluster.now).isEmpty)
        let stranger = RaftMessage.appendEntries(term: term + 1, previousIndex: 3, previousTerm: term, entries: [], leaderCommit: 3, round: 1, stamp: nil)
        #expect(cluster.instances[Self.n2]!.receive(stranger, from: NodeID(9), now: cluster.now).isEmpty)
        #expect(cluster.instances[Self.n2]!.term == term, "a non-member's term is not adopted")
        #expect(cluster.instances[Self.n2]!.messagesRefused == 3)
        #expect(cluster.instances[Self.n1]!.messagesRefused == 1)
        for node in [Self.n1, Self.n2, Self.n3] { #expect(cluster.instances[node]!.brokenInvariant() == nil) }
    }

    /// Random traffic of a working cluster, interleaved with random hostile messages whose fields
    /// are drawn mostly from the edges (0, 1, `termMax`, 2^64-1...): no trap, every instance's
    /// own invariants hold after every step, and a refused message yields no effect at all. The
    /// same traffic without hostile messages refuses nothing (the checks never refuse a correct
    /// peer).
    @Test(arguments: [false, true])
    func randomHostileMessagesNeitherTrapNorBreakInvariants(hostile: Bool) {
        let members = [Self.n1, Self.n2, Self.n3]
        var refusedWithoutEffect = 0
        var injected = 0
        for seed in UInt64(1)...40 {
            var random = DeterministicRandom(seed: seed)
            var cluster = RaftHarness(nodes: 3, configuration: .init())
            for step in 0..<400 {
                let node = members.randomElement(using: &random)!
                switch random.next() % 6 {
                case 0: cluster.election(at: node)
                case 1: cluster.heartbeat(at: node)
                case 2: cluster.request(UInt64(step + 1), at: node, .write(key: "k\(step % 4)", value: Int64(step)))
                case 3 where hostile:
                    let message = Self.hostileMessage(&random)
                    let sender = ([NodeID(0), NodeID(9)] + members).randomElement(using: &random)!
                    let refused = cluster.instances[node]!.refusal(of: message, from: sender) != nil
                    let effects = cluster.instances[node]!.receive(message, from: sender, now: cluster.now)
                    injected += 1
                    if refused {
                        #expect(effects.isEmpty, "seed \(seed) step \(step): a refused \(message) had effects")
                        refusedWithoutEffect += 1
                    }
                    cluster.carryOut(effects, at: node)
                default: cluster.deliver(among: Set(members))
                }
                for member in members {
                    if let broken = cluster.instances[member]!.brokenInvariant() {
                        Issue.record("seed \(seed) step \(step): \(member): \(broken)")
                        return
                    }
                }
            }
            let refused = members.reduce(0) { $0 + cluster.instances[$1]!.messagesRefused }
            if !hostile { #expect(refused == 0, "seed \(seed): a correct peer's message was refused: \(members.compactMap { cluster.instances[$0]!.lastRefusal })") }
        }
        if hostile {
            #expect(injected > 1_000)
            #expect(refusedWithoutEffect > injected / 2, "most hostile messages are refused (\(refusedWithoutEffect) of \(injected))")
        }
    }

    /// A suspicion of the receiver at incarnation 2^64-1 trapped in the refutation's `+ 1`.
    @Test func aSuspicionAtTheLargestIncarnationIsRefused() {
        var membership = Membership(node: Self.n1, seeds: [], knownMembers: [Self.n2], configuration: .init())
        var random = DeterministicRandom(seed: 1)
        _ = membership.start(now: .zero, random: &random)
        for incarnation in [UInt64.max, Membership.incarnationMax] {
            let suspicion = MembershipUpdate(node: Self.n1, status: .suspect, incarnation: incarnation)
            _ = membership.receive(.ping(sequence: 7, updates: [suspicion]), from: Self.n2, now: .zero, random: &random)
            let aboutN2 = MembershipUpdate(node: Self.n2, status: .unreachable, incarnation: incarnation)
            _ = membership.receive(.ping(sequence: 8, updates: [aboutN2]), from: Self.n2, now: .zero, random: &random)
        }
        #expect(membership.incarnation == 0)
        #expect(membership.updatesRefused == 4)
        #expect(membership.reachableMembers == [Self.n2], "an unreachable claim past the bound changed nothing")
        // Just below the bound, a suspicion is refuted as any other, with an incarnation peers accept.
        let highest = MembershipUpdate(node: Self.n1, status: .suspect, incarnation: Membership.incarnationMax - 1)
        _ = membership.receive(.ping(sequence: 9, updates: [highest]), from: Self.n2, now: .zero, random: &random)
        #expect(membership.incarnation == Membership.incarnationMax)
    }

    /// Three instances of `I`, per seed: after `setUp`, `steps` events, each on a random
    /// instance at a later time, given a random sender (a member, a stranger, or the node
    /// itself). Returns the effects they produced, so that a test can tell the events reached
    /// the protocol.
    private static func hostileRun<I: ProtocolInstance>(
        _ configuration: I.Configuration, seeds: ClosedRange<UInt64> = 1...20, steps: Int,
        setUp: (inout I, Duration) -> Void = { _, _ in },
        event: (inout I, inout DeterministicRandom, _ sender: NodeID, _ step: Int, _ now: Duration) -> [I.Effect]
    ) -> Int {
        let members = [n1, n2, n3]
        var effects = 0
        for seed in seeds {
            var random = DeterministicRandom(seed: seed)
            var instances = members.map { node in
                I(configuration: configuration, context: InstanceContext(node: node, members: members, random: DeterministicRandom(seed: node.rawValue)),
                  durable: nil)
            }
            var now = Duration.seconds(1)
            for index in instances.indices {
                _ = instances[index].start(now: now)
                setUp(&instances[index], now)
            }
            for step in 0..<steps {
                now += .milliseconds(Int64(random.next() % 50))
                let target = Int(random.next() % 3)
                let sender = ([NodeID(0), NodeID(9)] + members).randomElement(using: &random)!
                effects += event(&instances[target], &random, sender, step, now).count
            }
        }
        return effects
    }

    /// Transactions: random lock, prepare, decision and answer messages with edge-valued
    /// identifiers, steps and values, from members, strangers and the node itself. None may trap.
    @Test func randomTransactionMessagesDoNotTrap() {
        let members = [Self.n1, Self.n2, Self.n3]
        let effects = Self.hostileRun(TransactionInstance.Configuration(), steps: 500) { (instance: inout TransactionInstance, random, sender, _, now) in
            instance.receive(Self.hostileTransactionMessage(&random, members: members), from: sender, now: now)
        }
        // The messages reach the protocol (locks granted, prepares voted, queries answered).
        #expect(effects > 2_000, "\(effects) effects")
    }

    /// Replication and membership: random deltas, acknowledgements, read requests and replies
    /// and probes with edge-valued epochs, sequence numbers, certificate times and
    /// incarnations, between gossip ticks and pushes. None may trap.
    @Test func randomReplicationMessagesDoNotTrap() {
        let members = [Self.n1, Self.n2, Self.n3]
        let bottom = AnyReplicated(GSet<UInt64>())
        let effects = Self.hostileRun(ReplicationInstance.Configuration(), steps: 400, setUp: { instance, now in
            _ = instance.handle(.declare(id: 1, register: "r", bottom: bottom), now: now)
        }) { (instance: inout ReplicationInstance, random, sender, step, now) in
            switch random.next() % 4 {
            case 0: return instance.timerFired(.gossip, now: now)
            case 1: return instance.timerFired(.push, now: now)
            default: return instance.receive(Self.hostileReplicationMessage(&random, members: members, value: UInt64(step)), from: sender, now: now)
            }
        }
        #expect(effects > 2_000, "\(effects) effects")
    }

    private static func hostileReplicationMessage(_ random: inout DeterministicRandom, members: [NodeID], value: UInt64) -> ReplicationMessage {
        func edge() -> UInt64 { Self.edge(&random) }
        func flag() -> Bool { random.next() % 2 == 0 }
        let register = ["r", "other", ""].randomElement(using: &random)!
        func payload() -> DeltaPayload {
            var set = GSet<UInt64>()
            let delta = set.insert(value)
            let state = flag() ? AnyReplicated(delta) : AnyReplicated(GCounter())
            let slot = RegisterSlot(generation: flag() ? 1 : max(1, edge()), typeName: state.typeName, state: state)
            return DeltaPayload(register: register, slot: slot, isFullState: flag())
        }
        func vector() -> FreshnessVector {
            Dictionary((([NodeID(9)] + members).map { ($0, Int64(bitPattern: edge())) }), uniquingKeysWith: { $1 })
        }
        func updates() -> [MembershipUpdate] {
            [MembershipUpdate(node: ([NodeID(9)] + members).randomElement(using: &random)!,
                              status: [MemberStatus.alive, .suspect, .unreachable].randomElement(using: &random)!, incarnation: edge())]
        }
        switch random.next() % 6 {
        case 0:
            return .deltas(epoch: flag() ? 1 : edge(), batch: flag() ? value % 5 : edge(), since: edge(), (0..<Int(random.next() % 3)).map { _ in payload() },
                           certificate: flag() ? vector() : nil,
                           relay: RelayReport(sentAt: Int64(truncatingIfNeeded: edge()), held: flag() ? vector() : [:], withheld: flag() ? [n1] : []))
        case 1: return .acks(epoch: flag() ? 1 : edge(), batch: flag() ? value % 5 : edge(), wanting: flag() ? [register] : [])
        case 2: return .readRequest(epoch: edge(), read: edge(), registers: [register])
        case 3: return .readReply(epoch: flag() ? 1 : edge(), read: edge(), [payload()], certificate: vector())
        case 4: return .membership(.ping(sequence: edge(), updates: updates()))
        default: return .membership(.pingRequest(sequence: edge(), target: ([NodeID(9)] + members).randomElement(using: &random)!, updates: updates()))
        }
    }

    private static func hostileTransactionMessage(_ random: inout DeterministicRandom, members: [NodeID]) -> TransactionMessage {
        func edge() -> UInt64 { Self.edge(&random) }
        func flag() -> Bool { random.next() % 2 == 0 }
        let id = TransactionID(timestamp: edge(), coordinator: ([NodeID(0), NodeID(9)] + members).randomElement(using: &random)!,
                               sequence: random.next() % 2 == 0 ? random.next() % 4 : edge())
        let keys = ["a", "b", ""]
        func value() -> TransactionValue {
            flag() ? .int(Int64(bitPattern: edge())) : .list((0..<Int(random.next() % 3)).map { _ in Int64(bitPattern: edge()) })
        }
        let writes = (0..<Int(random.next() % 3)).map { _ in TransactionWrite(key: keys.randomElement(using: &random)!, value: value()) }
        switch random.next() % 9 {
        case 0:
            let requests = (0..<Int(random.next() % 3)).map { _ in
                LockRequest(key: keys.randomElement(using: &random)!, mode: flag() ? .shared : .exclusive)
            }
            return .lock(id, step: edge(), requests)
        case 1: return .locked(id, step: edge(), writes)
        case 2: return .refused(id, reason: "hostile", retryable: flag())
        case 3: return .prepare(id, writes)
        case 4: return .prepared(id, yes: flag())
        case 5: return .decision(id, commit: flag())
        case 6: return .decisionApplied(id)
        case 7: return .decisionQuery(id)
        default: return .release(id)
        }
    }

    private static func edge(_ random: inout DeterministicRandom) -> UInt64 {
        let edges: [UInt64] = [0, 1, 2, 3, RaftInstance.termMax - 1, RaftInstance.termMax, RaftInstance.termMax + 1, .max - 1, .max]
        return random.next() % 3 == 0 ? random.next() : edges.randomElement(using: &random)!
    }

    private static func hostileMessage(_ random: inout DeterministicRandom) -> RaftMessage {
        func edge() -> UInt64 { Self.edge(&random) }
        func flag() -> Bool { random.next() % 2 == 0 }
        switch random.next() % 10 {
        case 0: return .requestVote(term: edge(), lastLogIndex: edge(), lastLogTerm: edge(), preVote: flag(), transfer: flag())
        case 1: return .vote(term: edge(), granted: flag(), preVote: flag())
        case 2:
            let previous = edge()
            let count = Int(random.next() % 3)
            let entries = (0..<count).map { offset in
                LogEntry(term: edge(), index: random.next() % 2 == 0 ? previous &+ 1 &+ UInt64(offset) : edge(), command: .noop)
            }
            return .appendEntries(term: edge(), previousIndex: previous, previousTerm: edge(), entries: entries, leaderCommit: edge(),
                                  round: edge(), stamp: flag() ? FreshnessStamp(index: edge(), leaderTime: Int64(bitPattern: edge())) : nil)
        case 3: return .appendResult(term: edge(), success: flag(), matchIndex: edge(), round: edge())
        case 4: return .installSnapshot(term: edge(), lastIndex: edge(), lastTerm: edge(), offset: edge(), chunk: [1, 2, 3], done: flag(), round: edge())
        case 5: return .snapshotProgress(term: edge(), lastIndex: edge(), received: edge(), accepted: flag(), round: edge())
        case 6: return .timeoutNow(term: edge())
        case 7: return .forwardedResult(request: edge(), .written, index: edge())
        case 8: return .readIndexReply(read: edge(), index: edge())
        default: return .readIndexRequest(read: edge())
        }
    }
}
