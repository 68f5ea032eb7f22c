import Synchronization

/// A lattice that can travel: every register's value type.
public typealias Replicable = Lattice & BinaryCodable

/// The stable name of a replicable type on the wire: its fully qualified Swift name, the same
/// on every node that runs the same program. Computed by reflection once per type.
public func replicableTypeName<L: Replicable>(_ type: L.Type) -> String {
    let key = ObjectIdentifier(type)
    if let name = typeNames.withLock({ $0[key] }) { return name }
    let name = String(reflecting: type)
    typeNames.withLock { $0[key] = name }
    return name
}

/// Type names by type: reflection is far too slow to run on every join.
private let typeNames = Mutex<[ObjectIdentifier: String]>([:])

/// A replicable value of any type: how a node holds registers of many types side by side.
/// Joining two boxes of different types is refused, never guessed.
public struct AnyReplicated: Sendable, Equatable, CustomStringConvertible {
    public let value: any Replicable
    public let typeName: String

    public init<L: Replicable>(_ value: L) {
        self.value = value
        self.typeName = replicableTypeName(L.self)
    }

    @usableFromInline init<L: Replicable>(_ value: L, typeName: String) {
        self.value = value
        self.typeName = typeName
    }

    /// Runs `body` on the value as `L`, in place: the value is moved out of the box first, so
    /// that its storage is not shared and a mutation costs what it changes, not a copy of the
    /// state. Nil (and `body` is not run) when the value is of another type. If `body` throws,
    /// the value is kept as `body` left it: mutators must throw before they change anything.
    /// Inlinable, so that it is specialized where it is called (a node's writes).
    @inlinable public mutating func mutate<L: Replicable, R>(as _: L.Type, _ body: (inout L) throws -> R) rethrows -> R? {
        guard var typed = value as? L else { return nil }
        let name = typeName
        self = AnyReplicated(L.bottom, typeName: name)
        defer { self = AnyReplicated(typed, typeName: name) }
        return try body(&typed)
    }

    /// Joins `other` into this box in place (see `mutate`); nil when the types differ, else
    /// whether the value changed.
    public mutating func formJoin(_ other: AnyReplicated) -> Bool? {
        guard typeName == other.typeName else { return nil }
        return Self.formJoin(&self, other.value)
    }

    private static func formJoin<L: Replicable>(_ box: inout AnyReplicated, _ other: L) -> Bool? {
        box.mutate(as: L.self) { $0.formJoinReportingChange(other) }
    }

    /// The value as `L`, or nil when it is of another type.
    public func unwrap<L: Replicable>(as _: L.Type = L.self) -> L? { value as? L }

    /// The bottom of this box's type.
    public var bottom: AnyReplicated { Self.bottom(like: value) }

    /// `self ⊔ other`, or nil when the types differ.
    public func join(_ other: AnyReplicated) -> AnyReplicated? { Self.join(value, other.value) }

    /// `self ≤ other`, or nil when the types differ.
    public func isBelowOrEqual(_ other: AnyReplicated) -> Bool? { Self.below(value, other.value) }

    /// Whether the value is its type's bottom (compared as its own type: no box is made).
    public var isBottom: Bool { value.isBottom }

    public func encoded() -> [UInt8] { value.binaryEncoded() }

    /// Decodes `bytes` as a value of this box's type.
    public func decodeSameType(_ bytes: [UInt8]) throws(WireDecodingError) -> AnyReplicated {
        try Self.decode(like: value, bytes)
    }

    public static func == (lhs: AnyReplicated, rhs: AnyReplicated) -> Bool { equal(lhs.value, rhs.value) }

    public var description: String { "\(value)" }

    private static func bottom<L: Replicable>(like _: L) -> AnyReplicated { AnyReplicated(L.bottom) }

    private static func join<L: Replicable>(_ left: L, _ right: any Replicable) -> AnyReplicated? {
        guard let right = right as? L else { return nil }
        return AnyReplicated(left.join(right))
    }

    private static func below<L: Replicable>(_ left: L, _ right: any Replicable) -> Bool? {
        guard let right = right as? L else { return nil }
        return left.isBelowOrEqual(right)
    }

    private static func equal<L: Replicable>(_ left: L, _ right: any Replicable) -> Bool {
        guard let right = right as? L else { return false }
        return left == right
    }

    private static func decode<L: Replicable>(like _: L, _ bytes: [UInt8]) throws(WireDecodingError) -> AnyReplicated {
        AnyReplicated(try L(binary: bytes))
    }
}

/// The replicable types a node can decode from the wire, by type name. A node receiving a
/// register of a type it does not know refuses the message rather than guess.
public struct ReplicableTypeCatalog: Sendable {
    private var bottoms: [String: AnyReplicated] = [:]

    public init() {}

    /// The built-in CRDTs over common element types.
    public static var standard: ReplicableTypeCatalog {
        var catalog = ReplicableTypeCatalog()
        catalog.register(GCounter.self)
        catalog.register(PNCounter.self)
        catalog.register(BoundedCounter.self)
        catalog.register(EWFlag.self)
        catalog.register(GSet<String>.self)
        catalog.register(GSet<UInt64>.self)
        catalog.register(TwoPhaseSet<String>.self)
        catalog.register(TwoPhaseSet<UInt64>.self)
        catalog.register(ORSet<String>.self)
        catalog.register(ORSet<UInt64>.self)
        catalog.register(MVRegister<String>.self)
        catalog.register(MVRegister<UInt64>.self)
        catalog.register(LWWRegister<String>.self)
        catalog.register(LWWRegister<UInt64>.self)
        catalog.register(LWWRegister<[UInt8]>.self)
        catalog.register(GMap<String, LWWRegister<String>>.self)
        catalog.register(MaxRegister<UInt64>.self)
        catalog.register(MaxRegister<Int64>.self)
        catalog.register(ORMap<String, ORSet<String>>.self)
        catalog.register(ORMap<UInt64, ORSet<UInt64>>.self)
        catalog.register(ORMap<String, MVRegister<String>>.self)
        catalog.register(ORMap<String, ORMap<UInt64, MVRegister<UInt64>>>.self)
        catalog.register(GMap<String, GCounter>.self)
        catalog.register(GMap<String, MaxRegister<UInt64>>.self)
        return catalog
    }

    public mutating func register<L: Replicable>(_ type: L.Type) {
        bottoms[replicableTypeName(type)] = AnyReplicated(L.bottom)
    }

    public func contains(_ typeName: String) -> Bool { bottoms[typeName] != nil }

    /// The catalogue's own copy of `typeName` (nil: unknown type). A name read from the wire
    /// or the store is a new string each time; slots keep this one, shared by all the registers
    /// of a type, instead (about 64 bytes less per register held).
    public func canonical(_ typeName: String) -> String? {
        bottoms.index(forKey: typeName).map { bottoms[$0].value.typeName }
    }

    /// Decodes `bytes` as the type named `typeName`.
    public func decode(typeName: String, _ bytes: [UInt8]) throws(WireDecodingError) -> AnyReplicated {
        guard let bottom = bottoms[typeName] else { throw .invalid("unknown replicable type \(typeName)") }
        return try bottom.decodeSameType(bytes)
    }

    /// The bottom value of the type named `typeName`.
    public func bottom(of typeName: String) -> AnyReplicated? { bottoms[typeName] }
}
