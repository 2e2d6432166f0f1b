import _InstanceNormShims

/// The backward over blocks of small instances (see `SmallInstances`): per
/// block, the columns of x and dy, every lane's s1 and s2, and, unless the
/// block is in a worker's overlapped tail, dx column by column.
@usableFromInline
struct SmallBackward<T: InstanceNormScalar>: @unchecked Sendable {
    @usableFromInline typealias C = T.Compute
    @usableFromInline let dx: SharedBuffer<T>
    @usableFromInline let dy: SharedBuffer<T>
    @usableFromInline let x: SharedBuffer<T>
    @usableFromInline let statistics: SharedBuffer<InstanceStatistics>
    @usableFromInline let gamma: ChannelLanes
    @usableFromInline let shape: InstanceNormShape
    @usableFromInline let instanceCount, channels, spatialCount: Int
    @usableFromInline let divisor: LaneDivisor
    @usableFromInline let streaming: Bool

    @inlinable init(
        dx: UnsafeMutableBufferPointer<T>, dy: UnsafeBufferPointer<T>, x: UnsafeBufferPointer<T>,
        statistics: UnsafeBufferPointer<InstanceStatistics>, gamma: UnsafeBufferPointer<T>?,
        shape: InstanceNormShape, stores: StorePolicy
    ) {
        self.dx = SharedBuffer(dx)
        self.dy = SharedBuffer(dy)
        self.x = SharedBuffer(x)
        self.statistics = SharedBuffer(statistics)
        self.gamma = ChannelLanes(gamma, channels: shape.channels, lanes: T.Vector.scalarCount, default: 1)
        self.shape = shape
        instanceCount = shape.instanceCount
        channels = shape.channels
        spatialCount = shape.spatialCount
        divisor = LaneDivisor(shape.spatialCount)
        streaming = stores.streams(dx, tensors: 3)
    }

    /// The columns of x and dy of `block` into set `set`, the statistics
    /// of its lanes, and where its x and dy can be read in natural order;
    /// `summing`, for `sums` (which then asks for the next block's lines,
    /// see `BlockScratch.loadGradients`).
    @inlinable @inline(__always)
    func load(_ block: Range<Int>, _ set: Int, _ scratch: BlockScratch<T>, summing: Bool = true) -> LoadedBlock<T> {
        let start = block.lowerBound * spatialCount, available = (instanceCount - block.lowerBound) * spatialCount
        let (values, gradients) = scratch.loadGradients(
            x: x.base + start, dy: dy.base + start, count: block.count, available: available, set: set,
            transposing: !scratch.sumsInRegisters, summing: summing)
        return LoadedBlock(
            block: block, set: set, x: values, dy: gradients,
            lanes: LaneStatistics(statistics.base + block.lowerBound, count: block.count, staging: scratch.staging))
    }

    /// s1 and s2 of every lane (`gradientLaneSums`), the block loaded.
    @inlinable @inline(__always)
    func sums(_ loaded: LoadedBlock<T>, _ scratch: BlockScratch<T>) -> (sumDy: C.WideLanes, sumDyXHat: C.WideLanes) {
        scratch.gradientSums(loaded.lanes, x: loaded.x, dy: loaded.dy, set: loaded.set)
    }

    /// Leaves in the constants of set `set` the per-lane constants of dx
    /// of a block (`GradientLaneConstants`) from its lanes' s1, s2.
    @inlinable @inline(__always)
    func gradientConstants(
        _ block: Range<Int>, _ lanes: LaneStatistics<C>, sumDy: C.WideLanes, sumDyXHat: C.WideLanes, _ set: Int,
        _ scratch: BlockScratch<T>
    ) {
        GradientLaneConstants(
            gamma: gamma.lanes(from: block.lowerBound), lanes, sumDy: sumDy, sumDyXHat: sumDyXHat, divisor: divisor
        ).store(scratch, set)
    }

    /// Writes dx of a block from its x and dy in natural order and the
    /// constants of its set.
    @inlinable @inline(__always)
    func inputGradient(_ block: Range<Int>, _ set: Int, x: UnsafePointer<T>, dy: UnsafePointer<T>, _ scratch: BlockScratch<T>) {
        writeInputGradient(count: block.count, set, x: x, dy: dy, scratch, to: dx.base + block.lowerBound * spatialCount,
                           streaming: streaming)
    }
}

/// Writes dx of the first `count` instances of a block whose x and dy are
/// at `x`, `dy` in natural order (and, for quads, in the columns of `set`),
/// each lane with the `GradientLaneConstants` left in the constants of
/// `set`, as `writeNormalized` writes y.
@inlinable @inline(__always)
func writeInputGradient<T: InstanceNormScalar>(
    count: Int, _ set: Int, x: UnsafePointer<T>, dy: UnsafePointer<T>, _ scratch: BlockScratch<T>,
    to out: UnsafeMutablePointer<T>, streaming: Bool
) {
    if scratch.holdsQuads {
        let constants = GradientLaneConstants<T.Compute>(scratch, set), lanes = T.Vector.scalarCount
        let values = UnsafePointer(scratch.columns(set, 0)), gradients = UnsafePointer(scratch.columns(set, 1))
        for column in 0..<4 {
            let offset = column &* lanes
            storeVector(constants.value(x: loadVector(values, offset), dy: loadVector(gradients, offset)),
                        scratch.outputColumns, offset)
        }
        writeQuads(UnsafePointer(scratch.outputColumns), rows: scratch.outputRows, count: count, to: out, streaming: streaming)
        return
    }
    if scratch.spatialCount == 1 {
        let constants = GradientLaneConstants<T.Compute>(scratch, set)
        writeLanes(constants.value(x: loadVector(x, 0), dy: loadVector(dy, 0)), count: count, to: out, streaming: streaming)
        return
    }
    writeInOrder(
        InputGradientBlock(dy: dy, x: x, constants: UnsafePointer(scratch.constant(set, 0))), count: count,
        spatialCount: scratch.spatialCount, to: out, streaming: streaming)
}

extension BlockScratch {
    /// Whether a block's gradient sums come from its natural order, tiles
    /// turned in registers (`gradientGroupSums`), with no columns in the
    /// scratch: float and half storage, except instances of four values,
    /// whose dx is computed from columns (`writeQuads`).
    @inlinable var sumsInRegisters: Bool { T.sumsGroupsInRegisters && !holdsQuads }

    /// Loads x and dy of the `count` ≤ B instances at `x`, `dy` into set
    /// `set` (kinds 0 and 1; see `load`), and returns where each can be
    /// read in natural order. With `summing`, for `gradientSums`: where
    /// those sum in registers, they ask for the next block's lines, not this.
    @inlinable @inline(__always)
    func loadGradients(
        x: UnsafePointer<T>, dy: UnsafePointer<T>, count: Int, available: Int, set: Int, transposing: Bool,
        summing: Bool = false
    ) -> (x: UnsafePointer<T>, dy: UnsafePointer<T>) {
        let askingForNext = !(summing && groupsAskForNext)
        return (load(x, count: count, available: available, set: set, kind: 0, transposing: transposing,
                     askingForNext: askingForNext),
                load(dy, count: count, available: available, set: set, kind: 1, transposing: transposing,
                     askingForNext: askingForNext))
    }

    /// s1 and s2 of every lane of a block loaded into set `set` with
    /// `transposing: !sumsInRegisters` (`gradientLaneSums`), x̂ from `lanes`.
    @inlinable @inline(__always)
    func gradientSums(
        _ lanes: LaneStatistics<T.Compute>, x: UnsafePointer<T>, dy: UnsafePointer<T>, set: Int
    ) -> (sumDy: T.Compute.WideLanes, sumDyXHat: T.Compute.WideLanes) {
        if spatialCount == 1 {
            // One value per lane: the natural order is the one column.
            return gradientLaneSums(lanes, count: 1) { GradientColumns(gradients: dy, values: x, center: $0) }
        }
        if sumsInRegisters { return gradientLaneSums(lanes, rows: (dy: dy, x: x), count: spatialCount) }
        return gradientLaneSums(
            lanes, dy: UnsafePointer(columns(set, 1)), x: UnsafePointer(columns(set, 0)), count: spatialCount)
    }
}

/// A block's place in the scratch after `SmallBackward.load`: its set, its
/// x and dy in natural order (in the tensor or padded copies) and its lanes'
/// statistics.
@usableFromInline
struct LoadedBlock<T: InstanceNormScalar> {
    @usableFromInline let block: Range<Int>
    @usableFromInline let set: Int
    @usableFromInline let x, dy: UnsafePointer<T>
    @usableFromInline let lanes: LaneStatistics<T.Compute>

    @inlinable init(block: Range<Int>, set: Int, x: UnsafePointer<T>, dy: UnsafePointer<T>, lanes: LaneStatistics<T.Compute>) {
        self.block = block
        self.set = set
        self.x = x
        self.dy = dy
        self.lanes = lanes
    }
}

extension SmallBackward {
    /// The whole backward (see `BatchKernel.backward` for the arguments;
    /// `combines` is its `combinesParameterGradients`).
    @inlinable func run(
        threads: Int, dgamma: UnsafeMutableBufferPointer<Double>, dbeta: UnsafeMutableBufferPointer<Double>,
        instanceSums: UnsafeMutableBufferPointer<Double>?, combines: Bool, overlap: BackwardOverlap?,
        deposits: ShareDeposits? = nil
    ) {
        let schedule = BlockSchedule(shape: shape, lanes: T.Vector.scalarCount, threads: threads)
        let split = WorkSplit(units: schedule.workers, length: 1, threads: schedule.workers)
        dgamma.update(repeating: 0)
        dbeta.update(repeating: 0)
        precondition(deposits.map { $0.workers >= schedule.workers && $0.channels == channels } ?? true, "deposits for another shape")
        let stored = instanceSums ?? (schedule.combinesInLine || deposits != nil ? nil : .allocate(capacity: 2 * instanceCount))
        defer { if instanceSums == nil { stored?.deallocate() } }
        let tailBlocks = schedule.tailBlocks(elements: overlap?.tailElements ?? 0, spatialCount: spatialCount)
        let firstTail = schedule.blocks - tailBlocks
        let waiting = DeferredSums<C>(count: tailBlocks)
        defer { waiting.deallocate() }
        let parameterSums = ParameterSums(
            dgamma: SharedBuffer(dgamma), dbeta: SharedBuffer(dbeta), stored: stored.map { SharedBuffer($0) },
            channels: channels, inLine: combines && schedule.combinesInLine, streaming: streaming)
        let claims = schedule.claims
        split.run { worker in
            // Software-pipelined as the forward is: a block's sums before
            // the dx of the block before it.
            let scratch = BlockScratch<T>(spatialCount: spatialCount)
            var waitingDx: (block: Range<Int>, set: Int, x: UnsafePointer<T>, dy: UnsafePointer<T>)?
            var set = 0
            var shares = deposits.map { ShareStaging($0, worker: worker) }
            for index in claims {
                let block = schedule.block(index)
                let loaded = load(block, set, scratch)
                set ^= 1
                let (sumDy, sumDyXHat) = sums(loaded, scratch)
                if shares != nil {
                    shares!.record(block, sumDy: sumDy, sumDyXHat: sumDyXHat, staging: scratch.staging)
                } else {
                    parameterSums.record(block, sumDy: sumDy, sumDyXHat: sumDyXHat, staging: scratch.staging)
                }
                if index < firstTail {
                    gradientConstants(block, loaded.lanes, sumDy: sumDy, sumDyXHat: sumDyXHat, loaded.set, scratch)
                } else {
                    waiting.keep(index - firstTail, sumDy, sumDyXHat)
                }
                if let previous = waitingDx { inputGradient(previous.block, previous.set, x: previous.x, dy: previous.dy, scratch) }
                waitingDx = index < firstTail ? (block, loaded.set, loaded.x, loaded.dy) : nil
            }
            if let previous = waitingDx { inputGradient(previous.block, previous.set, x: previous.x, dy: previous.dy, scratch) }
            shares?.flush()
            // The streamed sums reach memory before another thread adds them up.
            if streaming { instnorm_store_fence() }
        }
        if combines && !schedule.combinesInLine { parameterSums.combineInSampleOrder(instanceCount: instanceCount, threads: threads) }
        overlap?.sumsReady()
        writeTails(schedule, split, firstTail, waiting, overlap)
        if streaming { instnorm_store_fence() }
    }

    /// dx of the tail blocks (from `firstTail` on), from their kept sums,
    /// a balanced run of them per worker, fixed: worker 0 (the thread that
    /// may call MPI) calls `overlap.progress` every `progressInterval`
    /// values, and must have its share to do so.
    @inlinable func writeTails(
        _ schedule: BlockSchedule, _ split: WorkSplit, _ firstTail: Int, _ waiting: DeferredSums<C>,
        _ overlap: BackwardOverlap?
    ) {
        guard firstTail < schedule.blocks else { return }
        split.run { worker in
            let scratch = BlockScratch<T>(spatialCount: spatialCount)
            var sinceProgress = 0
            let mine = balancedRange(schedule.blocks - firstTail, worker, split.workers)
            for index in firstTail + mine.lowerBound..<firstTail + mine.upperBound {
                let block = schedule.block(index)
                let (sumDy, sumDyXHat) = waiting.kept(index - firstTail)
                let loaded = load(block, 0, scratch, summing: false)
                gradientConstants(block, loaded.lanes, sumDy: sumDy, sumDyXHat: sumDyXHat, 0, scratch)
                inputGradient(block, 0, x: loaded.x, dy: loaded.dy, scratch)
                sinceProgress += block.count * spatialCount
                if worker == 0, let overlap, sinceProgress >= overlap.progressInterval {
                    overlap.progress()
                    sinceProgress = 0
                }
            }
        }
    }
}

/// Where a block's s1, s2 go: the caller's per-instance sums (or, when
/// the workers cannot add them in line, a buffer of them), and dγ, dβ.
@usableFromInline
struct ParameterSums: @unchecked Sendable {
    @usableFromInline let dgamma, dbeta: SharedBuffer<Double>
    /// (N·C, 2): s1, s2 per instance, or nil.
    @usableFromInline let stored: SharedBuffer<Double>?
    @usableFromInline let channels: InstanceChannels
    /// Whether `record` adds into dγ, dβ (one worker takes every instance, in order).
    @usableFromInline let inLine: Bool
    /// Whether `stored` takes streaming stores (`streamsTable`): the
    /// kernel's dx streams, and nothing reads the table before its workers
    /// are done.
    @usableFromInline let streaming: Bool

    @inlinable init(dgamma: SharedBuffer<Double>, dbeta: SharedBuffer<Double>, stored: SharedBuffer<Double>?,
                    channels: Int, inLine: Bool, streaming: Bool) {
        self.dgamma = dgamma
        self.dbeta = dbeta
        self.stored = stored
        self.channels = InstanceChannels(channels)
        self.inLine = inLine
        self.streaming = streaming
    }

    /// Stores the lanes' sums of `block`, and adds them into dγ_c, dβ_c in
    /// instance order when in line (through `staging`, 2·B doubles).
    @inlinable @inline(__always)
    func record<Wide: SIMD>(_ block: Range<Int>, sumDy: Wide, sumDyXHat: Wide, staging: UnsafeMutablePointer<Double>)
    where Wide.Scalar == Double {
        let lanes = Wide.scalarCount, count = block.count
        if let stored {
            Self.storePairs(sumDy, sumDyXHat, to: stored.base + 2 * block.lowerBound, count: count, staging: staging,
                            streaming: streaming)
        } else {
            storeLanes(sumDy, staging)
            storeLanes(sumDyXHat, staging + lanes)
        }
        guard inLine else { return }
        let channels = self.channels.count, channel = self.channels.channel(of: block.lowerBound)
        if count == lanes && channel + lanes <= channels {
            // B different channels: one addition each, as the loop below makes.
            storeLanes(lanesAt(dbeta.base + channel) + sumDy, dbeta.base + channel)
            storeLanes(lanesAt(dgamma.base + channel) + sumDyXHat, dgamma.base + channel)
            return
        }
        var wrapped = channel
        for lane in 0..<count {
            dbeta.base[wrapped] += staging[lane]
            dgamma.base[wrapped] += staging[lanes + lane]
            wrapped = wrapped + 1 == channels ? 0 : wrapped + 1
        }
    }

    /// The first `count` lanes of `first` and `second` interleaved at `out`
    /// (out[2b] = first[b], out[2b + 1] = second[b]), through `staging`
    /// (2·B doubles, which keeps them); `streaming`, a whole block with
    /// streaming stores (`streamsTable`).
    @inlinable @inline(__always)
    static func storePairs<Wide: SIMD>(
        _ first: Wide, _ second: Wide, to out: UnsafeMutablePointer<Double>, count: Int, staging: UnsafeMutablePointer<Double>,
        streaming: Bool
    ) where Wide.Scalar == Double {
        let lanes = Wide.scalarCount
        storeLanes(first, staging)
        storeLanes(second, staging + lanes)
        if count == lanes {
            let streams = streamsTable(streaming, out)
            for lane in stride(from: 0, to: lanes, by: 4) {
                let (firsts, seconds): (SIMD4<Double>, SIMD4<Double>) = (lanesAt(staging + lane), lanesAt(staging + lanes + lane))
                if streams {
                    instnorm_stream_pairs4(out + 2 * lane, firsts, seconds)
                } else {
                    instnorm_store_pairs4(out + 2 * lane, firsts, seconds)
                }
            }
            return
        }
        for lane in 0..<count {
            out[2 * lane] = staging[lane]
            out[2 * lane + 1] = staging[lanes + lane]
        }
    }

    /// dγ_c += s2, dβ_c += s1 over the stored sums, in sample order.
    @inlinable func combineInSampleOrder(instanceCount: Int, threads: Int) {
        guard let stored else { preconditionFailure("no stored sums to combine") }
        addInSampleOrder(stored.base, samples: instanceCount / channels.count, channels: channels.count,
                         dgamma: dgamma.base, dbeta: dbeta.base, threads: threads)
    }
}

/// The s1, s2 lanes of the tail blocks, kept until their dx.
@usableFromInline
final class DeferredSums<C: InstanceNormComputeScalar>: @unchecked Sendable {
    @usableFromInline let sums: UnsafeMutablePointer<(C.WideLanes, C.WideLanes)>

    @inlinable init(count: Int) {
        sums = .allocate(capacity: max(1, count))
    }

    @inlinable func deallocate() { sums.deallocate() }

    @inlinable func keep(_ tail: Int, _ sumDy: C.WideLanes, _ sumDyXHat: C.WideLanes) {
        (sums + tail).initialize(to: (sumDy, sumDyXHat))
    }

    @inlinable func kept(_ tail: Int) -> (C.WideLanes, C.WideLanes) { sums[tail] }
}

/// s1 = Σ dy and s2 = r·(Σ dy·(x − μ_hi) − μ_lo·s1) of every lane of a
/// block held as columns `stride` values apart, as
/// `InstanceKernel.gradientSums` forms them.
@inlinable @inline(__always)
func gradientLaneSums<T: InstanceNormScalar>(
    _ lanes: LaneStatistics<T.Compute>, dy: UnsafePointer<T>, x: UnsafePointer<T>, stride: Int = T.Vector.scalarCount,
    count: Int, eachGroup: () -> Void = {}
) -> (sumDy: T.Compute.WideLanes, sumDyXHat: T.Compute.WideLanes) {
    gradientLaneSums(lanes, count: count, eachGroup: eachGroup) {
        GradientColumns(gradients: dy, values: x, stride: stride, center: $0)
    }
}

/// The same over the columns that `columns(μ_hi)` gives.
@inlinable @inline(__always)
func gradientLaneSums<Terms: ColumnTerms>(
    _ lanes: LaneStatistics<Terms.Compute>, count: Int, eachGroup: () -> Void = {},
    _ columns: (Terms.Compute.Lanes) -> Terms
) -> (sumDy: Terms.Compute.WideLanes, sumDyXHat: Terms.Compute.WideLanes) {
    let (meanHigh, meanLow) = lanes.splitMean
    let (sumDy, sumDyCentered) = laneSums(columns(meanHigh), count: count, eachGroup: eachGroup)
    return (sumDy, lanes.invstd * (sumDyCentered - meanLow * sumDy))
}

/// `gradientLaneSums` from a block held in natural order (instance b's M
/// values at `dy + b·M`, `x + b·M`), each group of 8 positions summed from
/// tiles turned in registers (`InstanceNormScalar.gradientGroupSums`): the
/// same additions in the same order, so the same bits. Above
/// `NextBlockLines.burstLimit` positions, each group asks for its slice of
/// the next block's lines.
@inlinable @inline(__always)
func gradientLaneSums<T: InstanceNormScalar>(
    _ lanes: LaneStatistics<T.Compute>, rows: (dy: UnsafePointer<T>, x: UnsafePointer<T>), count: Int
) -> (sumDy: T.Compute.WideLanes, sumDyXHat: T.Compute.WideLanes) {
    typealias C = T.Compute
    let (dy, x) = rows
    let (meanHigh, meanLow) = lanes.splitMean
    let next = NextBlockLines(T.self, spatialCount: count)
    let (sumDy, sumDyCentered) = sumsByGroup(C.self, count: count) { start, length in
        next?.ask(after: UnsafeRawPointer(x), and: UnsafeRawPointer(dy), group: start)
        return T.gradientGroupSums(dy: dy + start, x: x + start, rowStride: count, center: meanHigh, count: length)
    }
    return (sumDy, lanes.invstd * (sumDyCentered - meanLow * sumDy))
}

/// The per-lane constants of dx, as `InstanceKernel.inputGradient` folds
/// them for one instance:
///
///     k = γ·r    p = −k·r·s2/M    m̄ = s1/M rounded    q = k·(m̄ − s1/M) − p·μ_lo
///     dx = k·(dy − m̄) + p·(x − μ_hi) + q
@usableFromInline
struct GradientLaneConstants<C: InstanceNormComputeScalar> {
    /// μ_hi, m̄, k, p, q per lane.
    @usableFromInline let meanHigh, meanDy, gradientScale, centeredScale, offset: C.Lanes

    @inlinable @inline(__always)
    init(gamma: C.WideLanes, _ lanes: LaneStatistics<C>, sumDy: C.WideLanes, sumDyXHat: C.WideLanes, divisor: LaneDivisor) {
        let (meanHigh, meanLow) = lanes.splitMean
        let gradientScaleWide = gamma * lanes.invstd
        let centeredScaleWide = divisor.divide(-gradientScaleWide * lanes.invstd * sumDyXHat)
        let meanDyWide = divisor.divide(sumDy)
        let meanDy = C.narrow(meanDyWide)
        self.meanHigh = meanHigh
        self.meanDy = meanDy
        gradientScale = C.narrow(gradientScaleWide)
        centeredScale = C.narrow(centeredScaleWide)
        offset = C.narrow(gradientScaleWide * (C.widen(meanDy) - meanDyWide) - centeredScaleWide * meanLow)
    }

    /// The constants that `store` left in the constants of `set`.
    @inlinable @inline(__always)
    init<T: InstanceNormScalar>(_ scratch: BlockScratch<T>, _ set: Int) where T.Compute == C {
        let address = UnsafePointer(scratch.constant(set, 0)), lanes = C.Lanes.scalarCount
        (meanHigh, meanDy) = (loadVector(address, 0), loadVector(address, lanes))
        (gradientScale, centeredScale) = (loadVector(address, 2 &* lanes), loadVector(address, 3 &* lanes))
        offset = loadVector(address, 4 &* lanes)
    }

    /// Keeps μ_hi, m̄, k, p, q (the order `InputGradientBlock` reads), one
    /// vector after the other (5·B values), in the constants of `set`,
    /// between the stages of the pipelined loop.
    @inlinable @inline(__always)
    func store<T: InstanceNormScalar>(_ scratch: BlockScratch<T>, _ set: Int) where T.Compute == C {
        let address = scratch.constant(set, 0), lanes = C.Lanes.scalarCount
        storeVector(meanHigh, address, 0)
        storeVector(meanDy, address, lanes)
        storeVector(gradientScale, address, 2 &* lanes)
        storeVector(centeredScale, address, 3 &* lanes)
        storeVector(offset, address, 4 &* lanes)
    }

    /// dx of one lane's position from its x and dy, in the compute precision.
    @inlinable @inline(__always)
    func value(x: C.Lanes, dy: C.Lanes) -> C.Lanes {
        offset.addingProduct(centeredScale, x - meanHigh).addingProduct(gradientScale, dy - meanDy)
    }
}
