import _InstanceNormShims

/// One channels-last call's buffers, shared by its workers. A sample is
/// S rows of C values; each worker takes whole samples, or, with fewer
/// samples than workers, chunks of rows (see `WorkSplit`, whose units here
/// are samples and whose positions are rows).
///
/// With whole samples a worker writes each sample's output right after its
/// sums, while the sample is still in cache, as the channels-first kernels
/// do per instance: the input then comes from memory once, not twice.
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

    @inlinable func split(threads: Int) -> WorkSplit { WorkSplit(units: shape.batch, length: rows, threads: threads) }

    /// Per channel of one sample, the sums of the terms `prepare(sample)`
    /// gives; calls `store(sample, channel, first, second)`.
    @inlinable func sampleSums<Terms: LaneTerms>(
        _ sample: Int, _ scratch: ChannelsLastScratch<T>, prefetch plan: PrefetchPlan,
        prepare: (Int, ChannelsLastScratch<T>) -> Terms, store: (Int, Int, Double, Double) -> Void
    ) where Terms.Scalar == T {
        scratch.chunkedSums(prepare(sample, scratch), rows: rows, prefetch: plan)
        for channel in 0..<channels {
            store(sample, channel, scratch.totalFirst[channel], scratch.totalSecond[channel])
        }
    }

    /// Whether the workers share each sample, chunk by chunk, rather than
    /// take whole samples: when there are fewer samples than workers.
    /// (Sharing the samples of a large batch as well, so that the workers
    /// hold one sample at a time, not one each, measured slower, also for
    /// samples of 8 and 16 MiB.)
    @inlinable func sharesSamples(_ split: WorkSplit) -> Bool { split.splitsInstances }

    /// `sampleSums` of one sample with the workers sharing its chunks of
    /// rows (`SharedSample.rows`): the chunks' sums added in chunk order, as
    /// `chunkedSums` adds them on one worker.
    @inlinable func sharedSums<Terms: LaneTerms>(
        _ sample: Int, _ shared: SharedSample<T>,
        prepare: @Sendable (Int, ChannelsLastScratch<T>) -> Terms, store: (Int, Int, Double, Double) -> Void
    ) where Terms.Scalar == T {
        let batch = self, channels = channels, distance = chunkPrefetchDistance
        shared.split.run { worker in
            let scratch = shared.scratches[worker], rows = shared.rows(of: worker)
            guard !rows.isEmpty else { return }
            let terms = prepare(sample, scratch), positions = rows.lowerBound * channels..<rows.upperBound * channels
            scratch.prefetch(terms, positions.lowerBound..<min(positions.lowerBound + distance, positions.upperBound))
            for start in stride(from: rows.lowerBound, to: rows.upperBound, by: reductionChunk) {
                channelsLastChunkSums(terms, rows: start..<min(start + reductionChunk, batch.rows),
                                      prefetch: PrefetchPlan(positions: positions, distance: distance),
                                      scratch: scratch, first: scratch.first, second: scratch.second)
                let partial = shared.partials.base + 2 * (start / reductionChunk) * channels
                for channel in 0..<channels {
                    partial[channel] = scratch.first[channel]
                    partial[channels + channel] = scratch.second[channel]
                }
            }
        }
        for channel in 0..<channels {
            var total = (0.0, 0.0)
            for chunk in 0..<shared.chunks {
                total.0 += shared.partials.base[2 * chunk * channels + channel]
                total.1 += shared.partials.base[(2 * chunk + 1) * channels + channel]
            }
            store(sample, channel, total.0, total.1)
        }
    }

    /// Writes one sample of `out` with the workers sharing its rows.
    @inlinable func sharedWrite<Operation: TiledOperation>(
        _ sample: Int, _ shared: SharedSample<T>, _ out: SharedBuffer<T>,
        prepare: @Sendable (Int, ChannelsLastScratch<T>) -> Operation
    ) where Operation.Scalar == T {
        shared.split.run { worker in
            let rows = shared.rows(of: worker)
            guard !rows.isEmpty else { return }
            writeSample(sample, rows: rows, out, shared.scratches[worker], prepare: prepare)
        }
    }

    /// Writes `rows` of one sample of `out` with the operation that
    /// `prepare(sample)` gives (after it has tiled its constants).
    @inlinable func writeSample<Operation: TiledOperation>(
        _ sample: Int, rows: Range<Int>, _ out: SharedBuffer<T>, _ scratch: ChannelsLastScratch<T>,
        prepare: (Int, ChannelsLastScratch<T>) -> Operation
    ) where Operation.Scalar == T {
        writeTiled(
            out.base + sample * sampleLength, rows.lowerBound * channels..<rows.upperBound * channels,
            streaming: streaming, prepare(sample, scratch))
    }

    /// Writes `out` over every sample, each worker its samples or chunks.
    @inlinable func write<Operation: TiledOperation>(
        _ split: WorkSplit, _ out: UnsafeMutableBufferPointer<T>,
        prepare: @Sendable (Int, ChannelsLastScratch<T>) -> Operation
    ) where Operation.Scalar == T {
        let shared = SharedBuffer(out), channels = channels
        split.run { worker in
            let scratch = ChannelsLastScratch<T>(channels: channels)
            split.forEachPiece(of: worker) { sample, rows in
                writeSample(sample, rows: rows, shared, scratch, prepare: prepare)
            }
        }
    }

    /// Writes `out` over the (sample, rows) `pieces`, in slices of
    /// `progress.progressInterval` values, calling `progress.progress()`
    /// after each (see `BackwardOverlap`).
    @inlinable func write<Operation: TiledOperation>(
        _ pieces: [(sample: Int, rows: Range<Int>)], _ out: SharedBuffer<T>, progress: BackwardOverlap?,
        prepare: (Int, ChannelsLastScratch<T>) -> Operation
    ) where Operation.Scalar == T {
        let scratch = ChannelsLastScratch<T>(channels: channels)
        let interval = max(1, (progress?.progressInterval ?? sampleLength) / channels)
        var sinceProgress = 0
        for (sample, rows) in pieces {
            for start in stride(from: rows.lowerBound, to: rows.upperBound, by: interval) {
                let end = min(start + interval, rows.upperBound)
                writeSample(sample, rows: start..<end, out, scratch, prepare: prepare)
                sinceProgress += (end - start) * channels
                if let progress, sinceProgress >= progress.progressInterval {
                    progress.progress()
                    sinceProgress = 0
                }
            }
        }
    }

    /// How far ahead the sums of a chunk shared by the workers prefetch:
    /// far enough to cover the memory latency at full speed.
    @inlinable var chunkPrefetchDistance: Int { (16 << 10) / MemoryLayout<T>.stride }

    /// What the sums of `sample`, one of a worker's whole `samples`, should
    /// prefetch (see `PrefetchPlan`): one stream that runs ahead through the
    /// worker's samples, a sample ahead (so that the sums of the next sample
    /// read from the cache, and memory reads it while this sample's output
    /// is written) or, for samples of more than `channelsLastStreamBytes`
    /// over the `arrays` inputs, that much ahead (so that the stream does
    /// not evict what the output pass is about to read).
    @inlinable func prefetchPlan(_ sample: Int, of samples: Range<Int>, arrays: Int) -> PrefetchPlan {
        let distance = min(sampleLength, channelsLastStreamBytes / (arrays * MemoryLayout<T>.stride))
        let first = sample == samples.lowerBound ? 0 : distance
        return PrefetchPlan(positions: first..<(samples.upperBound - sample) * sampleLength, distance: distance)
    }

    /// The last samples of a worker's run whose output waits for the
    /// backward's `sumsReady`: enough to hold `elements` values (at least
    /// one sample when elements > 0), as `BackwardBatch.tail`.
    @inlinable func tail(of samples: Range<Int>, elements: Int) -> Range<Int> {
        guard elements > 0, sampleLength > 0 else { return samples.upperBound..<samples.upperBound }
        let count = min(samples.count, (elements + sampleLength - 1) / sampleLength)
        return samples.upperBound - count..<samples.upperBound
    }
}

/// The per-worker state of samples shared by the workers (see
/// `ChannelsLastBatch.sharesSamples`). The samples are taken one at a time,
/// each written right after its sums; each worker sums and writes a run of
/// whole chunks of the sample's rows, and leaves its chunks' sums (C first
/// sums, then C second sums, per chunk) in `partials`.
@usableFromInline
struct SharedSample<T: InstanceNormScalar>: @unchecked Sendable {
    @usableFromInline let split: WorkSplit
    @usableFromInline let rowCount, chunks: Int
    @usableFromInline let scratches: [ChannelsLastScratch<T>]
    @usableFromInline let partials: SharedBuffer<Double>

    @inlinable init(_ batch: ChannelsLastBatch<T>, _ split: WorkSplit) {
        self.split = split
        rowCount = batch.rows
        chunks = chunkCount(spatialCount: batch.rows)
        scratches = (0..<split.workers).map { _ in ChannelsLastScratch<T>(channels: batch.channels) }
        partials = SharedBuffer(.allocate(capacity: 2 * chunks * batch.channels))
    }

    /// Frees `partials`; call once the call is done with the samples.
    @inlinable func deallocate() { partials.base.deallocate() }

    /// The rows of one worker: a balanced run of whole chunks.
    @inlinable func rows(of worker: Int) -> Range<Int> {
        let mine = balancedRange(chunks, worker, split.workers)
        return min(mine.lowerBound * reductionChunk, rowCount)..<min(mine.upperBound * reductionChunk, rowCount)
    }
}

/// How far ahead of its sums a worker's prefetch stream may run, over all
/// inputs: with the sample being reduced and written, within the 1 MiB L2.
@usableFromInline let channelsLastStreamBytes = 512 << 10

extension BatchKernel {
    /// Working memory a channels-last call allocates besides its tensors,
    /// per worker thread: lane accumulators and tiled per-channel constants
    /// (see `ChannelsLastScratch`), for a caller that checks memory first.
    /// Grows with C alone, up to about 320·C values of the compute type.
    public static func channelsLastScratchBytes<T: InstanceNormScalar>(channels: Int, as _: T.Type) -> Int {
        ChannelsLastScratch<T>.bytes(channels: channels)
    }

    /// The channels-last forward (see `forward`): per sample, the one-pass
    /// sums of every channel, a second pass when a channel's first value
    /// was an outlier, then y.
    @inlinable
    static func forwardChannelsLast<T: InstanceNormScalar>(
        y: UnsafeMutableBufferPointer<T>, statistics: UnsafeMutableBufferPointer<InstanceStatistics>,
        x: UnsafeBufferPointer<T>, gamma: UnsafeBufferPointer<T>?, beta: UnsafeBufferPointer<T>?,
        shape: InstanceNormShape, eps: Double, threads: Int, stores: StorePolicy
    ) {
        // Three, not two: y is written right after a whole sample's sums,
        // re-reading that sample from cache, so cached stores of y evict the
        // very inputs being re-read once y and x together fill the cache
        // (at (256,16,32,32) float32, streaming took the forward from 2.1x
        // to 1.4x the channels-first time, side by side).
        let batch = ChannelsLastBatch<T>(shape: shape, streaming: stores.streams(y, tensors: 3))
        let split = batch.split(threads: threads)
        let passes = StatisticsPasses(batch, x: x, statistics: statistics, eps: eps)
        let normalize = normalizeOperations(batch, x: x, gamma: gamma, beta: beta) { passes.saved.base[$0] }
        let (firstTerms, storeFirst) = (passes.firstTerms, passes.storeFirst)
        let (secondTerms, storeSecond) = (passes.secondTerms, passes.storeSecond)
        let output = SharedBuffer(y)
        if batch.sharesSamples(split) {
            let shared = SharedSample(batch, split)
            defer { shared.deallocate() }
            for sample in 0..<shape.batch {
                batch.sharedSums(sample, shared, prepare: firstTerms, store: storeFirst)
                if passes.needsSecondPass(sample) {
                    batch.sharedSums(sample, shared, prepare: secondTerms, store: storeSecond)
                }
                batch.sharedWrite(sample, shared, output, prepare: normalize)
            }
        } else {
            split.run { worker in
                let scratch = ChannelsLastScratch<T>(channels: shape.channels)
                for sample in split.instances(of: worker) {
                    let plan = batch.prefetchPlan(sample, of: split.instances(of: worker), arrays: 1)
                    batch.sampleSums(sample, scratch, prefetch: plan, prepare: firstTerms, store: storeFirst)
                    if passes.needsSecondPass(sample) {
                        batch.sampleSums(sample, scratch, prefetch: .none, prepare: secondTerms, store: storeSecond)
                    }
                    batch.writeSample(sample, rows: 0..<shape.spatialCount, output, scratch, prepare: normalize)
                }
            }
        }
        if batch.streaming { instnorm_store_fence() }
    }

    /// Per sample, y = (x − μ_hi)·a + b with each channel's μ_hi, a, b (see
    /// `InstanceKernel.normalize`) tiled into the scratch.
    @inlinable
    static func normalizeOperations<T: InstanceNormScalar>(
        _ batch: ChannelsLastBatch<T>, x: UnsafeBufferPointer<T>,
        gamma: UnsafeBufferPointer<T>?, beta: UnsafeBufferPointer<T>?,
        statistics: @escaping @Sendable (Int) -> InstanceStatistics
    ) -> @Sendable (Int, ChannelsLastScratch<T>) -> TiledNormalizeOperation<T> {
        let input = SharedBuffer(x), affine = (gamma.map { SharedBuffer($0) }, beta.map { SharedBuffer($0) })
        let channels = batch.channels, sampleLength = batch.sampleLength
        return { sample, scratch in
            for channel in 0..<channels {
                let constants = InstanceKernel.normalizeConstants(
                    statistics(sample * channels + channel), gamma: affine.0.map { $0.base[channel].widened } ?? 1,
                    beta: affine.1.map { $0.base[channel].widened } ?? 0, as: T.self)
                scratch.setNormalize(constants, channel: channel)
            }
            for slot in 0..<3 { scratch.replicate(slot) }
            return TiledNormalizeOperation(x: input.base + sample * sampleLength, scratch: scratch)
        }
    }
}

/// The forward's statistics passes over a channels-last batch: the one-pass
/// sums about each instance's first value, and, for the instances where
/// that loses too much (`InstanceKernel.momentsFromShiftedSums`), a second
/// pass about the rounded mean. Both passes run over whole samples (every
/// channel), as the channels-first kernel's passes run over whole instances.
@usableFromInline
struct StatisticsPasses<T: InstanceNormScalar>: @unchecked Sendable {
    @usableFromInline let input: SharedBuffer<T>
    @usableFromInline let saved: SharedBuffer<InstanceStatistics>
    /// (N, C): the second pass's center, NaN where none is needed.
    @usableFromInline let centers: TensorBuffer<T.Compute>
    @usableFromInline let channels, rows, sampleLength: Int
    @usableFromInline let eps: Double

    @inlinable init(
        _ batch: ChannelsLastBatch<T>, x: UnsafeBufferPointer<T>,
        statistics: UnsafeMutableBufferPointer<InstanceStatistics>, eps: Double
    ) {
        input = SharedBuffer(x)
        saved = SharedBuffer(statistics)
        centers = TensorBuffer<T.Compute>(repeating: .nan, count: batch.shape.instanceCount)
        channels = batch.channels
        rows = batch.rows
        sampleLength = batch.sampleLength
        self.eps = eps
    }

    @inlinable var firstTerms: @Sendable (Int, ChannelsLastScratch<T>) -> ShiftedTerms<T> {
        { [self] sample, scratch in
            let values = input.base + sample * sampleLength
            scratch.tile(0) { values[$0].computed }
            return ShiftedTerms(x: values, shift: scratch.tiledBase(0))
        }
    }

    @inlinable var storeFirst: @Sendable (Int, Int, Double, Double) -> Void {
        { [self] sample, channel, sum, sumSquares in
            let instance = sample * channels + channel
            let shift = input.base[sample * sampleLength + channel]
            if let moments = InstanceKernel.momentsFromShiftedSums(sum, sumSquares, count: rows, shift: shift) {
                saved.base[instance] = InstanceStatistics(mean: moments.mean, variance: moments.variance, eps: eps)
            } else {
                centers.elements[instance] = InstanceKernel.secondPassCenter(sum, count: rows, shift: shift)
            }
        }
    }

    @inlinable func needsSecondPass(_ sample: Int) -> Bool {
        centers.elements[sample * channels..<(sample + 1) * channels].contains { !$0.isNaN }
    }

    /// About the center where there is one, else about the first value again
    /// (those channels' results are not used).
    @inlinable var secondTerms: @Sendable (Int, ChannelsLastScratch<T>) -> ShiftedTerms<T> {
        { [self] sample, scratch in
            let values = input.base + sample * sampleLength
            scratch.tile(0) { channel in
                let center = centers.elements[sample * channels + channel]
                return center.isNaN ? values[channel].computed : center
            }
            return ShiftedTerms(x: values, shift: scratch.tiledBase(0))
        }
    }

    @inlinable var storeSecond: @Sendable (Int, Int, Double, Double) -> Void {
        { [self] sample, channel, deviation, squaredDeviation in
            let instance = sample * channels + channel
            let center = centers.elements[instance]
            guard !center.isNaN else { return }
            let moments = InstanceKernel.momentsFromCenteredSums(deviation, squaredDeviation, count: rows, center: center)
            saved.base[instance] = InstanceStatistics(mean: moments.mean, variance: moments.variance, eps: eps)
        }
    }
}

extension BatchKernel {
    /// The channels-last backward (see `backward`): per sample, Σ dy and
    /// Σ dy·(x − μ_hi) of every channel, then dx. dγ, dβ and `instanceSums`
    /// as the channels-first backward; `overlap.sumsReady` runs after every
    /// sample's sums, before the dx of each worker's tail samples.
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
        let passes = GradientPasses(batch, dy: dy, x: x, statistics: statistics, gamma: gamma)
        let output = SharedBuffer(dx)
        let waiting = batch.sharesSamples(split)
            ? sharedSampleGradients(batch, split, passes, output, tail: overlap?.tailElements ?? 0)
            : wholeSampleGradients(batch, split, passes, output, tail: overlap?.tailElements ?? 0)
        passes.combineParameterGradients(dgamma: dgamma, dbeta: dbeta, instanceSums: instanceSums, threads: threads)
        overlap?.sumsReady()
        let operation = passes.operation
        split.run { worker in
            batch.write(waiting[worker], output, progress: worker == 0 ? overlap : nil, prepare: operation)
        }
        if batch.streaming { instnorm_store_fence() }
    }
}

extension BatchKernel {
    /// The backward's sums of every sample, and the dx of all but each
    /// worker's last samples (enough for `tail` values); returns, per worker,
    /// the (sample, rows) whose dx waits for `sumsReady`.
    @inlinable
    static func wholeSampleGradients<T: InstanceNormScalar>(
        _ batch: ChannelsLastBatch<T>, _ split: WorkSplit, _ passes: GradientPasses<T>, _ output: SharedBuffer<T>,
        tail: Int
    ) -> [[(sample: Int, rows: Range<Int>)]] {
        let (terms, store, operation) = (passes.terms, passes.store, passes.operation)
        let tails = (0..<split.workers).map { batch.tail(of: split.instances(of: $0), elements: tail) }
        split.run { worker in
            let scratch = ChannelsLastScratch<T>(channels: batch.channels)
            for sample in split.instances(of: worker) {
                let plan = batch.prefetchPlan(sample, of: split.instances(of: worker), arrays: 2)
                batch.sampleSums(sample, scratch, prefetch: plan, prepare: terms, store: store)
                if !tails[worker].contains(sample) {
                    batch.writeSample(sample, rows: 0..<batch.rows, output, scratch, prepare: operation)
                }
            }
        }
        return tails.map { $0.map { ($0, 0..<batch.rows) } }
    }

    /// As `wholeSampleGradients`, with the workers sharing each sample; the
    /// dx of the batch's last samples (enough for `tail` values) waits.
    @inlinable
    static func sharedSampleGradients<T: InstanceNormScalar>(
        _ batch: ChannelsLastBatch<T>, _ split: WorkSplit, _ passes: GradientPasses<T>, _ output: SharedBuffer<T>,
        tail: Int
    ) -> [[(sample: Int, rows: Range<Int>)]] {
        let (terms, store, operation) = (passes.terms, passes.store, passes.operation)
        let shared = SharedSample(batch, split)
        defer { shared.deallocate() }
        let waiting = batch.tail(of: 0..<batch.shape.batch, elements: tail)
        for sample in 0..<batch.shape.batch {
            batch.sharedSums(sample, shared, prepare: terms, store: store)
            if !waiting.contains(sample) { batch.sharedWrite(sample, shared, output, prepare: operation) }
        }
        return (0..<split.workers).map { worker in waiting.map { ($0, shared.rows(of: worker)) } }
    }
}

/// The backward's two passes over a channels-last batch: Σ dy and
/// Σ dy·(x − μ_hi) per instance, then dx from them.
@usableFromInline
struct GradientPasses<T: InstanceNormScalar>: @unchecked Sendable {
    @usableFromInline let gradients, input: SharedBuffer<T>
    @usableFromInline let saved: SharedBuffer<InstanceStatistics>
    @usableFromInline let gamma: SharedBuffer<T>?
    /// (N, C, 2): s1 = Σ dy and s2 = Σ dy·x̂ of every instance.
    @usableFromInline let sums: TensorBuffer<Double>
    @usableFromInline let channels, rows, sampleLength: Int
    /// The values the sums run over: an instance's M, or for BatchNorm the
    /// channel's N·M (see `BatchNormKernel.inputGradient`).
    @usableFromInline let count: Int

    @inlinable init(
        _ batch: ChannelsLastBatch<T>, dy: UnsafeBufferPointer<T>, x: UnsafeBufferPointer<T>,
        statistics: UnsafeBufferPointer<InstanceStatistics>, gamma: UnsafeBufferPointer<T>?, count: Int? = nil
    ) {
        gradients = SharedBuffer(dy)
        input = SharedBuffer(x)
        saved = SharedBuffer(statistics)
        self.gamma = gamma.map { SharedBuffer($0) }
        sums = TensorBuffer<Double>(repeating: 0, count: 2 * batch.shape.instanceCount)
        channels = batch.channels
        rows = batch.rows
        sampleLength = batch.sampleLength
        self.count = count ?? batch.rows
    }

    @inlinable var terms: @Sendable (Int, ChannelsLastScratch<T>) -> GradientTerms<T> {
        { [self] sample, scratch in
            scratch.tile(0) { saved.base[sample * channels + $0].splitMean(as: T.self).high }
            return GradientTerms(
                dy: gradients.base + sample * sampleLength, x: input.base + sample * sampleLength,
                center: scratch.tiledBase(0))
        }
    }

    @inlinable var store: @Sendable (Int, Int, Double, Double) -> Void {
        { [self] sample, channel, sumDy, sumDyCentered in
            let instance = sample * channels + channel
            let (s1, s2) = InstanceKernel.gradientSums(
                sumDy: sumDy, sumDyCentered: sumDyCentered, statistics: saved.base[instance], as: T.self)
            sums.elements[2 * instance] = s1
            sums.elements[2 * instance + 1] = s2
        }
    }

    /// dx = k·(dy − m̄) + p·(x − μ_hi) + q with each channel's constants
    /// (see `InstanceKernel.inputGradient`) tiled into the scratch.
    @inlinable var operation: @Sendable (Int, ChannelsLastScratch<T>) -> TiledInputGradientOperation<T> {
        { [self] sample, scratch in
            for channel in 0..<channels {
                let instance = sample * channels + channel
                let operation = InstanceKernel.inputGradientOperation(
                    dy: gradients.base, x: input.base, statistics: saved.base[instance],
                    gamma: gamma.map { $0.base[channel].widened } ?? 1,
                    sumDy: sums.elements[2 * instance], sumDyXHat: sums.elements[2 * instance + 1],
                    spatialCount: count)
                scratch.setInputGradient(operation, channel: channel)
            }
            for slot in 0..<5 { scratch.replicate(slot) }
            return TiledInputGradientOperation(
                dy: gradients.base + sample * sampleLength, x: input.base + sample * sampleLength, scratch: scratch)
        }
    }

    /// dγ_c = Σ_n s2(n,c), dβ_c = Σ_n s1(n,c), added in sample order; and
    /// every instance's (s1, s2) into `instanceSums`.
    @inlinable func combineParameterGradients(
        dgamma: UnsafeMutableBufferPointer<Double>, dbeta: UnsafeMutableBufferPointer<Double>,
        instanceSums: UnsafeMutableBufferPointer<Double>?, threads: Int
    ) {
        dgamma.update(repeating: 0)
        dbeta.update(repeating: 0)
        if sums.count > 0 {
            addInSampleOrder(sums.elements.baseAddress!, samples: sums.count / (2 * channels), channels: channels,
                             dgamma: dgamma.baseAddress!, dbeta: dbeta.baseAddress!, threads: threads)
        }
        if let instanceSums { _ = instanceSums.update(fromContentsOf: sums.elements) }
    }
}
