import ContinuumCore
import DequeModule

/// A bug that can be planted in replication so that tests can show the checkers catch its
/// class. Never set outside tests.
public enum PlantedReplicationBug: String, Sendable, CaseIterable {
    /// Treat a delta-interval as acknowledged as soon as it is sent: a lost message is never
    /// resent.
    case forgetUnacknowledgedDeltas = "forget-unacknowledged-deltas"
    /// Send nothing when a peer needs the whole state (new, restarted, or too far behind).
    case skipFullStateFallback = "skip-full-state-fallback"
    /// Count a shipment that starts after an earlier one as delivered when its batch is
    /// acknowledged, even when the earlier one's batch never arrived (and let a receiver adopt a
    /// certificate without every batch it builds on): a lost push is acknowledged over and
    /// never resent.
    case acknowledgeAcrossGaps = "acknowledge-across-gaps"
}

/// A derived register: a function of other registers' states, kept up to date at every
/// replica as its inputs grow (Lasp's dataflow). Not replicated itself: every replica computes
/// it from its own merged inputs, so derived registers converge when their inputs do.
/// `compute` must be monotone for threshold reads on the result to mean anything; it returns
/// nil when its inputs are not of the types it expects (say, an input deleted and declared
/// again with another type), and the derived register is then absent.
public struct DerivedDefinition: Sendable {
    public var name: String
    public var inputs: [String]
    public var compute: @Sendable ([AnyReplicated]) -> AnyReplicated?

    public init(name: String, inputs: [String], compute: @escaping @Sendable ([AnyReplicated]) -> AnyReplicated?) {
        self.name = name
        self.inputs = inputs
        self.compute = compute
    }
}

/// Counters of what the instance did.
public struct ReplicationStatistics: Sendable, Equatable {
    public var deltaPayloadsSent = 0
    public var fullStatesSent = 0
    /// Payloads received that carried a register's whole state, and deltas received.
    public var fullStatesReceived = 0
    public var deltaPayloadsReceived = 0
    /// Payloads shipped again from the acknowledgement (or whole) because what was shipped
    /// before went unacknowledged for the retransmission timeout.
    public var retransmissions = 0
    /// Times a member became unreachable or reachable again (SWIM).
    public var reachabilityChanges = 0
    /// Probe ticks that fired too late to judge a probe (this node was held up).
    public var lateProbeTicks = 0
    public var bufferOverflows = 0
    /// Freshness certificates: sent with a batch; withheld on a gossip tick because the batch
    /// could not bring the neighbour up to date (its backlog was larger than a tick, a batch
    /// was full, a join stopped short); adopted on arrival; and refused on arrival because a
    /// batch the certificate builds on was missing, or the batch held registers this node
    /// lacks.
    public var certificatesSent = 0
    public var certificatesWithheld = 0
    public var certificatesAdopted = 0
    public var certificatesRefusedGap = 0
    public var certificatesRefusedWanting = 0
    /// Lazy relays: deltas received from their makers and held back from a neighbour; of
    /// those, relays the neighbour turned out to hold (never shipped), and relays that went
    /// because they fell due or their maker became unreachable.
    public var relaysHeldBack = 0
    public var relaysSpared = 0
    public var relaysDue = 0
    /// Relays held back now (a gauge): one per neighbour, maker and register at most.
    public var relaysWaiting = 0
    public var rejectedMessages = 0
    public var lastRejection: String?
}

/// Available registers: delta-state anti-entropy over a SWIM-style membership, the Lasp end of
/// the spectrum (Almeida, Shoker and Baquero, "Delta State Replicated Data Types", 2018,
/// Algorithm 2, per register; Meiklejohn and Van Roy, "Lasp", 2015, for threshold reads and
/// dataflow).
///
/// Deltas travel over a sparse overlay, as the paper's algorithm allows (it is stated for any
/// connected neighbor graph): each node's neighbors are its `ringNeighbors` nearest reachable
/// members on each side of a ring ordered by node id, plus "fingers" at ring distances 4, 8,
/// 16, … (as in Chord), so the overlay has about `2·ringNeighbors + log2 N` edges per node and a
/// diameter of about log2 N hops. A full mesh would make every update cost N² messages.
///
/// Every register keeps a bounded buffer of numbered deltas: its own updates and every received
/// delta that changed its state (so deltas travel transitively, hop by hop). For each neighbor
/// and register it remembers the highest sequence number the neighbor acknowledged, and ships
/// the join of the deltas after it: after local updates (one batch per neighbour for the updates
/// made before the push timer fires) and on every gossip tick (for the registers that neighbour
/// is behind on, oldest first), in batches of at most `batchBytesMax` bytes. Deltas that came
/// from the neighbor itself are not sent back. Past `deltaBufferMax` deltas, the two oldest are
/// joined into one, so a slow neighbour gets a larger delta, not the whole state. A neighbor that
/// never acknowledged a register gets the join of every delta of it that did not come from that
/// neighbour, when the buffer still holds the register's whole history here (it was created in
/// this incarnation and nothing was dropped; a register that came from the neighbour is not sent
/// back), else the whole state (a restarted node's registers, a new neighbour after garbage
/// collection). A payload that adds nothing here tells what its sender holds: the deltas pending
/// for the sender that it covers count as acknowledged, so a full mesh relays each update once,
/// not twice (Enes et al., "Efficient Synchronization of State-based CRDTs", 2019, measure how
/// much redundant state plain delta propagation sends over meshes). Deltas are dropped once
/// every neighbor has acknowledged them. An unreachable node stops being a neighbor, but for
/// `absentNeighbourRetention` its acknowledgements still hold back the dropping, so that a node
/// that was only slow for a while (its probes unanswered under load) or restarted gets the
/// deltas it missed when it returns; past that it gets whole states. A node writes deltas to
/// its store, and a register's whole state once the deltas written since the last one would
/// outgrow it.
/// What goes to one neighbour is a stream of numbered batches. The neighbour acknowledges a
/// batch by its number once it has joined it durably, not payload by payload: the sender
/// remembers what each batch shipped of each register and counts it as delivered (a shipment
/// that starts after an earlier one only once that one is delivered too). Acknowledgements
/// name the sender's incarnation (`epoch`), so that an acknowledgement for a previous life
/// never drops a delta of this one.
///
/// Lazy relays (after the lazy push of Leitão, Pereira and Rodrigues' Plumtree, with
/// certificates as the "I have it" messages): a delta received from the node that made it,
/// when that node ships to every neighbour of this node itself (in a full mesh, always), is not
/// relayed on the next tick. It waits, per neighbour, until the neighbour reports holding it or
/// `lazyRelayDelay` passes (or its maker becomes unreachable here), and only then goes, as
/// Algorithm 2 would have sent it. A neighbour reports on its ticks, for each node whose
/// certificate it adopted from that node itself, the node's own entry: it holds every delta
/// the node made and held then, which covers each delta shipped by the node before it (every
/// batch carries its send time). A relay reported held counts as acknowledged and is dropped
/// unsent. While relays of a maker wait for a neighbour, the certificate sent to it leaves that
/// maker's entry out (the neighbour may lack what it covers), and a wait that holds back
/// anything else (a delta made here behind it) withholds the certificate.
///
/// Updates apply locally, persist and are acknowledged without waiting for the network.
public struct ReplicationInstance: ProtocolInstance {
    public static let registerNameBytesMax = 255
    /// Registers one bounded read may ask a replica for (a derived register's inputs), at most.
    public static let readRequestRegistersMax = 1_024

    public struct Configuration: Sendable {
        public var gossipInterval: Duration
        /// Overlay neighbors on each side of the ring (fingers come on top).
        public var ringNeighbors: Int
        /// Deltas buffered per register, at most; past it the two oldest are joined into one
        /// (peers behind them get that join, not the whole state). A join of the oldest takes
        /// the newer number, so a buffer that overflows while every peer keeps acknowledging
        /// keeps an oldest entry that takes in more and is acknowledged past only once the peers
        /// catch up by the whole bound: the bound must cover what arrives during a round trip
        /// under load (a replica keeps one entry per batch received, a writer one per push).
        /// At 128, SADDs into one set under 50 clients overflowed it, and each gossip tick
        /// shipped the set whole again.
        public var deltaBufferMax: Int
        /// Encoded bytes of one batch of payloads, at most (a single larger payload goes alone).
        public var batchBytesMax: Int
        public var thresholdReadsMax: Int
        /// Bounded reads waiting for a fresher answer, at most.
        public var boundedReadsMax: Int
        /// Clock bounds for freshness certificates.
        public var freshness: FreshnessGate.Configuration
        /// Send freshness certificates: with every complete batch on a gossip tick, and alone
        /// when no delta is pending. Costs about 10 bytes per member, per neighbour and tick, so
        /// it suits clusters of tens of nodes; without it bounded reads must ask every replica.
        public var certificateHeartbeats: Bool
        /// What was shipped to a neighbour is shipped again (from its acknowledgement, or whole)
        /// only after this long without an acknowledgement, and only once the neighbour
        /// acknowledged nothing for this long or acknowledged a later batch: a gossip tick does
        /// not resend a large delta or state to a peer that is still joining the previous copy.
        public var retransmitInterval: Duration
        /// How long the push timer waits after the first local change before it ships: the
        /// changes made meanwhile share one batch per neighbour (zero: the next turn).
        public var pushDelay: Duration
        /// How long a neighbour that became unreachable still holds back the dropping of the
        /// deltas it has not acknowledged: one that comes back within it (a busy node whose
        /// probes went unanswered for a while, a restart) gets the deltas it missed, not every
        /// changed register's whole state. Meanwhile each register keeps up to `deltaBufferMax`
        /// deltas (older ones joined), whatever the absent neighbour's fate.
        public var absentNeighbourRetention: Duration
        /// Lazy relays: a delta received from the node that made it, which ships it to each of
        /// its neighbours itself, is relayed to a neighbour only once this long has passed
        /// without the neighbour reporting that it holds it (or at once when its maker is
        /// unreachable here). Nil: every received delta is relayed on the next tick. Needs
        /// `certificateHeartbeats` (the reports ride on them); without them it is off.
        public var lazyRelayDelay: Duration?
        public var membership: Membership.Configuration
        public var catalog: ReplicableTypeCatalog
        /// Nodes to join through; nil for a static cluster where every member is known at start.
        public var seeds: [NodeID]?
        public var plantedBug: PlantedReplicationBug?

        public init(gossipInterval: Duration = .milliseconds(200), ringNeighbors: Int = 2,
                    deltaBufferMax: Int = 4_096, batchBytesMax: Int = 64 * 1024, thresholdReadsMax: Int = 10_000,
                    boundedReadsMax: Int = 10_000, freshness: FreshnessGate.Configuration = .init(), certificateHeartbeats: Bool = true,
                    retransmitInterval: Duration? = nil, pushDelay: Duration = .zero, absentNeighbourRetention: Duration = .seconds(30),
                    lazyRelays: Bool = true, lazyRelayDelay: Duration? = nil,
                    membership: Membership.Configuration = .init(),
                    catalog: ReplicableTypeCatalog = .standard,
                    seeds: [NodeID]? = nil, plantedBug: PlantedReplicationBug? = nil) {
            precondition(gossipInterval > .zero && ringNeighbors >= 1 && deltaBufferMax >= 1 && batchBytesMax >= 1)
            self.gossipInterval = gossipInterval
            self.ringNeighbors = ringNeighbors
            self.deltaBufferMax = deltaBufferMax
            self.batchBytesMax = batchBytesMax
            self.thresholdReadsMax = thresholdReadsMax
            self.boundedReadsMax = boundedReadsMax
            self.freshness = freshness
            self.certificateHeartbeats = certificateHeartbeats
            self.retransmitInterval = retransmitInterval ?? gossipInterval * 5
            self.pushDelay = pushDelay
            self.absentNeighbourRetention = absentNeighbourRetention
            self.lazyRelayDelay = lazyRelays && certificateHeartbeats ? lazyRelayDelay ?? gossipInterval * 5 : nil
            self.membership = membership
            self.catalog = catalog
            self.seeds = seeds
            self.plantedBug = plantedBug
        }
    }

    /// A delta mutator over a type-erased state: mutates in place and returns the delta.
    public typealias Mutation = @Sendable (inout AnyReplicated, ReplicaID, UInt64) throws -> AnyReplicated

    public enum Command: Sendable {
        /// Creates the register with this type (given by its bottom value) if it does not exist.
        case declare(id: UInt64, register: String, bottom: AnyReplicated)
        case update(id: UInt64, register: String, typeName: String, mutation: Mutation)
        /// Declares the register with this type (given by its bottom value) if it does not exist
        /// or was deleted, then applies `mutation`, in one step: one write to the store, one
        /// delta to the neighbours. Completes with the delta it applied, not the state, so that
        /// nothing holds the state while the write is flushed (a later mutation would copy it).
        case upsert(id: UInt64, register: String, bottom: AnyReplicated, mutation: Mutation)
        case delete(id: UInt64, register: String)
        /// Answers once the register (or derived register) reaches at least `threshold`.
        case thresholdRead(id: UInt64, register: String, threshold: AnyReplicated)
        case cancelRead(id: UInt64)
        /// A read with ranked service levels (Spry bounds, Pileus choices): answers as soon as
        /// the best level still in time is met, asking every replica for its state when the
        /// local certificate is not fresh enough.
        case boundedRead(id: UInt64, register: String, levels: [ServiceLevel])
        /// Joins a state that a client carries (a session's last seen state) into the register.
        case absorb(id: UInt64, register: String, state: AnyReplicated)
        case defineDerived(id: UInt64, DerivedDefinition)
    }

    public enum Output: Sendable {
        /// A declare, update, delete or definition finished (durably, when it changed state);
        /// carries the register's state after it.
        case completed(id: UInt64, register: String, Result<AnyReplicated?, ReplicationError>)
        case thresholdReached(id: UInt64, AnyReplicated)
        case thresholdFailed(id: UInt64, ReplicationError)
        case boundedReadCompleted(id: UInt64, Result<BoundedReadAnswer, ReplicationError>)
        /// A register's or derived register's local state changed (nil: deleted).
        case changed(register: String, AnyReplicated?)
        case reachabilityChanged(NodeID, reachable: Bool)
    }

    public enum Timer: Hashable, Sendable {
        case gossip
        /// Ships the registers changed here since the last push (set when the first of them
        /// changes, after no delay: the updates that arrive before it fires share its batch).
        case push
        case membership(Membership.Timer)
        case readDeadline(UInt64)
    }

    public typealias Message = ReplicationMessage
    public typealias Durable = ReplicaDurableState

    /// A received delta that its sender made itself and shipped to each of its neighbours: this
    /// node relays it to them lazily. `sentAt` is the sender's clock when it shipped it; `due`
    /// (this node's clock) is when the relay goes anyway.
    struct LazyStamp {
        var sentAt: Int64
        var due: Duration
    }

    /// The relays of one maker's deltas held back from one neighbour: registers with the stamp
    /// of their oldest waiting relay, oldest first, each register once. A register that waits
    /// again while it is queued keeps its place: when it is released it goes back into the
    /// backlog, and the next shipment holds back what still waits. So a queue holds at most
    /// one entry per register, however often a register changes meanwhile.
    struct HeldBackQueue {
        private(set) var entries: Deque<(register: RegisterKey, stamp: LazyStamp)> = []
        private var queued: Set<RegisterKey> = []

        var first: (register: RegisterKey, stamp: LazyStamp)? { entries.first }
        var isEmpty: Bool { entries.isEmpty }
        var count: Int { entries.count }

        /// Queues `register` unless it is queued already; whether it was.
        @discardableResult
        mutating func append(_ register: RegisterKey, _ stamp: LazyStamp) -> Bool {
            guard queued.insert(register).inserted else { return false }
            entries.append((register, stamp))
            return true
        }

        mutating func removeFirst() {
            queued.remove(entries.removeFirst().register)
        }
    }

    /// What a lazy relay to one neighbour does now.
    enum RelayDisposition {
        /// The neighbour holds it: skip it, as a delta that came from the neighbour.
        case held
        /// Ship it (due, or its maker is unreachable here).
        case ship
        /// Hold it back, and what follows it in the buffer.
        case wait
    }

    /// What this node knows, at one time, of what one neighbour holds: its relay report's
    /// `held`, and the members reachable here.
    struct RelayView {
        var now: Duration
        var held: FreshnessVector
        var reachable: Set<NodeID>

        func disposition(of stamp: LazyStamp, from source: NodeID) -> RelayDisposition {
            if let time = held[source], time >= stamp.sentAt { return .held }
            return stamp.due <= now || !reachable.contains(source) ? .ship : .wait
        }
    }

    /// Where a shipment stopped at a lazy relay that must wait: its maker and stamp; for each
    /// maker of lazy relays after it (held back with it), the first one's stamp; and whether
    /// anything else after it (a delta made here, or one relayed eagerly) is held back too,
    /// which leaves the peer behind.
    struct Wait {
        var maker: NodeID
        var stamp: LazyStamp
        var later: [NodeID: LazyStamp]
        var leavesBehind: Bool

        var makers: [NodeID] { Set(later.keys).union([maker]).sorted() }
    }

    struct DeltaBuffer {
        /// Numbered deltas (`source`: the neighbor a received delta came from), each covering its own number, except the first, which covers the
        /// numbers from `headFirst` to its own (older deltas joined into it). `local`: made
        /// here, every delta joined in it; `lazy`: relayed lazily.
        /// A deque: an overflow takes the oldest off the front, and an array would shift every
        /// entry after it (`deltaBufferMax` of them) on each update of a full buffer.
        var entries: Deque<(sequence: UInt64, delta: RegisterSlot, source: NodeID?, local: Bool, lazy: LazyStamp?)> = []
        var lastSequence: UInt64 = 0
        var headFirst: UInt64 = 1
        /// The register was created here in this incarnation with its first delta (declared,
        /// or first received): while nothing is dropped (`headFirst` 1), the join of the
        /// entries is its whole state at this node. A register restored from the store is not.
        var wholeHistory = false
        /// Once the register was written to the store in this incarnation: the size of its
        /// state as last written whole, and the bytes of deltas written after it. Once the
        /// deltas would outgrow the state, the state is written whole again (so a write costs
        /// about its delta's bytes, amortized, at any size of the state). Kept with the buffer,
        /// which every write of the register has just touched, rather than in a table of its
        /// own: one lookup fewer, in a table that misses the cache at 100,000 registers.
        var written: (whole: Int, deltas: Int)?

        enum Interval {
            /// Every delta after the acknowledgement up to `upTo` came from the peer itself, or
            /// the peer holds it (a lazy relay); `upTo` is the last, or where a relay waits.
            case nothingNew(upTo: UInt64)
            /// The join of the deltas up to number `upTo` (the last, or where the join stopped);
            /// `local` when every delta in it was made here.
            case deltas(RegisterSlot, upTo: UInt64, local: Bool)
            /// Some deltas after the acknowledgement were dropped: send the whole state.
            case unavailable
        }

        /// Numbers and keeps `delta`. Past `limit` entries, the two oldest are joined into one
        /// (which covers both their numbers): a peer behind them gets their join, at about the
        /// size of what changed, rather than the whole state. Says whether it joined any.
        mutating func append(_ delta: RegisterSlot, from source: NodeID?, lazy: LazyStamp? = nil, keeping limit: Int) -> Bool {
            lastSequence += 1
            if entries.isEmpty { headFirst = lastSequence }
            entries.append((lastSequence, delta, source, source == nil, lazy))
            guard entries.count > max(limit, 2) else { return false }
            // The oldest, off the front, takes in the next in place and replaces it under the
            // next's (newer) number.
            var oldest = entries.removeFirst()
            if (try? oldest.delta.formJoin(entries[0].delta)) != nil { entries[0].delta = oldest.delta }
            if entries[0].source != oldest.source { entries[0].source = nil }
            entries[0].local = entries[0].local && oldest.local
            // Lazy only when both were, from the same maker: held once the later is, due when
            // the earlier is.
            if let later = entries[0].lazy, let earlier = oldest.lazy, entries[0].source != nil {
                entries[0].lazy = LazyStamp(sentAt: max(later.sentAt, earlier.sentAt), due: min(later.due, earlier.due))
            } else {
                entries[0].lazy = nil
            }
            return true
        }

        /// Joins `delta`, a local update, into the last entry when that one is local too,
        /// renumbered as the next number (so it covers the numbers after the entry before it up
        /// to the new one: a peer that acknowledged the old number gets it again, never less).
        /// Says whether it did (a join that fails leaves the entry as it was).
        mutating func joinIntoLast(_ delta: RegisterSlot) -> Bool {
            guard let last = entries.indices.last, entries[last].source == nil,
                  (try? entries[last].delta.formJoin(delta)) != nil else { return false }
            lastSequence += 1
            entries[last].sequence = lastSequence
            return true
        }

        /// Drops the entries numbered up to `floor` (acknowledged by every neighbour).
        mutating func drop(upTo floor: UInt64) {
            entries.removeAll { $0.sequence <= floor }
            // An idle register keeps no buffer storage (removeAll(where:) keeps the capacity).
            if entries.isEmpty { entries = [] }
            headFirst = entries.first?.sequence ?? lastSequence + 1
        }

        /// What a peer that never acknowledged this register needs: the join of every delta
        /// that did not come from it, when the buffer still holds the register's whole history
        /// here. Deltas that came from the peer are durable there (it sent them), so a register
        /// that came from the peer is not sent back to it; otherwise the whole state.
        func intervalForNewcomer(_ peer: NodeID, joiningAtMost limit: Int = .max, relays: RelayView? = nil,
                                 waiting: inout Wait?) -> Interval {
            wholeHistory ? interval(after: 0, for: peer, joiningAtMost: limit, relays: relays, waiting: &waiting) : .unavailable
        }

        /// Whether the interval after `acknowledged` is worth keeping for the other
        /// neighbours: it joins more than one delta (one delta is not computed, only copied),
        /// and every delta in it was made here (none came from a neighbour), so it is the same
        /// for every neighbour.
        func isSharedJoin(after acknowledged: UInt64) -> Bool {
            guard let last = entries.last, last.sequence > acknowledged, entries.count >= 2,
                  entries[entries.count - 2].sequence > acknowledged else { return false }
            return !entries.contains { $0.sequence > acknowledged && $0.source != nil }
        }

        /// The join of the deltas after `acknowledged` that did not come from `peer`: of the
        /// first `limit` of them at most, up to where it stopped (the rest goes in a later
        /// shipment, so that one shipment costs a bounded join however far behind the peer is).
        /// With `relays`, a lazy relay the peer holds is skipped, and one that must wait stops
        /// the join before it (`waiting` then names its maker and stamp).
        func interval(after acknowledged: UInt64, for peer: NodeID, joiningAtMost limit: Int, relays: RelayView?,
                      waiting: inout Wait?) -> Interval {
            guard !entries.isEmpty, headFirst <= acknowledged + 1 else { return .unavailable }
            // Joined in place: the first delta's storage is copied once at most (it may be the
            // join of many old deltas), not once per delta after it.
            var result: RegisterSlot?
            var joined = 0
            var covered = acknowledged
            var local = true
            for entry in entries where entry.sequence > acknowledged {
                if entry.source != peer {
                    if let stamp = entry.lazy, let relays, let source = entry.source {
                        switch relays.disposition(of: stamp, from: source) {
                        case .held:
                            covered = entry.sequence
                            continue
                        case .wait:
                            var wait = Wait(maker: source, stamp: stamp, later: [:], leavesBehind: false)
                            for later in entries where later.sequence > entry.sequence && later.source != peer {
                                if let maker = later.source, let stamp = later.lazy {
                                    if maker != source, wait.later[maker] == nil { wait.later[maker] = stamp }
                                } else {
                                    wait.leavesBehind = true
                                }
                            }
                            waiting = wait
                            return result.map { .deltas($0, upTo: covered, local: local) } ?? .nothingNew(upTo: covered)
                        case .ship:
                            break
                        }
                    }
                    if joined == limit { break }
                    joined += 1
                    local = local && entry.local
                    if result == nil {
                        result = entry.delta
                    } else {
                        _ = try? result!.formJoin(entry.delta)
                    }
                }
                covered = entry.sequence
            }
            return result.map { .deltas($0, upTo: covered, local: local) } ?? .nothingNew(upTo: covered)
        }
    }

    /// What one batch shipped of one register: the deltas numbered after `after` up to `upTo`.
    /// `after` is nil when the shipment starts at what the peer acknowledged (or is whole), so
    /// that the peer holds everything up to `upTo` once it has joined it; otherwise the peer
    /// does only if it also holds what was shipped up to `after`, which the sender knows once
    /// that is acknowledged.
    struct Shipment {
        var register: RegisterKey
        var after: UInt64?
        var upTo: UInt64
    }

    /// What was shipped of a register to a neighbour and is not acknowledged yet: the last
    /// sequence number shipped, and when the shipment that the later ones build on (from the
    /// acknowledgement, or whole) went, in batch `anchorBatch`; the latest went in `lastBatch`.
    /// Later shipments carry only the deltas after `upTo`. A tick ships again from the
    /// acknowledgement once `retransmitInterval` has passed and something says a batch was
    /// lost: the neighbour acknowledged a later batch than `lastBatch` (batches travel in
    /// order), or acknowledged nothing for the interval. A neighbour that is only slow, still
    /// acknowledging batches one after the other, is not sent again what is queued at it,
    /// which would keep it busier still (under a saturating load, retransmissions while acks
    /// flowed made tens of thousands of resends). Each shipment again without an
    /// acknowledgement doubles the wait (`retries`, up to 4 times the interval). A certificate
    /// needs the peer to hold every batch since the oldest `anchorBatch`.
    struct InFlight {
        var upTo: UInt64
        var since: Duration
        var retries: Int
        var anchorBatch: UInt64
        var lastBatch: UInt64
    }

    struct OutgoingStream {
        /// Batches remembered unacknowledged, at most: those among the last this many numbers.
        /// An older one is forgotten (what it shipped then counts as delivered only after a
        /// shipment again from the acknowledgement, which the retransmission makes).
        static let unacknowledgedMax = 8_192
        var next: UInt64 = 1
        var unacknowledged: [UInt64: [Shipment]] = [:]
        /// The highest batch number the neighbour acknowledged, and when the last
        /// acknowledgement came.
        var highestAcknowledged: UInt64 = 0
        var lastAcknowledgedAt: Duration?
    }

    /// The batch numbers this node received from one incarnation of a peer: the last `window`
    /// numbers at most (a batch the sender's certificate builds on is older only when the
    /// sender ships more than 8,192 batches to this node before an acknowledgement returns).
    struct IncomingStream {
        static let window: UInt64 = 8_192
        let epoch: UInt64
        private(set) var received: Set<UInt64> = []
        private(set) var highest: UInt64 = 0

        init(epoch: UInt64) { self.epoch = epoch }

        mutating func insert(_ batch: UInt64) {
            guard batch >= highest || highest - batch < Self.window else { return }
            received.insert(batch)
            highest = max(highest, batch)
            if received.count > 2 * Int(Self.window) { received = received.filter { highest - $0 < Self.window } }
        }

        /// Whether every batch numbered from `since` through `batch` was received (none to
        /// check when `since` is past `batch`). Numbers older than the window count as missing.
        func holds(from since: UInt64, through batch: UInt64) -> Bool {
            guard since <= batch else { return true }
            guard batch <= highest, highest - since < Self.window else { return false }
            return (since...batch).allSatisfy { received.contains($0) }
        }
    }

    struct PendingRead {
        var register: String
        var threshold: AnyReplicated
    }

    struct BoundedRead {
        var register: String
        var levels: [ServiceLevel]
        var startedAt: Duration
        /// Replicas that answered this read with states taken after it began.
        var replied: Set<NodeID> = []
        /// Certificates that came with the replies.
        var certified: [NodeID: Duration] = [:]
        var asked = false
    }

    public let node: NodeID
    public private(set) var epoch: UInt64
    public private(set) var slots: [RegisterKey: RegisterSlot]
    public private(set) var membership: Membership
    private var counters = ReplicationStatistics()
    public var statistics: ReplicationStatistics {
        var statistics = counters
        statistics.lateProbeTicks = membership.lateProbeTicks
        statistics.relaysWaiting = heldBack.values.reduce(0) { $0 + $1.values.reduce(0) { $0 + $1.count } }
        return statistics
    }
    /// Batches shipped and not acknowledged yet that this node remembers, over all peers.
    public var batchesAwaitingAcknowledgement: Int { outgoing.values.reduce(0) { $0 + $1.unacknowledged.count } }
    public private(set) var derivedValues: [String: AnyReplicated] = [:]
    public private(set) var derived: [DerivedDefinition] = []

    private let configuration: Configuration
    private var random: DeterministicRandom
    private var buffers: [RegisterKey: DeltaBuffer] = [:]
    private var acknowledged: [NodeID: [RegisterKey: UInt64]] = [:]
    /// Shipped to a neighbour and not acknowledged yet, per register. Entries go once the
    /// neighbour acknowledges them.
    private var inFlight: [NodeID: [RegisterKey: InFlight]] = [:]
    /// The stream of batches to each peer: the next batch number, and what each batch not yet
    /// acknowledged shipped. Numbers are never reused within this incarnation (a peer that
    /// stops being a neighbour and comes back continues where it was).
    private var outgoing: [NodeID: OutgoingStream] = [:]
    /// The batch numbers received from each peer's current incarnation.
    private var incoming: [NodeID: IncomingStream] = [:]
    /// Within one push or tick, the join of a register's deltas after a sequence number when
    /// they were all made here: the same for every neighbour acknowledged up to that number,
    /// so it is computed once, not once per neighbour (13% of a one-key SADD's writer). Only
    /// joins of two deltas or more are kept: a push of many registers with one delta each
    /// would pay two lookups per register to save a copy. Its payload is kept too, once
    /// encoded, so that it is encoded once, not once per neighbour.
    typealias SharedJoins = [RegisterKey: (after: UInt64, interval: DeltaBuffer.Interval, payload: DeltaPayload?)]
    /// Deltas one shipment of a register joins, at most: a peer far behind (back from
    /// unreachable, or slow) catches up over several shipments, and no tick spends seconds
    /// joining and encoding thousands of deltas of one large register (seen: gossip ticks of
    /// 1–2.5 s on replicas under SADD into one set, each joining up to `deltaBufferMax` deltas).
    static let shipmentJoinMax = 256
    /// The wait before shipping a register again doubles at most this many times (to 4
    /// retransmit intervals).
    static let retransmitBackoffDoublings = 2
    /// For each neighbour, the registers it has not acknowledged up to their last delta (or at
    /// all): what a gossip tick looks at for it, so that a tick costs the registers that
    /// changed, not every register this node holds. A new neighbour starts behind on all.
    private var behind: [NodeID: Backlog] = [:]
    /// Registers a gossip tick takes from one neighbour's backlog, at most (a batch is bounded
    /// in bytes too): a tick costs what it ships, however many registers are behind.
    static let backlogPerTickMax = 4_096

    /// The registers one neighbour is behind on, in the order they fell behind (deterministic,
    /// unlike a set's). A tick takes the oldest; those still behind go to the back.
    struct Backlog {
        private(set) var members: Set<RegisterKey> = []
        private var order: [RegisterKey] = []
        private var head = 0

        init(_ registers: [RegisterKey] = []) {
            members = Set(registers)
            order = registers
        }

        var count: Int { members.count }

        mutating func insert(_ register: RegisterKey) {
            if members.insert(register).inserted { order.append(register) }
        }

        /// Forgets `register` (its place in the order is dropped when reached).
        mutating func remove(_ register: RegisterKey) { members.remove(register) }

        /// Up to `limit` registers, oldest first, each once; they move to the back.
        mutating func takeOldest(_ limit: Int) -> [RegisterKey] {
            var taken: [RegisterKey] = []
            var seen: Set<RegisterKey> = []
            while taken.count < limit, head < order.count {
                let register = order[head]
                head += 1
                guard members.contains(register), seen.insert(register).inserted else { continue }
                taken.append(register)
            }
            order.append(contentsOf: taken)
            if head > 1_024, head * 2 > order.count {
                order.removeFirst(head)
                head = 0
            }
            return taken
        }
    }
    private var registerCursor = 0
    /// Registers changed locally and not pushed yet; the push timer is set while it is not empty.
    private var unpushed: Set<RegisterKey> = []
    private var pendingReads: [UInt64: PendingRead] = [:]
    private var boundedReads: [UInt64: BoundedRead] = [:]
    /// This node's freshness certificate: for each other node j, a time on j's clock before
    /// which this node has merged everything j acknowledged. Volatile: after a restart it
    /// starts empty (nothing certified), which is safe.
    public private(set) var certificate: [NodeID: Duration] = [:]
    private let gate: FreshnessGate
    private let staticMembers: [NodeID]
    /// The overlay neighbors, recomputed when reachability changes.
    private var cachedNeighbors: [NodeID]?
    /// The reachable members, and for a node whether it ships to every neighbour of this node
    /// itself (so that its deltas are relayed lazily), as of the last reachability change.
    private var cachedReachable: Set<NodeID>?
    private var cachedShipsToMyNeighbours: [NodeID: Bool] = [:]
    /// Lazy relays held back, per neighbour and maker, oldest first. A tick takes those the
    /// neighbour holds or that fell due back into the neighbour's backlog.
    private var heldBack: [NodeID: [NodeID: HeldBackQueue]] = [:]
    /// What each neighbour last reported holding (its relay report's `held`).
    private var heldBy: [NodeID: FreshnessVector] = [:]
    /// For each node whose certificate this node adopted from that node itself, its own entry:
    /// this node holds every delta the node made and held before it. Volatile.
    private var adoptedDirectly: FreshnessVector = [:]
    /// Neighbours that became unreachable, and when: for `absentNeighbourRetention` their
    /// acknowledgements still count when deltas are dropped.
    private var absent: [NodeID: Duration] = [:]

    public init(configuration: Configuration, context: InstanceContext, durable: ReplicaDurableState?) {
        self.configuration = configuration
        self.node = context.node
        self.random = context.random
        self.epoch = (durable?.incarnation ?? 0) + 1
        var slots: [RegisterKey: RegisterSlot] = [:]
        for (name, encoded) in durable?.slots ?? [:] {
            do {
                slots[RegisterKey(name)] = try encoded.decode(with: configuration.catalog)
            } catch {
                preconditionFailure("\(context.node): durable register '\(name)' cannot be decoded (\(error)); is its type in the catalog?")
            }
        }
        for (name, deltas) in durable?.deltas ?? [:] {
            let key = RegisterKey(name)
            for encoded in deltas {
                do {
                    let delta = try encoded.decode(with: configuration.catalog)
                    if slots[key] == nil {
                        slots[key] = delta
                    } else {
                        _ = try slots[key]!.formJoin(delta)
                    }
                } catch {
                    preconditionFailure("\(context.node): a durable delta of register '\(name)' cannot be joined (\(error))")
                }
            }
        }
        self.slots = slots
        self.gate = FreshnessGate(configuration: configuration.freshness)
        self.staticMembers = context.members
        self.membership = Membership(
            node: context.node, seeds: configuration.seeds ?? [],
            knownMembers: configuration.seeds == nil ? context.peers : [], configuration: configuration.membership)
    }

    /// In place: a batch of n patches costs their size, not n copies of what came before
    /// (group commit joins every batch's patches with it).
    public static func accumulate(_ patch: ReplicaDurableState, into durable: inout ReplicaDurableState?) {
        if durable == nil { durable = ReplicaDurableState(incarnation: 0, slots: [:]) }
        durable!.incarnation = max(durable!.incarnation, patch.incarnation)
        for (name, slot) in patch.slots {
            durable!.slots[name] = slot
            durable!.deltas[name] = nil
        }
        for (name, deltas) in patch.deltas { durable!.deltas[name, default: []] += deltas }
    }

    public static func trafficClass(of message: ReplicationMessage) -> String {
        switch message {
        case .membership: "membership"
        case .deltas(_, _, _, let payloads, _, _): payloads.isEmpty ? "certificates" : "deltas"
        case .acks: "acks"
        case .readRequest, .readReply: "bounded reads"
        }
    }

    // MARK: - Reading

    /// The local state of a register or derived register.
    /// Membership updates refused as no correct peer sends them (`Membership.incarnationMax`).
    public var membershipUpdatesRefused: Int { membership.updatesRefused }

    public func value(of register: String) -> AnyReplicated? { value(of: RegisterKey(register)) }

    private func value(of key: RegisterKey) -> AnyReplicated? {
        slots[key]?.state ?? (derivedValues.isEmpty ? nil : derivedValues[key.name])
    }

    /// Threshold reads waiting for their register to grow.
    public var pendingReadCount: Int { pendingReads.count }
    /// How many registers the backlog of `peer` holds (registers it may be behind on).
    public func backlogCount(of peer: NodeID) -> Int { behind[peer]?.count ?? 0 }
    /// Deltas buffered over all registers (kept until every neighbour has them).
    public var bufferedDeltaCount: Int { buffers.values.reduce(0) { $0 + $1.entries.count } }

    // MARK: - Events

    public mutating func start(now: Duration) -> [Effect] {
        // The new incarnation is durable before any message names it.
        var effects: [Effect] = [.persist(ReplicaDurableState(incarnation: epoch, slots: [:]))]
        effects += translate(membership.start(now: now, random: &random), now: now)
        effects.append(.setTimer(.gossip, after: jittered(configuration.gossipInterval)))
        return effects
    }

    public mutating func timerFired(_ timer: Timer, now: Duration) -> [Effect] {
        switch timer {
        case let .membership(inner):
            return translate(membership.timerFired(inner, now: now, random: &random), now: now)
        case .gossip:
            var effects: [Effect] = [.setTimer(.gossip, after: jittered(configuration.gossipInterval))]
            let neighbors = self.neighbors()
            // Acknowledgements of members that are not neighbours now are kept (bounded by the
            // members): a node that was suspected for a while, under load, and comes back gets
            // the deltas it missed if the buffer still holds them, not the whole state of every
            // register. Those of nodes no longer members are forgotten.
            let members = Set(allMembers)
            if acknowledged.keys.contains(where: { !members.contains($0) }) { acknowledged = acknowledged.filter { members.contains($0.key) } }
            if absent.keys.contains(where: { !members.contains($0) }) { absent = absent.filter { members.contains($0.key) } }
            // The backlog of a neighbour absent for less than the retention is kept (and grows
            // with every change meanwhile): one that returns is examined for what changed, not
            // for every register. A new backlog of every register took 100,000 registers
            // 25 ticks or more to look through, with no certificate until then, after each
            // brief suspicion under load. Relays held back from it go back into its backlog.
            behind = behind.filter { neighbors.contains($0.key) || absent[$0.key] != nil }
            for (peer, queues) in heldBack where !neighbors.contains(peer) {
                heldBack[peer] = nil
                guard behind[peer] != nil else { continue }
                for (_, queue) in queues.sorted(by: { $0.key < $1.key }) {
                    for parked in queue.entries { behind[peer]!.insert(parked.register) }
                }
            }
            if heldBy.keys.contains(where: { !members.contains($0) }) { heldBy = heldBy.filter { members.contains($0.key) } }
            if adoptedDirectly.keys.contains(where: { !members.contains($0) }) {
                adoptedDirectly = adoptedDirectly.filter { members.contains($0.key) }
            }
            if inFlight.keys.contains(where: { !neighbors.contains($0) }) { inFlight = inFlight.filter { neighbors.contains($0.key) } }
            if incoming.keys.contains(where: { !members.contains($0) }) { incoming = incoming.filter { members.contains($0.key) } }
            for peer in Array(outgoing.keys) { forgetSettledBatches(to: peer, neighbour: neighbors.contains(peer)) }
            forgetLongAbsent(now: now)
            var joins = SharedJoins()
            for peer in neighbors {
                if behind[peer] == nil { behind[peer] = Backlog(slots.keys.sorted()) }
                releaseHeldBack(to: peer, now: now)
                let registers = behind[peer]!.takeOldest(Self.backlogPerTickMax)
                // A certificate only with every register the peer is behind on.
                let whole = registers.count == behind[peer]!.count
                if !whole, configuration.certificateHeartbeats { counters.certificatesWithheld += 1 }
                effects += ship(to: peer, registers: registers, now: now, retransmit: true, certifyAt: whole ? now : nil, joins: &joins)
            }
            registerCursor &+= 1
            return effects
        case let .readDeadline(id):
            return decide(id, now: now, atDeadline: true)
        case .push:
            let registers = unpushed.sorted()
            unpushed = []
            var joins = SharedJoins()
            return neighbors().flatMap { ship(to: $0, registers: registers, now: now, retransmit: false, joins: &joins) }
        }
    }

    /// What `peer` holds and which members are reachable, for lazy relays; nil when they are off.
    private mutating func relayView(for peer: NodeID, now: Duration) -> RelayView? {
        guard configuration.lazyRelayDelay != nil else { return nil }
        return RelayView(now: now, held: heldBy[peer] ?? [:], reachable: reachableSet())
    }

    /// Puts the relays held back from `peer` that it now holds, or that fell due (or whose
    /// maker became unreachable), back in its backlog, oldest first per maker.
    private mutating func releaseHeldBack(to peer: NodeID, now: Duration) {
        guard var queues = heldBack[peer], let view = relayView(for: peer, now: now) else { return }
        heldBack[peer] = nil
        for maker in queues.keys.sorted() {
            while let first = queues[maker]!.first {
                let disposition = view.disposition(of: first.stamp, from: maker)
                if case .wait = disposition { break }
                if case .held = disposition { counters.relaysSpared += 1 } else { counters.relaysDue += 1 }
                queues[maker]!.removeFirst()
                behind[peer]?.insert(first.register)
            }
            if queues[maker]!.isEmpty { queues[maker] = nil }
        }
        if !queues.isEmpty { heldBack[peer] = queues }
    }

    private mutating func reachableSet() -> Set<NodeID> {
        if let cachedReachable { return cachedReachable }
        let computed = Set(membership.reachableMembers)
        cachedReachable = computed
        return computed
    }

    /// Whether `maker`, as this node sees the members, ships to every neighbour of this node
    /// itself (its overlay neighbours include them): in a full mesh, every node.
    private mutating func shipsToMyNeighbours(_ maker: NodeID) -> Bool {
        if let known = cachedShipsToMyNeighbours[maker] { return known }
        var others = membership.reachableMembers.filter { $0 != maker }
        others.append(node)
        let direct = Set(Self.neighbors(of: maker, among: others.sorted(), ringNeighbors: configuration.ringNeighbors))
        let covers = neighbors().allSatisfy { $0 == maker || direct.contains($0) }
        cachedShipsToMyNeighbours[maker] = covers
        return covers
    }

    public mutating func receive(_ message: ReplicationMessage, from sender: NodeID, now: Duration) -> [Effect] {
        switch message {
        case let .membership(inner):
            return translate(membership.receive(inner, from: sender, now: now, random: &random), now: now)
        case let .deltas(senderEpoch, batch, since, payloads, vector, relay):
            return receiveDeltas(payloads, senderEpoch: senderEpoch, batch: batch, since: since, certificate: vector, relay: relay,
                                 from: sender, now: now)
        case let .readRequest(readerEpoch, read, registers):
            return answerReadRequest(readerEpoch: readerEpoch, read: read, registers: registers, from: sender, now: now)
        case let .readReply(readerEpoch, read, payloads, vector):
            return receiveReadReply(readerEpoch: readerEpoch, read: read, payloads, certificate: vector, from: sender, now: now)
        case let .acks(ackEpoch, batch, wanting):
            // An acknowledgement of a batch this incarnation did not ship (or already heard)
            // says nothing.
            guard ackEpoch == epoch, let shipments = outgoing[sender]?.unacknowledged.removeValue(forKey: batch) else { return [] }
            outgoing[sender]!.highestAcknowledged = max(outgoing[sender]!.highestAcknowledged, batch)
            outgoing[sender]!.lastAcknowledgedAt = now
            acknowledge(shipments, wanting: wanting.isEmpty ? [] : Set(wanting), by: sender)
            return []
        }
    }

    /// `peer` joined, durably, a batch with these shipments, but for the registers it is
    /// `wanting` (it lacks them: they need their whole state). A shipment that starts at an
    /// acknowledgement brings the peer up to its last delta; one that starts after an earlier
    /// shipment does only once that one is acknowledged (otherwise it waits for a shipment
    /// again from the acknowledgement).
    private mutating func acknowledge(_ shipments: [Shipment], wanting: Set<String>, by peer: NodeID) {
        for shipment in shipments {
            let key = shipment.register
            if !wanting.isEmpty, wanting.contains(key.name) {
                acknowledged[peer]?[key] = nil
                inFlight[peer]?[key] = nil
                behind[peer]?.insert(key)
                continue
            }
            if let after = shipment.after, configuration.plantedBug != .acknowledgeAcrossGaps {
                guard let held = acknowledged[peer]?[key], held >= after else { continue }
            }
            // One lookup: raised in place.
            let upTo = Self.raise(&acknowledged[peer, default: [:]][key, default: 0], to: shipment.upTo)
            if let shipped = inFlight[peer]?[key], shipped.upTo <= upTo { inFlight[peer]![key] = nil }
            if upTo >= buffers[key]?.lastSequence ?? 0 { behind[peer]?.remove(key) }
            collectGarbage(key)
        }
    }

    /// Forgets what the batches to `peer` shipped once nothing in flight builds on them (every
    /// register in flight was shipped again from its acknowledgement since), and all of it
    /// when the peer is not a neighbour (what was in flight to it is forgotten too).
    private mutating func forgetSettledBatches(to peer: NodeID, neighbour: Bool) {
        guard let stream = outgoing[peer], !stream.unacknowledged.isEmpty else { return }
        guard neighbour else {
            outgoing[peer]!.unacknowledged = [:]
            return
        }
        let oldestNeeded = inFlight[peer]?.values.lazy.map(\.anchorBatch).min() ?? stream.next
        if stream.unacknowledged.keys.contains(where: { $0 < oldestNeeded }) {
            outgoing[peer]!.unacknowledged = stream.unacknowledged.filter { $0.key >= oldestNeeded }
        }
    }

    /// Sets `value` to at least `floor` and returns it.
    private static func raise(_ value: inout UInt64, to floor: UInt64) -> UInt64 {
        value = max(value, floor)
        return value
    }

    public mutating func handle(_ command: Command, now: Duration) -> [Effect] {
        switch command {
        case let .declare(id, register, bottom): return declare(id, register, bottom)
        case let .update(id, register, typeName, mutation):
            return mutate(id, register, typeName: typeName, declaring: nil, mutation, physical: UInt64(clamping: now.nanoseconds))
        case let .upsert(id, register, bottom, mutation):
            return mutate(id, register, typeName: bottom.typeName, declaring: bottom, mutation, physical: UInt64(clamping: now.nanoseconds))
        case let .delete(id, register): return delete(id, register)
        case let .thresholdRead(id, register, threshold): return thresholdRead(id, register, threshold)
        case let .cancelRead(id):
            guard pendingReads.removeValue(forKey: id) != nil else { return [] }
            return [.output(.thresholdFailed(id: id, .readCancelled))]
        case let .defineDerived(id, definition): return define(id, definition)
        case let .boundedRead(id, register, levels): return startBoundedRead(id, register, levels, now: now)
        case let .absorb(id, register, state): return absorb(id, register, state)
        }
    }

    // MARK: - Commands

    private mutating func declare(_ id: UInt64, _ register: String, _ bottom: AnyReplicated) -> [Effect] {
        guard Self.isValidName(register) else { return [.output(.completed(id: id, register: register, .failure(.invalidName(register))))] }
        let key = RegisterKey(register)
        let generation: UInt64
        switch slots[key] {
        case let .some(slot) where !slot.isDeleted:
            guard slot.typeName == bottom.typeName else {
                return [.output(.completed(id: id, register: register, .failure(.typeMismatch(register: register, declared: slot.typeName, requested: bottom.typeName))))]
            }
            return [.output(.completed(id: id, register: register, .success(slot.state)))]
        case let .some(slot):
            generation = slot.generation + 1
        case .none:
            generation = 1
        }
        let slot = RegisterSlot(generation: generation, typeName: bottom.typeName, state: bottom.bottom)
        slots[key] = slot
        return applyLocal(key, delta: slot, whole: true, creating: true) + [.output(.completed(id: id, register: register, .success(slot.state)))]
            + push(key)
    }

    /// An update (`declaring` nil: the register must exist) or an upsert (`declaring` its
    /// bottom). The state is mutated in place, so a mutation costs what it changes, not a copy
    /// of the state; a mutation that throws must throw before it changes anything.
    private mutating func mutate(_ id: UInt64, _ register: String, typeName: String, declaring bottom: AnyReplicated?, _ mutation: Mutation,
                                 physical: UInt64) -> [Effect] {
        let key = storedKey(register)
        var declared = false
        if let bottom, slots[key]?.isDeleted ?? true {
            guard Self.isValidName(register) else { return [.output(.completed(id: id, register: register, .failure(.invalidName(register))))] }
            slots[key] = RegisterSlot(generation: (slots[key]?.generation ?? 0) + 1, typeName: typeName, state: bottom.bottom)
            declared = true
        }
        let generation: UInt64
        switch lookUp(key, typeName: typeName) {
        case let .success(found): generation = found.generation
        case let .failure(error): return [.output(.completed(id: id, register: register, .failure(error)))]
        }
        let delta: AnyReplicated
        do {
            delta = try mutation(&slots[key]!.state!, node.replica, physical)
        } catch {
            let failure: [Effect] = [.output(.completed(id: id, register: register, .failure(.mutationRefused("\(error)"))))]
            // The declaration stands, as a declare followed by a refused update would leave it.
            return declared ? applyLocal(key, delta: slots[key]!, whole: true, creating: true) + failure + push(key) : failure
        }
        precondition(slots[key]!.state!.typeName == typeName && delta.typeName == typeName, "mutation of '\(register)' changed its type")
        let reply: AnyReplicated? = bottom == nil ? slots[key]!.state : delta
        // A bottom delta changed nothing (a mutator returns the delta of what it changed).
        guard declared || !delta.isBottom else { return [.output(.completed(id: id, register: register, .success(reply)))] }
        let deltaSlot = declared ? slots[key]! : RegisterSlot(generation: generation, typeName: typeName, state: delta)
        return applyLocal(key, delta: deltaSlot, whole: declared, creating: declared) + [.output(.completed(id: id, register: register, .success(reply)))]
            + push(key)
    }

    private mutating func delete(_ id: UInt64, _ register: String) -> [Effect] {
        let key = RegisterKey(register)
        guard let slot = slots[key] else { return [.output(.completed(id: id, register: register, .failure(.notDeclared(register))))] }
        guard !slot.isDeleted else { return [.output(.completed(id: id, register: register, .success(nil)))] }
        let tombstone = RegisterSlot(generation: slot.generation, typeName: slot.typeName, state: nil)
        slots[key] = tombstone
        return applyLocal(key, delta: tombstone, whole: true) + [.output(.completed(id: id, register: register, .success(nil)))]
            + push(key)
    }

    private mutating func thresholdRead(_ id: UInt64, _ register: String, _ threshold: AnyReplicated) -> [Effect] {
        guard let current = value(of: register) else {
            let error: ReplicationError = slots[RegisterKey(register)]?.isDeleted == true ? .deleted(register) : .notDeclared(register)
            return [.output(.thresholdFailed(id: id, error))]
        }
        guard let reached = threshold.isBelowOrEqual(current) else {
            return [.output(.thresholdFailed(id: id, .typeMismatch(register: register, declared: current.typeName, requested: threshold.typeName)))]
        }
        if reached { return [.output(.thresholdReached(id: id, current))] }
        guard pendingReads.count < configuration.thresholdReadsMax else {
            return [.output(.thresholdFailed(id: id, .tooManyPendingReads(limit: configuration.thresholdReadsMax)))]
        }
        pendingReads[id] = PendingRead(register: register, threshold: threshold)
        return []
    }

    // MARK: - Bounded reads

    private mutating func startBoundedRead(_ id: UInt64, _ register: String, _ levels: [ServiceLevel], now: Duration) -> [Effect] {
        if let problem = FreshnessGate.validate(levels) { return [.output(.boundedReadCompleted(id: id, .failure(.invalidRequest(problem))))] }
        guard value(of: register) != nil else {
            let error: ReplicationError = slots[RegisterKey(register)]?.isDeleted == true ? .deleted(register) : .notDeclared(register)
            return [.output(.boundedReadCompleted(id: id, .failure(error)))]
        }
        guard boundedReads[id] == nil else { return [.output(.boundedReadCompleted(id: id, .failure(.invalidRequest("read id \(id) in use"))))] }
        guard boundedReads.count < configuration.boundedReadsMax else {
            return [.output(.boundedReadCompleted(id: id, .failure(.tooManyPendingReads(limit: configuration.boundedReadsMax))))]
        }
        boundedReads[id] = BoundedRead(register: register, levels: levels, startedAt: now)
        return decide(id, now: now, atDeadline: false)
    }

    /// Every member this node knows of: the replicas whose acknowledged writes a certificate
    /// must cover.
    private var allMembers: [NodeID] {
        Array(Set(staticMembers).union(membership.knownMembers).union([node])).sorted()
    }

    /// The certified staleness of the local state of `read`'s register, for that read.
    private func quality(of read: BoundedRead) -> FreshnessGate.Quality {
        var worst = Duration.zero
        for member in allMembers where member != node && !read.replied.contains(member) {
            let mine = certificate[member]
            let theirs = read.certified[member]
            guard let best = [mine, theirs].compactMap({ $0 }).max() else { return .certified(staleness: nil) }
            worst = max(worst, gate.staleness(readStart: read.startedAt, certifiedAt: best))
        }
        return .certified(staleness: worst)
    }

    /// Asks the gate what to do with bounded read `id`, and does it.
    private mutating func decide(_ id: UInt64, now: Duration, atDeadline: Bool) -> [Effect] {
        guard var read = boundedReads[id] else { return [] }
        guard let state = value(of: read.register) else {
            boundedReads[id] = nil
            let error: ReplicationError = slots[RegisterKey(read.register)]?.isDeleted == true ? .deleted(read.register) : .notDeclared(read.register)
            return [.cancelTimer(.readDeadline(id)), .output(.boundedReadCompleted(id: id, .failure(error)))]
        }
        let quality = quality(of: read)
        switch gate.decide(levels: read.levels, startedAt: read.startedAt, now: now, quality: quality, atDeadline: atDeadline) {
        case let .answer(level):
            boundedReads[id] = nil
            let replicas = ([node] + read.replied.sorted()).map(\.replica)
            let answer = BoundedReadAnswer(state: state, receipt: ReadReceipt(
                guarantee: quality.guarantee, staleness: quality.staleness, version: ReadVersion.digest(of: state),
                replicas: replicas, level: level))
            return [.cancelTimer(.readDeadline(id)), .output(.boundedReadCompleted(id: id, .success(answer)))]
        case .fail:
            boundedReads[id] = nil
            return [.cancelTimer(.readDeadline(id)), .output(.boundedReadCompleted(id: id, .failure(.stalenessBoundUnmet(best: quality.staleness))))]
        case let .wait(until):
            var effects: [Effect] = [.setTimer(.readDeadline(id), after: max(.zero, until - now))]
            if !read.asked {
                // Ask every replica once: a state taken after the request arrived reflects
                // everything that replica acknowledged before this read began.
                read.asked = true
                let registers = baseRegisters(of: read.register)
                for member in allMembers where member != node {
                    effects.append(.send(to: member, .readRequest(epoch: epoch, read: id, registers: registers)))
                }
            }
            boundedReads[id] = read
            return effects
        }
    }

    /// The replicated registers a register or derived register is computed from.
    private func baseRegisters(of register: String) -> [String] {
        var result: Set<String> = []
        var pending = [register]
        var seen: Set<String> = []
        while let name = pending.popLast() {
            guard seen.insert(name).inserted else { continue }
            if slots[RegisterKey(name)] != nil { result.insert(name) }
            if let definition = derived.first(where: { $0.name == name }) { pending += definition.inputs }
        }
        return result.sorted()
    }

    private mutating func answerReadRequest(readerEpoch: UInt64, read: UInt64, registers: [String], from sender: NodeID, now: Duration) -> [Effect] {
        guard registers.count <= Self.readRequestRegistersMax else { return [] }
        let payloads = registers.compactMap { name in
            slots[RegisterKey(name)].map { DeltaPayload(register: name, slot: $0, isFullState: true) }
        }
        return [.send(to: sender, .readReply(epoch: readerEpoch, read: read, payloads, certificate: certificateVector(now: now)))]
    }

    private mutating func receiveReadReply(readerEpoch: UInt64, read id: UInt64, _ payloads: [DeltaPayload], certificate vector: FreshnessVector,
                                           from sender: NodeID, now: Duration) -> [Effect] {
        // A reply to an earlier incarnation's read says nothing about this one's start.
        guard readerEpoch == epoch else { return [] }
        guard let (effects, _, complete) = merge(payloads, from: sender) else { return [] }
        var result = effects
        if complete, var read = boundedReads[id] {
            read.replied.insert(sender)
            for (peer, time) in vector where peer != node {
                read.certified[peer] = max(read.certified[peer] ?? .nanoseconds(Int64.min), .nanoseconds(time))
            }
            boundedReads[id] = read
            result += decide(id, now: now, atDeadline: false)
        }
        return result
    }

    private mutating func absorb(_ id: UInt64, _ register: String, _ state: AnyReplicated) -> [Effect] {
        let key = RegisterKey(register)
        let slot: RegisterSlot
        switch lookUp(key, typeName: state.typeName) {
        case let .success(found): slot = found
        case let .failure(error): return [.output(.completed(id: id, register: register, .failure(error)))]
        }
        let before = slot.state!
        guard let after = before.join(state) else {
            return [.output(.completed(id: id, register: register, .failure(.typeMismatch(register: register, declared: slot.typeName, requested: state.typeName))))]
        }
        guard after != before else { return [.output(.completed(id: id, register: register, .success(after)))] }
        slots[key] = RegisterSlot(generation: slot.generation, typeName: slot.typeName, state: after)
        let delta = RegisterSlot(generation: slot.generation, typeName: slot.typeName, state: state)
        return applyLocal(key, delta: delta, whole: false) + [.output(.completed(id: id, register: register, .success(after)))]
            + push(key)
    }

    /// The staleness this node could certify right now for a read of any register (nil: none).
    public func certifiedStaleness(now: Duration) -> Duration? {
        quality(of: BoundedRead(register: "", levels: [], startedAt: now)).staleness
    }

    /// The same, member by member (nil: no certificate from that member yet): which member
    /// holds the certificate back.
    public func certifiedStalenessByMember(now: Duration) -> [(member: NodeID, staleness: Duration?)] {
        allMembers.filter { $0 != node }.map { member in
            (member, certificate[member].map { gate.staleness(readStart: now, certifiedAt: $0) })
        }
    }

    private mutating func define(_ id: UInt64, _ definition: DerivedDefinition) -> [Effect] {
        guard Self.isValidName(definition.name), slots[RegisterKey(definition.name)] == nil else {
            return [.output(.completed(id: id, register: definition.name, .failure(.invalidName(definition.name))))]
        }
        for input in definition.inputs where value(of: input) == nil {
            return [.output(.completed(id: id, register: definition.name, .failure(.derivedInputMissing(derived: definition.name, input: input))))]
        }
        derived.removeAll { $0.name == definition.name }
        derived.append(definition)
        derivedValues[definition.name] = nil
        var effects = recompute(changed: Set(definition.inputs))
        effects.append(.output(.completed(id: id, register: definition.name, .success(derivedValues[definition.name]))))
        return effects
    }

    private func lookUp(_ key: RegisterKey, typeName: String) -> Result<RegisterSlot, ReplicationError> {
        let register = key.name
        guard let slot = slots[key] else { return .failure(.notDeclared(register)) }
        guard !slot.isDeleted else { return .failure(.deleted(register)) }
        guard slot.typeName == typeName else {
            return .failure(.typeMismatch(register: register, declared: slot.typeName, requested: typeName))
        }
        return .success(slot)
    }

    /// The key `slots` holds for register `name` (a new one when it holds none). Every table
    /// that takes its key from there shares the name's storage, and two keys that share it
    /// compare equal without comparing the bytes: the tables a command or payload goes through
    /// next find their entry by identity, not by a byte comparison that misses the cache.
    private func storedKey(_ name: String) -> RegisterKey {
        let key = RegisterKey(name)
        return slots.index(forKey: key).map { slots.keys[$0] } ?? key
    }

    static func isValidName(_ name: String) -> Bool { (1...registerNameBytesMax).contains(name.utf8.count) }

    // MARK: - State changes

    /// After a local change of `register` (already in `slots`): buffers `delta`, persists, and
    /// reacts.
    private mutating func applyLocal(_ key: RegisterKey, delta: RegisterSlot, whole: Bool, creating: Bool = false) -> [Effect] {
        buffer(delta, for: key, from: nil, creating: creating)
        var patch = ReplicaDurableState(incarnation: epoch, slots: [:])
        record(key, delta: whole ? nil : delta, in: &patch)
        var effects: [Effect] = [.persist(patch)]
        effects += reactToChange(of: [key])
        return effects
    }

    /// Adds what to write for a change of `register` to `patch`: `delta` alone while the deltas
    /// written since the last whole state stay within its size, else (or with no delta) the
    /// whole state. Called right after `buffer` made or extended the register's buffer.
    private mutating func record(_ key: RegisterKey, delta: RegisterSlot?, in patch: inout ReplicaDurableState) {
        let register = key.name
        if let delta, delta.state != nil, let slot = slots[key], slot.generation == delta.generation, var account = buffers[key]?.written {
            let encoded = EncodedSlot(delta)
            let size = encoded.bytes?.count ?? 0
            if account.deltas + size <= account.whole {
                account.deltas += size
                buffers[key]?.written = account
                patch.deltas[register, default: []].append(encoded)
                return
            }
        }
        let whole = EncodedSlot(slots[key]!)
        buffers[key]?.written = (whole.bytes?.count ?? 0, 0)
        patch.slots[register] = whole
        patch.deltas[register] = nil
    }

    /// `creating`: `delta` is the register's whole state, new here (declared, or first
    /// received): a buffer made now holds its whole history.
    private mutating func buffer(_ delta: RegisterSlot, for register: RegisterKey, from source: NodeID?, lazy: LazyStamp? = nil,
                                 creating: Bool = false) {
        // The local updates made between two pushes go out as one join: they are kept as one
        // entry, joined in place as they come (at the cost of each update's delta). One entry
        // per update made the buffer overflow under load (thousands of SADDs to one set per
        // acknowledgement's round trip), and an overflow joins the two oldest entries under the
        // newer number: under a steady overload the oldest entry then took in every update and
        // was never acknowledged past, and each tick shipped and encoded the whole set again
        // (gossip ticks of a second and more, Raft losing its leader).
        let joined = source == nil && !creating && unpushed.contains(register) && buffers[register]?.joinIntoLast(delta) == true
        // For a received delta, the number before its own: when the source had acknowledged
        // everything up to it and nothing is in flight to it, the source holds the register's
        // whole buffer now. (No lookup for a local update.)
        let before = source == nil ? nil : buffers[register]?.lastSequence
        if !joined {
            // In place: a copy of the buffer would cost its length on every update.
            let overflow = buffers[register, default: DeltaBuffer(wholeHistory: creating)]
                .append(delta, from: source, lazy: lazy, keeping: configuration.deltaBufferMax)
            if overflow { counters.bufferOverflows += 1 }
        }
        // Over a copy of the keys: iterating the dictionary itself while changing its values
        // would copy every set.
        var acknowledgedBySource = false
        var othersBehind = false
        for peer in Array(behind.keys) {
            // The source is not behind on its own delta: acknowledged here at once, as a tick
            // would find (`.nothingNew`), without putting the register in its backlog. A
            // replica under a writer's load otherwise looked every register it received up once
            // more per tick, for the writer, to learn just that.
            if let source, let before, peer == source, !creating, inFlight[peer]?[register] == nil,
               acknowledged[peer]?[register] == before, let last = buffers[register]?.lastSequence {
                acknowledged[peer]![register] = last
                acknowledgedBySource = true
                continue
            }
            behind[peer]!.insert(register)
            othersBehind = true
        }
        // No other neighbour to acknowledge it later (and drop what every one holds then).
        if acknowledgedBySource, !othersBehind { collectGarbage(register) }
    }

    /// Change notifications, derived registers and threshold reads after `registers` changed.
    private mutating func reactToChange(of registers: Set<RegisterKey>) -> [Effect] {
        var effects: [Effect] = registers.sorted().map { .output(.changed(register: $0.name, slots[$0]?.state)) }
        if !derived.isEmpty { effects += recompute(changed: Set(registers.map(\.name))) }
        effects += completeReads()
        return effects
    }

    /// Recomputes derived registers that depend on `changed`, in definition order (a derived
    /// register can only read registers and derived registers defined before it).
    private mutating func recompute(changed: Set<String>) -> [Effect] {
        var changed = changed
        var effects: [Effect] = []
        for definition in derived where !changed.isDisjoint(with: definition.inputs) || derivedValues[definition.name] == nil {
            let inputs = definition.inputs.compactMap { value(of: $0) }
            let newValue = inputs.count == definition.inputs.count ? definition.compute(inputs) : nil
            guard newValue != derivedValues[definition.name] else { continue }
            derivedValues[definition.name] = newValue
            changed.insert(definition.name)
            effects.append(.output(.changed(register: definition.name, newValue)))
        }
        return effects
    }

    private mutating func completeReads() -> [Effect] {
        var effects: [Effect] = []
        for id in pendingReads.keys.sorted() {
            let read = pendingReads[id]!
            guard let current = value(of: read.register) else {
                pendingReads[id] = nil
                effects.append(.output(.thresholdFailed(id: id, .deleted(read.register))))
                continue
            }
            if read.threshold.isBelowOrEqual(current) == true {
                pendingReads[id] = nil
                effects.append(.output(.thresholdReached(id: id, current)))
            }
        }
        return effects
    }

    // MARK: - Anti-entropy

    private mutating func receiveDeltas(_ payloads: [DeltaPayload], senderEpoch: UInt64, batch: UInt64, since: UInt64,
                                        certificate vector: FreshnessVector?, relay: RelayReport, from sender: NodeID,
                                        now: Duration) -> [Effect] {
        // A delta its maker sent here is relayed lazily when the maker ships to every
        // neighbour of this node itself.
        let lazy = configuration.lazyRelayDelay.flatMap { delay in
            shipsToMyNeighbours(sender) ? LazyStamp(sentAt: relay.sentAt, due: now + delay) : nil
        }
        guard let (effects, wanting, joinedAll) = merge(payloads, from: sender, lazy: lazy) else { return [] }
        var result = effects
        // What the sender holds is so whatever becomes of this batch (a report is sent only
        // after what it covers is durable at the sender).
        if configuration.lazyRelayDelay != nil, !relay.held.isEmpty {
            heldBy[sender, default: [:]].merge(relay.held, uniquingKeysWith: max)
        }
        // A batch of an incarnation older than the last one heard from is joined (a join is
        // always safe) but neither counted nor acknowledged.
        if let stream = incoming[sender], stream.epoch > senderEpoch { return result }
        if incoming[sender]?.epoch != senderEpoch { incoming[sender] = IncomingStream(epoch: senderEpoch) }
        // An empty batch carries no number of its own.
        if !payloads.isEmpty { incoming[sender]!.insert(batch) }
        let continuous = incoming[sender]!.holds(from: since, through: batch) || configuration.plantedBug == .acknowledgeAcrossGaps
        if let vector {
            if !joinedAll {
                counters.certificatesRefusedWanting += 1
            } else if !continuous {
                counters.certificatesRefusedGap += 1
            } else {
                // This node now holds everything the sender held when it sent the batch.
                counters.certificatesAdopted += 1
                result += adopt(vector, from: sender, excluding: relay.withheld, now: now)
            }
        }
        // Acknowledge only after what was joined is durable (the persist comes first).
        if !payloads.isEmpty { result.append(.send(to: sender, .acks(epoch: senderEpoch, batch: batch, wanting: wanting))) }
        return result
    }

    /// Raises this node's certificate with a vector from `sender`, whose state this node now
    /// holds; every pending bounded read may now be fresh enough.
    /// Entries for the nodes in `withheld` are not adopted: the sender holds back some of
    /// their deltas from this node (lazy relays), so this node may lack what they cover.
    private mutating func adopt(_ vector: FreshnessVector, from sender: NodeID, excluding withheld: [NodeID] = [],
                                now: Duration) -> [Effect] {
        var raised = false
        if let own = vector[sender], own > adoptedDirectly[sender] ?? .min { adoptedDirectly[sender] = own }
        for (peer, time) in vector where peer != node && !withheld.contains(peer) {
            var stamp = Duration.nanoseconds(time)
            if configuration.freshness.plantedBug == .certifyOnArrival { stamp = now }
            if stamp > certificate[peer] ?? .nanoseconds(Int64.min) {
                certificate[peer] = stamp
                raised = true
            }
        }
        guard raised else { return [] }
        return boundedReads.keys.sorted().flatMap { decide($0, now: now, atDeadline: false) }
    }

    /// Validates and joins a batch of payloads from `sender`; nil when the batch is rejected
    /// (nothing changed). `wanting` are the registers whose deltas this node could not use (it
    /// lacks them); `joinedAll` says there were none.
    private mutating func merge(_ payloads: [DeltaPayload], from sender: NodeID,
                                lazy: LazyStamp? = nil) -> (effects: [Effect], wanting: [String], joinedAll: Bool)? {
        // Validate the whole batch before changing anything: a bad payload rejects the message.
        var decoded: [(DeltaPayload, RegisterKey, RegisterSlot)] = []
        var wanting: [String] = []
        for payload in payloads {
            do {
                guard Self.isValidName(payload.register) else { throw WireDecodingError.invalid("register name") }
                let key = storedKey(payload.register)
                let current = slots[key]
                let slot: RegisterSlot
                do {
                    slot = try payload.decode(existing: current, catalog: configuration.catalog)
                } catch .registerUnknown {
                    wanting.append(payload.register)
                    continue
                } catch let .wire(error) {
                    throw error
                }
                if let current, current.generation == slot.generation, current.typeName != slot.typeName {
                    throw RegisterSlot.JoinError.typeMismatch(local: current.typeName, remote: slot.typeName)
                }
                decoded.append((payload, key, slot))
            } catch {
                counters.rejectedMessages += 1
                counters.lastRejection = "from \(sender): register '\(payload.register)': \(error)"
                return nil
            }
        }
        var patch = ReplicaDurableState(incarnation: epoch, slots: [:])
        var changed: Set<RegisterKey> = []
        for (payload, key, delta) in decoded {
            if payload.isFullState { counters.fullStatesReceived += 1 } else { counters.deltaPayloadsReceived += 1 }
            // Joined in place: a delta costs about its own size, whatever the register's.
            let grew: Bool
            let creating = slots[key] == nil
            if creating {
                slots[key] = delta
                grew = true
            } else {
                grew = (try? slots[key]!.formJoin(delta)) ?? false
            }
            guard grew else {
                learn(key, heldBy: sender, delta)
                continue
            }
            buffer(delta, for: key, from: sender, lazy: payload.local ? lazy : nil, creating: creating)
            record(key, delta: payload.isFullState ? nil : delta, in: &patch)
            changed.insert(key)
        }
        var effects: [Effect] = []
        if !changed.isEmpty {
            effects.append(.persist(patch))
            effects += reactToChange(of: changed)
        }
        return (effects, wanting, wanting.isEmpty)
    }

    /// `peer` sent `held`, which added nothing here: it holds it durably (a node sends only what
    /// it persisted). When `held` covers every delta still pending for the peer, the peer needs
    /// none of them: they count as acknowledged. In a full mesh this stops the second relay of
    /// each update (n2 and n3 both received n1's delta; the one that relays it to the other
    /// first spares the other its relay back).
    private mutating func learn(_ register: RegisterKey, heldBy peer: NodeID, _ held: RegisterSlot) {
        guard let buffer = buffers[register] else { return }
        let acked = acknowledged[peer]?[register]
        if let acked, acked >= buffer.lastSequence { return }
        // What a ship to the peer would carry now: none of it, if `held` covers it, that is if
        // every pending delta is below `held` (their join is, exactly then). Checked delta by
        // delta, oldest first, stopping at the first one `held` lacks: a small relay against a
        // large pending join fails at once, where joining them cost the join's size on every
        // relay (about 60% of a replica's time under SADD into one set). Deltas dropped after
        // the acknowledgement (or a history the buffer does not hold, for a peer that never
        // acknowledged) cannot be checked.
        let base = acked ?? 0
        guard !buffer.entries.isEmpty, buffer.headFirst <= base + 1, acked != nil || buffer.wholeHistory else { return }
        for entry in buffer.entries where entry.sequence > base && entry.source != peer {
            guard entry.delta.isBelowOrEqual(held) else { return }
        }
        acknowledged[peer, default: [:]][register] = buffer.lastSequence
        inFlight[peer]?[register] = nil
        behind[peer]?.remove(register)
        collectGarbage(register)
    }

    /// A batch for `peer` of every register in `registers` whose deltas it has not acknowledged.
    /// A register shipped and not acknowledged yet gets only the deltas after what was shipped
    /// (the peer holds them all once that is acknowledged too), or nothing when nothing is new.
    /// Once `retransmitInterval` has passed without an acknowledgement, a tick ships
    /// everything after the acknowledgement again (a lost message costs that long).
    /// The batch is the next of the stream to the peer; the stream remembers what it shipped of
    /// each register until the peer acknowledges it.
    /// With `certifyAt` (the local time; `registers` must then be every register the peer is
    /// behind on, so that the others are acknowledged up to their last delta), a batch that
    /// brings the peer up to all this node holds carries the freshness certificate, and is sent
    /// even when empty if certificate heartbeats are on. The peer adopts it only if it has
    /// every batch since the oldest that a shipment still in flight builds on.
    private mutating func ship(to peer: NodeID, registers: [RegisterKey], now: Duration, retransmit: Bool, certifyAt: Duration? = nil,
                               joins: inout SharedJoins) -> [Effect] {
        if outgoing[peer] == nil { outgoing[peer] = OutgoingStream() }
        // The stream's numbers only: a copy of the stream held across the shipment would copy
        // its table of unacknowledged batches when the batch goes in.
        let batch = outgoing[peer]!.next
        let highestAcknowledged = outgoing[peer]!.highestAcknowledged
        // No acknowledgement for the retransmit interval: what is in flight may be lost.
        let silent = outgoing[peer]!.lastAcknowledgedAt.map { now - $0 >= configuration.retransmitInterval } ?? true
        let relays = relayView(for: peer, now: now)
        // Makers of lazy relays that wait in this batch's registers.
        var withheld: Set<NodeID> = []
        var payloads: [DeltaPayload] = []
        var shipments: [Shipment] = []
        var complete = true
        var bytes = 0
        let count = registers.count
        for offset in 0..<count {
            let register = registers[(offset + registerCursor) % count]
            guard let slot = slots[register] else { continue }
            let buffer = buffers[register] ?? DeltaBuffer()
            let acknowledgedUpTo = acknowledged[peer]?[register]
            if let acknowledgedUpTo, acknowledgedUpTo >= buffer.lastSequence {
                behind[peer]?.remove(register)
                continue
            }
            var shipped = inFlight[peer]?[register]
            var wholeState = false
            var retries = 0
            if let current = shipped, retransmit,
               now - current.since >= configuration.retransmitInterval * (1 << min(current.retries, Self.retransmitBackoffDoublings)),
               current.lastBatch <= highestAcknowledged || silent {
                shipped = nil
                retries = current.retries + 1
            }
            // Everything is on its way.
            if let shipped, shipped.upTo >= buffer.lastSequence { continue }
            // After what was shipped (not anchored), or after the acknowledgement.
            let base = shipped?.upTo ?? acknowledgedUpTo
            let anchored = shipped == nil
            let interval: DeltaBuffer.Interval
            // A lazy relay that must wait stops the interval before it.
            var waiting: Wait?
            var sharedPayload: DeltaPayload?
            if let base, !joins.isEmpty, let shared = joins[register], shared.after == base {
                interval = shared.interval
                sharedPayload = shared.payload
            } else {
                interval = base.map {
                    buffer.interval(after: $0, for: peer, joiningAtMost: Self.shipmentJoinMax, relays: relays, waiting: &waiting)
                } ?? buffer.intervalForNewcomer(peer, joiningAtMost: Self.shipmentJoinMax, relays: relays, waiting: &waiting)
                if let base, case .deltas = interval, buffer.isSharedJoin(after: base) { joins[register] = (base, interval, nil) }
            }
            if let waiting {
                // The makers of what waits are named in the report; what else waits leaves the
                // peer behind.
                withheld.formUnion(waiting.makers)
                if waiting.leavesBehind {
                    // Stays in the backlog: every tick must see that it leaves the peer behind.
                    complete = false
                } else if behind[peer]?.members.contains(register) == true {
                    // Parked until the peer holds it or it falls due (a tick releases it), under
                    // each maker whose relays wait in it, so that the report keeps naming them; a
                    // register not in the backlog is parked already.
                    behind[peer]!.remove(register)
                    for (maker, stamp) in [(waiting.maker, waiting.stamp)] + waiting.later.sorted(by: { $0.key < $1.key })
                    where heldBack[peer, default: [:]][maker, default: HeldBackQueue()].append(register, stamp) {
                        counters.relaysHeldBack += 1
                    }
                }
            }
            let payload: DeltaPayload
            // The last delta the shipment covers.
            var upTo = buffer.lastSequence
            switch interval {
            case let .nothingNew(covered) where anchored:
                // Everything pending up to `covered` came from the peer itself, which is
                // durable there, or the peer holds it (a lazy relay it reported).
                if covered > acknowledgedUpTo ?? 0 { acknowledged[peer, default: [:]][register] = covered }
                inFlight[peer]?[register] = nil
                if covered >= buffer.lastSequence {
                    behind[peer]?.remove(register)
                    collectGarbage(register)
                }
                continue
            case .nothingNew:
                // The rest came from the peer or waits; what was shipped before is on its way.
                continue
            case let .deltas(interval, covered, local) where base == nil:
                // Typed, as a whole state is (the peer may not know the register), and
                // anchored at the start of the register's history.
                payload = DeltaPayload(register: register.name, slot: interval, isFullState: true, local: local)
                upTo = covered
            case let .deltas(interval, covered, local):
                payload = sharedPayload ?? DeltaPayload(register: register.name, slot: interval, isFullState: false, local: local)
                if sharedPayload == nil, let base, joins[register]?.after == base { joins[register]!.payload = payload }
                upTo = covered
            case .unavailable:
                if configuration.plantedBug == .skipFullStateFallback {
                    complete = false
                    continue
                }
                payload = DeltaPayload(register: register.name, slot: slot, isFullState: true)
                wholeState = true
            }
            let size = payload.encodedByteCount
            if bytes + size > configuration.batchBytesMax, !payloads.isEmpty {
                complete = false
                break
            }
            bytes += size
            payloads.append(payload)
            // A join that stopped short leaves the peer behind: no certificate with it (lazy
            // relays that wait are named in the report instead, their makers' entries left out).
            if upTo < buffer.lastSequence, waiting == nil { complete = false }
            shipments.append(Shipment(register: register, after: anchored ? nil : base, upTo: upTo))
            inFlight[peer, default: [:]][register] = anchored
                ? InFlight(upTo: upTo, since: now, retries: retries, anchorBatch: batch, lastBatch: batch)
                : InFlight(upTo: upTo, since: shipped!.since, retries: shipped!.retries, anchorBatch: shipped!.anchorBatch, lastBatch: batch)
            if wholeState { counters.fullStatesSent += 1 } else { counters.deltaPayloadsSent += 1 }
            if retries > 0 { counters.retransmissions += 1 }
            if configuration.plantedBug == .forgetUnacknowledgedDeltas {
                acknowledged[peer, default: [:]][register] = buffer.lastSequence
                behind[peer]?.remove(register)
            }
        }
        // An empty batch repeats the last number (it needs no acknowledgement).
        var number = batch - 1
        if !payloads.isEmpty {
            number = batch
            outgoing[peer]!.next = batch + 1
            outgoing[peer]!.unacknowledged[batch] = shipments
            // Only the last `unacknowledgedMax` numbers are remembered: the one that falls out
            // goes (one lookup, not a search for the oldest).
            if batch > UInt64(OutgoingStream.unacknowledgedMax) {
                outgoing[peer]!.unacknowledged[batch - UInt64(OutgoingStream.unacknowledgedMax)] = nil
            }
        }
        let vector = certifyAt.flatMap { complete && configuration.certificateHeartbeats ? certificateVector(now: $0) : nil }
        if certifyAt != nil, configuration.certificateHeartbeats {
            if vector != nil { counters.certificatesSent += 1 } else { counters.certificatesWithheld += 1 }
        }
        if payloads.isEmpty, vector == nil { return [] }
        // The oldest batch a shipment in flight builds on (none: nothing to check).
        let since = vector == nil ? number + 1 : inFlight[peer]?.values.lazy.map(\.anchorBatch).min() ?? number + 1
        var report = RelayReport(sentAt: now.nanoseconds)
        if relays != nil {
            if certifyAt != nil { report.held = adoptedDirectly }
            if let queues = heldBack[peer] { withheld.formUnion(queues.keys) }
            report.withheld = withheld.sorted()
        }
        return [.send(to: peer, .deltas(epoch: epoch, batch: number, since: since, payloads, certificate: vector, relay: report))]
    }

    /// This node's certificate as sent: its own entry is `now` (its state holds everything it
    /// acknowledged so far).
    private func certificateVector(now: Duration) -> FreshnessVector {
        var vector = certificate.mapValues { $0.nanoseconds }
        vector[node] = now.nanoseconds
        return vector
    }

    /// Ships `register` to every neighbor after a local change: at once, in one batch with the
    /// other registers changed before the push timer fires (one message per neighbor for many
    /// updates, and one join of each register's deltas, not one per update).
    private mutating func push(_ register: RegisterKey) -> [Effect] {
        guard unpushed.insert(register).inserted, unpushed.count == 1 else { return [] }
        return [.setTimer(.push, after: configuration.pushDelay)]
    }

    /// Drops the deltas of `register` that every neighbor, and every neighbour absent for less
    /// than `absentNeighbourRetention`, has acknowledged.
    private mutating func collectGarbage(_ register: RegisterKey) {
        guard let buffer = buffers[register], let first = buffer.entries.first else { return }
        var floor = buffer.lastSequence
        // A neighbour that never acknowledged the register gets the join of its whole history
        // while the buffer holds it (`intervalForNewcomer`), so nothing goes before it
        // acknowledges: one whose first shipment is in flight, or one absent while the register
        // was made (dropping for it sent a whole state per register made meanwhile: 48,000 per
        // replica in 30 s of writes to new keys, around a few suspicions). Without that history
        // it gets the whole state anyway. (Two loops, not one over the two lists joined: this
        // runs per acknowledged register.)
        let keepForNewcomers = buffer.wholeHistory && buffer.headFirst == 1
        for peer in neighbors() {
            if let upTo = acknowledged[peer]?[register] { floor = min(floor, upTo) } else if keepForNewcomers { return }
        }
        for peer in absent.keys {
            if let upTo = acknowledged[peer]?[register] { floor = min(floor, upTo) } else if keepForNewcomers { return }
        }
        guard first.sequence <= floor else { return }
        buffers[register]!.drop(upTo: floor)
    }

    /// This node's overlay neighbors: the nearest reachable members on both sides of the ring of
    /// reachable members ordered by id, and fingers at ring distances 4, 8, 16, …
    public mutating func neighbors() -> [NodeID] {
        if let cachedNeighbors { return cachedNeighbors }
        let computed = Self.neighbors(of: node, among: membership.reachableMembers, ringNeighbors: configuration.ringNeighbors)
        cachedNeighbors = computed
        return computed
    }

    static func neighbors(of node: NodeID, among reachable: [NodeID], ringNeighbors: Int) -> [NodeID] {
        var ring = reachable
        let position = ring.firstIndex { $0 > node } ?? ring.count
        ring.insert(node, at: position)
        let size = ring.count
        guard size > 1 else { return [] }
        var chosen = Set<NodeID>()
        for step in 1...ringNeighbors {
            chosen.insert(ring[(position + step) % size])
            chosen.insert(ring[(position - step % size + size) % size])
        }
        var distance = 4
        while distance < size {
            chosen.insert(ring[(position + distance) % size])
            distance *= 2
        }
        chosen.remove(node)
        return chosen.sorted()
    }

    /// Stops holding deltas back for neighbours absent for `absentNeighbourRetention` or more:
    /// the deltas only they lacked are dropped, and they get whole states when they return.
    private mutating func forgetLongAbsent(now: Duration) {
        let expired = absent.filter { now - $0.value >= configuration.absentNeighbourRetention }.keys
        guard !expired.isEmpty else { return }
        for peer in expired { absent[peer] = nil }
        // Each register's deltas are dropped on their own, so the order does not matter: no
        // sort of every register's name (a second at a million registers).
        for register in Array(buffers.keys) { collectGarbage(register) }
    }

    private mutating func translate(_ directives: [Membership.Directive], now: Duration) -> [Effect] {
        directives.map { directive in
            switch directive {
            case let .send(peer, message): return .send(to: peer, .membership(message))
            case let .setTimer(timer, after): return .setTimer(.membership(timer), after: after)
            case let .reachabilityChanged(peer, reachable):
                // A peer that acknowledged something here was a neighbour. (Not "is in the
                // neighbour list": with two peers lost in one step, the list recomputed after the
                // first already lacks the second.)
                if reachable {
                    absent[peer] = nil
                } else if acknowledged[peer] != nil {
                    absent[peer] = now
                }
                cachedNeighbors = nil
                cachedReachable = nil
                cachedShipsToMyNeighbours = [:]
                counters.reachabilityChanges += 1
                return .output(.reachabilityChanged(peer, reachable: reachable))
            }
        }
    }

    private mutating func jittered(_ interval: Duration) -> Duration {
        let spread = interval.nanoseconds / 5
        return interval + .nanoseconds(Int64.random(in: -spread...spread, using: &random))
    }
}
