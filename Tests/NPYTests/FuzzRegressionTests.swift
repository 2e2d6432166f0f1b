import Foundation
import NPY
import Testing

/// The fuzzer's seeds (Fuzz/seeds) and what it found, replayed on every
/// `swift test`: each must parse or be refused with an `NPYError` naming the
/// file, as `scripts/fuzz` demands of every input.
@Suite struct FuzzRegressionTests {
    /// Fuzz/seeds, from this file's place in the repository.
    static let seeds: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.appendingPathComponent("Fuzz/seeds").path
    }()

    /// Files named valid-* parse (and describe their own size); bad-* are refused.
    @Test func seedsParseOrAreRefused() throws {
        let names = try FileManager.default.contentsOfDirectory(atPath: Self.seeds).sorted()
        #expect(names.count >= 30)
        for name in names {
            let bytes = [UInt8](try #require(FileManager.default.contents(atPath: Self.seeds + "/" + name)))
            do {
                let header = try NPYHeader.parse(bytes, fileSize: bytes.count, path: name)
                #expect(name.hasPrefix("valid-"), "\(name) was accepted as \(header)")
                #expect(header.fileByteCount == bytes.count)
            } catch {
                #expect(name.hasPrefix("bad-"), "\(name) was refused: \(error)")
                #expect(error.path == name && !error.problem.isEmpty)
            }
        }
    }

    /// Hostile headers next to the ones RefusalTests lists, one thing
    /// wrong each: dimensions of every non-integer kind, bytes outside ASCII,
    /// a header length of zero, and sizes that only overflow with the offset.
    static let refusals: [Refusal] = [
        Refusal("boolean dimension", dictionary: numpyDictionary(shape: "(True, 2)"), "dimension True is not an integer"),
        Refusal("None dimension", dictionary: numpyDictionary(shape: "(None,)"), "dimension None is not an integer"),
        Refusal("string dimension", dictionary: numpyDictionary(shape: "('2',)"), "dimension '2' is not an integer"),
        Refusal("hexadecimal dimension", dictionary: numpyDictionary(shape: "(0x2,)"), "dimension 0x2 is not an integer"),
        Refusal("exponent dimension", dictionary: numpyDictionary(shape: "(2e0,)"), "dimension 2e0 is not an integer"),
        Refusal("nested dimension", dictionary: numpyDictionary(shape: "((2,),)"), "is not an integer"),
        Refusal("empty header", bytes: npyFile(dictionary: "", aligned: false), ["malformed at byte 0"]),
        Refusal("NUL in the header", dictionary: "{'descr': '<f4',\u{0} 'fortran_order': False, 'shape': (2,), }", "malformed"),
        Refusal("latin-1 key", bytes: npyFile(dictionary: "{'descr\u{E9}': '<f4'}", data: Array(repeating: 0, count: 8)),
                ["unknown key"]),
        Refusal("newline inside a string", dictionary: "{'descr': '<f\n4', 'fortran_order': False, 'shape': (2,), }",
                "unterminated string"),
        Refusal("escaped quote in dtype", dictionary: numpyDictionary(descr: "'<f4\\''"), "is not supported"),
        Refusal("byte count overflows only with the header",
                dictionary: numpyDictionary(descr: "'<f8'", shape: "(1152921504606846975,)"), "describes more bytes"),
        Refusal("zero-size array with a huge dimension", dictionary: numpyDictionary(shape: "(0, 9223372036854775807)"), dataBytes: 1,
                "1 trailing bytes"),
    ]

    @Test(arguments: refusals)
    func refuses(_ refusal: Refusal) {
        expectRefusal(of: "hostile.npy", mentioning: refusal.keywords) {
            _ = try NPYHeader.parse(refusal.bytes, fileSize: refusal.bytes.count, path: "hostile.npy")
        }
    }

    /// The header length field says more than the bytes handed to the
    /// parser, and the file claims sizes near Int.max: refused, no overflow.
    @Test func hugeClaimedFileSizes() {
        let valid = npyFile(dictionary: numpyDictionary(), data: Array(repeating: 0, count: 8))
        for fileSize in [Int.max, Int.max - 1, 1 << 62] {
            do {
                let header = try NPYHeader.parse(valid, fileSize: fileSize, path: "big.npy")
                Issue.record("accepted \(header) for a file of \(fileSize) bytes")
            } catch {
                #expect(error.problem.contains("trailing bytes"), "\(error)")
            }
        }
    }
}
