/// InstanceNorm over small instances (M ≤ `limit` values each), a block of
/// B = `T.Vector.scalarCount` instances at a time, one instance per lane.
///
/// The per-instance kernels pay per instance what a large instance
/// amortizes: a call's setup, the widening of the lane sums to `Double`
/// (two horizontal sums of 16 lanes), a scalar tail whose `Double`
/// additions form a latency chain, and a division and square root in
/// `Double`. Here B instances go through each of these at once:
///
///     load      B·M values (M whole vectors), transposed into M columns
///               of B lanes (`BlockScratch`); or, for float and half
///               storage (the backward at M ≠ 4, the forward above
///               `forwardColumnsLimit`), left in natural order
///     sums      per lane, Σ (x − K), Σ (x − K)² (and Σ dy, Σ dy·(x − μ_hi))
///               over the columns (`laneSums`), or over 8×8 tiles turned
///               in registers, a group of 8 positions each, the same
///               additions (`InstanceNormScalar.gradientGroupSums`)
///     per lane  μ, σ², r, the folded constants, in `Double` lanes
///               (`LaneStatistics`), a second pass where a lane needs one
///     output    y (or dx) in the tensor's order, each vector with its
///               instances' constants (`writeInOrder`): no transposition back
///
/// Every lane runs the operations that `InstanceKernel` runs for one
/// instance (the shifted one-pass moments, the second pass about the mean
/// for an outlying first value, μ split into hi and lo, the folded
/// constants), except for the order of the sums: groups of 8 positions in
/// the compute precision, widened to `Double` per group (`laneSums`),
/// where the per-instance kernels widen 32 lane sums per chunk whatever M
/// is. IEEE arithmetic rounds each lane as it rounds a scalar, so each
/// instance's results are a function of that instance's data alone,
/// whatever block, lane, worker or rank it falls in, and the channels-last
/// kernels (`SmallChannelsLast`), whose lanes are a sample's channels, give
/// the same bits. Blocks may therefore start anywhere; they are cut from
/// each worker's run of instances.
public enum SmallInstances {
    /// The largest M that takes the blocked kernels, forward and backward.
    /// Measured against the per-instance kernels side by side (one
    /// thread, float32, 4-6 M values, 4-5 alternating rounds; the blocked
    /// kernels' time over theirs, forward / backward), once the blocks
    /// asked for the next block's lines group by group (`NextBlockLines`):
    /// channels first M = 81 – / 0.81, 100 – / 0.85, 121 0.53 / 0.64,
    /// 128 0.64 / 0.72, 144 0.73 / 0.89, 169 0.70 / 0.83, 196 0.73 / 0.77,
    /// 256 1.51 / 1.02, 400 0.68 / 0.81, 784 1.28 / 1.25; channels last
    /// (`SmallChannelsLast` against the channels-last kernels) M = 81
    /// – / 0.71, 100 1.04 / 1.03, 144 0.71 / 0.90, 196 1.09 / 1.20. Both
    /// layouts must take the same kernels (the two orders of summation give
    /// different bits), so the limit stopped at 144 until channels last
    /// read its blocks where they lie (2026-12-06): then at M = 196
    /// (512,64,14,14) 1.05 / 0.94 against the channels-last kernels (5
    /// rounds). (Before the spread requests the limits were M = 100 forward
    /// and 64 backward: at M = 81 the blocked backward took 1.30 times as
    /// long.)
    public static let limit = 196

    /// The largest M whose backward takes the blocked kernels: `limit`.
    public static let backwardLimit = limit

    /// The largest M whose forward sums a block from its transposed
    /// columns in the scratch; above it, float and half blocks sum each
    /// group of 8 positions from tiles turned in registers
    /// (`LaneStatistics(rows:)`, the same bits), as the backward does for
    /// every M but 4 (`BlockScratch.sumsInRegisters`). One thread, float32,
    /// 6 alternating rounds, forward time in registers over through the
    /// scratch: M = 9 1.02, 12 1.02, 16 1.02, 25 0.95, 49 0.84, 64 0.83,
    /// 100 0.68; backward: M = 9 0.96, 12 1.00, 16 0.97, 25 0.81, 49 0.89,
    /// 64 0.99. At M ≤ 16 the first values, gathered one by one for the
    /// shift, cost what the stores of the columns saved.
    public static let forwardColumnsLimit = 16

    /// Whether a forward on `shape` takes these kernels.
    @inlinable
    static func applies(to shape: InstanceNormShape) -> Bool {
        shape.spatialCount <= limit
    }

    /// Whether a backward on `shape` takes these kernels.
    @inlinable
    static func appliesToBackward(_ shape: InstanceNormShape) -> Bool {
        shape.spatialCount <= backwardLimit
    }

    /// `count` instances cut into blocks of `lanes` (the last may be shorter).
    @inlinable
    static func blocks(_ count: Int, lanes: Int) -> InstanceBlocks {
        InstanceBlocks(instances: 0..<count, lanes: lanes)
    }
}

/// A run of instances cut into blocks of `lanes`, from its start; the
/// last block may hold fewer.
@usableFromInline
struct InstanceBlocks: RandomAccessCollection, Sendable {
    @usableFromInline let instances: Range<Int>
    @usableFromInline let lanes: Int

    @inlinable init(instances: Range<Int>, lanes: Int) {
        self.instances = instances
        self.lanes = lanes
    }

    @inlinable var startIndex: Int { 0 }
    @inlinable var endIndex: Int { (instances.count + lanes - 1) / lanes }

    @inlinable subscript(block: Int) -> Range<Int> {
        let start = instances.lowerBound + block * lanes
        return start..<Swift.min(start + lanes, instances.upperBound)
    }
}
