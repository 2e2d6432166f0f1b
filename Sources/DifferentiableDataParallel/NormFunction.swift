import _Differentiation
import DataParallel
import InstanceNorm

/// The norm of `layer` (instance, group, layer or a synchronized batch
/// norm; `layer.globalShape.normalization`) of this rank's slice, in
/// training mode: y = γ·(x − μ)/sqrt(σ² + ε) + β with the statistics of
/// each row (an instance, a group, a layer-norm row) or, for BatchNorm, of
/// each channel over the whole batch on every rank.
///
/// - `x`: this rank's slice, `layer.localShape.dimensions(in: layer.layout)`.
/// - `gamma`, `beta`: `layer.globalShape.parameterDimensions` ((C) or the
///   normalized dimensions), the same on every rank.
///
/// The pullback, given this rank's cotangent dy, returns this rank's dx
/// and the dγ, dβ of the *whole batch*, summed across ranks by the layer
/// and the same bits at every rank count (see ``instanceNorm(_:gamma:beta:layer:)``
/// for what that means for a loss). For BatchNorm, dx also depends on the
/// other ranks' dy through the batch's Σ dy and Σ dy·x̂.
///
/// Collective: the pullback always; for BatchNorm the forward too, whose
/// statistics are summed across ranks. Every rank must make the same calls
/// in the same order, also a rank that holds no samples. An MPI failure ends
/// the job (exit code 70): neither can throw. The running statistics are not
/// updated (``normalize(_:gamma:beta:layer:updating:)`` does that).
@differentiable(reverse, wrt: (x, gamma, beta))
public func normalize<Scalar>(
    _ x: Tensor<Scalar>, gamma: Tensor<Scalar>, beta: Tensor<Scalar>, layer: DataParallelNorm<Scalar>
) -> Tensor<Scalar> {
    NormStep(layer: layer, x: x, gamma: gamma, beta: beta).y
}

@usableFromInline
@derivative(of: normalize, wrt: (x, gamma, beta))
func normalizeVJP<Scalar>(
    _ x: Tensor<Scalar>, gamma: Tensor<Scalar>, beta: Tensor<Scalar>, layer: DataParallelNorm<Scalar>
) -> (value: Tensor<Scalar>, pullback: (Tensor<Scalar>) -> (Tensor<Scalar>, Tensor<Scalar>, Tensor<Scalar>)) {
    let step = NormStep(layer: layer, x: x, gamma: gamma, beta: beta)
    return (step.y, step.backward)
}

/// One forward of a layer, with what its backward needs: the input, γ and
/// the saved statistics.
///
/// Each tensor is copied once into or out of a `TensorBuffer` (64-byte
/// aligned, as the package's own buffers are), which keeps the pointers'
/// lifetimes plain: a pass over memory, next to the forward's two and the
/// backward's three. For speed, the layer's buffer API copies nothing.
struct NormStep<Scalar: DataParallelScalar> {
    let layer: DataParallelNorm<Scalar>
    let shape: [Int]
    let y: Tensor<Scalar>
    private let x: TensorBuffer<Scalar>
    private let gamma: TensorBuffer<Scalar>
    private let statistics: TensorBuffer<InstanceStatistics>

    /// The forward; with `running`, then the update of those statistics
    /// from the batch's (collective), except for an empty batch.
    init(
        layer: DataParallelNorm<Scalar>, x: Tensor<Scalar>, gamma: Tensor<Scalar>, beta: Tensor<Scalar>,
        updating running: RunningMeanAndVariance<Scalar>? = nil
    ) {
        running?.check(layer)
        let (input, scale, offset) = ForwardInputs.checked(layer: layer, x: x, gamma: gamma, beta: beta)
        shape = input.shape
        let statistics = TensorBuffer(
            repeating: InstanceStatistics(mean: 0, variance: 0, invstd: 0), count: layer.localShape.statisticsCount)
        let y = TensorBuffer<Scalar>(repeating: 0, count: x.scalars.count)
        collective(on: layer.communicator) {
            try layer.forward(
                y: y.elements, statistics: statistics.elements, x: input.buffer.readOnly, gamma: scale.readOnly,
                beta: offset.readOnly)
            if let running, layer.globalShape.batch > 0 { try running.update(layer: layer, statistics: statistics.readOnly) }
        }
        self.layer = layer
        (self.x, self.gamma, self.statistics) = (input.buffer, scale, statistics)
        self.y = Tensor(shape: shape, scalars: y.array)
    }

    /// (dx, dγ, dβ) for this rank's `dy`; collective.
    func backward(_ dy: Tensor<Scalar>) -> (Tensor<Scalar>, Tensor<Scalar>, Tensor<Scalar>) {
        let dy = dy.materialized(shape: shape)
        precondition(dy.shape == shape, "dy has shape \(dy.shape), y has \(shape)")
        let parameters = layer.globalShape.parameterDimensions, parameterCount = layer.globalShape.parameterCount
        let dx = TensorBuffer<Scalar>(repeating: 0, count: x.count), dyBuffer = TensorBuffer(dy.scalars)
        let dgamma = TensorBuffer<Scalar>(repeating: 0, count: parameterCount)
        let dbeta = TensorBuffer<Scalar>(repeating: 0, count: parameterCount)
        collective(on: layer.communicator) {
            try layer.backward(
                dx: dx.elements, dgamma: dgamma.elements, dbeta: dbeta.elements, dy: dyBuffer.readOnly,
                x: x.readOnly, statistics: statistics.readOnly, gamma: gamma.readOnly)
        }
        return (Tensor(shape: shape, scalars: dx.array), Tensor(shape: parameters, scalars: dgamma.array),
                Tensor(shape: parameters, scalars: dbeta.array))
    }
}

/// x, γ and β of a forward of `layer`, their shapes checked, copied into
/// aligned buffers: x's with its shape in the layer's layout.
enum ForwardInputs {
    static func checked<Scalar: DataParallelScalar>(
        layer: DataParallelNorm<Scalar>, x: Tensor<Scalar>, gamma: Tensor<Scalar>, beta: Tensor<Scalar>
    ) -> (x: (shape: [Int], buffer: TensorBuffer<Scalar>), gamma: TensorBuffer<Scalar>, beta: TensorBuffer<Scalar>) {
        let shape = layer.localShape.dimensions(in: layer.layout), parameters = layer.globalShape.parameterDimensions
        precondition(x.shape == shape, "x has shape \(x.shape); this rank's slice is \(shape)")
        precondition(gamma.shape == parameters && beta.shape == parameters,
                     "gamma and beta need shape \(parameters), got \(gamma.shape) and \(beta.shape)")
        return ((shape, TensorBuffer(x.scalars)), TensorBuffer(gamma.scalars), TensorBuffer(beta.scalars))
    }
}
