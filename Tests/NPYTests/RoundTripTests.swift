import NPY
import Testing

/// Scalar, one-dimensional, three-dimensional and empty arrays.
private let shapes: [[Int]] = [[], [5], [2, 3, 4], [0, 3]]

@Suite struct RoundTripTests {
    @Test(arguments: shapes) func float16(shape: [Int]) throws {
        try roundTrip(Float16.self, shape: shape)
    }

    @Test(arguments: shapes) func float32(shape: [Int]) throws {
        try roundTrip(Float.self, shape: shape)
    }

    @Test(arguments: shapes) func float64(shape: [Int]) throws {
        try roundTrip(Double.self, shape: shape)
    }

    /// Writes with `NPY.write`, reads with `NPY.read` and `NPYReader`, and
    /// checks the bytes, the shape and the file's layout.
    private func roundTrip<T: NPYElement>(_ type: T.Type, shape: [Int]) throws {
        try withScratchDirectory { directory in
            let path = directory.file("array.npy")
            let values = sampleValues(shape.reduce(1, *), as: T.self)
            try NPY.write(path, shape: shape, values: values)

            let (readShape, readValues) = try NPY.read(path, as: T.self)
            #expect(readShape == shape)
            #expect(fileBytes(readValues) == fileBytes(values))

            let reader = try NPYReader(path: path)
            #expect(reader.header == NPYHeader(dtype: T.npyDType, shape: shape))
            #expect(reader.header.dataOffset % 64 == 0)
            let fileSize = try fileSize(path)
            #expect(fileSize == reader.header.dataOffset + values.count * MemoryLayout<T>.size)
        }
    }

    /// A file numpy wrote (`np.save` of `np.arange(6, dtype='<f2').reshape(2, 3) * np.float16(0.375)`),
    /// so the half layout is numpy's and not only our own writer's.
    @Test func readsFloat16AsNumpyWroteIt() throws {
        let (shape, values) = try NPY.read(FuzzRegressionTests.seeds + "/valid-f2-2x3", as: Float16.self)
        #expect(shape == [2, 3])
        #expect(values == [0, 0.375, 0.75, 1.125, 1.5, 1.875])
    }

    @Test func readsASliceAtAnOffset() throws {
        try withScratchDirectory { directory in
            let path = directory.file("slice.npy")
            let values = sampleValues(24, as: Double.self)
            try NPY.write(path, shape: [4, 6], values: values)
            let reader = try NPYReader(path: path)
            let row2 = try reader.read(count: 6, elementOffset: 12, as: Double.self)
            #expect(fileBytes(row2) == fileBytes(Array(values[12..<18])))

            var buffer = [Double](repeating: 0, count: 3)
            try buffer.withUnsafeMutableBufferPointer { try reader.read(into: $0, elementOffset: 21) }
            #expect(buffer == Array(values[21..<24]))
        }
    }

    @Test func createTruncatesALongerFile() throws {
        try withScratchDirectory { directory in
            let path = directory.file("reused.npy")
            try NPY.write(path, shape: [1000], values: sampleValues(1000, as: Double.self))
            try NPY.write(path, shape: [2], values: [Float(1), 2])
            #expect(try NPY.read(path, as: Float.self).values == [1, 2])
        }
    }
}
