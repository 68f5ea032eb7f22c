import Synchronization

/// How long a call into the node's actor waited, as sampled by the process that runs the node
/// (a cheap call a few times a second): the latency that every command, message and timer of
/// every mechanism sees before it starts. Readable from any thread.
public final class ResponsivenessProbe: Sendable {
    public struct Figures: Sendable, Equatable {
        /// The last sample, and the largest since the node started.
        public var last: Duration = .zero
        public var maximum: Duration = .zero
        public var samples = 0
    }

    private let figures = Mutex(Figures())

    public init() {}

    public func record(_ wait: Duration) {
        figures.withLock {
            $0.last = wait
            $0.maximum = max($0.maximum, wait)
            $0.samples += 1
        }
    }

    public var current: Figures { figures.withLock { $0 } }
}
