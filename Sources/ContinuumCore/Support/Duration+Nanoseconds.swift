extension Duration {
    /// The duration in whole nanoseconds (truncated), for arithmetic on virtual time.
    public var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }

    /// Milliseconds as a floating-point number, for reports.
    public var milliseconds: Double { Double(nanoseconds) / 1_000_000 }
}
