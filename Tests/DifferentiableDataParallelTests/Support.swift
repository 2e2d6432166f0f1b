import DataParallel
import DifferentiableDataParallel
import InstanceNorm
import MPI
import TestSupport
import Testing
import _Differentiation

/// (f(p + h·e_i) − f(p − h·e_i)) / 2h for every coordinate i of `point`:
/// the gradient of f by central differences, computed from f's values
/// alone, so it is independent of every pullback under test.
func centralDifferences(at point: [Double], step: Double = 1e-5, _ f: ([Double]) -> Double) -> [Double] {
    point.indices.map { index in
        var above = point, below = point
        above[index] += step
        below[index] -= step
        return (f(above) - f(below)) / (2 * step)
    }
}

/// How far a pullback's gradient may be from central differences with
/// step h = 1e-5 on values of size ~1, as a scaled error |ad − fd|/(|fd| + 1):
/// the truncation error h²/6·|f'''| is ~1e-10·|f'''| (|f'''| ≲ 100 here:
/// unit-spread instances, r ≈ 1), and rounding adds ε·|f|/h ≈ 2e-11·|f|
/// (|f| ≲ 100). 1e-6 leaves two orders of margin, while a wrong derivative
/// (a missing term, a factor 2, a gradient summed twice) is off by O(1).
let finiteDifferenceTolerance = 1e-6

/// Σ a·b, the linear functional whose gradient a pullback returns when
/// seeded with `a`.
func dot(_ a: [Double], _ b: [Double]) -> Double {
    zip(a, b).reduce(0) { $0 + $1.0 * $1.1 }
}

extension Tensor {
    /// The same shape with other scalars.
    func replacing(_ scalars: [Scalar]) -> Tensor { Tensor(shape: shape, scalars: scalars) }
}

/// A layer on the singleton world: one rank holds the whole batch.
func singleRankLayer<T: DataParallelScalar>(
    _: T.Type, _ dimensions: [Int], world: Communicator, eps: Double = 1e-5
) throws -> DataParallelInstanceNorm<T> {
    DataParallelInstanceNorm<T>(communicator: world, globalShape: try InstanceNormShape(dimensions: dimensions), eps: eps)
}

/// A tensor of `shape` whose values are ~N(mean, deviation²), rounded to T.
func randomTensor<T: DataParallelScalar>(
    _ shape: [Int], _ generator: inout SeededGenerator, mean: Double = 0, deviation: Double = 1
) -> Tensor<T> {
    Tensor(shape: shape, scalars: generator.normals(shape.reduce(1, *), mean: mean, deviation: deviation).map { T($0) })
}

/// The pullback of `function` at (x, γ, β) seeded with `weights`, which is
/// the gradient of Σ w·function(x, γ, β), and that gradient by central
/// differences of the same sum, coordinate by coordinate.
func pullbackAndDifferences(
    x: Tensor<Double>, gamma: Tensor<Double>, beta: Tensor<Double>, weights: Tensor<Double>,
    _ function: @escaping @differentiable(reverse) (Tensor<Double>, Tensor<Double>, Tensor<Double>) -> Tensor<Double>
) -> (pullback: (x: Tensor<Double>, gamma: Tensor<Double>, beta: Tensor<Double>), differences: (x: [Double], gamma: [Double], beta: [Double])) {
    func functional(_ x: Tensor<Double>, _ gamma: Tensor<Double>, _ beta: Tensor<Double>) -> Double {
        dot(weights.scalars, function(x, gamma, beta).scalars)
    }
    let (dx, dgamma, dbeta) = valueWithPullback(at: x, gamma, beta, of: function).pullback(weights)
    let differences = (
        x: centralDifferences(at: x.scalars) { functional(x.replacing($0), gamma, beta) },
        gamma: centralDifferences(at: gamma.scalars) { functional(x, gamma.replacing($0), beta) },
        beta: centralDifferences(at: beta.scalars) { functional(x, gamma, beta.replacing($0)) })
    return ((dx, dgamma, dbeta), differences)
}

/// Each of dx, dγ, dβ within `finiteDifferenceTolerance` of its central differences.
func expectMatchesDifferences(
    _ pullback: (x: Tensor<Double>, gamma: Tensor<Double>, beta: Tensor<Double>),
    _ differences: (x: [Double], gamma: [Double], beta: [Double]), sourceLocation: SourceLocation = #_sourceLocation
) {
    #expect(maxScaledError(pullback.x.scalars, differences.x, scale: 1) <= finiteDifferenceTolerance, "dx",
            sourceLocation: sourceLocation)
    #expect(maxScaledError(pullback.gamma.scalars, differences.gamma, scale: 1) <= finiteDifferenceTolerance, "dgamma",
            sourceLocation: sourceLocation)
    #expect(maxScaledError(pullback.beta.scalars, differences.beta, scale: 1) <= finiteDifferenceTolerance, "dbeta",
            sourceLocation: sourceLocation)
}
