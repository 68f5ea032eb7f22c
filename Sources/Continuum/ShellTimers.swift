/// The pending timers of one protocol instance in a real-time shell: one task per timer,
/// sleeping on the clock. Setting a timer again replaces it; a firing that arrives after its
/// timer was replaced or cancelled is recognized as stale by its generation.
struct ShellTimers<Timer: Hashable & Sendable> {
    private var generations: [Timer: UInt64] = [:]
    private var tasks: [Timer: Task<Void, Never>] = [:]
    private var nextGeneration: UInt64 = 0

    /// Schedules `timer`; `fire` is called with it and its generation after `delay`, from a task
    /// of `priority` (the node's actor runs waiting jobs of higher priority first).
    mutating func set(_ timer: Timer, after delay: Duration, priority: TaskPriority? = nil,
                      fire: @escaping @Sendable (Timer, UInt64) async -> Void) {
        nextGeneration += 1
        let generation = nextGeneration
        generations[timer] = generation
        tasks[timer]?.cancel()
        tasks[timer] = Task(priority: priority) {
            try? await Task.sleep(for: delay)
            guard !Task.isCancelled else { return }
            await fire(timer, generation)
        }
    }

    mutating func cancel(_ timer: Timer) {
        generations[timer] = nil
        tasks.removeValue(forKey: timer)?.cancel()
    }

    /// Whether a firing is current; if so the timer is consumed.
    mutating func consume(_ timer: Timer, generation: UInt64) -> Bool {
        guard generations[timer] == generation else { return false }
        generations[timer] = nil
        tasks[timer] = nil
        return true
    }

    mutating func cancelAll() {
        for task in tasks.values { task.cancel() }
        tasks.removeAll()
        generations.removeAll()
    }
}
