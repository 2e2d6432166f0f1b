import NPY
import Testing

/// The parser meets files from anywhere: whatever the bytes, it must return
/// a header or throw an `NPYError` naming the file, never trap or hang.
@Suite struct HostileInputTests {
    private static let path = "hostile.npy"
    private static let valid = npyFile(dictionary: numpyDictionary(shape: "(2, 3)"), data: fileBytes(sampleValues(6, as: Float.self)))

    @Test func everyTruncationIsRefused() {
        for length in 0..<Self.valid.count {
            expectRefusal(of: Self.path, mentioning: ["file is", "truncated"]) {
                _ = try NPYHeader.parse(Array(Self.valid.prefix(length)), fileSize: length, path: Self.path)
            }
        }
    }

    /// 20 000 copies of the valid file, each with a few bytes replaced by
    /// random ones or by characters that matter to the grammar.
    @Test func mutatedHeadersParseOrAreRefused() {
        var random = SplitMix64(seed: 0x5EED)
        let grammar = Array("{}()[],:'\"-+.eE0123456789 \n\\TrueFalseNone".utf8)
        var refusals = 0
        for _ in 0..<20_000 {
            var bytes = Self.valid
            for _ in 0..<(1 + random.next() % 4) {
                let index = Int(random.next() % 128)  // within the header
                bytes[index] = random.next() % 2 == 0 ? UInt8(truncatingIfNeeded: random.next()) : grammar[Int(random.next() % UInt64(grammar.count))]
            }
            do {
                let header = try NPYHeader.parse(bytes, fileSize: bytes.count, path: Self.path)
                #expect(header.fileByteCount == bytes.count)
            } catch {
                #expect(error.path == Self.path && !error.problem.isEmpty)
                refusals += 1
            }
        }
        #expect(refusals > 10_000)  // most mutations must break something
    }
}

/// A small, fast, seedable generator (Steele, Lea and Flood's SplitMix64), so
/// a failure found here reproduces.
struct SplitMix64 {
    private var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
