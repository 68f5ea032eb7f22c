import Dispatch
import DequeModule
import Synchronization

/// The serial executor a node's actor runs on. Jobs run in arrival order, except that a job of
/// priority `.high` or above (consensus messages and timers) goes ahead of every waiting job of
/// lower priority, so a heartbeat never waits behind the client work queued before it. Jobs
/// run in drains of at most `batch`, each drain scheduled on the host's thread: a Dispatch
/// queue of the node's own (`init(label:)`), or in a server the event loop its client
/// connections run on (see `ContinuumNIO`), so that a command is read, applied and answered
/// on one thread.
public final class NodeExecutor: SerialExecutor, Sendable {
    private let batch: Int
    private let schedule: @Sendable (@escaping @Sendable () -> Void) -> Void
    private let isolation: @Sendable () -> Void
    private let current: @Sendable () -> Bool
    private let queues = Mutex<Lanes>(Lanes())
    /// Jobs at this priority or above go to the urgent lane.
    private static let urgentPriority = JobPriority(TaskPriority.high).rawValue

    private struct Lanes: ~Copyable {
        var urgent = Deque<UnownedJob>()
        var normal = Deque<UnownedJob>()
        var scheduled = false
    }

    /// An executor whose drains run where `schedule` runs them, one at a time and in order
    /// (a serial queue, an event loop); `checkIsolated` traps unless called from there, and
    /// `isCurrent` tells whether the caller runs there (nil: never said to).
    public init(batch: Int = 64, schedule: @escaping @Sendable (@escaping @Sendable () -> Void) -> Void,
                checkIsolated: @escaping @Sendable () -> Void, isCurrent: (@Sendable () -> Bool)? = nil) {
        precondition(batch > 0, "a drain must run at least one job")
        self.batch = batch
        self.schedule = schedule
        self.isolation = checkIsolated
        self.current = isCurrent ?? { false }
    }

    /// Whether the caller runs on the executor's thread (an event loop's own), where nothing
    /// else of the executor's can run at the same time: it may then `assumeIsolated`.
    public var isCurrent: Bool { current() }

    /// An executor on a serial Dispatch queue of its own (an embedded node's).
    public convenience init(label: String, batch: Int = 64) {
        let queue = DispatchQueue(label: label)
        self.init(batch: batch, schedule: { queue.async(execute: $0) },
                  checkIsolated: { dispatchPrecondition(condition: .onQueue(queue)) })
    }

    /// Runs `body` on the executor's thread, between drains (in the host's order, not a
    /// lane's): for work that isolates itself with `assumeIsolated` (a store's completion),
    /// without a task.
    public func run(_ body: @escaping @Sendable () -> Void) {
        schedule(body)
    }

    /// Jobs waiting to run now (urgent and normal).
    public var jobsWaiting: Int { queues.withLock { $0.urgent.count + $0.normal.count } }

    public func enqueue(_ job: consuming ExecutorJob) {
        let urgent = job.priority.rawValue >= Self.urgentPriority
        let job = UnownedJob(job)
        let first = queues.withLock { lanes in
            if urgent { lanes.urgent.append(job) } else { lanes.normal.append(job) }
            defer { lanes.scheduled = true }
            return !lanes.scheduled
        }
        if first { schedule { self.drain() } }
    }

    /// Runs up to `batch` jobs, urgent ones first; schedules itself again if any are left, so
    /// that the host's other work (an event loop's sockets) runs in between.
    private func drain() {
        let executor = asUnownedSerialExecutor()
        for _ in 0..<batch {
            let next = queues.withLock { lanes -> UnownedJob? in
                if let job = lanes.urgent.popFirst() { return job }
                if let job = lanes.normal.popFirst() { return job }
                lanes.scheduled = false
                return nil
            }
            guard let next else { return }
            next.runSynchronously(on: executor)
        }
        schedule { self.drain() }
    }

    public func asUnownedSerialExecutor() -> UnownedSerialExecutor {
        UnownedSerialExecutor(complexEquality: self)
    }

    public func isSameExclusiveExecutionContext(other: NodeExecutor) -> Bool {
        other === self
    }

    public func checkIsolated() {
        isolation()
    }
}
