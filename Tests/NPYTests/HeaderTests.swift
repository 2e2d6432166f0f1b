import NPY
import Testing

@Suite struct HeaderEncodingTests {
    @Test(arguments: [[], [5], [2, 3], [0, 3], [7, 1, 1, 2, 3, 4]], NPYDType.allCases)
    func layoutFollowsNumpy(shape: [Int], dtype: NPYDType) throws {
        let header = NPYHeader(dtype: dtype, shape: shape)
        let bytes = header.encoded()

        #expect(bytes.count % 64 == 0)
        #expect(bytes.count == header.dataOffset)
        #expect(Array(bytes[0..<8]) == [0x93] + Array("NUMPY".utf8) + [1, 0])
        #expect(Int(bytes[8]) | Int(bytes[9]) << 8 == bytes.count - 10)
        #expect(bytes.last == UInt8(ascii: "\n"))

        let dictionary = String(decoding: bytes[10...], as: UTF8.self)
        #expect(dictionary.hasPrefix("{'descr': '\(dtype.descr)', 'fortran_order': False, 'shape': "))
        #expect(try NPYHeader.parse(bytes, fileSize: header.fileByteCount, path: "h.npy") == header)
    }

    @Test func shapeIsWrittenAsAPythonTuple() {
        let cases: [([Int], String)] = [([], "()"), ([5], "(5,)"), ([2, 3, 4], "(2, 3, 4)")]
        for (shape, tuple) in cases {
            let bytes = NPYHeader(dtype: .float32, shape: shape).encoded()
            let text = String(decoding: bytes[10...], as: UTF8.self)
            #expect(text.hasPrefix("{'descr': '<f4', 'fortran_order': False, 'shape': \(tuple), }"))
        }
    }

    @Test func switchesToVersion2WhenTheHeaderOutgrowsA2ByteLength() throws {
        let header = NPYHeader(dtype: .float32, shape: Array(repeating: 1, count: 30_000))
        let bytes = header.encoded()
        #expect(bytes.count > 65_535)
        #expect(bytes[6] == 2 && bytes[7] == 0)
        #expect(bytes.count % 64 == 0)
        let length = bytes[8..<12].reversed().reduce(0) { $0 << 8 | Int($1) }
        #expect(length == bytes.count - 12)
        #expect(bytes.last == UInt8(ascii: "\n"))
        #expect(header.encoded(version: .v1_0) == nil)
    }

    @Test func version2HeaderReadsBack() throws {
        try withScratchDirectory { directory in
            let values = sampleValues(6, as: Float.self)
            let header = NPYHeader(dtype: .float32, shape: [2, 3])
            let encoded = try #require(header.encoded(version: .v2_0))
            #expect(encoded[6] == 2 && encoded.count % 64 == 0)
            let path = try directory.write(encoded + fileBytes(values), to: "v2.npy")

            let reader = try NPYReader(path: path)
            #expect(reader.header.shape == [2, 3] && reader.header.dtype == .float32)
            #expect(reader.header.dataOffset == encoded.count)
            #expect(fileBytes(try reader.readAll(as: Float.self)) == fileBytes(values))
        }
    }
}

/// Headers as numpy and other writers spell them, built by hand.
@Suite struct HeaderParsingTests {
    struct Spelling: CustomTestStringConvertible, Sendable {
        var name: String
        var version: (major: UInt8, minor: UInt8) = (1, 0)
        var dictionary: String
        var aligned = true
        var testDescription: String { name }
    }

    static let spellings: [Spelling] = [
        // numpy 2.x: sorted keys, trailing ", ", room to grow the first axis.
        Spelling(name: "numpy", dictionary: "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }" + String(repeating: " ", count: 20)),
        Spelling(name: "numpy v2", version: (2, 0), dictionary: "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }"),
        // np.save(..., version=(3, 0)): 2.0's layout, the header in UTF-8.
        Spelling(name: "numpy v3", version: (3, 0), dictionary: "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }"),
        Spelling(name: "double quotes, no trailing comma", dictionary: #"{"descr": "<f8", "fortran_order": False, "shape": (2, 3)}"#),
        Spelling(name: "keys reordered", dictionary: "{'shape': (2, 3), 'descr': '<f8', 'fortran_order': False}"),
        Spelling(name: "odd whitespace", dictionary: "{ 'fortran_order' :False ,\n\t'shape':( 2 ,3 ) , \"descr\"  :  '<f8' ,}"),
        Spelling(name: "trailing comma in shape", dictionary: "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3,)}"),
        // numpy before 1.9 aligned to 16 bytes; the reader must not insist on 64.
        Spelling(name: "unaligned", dictionary: "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }\n", aligned: false),
    ]

    @Test(arguments: spellings) func parses(spelling: Spelling) throws {
        try withScratchDirectory { directory in
            let values = sampleValues(6, as: Double.self)
            let bytes = npyFile(
                version: spelling.version, dictionary: spelling.dictionary, aligned: spelling.aligned, data: fileBytes(values))
            let path = try directory.write(bytes, to: "spelled.npy")

            let reader = try NPYReader(path: path)
            #expect(reader.header.dtype == .float64)
            #expect(reader.header.shape == [2, 3])
            #expect(reader.header.dataOffset == bytes.count - 48)
            #expect(fileBytes(try reader.readAll(as: Double.self)) == fileBytes(values))
        }
    }

    @Test func scalarAndOneDimensionalShapes() throws {
        for (shapeText, shape) in [("()", [Int]()), ("(5,)", [5]), ("(0, 3)", [0, 3])] {
            let header = NPYHeader(dtype: .float32, shape: shape)
            let bytes = npyFile(dictionary: numpyDictionary(shape: shapeText))
            let parsed = try NPYHeader.parse(bytes, fileSize: bytes.count + header.dataByteCount, path: "s.npy")
            #expect(parsed.shape == shape)
            #expect(parsed.elementCount == (shape == [5] ? 5 : shape.isEmpty ? 1 : 0))
        }
    }

    @Test func parseNeedsTheWholeHeader() throws {
        let bytes = npyFile(dictionary: numpyDictionary(), data: fileBytes([Float(1), 2]))
        #expect(try NPYHeader.dataOffset(preamble: Array(bytes.prefix(12)), fileSize: bytes.count, path: "p.npy") == 128)
        expectRefusal(of: "p.npy", mentioning: ["given the first 40 bytes", "needs 128"]) {
            _ = try NPYHeader.parse(Array(bytes.prefix(40)), fileSize: bytes.count, path: "p.npy")
        }
    }
}
