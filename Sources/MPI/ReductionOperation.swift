import CMPI

/// How `allreduce` combines the values of all ranks, element by element.
public enum ReductionOperation: Sendable {
    /// Σ over ranks. For floating point the order of the additions is MPI's
    /// choice; it may differ between runs at different rank counts.
    case sum
    /// The largest value over ranks.
    case max
    /// The smallest value over ranks.
    case min
    /// Nonzero where every rank has a nonzero value, else 0. Test the result
    /// against 0, not 1: with one rank MPI hands the value back unchanged.
    /// MPI defines it for integer types only (`Int32`, `UInt8`, ...), not for
    /// `Float` or `Double`.
    case logicalAnd

    /// The predefined `MPI_Op`.
    var mpiOp: MPI_Op {
        switch self {
        case .sum: MPI_SUM
        case .max: MPI_MAX
        case .min: MPI_MIN
        case .logicalAnd: MPI_LAND
        }
    }
}
