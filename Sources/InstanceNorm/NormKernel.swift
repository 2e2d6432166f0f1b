import _InstanceNormShims

/// Forward and backward of every member of the normalization family
/// (`Normalization`) over a batch held by one process, spread over
/// `threads` workers; the same bits for every thread count.
///
/// InstanceNorm, and GroupNorm with G = C, run `BatchKernel` (so G = C gives
/// InstanceNorm's bits); GroupNorm with G < C and LayerNorm run the same
/// per-row pieces (`InstanceKernel.moments`, `InstanceKernel.normalize`,
/// `InstanceKernel.gradientSums`, the streamed elementwise writer) over their
/// own rows: a group of C/G channels, a layer-norm row of D values.
///
/// Buffers: x, y, dy, dx as `shape.dimensions` (channels last for instance
/// and group norm with `layout: .channelsLast`); statistics (`shape.rowCount`
/// rows: (N, C), (N, G) or x.shape[:-K]); γ, β, dγ, dβ of
/// `shape.parameterCount` entries.
public enum NormKernel {
    /// Training-mode forward: every row normalized with its own statistics.
    ///
    /// - Parameters:
    ///   - y: output, the shape of x.
    ///   - statistics: output, mean, biased variance and invstd per row.
    ///   - x: input.
    ///   - gamma: `shape.parameterCount` entries, or nil for γ = 1.
    ///   - beta: `shape.parameterCount` entries, or nil for β = 0.
    ///   - shape: the norm and x's logical dimensions.
    ///   - eps: ε > 0, added to the variance.
    ///   - threads: worker threads, ≥ 1.
    ///   - stores: how y is written.
    ///   - layout: channels first or last (instance and group norm; layer norm is channels first).
    @inlinable
    @_specialize(where T == Float16)
    @_specialize(where T == Float)
    @_specialize(where T == Double)
    public static func forward<T: InstanceNormScalar>(
        y: UnsafeMutableBufferPointer<T>, statistics: UnsafeMutableBufferPointer<InstanceStatistics>,
        x: UnsafeBufferPointer<T>, gamma: UnsafeBufferPointer<T>?, beta: UnsafeBufferPointer<T>?,
        shape: NormShape, eps: Double, threads: Int = 1, stores: StorePolicy = .automatic,
        layout: TensorLayout = .channelsFirst
    ) {
        checkCounts(shape, x.count, y.count, statistics.count, gamma, beta)
        switch route(shape, layout) {
        case .batch(let channelShape):
            guard channelShape.batch > 0 else { return }
            BatchNormKernel.forward(
                y: y, statistics: statistics, x: x, gamma: gamma, beta: beta, shape: channelShape,
                count: channelShape.batch * channelShape.spatialCount,
                shifts: BatchNormKernel.shifts(of: x, shape: channelShape, layout: layout), eps: eps, threads: threads,
                stores: stores, layout: layout
            ) { BatchNormKernel.sampleOrderTotals($0, channels: channelShape.channels) }
        case .instance(let channelShape):
            BatchKernel.forward(
                y: y, statistics: statistics, x: x, gamma: gamma, beta: beta, shape: channelShape, eps: eps,
                threads: threads, stores: stores, layout: layout)
        case .group(let channelShape, let groups):
            GroupBatch(x: x, gamma: gamma, shape: channelShape, groups: groups,
                       streaming: stores.streams(y, tensors: 2, runsOf: GroupBatch<T>.outputRun(channelShape, groups: groups, backward: false)))
                .forward(y: y, statistics: statistics, beta: beta, eps: eps, threads: threads)
        case .groupChannelsLast(let channelShape, let groups):
            ChannelsLastGroups(shape: channelShape, groups: groups, threads: threads)
                .forward(y: y, statistics: statistics, x: x, gamma: gamma, beta: beta, eps: eps)
        case .layer:
            LayerBatch(x: x, gamma: gamma, beta: beta, shape: shape, streaming: stores.streams(y, tensors: 2, runsOf: shape.rowLength))
                .forward(y: y, statistics: statistics, eps: eps, threads: threads)
        }
    }

    /// Backward of the training-mode forward.
    ///
    /// dγ, dβ receive this batch's Σ over samples, in `Double`, in sample
    /// order; `parameterSums` (N, P, 2) receives each sample's share,
    /// (Σ dy, Σ dy·x̂) per parameter, before `overlap.sumsReady` (for a
    /// reduction across ranks that must not depend on how the batch is split).
    ///
    /// - Parameters:
    ///   - dx: output, the shape of x.
    ///   - dgamma: `shape.parameterCount` outputs, overwritten.
    ///   - dbeta: `shape.parameterCount` outputs, overwritten.
    ///   - dy: the gradient of the loss with respect to y.
    ///   - x: the forward's input.
    ///   - statistics: the forward's statistics.
    ///   - gamma: `shape.parameterCount` entries, or nil for γ = 1.
    ///   - shape: the norm and x's logical dimensions.
    ///   - threads: worker threads, ≥ 1.
    ///   - stores: how dx is written.
    ///   - parameterSums: 2·N·P outputs, or nil.
    ///   - combinesParameterGradients: false when the caller needs only
    ///     `parameterSums` (then required) and adds them up itself, as the
    ///     exact sums across ranks do: InstanceNorm's small-instance kernels
    ///     and LayerNorm then skip adding them into dγ, dβ (a pass over the
    ///     shares) and leave dγ, dβ zero; the others still fill them.
    ///   - overlap: hooks to overlap a reduction of dγ, dβ with the dx pass.
    ///   - layout: channels first or last (instance and group norm).
    ///   - deposits: where the workers hand over the shares as they go,
    ///     instead of writing `parameterSums`, where `ShareDeposits.applies`;
    ///     every share is deposited before `overlap.sumsReady`.
    @inlinable
    @_specialize(where T == Float16)
    @_specialize(where T == Float)
    @_specialize(where T == Double)
    public static func backward<T: InstanceNormScalar>(
        dx: UnsafeMutableBufferPointer<T>,
        dgamma: UnsafeMutableBufferPointer<Double>, dbeta: UnsafeMutableBufferPointer<Double>,
        dy: UnsafeBufferPointer<T>, x: UnsafeBufferPointer<T>,
        statistics: UnsafeBufferPointer<InstanceStatistics>, gamma: UnsafeBufferPointer<T>?,
        shape: NormShape, threads: Int = 1, stores: StorePolicy = .automatic,
        parameterSums: UnsafeMutableBufferPointer<Double>? = nil, combinesParameterGradients: Bool = true,
        overlap: BackwardOverlap? = nil, layout: TensorLayout = .channelsFirst, deposits: ShareDeposits? = nil
    ) {
        checkCounts(shape, x.count, dx.count, statistics.count, gamma, nil)
        precondition(dy.count == x.count, "dy and x differ in size")
        precondition(dgamma.count == shape.parameterCount && dbeta.count == shape.parameterCount)
        precondition(combinesParameterGradients || parameterSums != nil || deposits != nil, "shares alone need parameterSums or deposits")
        precondition(deposits == nil || ShareDeposits.applies(to: shape, layout: layout), "no kernel of this shape deposits its shares")
        precondition(parameterSums.map { $0.count == 2 * shape.batch * shape.parameterCount } ?? true,
                     "parameterSums holds 2·N·P values")
        switch route(shape, layout) {
        case .batch(let channelShape):
            guard channelShape.batch > 0 else { return }
            let shares = parameterSums ?? .allocate(capacity: 2 * channelShape.instanceCount)
            defer { if parameterSums == nil { shares.deallocate() } }
            BatchNormKernel.backward(
                dx: dx, dgamma: dgamma, dbeta: dbeta, dy: dy, x: x, statistics: statistics, gamma: gamma,
                parameterSums: shares, shape: channelShape, count: channelShape.batch * channelShape.spatialCount,
                threads: threads, stores: stores, layout: layout
            ) { BatchNormKernel.sampleOrderTotals($0, channels: channelShape.channels) }
            overlap?.sumsReady()
        case .instance(let channelShape):
            BatchKernel.backward(
                dx: dx, dgamma: dgamma, dbeta: dbeta, dy: dy, x: x, statistics: statistics, gamma: gamma,
                shape: channelShape, threads: threads, stores: stores, instanceSums: parameterSums,
                combinesParameterGradients: combinesParameterGradients, overlap: overlap, layout: layout, deposits: deposits)
        case .group(let channelShape, let groups):
            GroupBatch(x: x, gamma: gamma, shape: channelShape, groups: groups,
                       streaming: stores.streams(dx, tensors: 3, runsOf: GroupBatch<T>.outputRun(channelShape, groups: groups, backward: true)))
                .backward(
                    dx: dx, dgamma: dgamma, dbeta: dbeta, dy: dy, statistics: statistics, segmentSums: parameterSums,
                    threads: threads, overlap: overlap)
        case .groupChannelsLast(let channelShape, let groups):
            ChannelsLastGroups(shape: channelShape, groups: groups, threads: threads).backward(
                dx: dx, dgamma: dgamma, dbeta: dbeta, dy: dy, x: x, statistics: statistics, gamma: gamma,
                parameterSums: parameterSums, overlap: overlap)
        case .layer:
            LayerBatch(x: x, gamma: gamma, beta: nil, shape: shape, streaming: stores.streams(dx, tensors: 3, runsOf: shape.rowLength))
                .backward(
                    dx: dx, dgamma: dgamma, dbeta: dbeta, dy: dy, statistics: statistics, parameterSums: parameterSums,
                    combines: combinesParameterGradients, threads: threads, overlap: overlap)
        }
    }

    /// The bytes of scratch a channels-last GroupNorm takes per worker
    /// thread (one sample of x, dy and dx, transposed); 0 for the others.
    public static func scratchBytes<T: InstanceNormScalar>(shape: NormShape, layout: TensorLayout, as _: T.Type) -> Int {
        switch route(shape, layout) {
        case .groupChannelsLast: 3 * shape.sampleElementCount * MemoryLayout<T>.stride
        case .instance(let channelShape) where layout == .channelsLast:
            BatchKernel.channelsLastScratchBytes(channels: channelShape.channels, as: T.self)
        default: 0
        }
    }

    /// Which kernels a call runs.
    @usableFromInline
    enum Route {
        case batch(InstanceNormShape)
        case instance(InstanceNormShape)
        case group(InstanceNormShape, groups: Int)
        case groupChannelsLast(InstanceNormShape, groups: Int)
        case layer
    }

    @inlinable
    static func route(_ shape: NormShape, _ layout: TensorLayout) -> Route {
        switch shape.normalization {
        case .batch:
            return .batch(shape.channelShape!)
        case .instance:
            return .instance(shape.channelShape!)
        case .group(let groups):
            let channelShape = shape.channelShape!
            if groups == channelShape.channels { return .instance(channelShape) }
            // With one position the two layouts are the same memory.
            let channelsFirst = layout == .channelsFirst || channelShape.spatialCount == 1
            return channelsFirst ? .group(channelShape, groups: groups) : .groupChannelsLast(channelShape, groups: groups)
        case .layer:
            precondition(layout == .channelsFirst, "layer norm reads its natural layout: the normalized dimensions last")
            return .layer
        }
    }

    /// Sizes are the caller's contract, not user input: a mismatch is a bug.
    @inlinable
    static func checkCounts<T>(
        _ shape: NormShape, _ input: Int, _ output: Int, _ rows: Int,
        _ gamma: UnsafeBufferPointer<T>?, _ beta: UnsafeBufferPointer<T>?
    ) {
        precondition(input == shape.elementCount && output == shape.elementCount,
                     "tensor sizes \(input), \(output) do not match \(shape)")
        precondition(rows == shape.statisticsCount, "the statistics hold \(rows) rows, \(shape) has \(shape.statisticsCount)")
        precondition(gamma.map { $0.count == shape.parameterCount } ?? true, "gamma does not hold \(shape.parameterCount) entries")
        precondition(beta.map { $0.count == shape.parameterCount } ?? true, "beta does not hold \(shape.parameterCount) entries")
    }
}
