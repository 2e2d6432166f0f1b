import Glibc

/// Writes one `.npy` file, possibly from several processes at once.
///
/// One process calls `create`, which writes the header and sizes the file.
/// After that has returned (for example after a barrier), every process, the
/// creator too, may `open` the file and write its own disjoint element range;
/// positioned writes (`pwrite`) need no coordination beyond disjointness.
///
/// `@unchecked Sendable`: `write` and `sync` may run on several threads at
/// once, but `close` must not run concurrently with them.
public final class NPYWriter: @unchecked Sendable {
    /// The file, as the caller named it.
    public let path: String
    /// The header written at the start of the file.
    public let header: NPYHeader
    /// nil once closed.
    private var file: SystemFile?

    private init(file: SystemFile, header: NPYHeader) {
        self.path = file.path
        self.header = header
        self.file = file
    }

    deinit {
        file?.closeIgnoringErrors()
    }

    /// Creates `path` (truncating an existing file), writes `header`, and
    /// sizes the file to `header.fileByteCount`; the data reads as zeros
    /// until written.
    ///
    /// Refuses a header numpy could not load (more than 64 dimensions, a
    /// negative dimension, a size beyond `Int`) or whose `dataOffset` is not
    /// the length of its encoding: build it with `NPYHeader(dtype:shape:)`.
    public static func create(path: String, header: NPYHeader) throws(NPYError) -> NPYWriter {
        try header.checkWritable(path: path)
        let file = try SystemFile.open(path, flags: O_WRONLY | O_CREAT | O_TRUNC, mode: 0o644, failure: "cannot create")
        do throws(NPYError) {
            let bytes = header.encoded()
            let result = bytes.withUnsafeBytes { encoded in
                Result { () throws(NPYError) in try file.write(encoded, at: 0) }
            }
            try result.get()
            try file.resize(to: header.fileByteCount)
        } catch {
            file.closeIgnoringErrors()
            throw error
        }
        return NPYWriter(file: file, header: header)
    }

    /// Opens a file `create` made, for writing (O_WRONLY, never creating it).
    ///
    /// The file's header is first read through a separate read-only
    /// descriptor and must equal `header`, and the file's size must be
    /// `header.fileByteCount`, so a process that disagrees about the shape
    /// or dtype, or opened the wrong file, fails here rather than writing
    /// its data to the wrong place.
    public static func open(path: String, header: NPYHeader) throws(NPYError) -> NPYWriter {
        try header.checkWritable(path: path)
        let found = try NPYReader(path: path).header
        guard found == header else {
            throw NPYError(path: path, problem: "file holds \(found), but the writer expected \(header)")
        }
        let file = try SystemFile.open(path, flags: O_WRONLY, failure: "cannot open for writing")
        return NPYWriter(file: file, header: header)
    }

    /// Writes `elements` at element `elementOffset`.
    ///
    /// Refuses when `T` is not the header's dtype or the range is not inside
    /// the array.
    public func write<T: NPYElement>(_ elements: UnsafeBufferPointer<T>, elementOffset: Int) throws(NPYError) {
        let file = try openFile()
        try header.checkAccess(to: T.self, elementOffset: elementOffset, count: elements.count, action: "write", path: path)
        try file.write(UnsafeRawBufferPointer(elements), at: header.dataOffset + elementOffset * MemoryLayout<T>.stride)
    }

    /// `write` for an array.
    public func write<T: NPYElement>(_ elements: [T], elementOffset: Int) throws(NPYError) {
        let result = elements.withUnsafeBufferPointer { buffer in
            Result { () throws(NPYError) in try write(buffer, elementOffset: elementOffset) }
        }
        try result.get()
    }

    /// Flushes this process's writes to the storage device (fsync), so that
    /// they survive a crash of this node.
    public func sync() throws(NPYError) {
        try openFile().sync()
    }

    /// Closes the file; closing again does nothing. A failure here can be the
    /// first report of a failed write, so it is thrown, not ignored as in deinit.
    public func close() throws(NPYError) {
        guard let file else { return }
        self.file = nil
        try file.close()
    }

    private func openFile() throws(NPYError) -> SystemFile {
        guard let file else { throw NPYError(path: path, problem: "the writer is closed") }
        return file
    }
}

extension NPYHeader {
    /// Refuses a header that `NPYWriter` cannot lay out as described.
    func checkWritable(path: String) throws(NPYError) {
        if let problem = sizeProblem() { throw NPYError(path: path, problem: problem) }
        let encodedLength = encoded().count
        guard dataOffset == encodedLength else {
            throw NPYError(
                path: path,
                problem: "header says its data starts at byte \(dataOffset), but its encoding is \(encodedLength) bytes; build it with NPYHeader(dtype:shape:)")
        }
    }
}
