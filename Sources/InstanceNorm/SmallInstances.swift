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
    /// The largest M that takes the blocked kernels. Measured against the
    /// per-instance kernels side by side (one thread, float32, about 16 M
    /// values, 3 rounds; their time over the blocked kernels', forward /
    /// backward): M = 64 1.75 / 1.06, M = 100 1.43 / 0.93, M = 121
    /// 1.13 / 0.93, M = 144 0.79 / 0.55, M = 196 0.85 / 0.64, M = 256
    /// 0.30 / 0.31. Above about a hundred values an instance amortizes its
    /// own setup, and the transposition costs more than it saves.
    public static let limit = 100

    /// The largest M whose backward takes the blocked kernels. Above it
    /// the per-instance backward, whose instances under 2 KiB take
    /// ordinary stores (`StorePolicy.shortRunBytes`), was as fast or
    /// faster (one thread, float32, 3 rounds; blocked / per-instance
    /// backward time): M = 49 0.93, M = 56 0.86, M = 64 1.02, M = 81 1.30,
    /// M = 100 1.56. The forward keeps the blocks up to `limit` (at M = 64
    /// the per-instance forward took 1.46 times as long).
    public static let backwardLimit = 64

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
