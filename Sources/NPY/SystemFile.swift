import Glibc

/// An open file descriptor and the path it was opened by, so that every
/// failure can name the file. The loops every caller needs live here once:
/// short transfers continue where they stopped, and EINTR is retried.
struct SystemFile {
    let descriptor: Int32
    let path: String

    /// Opens `path`, refusing anything but a regular file.
    ///
    /// O_NONBLOCK during the open keeps a FIFO at `path` from blocking forever
    /// waiting for a partner; it is cleared once the file is known to be
    /// regular. O_CLOEXEC keeps the descriptor out of child processes.
    ///
    /// - Parameter failure: what could not be done, for the message: "cannot open for reading".
    static func open(_ path: String, flags: Int32, mode: mode_t = 0, failure: String) throws(NPYError) -> SystemFile {
        var descriptor: Int32
        repeat {
            descriptor = Glibc.open(path, flags | O_CLOEXEC | O_NONBLOCK, mode)
        } while descriptor < 0 && errno == EINTR
        guard descriptor >= 0 else { throw .system(path: path, failure, errno: errno) }

        let file = SystemFile(descriptor: descriptor, path: path)
        do throws(NPYError) {
            try file.requireRegularFile()
            let flags = fcntl(descriptor, F_GETFL)
            guard flags >= 0, fcntl(descriptor, F_SETFL, flags & ~O_NONBLOCK) == 0 else {
                throw .system(path: path, "cannot clear O_NONBLOCK", errno: errno)
            }
        } catch {
            file.closeIgnoringErrors()
            throw error
        }
        return file
    }

    /// The file's size in bytes.
    func byteCount() throws(NPYError) -> Int {
        Int(try status().st_size)
    }

    /// Fills `buffer` from the file starting at byte `offset`.
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int) throws(NPYError) {
        try transferAll(buffer.count, at: offset, action: "read") { done, position in
            pread(descriptor, buffer.baseAddress! + done, buffer.count - done, position)
        }
    }

    /// `count` bytes from byte `offset`.
    func readBytes(count: Int, at offset: Int) throws(NPYError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        let result = bytes.withUnsafeMutableBytes { buffer in
            Result { () throws(NPYError) in try read(into: buffer, at: offset) }
        }
        try result.get()
        return bytes
    }

    /// Writes all of `bytes` to the file starting at byte `offset`.
    func write(_ bytes: UnsafeRawBufferPointer, at offset: Int) throws(NPYError) {
        try transferAll(bytes.count, at: offset, action: "write") { done, position in
            pwrite(descriptor, bytes.baseAddress! + done, bytes.count - done, position)
        }
    }

    /// Sets the file's size; new bytes read as zero (and take no disk space
    /// until written, on file systems with sparse files).
    func resize(to byteCount: Int) throws(NPYError) {
        var result: Int32
        repeat { result = ftruncate(descriptor, off_t(byteCount)) } while result != 0 && errno == EINTR
        guard result == 0 else { throw .system(path: path, "cannot set the file size to \(byteCount) bytes", errno: errno) }
    }

    /// Flushes written data to the storage device.
    func sync() throws(NPYError) {
        var result: Int32
        repeat { result = fsync(descriptor) } while result != 0 && errno == EINTR
        guard result == 0 else { throw .system(path: path, "fsync failed", errno: errno) }
    }

    /// Closes the descriptor. Not retried on EINTR: Linux has released the
    /// descriptor by then, and a retry could close one another thread opened.
    /// An error here can be the first report of a failed delayed write.
    func close() throws(NPYError) {
        guard Glibc.close(descriptor) != 0, errno != EINTR else { return }
        throw .system(path: path, "close failed", errno: errno)
    }

    /// For cleanup after another error, which is the one worth reporting.
    func closeIgnoringErrors() {
        _ = Glibc.close(descriptor)
    }

    // MARK: - Private

    private func status() throws(NPYError) -> stat {
        var status = stat()
        guard fstat(descriptor, &status) == 0 else { throw .system(path: path, "cannot stat", errno: errno) }
        return status
    }

    private func requireRegularFile() throws(NPYError) {
        let type = try status().st_mode & S_IFMT
        guard type != S_IFREG else { return }
        let kinds: [mode_t: String] = [
            S_IFDIR: "a directory", S_IFIFO: "a FIFO", S_IFCHR: "a character device",
            S_IFBLK: "a block device", S_IFSOCK: "a socket",
        ]
        throw NPYError(path: path, problem: "not a regular file (it is \(kinds[type] ?? "a special file"))")
    }

    /// Repeats `step` (a pread or pwrite of the bytes after the first `done`
    /// at file position `position`) until `count` bytes have moved.
    private func transferAll(
        _ count: Int, at offset: Int, action: String,
        _ step: (_ done: Int, _ position: off_t) -> Int
    ) throws(NPYError) {
        var done = 0
        while done < count {
            let moved = step(done, off_t(offset + done))
            if moved > 0 {
                done += moved
            } else if moved == 0 {
                // pread at end of file; pwrite never returns 0 for a non-empty request.
                throw NPYError(
                    path: path,
                    problem: "cannot \(action) \(count) bytes at byte \(offset): the file ends at byte \(offset + done); was it truncated while in use?")
            } else if errno != EINTR {
                throw .system(path: path, "cannot \(action) \(count) bytes at byte \(offset)", errno: errno)
            }
        }
    }
}
