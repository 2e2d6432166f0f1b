import _Differentiation
import DataParallel
import InstanceNorm

/// The running mean and variance of an InstanceNorm or BatchNorm layer,
/// (C) each in the layer's precision, as PyTorch keeps them in its
/// `running_mean` and `running_var` buffers: updated by every training
/// forward of ``normalize(_:gamma:beta:layer:updating:)``,
///
///     mean ← (1 − momentum)·mean + momentum·μ_batch
///     variance ← (1 − momentum)·variance + momentum·σ²_batch·n/(n − 1)
///
/// (μ_batch and σ²_batch the batch's: for InstanceNorm the means over the
/// global batch of every instance's statistics, n = M; for BatchNorm each
/// channel's over its N·M values, n = N·M), and used by
/// ``normalizeForInference(_:gamma:beta:layer:statistics:)``.
///
/// Every rank holds a copy, the same bits at every rank count: the batch's
/// sums are reproducible sums across ranks.
public final class RunningMeanAndVariance<Scalar: DataParallelScalar> {
    /// The weight of each batch's statistics, in [0, 1].
    public let momentum: Double
    private let means: TensorBuffer<Scalar>
    private let variances: TensorBuffer<Scalar>

    /// The running mean, (C).
    public var mean: Tensor<Scalar> { Tensor(shape: [means.count], scalars: means.array) }
    /// The running (unbiased) variance, (C).
    public var variance: Tensor<Scalar> { Tensor(shape: [variances.count], scalars: variances.array) }

    /// Mean 0 and variance 1 in every channel, as PyTorch starts them.
    public convenience init(channels: Int, momentum: Double = 0.1) {
        self.init(
            mean: Tensor(shape: [channels], scalars: Array(repeating: 0, count: channels)),
            variance: Tensor(shape: [channels], scalars: Array(repeating: 1, count: channels)), momentum: momentum)
    }

    /// Statistics carried over, for example from a checkpoint.
    public init(mean: Tensor<Scalar>, variance: Tensor<Scalar>, momentum: Double = 0.1) {
        precondition(mean.shape.count == 1 && mean.shape == variance.shape,
                     "the running mean and variance are (C) each, got \(mean.shape) and \(variance.shape)")
        precondition((0...1).contains(momentum), "momentum must be in [0, 1], got \(momentum)")
        self.momentum = momentum
        means = TensorBuffer(mean.scalars)
        variances = TensorBuffer(variance.scalars)
    }

    /// One training step's update from the saved `statistics` of `layer`'s
    /// forward; collective.
    func update(layer: DataParallelNorm<Scalar>, statistics: UnsafeBufferPointer<InstanceStatistics>) throws {
        try layer.updateRunningStatistics(
            runningMean: means.elements, runningVar: variances.elements, statistics: statistics, momentum: momentum)
    }

    /// Runs `body` with the mean and the variance.
    func withBuffers<Result>(_ body: (UnsafeBufferPointer<Scalar>, UnsafeBufferPointer<Scalar>) -> Result) -> Result {
        body(means.readOnly, variances.readOnly)
    }

    /// Checks that `layer` keeps running statistics of this many channels.
    func check(_ layer: DataParallelNorm<Scalar>) {
        let shape = layer.globalShape
        precondition(shape.normalization == .instance || shape.normalization == .batch,
                     "running statistics belong to InstanceNorm and BatchNorm, not to \(shape.normalization) norm")
        precondition(means.count == shape.parameterCount,
                     "the running statistics have \(means.count) channels, the layer \(shape.parameterCount)")
    }
}

/// ``normalize(_:gamma:beta:layer:)`` in training mode that also updates
/// `statistics` with the batch's (see ``RunningMeanAndVariance``), once per
/// call, before it returns. The forward is then collective for InstanceNorm
/// too (one allreduce of 2·C reproducible sums). InstanceNorm needs M ≥ 2
/// and BatchNorm N·M ≥ 2 values per channel (an empty batch leaves the
/// statistics as they were), for the unbiased variance.
@differentiable(reverse, wrt: (x, gamma, beta))
public func normalize<Scalar>(
    _ x: Tensor<Scalar>, gamma: Tensor<Scalar>, beta: Tensor<Scalar>, layer: DataParallelNorm<Scalar>,
    updating statistics: RunningMeanAndVariance<Scalar>
) -> Tensor<Scalar> {
    NormStep(layer: layer, x: x, gamma: gamma, beta: beta, updating: statistics).y
}

@usableFromInline
@derivative(of: normalize(_:gamma:beta:layer:updating:), wrt: (x, gamma, beta))
func normalizeUpdatingVJP<Scalar>(
    _ x: Tensor<Scalar>, gamma: Tensor<Scalar>, beta: Tensor<Scalar>, layer: DataParallelNorm<Scalar>,
    updating statistics: RunningMeanAndVariance<Scalar>
) -> (value: Tensor<Scalar>, pullback: (Tensor<Scalar>) -> (Tensor<Scalar>, Tensor<Scalar>, Tensor<Scalar>)) {
    let step = NormStep(layer: layer, x: x, gamma: gamma, beta: beta, updating: statistics)
    return (step.y, step.backward)
}

/// Evaluation mode of InstanceNorm or BatchNorm: y = γ·(x − mean)/sqrt(variance + ε) + β
/// with the running `statistics`, this rank's slice alone (not collective,
/// not differentiated). x has `layer.localShape.dimensions(in: layer.layout)`,
/// γ and β (C).
public func normalizeForInference<Scalar>(
    _ x: Tensor<Scalar>, gamma: Tensor<Scalar>, beta: Tensor<Scalar>, layer: DataParallelNorm<Scalar>,
    statistics: RunningMeanAndVariance<Scalar>
) -> Tensor<Scalar> {
    statistics.check(layer)
    let (input, scale, offset) = ForwardInputs.checked(layer: layer, x: x, gamma: gamma, beta: beta)
    let y = TensorBuffer<Scalar>(repeating: 0, count: x.scalars.count)
    statistics.withBuffers { mean, variance in
        layer.forwardInference(
            y: y.elements, x: input.buffer.readOnly, runningMean: mean, runningVar: variance, gamma: scale.readOnly,
            beta: offset.readOnly)
    }
    return Tensor(shape: input.shape, scalars: y.array)
}
