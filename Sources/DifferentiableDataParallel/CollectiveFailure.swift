#if canImport(Glibc)
import Glibc
#endif
import MPI

/// Runs a collective step of a differentiable function; an MPI failure
/// prints the error and ends every rank with exit code 70 (as `instnorm`
/// does).
///
/// Neither a pullback nor the functions it differentiates can report an
/// error to the caller of `valueWithGradient`, and the other ranks may be
/// waiting inside the collective: returning on this rank alone would leave
/// them waiting forever.
@discardableResult
func collective<Result>(on communicator: Communicator, _ step: () throws -> Result) -> Result {
    do {
        return try step()
    } catch {
        let line = "rank \(communicator.rank): \(error)\n"
        _ = line.withCString { write(STDERR_FILENO, $0, strlen($0)) }
        communicator.abort(code: 70)
    }
}
