#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import CMPI

/// A non-blocking MPI operation in flight (`MPI_Request`).
///
/// This Open MPI build has no progress thread: the operation advances only
/// inside MPI calls. During long overlapped work call `test()` from time to
/// time, then `wait()`.
///
/// Dropping a request that is still active waits for it in `deinit`, because
/// MPI may still be writing into the caller's buffer. An error there cannot be
/// thrown, so it is printed on standard error: call `wait()` to handle it.
public final class Request {
    /// Optional only because `MPI_Test` and `MPI_Wait` take a pointer to an
    /// optional; MPI sets it to `MPI_REQUEST_NULL` when the operation completes.
    private var handle: MPI_Request?
    /// The call that started the operation, for messages from `deinit`.
    private let startedBy: String
    /// Arguments MPI reads until the operation completes (the counts of a
    /// non-blocking gather); freed once it has.
    private let owned: UnsafeMutableRawBufferPointer?
    /// An object whose memory MPI reads and writes until the operation
    /// completes (the words of a reproducible allreduce), kept alive until then.
    private let retained: AnyObject?

    init(_ handle: MPI_Request?, startedBy call: String, owning owned: UnsafeMutableRawBufferPointer? = nil,
         retaining retained: AnyObject? = nil) {
        self.handle = handle
        self.startedBy = call
        self.owned = owned
        self.retained = retained
    }

    /// True until the operation has been seen to complete by `test()` or
    /// `wait()`.
    public var isActive: Bool { handle != MPI_REQUEST_NULL }

    /// Advances the operation and reports whether it has completed
    /// (`MPI_Test`). After it returns true the buffer is the caller's again.
    public func test() throws -> Bool {
        guard isActive else { return true }
        var isComplete: Int32 = 0
        try check(MPI_Test(&handle, &isComplete, MPI_STATUS_IGNORE), "MPI_Test")
        return isComplete != 0
    }

    /// Blocks until the operation completes (`MPI_Wait`); at once if it
    /// already has.
    public func wait() throws {
        guard isActive else { return }
        try check(MPI_Wait(&handle, MPI_STATUS_IGNORE), "MPI_Wait")
    }

    deinit {
        defer { if !isActive { owned?.deallocate() } }  // else MPI may still read it: leak rather than corrupt
        guard isActive else { return }
        guard !MPI.isFinalized else {
            printToStandardError("\(startedBy) request dropped after MPI_Finalize, never completed")
            return
        }
        do {
            try wait()
        } catch {
            printToStandardError("\(startedBy) request dropped unfinished; waiting for it failed: \(error)")
        }
    }
}

/// One line on standard error; Swift 6 refuses the C global `stderr`, so
/// this writes to the file descriptor.
private func printToStandardError(_ line: String) {
    var bytes = Array("\(line)\n".utf8)
    _ = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
}
