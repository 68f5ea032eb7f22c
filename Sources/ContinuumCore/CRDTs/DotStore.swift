/// The store part of a causal CRDT (Almeida, Shoker and Baquero 2018, section 5): a map whose
/// entries are tagged with dots. Together with a `CausalContext` it forms a `Causal` lattice,
/// whose join keeps a dot when both sides have it, or when one side has it and the other side
/// has not seen it; a dot one side has seen but no longer holds was removed.
public protocol DotStore: Sendable, Equatable, Codable {
    /// The store with no dots.
    static var empty: Self { get }
    var isEmpty: Bool { get }
    /// Every dot in the store.
    var dots: Set<Dot> { get }
    /// Whether every dot in the store satisfies `predicate` (without building `dots`).
    func allDots(satisfy predicate: (Dot) -> Bool) -> Bool
    /// The store part of `(a, contextA) ⊔ (b, contextB)`.
    static func join(_ a: Self, _ contextA: CausalContext, _ b: Self, _ contextB: CausalContext) -> Self
    /// Joins `(other, contextOther)` into `(self, contextSelf)` in place (the store part), and
    /// says whether the store changed.
    mutating func formJoin(_ other: Self, _ contextSelf: CausalContext, _ contextOther: CausalContext) -> Bool
}

extension DotStore {
    public func allDots(satisfy predicate: (Dot) -> Bool) -> Bool { dots.allSatisfy(predicate) }

    /// By `join`: costs the size of both stores.
    public mutating func formJoin(_ other: Self, _ contextSelf: CausalContext, _ contextOther: CausalContext) -> Bool {
        let joined = Self.join(self, contextSelf, other, contextOther)
        guard joined != self else { return false }
        self = joined
        return true
    }
}

/// A set of dots: the store of an enable-wins flag, and of each element of an OR-set.
public struct DotSet: DotStore, Hashable, CustomStringConvertible {
    public var dots: Set<Dot>

    public init(_ dots: Set<Dot> = []) { self.dots = dots }

    public static var empty: DotSet { DotSet() }
    public var isEmpty: Bool { dots.isEmpty }

    public static func join(_ a: DotSet, _ contextA: CausalContext, _ b: DotSet, _ contextB: CausalContext) -> DotSet {
        var result = a.dots.intersection(b.dots)
        for dot in a.dots where !contextB.contains(dot) { result.insert(dot) }
        for dot in b.dots where !contextA.contains(dot) { result.insert(dot) }
        return DotSet(result)
    }

    public var description: String { "{" + dots.sorted().map(\.description).joined(separator: ",") + "}" }
}

/// A map from dots to values: the store of a multi-value register. A dot names one write, so
/// two replicas that hold the same dot hold the same value.
public struct DotFun<Value: Sendable & Equatable & Codable>: DotStore {
    public var entries: [Dot: Value]

    public init(_ entries: [Dot: Value] = [:]) { self.entries = entries }

    public static var empty: DotFun { DotFun() }
    public var isEmpty: Bool { entries.isEmpty }
    public var dots: Set<Dot> { Set(entries.keys) }

    public static func join(_ a: DotFun, _ contextA: CausalContext, _ b: DotFun, _ contextB: CausalContext) -> DotFun {
        var result: [Dot: Value] = [:]
        for (dot, value) in a.entries where b.entries[dot] != nil || !contextB.contains(dot) { result[dot] = value }
        for (dot, value) in b.entries where a.entries[dot] == nil && !contextA.contains(dot) { result[dot] = value }
        return DotFun(result)
    }
}

/// A dot store that keeps an index of its dots.
public protocol DotIndexed {
    /// Whether the index is what the store holds.
    var isIndexConsistent: Bool { get }
}

/// A map from keys to dot stores sharing one causal context: the store of an OR-set (keys to
/// dot sets) and of an OR-map (keys to the stores of nested causal CRDTs). A key whose store
/// becomes empty is absent.
///
/// It keeps which key holds each dot (a dot names one update, which wrote one key), so that a
/// join finds the keys whose dots the other side's context removes by looking up those dots,
/// not by looking at every key.
public struct DotMap<Key: Hashable & Sendable & Codable, Value: DotStore>: DotStore, DotIndexed {
    public private(set) var entries: [Key: Value]
    /// The key that holds each dot held here.
    private var keyOfDot: [Dot: Key]

    @_specialize(where Key == String, Value == DotSet)
    public init(_ entries: [Key: Value] = [:]) {
        self.entries = entries.filter { !$0.value.isEmpty }
        keyOfDot = Self.index(self.entries).index
    }

    /// Which key holds each dot, and whether some dot is under two keys (which no correct
    /// replica produces: a decoder refuses it).
    @_specialize(where Key == String, Value == DotSet)
    private static func index(_ entries: [Key: Value]) -> (index: [Dot: Key], shared: Bool) {
        var index: [Dot: Key] = [:]
        var shared = false
        for (key, value) in entries {
            for dot in value.dots where index.updateValue(key, forKey: dot) != nil { shared = true }
        }
        return (index, shared)
    }

    public static func == (a: DotMap, b: DotMap) -> Bool { a.entries == b.entries }

    private enum CodingKeys: String, CodingKey { case entries }

    public init(from decoder: any Decoder) throws {
        self.init(try decoder.container(keyedBy: CodingKeys.self).decode([Key: Value].self, forKey: .entries))
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(entries, forKey: .entries)
    }

    /// Without `init`'s filtering and indexing: a join builds a bottom value per call.
    public static var empty: DotMap {
        @_specialize(where Key == String, Value == DotSet)
        get { DotMap(entries: [:], keyOfDot: [:]) }
    }

    private init(entries: [Key: Value], keyOfDot: [Dot: Key]) {
        self.entries = entries
        self.keyOfDot = keyOfDot
    }
    public var isEmpty: Bool { entries.isEmpty }
    public var dots: Set<Dot> {
        @_specialize(where Key == String, Value == DotSet)
        get { Set(keyOfDot.keys) }
    }
    /// How many dots the map holds.
    public var dotCount: Int { keyOfDot.count }

    /// Over the dot index, without building a set of its keys (a decoded state is checked
    /// against its context this way: building the set cost a tenth of decoding an OR-set).
    @_specialize(where Key == String, Value == DotSet)
    public func allDots(satisfy predicate: (Dot) -> Bool) -> Bool { keyOfDot.keys.allSatisfy(predicate) }

    /// Whether the dot index is what the entries hold, and no dot is under two keys, here and
    /// in nested maps (for tests).
    public var isIndexConsistent: Bool {
        var count = 0
        for (key, value) in entries {
            if let nested = value as? any DotIndexed, !nested.isIndexConsistent { return false }
            for dot in value.dots {
                guard keyOfDot[dot] == key else { return false }
                count += 1
            }
        }
        return count == keyOfDot.count
    }

    public subscript(key: Key) -> Value {
        @_specialize(where Key == String, Value == DotSet)
        get { entries[key] ?? .empty }
    }

    public static func join(_ a: DotMap, _ contextA: CausalContext, _ b: DotMap, _ contextB: CausalContext) -> DotMap {
        var result: [Key: Value] = [:]
        for key in Set(a.entries.keys).union(b.entries.keys) {
            let joined = Value.join(a[key], contextA, b[key], contextB)
            if !joined.isEmpty { result[key] = joined }
        }
        return DotMap(result)
    }

    /// Sets the store of `key`, keeping the dot index.
    @_specialize(where Key == String, Value == DotSet)
    private mutating func replace(_ key: Key, _ old: Value?, with new: Value) {
        let before = old?.dots ?? []
        let after = new.dots
        for dot in before where !after.contains(dot) { keyOfDot[dot] = nil }
        for dot in after where !before.contains(dot) { keyOfDot[dot] = key }
        entries[key] = new.isEmpty ? nil : new
    }

    /// In place, at a cost in proportion to `other` and to the dots its context names, not to
    /// the size of `self`: a dot held here under a key `other` lacks is dropped when
    /// `contextOther` has seen it, and the index says which key holds it. Only when
    /// `contextOther` names more dots than this map holds (a whole state) is every held dot
    /// looked at instead, once.
    @_specialize(where Key == String, Value == DotSet)
    public mutating func formJoin(_ other: DotMap, _ contextSelf: CausalContext, _ contextOther: CausalContext) -> Bool {
        var changed = false
        for (key, theirs) in other.entries {
            let mine = entries.removeValue(forKey: key)
            var value = mine ?? .empty
            if value.formJoin(theirs, contextSelf, contextOther) {
                changed = true
                replace(key, mine, with: value)
            } else if let mine {
                entries[key] = mine
            }
        }
        // Keys `other` lacks that hold a dot `contextOther` has seen: their dots are removed.
        var removing = Set<Key>()
        if contextOther.dotCount > UInt64(keyOfDot.count) {
            for (dot, key) in keyOfDot where other.entries[key] == nil && contextOther.contains(dot) { removing.insert(key) }
        } else {
            contextOther.forEachDot { dot in
                if let key = keyOfDot[dot], other.entries[key] == nil { removing.insert(key) }
                return true
            }
        }
        for key in removing {
            guard let mine = entries[key] else { continue }
            let joined = Value.join(mine, contextSelf, .empty, contextOther)
            guard joined != mine else { continue }
            changed = true
            replace(key, mine, with: joined)
        }
        return changed
    }
}

/// A dot store with its causal context: the lattice that every causal CRDT is built on.
/// Invariant: every dot in the store is in the context.
public struct Causal<Store: DotStore>: Lattice {
    public private(set) var store: Store
    public private(set) var context: CausalContext

    @_specialize(where Store == DotMap<String, DotSet>)
    public init(store: Store = .empty, context: CausalContext = .bottom) {
        precondition(store.allDots(satisfy: context.contains), "a causal store's dots must be in its context")
        self.store = store
        self.context = context
    }

    /// Without `init`'s check of every dot (an empty store has none): every in-place join of a
    /// causal CRDT builds one (`CausalCRDT.formJoinReportingChange`).
    public static var bottom: Causal {
        @_specialize(where Store == DotMap<String, DotSet>)
        get { Causal(unchecked: .empty, context: CausalContext()) }
    }

    private init(unchecked store: Store, context: CausalContext) {
        self.store = store
        self.context = context
    }

    public mutating func formJoin(_ other: Causal) { _ = formJoinReportingChange(other) }

    /// Joins in place (see `DotStore.formJoin`) and says whether anything changed.
    @_specialize(where Store == DotMap<String, DotSet>)
    public mutating func formJoinReportingChange(_ other: Causal) -> Bool {
        let storeChanged = store.formJoin(other.store, context, other.context)
        let contextChanged = !other.context.isBelowOrEqual(context)
        if contextChanged { context.formJoin(other.context) }
        return storeChanged || contextChanged
    }

    /// `self ≤ other` when `other` has seen every dot `self` has, and every dot that `other`
    /// holds and `self` has seen, `self` still holds (else `self` saw it removed and `other` not).
    @_specialize(where Store == DotMap<String, DotSet>)
    public func isBelowOrEqual(_ other: Causal) -> Bool {
        guard context.isBelowOrEqual(other.context) else { return false }
        let ownDots = store.dots
        return other.store.dots.allSatisfy { !context.contains($0) || ownDots.contains($0) }
    }

    /// A fresh dot for `replica`'s next update.
    public func nextDot(for replica: ReplicaID) -> Dot { context.nextDot(for: replica) }
}

/// A CRDT whose state is a `Causal` dot store; its lattice operations come from the store.
public protocol CausalCRDT: Lattice {
    associatedtype Store: DotStore
    var causal: Causal<Store> { get }
    init(causal: Causal<Store>)
}

extension CausalCRDT {
    public static var bottom: Self { Self(causal: .bottom) }
    public mutating func formJoin(_ other: Self) { _ = formJoinReportingChange(other) }

    /// In place: the state is moved out of `self` first, so that its storage is not shared and
    /// a small `other` costs about its own size.
    @_specialize(where Self == ORSet<String>)
    public mutating func formJoinReportingChange(_ other: Self) -> Bool {
        var state = causal
        self = Self(causal: .bottom)
        let changed = state.formJoinReportingChange(other.causal)
        self = Self(causal: state)
        return changed
    }
    public func isBelowOrEqual(_ other: Self) -> Bool { causal.isBelowOrEqual(other.causal) }

    /// Without building a bottom value and comparing stores.
    public var isBottom: Bool { causal.store.isEmpty && causal.context == CausalContext() }

    /// Applies `delta` to `self` and returns it: the tail of every delta mutator.
    mutating func apply(_ delta: Self) -> Self {
        formJoin(delta)
        return delta
    }
}

// MARK: - Wire encoding

extension DotSet: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) { dots.encode(to: &writer) }
    public init(from reader: inout BinaryReader) throws(WireDecodingError) { self.init(try Set<Dot>(from: &reader)) }
}

extension DotFun: BinaryCodable where Value: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) { entries.encode(to: &writer) }
    public init(from reader: inout BinaryReader) throws(WireDecodingError) { self.init(try [Dot: Value](from: &reader)) }
}

extension DotMap: BinaryCodable where Key: BinaryCodable, Value: BinaryCodable {
    @_specialize(where Key == String, Value == DotSet)
    public func encode(to writer: inout BinaryWriter) { entries.encode(to: &writer) }
    @_specialize(where Key == String, Value == DotSet)
    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        let entries = try [Key: Value](from: &reader)
        guard entries.values.allSatisfy({ !$0.isEmpty }) else { throw .invalid("dot map with an empty entry") }
        let (index, shared) = Self.index(entries)
        guard !shared else { throw .invalid("dot map with a dot under two keys") }
        self.entries = entries
        keyOfDot = index
    }
}

extension Causal: BinaryCodable where Store: BinaryCodable {
    @_specialize(where Store == DotMap<String, DotSet>)
    public func encode(to writer: inout BinaryWriter) {
        store.encode(to: &writer)
        context.encode(to: &writer)
    }

    @_specialize(where Store == DotMap<String, DotSet>)
    public init(from reader: inout BinaryReader) throws(WireDecodingError) {
        let store = try Store(from: &reader)
        let context = try CausalContext(from: &reader)
        guard store.allDots(satisfy: context.contains) else { throw .invalid("store holds a dot its context lacks") }
        self.init(unchecked: store, context: context)
    }
}
