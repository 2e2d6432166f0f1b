#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import MPI

/// MPI for the whole test process: a singleton job of size 1, no mpirun.
///
/// MPI can be initialised once per process, and other test targets in the
/// same process may use it after these tests, so it is started once, lazily,
/// here and never finalised. `.multiple` because Swift Testing runs tests on
/// several threads. Open MPI refuses to run as root unless told it may.
enum SingletonMPI {
    private static let started: Result<Communicator, any Error> = Result {
        setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 0)  // 0: keep a value already set
        setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 0)
        if !MPI.isInitialized {
            try MPI.initialize(threadLevel: .multiple)
        }
        return Communicator.world
    }

    /// The world communicator, starting MPI on first use.
    static func world() throws -> Communicator {
        try started.get()
    }
}
