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
/// The `corrupt-*` points instead make a result wrong, to prove that the
/// checks catch it: their ACTION, which must be given, is `nan` or `skew`
/// (see `corrupt(_:)`), and those two actions belong to them alone.
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
    /// apply and bench: after the computation, before verification (bench)
    /// or writing (apply), one value of this rank's y, dx, dγ or dβ is
    /// made wrong: bench --verify must exit 1.
    case corruptY = "corrupt-y"
    case corruptDx = "corrupt-dx"
    case corruptDgamma = "corrupt-dgamma"
    case corruptDbeta = "corrupt-dbeta"

    enum Action: String, CaseIterable, Sendable {
        case fail, kill, stall
        /// The corrupted value becomes NaN.
        case nan
        /// The corrupted value moves `skewUlps` ulps of its storage type away from zero.
        case skew
    }

    /// How far `skew` moves a value: small enough that only a tolerance
    /// derived from the computation's error bound catches it.
    static let skewUlps = 64

    /// Whether this point makes a result wrong rather than failing.
    var corrupts: Bool { Self.corruptionPoints.contains(self) }

    static let corruptionPoints: [Failpoint] = [.corruptY, .corruptDx, .corruptDgamma, .corruptDbeta]

    /// The actions this point accepts: a corruption point corrupts (there is
    /// no failure to simulate there, and a `kill` or `stall` is better placed
    /// at the points that have one); the others fail, die or stall.
    var actions: [Action] { corrupts ? [.nan, .skew] : [.fail, .kill, .stall] }

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
            guard fields.count == 2 || !point.corrupts else {
                throw usage("lacks ':ACTION'; '\(point.rawValue)' needs one of nan, skew")
            }
            let action = fields.count == 2 ? Action(rawValue: String(fields[1])) : .fail
            guard let action else { throw usage("names no known action") }
            guard point.actions.contains(action) else {
                throw usage("gives action '\(action.rawValue)' to '\(point.rawValue)', which takes only "
                    + point.actions.map(\.rawValue).joined(separator: ", "))
            }
            if target == rank { result[point] = action }
        }
        return result
    }

    /// Whether this point fails on this rank. `kill` does not return;
    /// `stall` returns false after its hour; `fail` returns true, and the
    /// caller throws the error the point simulates.
    func fires() -> Bool {
        switch Self.armed[self] {
        case nil, .nan, .skew: return false
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

    /// Corrupts one value of `values` (this rank's part of the output of
    /// this point) when the point is armed on this rank, and says so on
    /// standard error: the value of largest magnitude (the first, if
    /// several), so that `skew` is an error of 64 ulps relative to the size
    /// of the data, not of a value near zero, which no tolerance could tell
    /// from rounding. Nothing happens when `values` is empty (a rank without
    /// samples has no y or dx).
    func corrupt<T: BinaryFloatingPoint>(_ values: UnsafeMutableBufferPointer<T>) {
        guard let action = Self.armed[self], action == .nan || action == .skew,
              let index = values.indices.max(by: { abs(values[$0]) < abs(values[$1]) })
        else { return }
        let before = values[index]
        values[index] = action == .nan ? .nan : Self.skewed(before, ulps: Self.skewUlps)
        Console.error("instnorm: \(Self.variable): rank \(Self.rank) corrupts '\(rawValue)' (\(action.rawValue)): "
            + "element \(index) of its part, \(Double(before)) -> \(Double(values[index]))")
    }

    /// `value` moved `ulps` representable values away from zero.
    static func skewed<T: BinaryFloatingPoint>(_ value: T, ulps: Int) -> T {
        (0..<ulps).reduce(value) { moved, _ in moved.sign == .minus ? moved.nextDown : moved.nextUp }
    }
}
