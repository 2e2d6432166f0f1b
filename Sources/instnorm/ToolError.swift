import DataParallel
import MPI

/// The process exit codes, documented in README.md and `instnorm --help`.
enum ToolExitCode {
    /// `bench --verify` found a result that disagrees with the reference.
    static let verificationFailed: Int32 = 1
    /// A bad flag or flag value (argument parsing uses the same code).
    static let usage: Int32 = 64
    /// An input file that is missing, unreadable, malformed or of the wrong shape or dtype.
    static let badInput: Int32 = 65
    /// An MPI call failed: the job is aborted (MPI_Abort).
    static let mpiFailure: Int32 = 70
    /// A rank cannot get the memory it needs (sysexits' EX_OSERR).
    static let resources: Int32 = 71
    /// Writing an output failed.
    static let ioFailure: Int32 = 74
}

/// An error the tool reports to the user, with the exit code it ends with.
struct ToolError: Error, ExitCodeProviding, CustomStringConvertible {
    let message: String
    let exitCode: Int32

    static func usage(_ message: String) -> ToolError { ToolError(message: message, exitCode: ToolExitCode.usage) }
    static func badInput(_ message: String) -> ToolError { ToolError(message: message, exitCode: ToolExitCode.badInput) }
    static func io(_ message: String) -> ToolError { ToolError(message: message, exitCode: ToolExitCode.ioFailure) }
    static func resources(_ message: String) -> ToolError { ToolError(message: message, exitCode: ToolExitCode.resources) }

    var description: String { message }
}
