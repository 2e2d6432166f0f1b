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
    /// The MPI requests of the operation (several when it went out in
    /// pieces). Optional only because `MPI_Testall` and `MPI_Waitall` take
    /// pointers to optionals; MPI sets each to `MPI_REQUEST_NULL` when the
    /// operation completes.
    private var handles: [MPI_Request?]
    /// The call that started the operation, for messages from `deinit`.
    private let startedBy: String
    /// Arguments MPI reads until the operation completes (the counts of a
    /// non-blocking gather); freed once it has.
    private let owned: UnsafeMutableRawBufferPointer?
    /// An object whose memory MPI reads and writes until the operation
    /// completes (the words of a reproducible allreduce), kept alive until then.
    private let retained: AnyObject?

    /// One operation of one request or several (`pieces`), complete when all are.
    init(pieces: [MPI_Request?], startedBy call: String, owning owned: UnsafeMutableRawBufferPointer? = nil,
         retaining retained: AnyObject? = nil) {
        self.handles = pieces
        self.startedBy = call
        self.owned = owned
        self.retained = retained
    }

    convenience init(_ handle: MPI_Request?, startedBy call: String, owning owned: UnsafeMutableRawBufferPointer? = nil,
                     retaining retained: AnyObject? = nil) {
        self.init(pieces: [handle], startedBy: call, owning: owned, retaining: retained)
    }

    /// True until the operation has been seen to complete by `test()` or
    /// `wait()`.
    public var isActive: Bool { handles.contains { $0 != MPI_REQUEST_NULL } }


    /// Advances the operation and reports whether it has completed
    /// (`MPI_Testall`). After it returns true the buffer is the caller's again.
    public func test() throws -> Bool {
        guard isActive else { return true }
        var isComplete: Int32 = 0
        try check(MPI_Testall(Int32(handles.count), &handles, &isComplete, MPI_STATUSES_IGNORE), "MPI_Testall")
        return isComplete != 0
    }

    /// Blocks until the operation completes (`MPI_Waitall`); at once if it
    /// already has.
    public func wait() throws {
        guard isActive else { return }
        try check(MPI_Waitall(Int32(handles.count), &handles, MPI_STATUSES_IGNORE), "MPI_Waitall")
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
