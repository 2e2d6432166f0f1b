import NPY
import Testing

@Suite struct WriterTests {
    @Test func twoWritersFillDisjointHalvesFloat16() throws {
        try twoWritersFillDisjointHalves(Float16.self)
    }

    @Test func twoWritersFillDisjointHalvesFloat() throws {
        try twoWritersFillDisjointHalves(Float.self)
    }

    @Test func twoWritersFillDisjointHalvesDouble() throws {
        try twoWritersFillDisjointHalves(Double.self)
    }

    /// As two ranks would: one creates, both open, each writes its rows.
    private func twoWritersFillDisjointHalves<T: NPYElement>(_ type: T.Type) throws {
        try withScratchDirectory { directory in
            let path = directory.file("batch.npy")
            let header = NPYHeader(dtype: T.npyDType, shape: [4, 3, 2])
            let values = sampleValues(24, as: T.self)
            let firstHalf = Array(values[..<12]), secondHalf = Array(values[12...])

            try NPYWriter.create(path: path, header: header).close()
            let first = try NPYWriter.open(path: path, header: header)
            let second = try NPYWriter.open(path: path, header: header)
            try second.write(secondHalf, elementOffset: 12)
            try first.write(firstHalf, elementOffset: 0)
            try first.sync()
            try second.sync()
            try first.close()
            try second.close()

            let (shape, read) = try NPY.read(path, as: T.self)
            #expect(shape == [4, 3, 2])
            #expect(fileBytes(read) == fileBytes(firstHalf + secondHalf))
        }
    }

    @Test func unwrittenElementsReadAsZero() throws {
        try withScratchDirectory { directory in
            let path = directory.file("sparse.npy")
            let writer = try NPYWriter.create(path: path, header: NPYHeader(dtype: .float32, shape: [4]))
            try writer.write([Float(7)], elementOffset: 2)
            try writer.close()
            #expect(try NPY.read(path, as: Float.self).values == [0, 0, 7, 0])
        }
    }

    @Test func openRefusesAFileWithAnotherHeader() throws {
        try withScratchDirectory { directory in
            let path = directory.file("other.npy")
            try NPY.write(path, shape: [2, 3], values: sampleValues(6, as: Float.self))
            for expected in [NPYHeader(dtype: .float32, shape: [3, 2]), NPYHeader(dtype: .float64, shape: [2, 3])] {
                expectRefusal(of: path, mentioning: ["file holds float32 (2, 3)", "expected \(expected)"]) {
                    _ = try NPYWriter.open(path: path, header: expected)
                }
            }
        }
    }

    @Test func openRefusesAFileOfTheWrongSize() throws {
        try withScratchDirectory { directory in
            let header = NPYHeader(dtype: .float32, shape: [2])
            let long = try directory.write(header.encoded() + Array(repeating: 0, count: 12), to: "long.npy")
            expectRefusal(of: long, mentioning: ["4 trailing bytes"]) { _ = try NPYWriter.open(path: long, header: header) }
            let short = try directory.write(header.encoded() + Array(repeating: 0, count: 4), to: "short.npy")
            expectRefusal(of: short, mentioning: ["truncated"]) { _ = try NPYWriter.open(path: short, header: header) }
            let absent = directory.file("absent.npy")
            expectRefusal(of: absent, mentioning: ["No such file"]) { _ = try NPYWriter.open(path: absent, header: header) }
        }
    }

    @Test func writeRefusesTheWrongTypeAndRange() throws {
        try withScratchDirectory { directory in
            let path = directory.file("checked.npy")
            let writer = try NPYWriter.create(path: path, header: NPYHeader(dtype: .float32, shape: [2, 3]))
            expectRefusal(of: path, mentioning: ["cannot write float64", "holds float32"]) {
                try writer.write([Double(1)], elementOffset: 0)
            }
            expectRefusal(of: path, mentioning: ["cannot write 2 elements at element 5", "6 elements"]) {
                try writer.write([Float(1), 2], elementOffset: 5)
            }
            expectRefusal(of: path, mentioning: ["at element -1"]) { try writer.write([Float(1)], elementOffset: -1) }
            try writer.write([Float](), elementOffset: 6)  // an empty range at the end is inside
            try writer.close()
            try writer.close()  // closing twice does nothing
            expectRefusal(of: path, mentioning: ["closed"]) { try writer.write([Float(1)], elementOffset: 0) }
        }
    }

    @Test func readRefusesTheWrongTypeAndRange() throws {
        try withScratchDirectory { directory in
            let path = directory.file("checked.npy")
            try NPY.write(path, shape: [3], values: [1.0, 2.0, 3.0])
            let reader = try NPYReader(path: path)
            expectRefusal(of: path, mentioning: ["cannot read float32", "holds float64"]) { _ = try reader.readAll(as: Float.self) }
            expectRefusal(of: path, mentioning: ["cannot read 2 elements at element 2", "3 elements"]) {
                _ = try reader.read(count: 2, elementOffset: 2, as: Double.self)
            }
            // A huge count is refused before anything is allocated.
            expectRefusal(of: path, mentioning: ["outside"]) { _ = try reader.read(count: Int.max, elementOffset: 1, as: Double.self) }
        }
    }

    @Test func createRefusesHeadersNumpyCouldNotLoad() throws {
        try withScratchDirectory { directory in
            let path = directory.file("never.npy")
            expectRefusal(of: path, mentioning: ["negative dimension -1"]) {
                _ = try NPYWriter.create(path: path, header: NPYHeader(dtype: .float32, shape: [2, -1]))
            }
            expectRefusal(of: path, mentioning: ["65 dimensions"]) {
                _ = try NPYWriter.create(path: path, header: NPYHeader(dtype: .float32, shape: Array(repeating: 1, count: 65)))
            }
            var moved = NPYHeader(dtype: .float32, shape: [2])
            moved.dataOffset = 100
            expectRefusal(of: path, mentioning: ["starts at byte 100", "encoding is 128 bytes"]) {
                _ = try NPYWriter.create(path: path, header: moved)
            }
            #expect(!fileExists(path))  // nothing was created
        }
    }

    @Test func wholeArrayWriteChecksTheValueCount() throws {
        try withScratchDirectory { directory in
            let path = directory.file("count.npy")
            expectRefusal(of: path, mentioning: ["3 values given for shape (2, 2), which holds 4 elements"]) {
                try NPY.write(path, shape: [2, 2], values: [Float(1), 2, 3])
            }
            #expect(!fileExists(path))
        }
    }
}
