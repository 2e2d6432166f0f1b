/// The terms a lane sum adds per column of a block (see `laneSums`): first
/// += a, second += b·c, lane by lane. `ShiftedColumns` gives the statistics'
/// sums, `GradientColumns` the backward's.
@usableFromInline
protocol ColumnTerms {
    associatedtype Compute: InstanceNormComputeScalar
    func terms(at column: Int) -> (Compute.Lanes, Compute.Lanes, Compute.Lanes)
}

/// (x − K, x − K, x − K): Σ (x − K) and Σ (x − K)², K per lane, over
/// columns of values of type T `stride` values apart: a block's columns in
/// the compute precision (T = Compute, one vector apart), or a block of
/// channels where it lies in a channels-last tensor (C values apart).
@usableFromInline
struct ShiftedColumns<T: InstanceNormScalar>: ColumnTerms {
    @usableFromInline typealias Compute = T.Compute
    @usableFromInline let columns: UnsafePointer<T>
    @usableFromInline let stride: Int
    @usableFromInline let shift: T.Vector

    @inlinable init(_ columns: UnsafePointer<T>, stride: Int = T.Vector.scalarCount, shift: T.Vector) {
        self.columns = columns
        self.stride = stride
        self.shift = shift
    }

    @inlinable @inline(__always)
    func terms(at column: Int) -> (T.Vector, T.Vector, T.Vector) {
        let deviation = loadVector(columns, column &* stride) - shift
        return (deviation, deviation, deviation)
    }
}

/// (dy, dy, x − center): Σ dy and Σ dy·(x − μ_hi), μ_hi per lane, over
/// columns of values of type T `stride` values apart: a block's columns in
/// the compute precision (T = Compute), instances of one value in storage,
/// whose natural order is their one column (widened as they load), or a
/// block of channels in a channels-last tensor (C values apart).
@usableFromInline
struct GradientColumns<T: InstanceNormScalar>: ColumnTerms {
    @usableFromInline typealias Compute = T.Compute
    @usableFromInline let gradients, values: UnsafePointer<T>
    @usableFromInline let stride: Int
    @usableFromInline let center: T.Vector

    @inlinable init(gradients: UnsafePointer<T>, values: UnsafePointer<T>, stride: Int = T.Vector.scalarCount,
                    center: T.Vector) {
        self.gradients = gradients
        self.values = values
        self.stride = stride
        self.center = center
    }

    @inlinable @inline(__always)
    func terms(at column: Int) -> (T.Vector, T.Vector, T.Vector) {
        let offset = column &* stride
        let gradient = loadVector(gradients, offset)
        return (gradient, gradient, loadVector(values, offset) - center)
    }
}

/// Positions per group of the blocked sums (`laneSums`): the most terms
/// any compute-precision running sum adds, as in the per-instance kernels'
/// lanes for M ≤ 256 (`reductionChunk` / 32 lanes · 256 / 1024 = 8).
public let blockedSumGroup = 8

/// Per lane, Σ a and Σ b·c over columns 0..<count, in the order of every
/// kernel over instances of M ≤ `SmallInstances.limit` values (blocked
/// channels first, and channels last, which must give the same bits):
///
/// - the columns in groups of `blockedSumGroup` consecutive positions;
///   within a group, one running sum per lane in the compute type, column
///   by column from zero (an add, or an FMA for b·c);
/// - each group's sums widened exactly and added to a `Double` total per
///   lane, group after group, from zero.
///
/// So no compute-precision sum adds more than 8 terms, and one widening
/// serves 8 columns: the per-instance kernels' order, whose 32 lanes are
/// each widened (64 conversions per instance whatever M), cost more than
/// all the rest at M = 49.
@inlinable @inline(__always)
func laneSums<Terms: ColumnTerms>(
    _ terms: Terms, count: Int, eachGroup: () -> Void = {}
) -> (Terms.Compute.WideLanes, Terms.Compute.WideLanes) {
    sumsByGroup(Terms.Compute.self, count: count) { start, length in
        eachGroup()
        var groupFirst = Terms.Compute.Lanes(), groupSecond = Terms.Compute.Lanes()
        for column in start..<start + length {
            let (a, b, c) = terms.terms(at: column)
            groupFirst += a
            groupSecond.addProduct(b, c)
        }
        return (groupFirst, groupSecond)
    }
}

/// The `Double` half of `laneSums`' order: positions in groups of
/// `blockedSumGroup`, each group's two lane sums from `group(start, length)`
/// in the compute precision, widened exactly and added group after group,
/// from zero. Every way of taking a group's sums (columns in the scratch,
/// tiles turned in registers) shares it, so that they give the same bits.
@inlinable @inline(__always)
func sumsByGroup<C: InstanceNormComputeScalar>(
    _: C.Type, count: Int, _ group: (_ start: Int, _ length: Int) -> (C.Lanes, C.Lanes)
) -> (C.WideLanes, C.WideLanes) {
    var first = C.WideLanes(), second = C.WideLanes(), start = 0
    while start < count {
        let (groupFirst, groupSecond) = group(start, min(blockedSumGroup, count - start))
        first += C.widen(groupFirst)
        second += C.widen(groupSecond)
        start += blockedSumGroup
    }
    return (first, second)
}
