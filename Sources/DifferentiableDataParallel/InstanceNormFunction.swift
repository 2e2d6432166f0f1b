import _Differentiation
import DataParallel
import InstanceNorm

/// InstanceNorm of this rank's slice, y = γ·(x − μ)/sqrt(σ² + ε) + β per
/// instance, with the statistics of each instance (training mode): the
/// layer's forward, and, under `valueWithGradient`, the layer's backward.
///
/// - `x`: this rank's slice, `layer.localShape` in `layer.layout`.
/// - `gamma`, `beta`: shape (C), the same on every rank.
///
/// The pullback, given this rank's cotangent dy, returns this rank's dx
/// and the dγ, dβ of the *whole batch*: Σ over every rank's samples,
/// summed across ranks by the layer (reproducibly by default, see
/// `ParameterGradientReduction`), the same on every rank. So when every
/// rank's dy is the gradient of one global loss with respect to its own
/// slice (a loss that ends in ``globalSumOfSquares(_:on:)``), dγ and dβ
/// are that loss's gradients: do not sum them across ranks again.
///
/// Collective: the pullback is (the forward is not). Every rank must run
/// its pullback, the same number of times and in the same order relative
/// to the other collective steps; in practice, every rank differentiates
/// the same function with `valueWithGradient`. A pullback reached by no
/// gradient (dy is `Tensor.zero`) still joins the collective. An MPI
/// failure ends the job (exit code 70): a pullback cannot throw.
///
/// The running statistics are not updated; call
/// `DataParallelInstanceNorm.updateRunningStatistics` for that.
@differentiable(reverse, wrt: (x, gamma, beta))
public func instanceNorm<Scalar>(
    _ x: Tensor<Scalar>, gamma: Tensor<Scalar>, beta: Tensor<Scalar>, layer: DataParallelInstanceNorm<Scalar>
) -> Tensor<Scalar> {
    InstanceNormStep(layer: layer, x: x, gamma: gamma, beta: beta).y
}

@usableFromInline
@derivative(of: instanceNorm, wrt: (x, gamma, beta))
func instanceNormVJP<Scalar>(
    _ x: Tensor<Scalar>, gamma: Tensor<Scalar>, beta: Tensor<Scalar>, layer: DataParallelInstanceNorm<Scalar>
) -> (value: Tensor<Scalar>, pullback: (Tensor<Scalar>) -> (Tensor<Scalar>, Tensor<Scalar>, Tensor<Scalar>)) {
    let step = InstanceNormStep(layer: layer, x: x, gamma: gamma, beta: beta)
    return (step.y, step.backward)
}

/// One forward of the layer, with what its backward needs: the input, γ
/// and every instance's statistics.
///
/// Each tensor is copied once into or out of a `TensorBuffer` (64-byte
/// aligned, as the package's own buffers are), which keeps the pointers'
/// lifetimes plain: a pass over memory, next to the forward's two and the
/// backward's three. For speed, the layer's buffer API copies nothing.
struct InstanceNormStep<Scalar: DataParallelScalar> {
    let layer: DataParallelInstanceNorm<Scalar>
    let shape: [Int]
    let y: Tensor<Scalar>
    private let x: TensorBuffer<Scalar>
    private let gamma: TensorBuffer<Scalar>
    private let statistics: TensorBuffer<InstanceStatistics>

    init(layer: DataParallelInstanceNorm<Scalar>, x: Tensor<Scalar>, gamma: Tensor<Scalar>, beta: Tensor<Scalar>) {
        let channels = layer.globalShape.channels
        shape = layer.localShape.dimensions(in: layer.layout)
        precondition(x.shape == shape, "x has shape \(x.shape); this rank's slice is \(shape)")
        precondition(gamma.shape == [channels] && beta.shape == [channels],
                     "gamma and beta need shape [\(channels)], got \(gamma.shape) and \(beta.shape)")
        self.layer = layer
        self.x = TensorBuffer(x.scalars)
        self.gamma = TensorBuffer(gamma.scalars)
        statistics = TensorBuffer(
            repeating: InstanceStatistics(mean: 0, variance: 0, invstd: 0), count: layer.localShape.instanceCount)
        let y = TensorBuffer<Scalar>(repeating: 0, count: x.scalars.count), beta = TensorBuffer(beta.scalars)
        layer.forward(
            y: y.elements, statistics: statistics.elements, x: self.x.readOnly, gamma: self.gamma.readOnly,
            beta: beta.readOnly)
        self.y = Tensor(shape: shape, scalars: y.array)
    }

    /// (dx, dγ, dβ) for this rank's `dy`; collective.
    func backward(_ dy: Tensor<Scalar>) -> (Tensor<Scalar>, Tensor<Scalar>, Tensor<Scalar>) {
        let dy = dy.materialized(shape: shape)
        precondition(dy.shape == shape, "dy has shape \(dy.shape), y has \(shape)")
        let channels = layer.globalShape.channels
        let dx = TensorBuffer<Scalar>(repeating: 0, count: x.count), dyBuffer = TensorBuffer(dy.scalars)
        let dgamma = TensorBuffer<Scalar>(repeating: 0, count: channels)
        let dbeta = TensorBuffer<Scalar>(repeating: 0, count: channels)
        collective(on: layer.communicator) {
            try layer.backward(
                dx: dx.elements, dgamma: dgamma.elements, dbeta: dbeta.elements, dy: dyBuffer.readOnly,
                x: x.readOnly, statistics: statistics.readOnly, gamma: gamma.readOnly)
        }
        return (Tensor(shape: shape, scalars: dx.array), Tensor(shape: [channels], scalars: dgamma.array),
                Tensor(shape: [channels], scalars: dbeta.array))
    }
}
