import _Differentiation
import DataParallel
import MPI
import ReproducibleSum

/// Σ x² over the elements of every rank's `x`: a loss over the whole batch,
/// such as the squared error `globalSumOfSquares(prediction - target, on: world)`.
///
/// Each square is computed in `Double` and added exactly to one
/// `ReproducibleSums`, and one allreduce adds every rank's: the exact sum
/// rounded once, so every rank gets the same bits, at every rank count and
/// for every split of the batch.
///
/// This is where a data-parallel loss becomes one value that every rank
/// holds. Its pullback hands each rank the gradient with respect to its
/// own slice, 2·s·x for the cotangent s, and sends nothing: each rank's
/// s stands for the same global loss, so `valueWithGradient` (which seeds
/// s = 1 on every rank) differentiates that one loss, not P copies of it.
/// Seed every rank with the same s.
///
/// Collective: the forward is (one allreduce of one reproducible sum); the
/// pullback is not. An MPI failure ends the job (exit code 70).
@differentiable(reverse, wrt: x)
public func globalSumOfSquares<Scalar>(_ x: Tensor<Scalar>, on communicator: Communicator) -> Double {
    let sums = ReproducibleSums(count: 1)
    for value in x.scalars { sums.add(value.widened * value.widened, to: 0) }
    collective(on: communicator) { try communicator.allreduce(sums) }
    return sums.sum(at: 0)
}

@usableFromInline
@derivative(of: globalSumOfSquares, wrt: x)
func globalSumOfSquaresVJP<Scalar>(
    _ x: Tensor<Scalar>, on communicator: Communicator
) -> (value: Double, pullback: (Double) -> Tensor<Scalar>) {
    (globalSumOfSquares(x, on: communicator), { seed in
        x.isZeroOfEveryShape
            ? .zero : Tensor(shape: x.shape, scalars: x.scalars.map { Scalar(2 * seed * $0.widened) })
    })
}
