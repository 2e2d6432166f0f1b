import CMPI

/// The MPI library as a whole: start, stop, version, clock.
///
/// MPI can be initialised once per process and never again after
/// `finalize()`.
public enum MPI {
    /// Starts MPI (`MPI_Init_thread`) and returns the thread level provided.
    ///
    /// Also makes `Communicator.world` return errors instead of aborting, so
    /// that failures from the first call on are thrown `MPIError`s.
    ///
    /// - Parameter threadLevel: the level needed. The default, `.funneled`,
    ///   fits a program whose main thread does all MPI calls while worker
    ///   threads only compute.
    /// - Throws: `MPIError` when MPI was already initialised in this process
    ///   (a second `MPI_Init_thread` is erroneous, so it is not attempted),
    ///   when `MPI_Init_thread` fails, or when the level provided is lower
    ///   than the level asked; MPI is then initialised: finalise or abort.
    @discardableResult
    public static func initialize(threadLevel: ThreadLevel = .funneled) throws -> ThreadLevel {
        let call = "MPI_Init_thread"
        guard try !hasBeenInitialized() else {
            throw MPIError.refused(call, MPI_ERR_OTHER,
                "MPI was already initialised in this process; it can be initialised only once")
        }
        var providedValue: Int32 = 0
        try check(MPI_Init_thread(nil, nil, threadLevel.mpiValue, &providedValue), call)
        _ = Communicator.world
        let provided = ThreadLevel(mpiValue: providedValue)
        guard provided >= threadLevel else {
            throw MPIError.refused(call, MPI_ERR_OTHER,
                "asked for thread level \(threadLevel), the library provides only \(provided)")
        }
        return provided
    }

    /// Shuts MPI down (`MPI_Finalize`). Every rank must call it, after its
    /// last MPI call and with no request still active.
    ///
    /// - Throws: `MPIError` when MPI is not initialised or already finalised,
    ///   or when `MPI_Finalize` fails.
    public static func finalize() throws {
        guard isInitialized else {
            throw MPIError.refused("MPI_Finalize", MPI_ERR_OTHER,
                "MPI is not initialised, or was already finalised")
        }
        try check(MPI_Finalize(), "MPI_Finalize")
    }

    /// True between `MPI_Init` and `MPI_Finalize`, whoever called them:
    /// the window in which MPI calls are allowed.
    public static var isInitialized: Bool {
        ((try? hasBeenInitialized()) ?? false) && !isFinalized
    }

    /// True once `MPI_Finalize` has been called; MPI cannot start again.
    public static var isFinalized: Bool {
        var finalized: Int32 = 0
        return MPI_Finalized(&finalized) == MPI_SUCCESS && finalized != 0
    }

    /// The thread level MPI provides (`MPI_Query_thread`), for code running
    /// inside an MPI job that it did not initialise.
    public static var threadLevel: ThreadLevel {
        get throws {
            var providedValue: Int32 = 0
            try check(MPI_Query_thread(&providedValue), "MPI_Query_thread")
            return ThreadLevel(mpiValue: providedValue)
        }
    }

    /// The first line of `MPI_Get_library_version`, for example
    /// `"Open MPI v4.1.4, package: Debian OpenMPI, ..."`; callable before
    /// `initialize()`. The full text runs over several lines of build details.
    public static var libraryVersion: String {
        var text = [CChar](repeating: 0, count: Int(MPI_MAX_LIBRARY_VERSION_STRING))
        var length: Int32 = 0
        guard MPI_Get_library_version(&text, &length) == MPI_SUCCESS else {
            return "unknown MPI library"
        }
        let firstLine = string(fromC: text, length: Int(length))
            .split(whereSeparator: \.isNewline).first ?? ""
        return firstLine.trimmingWhitespace()
    }

    /// Seconds since an arbitrary moment in the past (`MPI_Wtime`): take
    /// differences. The clocks of different ranks are not synchronised.
    public static func wallTime() -> Double {
        MPI_Wtime()
    }

    /// `MPI_Initialized`: true once MPI has started, even after it finished.
    private static func hasBeenInitialized() throws -> Bool {
        var initialized: Int32 = 0
        try check(MPI_Initialized(&initialized), "MPI_Initialized")
        return initialized != 0
    }
}

extension StringProtocol {
    /// The text without leading and trailing spaces, tabs and newlines.
    fileprivate func trimmingWhitespace() -> String {
        let isSpace: (Character) -> Bool = { $0.isWhitespace }
        guard let first = firstIndex(where: { !isSpace($0) }),
              let last = lastIndex(where: { !isSpace($0) }) else { return "" }
        return String(self[first...last])
    }
}
