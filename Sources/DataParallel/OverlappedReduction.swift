import InstanceNorm
import MPI

/// A non-blocking collective on the parameter gradients, started from the
/// backward's `sumsReady` hook and progressed from its `progress` hook.
///
/// The hooks run on the kernel's threads: `sumsReady` on the calling thread,
/// `progress` on one worker while the calling thread waits, so MPI is never
/// called from two threads at once (MPI_THREAD_SERIALIZED is enough). An MPI
/// error inside a hook cannot be thrown through the kernel; it is kept and
/// thrown by `finish`.
final class OverlappedReduction: @unchecked Sendable {
    private let start: () throws -> Request
    private var request: Request?
    private var failure: Error?

    /// - Parameter start: starts the collective (an iallreduce or iallgatherv).
    init(start: @escaping () throws -> Request) {
        self.start = start
    }

    var hooks: BackwardOverlap {
        BackwardOverlap(
            sumsReady: { [self] in
                do { request = try start() } catch { failure = error }
            },
            progress: { [self] in
                guard failure == nil, let request else { return }
                do { _ = try request.test() } catch { failure = error }
            })
    }

    /// Waits for the collective; throws the first MPI error of the hooks.
    func finish() throws {
        if let failure { throw failure }
        guard let request else { preconditionFailure("the backward never reported its sums") }
        try request.wait()
    }
}
