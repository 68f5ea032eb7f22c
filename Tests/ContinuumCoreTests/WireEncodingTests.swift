import ContinuumCore
import Testing

/// The compact encoding: canonical, bounded and safe on hostile input.
@Suite struct WireEncodingTests {
    @Test func varintsAreCompact() throws {
        #expect(UInt64(0).binaryEncoded() == [0])
        #expect(UInt64(127).binaryEncoded() == [127])
        #expect(UInt64(128).binaryEncoded() == [0x80, 1])
        #expect(UInt64.max.binaryEncoded().count == 10)
        #expect(Int64(-1).binaryEncoded() == [1])
        for value: Int64 in [0, -1, 1, .min, .max, -300] {
            #expect(try Int64(binary: value.binaryEncoded()) == value)
        }
    }

    @Test func setsAndDictionariesEncodeCanonically() {
        // Equal values built in different orders encode to the same bytes.
        let a: Set<String> = Set((0..<50).map { "element \($0)" })
        let b: Set<String> = Set((0..<50).reversed().map { "element \($0)" })
        #expect(a.binaryEncoded() == b.binaryEncoded())
        var left = ORSet<String>()
        var right = ORSet<String>()
        for index in 0..<20 { left.insert("\(index)", replica: ReplicaID(UInt64(index % 3))) }
        for index in (0..<20).reversed() { right.insert("\(index)", replica: ReplicaID(UInt64(index % 3))) }
        let l = left.join(right)
        let r = right.join(left)
        #expect(l == r)
        #expect(l.binaryEncoded() == r.binaryEncoded())
    }

    @Test func truncatedInputIsAnErrorNotACrash() {
        var set = ORSet<String>()
        set.insert("hello", replica: ReplicaID(1))
        let bytes = set.binaryEncoded()
        for length in 0..<bytes.count {
            #expect(throws: WireDecodingError.self) { try ORSet<String>(binary: Array(bytes.prefix(length))) }
        }
    }

    @Test func hostileCountsAndOverflowsAreRefused() {
        // A count of 2^62 elements in a 10-byte message must not allocate.
        var writer = BinaryWriter()
        writer.writeVarint(1 << 62)
        #expect(throws: WireDecodingError.countExceedsInput(count: 1 << 62, remaining: 0)) {
            try [UInt64](binary: writer.bytes)
        }
        #expect(throws: WireDecodingError.varintOverflow) {
            try UInt64(binary: [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F])
        }
        #expect(throws: WireDecodingError.trailingBytes(1)) { try UInt64(binary: [1, 2]) }
        #expect(throws: WireDecodingError.self) { try String(binary: [2, 0xFF, 0xFE]) }
        #expect(throws: WireDecodingError.self) { try Bool(binary: [7]) }
    }

    @Test func invalidStatesAreRefused() throws {
        // A dot counter of zero.
        #expect(throws: WireDecodingError.self) { try Dot(binary: [1, 0]) }
        // An OR-set whose store holds a dot its context has not seen.
        var writer = BinaryWriter()
        writer.write(DotMap<String, DotSet>(["x": DotSet([Dot(ReplicaID(1), 5)])]))
        writer.write(CausalContext())
        #expect(throws: WireDecodingError.self) { try ORSet<String>(binary: writer.bytes) }
        // A duplicate set element.
        #expect(throws: WireDecodingError.self) { try Set<UInt64>(binary: [2, 1, 1]) }
        // One dot under two keys (one update writes one key): the dot index could not say
        // which key a remove must look at.
        let dot = Dot(ReplicaID(1), 1)
        let shared = DotMap<String, DotSet>(["x": DotSet([dot]), "y": DotSet([dot])]).binaryEncoded()
        #expect(throws: WireDecodingError.invalid("dot map with a dot under two keys")) { try DotMap<String, DotSet>(binary: shared) }
        let apart = DotMap<String, DotSet>(["x": DotSet([dot]), "y": DotSet([Dot(ReplicaID(1), 2)])])
        #expect(try DotMap<String, DotSet>(binary: apart.binaryEncoded()) == apart)
    }

    @Test func decodedContextIsCompacted() throws {
        // A context sent in non-compact form (dot 1 in the cloud) is normalized on receipt.
        var writer = BinaryWriter()
        writer.write(VersionVector())
        writer.write(Set([Dot(ReplicaID(1), 1), Dot(ReplicaID(1), 2)]))
        let context = try CausalContext(binary: writer.bytes)
        #expect(context.cloud.isEmpty)
        #expect(context == CausalContext(dots: [Dot(ReplicaID(1), 1), Dot(ReplicaID(1), 2)]))

        // Cloud dots under the vector, one that extends it, and runs of two replicas, in no order:
        // read into runs, the vector raised over what continues it.
        writer = BinaryWriter()
        writer.write(VersionVector([ReplicaID(1): 3]))
        let cloud = [(1, 7), (2, 2), (1, 2), (1, 5), (1, 4), (2, 3), (2, 9)].map { Dot(ReplicaID($0.0), $0.1) }
        writer.writeVarint(UInt64(cloud.count))
        for dot in cloud { dot.encode(to: &writer) }
        let read = try CausalContext(binary: writer.bytes)
        let expected = CausalContext(dots: (1...5).map { Dot(ReplicaID(1), $0) } + cloud)
        #expect(read == expected)
        #expect(read.versionVector[ReplicaID(1)] == 5 && read.cloud == [Dot(ReplicaID(1), 7), Dot(ReplicaID(2), 2), Dot(ReplicaID(2), 3), Dot(ReplicaID(2), 9)])

        // The same cloud dot twice is refused, as a set's encoding with a duplicate is.
        writer = BinaryWriter()
        writer.write(VersionVector())
        writer.writeVarint(3)
        for counter in [4, 6, 4] as [UInt64] { Dot(ReplicaID(1), counter).encode(to: &writer) }
        #expect(throws: WireDecodingError.invalid("duplicate set element")) { try CausalContext(binary: writer.bytes) }
    }
}
