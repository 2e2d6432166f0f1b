#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import MPI
import Synchronization

/// MPI for the whole test process: a singleton job of size 1, no mpirun.
///
/// MPI can be initialised once per process, and every test bundle of the
/// package runs in the same process, so it is started once, lazily, here,
/// for all of them, and never finalised: two bundles that each started it
/// would race, and the second start fails. `.multiple` because Swift Testing
/// runs tests on several threads. Open MPI refuses to run as root unless
/// told it may.
public enum SingletonMPI {
    private static let started: Result<Communicator, any Error> = Result {
        setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 0)  // 0: keep a value already set
        setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 0)
        if !MPI.isInitialized {
            try MPI.initialize(threadLevel: .multiple)
        }
        return Communicator.world
    }

    /// The world communicator, starting MPI on first use.
    public static func world() throws -> Communicator {
        try started.get()
    }

    private static let collectives = Mutex(())

    /// Runs `body` with the world communicator while no other `withWorld`
    /// body runs: collectives on one communicator must not overlap, and
    /// suites in different bundles run in parallel.
    public static func withWorld<R>(_ body: (Communicator) throws -> R) throws -> R {
        let world = try world()
        return try collectives.withLock { _ in try body(world) }
    }
}
