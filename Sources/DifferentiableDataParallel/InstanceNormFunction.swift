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
/// `DataParallelInstanceNorm.updateRunningStatistics` for that. The same
/// as ``normalize(_:gamma:beta:layer:)`` on `layer.norm`, which also takes
/// GroupNorm, LayerNorm and BatchNorm.
@differentiable(reverse, wrt: (x, gamma, beta))
public func instanceNorm<Scalar>(
    _ x: Tensor<Scalar>, gamma: Tensor<Scalar>, beta: Tensor<Scalar>, layer: DataParallelInstanceNorm<Scalar>
) -> Tensor<Scalar> {
    NormStep(layer: layer.norm, x: x, gamma: gamma, beta: beta).y
}

@usableFromInline
@derivative(of: instanceNorm, wrt: (x, gamma, beta))
func instanceNormVJP<Scalar>(
    _ x: Tensor<Scalar>, gamma: Tensor<Scalar>, beta: Tensor<Scalar>, layer: DataParallelInstanceNorm<Scalar>
) -> (value: Tensor<Scalar>, pullback: (Tensor<Scalar>) -> (Tensor<Scalar>, Tensor<Scalar>, Tensor<Scalar>)) {
    let step = NormStep(layer: layer.norm, x: x, gamma: gamma, beta: beta)
    return (step.y, step.backward)
}
