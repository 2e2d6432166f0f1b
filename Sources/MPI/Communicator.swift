#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import CMPI

/// A group of ranks that take part in collectives together (`MPI_Comm`).
///
/// Collectives must be entered by every rank of the communicator, in the
/// same order, with matching counts. The argument checks below run on the
/// calling rank alone before anything is sent; if one rank can throw where
/// the others would not, agree first (`isTrueOnEveryRank(_:)`), or the
/// others wait forever in the collective. A thrown `MPIError` that the other
/// ranks did not also see should end in `abort(code:)`.
///
/// `@unchecked Sendable`: the stored properties never change after `init`,
/// and which threads may call MPI is MPI's rule (see `ThreadLevel`), not a
/// property of this object.
public final class Communicator: @unchecked Sendable {
    /// The MPI handle; predefined communicators are never freed.
    let handle: MPI_Comm
    /// This process's index in the communicator, `0 ..< size`.
    public let rank: Int
    /// The number of ranks in the communicator.
    public let size: Int

    /// Every rank of the job (`MPI_COMM_WORLD`), returning errors as thrown
    /// `MPIError`s instead of aborting (`MPI_ERRORS_RETURN`, set once, when
    /// first used after MPI started).
    ///
    /// - Precondition: MPI is initialised (`MPI.initialize()`).
    public static var world: Communicator { worldCommunicator }

    private static let worldCommunicator: Communicator = {
        precondition(MPI.isInitialized,
            "Communicator.world used before MPI.initialize() or after MPI.finalize()")
        do {
            return try Communicator(returningErrors: MPI_COMM_WORLD)
        } catch {
            preconditionFailure("MPI_COMM_WORLD cannot be set up: \(error)")
        }
    }()

    /// Wraps `handle` and sets `MPI_ERRORS_RETURN` on it first, so that even
    /// the rank and size queries report failures instead of aborting.
    init(returningErrors handle: MPI_Comm) throws {
        try check(MPI_Comm_set_errhandler(handle, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler")
        var rank: Int32 = 0
        var size: Int32 = 0
        try check(MPI_Comm_rank(handle, &rank), "MPI_Comm_rank")
        try check(MPI_Comm_size(handle, &size), "MPI_Comm_size")
        self.handle = handle
        self.rank = Int(rank)
        self.size = Int(size)
    }

    // MARK: - Reductions

    /// Combines `buffer` element-wise across all ranks, in place
    /// (`MPI_Allreduce` with `MPI_IN_PLACE`): afterwards every rank holds the
    /// same result. Every rank passes the same count.
    public func allreduce<T: MPIDatatypeConvertible>(
        _ buffer: UnsafeMutableBufferPointer<T>, _ op: ReductionOperation
    ) throws {
        let call = "MPI_Allreduce"
        let count = try mpiCount(buffer.count, call)
        try check(MPI_Allreduce(MPI_IN_PLACE, buffer.baseAddress, count,
                                T.mpiDatatype, op.mpiOp, handle), call)
    }

    /// `values` combined element-wise across all ranks.
    public func allreduce<T: MPIDatatypeConvertible>(
        _ values: [T], _ op: ReductionOperation
    ) throws -> [T] {
        var result = values
        try result.withUnsafeMutableBufferPointer { try allreduce($0, op) }
        return result
    }

    /// `value` combined across all ranks.
    public func allreduce<T: MPIDatatypeConvertible>(
        _ value: T, _ op: ReductionOperation
    ) throws -> T {
        try allreduce([value], op)[0]
    }

    /// Starts an in-place allreduce of `buffer` and returns at once
    /// (`MPI_Iallreduce` with `MPI_IN_PLACE`).
    ///
    /// The buffer must stay allocated and untouched (neither read nor
    /// written) until the returned request completes: MPI reads and writes it
    /// in the meantime. A buffer from `withUnsafeMutableBufferPointer` or `&array`
    /// is valid only inside that call, so allocate one that outlives the request.
    public func iallreduce<T: MPIDatatypeConvertible>(
        _ buffer: UnsafeMutableBufferPointer<T>, _ op: ReductionOperation
    ) throws -> Request {
        let call = "MPI_Iallreduce"
        let count = try mpiCount(buffer.count, call)
        var request: MPI_Request? = MPI_REQUEST_NULL
        try check(MPI_Iallreduce(MPI_IN_PLACE, buffer.baseAddress, count,
                                 T.mpiDatatype, op.mpiOp, handle, &request), call)
        return Request(request, startedBy: call)
    }

    /// Whether `condition` holds on every rank: the way ranks agree on a
    /// local check (an allreduce of a flag) before acting on it.
    public func isTrueOnEveryRank(_ condition: Bool) throws -> Bool {
        try allreduce(Int32(condition ? 1 : 0), .logicalAnd) != 0
    }

    // MARK: - Data movement

    /// Gathers a variable number of elements from every rank onto every rank
    /// (`MPI_Allgatherv`).
    ///
    /// `counts[r]` elements come from rank r and are placed one after the
    /// other in rank order in `receive` (the displacements are the prefix
    /// sums of `counts`). A count may be 0.
    ///
    /// - Parameters:
    ///   - send: this rank's elements; `send.count` must equal `counts[rank]`.
    ///   - receive: exactly `counts.reduce(0, +)` elements; not `send`'s memory.
    ///   - counts: one entry per rank, the same on every rank.
    /// - Throws: `MPIError` naming `MPI_Allgatherv` when the counts do not fit
    ///   the buffers or exceed MPI's `Int32` counts, before anything is sent.
    public func allgatherv<T: MPIDatatypeConvertible>(
        _ send: UnsafeBufferPointer<T>,
        into receive: UnsafeMutableBufferPointer<T>,
        counts: [Int]
    ) throws {
        let call = "MPI_Allgatherv"
        let layout = try gatherLayout(send.count, receive.count, counts, call)
        try check(MPI_Allgatherv(send.baseAddress, layout.counts[rank], T.mpiDatatype,
                                 receive.baseAddress, layout.counts, layout.displacements,
                                 T.mpiDatatype, handle), call)
    }

    /// Non-blocking `allgatherv`. `send` and `receive` must stay alive and
    /// untouched until the request completes; the counts and displacements,
    /// which MPI also reads until then, are kept by the request.
    public func iallgatherv<T: MPIDatatypeConvertible>(
        _ send: UnsafeBufferPointer<T>,
        into receive: UnsafeMutableBufferPointer<T>,
        counts: [Int]
    ) throws -> Request {
        let call = "MPI_Iallgatherv"
        let layout = try gatherLayout(send.count, receive.count, counts, call)
        let storage = UnsafeMutableBufferPointer<Int32>.allocate(capacity: 2 * size)
        _ = storage.initialize(from: layout.counts + layout.displacements)
        let storedCounts = storage.baseAddress!, storedDisplacements = storage.baseAddress! + size
        var request: MPI_Request? = MPI_REQUEST_NULL
        let code = MPI_Iallgatherv(send.baseAddress, layout.counts[rank], T.mpiDatatype,
                                   receive.baseAddress, storedCounts, storedDisplacements,
                                   T.mpiDatatype, handle, &request)
        guard code == MPI_SUCCESS else {
            storage.deallocate()
            try check(code, call)
            preconditionFailure("check throws for every code but MPI_SUCCESS")
        }
        return Request(request, startedBy: call, owning: UnsafeMutableRawBufferPointer(storage))
    }

    /// Checks the arguments of a gather and returns MPI's counts and
    /// displacements (the prefix sums of the counts).
    private func gatherLayout(
        _ sendCount: Int, _ receiveCount: Int, _ counts: [Int], _ call: String
    ) throws -> (counts: [Int32], displacements: [Int32]) {
        guard counts.count == size else {
            throw MPIError.refused(call, MPI_ERR_COUNT,
                "counts has \(counts.count) entries for \(size) ranks")
        }
        guard sendCount == counts[rank] else {
            throw MPIError.refused(call, MPI_ERR_COUNT,
                "rank \(rank) sends \(sendCount) elements but counts[\(rank)] is \(counts[rank])")
        }
        let mpiCounts = try counts.map { try mpiCount($0, call) }
        var displacements: [Int32] = []
        displacements.reserveCapacity(counts.count)
        var total = 0
        for count in counts {
            displacements.append(try mpiCount(total, call, what: "displacement"))
            total += count
        }
        guard receiveCount == total else {
            throw MPIError.refused(call, MPI_ERR_BUFFER,
                "receive holds \(receiveCount) elements but counts add up to \(total)")
        }
        return (mpiCounts, displacements)
    }

    /// Copies `buffer` from rank `root` into `buffer` on every other rank
    /// (`MPI_Bcast`). Every rank passes the same count and root.
    ///
    /// - Throws: `MPIError` (`MPI_ERR_ROOT`) when `root` is not a rank of
    ///   this communicator.
    public func broadcast<T: MPIDatatypeConvertible>(
        _ buffer: UnsafeMutableBufferPointer<T>, root: Int
    ) throws {
        let call = "MPI_Bcast"
        let count = try mpiCount(buffer.count, call)
        // A root beyond Int32 clamps to a value MPI itself refuses as MPI_ERR_ROOT.
        try check(MPI_Bcast(buffer.baseAddress, count, T.mpiDatatype,
                            Int32(clamping: root), handle), call)
    }

    /// How many ranks of this communicator share this rank's node (its
    /// shared-memory domain, `MPI_Comm_split_type` with
    /// `MPI_COMM_TYPE_SHARED`): they also share its memory bandwidth and
    /// last-level cache. Collective.
    public func ranksSharingNode() throws -> Int {
        var node: MPI_Comm? = nil
        try check(
            MPI_Comm_split_type(handle, Int32(MPI_COMM_TYPE_SHARED), Int32(rank), MPI_INFO_NULL, &node),
            "MPI_Comm_split_type")
        defer { MPI_Comm_free(&node) }
        var count: Int32 = 0
        try check(MPI_Comm_size(node, &count), "MPI_Comm_size")
        return Int(count)
    }

    // MARK: - Synchronisation and failure

    /// Returns once every rank has entered the barrier (`MPI_Barrier`).
    public func barrier() throws {
        try check(MPI_Barrier(handle), "MPI_Barrier")
    }

    /// Ends every rank of the job with exit code `code` (`MPI_Abort`).
    ///
    /// The way out when one rank cannot go on while the others may be
    /// waiting in a collective: returning or exiting on that rank alone
    /// leaves them waiting until mpirun notices. Flushes C output streams
    /// first: under mpirun standard output is a buffered pipe, and lines
    /// printed just before the abort would otherwise be lost.
    public func abort(code: Int32) -> Never {
        fflush(nil)
        MPI_Abort(handle, code)
        exit(code)  // MPI_Abort does not return; this line only satisfies `Never`.
    }
}
