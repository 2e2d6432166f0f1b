import Glibc

/// A `.npy` file opened read-only, its header parsed and checked on open.
///
/// The file is never opened for writing, so a reader cannot damage an input.
/// Reads are positioned (`pread`), so one reader may serve several threads.
public final class NPYReader: Sendable {
    /// The file, as the caller named it.
    public let path: String
    /// The file's header, checked against the file's size.
    public let header: NPYHeader
    private let file: SystemFile

    /// Opens `path` and reads its header.
    ///
    /// Refuses a missing or unreadable file, anything but a regular file,
    /// every malformed or unsupported header (see `NPYHeader.parse`), and a
    /// file whose size is not exactly `header.fileByteCount`.
    public init(path: String) throws(NPYError) {
        let file = try SystemFile.open(path, flags: O_RDONLY, failure: "cannot open for reading")
        do throws(NPYError) {
            header = try Self.readHeader(of: file)
        } catch {
            file.closeIgnoringErrors()
            throw error
        }
        self.path = path
        self.file = file
    }

    deinit {
        file.closeIgnoringErrors()  // read-only: nothing can be lost
    }

    /// Reads `buffer.count` elements starting at element `elementOffset`.
    ///
    /// Refuses when `T` is not the file's dtype (the bytes would be
    /// reinterpreted) or when the range is not inside the array.
    public func read<T: NPYElement>(into buffer: UnsafeMutableBufferPointer<T>, elementOffset: Int) throws(NPYError) {
        try header.checkAccess(to: T.self, elementOffset: elementOffset, count: buffer.count, action: "read", path: path)
        try file.read(into: UnsafeMutableRawBufferPointer(buffer), at: header.dataOffset + elementOffset * MemoryLayout<T>.stride)
    }

    /// `count` elements starting at element `elementOffset`, such as one
    /// rank's share of the batch. The range is checked before anything is
    /// allocated.
    public func read<T: NPYElement>(count: Int, elementOffset: Int, as type: T.Type = T.self) throws(NPYError) -> [T] {
        try header.checkAccess(to: T.self, elementOffset: elementOffset, count: count, action: "read", path: path)
        var values = [T](repeating: 0, count: count)
        let result = values.withUnsafeMutableBufferPointer { buffer in
            Result { () throws(NPYError) in try read(into: buffer, elementOffset: elementOffset) }
        }
        try result.get()
        return values
    }

    /// Every element, in C order.
    public func readAll<T: NPYElement>(as type: T.Type = T.self) throws(NPYError) -> [T] {
        try read(count: header.elementCount, elementOffset: 0, as: type)
    }

    /// Reads the preamble to learn the header's length, then the header. Both
    /// reads are bounded by the file's size and `NPYHeader.maximumHeaderLength`.
    private static func readHeader(of file: SystemFile) throws(NPYError) -> NPYHeader {
        let fileSize = try file.byteCount()
        let preamble = try file.readBytes(count: min(fileSize, NPYHeader.longestPreamble), at: 0)
        let dataOffset = try NPYHeader.dataOffset(preamble: preamble, fileSize: fileSize, path: file.path)
        let headerBytes = try file.readBytes(count: dataOffset, at: 0)
        return try NPYHeader.parse(headerBytes, fileSize: fileSize, path: file.path)
    }
}
