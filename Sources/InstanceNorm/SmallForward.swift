import _InstanceNormShims

/// The training forward over blocks of small instances (see
/// `SmallInstances`): per block, the columns, the statistics of every lane,
/// then y column by column and back to the tensor's order.
@usableFromInline
struct SmallForward<T: InstanceNormScalar>: @unchecked Sendable {
    @usableFromInline let y: SharedBuffer<T>
    @usableFromInline let statistics: SharedBuffer<InstanceStatistics>
    @usableFromInline let x: SharedBuffer<T>
    @usableFromInline let gamma: ChannelLanes
    @usableFromInline let beta: ChannelLanes
    @usableFromInline let instanceCount, channels, spatialCount: Int
    @usableFromInline let eps: Double
    @usableFromInline let divisor: LaneDivisor
    @usableFromInline let streaming: Bool

    @inlinable init(
        y: UnsafeMutableBufferPointer<T>, statistics: UnsafeMutableBufferPointer<InstanceStatistics>,
        x: UnsafeBufferPointer<T>, gamma: UnsafeBufferPointer<T>?, beta: UnsafeBufferPointer<T>?,
        shape: InstanceNormShape, eps: Double, stores: StorePolicy
    ) {
        self.y = SharedBuffer(y)
        self.statistics = SharedBuffer(statistics)
        self.x = SharedBuffer(x)
        self.gamma = ChannelLanes(gamma, channels: shape.channels, lanes: T.Vector.scalarCount, default: 1)
        self.beta = ChannelLanes(beta, channels: shape.channels, lanes: T.Vector.scalarCount, default: 0)
        instanceCount = shape.instanceCount
        channels = shape.channels
        spatialCount = shape.spatialCount
        self.eps = eps
        divisor = LaneDivisor(shape.spatialCount)
        streaming = stores.streams(y, tensors: 2)
    }

    /// Every block, the workers claiming runs of blocks as they come free
    /// (`BlockSchedule.claims`).
    ///
    /// Software-pipelined: the statistics of a block (a chain of sums, a
    /// square root and a division per lane) are computed before the y of
    /// the block before it is written, so that the out-of-order core runs
    /// that independent work while the chain waits. Two sets of scratch.
    @inlinable func run(threads: Int) {
        let schedule = BlockSchedule(instanceCount: instanceCount, lanes: T.Vector.scalarCount, threads: threads)
        let split = WorkSplit(units: schedule.workers, length: 1, threads: schedule.workers)
        let claims = schedule.claims
        split.run { worker in
            let scratch = BlockScratch<T>(spatialCount: spatialCount)
            var waiting: (block: Range<Int>, set: Int, source: UnsafePointer<T>)?
            var set = 0
            for index in claims {
                let block = schedule.block(index), source = statistics(of: block, set, scratch)
                if let waiting { normalize(waiting.block, waiting.set, waiting.source, scratch) }
                waiting = (block, set, source)
                set ^= 1
            }
            if let waiting { normalize(waiting.block, waiting.set, waiting.source, scratch) }
            // Each worker's streaming stores (y and the statistics) done before the join.
            if streaming { instnorm_store_fence() }
        }
        if streaming { instnorm_store_fence() }
    }

    /// Loads `block` (at most B instances) into the columns of `set`,
    /// stores its statistics, and leaves y's per-lane constants in the
    /// set's constants, as `InstanceKernel.normalize` folds them:
    ///
    ///     a = γ·r        b = β − μ_lo·a        y = (x − μ_hi)·a + b
    ///
    /// Returns where the block's x can be read in natural order.
    @inlinable @inline(__always)
    func statistics(of block: Range<Int>, _ set: Int, _ scratch: BlockScratch<T>) -> UnsafePointer<T> {
        let first = block.lowerBound, count = block.count
        let (lanes, source) = scratch.loadStatistics(
            x.base + first * spatialCount, count: count, available: (instanceCount - first) * spatialCount, set: set,
            divisor: divisor, eps: eps)
        lanes.store(to: statistics.base + first, count: count, staging: scratch.staging, streaming: streaming)
        NormalizeLaneConstants(gamma: gamma.lanes(from: first), beta: beta.lanes(from: first), lanes).store(scratch, set)
        return source
    }

    /// Writes y of `block` from its x (at `source`) and the constants of `set`.
    @inlinable @inline(__always)
    func normalize(_ block: Range<Int>, _ set: Int, _ source: UnsafePointer<T>, _ scratch: BlockScratch<T>) {
        writeNormalized(count: block.count, set, x: source, scratch, to: y.base + block.lowerBound * spatialCount,
                        streaming: streaming)
    }
}

/// Writes y of the first `count` instances of a block whose x is at
/// `source` in natural order (and, for quads, in the columns of `set`),
/// each lane with the `NormalizeLaneConstants` left in the constants of
/// `set`: in the tensor's order, from the columns for quads, lane for lane
/// where an instance holds one value (its natural order is its column).
@inlinable @inline(__always)
func writeNormalized<T: InstanceNormScalar>(
    count: Int, _ set: Int, x source: UnsafePointer<T>, _ scratch: BlockScratch<T>, to out: UnsafeMutablePointer<T>,
    streaming: Bool
) {
    if scratch.holdsQuads {
        let constants = NormalizeLaneConstants<T.Compute>(scratch, set)
        let columns = UnsafePointer(scratch.columns(set)), lanes = T.Vector.scalarCount
        for column in 0..<4 {
            storeVector(constants.value(x: loadVector(columns, column &* lanes)), scratch.outputColumns, column &* lanes)
        }
        writeQuads(UnsafePointer(scratch.outputColumns), rows: scratch.outputRows, count: count, to: out, streaming: streaming)
        return
    }
    if scratch.spatialCount == 1 {
        writeLanes(NormalizeLaneConstants<T.Compute>(scratch, set).value(x: loadVector(source, 0)), count: count, to: out,
                   streaming: streaming)
        return
    }
    let output = NormalizeBlock(
        x: source, meanHigh: UnsafePointer(scratch.constant(set, 0)), scale: UnsafePointer(scratch.constant(set, 1)),
        offset: UnsafePointer(scratch.constant(set, 2)))
    writeInOrder(output, count: count, spatialCount: scratch.spatialCount, to: out, streaming: streaming)
}

/// The first `count` lanes of one vector of outputs at `out`: a whole
/// vector as `writeInOrder` stores one, fewer lane by lane.
@inlinable @inline(__always)
func writeLanes<T: InstanceNormScalar>(_ vector: T.Vector, count: Int, to out: UnsafeMutablePointer<T>, streaming: Bool) {
    let stores = VectorStores(out, streaming: streaming)
    if count == T.Vector.scalarCount { stores.store(vector, at: 0) } else { stores.store(vector, at: 0, count: count) }
}

extension BlockScratch {
    /// Loads the `count` ≤ B instances at `block` into set `set` and
    /// returns their lanes' statistics and where their values can be read
    /// in natural order (see `load`). Float and half blocks above
    /// `SmallInstances.forwardColumnsLimit` values are summed from tiles
    /// turned in registers (which ask for the next block's lines group by
    /// group), the others from their columns: the same bits.
    @inlinable @inline(__always)
    func loadStatistics(
        _ block: UnsafePointer<T>, count: Int, available: Int, set: Int, divisor: LaneDivisor, eps: Double
    ) -> (LaneStatistics<T.Compute>, UnsafePointer<T>) {
        let inRegisters = T.sumsGroupsInRegisters && spatialCount > SmallInstances.forwardColumnsLimit
        let source = load(
            block, count: count, available: available, set: set, transposing: !inRegisters,
            askingForNext: !groupsAskForNext)
        let lanes = inRegisters
            ? LaneStatistics<T.Compute>(rows: source, count: spatialCount, divisor: divisor, eps: eps)
            : LaneStatistics<T.Compute>(columns: UnsafePointer(columns(set)), count: spatialCount, divisor: divisor, eps: eps)
        return (lanes, source)
    }
}

/// The per-lane constants of y, as `InstanceKernel.normalize` folds them
/// for one instance:
///
///     a = γ·r        b = β − μ_lo·a        y = (x − μ_hi)·a + b
@usableFromInline
struct NormalizeLaneConstants<C: InstanceNormComputeScalar> {
    /// μ_hi, a, b per lane.
    @usableFromInline let meanHigh, scale, offset: C.Lanes

    @inlinable @inline(__always)
    init(gamma: C.WideLanes, beta: C.WideLanes, _ lanes: LaneStatistics<C>) {
        let (meanHigh, meanLow) = lanes.splitMean
        let scaleWide = gamma * lanes.invstd
        self.meanHigh = meanHigh
        scale = C.narrow(scaleWide)
        offset = C.narrow(beta - meanLow * scaleWide)
    }

    /// The constants that `store` left in the constants of `set`.
    @inlinable @inline(__always)
    init<T: InstanceNormScalar>(_ scratch: BlockScratch<T>, _ set: Int) where T.Compute == C {
        let address = UnsafePointer(scratch.constant(set, 0)), lanes = C.Lanes.scalarCount
        meanHigh = loadVector(address, 0)
        (scale, offset) = (loadVector(address, lanes), loadVector(address, 2 &* lanes))
    }

    /// Keeps μ_hi, a, b, one vector after the other (3·B values), in the
    /// constants of `set`, between the stages of the pipelined loop.
    @inlinable @inline(__always)
    func store<T: InstanceNormScalar>(_ scratch: BlockScratch<T>, _ set: Int) where T.Compute == C {
        let address = scratch.constant(set, 0), lanes = C.Lanes.scalarCount
        storeVector(meanHigh, address, 0)
        storeVector(scale, address, lanes)
        storeVector(offset, address, 2 &* lanes)
    }

    /// y of one lane's position from its x, in the compute precision.
    @inlinable @inline(__always)
    func value(x: C.Lanes) -> C.Lanes { offset.addingProduct(x - meanHigh, scale) }
}
