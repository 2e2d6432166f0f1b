import _InstanceNormShims

/// InstanceNorm channels last (N, S…, C) over small instances (M ≤
/// `SmallInstances.limit`): a sample's B = `T.Vector.scalarCount`
/// consecutive channels are already B lanes, position after position, so
/// a block of channels is (sample, B channels) read as M strided vectors,
/// with no transposition. Each lane runs the same lane-wise code as the
/// channels-first blocks (`LaneStatistics`, `laneSums`,
/// `NormalizeLaneConstants`, `GradientLaneConstants`), so both layouts give
/// the same bits, a function of each instance alone.
///
/// A unit of work is a run of a sample's channel blocks (all of them when
/// their columns fit `unitBytes`), read and written in the tensor's own
/// order, position after position across the run's channels, while the
/// next unit's lines are asked for. Taken block by block, as until
/// 2026-12-05, the lines of one block lie C values apart, an order the
/// prefetchers do not follow: at C = 128, M = 49 that took twice as long
/// both ways as channels first. The columns are copied (widened) into the
/// worker's scratch, block after block; a block of fewer than B channels
/// (C not a multiple of B) fills its missing lanes with zeros, which are
/// computed and never stored.
@usableFromInline
struct SmallChannelsLast<T: InstanceNormScalar>: @unchecked Sendable {
    @usableFromInline typealias C = T.Compute
    @usableFromInline let shape: InstanceNormShape
    @usableFromInline let channels, spatialCount, lanes, channelBlocks: Int
    /// Channel blocks per unit of work (the last unit of a sample may hold fewer).
    @usableFromInline let unitBlocks: Int
    @usableFromInline let divisor: LaneDivisor

    /// The most bytes of one tensor's columns that a unit gathers: a unit
    /// of the backward holds two tensors' columns and stays in L2.
    @inlinable static var unitBytes: Int { 64 << 10 }

    @inlinable init(shape: InstanceNormShape, threads: Int) {
        self.shape = shape
        channels = shape.channels
        spatialCount = shape.spatialCount
        lanes = T.Vector.scalarCount
        channelBlocks = (shape.channels + lanes - 1) / lanes
        divisor = LaneDivisor(shape.spatialCount)
        let fitting = max(1, Self.unitBytes / max(1, shape.spatialCount * lanes * MemoryLayout<C>.stride))
        // Fewer samples than workers: a sample's blocks are shared among them.
        let sharing = shape.batch >= threads ? 1 : (threads + max(shape.batch, 1) - 1) / max(shape.batch, 1)
        unitBlocks = min(fitting, max(1, (channelBlocks + sharing - 1) / sharing))
    }

    @inlinable var unitsPerSample: Int { (channelBlocks + unitBlocks - 1) / unitBlocks }

    /// Units are numbered sample·unitsPerSample + u; the workers take balanced runs.
    @inlinable func split(threads: Int) -> WorkSplit {
        WorkSplit(units: shape.batch * unitsPerSample, length: 1, threads: threads)
    }

    /// The sample of unit `unit` and its channel blocks.
    @inlinable func blocks(of unit: Int) -> (sample: Int, blocks: Range<Int>) {
        let first = (unit % unitsPerSample) * unitBlocks
        return (unit / unitsPerSample, first..<min(first + unitBlocks, channelBlocks))
    }

    /// The first instance of channel block `block` of `sample` (instances
    /// are numbered n·C + c) and how many channels it holds.
    @inlinable func instances(sample: Int, block: Int) -> (first: Int, count: Int) {
        let firstChannel = block * lanes
        return (sample * channels + firstChannel, min(lanes, channels - firstChannel))
    }

    /// Copies the M positions of `sample`'s channel `blocks` from `tensor`
    /// into `columns`, widened, block k's M columns at columns + k·M·B,
    /// lanes past C zero; the tensor is read in its order.
    @inlinable @inline(__always)
    func gather(_ tensor: UnsafePointer<T>, sample: Int, blocks: Range<Int>, into columns: UnsafeMutablePointer<C>) {
        let start = tensor + (sample &* spatialCount &* channels &+ blocks.lowerBound &* lanes)
        let blockValues = spatialCount &* lanes, lastCount = min(lanes, channels &- (blocks.upperBound &- 1) &* lanes)
        // Whole blocks as plain copies, a partial last block lane by lane:
        // one loop of index arithmetic ran the same copies at 0.6× the speed.
        let wholeBlocks = lastCount < lanes ? blocks.count &- 1 : blocks.count
        for position in 0..<spatialCount {
            let row = start + position &* channels
            var column = columns + position &* lanes
            for k in 0..<wholeBlocks {
                storeVector(loadVector(row, k &* lanes), column, 0)
                column += blockValues
            }
            if wholeBlocks < blocks.count {
                let partial = row + wholeBlocks &* lanes
                for lane in 0..<lanes { column[lane] = lane < lastCount ? partial[lane].computed : 0 }
            }
        }
    }

    /// out[sample, position, block's channels] = the unit's k-th block's
    /// output at the position, rounded to T, in the tensor's order, the
    /// next unit's lines asked for on the way (`next`).
    @inlinable @inline(__always)
    func scatter<Constants: UnitConstants>(
        _ tensor: UnsafeMutablePointer<T>, sample: Int, blocks: Range<Int>, streaming: Bool, _ output: UnitOutput<Constants>,
        prefetching next: NextUnitLines
    ) where Constants.C == C {
        let start = tensor + (sample &* spatialCount &* channels &+ blocks.lowerBound &* lanes)
        let lastCount = min(lanes, channels &- (blocks.upperBound &- 1) &* lanes)
        let wholeBlocks = lastCount < lanes ? blocks.count &- 1 : blocks.count
        if blocks.count == 1 {
            // One block: its constants stay in registers.
            let constants = output.constants(of: 0)
            for position in 0..<spatialCount {
                store(output.vector(constants, 0, position), to: start + position &* channels, count: lastCount,
                      streaming: streaming)
                next.prefetch(position: position)
            }
            return
        }
        for position in 0..<spatialCount {
            let row = start + position &* channels
            for k in 0..<wholeBlocks {
                store(output.vector(output.constants(of: k), k, position), to: row + k &* lanes, count: lanes,
                      streaming: streaming)
            }
            if wholeBlocks < blocks.count {
                store(output.vector(output.constants(of: wholeBlocks), wholeBlocks, position), to: row + wholeBlocks &* lanes,
                      count: lastCount, streaming: streaming)
            }
            next.prefetch(position: position)
        }
    }

    /// The first `count` lanes of `vector` at `out`, rounded to T: a whole
    /// vector (non-temporal with `streaming` when `out` sits on its
    /// alignment), or lane by lane (the same bits: IEEE arithmetic rounds a
    /// lane as it rounds a scalar).
    @inlinable @inline(__always)
    func store(_ vector: C.Lanes, to out: UnsafeMutablePointer<T>, count: Int, streaming: Bool) {
        guard count == lanes else {
            for lane in 0..<count { out[lane] = T(rounding: vector[lane]) }
            return
        }
        // A power of two: the test is a mask, not a division per vector.
        let misalignment = min(64, lanes &* MemoryLayout<T>.stride) &- 1
        if streaming && Int(bitPattern: out) & misalignment == 0 {
            T.streamStore(vector, to: out)
        } else {
            storeVector(vector, out, 0)
        }
    }

    /// The lines of the unit after `unit`, if `units` holds it, in `first`
    /// and `second` (x, and dy for the backward).
    @inlinable func nextUnit(after unit: Int, in units: Range<Int>, _ first: UnsafePointer<T>, _ second: UnsafePointer<T>?) -> NextUnitLines {
        guard unit + 1 < units.upperBound else { return NextUnitLines() }
        let (sample, blocks) = self.blocks(of: unit + 1), stride = MemoryLayout<T>.stride
        let offset = (sample * spatialCount * channels + blocks.lowerBound * lanes) * stride
        return NextUnitLines(
            first: UnsafeRawPointer(first) + offset, second: second.map { UnsafeRawPointer($0) + offset },
            rowBytes: channels * stride, runBytes: (min(blocks.upperBound * lanes, channels) - blocks.lowerBound * lanes) * stride)
    }
}

/// The next unit's lines, asked into L2 a position at a time while the
/// current unit's output is written: the unit's columns are gathered in a
/// burst of loads, which would otherwise wait on memory with nothing to
/// overlap (at C = 128, M = 49 the gather's loads held half the forward's
/// samples).
@usableFromInline
struct NextUnitLines {
    /// Position 0 of the next unit's run in x (and dy), or nil for none.
    @usableFromInline let first, second: UnsafeRawPointer?
    @usableFromInline let rowBytes, runBytes: Int

    @inlinable init(first: UnsafeRawPointer? = nil, second: UnsafeRawPointer? = nil, rowBytes: Int = 0, runBytes: Int = 0) {
        self.first = first
        self.second = second
        self.rowBytes = rowBytes
        self.runBytes = runBytes
    }

    /// Asks for the lines of the run at `position`.
    @inlinable @inline(__always)
    func prefetch(position: Int) {
        guard let first else { return }
        let start = first + position &* rowBytes, end = start + runBytes
        var line = UnsafeRawPointer(bitPattern: Int(bitPattern: start) & ~63)!
        while line < end {
            instnorm_prefetch(line)
            if let second { instnorm_prefetch(second + (line - first)) }
            line += 64
        }
    }
}

/// One worker's scratch for `SmallChannelsLast`: a unit's columns of one
/// or two tensors, its blocks' output constants, and room for `LaneStatistics`' staging.
@usableFromInline
final class SmallChannelsLastScratch<C: InstanceNormComputeScalar> {
    @usableFromInline let columnCount: Int
    @usableFromInline let columnSlots, constants: UnsafeMutablePointer<C>
    @usableFromInline let staging: UnsafeMutablePointer<Double>

    /// For `blocks` blocks of M = `spatialCount` columns of `tensors` tensors
    /// and `constantsPerBlock` constant vectors.
    @inlinable init(blocks: Int, spatialCount: Int, tensors: Int, constantsPerBlock: Int) {
        let lanes = C.Lanes.scalarCount
        columnCount = blocks * spatialCount * lanes
        columnSlots = allocateAligned(tensors * columnCount, of: C.self)
        constants = allocateAligned(blocks * constantsPerBlock * lanes, of: C.self)
        staging = allocateAligned(3 * lanes, of: Double.self)
    }

    deinit {
        columnSlots.deallocate()
        constants.deallocate()
        staging.deallocate()
    }

    /// The columns of tensor `kind` (0: x, 1: dy).
    @inlinable func columns(_ kind: Int) -> UnsafeMutablePointer<C> { columnSlots + kind * columnCount }
}

extension SmallChannelsLast {
    /// The training forward (see `BatchKernel.forward`).
    @inlinable func forward(
        y: UnsafeMutableBufferPointer<T>, statistics: UnsafeMutableBufferPointer<InstanceStatistics>,
        x: UnsafeBufferPointer<T>, gamma: UnsafeBufferPointer<T>?, beta: UnsafeBufferPointer<T>?,
        eps: Double, threads: Int, stores: StorePolicy
    ) {
        let streaming = stores.streams(y, tensors: 2)
        let gammaLanes = ChannelLanes(gamma, channels: channels, lanes: lanes, default: 1)
        let betaLanes = ChannelLanes(beta, channels: channels, lanes: lanes, default: 0)
        let (output, input, stored) = (SharedBuffer(y), SharedBuffer(x), SharedBuffer(statistics))
        let split = split(threads: threads), blockValues = spatialCount * lanes
        split.run { worker in
            let scratch = SmallChannelsLastScratch<C>(
                blocks: unitBlocks, spatialCount: spatialCount, tensors: 1, constantsPerBlock: NormalizeLaneConstants<C>.vectors)
            let columns = scratch.columns(0)
            let units = split.instances(of: worker)
            for unit in units {
                let (sample, blocks) = self.blocks(of: unit)
                gather(input.base, sample: sample, blocks: blocks, into: columns)
                for block in blocks {
                    let (first, count) = instances(sample: sample, block: block), k = block - blocks.lowerBound
                    let statistics = LaneStatistics<C>(
                        columns: UnsafePointer(columns + k * blockValues), count: spatialCount, divisor: divisor, eps: eps)
                    statistics.store(to: stored.base + first, count: count, staging: scratch.staging, streaming: streaming)
                    NormalizeLaneConstants(gamma: gammaLanes.lanes(from: first), beta: betaLanes.lanes(from: first), statistics)
                        .store(to: scratch.constants + NormalizeLaneConstants<C>.vectors * k * lanes)
                }
                scatter(output.base, sample: sample, blocks: blocks, streaming: streaming,
                        UnitOutput<NormalizeLaneConstants<C>>(x: columns, constants: scratch.constants, blockValues: blockValues),
                        prefetching: nextUnit(after: unit, in: units, input.base, nil))
            }
            // Each worker's streaming stores (y and the statistics) done before the join.
            if streaming { instnorm_store_fence() }
        }
        if streaming { instnorm_store_fence() }
    }

    /// The backward (see `BatchKernel.backward`): s1, s2 of every instance,
    /// dx, then dγ, dβ from the per-instance sums in sample order (the
    /// order of the channels-first kernels). `overlap.sumsReady` runs at
    /// the end: these kernels leave no tail to hide the reduction behind.
    @inlinable func backward(
        dx: UnsafeMutableBufferPointer<T>, dgamma: UnsafeMutableBufferPointer<Double>,
        dbeta: UnsafeMutableBufferPointer<Double>, dy: UnsafeBufferPointer<T>, x: UnsafeBufferPointer<T>,
        statistics: UnsafeBufferPointer<InstanceStatistics>, gamma: UnsafeBufferPointer<T>?, threads: Int,
        stores: StorePolicy, instanceSums: UnsafeMutableBufferPointer<Double>?, overlap: BackwardOverlap?
    ) {
        let streaming = stores.streams(dx, tensors: 3)
        let gammaLanes = ChannelLanes(gamma, channels: channels, lanes: lanes, default: 1)
        let (output, gradients, input) = (SharedBuffer(dx), SharedBuffer(dy), SharedBuffer(x))
        let saved = SharedBuffer(statistics)
        let sums = instanceSums ?? .allocate(capacity: 2 * shape.instanceCount)
        defer { if instanceSums == nil { sums.deallocate() } }
        dgamma.update(repeating: 0)
        dbeta.update(repeating: 0)
        let parameterSums = ParameterSums(
            dgamma: SharedBuffer(dgamma), dbeta: SharedBuffer(dbeta), stored: SharedBuffer(sums), channels: channels,
            inLine: false, streaming: streaming)
        let split = split(threads: threads), blockValues = spatialCount * lanes
        split.run { worker in
            let scratch = SmallChannelsLastScratch<C>(
                blocks: unitBlocks, spatialCount: spatialCount, tensors: 2, constantsPerBlock: GradientLaneConstants<C>.vectors)
            let values = scratch.columns(0), deltas = scratch.columns(1)
            let units = split.instances(of: worker)
            for unit in units {
                let (sample, blocks) = self.blocks(of: unit)
                gather(input.base, sample: sample, blocks: blocks, into: values)
                gather(gradients.base, sample: sample, blocks: blocks, into: deltas)
                for block in blocks {
                    let (first, count) = instances(sample: sample, block: block), k = block - blocks.lowerBound
                    let statistics = LaneStatistics<C>(saved.base + first, count: count, staging: scratch.staging)
                    let (sumDy, sumDyXHat) = gradientLaneSums(
                        statistics, dy: UnsafePointer(deltas + k * blockValues), x: UnsafePointer(values + k * blockValues),
                        count: spatialCount)
                    parameterSums.record(first..<first + count, sumDy: sumDy, sumDyXHat: sumDyXHat, staging: scratch.staging)
                    GradientLaneConstants(
                        gamma: gammaLanes.lanes(from: first), statistics, sumDy: sumDy, sumDyXHat: sumDyXHat,
                        divisor: divisor
                    ).store(to: scratch.constants + GradientLaneConstants<C>.vectors * k * lanes)
                }
                scatter(output.base, sample: sample, blocks: blocks, streaming: streaming,
                        UnitOutput<GradientLaneConstants<C>>(
                            x: values, dy: deltas, constants: scratch.constants, blockValues: blockValues),
                        prefetching: nextUnit(after: unit, in: units, input.base, gradients.base))
            }
            // The streamed sums reach memory before another thread adds them up.
            if streaming { instnorm_store_fence() }
        }
        if streaming { instnorm_store_fence() }
        parameterSums.combineInSampleOrder(instanceCount: shape.instanceCount, threads: threads)
        overlap?.sumsReady()
    }
}

/// A block's per-lane constants of an output of `SmallChannelsLast`, kept
/// in a unit's scratch between the block's statistics and the unit's
/// output: `NormalizeLaneConstants` (y) or `GradientLaneConstants` (dx).
@usableFromInline
protocol UnitConstants {
    associatedtype C: InstanceNormComputeScalar
    /// How many vectors of B lanes a block keeps.
    static var vectors: Int { get }
    init(loadingFrom address: UnsafePointer<C>)
    /// The output at a position from its x and dy (the forward has no dy).
    func value(x: C.Lanes, dy: C.Lanes) -> C.Lanes
}

extension NormalizeLaneConstants: UnitConstants {
    @inlinable static var vectors: Int { 3 }

    @inlinable @inline(__always)
    func value(x: C.Lanes, dy _: C.Lanes) -> C.Lanes { value(x: x) }
}

extension GradientLaneConstants: UnitConstants {
    @inlinable static var vectors: Int { 5 }
}

/// An output of a unit: block k's lanes at a position, from the unit's
/// columns of x (and dy) and each block's constants, `Constants.vectors`
/// vectors a block.
@usableFromInline
struct UnitOutput<Constants: UnitConstants> {
    @usableFromInline typealias C = Constants.C
    @usableFromInline let x, dy, constants: UnsafePointer<C>
    @usableFromInline let blockValues: Int

    /// Without `dy` (the forward), the x columns stand in for it, unread.
    @inlinable init(x: UnsafeMutablePointer<C>, dy: UnsafeMutablePointer<C>? = nil, constants: UnsafeMutablePointer<C>,
                    blockValues: Int) {
        self.x = UnsafePointer(x)
        self.dy = UnsafePointer(dy ?? x)
        self.constants = UnsafePointer(constants)
        self.blockValues = blockValues
    }

    /// Block k's constants, read once for its positions.
    @inlinable @inline(__always)
    func constants(of block: Int) -> Constants {
        Constants(loadingFrom: constants + Constants.vectors &* block &* C.Lanes.scalarCount)
    }

    @inlinable @inline(__always)
    func vector(_ constants: Constants, _ block: Int, _ position: Int) -> C.Lanes {
        let index = block &* blockValues &+ position &* C.Lanes.scalarCount
        return constants.value(x: loadVector(x, index), dy: loadVector(dy, index))
    }
}
