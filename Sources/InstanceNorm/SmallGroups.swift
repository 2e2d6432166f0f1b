import _InstanceNormShims

/// GroupNorm, channels first, whose channel segments hold few values (see
/// `applies` for the limits). `GroupBatch` calls the per-instance kernels once per segment,
/// and at small M that call's setup is most of the time; here the segments
/// go through InstanceNorm's blocked kernels (`SmallInstances`), one
/// segment per lane, every lane given its group's statistics and sums in
/// place of its own:
///
///     statistics  per group (n, g), over its L = (C/G)·M values: blocks
///                 of B groups in lanes for L ≤ `SmallGroupLimits.blockedGroup`
///                 (`BlockScratch.loadStatistics`), `InstanceKernel.moments`
///                 of each group above
///     y           per block of B segments, with μ, r of each lane's group:
///                 a = γ_c·r    b = β_c − μ_lo·a    y = (x − μ_hi)·a + b
///     s1, s2      Σ dy, Σ dy·x̂ per segment, x̂ from its group (`gradientLaneSums`)
///     A, B        per group, Σ_c γ_c·s1_c and Σ_c γ_c·s2_c in channel order
///     dx          per block of segments, with the constants that
///                 `GroupBackward.gradientOperation` folds for one segment
///
/// A lane's arithmetic reads only its segment's and its group's values,
/// and a group's statistics are computed one way for every L, so the
/// results are the same bits whatever the blocks, runs, workers or ranks.
/// Workers take runs of whole groups, a run's statistics (or sums) before
/// its outputs, which read x (and dy) again from cache.
@usableFromInline
struct SmallGroups<T: InstanceNormScalar>: @unchecked Sendable {
    @usableFromInline typealias C = T.Compute
    @usableFromInline let batch: GroupBatch<T>
    @usableFromInline let gamma, beta: ChannelLanes
    /// Division by L, for the groups' statistics in lanes.
    @usableFromInline let groupDivisor: LaneDivisor

    @inlinable init(batch: GroupBatch<T>, beta: UnsafeBufferPointer<T>?) {
        let channels = batch.shape.channels, lanes = T.Vector.scalarCount
        self.batch = batch
        gamma = ChannelLanes(
            batch.gamma.map { UnsafeBufferPointer(start: $0.base, count: channels) }, channels: channels, lanes: lanes,
            default: 1)
        self.beta = ChannelLanes(beta, channels: channels, lanes: lanes, default: 0)
        groupDivisor = LaneDivisor(batch.groupLength)
    }

    /// The largest M whose forward takes these kernels when a group holds
    /// more than `SmallGroupLimits.blockedGroup` values. Measured against the
    /// per-segment forward side by side (one thread, float32, G = 32,
    /// about 8-16 M values, 3 alternating rounds on a noisy machine):
    /// M = 16 0.7-0.9 of its time, M = 25, 36, 49 level (0.8-1.2 by round),
    /// M = 64 1.1-1.25, M = 81, 100 1.2-1.3. The backward gains at every
    /// M up to `SmallGroupLimits.backward` (M = 36 0.5, 49 0.6-0.8).
    @inlinable static var forwardLimit: Int { 36 }

    /// Whether a forward (or backward) of `shape` with `groups` groups
    /// takes these kernels. A group of at most `SmallGroupLimits.blockedGroup`
    /// values always does forward: its statistics are then summed in the
    /// blocked order, which `bench --verify` models for such groups.
    @inlinable static func applies(to shape: InstanceNormShape, groups: Int, backward: Bool) -> Bool {
        let spatialCount = shape.spatialCount
        guard spatialCount >= 1 else { return false }
        if backward { return spatialCount <= SmallGroupLimits.backward }
        return spatialCount <= forwardLimit || shape.channels / groups * spatialCount <= SmallGroupLimits.blockedGroup
    }

    /// The bytes of x a run of groups holds, at most (unless one group is
    /// larger): small enough that x and dy stay in L2 between a run's two
    /// passes.
    @usableFromInline static var runBytes: Int { 16 << 10 }

    @inlinable var groupCount: Int { batch.shape.batch * batch.groups }
    @inlinable var lanes: Int { T.Vector.scalarCount }

    /// Workers for `threads`: runs of whole blocks of B groups each.
    @inlinable func workers(threads: Int) -> Int {
        max(1, min(threads, (groupCount + lanes - 1) / lanes))
    }

    /// The groups of `worker`: a balanced share of the blocks of B groups.
    @inlinable func groups(of worker: Int, workers: Int) -> Range<Int> {
        let blocks = balancedRange((groupCount + lanes - 1) / lanes, worker, workers)
        return min(blocks.lowerBound * lanes, groupCount)..<min(blocks.upperBound * lanes, groupCount)
    }

    /// Groups per run: a multiple of the groups whose segments fill whole
    /// blocks (and, for groups summed in lanes, of B groups).
    @inlinable var runQuantum: Int {
        if batch.groupLength <= SmallGroupLimits.blockedGroup { return lanes }
        var (a, b) = (lanes, batch.channelsPerGroup)
        while b != 0 { (a, b) = (b, a % b) }
        return lanes / a
    }

    /// Groups per run: about `runBytes` of x.
    @inlinable var runLength: Int {
        let groupBytes = batch.groupLength * MemoryLayout<T>.stride, quantum = runQuantum
        return max(quantum, Self.runBytes / max(groupBytes, 1) / quantum * quantum)
    }

    /// body(run) for consecutive runs of whole groups covering `groups`,
    /// each of `runLength` groups (the last may be shorter).
    @inlinable func forEachRun(of groups: Range<Int>, _ body: (Range<Int>) -> Void) {
        let length = runLength
        for start in stride(from: groups.lowerBound, to: groups.upperBound, by: length) {
            body(start..<min(start + length, groups.upperBound))
        }
    }

    /// The segments (instances n·C + c) of `groups`.
    @inlinable func segments(of groups: Range<Int>) -> InstanceBlocks {
        let perGroup = batch.channelsPerGroup
        return InstanceBlocks(instances: groups.lowerBound * perGroup..<groups.upperBound * perGroup, lanes: lanes)
    }
}

/// The limits of GroupNorm's blocked kernels (`SmallGroups`): public for
/// checks that model their roundings.
public enum SmallGroupLimits {
    /// The largest group (in values) whose statistics are summed in blocks
    /// of whole groups: InstanceNorm's limit, so that GroupNorm's forward
    /// stays InstanceNorm's on x seen as (N, G, L), to the bit.
    public static var blockedGroup: Int { SmallInstances.limit }
    /// The largest M whose backward takes the blocked segments: the limit
    /// they were measured with (stop 24), before the instances' blocks
    /// went further (`SmallInstances.limit`).
    public static let backward = 64
}

/// One worker's scratch: blocks of segments, blocks of whole groups (for
/// the statistics of groups of at most `SmallGroupLimits.blockedGroup` values), room
/// for the lanes' A, B, and for a run's.
@usableFromInline
final class SmallGroupScratch<T: InstanceNormScalar> {
    @usableFromInline let segments: BlockScratch<T>
    @usableFromInline let groups: BlockScratch<T>?
    /// A, B per lane: 2·B doubles.
    @usableFromInline let groupSums: UnsafeMutablePointer<Double>
    /// The group of each lane of a block: B.
    @usableFromInline let laneGroups: UnsafeMutablePointer<Int>
    /// (A, B) of each group of a run.
    @usableFromInline let runSums: UnsafeMutablePointer<(Double, Double)>

    @inlinable init(spatialCount: Int, groupLength: Int, runLength: Int, forward: Bool) {
        segments = BlockScratch(spatialCount: spatialCount)
        groups = forward && groupLength <= SmallGroupLimits.blockedGroup ? BlockScratch(spatialCount: groupLength) : nil
        groupSums = allocateAligned(2 * T.Vector.scalarCount, of: Double.self)
        laneGroups = .allocate(capacity: T.Vector.scalarCount)
        laneGroups.initialize(repeating: 0, count: T.Vector.scalarCount)
        runSums = .allocate(capacity: forward ? 0 : runLength)
    }

    deinit {
        groupSums.deallocate()
        laneGroups.deallocate()
        runSums.deallocate()
    }
}

// MARK: - Forward

extension SmallGroups {
    /// Statistics and y of every group.
    @inlinable func forward(
        y: UnsafeMutableBufferPointer<T>, statistics: UnsafeMutableBufferPointer<InstanceStatistics>, eps: Double, threads: Int
    ) {
        let (output, saved) = (SharedBuffer(y), SharedBuffer(statistics))
        let workers = workers(threads: threads)
        WorkSplit(units: workers, length: 1, threads: workers).run { worker in
            let scratch = makeScratch(runLength: runLength, forward: true)
            forEachRun(of: groups(of: worker, workers: workers)) { run in
                groupStatistics(run, saved.base, eps: eps, scratch)
                normalize(run, output.base, UnsafePointer(saved.base), scratch)
            }
        }
        if batch.streaming { instnorm_store_fence() }
    }

    /// μ, σ², r of the groups of `run`, into `statistics`.
    @inlinable func groupStatistics(
        _ run: Range<Int>, _ statistics: UnsafeMutablePointer<InstanceStatistics>, eps: Double, _ scratch: SmallGroupScratch<T>
    ) {
        let length = batch.groupLength, x = UnsafePointer(batch.x.base)
        guard let blocks = scratch.groups else {
            for group in run {
                let moments = InstanceKernel.moments(of: UnsafeBufferPointer(start: x + group * length, count: length))
                statistics[group] = InstanceStatistics(mean: moments.mean, variance: moments.variance, eps: eps)
            }
            return
        }
        for block in InstanceBlocks(instances: run, lanes: lanes) {
            let first = block.lowerBound
            let (lanes, _) = blocks.loadStatistics(
                x + first * length, count: block.count, available: (groupCount - first) * length, set: 0,
                divisor: groupDivisor, eps: eps)
            // Ordinary stores: the segments' y reads these statistics back at once.
            lanes.store(to: statistics + first, count: block.count, staging: blocks.staging, streaming: false)
        }
    }

    /// y of the segments of `run`, from their groups' statistics.
    @inlinable func normalize(
        _ run: Range<Int>, _ y: UnsafeMutablePointer<T>, _ statistics: UnsafePointer<InstanceStatistics>,
        _ scratch: SmallGroupScratch<T>
    ) {
        let spatialCount = batch.shape.spatialCount, instances = batch.shape.instanceCount, blocks = scratch.segments
        for block in segments(of: run) {
            let first = block.lowerBound
            let source = blocks.load(
                batch.x.base + first * spatialCount, count: block.count, available: (instances - first) * spatialCount,
                set: 0, transposing: blocks.holdsQuads)
            let lanes = groupLanes(block, statistics, scratch)
            NormalizeLaneConstants(gamma: gamma.lanes(from: first), beta: beta.lanes(from: first), lanes).store(blocks, 0)
            writeNormalized(count: block.count, 0, x: source, blocks, to: y + first * spatialCount, streaming: batch.streaming)
        }
    }

    /// The statistics of each lane's group, for the segments of `block`
    /// (the variances left zero); with `sums`, each lane's group's A, B
    /// into `scratch.groupSums` (`sums[g]` those of group g). Gathered into
    /// the segments' staging four lanes a store (`instnorm_gather4`), from
    /// the lanes' group numbers.
    @inlinable @inline(__always)
    func groupLanes(
        _ block: Range<Int>, _ statistics: UnsafePointer<InstanceStatistics>, _ scratch: SmallGroupScratch<T>,
        sums: UnsafePointer<(Double, Double)>? = nil
    ) -> LaneStatistics<C> {
        let staging = scratch.segments.staging, indices = scratch.laneGroups, perGroup = batch.channelsPerGroup
        var group = block.lowerBound / perGroup, left = perGroup - block.lowerBound % perGroup
        for lane in 0..<lanes {
            // Lanes past the block repeat its last group, which exists.
            indices[lane] = group
            left -= 1
            if left == 0 && lane + 1 < block.count { (group, left) = (group + 1, perGroup) }
        }
        let values = UnsafeRawPointer(statistics).assumingMemoryBound(to: Double.self)
        for first in stride(from: 0, to: lanes, by: 4) {
            instnorm_gather4(values, 3, indices + first, staging + first)
            instnorm_gather4(values + 2, 3, indices + first, staging + lanes + first)
            if let sums {
                let pairs = UnsafeRawPointer(sums).assumingMemoryBound(to: Double.self)
                instnorm_gather4(pairs, 2, indices + first, scratch.groupSums + first)
                instnorm_gather4(pairs + 1, 2, indices + first, scratch.groupSums + lanes + first)
            }
        }
        return LaneStatistics(mean: lanesAt(staging), variance: C.WideLanes(), invstd: lanesAt(staging + lanes))
    }
}

// MARK: - Backward

extension SmallGroups {
    /// dx, every segment's (s1, s2) into `shares` (N, C, 2), and dγ_c =
    /// Σ_n s2(n, c), dβ_c = Σ_n s1(n, c) in sample order, before
    /// `overlap.sumsReady`; each worker's last groups (`overlap.tailElements`
    /// values) have their dx written after it.
    @inlinable func backward(
        dx: UnsafeMutableBufferPointer<T>, dy: UnsafeBufferPointer<T>, statistics: UnsafeBufferPointer<InstanceStatistics>,
        shares: UnsafeMutableBufferPointer<Double>, dgamma: UnsafeMutableBufferPointer<Double>,
        dbeta: UnsafeMutableBufferPointer<Double>, threads: Int, overlap: BackwardOverlap?
    ) {
        let gradients = GroupGradients(
            dx: SharedBuffer(dx), dy: SharedBuffer(dy), statistics: SharedBuffer(statistics), shares: SharedBuffer(shares))
        let workers = workers(threads: threads), split = WorkSplit(units: workers, length: 1, threads: workers)
        let tails = tailGroups(workers: workers, elements: overlap?.tailElements ?? 0)
        // A, B of the tails' groups, kept until their dx.
        let tailSums = tails.map { SharedBuffer(UnsafeMutableBufferPointer<(Double, Double)>.allocate(capacity: $0.count)) }
        defer { for sums in tailSums { sums.base.deallocate() } }
        split.run { worker in
            let scratch = makeScratch(runLength: runLength, forward: false), runSums = scratch.runSums
            forEachRun(of: groups(of: worker, workers: workers).lowerBound..<tails[worker].lowerBound) { run in
                sums(run, gradients, scratch, into: runSums - run.lowerBound)
                inputGradient(run, gradients, scratch, sums: runSums - run.lowerBound)
            }
            let kept = tailSums[worker].base - tails[worker].lowerBound
            forEachRun(of: tails[worker]) { sums($0, gradients, scratch, into: kept) }
        }
        dgamma.update(repeating: 0)
        dbeta.update(repeating: 0)
        if let start = shares.baseAddress, batch.shape.channels > 0 {
            addInSampleOrder(start, samples: batch.shape.batch, channels: batch.shape.channels, dgamma: dgamma.baseAddress!,
                             dbeta: dbeta.baseAddress!, threads: threads)
        }
        overlap?.sumsReady()
        if tails.contains(where: { !$0.isEmpty }) { writeTails(tails, tailSums, gradients, split, overlap) }
        if batch.streaming { instnorm_store_fence() }
    }

    /// A worker's scratch.
    @inlinable func makeScratch(runLength: Int, forward: Bool) -> SmallGroupScratch<T> {
        SmallGroupScratch(spatialCount: batch.shape.spatialCount, groupLength: batch.groupLength, runLength: runLength,
                          forward: forward)
    }

    /// Per worker, its last groups whose dx waits for `sumsReady`: enough
    /// for `elements` values.
    @inlinable func tailGroups(workers: Int, elements: Int) -> [Range<Int>] {
        (0..<workers).map { worker in
            let mine = groups(of: worker, workers: workers), length = max(batch.groupLength, 1)
            let count = elements > 0 ? min(mine.count, (elements + length - 1) / length) : 0
            return mine.upperBound - count..<mine.upperBound
        }
    }

    /// dx of every worker's tail groups from their kept A, B (`tailSums`,
    /// from each tail's first group on); worker 0 calls `overlap.progress`
    /// every `progressInterval` values.
    @inlinable func writeTails(
        _ tails: [Range<Int>], _ tailSums: [SharedBuffer<(Double, Double)>], _ gradients: GroupGradients<T>,
        _ split: WorkSplit, _ overlap: BackwardOverlap?
    ) {
        split.run { worker in
            let scratch = makeScratch(runLength: 0, forward: false), kept = tailSums[worker].base - tails[worker].lowerBound
            var sinceProgress = 0
            forEachRun(of: tails[worker]) { run in
                inputGradient(run, gradients, scratch, sums: kept)
                sinceProgress += run.count * batch.groupLength
                if worker == 0, let overlap, sinceProgress >= overlap.progressInterval {
                    overlap.progress()
                    sinceProgress = 0
                }
            }
        }
    }

    /// s1, s2 of every segment of `run` into the shares, then A, B of each
    /// of its groups g into `groupSums[g]`.
    @inlinable func sums(
        _ run: Range<Int>, _ gradients: GroupGradients<T>, _ scratch: SmallGroupScratch<T>,
        into groupSums: UnsafeMutablePointer<(Double, Double)>
    ) {
        let spatialCount = batch.shape.spatialCount, instances = batch.shape.instanceCount, blocks = scratch.segments
        let statistics = UnsafePointer(gradients.statistics.base)
        for block in segments(of: run) {
            let first = block.lowerBound, start = first * spatialCount
            let (x, dy) = blocks.loadGradients(
                x: batch.x.base + start, dy: gradients.dy.base + start, count: block.count,
                available: (instances - first) * spatialCount, set: 0, transposing: !blocks.sumsInRegisters,
                summing: true)
            let (sumDy, sumDyXHat) = blocks.gradientSums(groupLanes(block, statistics, scratch), x: x, dy: dy, set: 0)
            // Ordinary stores: the group sums below read these shares back at once.
            ParameterSums.storePairs(sumDy, sumDyXHat, to: gradients.shares.base + 2 * first, count: block.count,
                                     staging: blocks.staging, streaming: false)
        }
        let perGroup = batch.channelsPerGroup, gammaValues = gamma.values
        for group in run {
            let firstChannel = group % batch.groups * perGroup, shares = gradients.shares.base + 2 * group * perGroup
            groupSums[group] = groupGradientSums(count: perGroup) {
                (gammaValues[firstChannel + $0], shares[2 * $0], shares[2 * $0 + 1])
            }
        }
    }

    /// dx of the segments of `run`, from their groups' statistics and A, B
    /// (those of group g at `sums[g]`).
    @inlinable func inputGradient(
        _ run: Range<Int>, _ gradients: GroupGradients<T>, _ scratch: SmallGroupScratch<T>,
        sums: UnsafeMutablePointer<(Double, Double)>
    ) {
        let spatialCount = batch.shape.spatialCount, instances = batch.shape.instanceCount, blocks = scratch.segments
        let count = Double(batch.groupLength), lanes = lanes
        for block in segments(of: run) {
            let first = block.lowerBound, start = first * spatialCount
            let (x, dy) = blocks.loadGradients(
                x: batch.x.base + start, dy: gradients.dy.base + start, count: block.count,
                available: (instances - first) * spatialCount, set: 0, transposing: blocks.holdsQuads)
            let groupLanes = groupLanes(
                block, UnsafePointer(gradients.statistics.base), scratch, sums: UnsafePointer(sums))
            GradientLaneConstants(
                gamma: gamma.lanes(from: first), group: groupLanes, sumA: lanesAt(scratch.groupSums),
                sumB: lanesAt(scratch.groupSums + lanes), count: count
            ).store(blocks, 0)
            writeInputGradient(
                count: block.count, 0, x: x, dy: dy, blocks, to: gradients.dx.base + start, streaming: batch.streaming)
        }
    }
}

/// The buffers of one backward over small segments.
@usableFromInline
struct GroupGradients<T: InstanceNormScalar>: @unchecked Sendable {
    @usableFromInline let dx, dy: SharedBuffer<T>
    @usableFromInline let statistics: SharedBuffer<InstanceStatistics>
    /// (N, C, 2): s1, s2 per segment.
    @usableFromInline let shares: SharedBuffer<Double>

    @inlinable init(dx: SharedBuffer<T>, dy: SharedBuffer<T>, statistics: SharedBuffer<InstanceStatistics>,
                    shares: SharedBuffer<Double>) {
        self.dx = dx
        self.dy = dy
        self.statistics = statistics
        self.shares = shares
    }
}

extension GradientLaneConstants {
    /// The constants of GroupNorm's dx for segments in lanes, each with its
    /// group's μ, r (`group`), A, B, and its channel's γ, as
    /// `GroupBackward.gradientOperation` folds them for one segment (the
    /// same operations, so the same bits):
    ///
    ///     k = γ·r    p = −r²·B/L    c = −r·A/L    d̄ = −c/k rounded, 0 where out of range
    ///     q = k·d̄ + c − p·μ_lo      dx = k·(dy − d̄) + p·(x − μ_hi) + q
    @inlinable @inline(__always)
    init(gamma: C.WideLanes, group lanes: LaneStatistics<C>, sumA: C.WideLanes, sumB: C.WideLanes, count: Double) {
        let (meanHigh, meanLow) = lanes.splitMean, invstd = lanes.invstd
        let gradientScaleWide = gamma * invstd
        let centeredScaleWide = -invstd * invstd * sumB / count
        let constant = -invstd * sumA / count
        // |d̄| ≤ max/16, or 0: where γ is 0 (d̄ is ±inf or NaN) or so small
        // that dy − d̄ would overflow. Two selects, as NaN fails both.
        let quotient = -constant / gradientScaleWide, zero = C.WideLanes()
        let limit = C.WideLanes(repeating: Double(C.greatestFiniteMagnitude) / 16)
        let belowLimit = C.select(quotient, atMost: limit, quotient, else: zero)
        meanDy = C.narrow(C.select(-belowLimit, atMost: limit, belowLimit, else: zero))
        self.meanHigh = meanHigh
        gradientScale = C.narrow(gradientScaleWide)
        centeredScale = C.narrow(centeredScaleWide)
        offset = C.narrow(gradientScaleWide * C.widen(meanDy) + constant - centeredScaleWide * meanLow)
    }
}
