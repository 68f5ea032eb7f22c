/// A 64-bit FNV-1a hash of everything a simulation did, in order. Two runs of one seed must
/// produce the same hash; a difference means something outside the seed (a clock read, global
/// randomness, hash-order iteration) leaked into the run.
public struct TraceHasher: Sendable, Equatable {
    public private(set) var value: UInt64 = 0xcbf2_9ce4_8422_2325

    public init() {}

    public mutating func combine(_ bytes: some Sequence<UInt8>) {
        for byte in bytes {
            value ^= UInt64(byte)
            value &*= 0x0000_0100_0000_01B3
        }
    }

    public mutating func combine(_ number: UInt64) {
        var rest = number
        for _ in 0..<8 {
            combine(CollectionOfOne(UInt8(truncatingIfNeeded: rest)))
            rest >>= 8
        }
    }

    public mutating func combine(_ number: Int64) { combine(UInt64(bitPattern: number)) }
}
