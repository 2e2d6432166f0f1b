#if canImport(Glibc)
import Glibc
#endif
import DataParallel
import MPI
import NPY

/// Fault injection for tests, compiled into the tool: the environment
/// variable `INSTNORM_FAILPOINT` names a point, a rank and what happens there,
///
///     INSTNORM_FAILPOINT=POINT@RANK[:ACTION][,POINT@RANK[:ACTION]...]
///
/// and that rank fails at that point the way a real failure there would.
/// ACTION is `fail` (the default: the failure the point simulates, a thrown
/// error or an MPI error), `kill` (the rank sends itself SIGKILL there, as a
/// crash or the OOM killer would) or `stall` (the rank sleeps there for up to
/// an hour, so that a test can kill a rank while the job is at that point).
/// A point a command never passes through is ignored. README.md lists the
/// points and the exit code each one ends with.
enum Failpoint: String, CaseIterable, Sendable {
    /// apply: reading this rank's slice of x fails (EIO): exit 65.
    case reading
    /// apply and bench: reserving the rank's buffers fails (ENOMEM): exit 71.
    case computing
    /// apply and bench: the allreduce of dγ, dβ fails on this rank (an
    /// MPIError); the others are already waiting in it: MPI_Abort, exit 70.
    case reducing
    /// apply: writing this rank's part of the outputs fails (ENOSPC): exit 74.
    case writing
    /// apply: on rank 0 the second rename into place fails (EXDEV), after the
    /// first succeeded; on another rank, reporting ready to commit fails:
    /// exit 74, the renames done are rolled back.
    case renaming

    enum Action: String, CaseIterable, Sendable {
        case fail, kill, stall
    }

    static let variable = "INSTNORM_FAILPOINT"

    /// The points armed on this rank, with their actions.
    nonisolated(unsafe) private static var armed: [Failpoint: Action] = [:]
    nonisolated(unsafe) private static var rank = 0

    /// Reads `INSTNORM_FAILPOINT` and arms the points that name this rank.
    /// Collective: a malformed value is a usage error (exit 64) on every
    /// rank, even one whose environment differs (mpirun copies the
    /// environment to local ranks only).
    static func load(on communicator: Communicator) throws {
        rank = communicator.rank
        armed = try communicator.agree(defaultExitCode: ToolExitCode.usage) {
            guard let text = getenv(variable).map({ String(cString: $0) }), !text.isEmpty else { return [:] }
            return try parse(text, rank: communicator.rank, size: communicator.size)
        }
    }

    /// The points of `text` that name `rank`; throws a usage error naming
    /// the first malformed entry.
    static func parse(_ text: String, rank: Int, size: Int) throws -> [Failpoint: Action] {
        var result: [Failpoint: Action] = [:]
        for entry in text.split(separator: ",", omittingEmptySubsequences: false) {
            let usage = { (problem: String) in
                ToolError.usage(
                    "\(variable)=\(text): '\(entry)' \(problem); expected POINT@RANK[:ACTION] with POINT one of "
                        + allCases.map(\.rawValue).joined(separator: ", ") + " and ACTION one of "
                        + Action.allCases.map(\.rawValue).joined(separator: ", "))
            }
            let fields = entry.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
            let target = fields[0].split(separator: "@", omittingEmptySubsequences: false)
            guard target.count == 2 else { throw usage("lacks '@RANK'") }
            guard let point = Failpoint(rawValue: String(target[0])) else { throw usage("names no known point") }
            guard let target = Int(target[1]), target >= 0 else { throw usage("has no valid rank") }
            guard target < size else { throw usage("names rank \(target), but the job has \(size) rank(s)") }
            let action = fields.count == 2 ? Action(rawValue: String(fields[1])) : .fail
            guard let action else { throw usage("names no known action") }
            if target == rank { result[point] = action }
        }
        return result
    }

    /// Whether this point fails on this rank. `kill` does not return;
    /// `stall` returns false after its hour; `fail` returns true, and the
    /// caller throws the error the point simulates.
    func fires() -> Bool {
        switch Self.armed[self] {
        case nil: return false
        case .fail: return true
        case .kill:
            Console.error("instnorm: \(Self.variable): rank \(Self.rank) kills itself at '\(rawValue)'")
            kill(getpid(), SIGKILL)
            while true { pause() }
        case .stall:
            // sleep(3) returns early when a signal is handled; the rest is slept again.
            var remaining: UInt32 = 3600
            while remaining > 0 { remaining = sleep(remaining) }
            return false
        }
    }

    /// Appended to a simulated failure's message, so that nobody mistakes it
    /// for a real one.
    var note: String { "[injected by \(Self.variable): \(rawValue)]" }
}
