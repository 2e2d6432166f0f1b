import CMPI

/// How many threads of a rank may call MPI, in the order MPI ranks them.
public enum ThreadLevel: Int, Comparable, CaseIterable, Sendable {
    /// The process has one thread.
    case single
    /// Only the thread that initialised MPI calls it.
    case funneled
    /// Any thread, one at a time.
    case serialized
    /// Any thread, at any time.
    case multiple

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
