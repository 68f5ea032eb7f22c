import Continuum
import ContinuumNIO
import Dispatch
import NIOCore
import NIOPosix
import Testing

/// An actor on a `NodeExecutor`, recording the order its calls ran in.
private actor Recorder {
    nonisolated let executor: NodeExecutor
    nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }
    private(set) var order: [String] = []

    init(executor: NodeExecutor) { self.executor = executor }

    func record(_ tag: String) { order.append(tag) }
    func run<T: Sendable>(_ body: @Sendable () -> T) -> T { body() }
}

@Suite(.timeLimit(.minutes(1))) struct NodeExecutorTests {
    enum Host: CaseIterable { case eventLoop, dispatchQueue }

    /// Waits up to 5 s for the executor to hold `count` waiting jobs.
    private func waitForJobs(_ executor: NodeExecutor, _ count: Int) async throws {
        for _ in 0..<500 where executor.jobsWaiting < count { try await Task.sleep(for: .milliseconds(10)) }
        #expect(executor.jobsWaiting == count)
    }

    @Test(arguments: Host.allCases)
    func aHighPriorityJobRunsBeforeTheClientWorkQueuedAheadOfIt(_ host: Host) async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let queue = DispatchQueue(label: "test.node")
        let executor = switch host {
        case .eventLoop: NodeExecutor(loop: group.next(), batch: 8)
        case .dispatchQueue: NodeExecutor(batch: 8, schedule: { queue.async(execute: $0) },
                                          checkIsolated: { dispatchPrecondition(condition: .onQueue(queue)) })
        }
        let recorder = Recorder(executor: executor)
        // Hold the host's thread so that every call waits, as client work waits behind a busy node.
        let gate = DispatchSemaphore(value: 0)
        switch host {
        case .eventLoop: group.next().execute { gate.wait() }
        case .dispatchQueue: queue.async { gate.wait() }
        }
        var calls: [Task<Void, Never>] = []
        for index in 0..<40 {
            calls.append(Task(priority: .medium) { await recorder.record("client \(index)") })
            try await waitForJobs(executor, index + 1)
        }
        calls.append(Task(priority: .high) { await recorder.record("heartbeat") })
        try await waitForJobs(executor, 41)
        gate.signal()
        for call in calls { await call.value }
        let order = await recorder.order
        #expect(order.first == "heartbeat")
        // Work of one priority keeps its order, across drains of 8 jobs.
        #expect(Array(order.dropFirst()) == (0..<40).map { "client \($0)" })
        try await group.shutdownGracefully()
    }

    @Test func aServersNodeRunsOnItsLoop() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        let recorder = Recorder(executor: NodeExecutor(loop: loop))
        #expect(await recorder.run { loop.inEventLoop })
        #expect(recorder.executor.jobsWaiting == 0)
        try await group.shutdownGracefully()
    }
}
