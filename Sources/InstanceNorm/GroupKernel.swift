import _InstanceNormShims

/// GroupNorm over a channels-first batch (N, C, S…) held by one process,
/// with G < C groups (G = C is InstanceNorm: `NormKernel` sends it there).
///
/// A group (n, g) is the run of L = (C/G)·M contiguous values of channels
/// g·C/G ..< (g + 1)·C/G of sample n; its statistics are those of
/// `InstanceKernel.moments` over the run. Each channel's M values in it are
/// a *segment*, normalized with the group's statistics and the channel's
/// γ_c, β_c by `InstanceKernel.normalize`. Backward, per group, with s1_c,
/// s2_c the instance kernel's sums of each segment (x̂ from the group's
/// statistics), A = Σ_c γ_c·s1_c, B = Σ_c γ_c·s2_c:
///
///     dx = r·(γ_c·dy − A/L − x̂·B/L)        dγ_c += s2_c    dβ_c += s1_c
///
/// Whole groups go to the workers (their sums, then their dx from cache);
/// with fewer groups than workers, the sums are shared by channel segment
/// and chunk and added in chunk order, so every thread count gives the
/// same bits.
@usableFromInline
final class GroupBatch<T: InstanceNormScalar>: @unchecked Sendable {
    @usableFromInline let x: SharedBuffer<T>
    @usableFromInline let gamma: SharedBuffer<T>?
    @usableFromInline let shape: InstanceNormShape
    @usableFromInline let groups: Int
    @usableFromInline let streaming: Bool

    @inlinable
    init(x: UnsafeBufferPointer<T>, gamma: UnsafeBufferPointer<T>?, shape: InstanceNormShape, groups: Int, streaming: Bool) {
        self.x = SharedBuffer(x)
        self.gamma = gamma.map { SharedBuffer($0) }
        self.shape = shape
        self.groups = groups
        self.streaming = streaming
    }

    /// C/G, the segments of a group.
    @inlinable var channelsPerGroup: Int { shape.channels / groups }
    /// L = (C/G)·M, the values of a group.
    @inlinable var groupLength: Int { channelsPerGroup * shape.spatialCount }
    /// The values an output is written in runs of, each with its own
    /// constants (see `StorePolicy.shortRunBytes`): a group, or the whole
    /// tensor where the segments go through `SmallGroups`, whose blocks
    /// write the tensor in order.
    @inlinable static func outputRun(_ shape: InstanceNormShape, groups: Int, backward: Bool) -> Int {
        SmallGroups<T>.applies(to: shape, groups: groups, backward: backward) ? shape.elementCount : shape.channels / groups * shape.spatialCount
    }

    /// Work split by whole groups, or by chunks of groups when there are fewer than workers.
    @inlinable func split(threads: Int) -> WorkSplit {
        WorkSplit(units: shape.batch * groups, length: groupLength, threads: threads)
    }

    /// The instance (n·C + c) of segment `segment` of group `group`.
    @inlinable func instance(_ group: Int, _ segment: Int) -> Int { group * channelsPerGroup + segment }

    @inlinable func gammaValue(_ instance: Int) -> Double { gamma.map { $0.base[instance % shape.channels].widened } ?? 1 }

    /// Calls body(instance, range within that instance) for the channel
    /// segments that `range` (within group `group`) covers.
    @inlinable func forEachSegment(of group: Int, _ range: Range<Int>, _ body: (Int, Range<Int>) -> Void) {
        let spatialCount = shape.spatialCount
        var start = range.lowerBound
        while start < range.upperBound {
            let segment = start / spatialCount, segmentEnd = (segment + 1) * spatialCount
            let end = min(segmentEnd, range.upperBound)
            body(instance(group, segment), start - segment * spatialCount..<end - segment * spatialCount)
            start = end
        }
    }
}

// MARK: - Forward

extension GroupBatch {
    /// Statistics and y of every group.
    @inlinable
    func forward(
        y: UnsafeMutableBufferPointer<T>, statistics: UnsafeMutableBufferPointer<InstanceStatistics>?,
        beta: UnsafeBufferPointer<T>?, eps: Double, threads: Int
    ) {
        if SmallGroups<T>.applies(to: shape, groups: groups, backward: false) {
            let saved = statistics ?? .allocate(capacity: shape.batch * groups)
            defer { if statistics == nil { saved.deallocate() } }
            return SmallGroups(batch: self, beta: beta).forward(y: y, statistics: saved, eps: eps, threads: threads)
        }
        let output = ForwardBatch(
            y: y, statistics: nil, x: UnsafeBufferPointer(start: x.base, count: shape.elementCount), gamma: gamma.map {
                UnsafeBufferPointer(start: $0.base, count: shape.channels)
            }, beta: beta, shape: shape, eps: eps, stores: streaming ? .streaming : .cached)
        let saved = statistics.map { SharedBuffer($0) }
        let split = split(threads: threads)
        let length = groupLength, base = x
        let normalizeRange = { @Sendable (group: Int, range: Range<Int>, groupStatistics: InstanceStatistics) in
            self.forEachSegment(of: group, range) { output.normalize($0, $1, groupStatistics) }
        }
        if split.splitsInstances {
            let moments = split.splitMoments { UnsafePointer(base.base + $0 * length) }
            let perGroup = moments.map { InstanceStatistics(mean: $0.mean, variance: $0.variance, eps: eps) }
            for (group, groupStatistics) in perGroup.enumerated() { saved?.base[group] = groupStatistics }
            split.run { worker in split.forEachPiece(of: worker) { normalizeRange($0, $1, perGroup[$0]) } }
        } else {
            let fuses = streaming && FusedForward.applies(toRunsOf: length, T.self)
            let betaValues = beta.map { SharedBuffer($0) }
            split.run { worker in
                let groups = split.instances(of: worker)
                if fuses {
                    return fusedForward(runs: groups, length: length, x: UnsafePointer(base.base), y: output.y.base, eps: eps) {
                        group, groupStatistics in
                        saved?.base[group] = groupStatistics
                        return GroupRunOutput(
                            x: base.base + group * length, gamma: self.gamma.map { UnsafePointer($0.base) },
                            beta: betaValues.map { UnsafePointer($0.base) },
                            firstChannel: self.instance(group, 0) % self.shape.channels, segmentLength: self.shape.spatialCount,
                            statistics: groupStatistics)
                    }
                }
                for group in groups {
                    let moments = InstanceKernel.moments(of: UnsafeBufferPointer(start: base.base + group * length, count: length))
                    let groupStatistics = InstanceStatistics(mean: moments.mean, variance: moments.variance, eps: eps)
                    saved?.base[group] = groupStatistics
                    normalizeRange(group, 0..<length, groupStatistics)
                }
            }
        }
        if streaming { instnorm_store_fence() }
    }
}

/// y of one group in the fused forward: a segment per channel, each
/// normalized with the group's statistics and its channel's γ, β. Plain
/// values only (no shape, whose array would be retained and released
/// with every copy the fused loop makes).
@usableFromInline
struct GroupRunOutput<T: InstanceNormScalar>: RunOutput {
    @usableFromInline let x: UnsafePointer<T>
    @usableFromInline let gamma, beta: UnsafePointer<T>?
    @usableFromInline let firstChannel: Int
    @usableFromInline let segmentLength: Int
    @usableFromInline let statistics: InstanceStatistics

    /// The group's first channel segment starts at x.
    @inlinable init(x: UnsafePointer<T>, gamma: UnsafePointer<T>?, beta: UnsafePointer<T>?, firstChannel: Int,
                    segmentLength: Int, statistics: InstanceStatistics) {
        self.x = x
        self.gamma = gamma
        self.beta = beta
        self.firstChannel = firstChannel
        self.segmentLength = segmentLength
        self.statistics = statistics
    }

    @inlinable func operation(ofSegment segment: Int) -> NormalizeOperation<T> {
        let channel = firstChannel + segment
        return InstanceKernel.normalizeOperation(
            x: x + segment * segmentLength, statistics: statistics,
            gamma: gamma.map { $0[channel].widened } ?? 1, beta: beta.map { $0[channel].widened } ?? 0)
    }
}

// MARK: - Backward

/// The buffers and sums of one GroupNorm backward: per channel segment
/// (s1, s2), per group (A, B).
@usableFromInline
final class GroupBackward<T: InstanceNormScalar>: @unchecked Sendable {
    @usableFromInline let batch: GroupBatch<T>
    @usableFromInline let dx, dy: SharedBuffer<T>
    @usableFromInline let statistics: UnsafeBufferPointer<InstanceStatistics>
    /// (s1, s2) per instance n·C + c, from the group's statistics.
    @usableFromInline let segmentSums: UnsafeMutableBufferPointer<(sumDy: Double, sumDyXHat: Double)>
    /// (A, B) = (Σ_c γ_c·s1_c, Σ_c γ_c·s2_c) per group.
    @usableFromInline let groupSums: UnsafeMutableBufferPointer<(Double, Double)>

    @inlinable
    init(batch: GroupBatch<T>, dx: UnsafeMutableBufferPointer<T>, dy: UnsafeBufferPointer<T>,
         statistics: UnsafeBufferPointer<InstanceStatistics>) {
        self.batch = batch
        self.dx = SharedBuffer(dx)
        self.dy = SharedBuffer(dy)
        self.statistics = statistics
        segmentSums = .allocate(capacity: batch.shape.instanceCount)
        segmentSums.initialize(repeating: (0, 0))
        groupSums = .allocate(capacity: batch.shape.batch * batch.groups)
        groupSums.initialize(repeating: (0, 0))
    }

    deinit {
        segmentSums.deallocate()
        groupSums.deallocate()
    }

    @inlinable func segment(_ base: SharedBuffer<T>, _ instance: Int, _ range: Range<Int>) -> UnsafeMutablePointer<T> {
        base.base + instance * batch.shape.spatialCount + range.lowerBound
    }

    /// s1, s2 of every segment of `group`, then its A, B.
    @inlinable func sums(_ group: Int) {
        let whole = 0..<batch.shape.spatialCount
        for index in 0..<batch.channelsPerGroup {
            let instance = batch.instance(group, index)
            segmentSums[instance] = InstanceKernel.gradientSums(
                dy: UnsafeBufferPointer(start: segment(dy, instance, whole), count: whole.count),
                x: UnsafeBufferPointer(start: segment(batch.x, instance, whole), count: whole.count),
                statistics: statistics[group])
        }
        combine(group)
    }

    /// s1, s2, A, B of each of `groups`, and dx of those outside `tail`: in
    /// the fused order (see `BackwardBatch.sumsAndDx`) where it pays, each
    /// group's dx streamed out segment by segment while the next group's
    /// segments are summed. The same arithmetic, so the same bits.
    @inlinable func sumsAndDx(of groups: Range<Int>, tail: Range<Int>) {
        let length = batch.groupLength
        guard batch.streaming && fusedOrderPays(forRunsOf: batch.shape.spatialCount, T.self) else {
            for group in groups {
                sums(group)
                if !tail.contains(group) { inputGradient(group, 0..<length) }
            }
            return
        }
        var waiting: Int?  // summed, its dx not yet written
        for group in groups {
            if let previous = waiting { sumsWritingDx(of: previous, sumsOf: group) } else { sums(group) }
            waiting = tail.contains(group) ? nil : group
        }
        if let previous = waiting { inputGradient(previous, 0..<length) }
    }

    /// Segment j of `next` summed while segment j of `previous` (summed)
    /// streams its dx out, for every j; then `next`'s A, B.
    @inlinable func sumsWritingDx(of previous: Int, sumsOf next: Int) {
        let spatialCount = batch.shape.spatialCount, whole = 0..<spatialCount
        let center = statistics[next].splitMean(as: T.self).high
        for index in 0..<batch.channelsPerGroup {
            let written = batch.instance(previous, index), summed = batch.instance(next, index)
            let gradient = gradientOperation(previous, written, start: 0), out = segment(dx, written, whole)
            let beforeBoundary = streamingStart(out, whole)
            writeElementwise(out, 0..<beforeBoundary, streaming: true, gradient)
            let nextDy = segment(dy, summed, whole), nextX = segment(batch.x, summed, whole)
            var writer = StreamingWriter(
                out: out, gradient, written: beforeBoundary, count: spatialCount,
                prefetching: (UnsafeRawPointer(nextDy), UnsafeRawPointer(nextX)))
            let (sumDy, sumDyCentered) = chunkedSums(spatialCount) { chunk in
                var local = writer  // in registers, not reloaded through the capture
                defer { writer = local }
                return gradientChunkSums(nextDy, nextX, chunk, center: center, alongside: &local)
            }
            segmentSums[summed] = InstanceKernel.gradientSums(
                sumDy: sumDy, sumDyCentered: sumDyCentered, statistics: statistics[next], as: T.self)
            writeElementwise(out, writer.written..<spatialCount, streaming: true, gradient)
        }
        combine(next)
    }

    /// A = Σ_c γ_c·s1_c and B = Σ_c γ_c·s2_c of one group, in channel order.
    @inlinable func combine(_ group: Int) {
        groupSums[group] = groupGradientSums(count: batch.channelsPerGroup) { index in
            let instance = batch.instance(group, index)
            return (batch.gammaValue(instance), segmentSums[instance].sumDy, segmentSums[instance].sumDyXHat)
        }
    }

    /// dx over `range` (within the group) of `group`.
    @inlinable func inputGradient(_ group: Int, _ range: Range<Int>) {
        batch.forEachSegment(of: group, range) { instance, piece in
            let operation = gradientOperation(group, instance, start: piece.lowerBound)
            writeElementwise(segment(dx, instance, piece), 0..<piece.count, streaming: batch.streaming, operation)
        }
    }

    /// dx = r·(γ·dy − A/L − x̂·B/L) of one segment, from value `start` on,
    /// folded as `InputGradientOperation` does it for an instance:
    ///
    ///     k = γ·r      p = −r²·B/L      d̄ = A/(L·γ) rounded
    ///     dx = k·(dy − d̄) + p·(x − μ_hi) + q,   q = k·d̄ − r·A/L − p·μ_lo
    ///
    /// Centering dy on d̄ keeps the terms small where γ·dy is near its group's
    /// mean. Where γ is so small (or 0) that A/(L·γ) would come near the
    /// compute precision's largest value, d̄ = 0: dy − d̄ and k·d̄ would
    /// overflow (inf − inf = NaN in dx, where PyTorch's dx is finite), and
    /// centering only helps where d̄ is of dy's size.
    @inlinable func gradientOperation(_ group: Int, _ instance: Int, start: Int) -> InputGradientOperation<T> {
        let groupStatistics = statistics[group], invstd = groupStatistics.invstd
        let (meanHigh, meanLow) = groupStatistics.splitMean(as: T.self)
        let count = Double(batch.groupLength), (sumA, sumB) = groupSums[group]
        let gradientScale = batch.gammaValue(instance) * invstd
        let centeredScale = -invstd * invstd * sumB / count
        let constant = -invstd * sumA / count
        let quotient = gradientScale != 0 ? -constant / gradientScale : 0
        let meanDy = abs(quotient) <= Double(T.Compute.greatestFiniteMagnitude) / 16 ? T.Compute(quotient) : 0
        let offset = gradientScale * meanDy.widened + constant - centeredScale * meanLow
        return InputGradientOperation(
            dy: segment(dy, instance, start..<start), x: segment(batch.x, instance, start..<start), meanHigh: meanHigh,
            meanDy: meanDy, gradientScale: T.Compute(gradientScale), centeredScale: T.Compute(centeredScale),
            offset: T.Compute(offset))
    }

    /// s1, s2 of every segment from chunks shared by the workers (fewer
    /// groups than workers), then A, B of every group.
    @inlinable func sharedSums(threads: Int) {
        let shape = batch.shape, channelsPerGroup = batch.channelsPerGroup
        let segments = WorkSplit(units: shape.instanceCount, length: shape.spatialCount, threads: threads)
        let centers = statistics.map { $0.splitMean(as: T.self).high }
        let totals = segments.sumsInChunkOrder { instance, range in
            gradientChunkSums(
                UnsafePointer(self.segment(self.dy, instance, 0..<0)), UnsafePointer(self.segment(self.batch.x, instance, 0..<0)),
                range, center: centers[instance / channelsPerGroup])
        }
        for (instance, total) in totals.enumerated() {
            segmentSums[instance] = InstanceKernel.gradientSums(
                sumDy: total.0, sumDyCentered: total.1, statistics: statistics[instance / channelsPerGroup], as: T.self)
        }
        for group in 0..<shape.batch * batch.groups { combine(group) }
    }
}

extension GroupBatch {
    /// Backward of `forward`: dx, dγ_c = Σ_n s2(n,c), dβ_c = Σ_n s1(n,c) in
    /// sample order, and every (n, c)'s (s1, s2) into `segmentSums` (N, C, 2)
    /// before `overlap.sumsReady`.
    @inlinable
    func backward(
        dx: UnsafeMutableBufferPointer<T>, dgamma: UnsafeMutableBufferPointer<Double>, dbeta: UnsafeMutableBufferPointer<Double>,
        dy: UnsafeBufferPointer<T>, statistics: UnsafeBufferPointer<InstanceStatistics>,
        segmentSums: UnsafeMutableBufferPointer<Double>?, threads: Int, overlap: BackwardOverlap?
    ) {
        if SmallGroups<T>.applies(to: shape, groups: groups, backward: true) {
            let shares = segmentSums ?? .allocate(capacity: 2 * shape.instanceCount)
            defer { if segmentSums == nil { shares.deallocate() } }
            return SmallGroups(batch: self, beta: nil).backward(
                dx: dx, dy: dy, statistics: statistics, shares: shares, dgamma: dgamma, dbeta: dbeta, threads: threads,
                overlap: overlap)
        }
        let work = GroupBackward(batch: self, dx: dx, dy: dy, statistics: statistics)
        let split = split(threads: threads)
        let tails = split.deferredTails(overlap)
        if split.splitsInstances {
            work.sharedSums(threads: threads)
        } else {
            split.run { worker in work.sumsAndDx(of: split.instances(of: worker), tail: tails[worker]) }
        }
        dgamma.update(repeating: 0)
        dbeta.update(repeating: 0)
        for instance in 0..<shape.instanceCount {
            let channel = instance % shape.channels, sums = work.segmentSums[instance]
            dbeta[channel] += sums.sumDy
            dgamma[channel] += sums.sumDyXHat
            segmentSums?[2 * instance] = sums.sumDy
            segmentSums?[2 * instance + 1] = sums.sumDyXHat
        }
        overlap?.sumsReady()
        split.writeDeferred(tails: tails, overlap: overlap) { work.inputGradient($0, $1) }
        if streaming { instnorm_store_fence() }
    }
}

/// A = Σ_c γ_c·s1_c and B = Σ_c γ_c·s2_c over the `count` channel segments
/// of a group, in channel order; `segment(j)` gives segment j's γ, s1, s2.
@inlinable @inline(__always)
func groupGradientSums(count: Int, _ segment: (Int) -> (gamma: Double, sumDy: Double, sumDyXHat: Double)) -> (Double, Double) {
    var total = (0.0, 0.0)
    for index in 0..<count {
        let (gamma, sumDy, sumDyXHat) = segment(index)
        total.0 += gamma * sumDy
        total.1 += gamma * sumDyXHat
    }
    return total
}

// MARK: - Channels last

/// GroupNorm over a channels-last batch (N, S…, C): a group's values are
/// strided by C there, so each sample is transposed to (C, S…) in a
/// worker's scratch, normalized by `GroupBatch` on one thread, and its
/// outputs transposed back. The same bits as channels first on the
/// transposed data, at the cost of the transpositions (no speed target is
/// set for this layout); workers take whole samples.
@usableFromInline
struct ChannelsLastGroups: Sendable {
    @usableFromInline let shape: InstanceNormShape
    @usableFromInline let groups: Int
    @usableFromInline let threads: Int

    @inlinable init(shape: InstanceNormShape, groups: Int, threads: Int) {
        self.shape = shape
        self.groups = groups
        self.threads = threads
    }

    @inlinable var sampleShape: InstanceNormShape { shape.withBatch(min(shape.batch, 1)) }
    @inlinable var sampleCount: Int { shape.channels * shape.spatialCount }

    /// Runs `body(sample, scratch, wide)` for every sample, whole samples
    /// per worker, each worker with `arrays` sample-sized scratch arrays and
    /// `doubles` values of `Double` scratch, allocated once per worker.
    @inlinable func forEachSample<T>(
        arrays: Int, doubles: Int = 0, as _: T.Type,
        _ body: @Sendable (Int, UnsafeMutablePointer<T>, UnsafeMutablePointer<Double>) -> Void
    ) {
        let split = WorkSplit(units: shape.batch, length: sampleCount, threads: min(threads, max(shape.batch, 1)))
        let count = sampleCount
        split.run { worker in
            let scratch = UnsafeMutablePointer<T>.allocate(capacity: arrays * count)
            let wide = UnsafeMutablePointer<Double>.allocate(capacity: max(doubles, 1))
            defer {
                scratch.deallocate()
                wide.deallocate()
            }
            for sample in split.instances(of: worker) { body(sample, scratch, wide) }
        }
    }

    /// (S, C) of one sample → (C, S).
    @inlinable func toChannelsFirst<T: InstanceNormScalar>(_ source: UnsafePointer<T>, _ target: UnsafeMutablePointer<T>) {
        transposeMatrix(source, rows: shape.spatialCount, columns: shape.channels, into: target, inSourceOrder: true)
    }

    /// (C, S) of one sample → (S, C).
    @inlinable func toChannelsLast<T: InstanceNormScalar>(_ source: UnsafePointer<T>, _ target: UnsafeMutablePointer<T>) {
        transposeMatrix(source, rows: shape.channels, columns: shape.spatialCount, into: target, inSourceOrder: false)
    }

    @inlinable
    func forward<T: InstanceNormScalar>(
        y: UnsafeMutableBufferPointer<T>, statistics: UnsafeMutableBufferPointer<InstanceStatistics>,
        x: UnsafeBufferPointer<T>, gamma: UnsafeBufferPointer<T>?, beta: UnsafeBufferPointer<T>?, eps: Double
    ) {
        let (input, output, saved) = (SharedBuffer(x), SharedBuffer(y), SharedBuffer(statistics))
        let (gammaValues, betaValues) = (gamma.map { SharedBuffer($0) }, beta.map { SharedBuffer($0) })
        let count = sampleCount, channels = shape.channels, groups = groups, sampleShape = sampleShape
        forEachSample(arrays: 2, as: T.self) { sample, scratch, _ in
            toChannelsFirst(input.base + sample * count, scratch)
            GroupBatch(x: UnsafeBufferPointer(start: scratch, count: count),
                       gamma: gammaValues.map { UnsafeBufferPointer(start: $0.base, count: channels) },
                       shape: sampleShape, groups: groups, streaming: false)
                .forward(
                    y: UnsafeMutableBufferPointer(start: scratch + count, count: count),
                    statistics: UnsafeMutableBufferPointer(start: saved.base + sample * groups, count: groups),
                    beta: betaValues.map { UnsafeBufferPointer(start: $0.base, count: channels) }, eps: eps, threads: 1)
            toChannelsLast(scratch + count, output.base + sample * count)
        }
    }

    /// The backward, sample by sample: every sample's sums are ready only
    /// at the end, so `overlap.sumsReady` comes after all of dx.
    @inlinable
    func backward<T: InstanceNormScalar>(
        dx: UnsafeMutableBufferPointer<T>, dgamma: UnsafeMutableBufferPointer<Double>, dbeta: UnsafeMutableBufferPointer<Double>,
        dy: UnsafeBufferPointer<T>, x: UnsafeBufferPointer<T>, statistics: UnsafeBufferPointer<InstanceStatistics>,
        gamma: UnsafeBufferPointer<T>?, parameterSums: UnsafeMutableBufferPointer<Double>?, overlap: BackwardOverlap?
    ) {
        let channels = shape.channels
        let sums = parameterSums ?? .allocate(capacity: 2 * shape.instanceCount)
        defer { if parameterSums == nil { sums.deallocate() } }
        let (input, gradients, output, shared) = (SharedBuffer(x), SharedBuffer(dy), SharedBuffer(dx), SharedBuffer(sums))
        let gammaValues = gamma.map { SharedBuffer($0) }
        let count = sampleCount, groups = groups, sampleShape = sampleShape, saved = SharedBuffer(statistics)
        forEachSample(arrays: 3, doubles: 2 * channels, as: T.self) { sample, scratch, wide in
            toChannelsFirst(input.base + sample * count, scratch)
            toChannelsFirst(gradients.base + sample * count, scratch + count)
            let sampleGradients = UnsafeMutableBufferPointer(start: wide, count: 2 * channels)
            GroupBatch(x: UnsafeBufferPointer(start: scratch, count: count),
                       gamma: gammaValues.map { UnsafeBufferPointer(start: $0.base, count: channels) },
                       shape: sampleShape, groups: groups, streaming: false)
                .backward(
                    dx: UnsafeMutableBufferPointer(start: scratch + 2 * count, count: count),
                    dgamma: UnsafeMutableBufferPointer(rebasing: sampleGradients[0..<channels]),
                    dbeta: UnsafeMutableBufferPointer(rebasing: sampleGradients[channels...]),
                    dy: UnsafeBufferPointer(start: scratch + count, count: count),
                    statistics: UnsafeBufferPointer(start: saved.base + sample * groups, count: groups),
                    segmentSums: UnsafeMutableBufferPointer(start: shared.base + 2 * sample * channels, count: 2 * channels),
                    threads: 1, overlap: nil)
            toChannelsLast(scratch + 2 * count, output.base + sample * count)
        }
        dgamma.update(repeating: 0)
        dbeta.update(repeating: 0)
        if let start = sums.baseAddress, channels > 0 {
            addInSampleOrder(start, samples: shape.batch, channels: channels, dgamma: dgamma.baseAddress!,
                             dbeta: dbeta.baseAddress!, threads: 1)
        }
        overlap?.sumsReady()
    }
}

/// target[c·rows + r] = source[r·columns + c]: a rows × columns matrix
/// transposed in square tiles turned in registers where the storage is the
/// compute type (`InstanceNormScalar.transposeTile`; float and double), the
/// edges and half storage value by value, reading the source in order
/// (`inSourceOrder`) or writing the target in order. Callers keep the
/// tensor's side in order; the scratch side, a sample of a few KiB, stays
/// in L1. Value by value throughout it cost about 1 ns a value: 70% of
/// channels-last GroupNorm's time on 7×7 maps.
@inlinable
func transposeMatrix<T: InstanceNormScalar>(
    _ source: UnsafePointer<T>, rows: Int, columns: Int, into target: UnsafeMutablePointer<T>, inSourceOrder: Bool
) {
    let tile = T.Compute.tileSize
    guard T.Compute.self == T.self, rows >= tile, columns >= tile else {
        return transposeValues(source, rows: rows, columns: columns, into: target, 0..<rows, 0..<columns,
                               inSourceOrder: inSourceOrder)
    }
    let tiledRows = rows / tile * tile, tiledColumns = columns / tile * tile
    for rowStart in stride(from: 0, to: tiledRows, by: tile) {
        for columnStart in stride(from: 0, to: tiledColumns, by: tile) {
            T.transposeTile(
                source + rowStart * columns + columnStart, rowStride: columns,
                into: UnsafeMutableRawPointer(target + columnStart * rows + rowStart).assumingMemoryBound(to: T.Compute.self),
                columnStride: rows)
        }
    }
    transposeValues(source, rows: rows, columns: columns, into: target, 0..<tiledRows, tiledColumns..<columns,
                    inSourceOrder: inSourceOrder)
    transposeValues(source, rows: rows, columns: columns, into: target, tiledRows..<rows, 0..<columns,
                    inSourceOrder: inSourceOrder)
}

/// `transposeMatrix` of the values in `rowRange` × `columnRange` only, one
/// by one, reading the source or writing the target in its order.
@inlinable
func transposeValues<T>(
    _ source: UnsafePointer<T>, rows: Int, columns: Int, into target: UnsafeMutablePointer<T>,
    _ rowRange: Range<Int>, _ columnRange: Range<Int>, inSourceOrder: Bool
) {
    if inSourceOrder {
        for row in rowRange {
            for column in columnRange { target[column * rows + row] = source[row * columns + column] }
        }
    } else {
        for column in columnRange {
            for row in rowRange { target[column * rows + row] = source[row * columns + column] }
        }
    }
}
