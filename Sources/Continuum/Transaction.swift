import ContinuumCore
import ContinuumProtocols

/// A serializable transaction in progress (see `Node.transaction`). Reads take shared locks and
/// writes exclusive locks at every replica as they happen (strict two-phase locking); writes
/// are buffered and commit together when the transaction's body returns.
public actor Transaction {
    public nonisolated let node: Node
    private let handle: UInt64
    private var step: UInt64 = 0
    private var writes: [String: TransactionValue] = [:]
    private var exclusive: Set<String> = []
    private var readValues: [String: TransactionValue?] = [:]

    init(node: Node, handle: UInt64) {
        self.node = node
        self.handle = handle
    }

    /// The register's value as this transaction sees it (its own writes included).
    public func read(_ key: String) async throws(ContinuumError) -> TransactionValue? {
        if let written = writes[key] { return written }
        if let known = readValues[key] { return known }
        step += 1
        let values = try await node.lockForTransaction(handle, step: step, [LockRequest(key: key, mode: .shared)])
        readValues[key] = values[key]
        return values[key]
    }

    /// An integer register's value (nil when absent or not an integer).
    public func readInt(_ key: String) async throws(ContinuumError) -> Int64? {
        if case let .int(value)? = try await read(key) { return value }
        return nil
    }

    /// Writes `value` when the transaction commits; takes the exclusive lock now.
    public func write(_ key: String, _ value: TransactionValue) async throws(ContinuumError) {
        if !exclusive.contains(key) {
            step += 1
            let values = try await node.lockForTransaction(handle, step: step, [LockRequest(key: key, mode: .exclusive)])
            exclusive.insert(key)
            if readValues[key] == nil { readValues[key] = values[key] }
        }
        writes[key] = value
    }

    func bufferedWrites() -> [TransactionWrite] {
        writes.keys.sorted().map { TransactionWrite(key: $0, value: writes[$0]!) }
    }
}
