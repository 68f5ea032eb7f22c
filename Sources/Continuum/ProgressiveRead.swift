import ContinuumCore

/// One step of a progressive read (after Correctables): a preliminary view, then the final one.
public struct ReadUpdate<Value: Sendable>: Sendable {
    public var result: ReadResult<Value>
    /// False for the preliminary local view; true for the answer to the levels asked for.
    public var isFinal: Bool

    public var value: Value { result.value }
    public var guarantee: DeliveredGuarantee { result.guarantee }
}

/// A progressive read: the local state at once (labelled with what this replica can certify),
/// then the answer under the levels asked for when it arrives, which is the last element. When
/// that answer fails, the stream ends with its error after the preliminary view. An
/// application can act on the first element speculatively and correct itself on the second.
public typealias ProgressiveRead<Value: Sendable> = AsyncThrowingStream<ReadUpdate<Value>, any Error>

func makeProgressiveRead<Value: Sendable>(
    preliminary: @escaping @Sendable () async throws(ContinuumError) -> ReadResult<Value>,
    final: @escaping @Sendable () async throws(ContinuumError) -> ReadResult<Value>
) -> ProgressiveRead<Value> {
    let (stream, continuation) = ProgressiveRead<Value>.makeStream()
    let task = Task {
        do {
            // Both start at once: the final read's latency bound runs from the call.
            async let finalResult = final()
            if let first = try? await preliminary() { continuation.yield(ReadUpdate(result: first, isFinal: false)) }
            continuation.yield(ReadUpdate(result: try await finalResult, isFinal: true))
            continuation.finish()
        } catch {
            continuation.finish(throwing: error)
        }
    }
    continuation.onTermination = { _ in task.cancel() }
    return stream
}

extension Register {
    /// Reads progressively: the local state at once, then the answer under `levels`.
    ///
    /// ```swift
    /// for try await update in pages.progressiveRead(levels: [.staleness(.zero, within: .milliseconds(50))]) {
    ///     render(update.value, provisional: !update.isFinal)
    /// }
    /// ```
    public func progressiveRead(levels: [ServiceLevel]) -> ProgressiveRead<Value> {
        makeProgressiveRead(preliminary: { () async throws(ContinuumError) in try await read(levels: [.local]) },
                        final: { () async throws(ContinuumError) in try await read(levels: levels) })
    }

    /// Reads progressively under `policy` (see `read(_:)`).
    public func progressiveRead(_ policy: Policy) -> ProgressiveRead<Value> { progressiveRead(levels: policy.serviceLevels) }
}

extension LinearizableRegister {
    /// Reads progressively: this replica's value at once (with the staleness it can certify),
    /// then the answer under `levels`, for example a linearizable read.
    public nonisolated func progressiveRead(levels: [ServiceLevel]) -> ProgressiveRead<Int64?> {
        makeProgressiveRead(preliminary: { () async throws(ContinuumError) in try await self.read(levels: [.local]) },
                        final: { () async throws(ContinuumError) in try await self.read(levels: levels) })
    }

    /// Reads progressively under `policy`, `.linearizable` by default.
    public nonisolated func progressiveRead(_ policy: Policy = .linearizable) -> ProgressiveRead<Int64?> {
        progressiveRead(levels: policy.serviceLevels)
    }
}
