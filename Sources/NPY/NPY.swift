/// Whole-array reads and writes, for small arrays and tests.
///
/// Large arrays and multi-process writes go through `NPYReader` and
/// `NPYWriter`, which move element ranges without holding the whole array.
public enum NPY {
    /// The file's shape and every element in C order; `T` must match the
    /// file's dtype (no conversion).
    public static func read<T: NPYElement>(_ path: String, as type: T.Type = T.self) throws(NPYError) -> (shape: [Int], values: [T]) {
        let reader = try NPYReader(path: path)
        return (reader.header.shape, try reader.readAll(as: type))
    }

    /// Writes `values` (C order) as an array of `shape` and dtype `T.npyDType`.
    ///
    /// Checks the shape and the value count before creating anything, so a
    /// refused call leaves no file behind.
    public static func write<T: NPYElement>(_ path: String, shape: [Int], values: [T]) throws(NPYError) {
        let header = NPYHeader(dtype: T.npyDType, shape: shape)
        try header.checkWritable(path: path)
        guard values.count == header.elementCount else {
            throw NPYError(
                path: path,
                problem: "\(values.count) values given for shape \(header.shapeText), which holds \(header.elementCount) elements")
        }
        let writer = try NPYWriter.create(path: path, header: header)
        try writer.write(values, elementOffset: 0)
        try writer.close()
    }
}
