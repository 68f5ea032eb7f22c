import Continuum
import NIOCore

extension NodeExecutor {
    /// A node's executor on `loop`: in a server, the loop its Redis-protocol connections are
    /// served on (`RESPServer`), so a command crosses no thread between its socket and the node.
    public convenience init(loop: any EventLoop, batch: Int = 64) {
        self.init(batch: batch, schedule: { loop.execute($0) }, checkIsolated: { loop.preconditionInEventLoop() },
                  isCurrent: { loop.inEventLoop })
    }
}

/// Runs a task's nonisolated code on an event loop. A client connection's commands that need a
/// task run on the loop of its channel, which is the loop of the node's actor
/// (`NodeExecutor(loop:)`).
final class LoopTaskExecutor: TaskExecutor {
    let loop: any EventLoop

    init(_ loop: any EventLoop) { self.loop = loop }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        loop.execute { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}
