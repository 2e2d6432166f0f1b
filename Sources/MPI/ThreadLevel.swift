import CMPI

/// How many threads of a rank may call MPI, in the order MPI ranks them.
///
/// - `single`: the process has one thread.
/// - `funneled`: only the thread that initialised MPI calls it.
/// - `serialized`: any thread, one at a time.
/// - `multiple`: any thread, at any time.
public enum ThreadLevel: Int, Comparable, CaseIterable, Sendable {
    case single, funneled, serialized, multiple

    public static func < (lhs: ThreadLevel, rhs: ThreadLevel) -> Bool {
        lhs.rawValue < rhs.rawValue
    }

    /// The `MPI_THREAD_*` value, taken from `mpi.h` rather than assumed.
    var mpiValue: Int32 {
        switch self {
        case .single: Int32(MPI_THREAD_SINGLE)
        case .funneled: Int32(MPI_THREAD_FUNNELED)
        case .serialized: Int32(MPI_THREAD_SERIALIZED)
        case .multiple: Int32(MPI_THREAD_MULTIPLE)
        }
    }

    /// The level for an `MPI_THREAD_*` value; an unknown value reads as
    /// `single`, the level that promises least.
    init(mpiValue: Int32) {
        self = ThreadLevel.allCases.first { $0.mpiValue == mpiValue } ?? .single
    }
}
