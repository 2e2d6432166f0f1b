import _InstanceNormShims

/// Hooks that let a caller hide a reduction of dγ, dβ behind the dx pass.
///
/// The backward first computes every instance's sums except for the dx of
/// a tail of `tailElements` values per worker; then, on the calling thread,
/// `sumsReady` is called with this batch's dγ, dβ complete (a caller starts
/// its non-blocking allreduce there); then the tails' dx are written while
/// one worker calls `progress` every `progressInterval` values (a caller
/// polls its request there, since MPI without a progress thread advances a
/// non-blocking collective only inside MPI calls). `progress` runs on a
/// worker thread while the calling thread waits, never concurrently with
/// anything else that calls it: hence `@unchecked Sendable`.
public struct BackwardOverlap: @unchecked Sendable {
    /// Values per worker whose dx is written after `sumsReady`, while the
    /// reduction is in flight: the work that hides it.
    public var tailElements: Int
    /// How many dx values a worker writes between two calls of `progress`.
    public var progressInterval: Int
    /// Called once, on the calling thread, as soon as dγ, dβ (and the
    /// per-instance sums) of this batch are complete.
    public var sumsReady: () -> Void
    /// Called on one worker thread every `progressInterval` values of the
    /// tails' dx pass, to advance a non-blocking collective.
    public var progress: () -> Void

    /// Hooks with the given tail size and polling interval.
    ///
    /// - Parameters:
    ///   - tailElements: values per worker left for after `sumsReady`.
    ///   - progressInterval: dx values written between two `progress` calls.
    ///   - sumsReady: called once when dγ, dβ are complete.
    ///   - progress: called periodically from one worker during the tails.
    public init(
        tailElements: Int = 1 << 18, progressInterval: Int = 1 << 14,
        sumsReady: @escaping () -> Void, progress: @escaping () -> Void
    ) {
        self.tailElements = tailElements
        self.progressInterval = progressInterval
        self.sumsReady = sumsReady
        self.progress = progress
    }
}

/// Forward and backward over a batch (N, C, S1…Sk) held by one process,
/// spread over `threads` worker threads (see `WorkSplit`).
///
/// Buffers are laid out as the shape says: x, y, dy, dx are (N, C, S…);
/// statistics is (N, C); γ, β, dγ, dβ are (C,). Outputs larger than the
/// last-level cache are written with streaming stores (`StorePolicy`).
/// Results are the same bits for every thread count.
///
/// The entry points are specialized for Float16, Float and Double, so that a caller
/// that is itself generic (the data-parallel layer) reaches the vector code
/// through a type check rather than through witness tables, which runs about
/// a thousand times slower.
public enum BatchKernel {
    /// Training-mode forward: each instance normalized with its own statistics.
    ///
    /// - Parameters:
    ///   - y: (N, C, S…) output.
    ///   - statistics: (N, C) output: mean, biased variance, invstd per instance.
    ///   - x: (N, C, S…) input.
    ///   - gamma: (C,) scale γ, or nil for γ = 1.
    ///   - beta: (C,) shift β, or nil for β = 0.
    ///   - shape: (N, C, S…) of x and y, whatever their layout.
    ///   - eps: ε > 0, added to the variance.
    ///   - threads: worker threads, ≥ 1.
    ///   - stores: how y is written.
    ///   - layout: channels first (N, C, S…) or last (N, S…, C) for x and y;
    ///     the results are the same bits either way.
    @inlinable
    @_specialize(where T == Float16)
    @_specialize(where T == Float)
    @_specialize(where T == Double)
    public static func forward<T: InstanceNormScalar>(
        y: UnsafeMutableBufferPointer<T>,
        statistics: UnsafeMutableBufferPointer<InstanceStatistics>,
        x: UnsafeBufferPointer<T>,
        gamma: UnsafeBufferPointer<T>?, beta: UnsafeBufferPointer<T>?,
        shape: InstanceNormShape, eps: Double, threads: Int = 1, stores: StorePolicy = .automatic,
        layout: TensorLayout = .channelsFirst
    ) {
        checkCounts(shape, x.count, y.count, statistics.count, gamma, beta)
        guard shape.instanceCount > 0 else { return }
        if layout == .channelsLast && SmallInstances.applies(to: shape) {
            return SmallChannelsLast<T>(shape: shape, threads: threads).forward(
                y: y, statistics: statistics, x: x, gamma: gamma, beta: beta, eps: eps, threads: threads, stores: stores)
        }
        if layout == .channelsLast {
            return forwardChannelsLast(
                y: y, statistics: statistics, x: x, gamma: gamma, beta: beta, shape: shape, eps: eps,
                threads: threads, stores: stores)
        }
        if SmallInstances.applies(to: shape) {
            return SmallForward(
                y: y, statistics: statistics, x: x, gamma: gamma, beta: beta, shape: shape, eps: eps, stores: stores
            ).run(threads: threads)
        }
        let batch = ForwardBatch(
            y: y, statistics: statistics, x: x, gamma: gamma, beta: beta, shape: shape, eps: eps, stores: stores)
        let split = WorkSplit(shape: shape, threads: threads)
        if split.splitsInstances {
            batch.forwardSplit(split)
        } else {
            split.run { worker in
                batch.forwardInstances(split.instances(of: worker))
            }
        }
        if batch.streaming { instnorm_store_fence() }
    }

    /// Evaluation-mode forward: every instance of channel c normalized with the
    /// running mean and variance of c, y = γ·(x − running_mean)/sqrt(running_var + ε) + β.
    @inlinable
    @_specialize(where T == Float16)
    @_specialize(where T == Float)
    @_specialize(where T == Double)
    public static func forwardInference<T: InstanceNormScalar>(
        y: UnsafeMutableBufferPointer<T>,
        x: UnsafeBufferPointer<T>,
        runningMean: UnsafeBufferPointer<T>, runningVar: UnsafeBufferPointer<T>,
        gamma: UnsafeBufferPointer<T>?, beta: UnsafeBufferPointer<T>?,
        shape: InstanceNormShape, eps: Double, threads: Int = 1, stores: StorePolicy = .automatic,
        layout: TensorLayout = .channelsFirst
    ) {
        precondition(runningMean.count == shape.channels && runningVar.count == shape.channels)
        let statistics = (0..<shape.channels).map {
            InstanceStatistics(mean: runningMean[$0].widened, variance: runningVar[$0].widened, eps: eps)
        }
        statistics.withUnsafeBufferPointer {
            normalize(y: y, x: x, channelStatistics: $0, gamma: gamma, beta: beta, shape: shape, threads: threads,
                      stores: stores, layout: layout)
        }
    }

    /// y = γ_c·(x − μ_c)·r_c + β_c: every instance of channel c normalized
    /// with `channelStatistics[c]` (the running statistics in evaluation
    /// mode, the batch's in BatchNorm).
    @inlinable
    @_specialize(where T == Float16)
    @_specialize(where T == Float)
    @_specialize(where T == Double)
    public static func normalize<T: InstanceNormScalar>(
        y: UnsafeMutableBufferPointer<T>, x: UnsafeBufferPointer<T>, channelStatistics: UnsafeBufferPointer<InstanceStatistics>,
        gamma: UnsafeBufferPointer<T>?, beta: UnsafeBufferPointer<T>?,
        shape: InstanceNormShape, threads: Int = 1, stores: StorePolicy = .automatic, layout: TensorLayout = .channelsFirst
    ) {
        checkCounts(shape, x.count, y.count, shape.instanceCount, gamma, beta)
        precondition(channelStatistics.count == shape.channels)
        guard shape.instanceCount > 0 else { return }
        let saved = SharedBuffer(channelStatistics), channels = shape.channels
        if let tiling = ChannelTiling.of(shape, layout, T.self), let xBase = x.baseAddress {
            // In the tensor's order, one table of constants for every sample.
            let streaming = stores.streams(y, tensors: 2)
            return writeChannelwise(y, channels: tiling.channels, threads: threads, streaming: streaming, prefetching: false) { scratch in
                for channel in 0..<channels {
                    let constants = InstanceKernel.normalizeConstants(
                        saved.base[channel], gamma: gamma.map { $0[channel].widened } ?? 1,
                        beta: beta.map { $0[channel].widened } ?? 0, as: T.self)
                    for position in 0..<tiling.positions {
                        scratch.setNormalize(constants, channel: channel * tiling.positions + position)
                    }
                }
                for slot in 0..<3 { scratch.replicate(slot) }
            } operation: { scratch in
                TiledNormalizeOperation(x: xBase, scratch: scratch)
            }
        }
        let batch = ForwardBatch(
            y: y, statistics: nil, x: x, gamma: gamma, beta: beta, shape: shape, eps: 1, stores: stores)
        let split = WorkSplit(shape: shape, threads: threads)
        split.run { worker in
            split.forEachPiece(of: worker) { instance, range in batch.normalize(instance, range, saved.base[instance % channels]) }
        }
        if batch.streaming { instnorm_store_fence() }
    }

    /// Backward of the training-mode forward.
    ///
    /// dγ_c and dβ_c receive this batch's Σ_n s2(n,c) and Σ_n s1(n,c), summed
    /// in `Double` in sample order; across ranks they are partial sums that
    /// one allreduce finishes (see `BackwardOverlap` to hide it).
    ///
    /// - Parameters:
    ///   - dx: (N, C, S…) output.
    ///   - dgamma: (C,) output dγ, overwritten.
    ///   - dbeta: (C,) output dβ, overwritten.
    ///   - dy: (N, C, S…) input, the gradient of the loss with respect to y.
    ///   - x: (N, C, S…) input, the forward's.
    ///   - statistics: (N, C) from `forward`.
    ///   - gamma: (C,) or nil for γ = 1.
    ///   - shape: (N, C, S…) of x, dy and dx, whatever their layout.
    ///   - threads: worker threads, ≥ 1.
    ///   - stores: how dx is written.
    ///   - instanceSums: (N, C, 2) output, s1 and s2 of every instance,
    ///     written before `overlap.sumsReady` (for a reduction that must not
    ///     depend on how the batch is split; see the data-parallel layer).
    ///   - combinesParameterGradients: false when the caller needs only
    ///     `instanceSums` (then required): the small-instance kernels then
    ///     leave dγ, dβ zero instead of adding the sums into them (see
    ///     `NormKernel.backward`).
    ///   - overlap: hooks to overlap a reduction of dγ, dβ with the dx pass.
    ///   - layout: channels first or last for dx, dy, x.
    ///   - deposits: where the small-instance kernels hand over s1, s2 as
    ///     they go instead of writing `instanceSums` (see `ShareDeposits`).
    @inlinable
    @_specialize(where T == Float16)
    @_specialize(where T == Float)
    @_specialize(where T == Double)
    public static func backward<T: InstanceNormScalar>(
        dx: UnsafeMutableBufferPointer<T>,
        dgamma: UnsafeMutableBufferPointer<Double>, dbeta: UnsafeMutableBufferPointer<Double>,
        dy: UnsafeBufferPointer<T>, x: UnsafeBufferPointer<T>,
        statistics: UnsafeBufferPointer<InstanceStatistics>,
        gamma: UnsafeBufferPointer<T>?,
        shape: InstanceNormShape, threads: Int = 1, stores: StorePolicy = .automatic,
        instanceSums: UnsafeMutableBufferPointer<Double>? = nil, combinesParameterGradients: Bool = true,
        overlap: BackwardOverlap? = nil, layout: TensorLayout = .channelsFirst, deposits: ShareDeposits? = nil
    ) {
        checkCounts(shape, x.count, dx.count, statistics.count, gamma, nil)
        precondition(dy.count == x.count, "dy and x differ in size")
        precondition(dgamma.count == shape.channels && dbeta.count == shape.channels)
        precondition(instanceSums.map { $0.count == 2 * shape.instanceCount } ?? true, "instanceSums holds 2·N·C values")
        precondition(combinesParameterGradients || instanceSums != nil || deposits != nil, "shares alone need instanceSums or deposits")
        precondition(deposits == nil || SmallInstances.appliesToBackward(shape),
                     "shares are deposited by the small-instance kernels (ShareDeposits.applies)")
        if layout == .channelsLast && SmallInstances.appliesToBackward(shape) {
            return SmallChannelsLast<T>(shape: shape, threads: threads).backward(
                dx: dx, dgamma: dgamma, dbeta: dbeta, dy: dy, x: x, statistics: statistics, gamma: gamma,
                threads: threads, stores: stores, instanceSums: deposits == nil ? instanceSums : nil,
                combines: combinesParameterGradients, overlap: overlap, deposits: deposits)
        }
        if layout == .channelsLast {
            return backwardChannelsLast(
                dx: dx, dgamma: dgamma, dbeta: dbeta, dy: dy, x: x, statistics: statistics, gamma: gamma,
                shape: shape, threads: threads, stores: stores, instanceSums: instanceSums, overlap: overlap)
        }
        if SmallInstances.appliesToBackward(shape) {
            return SmallBackward(dx: dx, dy: dy, x: x, statistics: statistics, gamma: gamma, shape: shape, stores: stores)
                .run(threads: threads, dgamma: dgamma, dbeta: dbeta, instanceSums: deposits == nil ? instanceSums : nil,
                     combines: combinesParameterGradients, overlap: overlap, deposits: deposits)
        }
        let batch = BackwardBatch(
            dx: dx, dy: dy, x: x, statistics: statistics, gamma: gamma, shape: shape, stores: stores, sharing: instanceSums)
        let split = WorkSplit(shape: shape, threads: threads)
        let tails = split.deferredTails(overlap)
        // Pass 1, and pass 2 of every instance outside the tails.
        if split.splitsInstances {
            batch.chunkSumsSplit(split)
        } else {
            split.run { worker in batch.sumsAndDx(of: split.instances(of: worker), tail: tails[worker]) }
        }
        batch.combineParameterGradients(dgamma: dgamma, dbeta: dbeta, threads: threads)
        overlap?.sumsReady()
        // Pass 2 of the tails (or of everything, when instances are split).
        split.writeDeferred(tails: tails, overlap: overlap) { batch.inputGradient($0, $1) }
        if batch.streaming { instnorm_store_fence() }
    }

    /// Sizes are the caller's contract, not user input: a mismatch is a bug.
    @inlinable
    static func checkCounts<T>(
        _ shape: InstanceNormShape, _ input: Int, _ output: Int, _ perInstance: Int,
        _ gamma: UnsafeBufferPointer<T>?, _ beta: UnsafeBufferPointer<T>?
    ) {
        precondition(input == shape.elementCount && output == shape.elementCount,
                     "tensor sizes \(input), \(output) do not match \(shape)")
        precondition(perInstance == shape.instanceCount, "per-instance buffer does not hold N·C entries")
        precondition(gamma.map { $0.count == shape.channels } ?? true, "gamma does not hold C entries")
        precondition(beta.map { $0.count == shape.channels } ?? true, "beta does not hold C entries")
    }
}

extension WorkSplit {
    /// Per worker, the last units of its run whose dx waits for
    /// `overlap.sumsReady`: enough to hold `overlap.tailElements` values (at
    /// least one unit when that is positive); none when units are split.
    @inlinable
    func deferredTails(_ overlap: BackwardOverlap?) -> [Range<Int>] {
        (0..<workers).map { worker in
            let units = instances(of: worker), elements = overlap?.tailElements ?? 0
            guard !splitsInstances, elements > 0 else { return units.upperBound..<units.upperBound }
            let count = min(units.count, (elements + spatialCount - 1) / spatialCount)
            return units.upperBound - count..<units.upperBound
        }
    }

    /// The dx pass after `overlap.sumsReady`: each worker's `tails` (whole
    /// units), or every piece when units are split, written by
    /// `write(unit, range)` in runs of `overlap.progressInterval` values;
    /// worker 0 calls `overlap.progress` after each (MPI without a progress
    /// thread advances a non-blocking collective only inside MPI calls).
    @inlinable
    func writeDeferred(tails: [Range<Int>], overlap: BackwardOverlap?, _ write: @Sendable (Int, Range<Int>) -> Void) {
        run { worker in
            var sinceProgress = 0
            let pieces: (((Int, Range<Int>) -> Void) -> Void) = splitsInstances
                ? { forEachPiece(of: worker, $0) }
                : { body in for unit in tails[worker] { body(unit, 0..<spatialCount) } }
            pieces { unit, range in
                var start = range.lowerBound
                while start < range.upperBound {
                    let end = min(start + (overlap?.progressInterval ?? range.count), range.upperBound)
                    write(unit, start..<end)
                    sinceProgress += end - start
                    if worker == 0, let overlap, sinceProgress >= overlap.progressInterval {
                        overlap.progress()
                        sinceProgress = 0
                    }
                    start = end
                }
            }
        }
    }

    /// Calls body(instance, element range) for each piece of work of one
    /// worker: its whole instances, or its chunks.
    @inlinable
    func forEachPiece(of worker: Int, _ body: (Int, Range<Int>) -> Void) {
        if splitsInstances {
            for chunk in chunks(of: worker) {
                let (instance, range) = elements(ofChunk: chunk)
                body(instance, range)
            }
        } else {
            for instance in instances(of: worker) { body(instance, 0..<spatialCount) }
        }
    }
}
