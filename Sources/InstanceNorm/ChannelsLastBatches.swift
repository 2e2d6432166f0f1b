import _InstanceNormShims

/// One channels-last call's buffers, shared by its workers. A sample is
/// S rows of C values; each worker takes whole samples, or, with fewer
/// samples than workers, chunks of rows (see `WorkSplit`, whose units here
/// are samples and whose positions are rows).
@usableFromInline
struct ChannelsLastBatch<T: InstanceNormScalar>: @unchecked Sendable {
    @usableFromInline let shape: InstanceNormShape
    @usableFromInline let channels, rows: Int
    @usableFromInline let streaming: Bool

    @inlinable init(shape: InstanceNormShape, streaming: Bool) {
        self.shape = shape
        channels = shape.channels
        rows = shape.spatialCount
        self.streaming = streaming
    }

    @inlinable var sampleLength: Int { rows * channels }

    /// How far ahead of its reads a reduction prefetches: far enough to
    /// cover the memory latency at full speed.
    @inlinable var chunkPrefetchDistance: Int { (16 << 10) / MemoryLayout<T>.stride }

    @inlinable func split(threads: Int) -> WorkSplit { WorkSplit(units: shape.batch, length: rows, threads: threads) }

    /// Per sample and channel, the sums of the terms `makeTerms(sample)`
    /// gives: on whole samples, or by chunks of rows shared by the workers
    /// and added in chunk order; calls `store(sample, channel, first, second)`.
    @inlinable func sums<Terms: LaneTerms>(
        _ split: WorkSplit,
        prepare: @Sendable (Int, ChannelsLastScratch<T>) -> Terms,
        store: @Sendable (Int, Int, Double, Double) -> Void
    ) where Terms.Scalar == T {
        let channels = channels, rows = rows, chunkPrefetchDistance = chunkPrefetchDistance
        if !split.splitsInstances {
            split.run { worker in
                let scratch = ChannelsLastScratch<T>(channels: channels)
                for sample in split.instances(of: worker) {
                    let plan = PrefetchPlan(positions: 0..<rows * channels, distance: chunkPrefetchDistance)
                    scratch.chunkedSums(prepare(sample, scratch), rows: rows, prefetch: plan)
                    for channel in 0..<channels {
                        store(sample, channel, scratch.totalFirst[channel], scratch.totalSecond[channel])
                    }
                }
            }
            return
        }
        let chunks = split.chunksPerInstance, distance = chunkPrefetchDistance
        let partials = UnsafeMutableBufferPointer<Double>.allocate(capacity: 2 * shape.batch * chunks * channels)
        defer { partials.deallocate() }
        let shared = SharedBuffer(partials)
        split.run { worker in
            let scratch = ChannelsLastScratch<T>(channels: channels)
            for chunk in split.chunks(of: worker) {
                let (sample, range) = split.elements(ofChunk: chunk)
                let terms = prepare(sample, scratch), positions = range.lowerBound * channels..<range.upperBound * channels
                scratch.prefetch(terms, positions.lowerBound..<min(positions.lowerBound + distance, positions.upperBound))
                channelsLastChunkSums(terms, rows: range, prefetch: PrefetchPlan(positions: positions, distance: distance),
                                      scratch: scratch, first: scratch.first, second: scratch.second)
                for channel in 0..<channels {
                    shared.base[2 * (chunk * channels + channel)] = scratch.first[channel]
                    shared.base[2 * (chunk * channels + channel) + 1] = scratch.second[channel]
                }
            }
        }
        for sample in 0..<shape.batch {
            for channel in 0..<channels {
                var total = (0.0, 0.0)
                for chunk in sample * chunks..<(sample + 1) * chunks {
                    total.0 += partials[2 * (chunk * channels + channel)]
                    total.1 += partials[2 * (chunk * channels + channel) + 1]
                }
                store(sample, channel, total.0, total.1)
            }
        }
    }

    /// Writes `out` over every sample with the operation `makeOperation`
    /// gives for the sample (after it has tiled its constants).
    @inlinable func write<Operation: TiledOperation>(
        _ split: WorkSplit, _ out: UnsafeMutableBufferPointer<T>,
        prepare: @Sendable (Int, ChannelsLastScratch<T>) -> Operation
    ) where Operation.Scalar == T {
        let shared = SharedBuffer(out), channels = channels, sampleLength = sampleLength
        let streaming = streaming
        split.run { worker in
            let scratch = ChannelsLastScratch<T>(channels: channels)
            split.forEachPiece(of: worker) { sample, rows in
                let operation = prepare(sample, scratch)
                writeTiled(
                    shared.base + sample * sampleLength, rows.lowerBound * channels..<rows.upperBound * channels,
                    streaming: streaming, operation)
            }
        }
    }
}

extension BatchKernel {
    /// The channels-last forward (see `forward`): per sample, the one-pass
    /// sums of every channel, a second pass for the channels whose first
    /// value was an outlier, then y.
    @inlinable
    static func forwardChannelsLast<T: InstanceNormScalar>(
        y: UnsafeMutableBufferPointer<T>, statistics: UnsafeMutableBufferPointer<InstanceStatistics>,
        x: UnsafeBufferPointer<T>, gamma: UnsafeBufferPointer<T>?, beta: UnsafeBufferPointer<T>?,
        shape: InstanceNormShape, eps: Double, threads: Int, stores: StorePolicy
    ) {
        let batch = ChannelsLastBatch<T>(shape: shape, streaming: stores.streams(y, tensors: 2))
        let split = batch.split(threads: threads)
        let input = SharedBuffer(x), saved = SharedBuffer(statistics)
        let channels = shape.channels, sampleLength = batch.sampleLength, rows = shape.spatialCount
        // Pass 1 about each instance's first value; NaN marks "needs a second pass".
        let centers = TensorBuffer<T>(repeating: 0, count: shape.instanceCount)
        let centerBuffer = SharedBuffer(centers.elements)
        batch.sums(split, prepare: { sample, scratch in
            let values = input.base + sample * sampleLength
            scratch.tile(0) { values[$0] }
            return ShiftedTerms(x: values, shift: scratch.tiledBase(0))
        }, store: { sample, channel, sum, sumSquares in
            let instance = sample * channels + channel
            let shift = input.base[sample * sampleLength + channel]
            if let moments = InstanceKernel.momentsFromShiftedSums(sum, sumSquares, count: rows, shift: shift) {
                saved.base[instance] = InstanceStatistics(mean: moments.mean, variance: moments.variance, eps: eps)
                centerBuffer.base[instance] = .nan
            } else {
                centerBuffer.base[instance] = InstanceKernel.secondPassCenter(sum, count: rows, shift: shift)
            }
        })
        if centers.elements.contains(where: { !$0.isNaN }) {
            batch.sums(split, prepare: { sample, scratch in
                let values = input.base + sample * sampleLength
                scratch.tile(0) { channel in
                    let center = centerBuffer.base[sample * channels + channel]
                    return center.isNaN ? values[channel] : center
                }
                return ShiftedTerms(x: values, shift: scratch.tiledBase(0))
            }, store: { sample, channel, deviation, squaredDeviation in
                let instance = sample * channels + channel
                let center = centerBuffer.base[instance]
                guard !center.isNaN else { return }
                let moments = InstanceKernel.momentsFromCenteredSums(
                    deviation, squaredDeviation, count: rows, center: center)
                saved.base[instance] = InstanceStatistics(mean: moments.mean, variance: moments.variance, eps: eps)
            })
        }
        writeNormalized(batch, split, y: y, x: x, gamma: gamma, beta: beta) { saved.base[$0] }
    }

    /// y from per-instance statistics, channels last.
    @inlinable
    static func writeNormalized<T: InstanceNormScalar>(
        _ batch: ChannelsLastBatch<T>, _ split: WorkSplit,
        y: UnsafeMutableBufferPointer<T>, x: UnsafeBufferPointer<T>,
        gamma: UnsafeBufferPointer<T>?, beta: UnsafeBufferPointer<T>?,
        statistics: @escaping @Sendable (Int) -> InstanceStatistics
    ) {
        let input = SharedBuffer(x), affine = (gamma.map { SharedBuffer($0) }, beta.map { SharedBuffer($0) })
        let channels = batch.channels, sampleLength = batch.sampleLength
        batch.write(split, y) { sample, scratch in
            for channel in 0..<channels {
                let instanceStatistics = statistics(sample * channels + channel)
                let (meanHigh, meanLow) = instanceStatistics.splitMean(as: T.self)
                let scaleWide = (affine.0.map { $0.base[channel].widened } ?? 1) * instanceStatistics.invstd
                let offset = (affine.1.map { $0.base[channel].widened } ?? 0) - meanLow * scaleWide
                scratch.set(0, channel: channel, meanHigh)
                scratch.set(1, channel: channel, T(scaleWide))
                scratch.set(2, channel: channel, T(offset))
            }
            for slot in 0..<3 { scratch.replicate(slot) }
            return TiledNormalizeOperation(x: input.base + sample * sampleLength, scratch: scratch)
        }
        if batch.streaming { instnorm_store_fence() }
    }

    /// The channels-last backward (see `backward`): per sample, Σ dy and
    /// Σ dy·(x − μ_hi) of every channel, then dx. dγ, dβ and `instanceSums`
    /// as the channels-first backward; `overlap.sumsReady` runs between the
    /// two passes (there is no tail: the dx pass is the overlap window).
    @inlinable
    static func backwardChannelsLast<T: InstanceNormScalar>(
        dx: UnsafeMutableBufferPointer<T>,
        dgamma: UnsafeMutableBufferPointer<Double>, dbeta: UnsafeMutableBufferPointer<Double>,
        dy: UnsafeBufferPointer<T>, x: UnsafeBufferPointer<T>,
        statistics: UnsafeBufferPointer<InstanceStatistics>, gamma: UnsafeBufferPointer<T>?,
        shape: InstanceNormShape, threads: Int, stores: StorePolicy,
        instanceSums: UnsafeMutableBufferPointer<Double>?, overlap: BackwardOverlap?
    ) {
        let batch = ChannelsLastBatch<T>(shape: shape, streaming: stores.streams(dx, tensors: 3))
        let split = batch.split(threads: threads)
        let gradients = SharedBuffer(dy), input = SharedBuffer(x), saved = SharedBuffer(statistics)
        let channels = shape.channels, sampleLength = batch.sampleLength
        let sums = TensorBuffer<Double>(repeating: 0, count: 2 * shape.instanceCount)
        let sumBuffer = SharedBuffer(sums.elements)
        batch.sums(split, prepare: { sample, scratch in
            scratch.tile(0) { saved.base[sample * channels + $0].splitMean(as: T.self).high }
            return GradientTerms(
                dy: gradients.base + sample * sampleLength, x: input.base + sample * sampleLength,
                center: scratch.tiledBase(0))
        }, store: { sample, channel, sumDy, sumDyCentered in
            let instance = sample * channels + channel
            let (s1, s2) = InstanceKernel.gradientSums(
                sumDy: sumDy, sumDyCentered: sumDyCentered, statistics: saved.base[instance], as: T.self)
            sumBuffer.base[2 * instance] = s1
            sumBuffer.base[2 * instance + 1] = s2
        })
        dgamma.update(repeating: 0)
        dbeta.update(repeating: 0)
        for instance in 0..<shape.instanceCount {
            dbeta[instance % channels] += sums.elements[2 * instance]
            dgamma[instance % channels] += sums.elements[2 * instance + 1]
        }
        if let instanceSums { _ = instanceSums.update(fromContentsOf: sums.elements) }
        overlap?.sumsReady()
        let gammaBuffer = gamma.map { SharedBuffer($0) }
        let progress = overlap.map { hooks in { @Sendable in hooks.progress() } }
        batch.write(split, dx) { sample, scratch in
            if sample % 4 == 0 { progress?() }
            for channel in 0..<channels {
                let instance = sample * channels + channel
                let operation = InstanceKernel.inputGradientOperation(
                    dy: gradients.base, x: input.base, statistics: saved.base[instance],
                    gamma: gammaBuffer.map { $0.base[channel].widened } ?? 1,
                    sumDy: sumBuffer.base[2 * instance], sumDyXHat: sumBuffer.base[2 * instance + 1],
                    spatialCount: shape.spatialCount)
                scratch.set(0, channel: channel, operation.meanHigh)
                scratch.set(1, channel: channel, operation.meanDy)
                scratch.set(2, channel: channel, operation.gradientScale)
                scratch.set(3, channel: channel, operation.centeredScale)
                scratch.set(4, channel: channel, operation.offset)
            }
            for slot in 0..<5 { scratch.replicate(slot) }
            return TiledInputGradientOperation(
                dy: gradients.base + sample * sampleLength, x: input.base + sample * sampleLength, scratch: scratch)
        }
        if batch.streaming { instnorm_store_fence() }
    }
}
