import _InstanceNormShims

/// InstanceNorm channels last (N, S…, C) over small instances (M ≤
/// `SmallInstances.limit`): a sample's B = `T.Vector.scalarCount`
/// consecutive channels are already B lanes, position after position, so
/// a block is (sample, B channels) read as M strided vectors, with no
/// transposition. Each lane runs the same lane-wise code as the
/// channels-first blocks (`LaneStatistics`, `laneSums`,
/// `NormalizeLaneConstants`, `GradientLaneConstants`), so both layouts give
/// the same bits, a function of each instance alone.
///
/// The columns are copied (widened) into the worker's scratch: a block of
/// fewer than B channels (C not a multiple of B) fills its missing lanes
/// with zeros, which are computed and never stored.
@usableFromInline
struct SmallChannelsLast<T: InstanceNormScalar>: @unchecked Sendable {
    @usableFromInline typealias C = T.Compute
    @usableFromInline let shape: InstanceNormShape
    @usableFromInline let channels, spatialCount, lanes, channelBlocks: Int
    @usableFromInline let divisor: LaneDivisor

    @inlinable init(shape: InstanceNormShape) {
        self.shape = shape
        channels = shape.channels
        spatialCount = shape.spatialCount
        lanes = T.Vector.scalarCount
        channelBlocks = (shape.channels + lanes - 1) / lanes
        divisor = LaneDivisor(shape.spatialCount)
    }

    /// Blocks are numbered sample·channelBlocks + j; the workers take balanced runs.
    @inlinable func split(threads: Int) -> WorkSplit {
        WorkSplit(units: shape.batch * channelBlocks, length: 1, threads: threads)
    }

    /// The first instance of block `block` (instances are numbered n·C + c)
    /// and how many channels it holds.
    @inlinable func instances(of block: Int) -> (first: Int, count: Int) {
        let sample = block / channelBlocks, firstChannel = (block % channelBlocks) * lanes
        return (sample * channels + firstChannel, min(lanes, channels - firstChannel))
    }

    /// Where the block's position 0 lies in a tensor: (n, 0, c0).
    @inlinable func offset(of block: Int) -> Int {
        let sample = block / channelBlocks, firstChannel = (block % channelBlocks) * lanes
        return sample * spatialCount * channels + firstChannel
    }

    /// Copies the block's M positions from `source` (at the block's place)
    /// into `columns`, widened, lanes past `count` zero.
    @inlinable @inline(__always)
    func gather(_ source: UnsafePointer<T>, count: Int, into columns: UnsafeMutablePointer<C>) {
        for position in 0..<spatialCount {
            let column = columns + position &* lanes, row = source + position &* channels
            if count == lanes {
                storeVector(loadVector(row, 0), column, 0)
            } else {
                for lane in 0..<lanes { column[lane] = lane < count ? row[lane].computed : 0 }
            }
        }
    }

    /// out[position, lane] = value(position) for the block's M positions,
    /// rounded to T: whole vectors when the block holds B channels, its
    /// `count` lanes one by one otherwise (the same bits: IEEE arithmetic
    /// rounds a lane as it rounds a scalar). With `streaming`, the whole
    /// vectors that sit on their alignment go out with non-temporal stores.
    @inlinable @inline(__always)
    func scatter(_ out: UnsafeMutablePointer<T>, count: Int, streaming: Bool, _ value: (Int) -> C.Lanes) {
        let alignment = min(64, lanes &* MemoryLayout<T>.stride)
        for position in 0..<spatialCount {
            let row = out + position &* channels, vector = value(position)
            if count == lanes {
                if streaming && Int(bitPattern: row) % alignment == 0 {
                    T.streamStore(vector, to: row)
                } else {
                    storeVector(vector, row, 0)
                }
            } else {
                for lane in 0..<count { row[lane] = T(rounding: vector[lane]) }
            }
        }
    }
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
            let scratch = BlockScratch<T>(spatialCount: spatialCount)
            let columns = scratch.columns(0)
            for block in split.instances(of: worker) {
                let (first, count) = instances(of: block), offset = offset(of: block)
                gather(input.base + offset, count: count, into: columns)
                let statistics = LaneStatistics<C>(
                    columns: UnsafePointer(columns), count: spatialCount, divisor: divisor, eps: eps)
                statistics.store(to: stored.base + first, count: count, staging: scratch.staging)
                let constants = NormalizeLaneConstants(
                    gamma: gammaLanes.lanes(from: first), beta: betaLanes.lanes(from: first), statistics)
                scatter(output.base + offset, count: count, streaming: streaming) {
                    constants.value(x: scratch.column(columns, $0))
                }
            }
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
            inLine: false)
        let split = split(threads: threads)
        split.run { worker in
            let scratch = BlockScratch<T>(spatialCount: spatialCount)
            let values = scratch.columns(0, 0), deltas = scratch.columns(0, 1)
            for block in split.instances(of: worker) {
                let (first, count) = instances(of: block), offset = offset(of: block)
                gather(input.base + offset, count: count, into: values)
                gather(gradients.base + offset, count: count, into: deltas)
                let statistics = LaneStatistics<C>(saved.base + first, count: count, staging: scratch.staging)
                let (sumDy, sumDyXHat) = gradientLaneSums(
                    statistics, dy: UnsafePointer(deltas), x: UnsafePointer(values), count: spatialCount)
                parameterSums.record(first..<first + count, sumDy: sumDy, sumDyXHat: sumDyXHat, staging: scratch.staging)
                let constants = GradientLaneConstants(
                    gamma: gammaLanes.lanes(from: first), statistics, sumDy: sumDy, sumDyXHat: sumDyXHat,
                    divisor: divisor)
                scatter(output.base + offset, count: count, streaming: streaming) {
                    constants.value(x: scratch.column(values, $0), dy: scratch.column(deltas, $0))
                }
            }
        }
        if streaming { instnorm_store_fence() }
        parameterSums.combineInSampleOrder(instanceCount: shape.instanceCount, threads: threads)
        overlap?.sumsReady()
    }
}
