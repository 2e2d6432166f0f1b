import CMPI
import ReproducibleSum

extension Communicator {
    /// Combines every rank's `sums` (`MPI_Allreduce` in place, with an
    /// operation that merges their exact words): afterwards every rank
    /// holds the sums of all ranks' addends, and `sums.sum(at:)` gives the
    /// same bits at every rank count, for every split of the addends over
    /// the ranks and every reduction tree MPI picks.
    ///
    /// Sends `ReproducibleSums.wordsPerSum · sums.count` 64-bit words, however
    /// many addends each rank added. Every rank passes the same count.
    public func allreduce(_ sums: ReproducibleSums) throws {
        let call = "MPI_Allreduce"
        let (datatype, op) = try BinnedReduction.handles.get()
        let count = try mpiCount(sums.count, call)
        try check(MPI_Allreduce(MPI_IN_PLACE, sums.words.baseAddress, count, datatype, op, handle), call)
    }

    /// Starts `allreduce(_:)` and returns at once (`MPI_Iallreduce`). The
    /// request keeps `sums` alive; leave it untouched until the request
    /// completes (`test()` returns true, or `wait()` returns).
    ///
    /// The sums go out in pieces of at most `iallreducePieceSums` sums, one
    /// `MPI_Iallreduce` each, all started at once: the operation merges sum
    /// by sum, so the pieces give the same words as one call. A piece stays
    /// under the TCP transport's eager limit (64 KiB). A larger message goes
    /// by rendezvous, whose handshakes advance only while a rank is inside
    /// MPI: on three simulated hosts (6 ranks, TCP) the 128 KiB of 512
    /// channels' sums waited 53 ms where the 16 KiB of plain sums waited 11.
    public func iallreduce(_ sums: ReproducibleSums) throws -> Request {
        let call = "MPI_Iallreduce"
        let (datatype, op) = try BinnedReduction.handles.get()
        _ = try mpiCount(sums.count, call)
        let pieceStarts = Array(stride(from: 0, to: max(sums.count, 1), by: Self.iallreducePieceSums))
        var requests = [MPI_Request?](repeating: MPI_REQUEST_NULL, count: pieceStarts.count)
        for (piece, start) in pieceStarts.enumerated() {
            let count = Int32(min(Self.iallreducePieceSums, sums.count - start))
            let words = sums.words.baseAddress! + start * ReproducibleSums.wordsPerSum
            do {
                try check(MPI_Iallreduce(MPI_IN_PLACE, words, count, datatype, op, handle, &requests[piece]), call)
            } catch {
                // The pieces already started still write into `sums`: finish them first.
                _ = Request(pieces: requests, startedBy: call, retaining: sums)
                throw error
            }
        }
        return Request(pieces: requests, startedBy: call, retaining: sums)
    }

    /// The most sums one `MPI_Iallreduce` of `iallreduce(_:)` carries:
    /// 32 KiB of words, half the TCP transport's default eager limit.
    public static let iallreducePieceSums = (32 << 10) / (8 * ReproducibleSums.wordsPerSum)

    /// Σ over ranks of `values[i]`, for every i, each the exact sum rounded
    /// once: the same bits at every rank count and in every rank order (see
    /// `ReproducibleSums` for the guarantees). Every rank passes the same count.
    ///
    /// Each rank contributes one addend per entry. A rank that holds several
    /// addends of one sum (a gradient summed over its own samples) should add
    /// them to a `ReproducibleSums` itself and call `allreduce(_:)`: summing
    /// them first in floating point would make the result depend on how the
    /// addends were split over the ranks.
    public func reproducibleSum(_ values: [Double]) throws -> [Double] {
        let sums = ReproducibleSums(count: values.count)
        values.withUnsafeBufferPointer { sums.add($0) }
        try allreduce(sums)
        return sums.sums()
    }
}

/// The MPI datatype of one reproducible sum (its eight words, contiguous,
/// so that MPI never cuts a sum when it splits a message) and the operation
/// that merges two of them, made once per process on first use.
enum BinnedReduction {
    // Handles of predefined-lifetime MPI objects, never changed once made.
    nonisolated(unsafe) static let handles: Result<(datatype: MPI_Datatype, op: MPI_Op), MPIError> = Result {
        var datatype: MPI_Datatype? = nil
        try check(MPI_Type_contiguous(Int32(ReproducibleSums.wordsPerSum), MPI_INT64_T, &datatype), "MPI_Type_contiguous")
        try check(MPI_Type_commit(&datatype), "MPI_Type_commit")
        var op: MPI_Op? = nil
        // Commutative: the merge gives the same words in either order.
        try check(MPI_Op_create(combineBinnedSums, 1, &op), "MPI_Op_create")
        return (datatype!, op!)
    }.mapError { $0 as! MPIError }
}

/// inout[i] ← in[i] + inout[i] for `count` sums: the `MPI_User_function`
/// of the reproducible allreduce. A C function pointer, so no captures.
private let combineBinnedSums: @convention(c) (
    UnsafeMutableRawPointer?, UnsafeMutableRawPointer?, UnsafeMutablePointer<Int32>?, UnsafeMutablePointer<MPI_Datatype?>?
) -> Void = { input, inputOutput, count, _ in
    guard let input, let inputOutput, let count else { return }
    ReproducibleSums.combine(
        UnsafePointer(input.assumingMemoryBound(to: Int64.self)), into: inputOutput.assumingMemoryBound(to: Int64.self),
        sums: Int(count.pointee))
}
