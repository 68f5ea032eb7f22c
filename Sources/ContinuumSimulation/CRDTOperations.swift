import ContinuumCore

/// Random operations on one CRDT type, chosen by a number: the same scripts drive the lattice
/// property tests (where the numbers come from the property-test generator and shrink) and the
/// simulation workloads (where they come from the seed). Arguments are drawn from small domains
/// so that replicas collide on the same elements and keys.
public protocol CRDTOperations: Sendable {
    associatedtype State: Lattice & BinaryCodable
    /// The name used on the command line (`--crdt`).
    static var name: String { get }
    /// Applies operation `code` at `replica`, whose clock reads `physical` nanoseconds;
    /// returns a label for reports and the delta the mutator returned.
    static func apply(_ code: UInt64, to state: inout State, replica: ReplicaID, physical: UInt64) -> (label: String, delta: State)
}

/// Every CRDT type with operations, by command-line name.
public enum CRDTCatalog {
    public static let all: [any CRDTOperations.Type] = [
        GCounterOperations.self, PNCounterOperations.self, GSetOperations.self, TwoPhaseSetOperations.self,
        ORSetOperations.self, EWFlagOperations.self, MVRegisterOperations.self, LWWRegisterOperations.self,
        MaxRegisterOperations.self, ORMapOperations.self, NestedORMapOperations.self, BoundedCounterOperations.self,
    ]

    public static var names: [String] { all.map { $0.name } }

    public static func named(_ name: String) -> (any CRDTOperations.Type)? { all.first { $0.name == name } }
}

public enum GCounterOperations: CRDTOperations {
    public static let name = "gcounter"
    public static func apply(_ code: UInt64, to state: inout GCounter, replica: ReplicaID, physical: UInt64) -> (label: String, delta: GCounter) {
        let amount = 1 + code % 5
        return ("increment \(amount)", state.increment(by: amount, replica: replica))
    }
}

public enum PNCounterOperations: CRDTOperations {
    public static let name = "pncounter"
    public static func apply(_ code: UInt64, to state: inout PNCounter, replica: ReplicaID, physical: UInt64) -> (label: String, delta: PNCounter) {
        let amount = Int64(code % 11) - 5
        return ("add \(amount)", state.add(amount, replica: replica))
    }
}

public enum GSetOperations: CRDTOperations {
    public static let name = "gset"
    public static func apply(_ code: UInt64, to state: inout GSet<UInt64>, replica: ReplicaID, physical: UInt64) -> (label: String, delta: GSet<UInt64>) {
        ("insert \(code % 8)", state.insert(code % 8))
    }
}

public enum TwoPhaseSetOperations: CRDTOperations {
    public static let name = "2pset"
    public static func apply(_ code: UInt64, to state: inout TwoPhaseSet<UInt64>, replica: ReplicaID, physical: UInt64) -> (label: String, delta: TwoPhaseSet<UInt64>) {
        let element = (code / 2) % 6
        return code % 2 == 0 ? ("insert \(element)", state.insert(element)) : ("remove \(element)", state.remove(element))
    }
}

public enum ORSetOperations: CRDTOperations {
    public static let name = "orset"
    public static func apply(_ code: UInt64, to state: inout ORSet<UInt64>, replica: ReplicaID, physical: UInt64) -> (label: String, delta: ORSet<UInt64>) {
        let element = (code / 10) % 6
        switch code % 10 {
        case 0..<5: return ("insert \(element)", state.insert(element, replica: replica))
        case 5..<9: return ("remove \(element)", state.remove(element))
        default: return ("remove all", state.removeAll())
        }
    }
}

public enum EWFlagOperations: CRDTOperations {
    public static let name = "ewflag"
    public static func apply(_ code: UInt64, to state: inout EWFlag, replica: ReplicaID, physical: UInt64) -> (label: String, delta: EWFlag) {
        code % 2 == 0 ? ("enable", state.enable(replica: replica)) : ("disable", state.disable())
    }
}

public enum MVRegisterOperations: CRDTOperations {
    public static let name = "mvregister"
    public static func apply(_ code: UInt64, to state: inout MVRegister<UInt64>, replica: ReplicaID, physical: UInt64) -> (label: String, delta: MVRegister<UInt64>) {
        code % 7 == 0 ? ("clear", state.clear()) : ("write \(code % 10)", state.write(code % 10, replica: replica))
    }
}

public enum LWWRegisterOperations: CRDTOperations {
    public static let name = "lwwregister"
    public static func apply(_ code: UInt64, to state: inout LWWRegister<UInt64>, replica: ReplicaID, physical: UInt64) -> (label: String, delta: LWWRegister<UInt64>) {
        // A fresh clock per write is enough here: the write observes the register's current
        // stamp, so it always supersedes what this replica has seen.
        var clock = HybridLogicalClock()
        do {
            return ("write \(code % 10)", try state.write(code % 10, replica: replica, clock: &clock, physical: physical))
        } catch {
            preconditionFailure("a clock without an offset bound cannot refuse: \(error)")
        }
    }
}

public enum MaxRegisterOperations: CRDTOperations {
    public static let name = "maxregister"
    public static func apply(_ code: UInt64, to state: inout MaxRegister<UInt64>, replica: ReplicaID, physical: UInt64) -> (label: String, delta: MaxRegister<UInt64>) {
        ("write \(code % 100)", state.write(code % 100))
    }
}

/// A map of OR-sets: keys and elements collide often.
public enum ORMapOperations: CRDTOperations {
    public static let name = "ormap"
    public static func apply(_ code: UInt64, to state: inout ORMap<UInt64, ORSet<UInt64>>, replica: ReplicaID, physical: UInt64) -> (label: String, delta: ORMap<UInt64, ORSet<UInt64>>) {
        let key = code % 3
        let rest = code / 3
        if rest % 6 == 0 { return ("remove key \(key)", state.remove(key)) }
        var label = ""
        let delta = state.update(key) { set in
            let (inner, delta) = ORSetOperations.apply(rest / 6, to: &set, replica: replica, physical: physical)
            label = "key \(key): \(inner)"
            return delta
        }
        return (label, delta)
    }
}

/// A map of maps of multi-value registers: causal CRDTs nested two deep.
public enum NestedORMapOperations: CRDTOperations {
    public typealias Inner = ORMap<UInt64, MVRegister<UInt64>>
    public static let name = "nested-ormap"
    public static func apply(_ code: UInt64, to state: inout ORMap<String, Inner>, replica: ReplicaID, physical: UInt64) -> (label: String, delta: ORMap<String, Inner>) {
        let key = ["a", "b"][Int(code % 2)]
        let rest = code / 2
        if rest % 8 == 0 { return ("remove \(key)", state.remove(key)) }
        var label = ""
        let delta = state.update(key) { inner in
            let innerKey = (rest / 8) % 3
            let operation = rest / 24
            if operation % 5 == 0 {
                label = "\(key): remove \(innerKey)"
                return inner.remove(innerKey)
            }
            return inner.update(innerKey) { register in
                let (text, delta) = MVRegisterOperations.apply(operation, to: &register, replica: replica, physical: physical)
                label = "\(key).\(innerKey): \(text)"
                return delta
            }
        }
        return (label, delta)
    }
}

public enum BoundedCounterOperations: CRDTOperations {
    public static let name = "bcounter"
    public static func apply(_ code: UInt64, to state: inout BoundedCounter, replica: ReplicaID, physical: UInt64) -> (label: String, delta: BoundedCounter) {
        let amount = 1 + (code / 3) % 4
        do {
            switch code % 3 {
            case 0: return ("increment \(amount)", state.increment(by: amount, replica: replica))
            case 1: return ("decrement \(amount)", try state.decrement(by: amount, replica: replica))
            default:
                let target = ReplicaID(1 + (replica.rawValue + (code / 12) % 3) % 4)
                guard target != replica else { return ("transfer to self skipped", .bottom) }
                return ("transfer \(amount) to \(target)", try state.transfer(amount, from: replica, to: target))
            }
        } catch {
            return ("refused: \(error)", .bottom)
        }
    }
}
