import _InstanceNormShims

/// InstanceNorm channels last (N, S…, C) over small instances (M ≤
/// `SmallInstances.limit`): a sample's B = `T.Vector.scalarCount`
/// consecutive channels are already B lanes, position after position, so
/// a block of channels is (sample, B channels), M vectors C values apart,
/// with no transposition. Each lane runs the same lane-wise code as the
/// channels-first blocks (`LaneStatistics`, `laneSums`,
/// `NormalizeLaneConstants`, `GradientLaneConstants`), so both layouts give
/// the same bits, a function of each instance alone.
///
/// A block's sums read its vectors where they lie in the tensor; its
/// output reads them again (from L1: one or two lines a position and
/// tensor) and writes a vector a position with the block's constants in
/// registers. A unit of work is a run of a sample's channel blocks (all of
/// them when their values fit `unitBytes`), whose lines are asked into L2
/// a few at a time over the work of the unit before it (`UnitRequests`):
/// a block's lines lie C values apart, an order the prefetchers do not
/// follow. A block of fewer than B channels (C not a multiple of B) is
/// copied into the worker's scratch first, zeros in its missing lanes
/// (computed and never stored), since its last vector would reach past
/// the tensor.
///
/// Until 2026-12-06 every block was copied (widened) into the scratch, and
/// the output written across a unit's blocks position by position, each
/// vector with its block's constants loaded again: at C = 64, M = 196, in
/// cache, that backward took 1.5 times as long as the channels-last
/// per-instance kernels'.
@usableFromInline
struct SmallChannelsLast<T: InstanceNormScalar>: @unchecked Sendable {
    @usableFromInline typealias C = T.Compute
    @usableFromInline let shape: InstanceNormShape
    @usableFromInline let channels, spatialCount, lanes, channelBlocks: Int
    /// Channel blocks per unit of work (the last unit of a sample may hold fewer).
    @usableFromInline let unitBlocks: Int
    @usableFromInline let divisor: LaneDivisor

    /// The most bytes of one tensor's blocks that a unit holds, in the
    /// compute precision: a unit of the backward, two tensors' worth, stays
    /// in L2 with the next one on its way.
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
        let blocks = min(fitting, max(1, (channelBlocks + sharing - 1) / sharing))
        // Whole lines a unit (see `lineBlocks`).
        unitBlocks = blocks > Self.lineBlocks ? blocks - blocks % Self.lineBlocks : blocks
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

    /// The offset of position 0 of `sample`'s channel block `block`.
    @inlinable @inline(__always)
    func offset(sample: Int, block: Int) -> Int { sample &* spatialCount &* channels &+ block &* lanes }

    /// The M vectors of a block of `count` channels starting at `offset` in
    /// `tensor`, and how many values apart they lie: in the tensor, C
    /// apart, or, for a partial block, copied into `scratch` (M·B values),
    /// B apart, zeros in the lanes past `count`.
    @inlinable @inline(__always)
    func columns(
        _ tensor: UnsafePointer<T>, at offset: Int, count: Int, scratch: UnsafeMutablePointer<T>
    ) -> (columns: UnsafePointer<T>, stride: Int) {
        let start = tensor + offset
        guard count < lanes else { return (start, channels) }
        for position in 0..<spatialCount {
            let row = start + position &* channels, column = scratch + position &* lanes
            for lane in 0..<lanes { column[lane] = lane < count ? row[lane] : 0 }
        }
        return (UnsafePointer(scratch), lanes)
    }

    /// Each of a unit's `blocks` computed (`output(block)`: its output,
    /// offset and channel count, after its sums) and written to `tensor`:
    /// block after block, or, where a line of a row holds two blocks (half
    /// precision), two at a time, so that a streaming store writes whole lines.
    @inlinable @inline(__always)
    func writeBlocks<Output: ColumnsOutput>(
        _ blocks: Range<Int>, to tensor: UnsafeMutablePointer<T>, streaming: Bool, requests: inout UnitRequests,
        _ output: (_ block: Int, _ requests: inout UnitRequests) -> (output: Output, offset: Int, count: Int)
    ) where Output.T == T {
        var block = blocks.lowerBound
        while block < blocks.upperBound {
            let first = output(block, &requests)
            let paired = Self.lineBlocks == 2 && block + 1 < blocks.upperBound
            let second = paired ? output(block + 1, &requests) : first
            write(first.output, at: first.offset, count: first.count, then: second.output, count: second.count,
                  paired: paired, to: tensor, streaming: streaming, requests: &requests)
            block += paired ? 2 : 1
        }
    }

    /// Blocks per cache line of a row: 2 for half precision (16 values of
    /// 2 bytes), 1 otherwise.
    @inlinable static var lineBlocks: Int { max(1, 64 / (T.Vector.scalarCount * MemoryLayout<T>.stride)) }

    /// out[position, block's channels] = `output` at the position, rounded
    /// to T, position after position from `offset`, and, if `paired`, the
    /// block after it (`next`, `nextCount` channels) at each position too:
    /// a streaming store must write a whole line at once. A step of the
    /// next unit's requests per block and position.
    @inlinable @inline(__always)
    func write<Output: ColumnsOutput>(
        _ output: Output, at offset: Int, count: Int, then next: Output, count nextCount: Int, paired: Bool,
        to tensor: UnsafeMutablePointer<T>, streaming: Bool, requests: inout UnitRequests
    ) where Output.T == T {
        let start = tensor + offset
        let fillsLines = streaming && count == lanes && (!paired || nextCount == lanes)
            && (paired ? 2 : 1) == Self.lineBlocks
        for position in 0..<spatialCount {
            let out = start + position &* channels
            let streams = fillsLines && Int(bitPattern: out) & 63 == 0
            store(output.vector(at: position), to: out, count: count, streams: streams)
            requests.advance()
            if paired {
                store(next.vector(at: position), to: out + lanes, count: nextCount, streams: streams)
                requests.advance()
            }
        }
    }

    /// The first `count` lanes of `vector` at `out`, rounded to T: a whole
    /// vector (non-temporal with `streams`), or lane by lane (the same
    /// bits: IEEE arithmetic rounds a lane as it rounds a scalar).
    @inlinable @inline(__always)
    func store(_ vector: C.Lanes, to out: UnsafeMutablePointer<T>, count: Int, streams: Bool) {
        guard count == lanes else {
            for lane in 0..<count { out[lane] = T(rounding: vector[lane]) }
            return
        }
        if streams {
            T.streamStore(vector, to: out)
        } else {
            storeVector(vector, out, 0)
        }
    }

    /// The requests for the lines of the unit after `unit`, if `units`
    /// holds it, in `first` and `second` (x, and dy for the backward),
    /// spread over the work of `unit`.
    @inlinable func requests(after unit: Int, in units: Range<Int>, _ first: UnsafePointer<T>, _ second: UnsafePointer<T>?) -> UnitRequests {
        let blockCount = blocks(of: unit).blocks.count
        guard unit + 1 < units.upperBound else { return UnitRequests(NextUnitLines(), positions: spatialCount, blocks: blockCount) }
        let (sample, blocks) = self.blocks(of: unit + 1), stride = MemoryLayout<T>.stride
        let offset = offset(sample: sample, block: blocks.lowerBound) * stride
        let next = NextUnitLines(
            first: UnsafeRawPointer(first) + offset, second: second.map { UnsafeRawPointer($0) + offset },
            rowBytes: channels * stride, runBytes: (min(blocks.upperBound * lanes, channels) - blocks.lowerBound * lanes) * stride)
        return UnitRequests(next, positions: spatialCount, blocks: blockCount)
    }
}

/// The next unit's lines asked a few positions at a time over the whole of
/// a unit's work, a step per group of each block's sums and per position
/// of its output. Asked only while the output was written (until
/// 2026-12-06), they left memory idle through the sums.
@usableFromInline
struct UnitRequests {
    @usableFromInline let next: NextUnitLines
    @usableFromInline let positions, steps: Int
    /// positions · (steps taken) − steps · (positions asked), kept below
    /// `steps`: a step asks for every position that is due, with no division.
    @usableFromInline var owed = 0, asked = 0

    /// For the `positions` positions (M) of the next unit, asked over the
    /// sums and the output of `blocks` blocks of as many positions.
    @inlinable init(_ next: NextUnitLines, positions: Int, blocks: Int) {
        self.next = next
        self.positions = positions
        steps = blocks * ((positions + blockedSumGroup - 1) / blockedSumGroup + positions)
        // Without a next unit, nothing is due.
        asked = next.first == nil ? positions : 0
    }

    /// Asks for the positions due by the next step. A statistics' second
    /// pass takes more steps than counted: the rest is then asked earlier.
    @inlinable @inline(__always)
    mutating func advance() {
        owed &+= positions
        while owed >= steps && asked < positions {
            next.prefetch(position: asked)
            asked &+= 1
            owed &-= steps
        }
    }
}

/// A block's output at a position from its columns: y
/// (`NormalizedColumns`) or dx (`InputGradientColumns`).
@usableFromInline
protocol ColumnsOutput {
    associatedtype T: InstanceNormScalar
    /// The output at a position.
    func vector(at position: Int) -> T.Vector
}

/// y = (x − μ_hi)·a + b, lane by lane (`NormalizeLaneConstants`), x's
/// columns `stride` values apart.
@usableFromInline
struct NormalizedColumns<T: InstanceNormScalar>: ColumnsOutput {
    @usableFromInline let constants: NormalizeLaneConstants<T.Compute>
    @usableFromInline let x: UnsafePointer<T>
    @usableFromInline let stride: Int

    @inlinable init(_ constants: NormalizeLaneConstants<T.Compute>, x: UnsafePointer<T>, stride: Int) {
        self.constants = constants
        self.x = x
        self.stride = stride
    }

    @inlinable @inline(__always)
    func vector(at position: Int) -> T.Vector { constants.value(x: loadVector(x, position &* stride)) }
}

/// dx, lane by lane (`GradientLaneConstants`), the columns of x and dy
/// `stride` values apart.
@usableFromInline
struct InputGradientColumns<T: InstanceNormScalar>: ColumnsOutput {
    @usableFromInline let constants: GradientLaneConstants<T.Compute>
    @usableFromInline let x, dy: UnsafePointer<T>
    @usableFromInline let stride: Int

    @inlinable init(_ constants: GradientLaneConstants<T.Compute>, x: UnsafePointer<T>, dy: UnsafePointer<T>, stride: Int) {
        self.constants = constants
        self.x = x
        self.dy = dy
        self.stride = stride
    }

    @inlinable @inline(__always)
    func vector(at position: Int) -> T.Vector {
        let index = position &* stride
        return constants.value(x: loadVector(x, index), dy: loadVector(dy, index))
    }
}

/// The lines of a unit's run of channels in x (and dy), asked into L2 a
/// position at a time (`UnitRequests` says when): the run's lines lie C
/// values apart, which the prefetchers do not follow (at C = 128, M = 49,
/// before these requests, the first loads of a unit held half the
/// forward's samples).
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

/// One worker's scratch for `SmallChannelsLast`: a partial block's
/// columns of one or two tensors and room for `LaneStatistics`' staging.
@usableFromInline
final class SmallChannelsLastScratch<T: InstanceNormScalar> {
    @usableFromInline let columnCount: Int
    @usableFromInline let columnSlots: UnsafeMutablePointer<T>
    @usableFromInline let staging: UnsafeMutablePointer<Double>

    /// For M = `spatialCount` columns of `tensors` tensors.
    @inlinable init(spatialCount: Int, tensors: Int) {
        let lanes = T.Vector.scalarCount
        columnCount = spatialCount * lanes
        columnSlots = allocateAligned(tensors * columnCount, of: T.self)
        staging = allocateAligned(3 * lanes, of: Double.self)
    }

    deinit {
        columnSlots.deallocate()
        staging.deallocate()
    }

    /// The columns of tensor `kind` (0: x, 1: dy).
    @inlinable func columns(_ kind: Int) -> UnsafeMutablePointer<T> { columnSlots + kind * columnCount }
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
        let split = split(threads: threads)
        split.run { worker in
            let scratch = SmallChannelsLastScratch<T>(spatialCount: spatialCount, tensors: 1)
            let units = split.instances(of: worker)
            for unit in units {
                let (sample, blocks) = self.blocks(of: unit)
                var requests = requests(after: unit, in: units, input.base, nil)
                writeBlocks(blocks, to: output.base, streaming: streaming, requests: &requests) { block, requests in
                    let (first, count) = instances(sample: sample, block: block), offset = offset(sample: sample, block: block)
                    let (x, stride) = columns(input.base, at: offset, count: count, scratch: scratch.columns(0))
                    let statistics = LaneStatistics<C>(
                        columns: x, stride: stride, count: spatialCount, divisor: divisor, eps: eps
                    ) { requests.advance() }
                    statistics.store(to: stored.base + first, count: count, staging: scratch.staging, streaming: streaming)
                    let constants = NormalizeLaneConstants(
                        gamma: gammaLanes.lanes(from: first), beta: betaLanes.lanes(from: first), statistics)
                    return (NormalizedColumns(constants, x: x, stride: stride), offset, count)
                }
            }
            // Each worker's streaming stores (y and the statistics) done before the join.
            if streaming { instnorm_store_fence() }
        }
        if streaming { instnorm_store_fence() }
    }

    /// The backward (see `BatchKernel.backward`): s1, s2 of every instance,
    /// dx, then dγ, dβ from the per-instance sums in sample order (the
    /// order of the channels-first kernels), unless not `combines`.
    /// `overlap.sumsReady` runs at the end: these kernels leave no tail to
    /// hide the reduction behind.
    @inlinable func backward(
        dx: UnsafeMutableBufferPointer<T>, dgamma: UnsafeMutableBufferPointer<Double>,
        dbeta: UnsafeMutableBufferPointer<Double>, dy: UnsafeBufferPointer<T>, x: UnsafeBufferPointer<T>,
        statistics: UnsafeBufferPointer<InstanceStatistics>, gamma: UnsafeBufferPointer<T>?, threads: Int,
        stores: StorePolicy, instanceSums: UnsafeMutableBufferPointer<Double>?, combines: Bool,
        overlap: BackwardOverlap?, deposits: ShareDeposits? = nil
    ) {
        let streaming = stores.streams(dx, tensors: 3)
        let gammaLanes = ChannelLanes(gamma, channels: channels, lanes: lanes, default: 1)
        let (output, gradients, input) = (SharedBuffer(dx), SharedBuffer(dy), SharedBuffer(x))
        let saved = SharedBuffer(statistics)
        precondition(deposits.map { $0.workers >= threads && $0.channels == channels } ?? true, "deposits for another shape")
        let sums = instanceSums ?? (deposits == nil ? .allocate(capacity: 2 * shape.instanceCount) : nil)
        defer { if instanceSums == nil { sums?.deallocate() } }
        dgamma.update(repeating: 0)
        dbeta.update(repeating: 0)
        let parameterSums = ParameterSums(
            dgamma: SharedBuffer(dgamma), dbeta: SharedBuffer(dbeta), stored: sums.map { SharedBuffer($0) }, channels: channels,
            inLine: false, streaming: streaming)
        let split = split(threads: threads)
        split.run { worker in
            let scratch = SmallChannelsLastScratch<T>(spatialCount: spatialCount, tensors: 2)
            let units = split.instances(of: worker)
            var shares = deposits.map { ShareStaging($0, worker: worker) }
            for unit in units {
                let (sample, blocks) = self.blocks(of: unit)
                var requests = requests(after: unit, in: units, input.base, gradients.base)
                writeBlocks(blocks, to: output.base, streaming: streaming, requests: &requests) { block, requests in
                    let (first, count) = instances(sample: sample, block: block), offset = offset(sample: sample, block: block)
                    let (x, stride) = columns(input.base, at: offset, count: count, scratch: scratch.columns(0))
                    let (dy, _) = columns(gradients.base, at: offset, count: count, scratch: scratch.columns(1))
                    let statistics = LaneStatistics<C>(saved.base + first, count: count, staging: scratch.staging)
                    let (sumDy, sumDyXHat) = gradientLaneSums(
                        statistics, dy: dy, x: x, stride: stride, count: spatialCount
                    ) { requests.advance() }
                    if shares != nil {
                        shares!.record(first..<first + count, sumDy: sumDy, sumDyXHat: sumDyXHat, staging: scratch.staging)
                    } else {
                        parameterSums.record(first..<first + count, sumDy: sumDy, sumDyXHat: sumDyXHat, staging: scratch.staging)
                    }
                    let constants = GradientLaneConstants(
                        gamma: gammaLanes.lanes(from: first), statistics, sumDy: sumDy, sumDyXHat: sumDyXHat, divisor: divisor)
                    return (InputGradientColumns(constants, x: x, dy: dy, stride: stride), offset, count)
                }
            }
            shares?.flush()
            // The streamed sums reach memory before another thread adds them up.
            if streaming { instnorm_store_fence() }
        }
        if streaming { instnorm_store_fence() }
        if combines { parameterSums.combineInSampleOrder(instanceCount: shape.instanceCount, threads: threads) }
        overlap?.sumsReady()
    }
}
