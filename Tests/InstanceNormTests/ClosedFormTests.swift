import InstanceNorm
import TestSupport
import Testing

/// Inputs whose outputs are known in closed form, checked exactly where the
/// algebra says the kernel can be exact.
@Suite struct ClosedForms {
    /// M = 1: σ² = 0, x̂ = 0, so y = β and dx = 0 exactly; dβ = Σ dy, dγ = 0.
    @Test func spatialSizeOne() {
        func check<T: InstanceNormScalar>(_: T.Type) {
            let inputs = Inputs<T>([5, 3, 1], affine: true, seed: 3)
            let run = inputs.run(eps: 1e-5)
            let beta = inputs.beta!
            for index in run.y.indices {
                #expect(run.y[index] == beta[index % 3])
                #expect(run.dx[index] == 0)
            }
            for channel in 0..<3 {
                let expected = (0..<5).map { inputs.dy[$0 * 3 + channel].widened }.reduce(0, +)
                #expect(abs(run.dbeta[channel] - expected) <= 1e-12)
                #expect(run.dgamma[channel] == 0)
            }
        }
        check(Float16.self)
        check(Float.self)
        check(Double.self)
    }

    /// A constant instance has μ = that constant and σ² = 0 exactly, so
    /// y = β, and dx = γ·(dy − mean(dy))/sqrt(ε).
    @Test func constantInstance() {
        func check<T: InstanceNormScalar>(_: T.Type) {
            let value = T(0.1)  // not a power of two: its sum rounds
            let x = [T](repeating: value, count: 37)
            var generator = SeededGenerator(seed: 5)
            let dy = generator.normals(37).map { T($0) }
            let shape = try! InstanceNormShape(batch: 1, channels: 1, spatial: [37])
            let eps = 1e-3
            let run = KernelRun(x: x, dy: dy, gamma: [T(2)], beta: [T(0.25)], shape: shape, eps: eps)
            #expect(run.statistics[0].mean == value.widened)
            #expect(run.statistics[0].variance == 0)
            #expect(run.y.allSatisfy { $0 == T(0.25) })
            let meanDy = dy.map(\.widened).reduce(0, +) / 37
            let expected = dy.map { 2 * ($0.widened - meanDy) / eps.squareRoot() }
            #expect(maxScaledError(run.dx, expected, scale: magnitude(expected)) <= min(8 * T.ulpOfOne.widened, outputTolerance(T.self)))
        }
        check(Float16.self)
        check(Float.self)
        check(Double.self)
    }

    /// γ = 0: y = β and dx = 0 exactly; dγ and dβ do not depend on γ.
    @Test func zeroGamma() {
        func check<T: InstanceNormScalar>(_: T.Type) {
            let inputs = Inputs<T>([3, 2, 4, 4], affine: true, seed: 9)
            let zeroed = KernelRun(
                x: inputs.x, dy: inputs.dy, gamma: [0, 0], beta: inputs.beta, shape: inputs.shape, eps: 1e-5)
            let plain = inputs.run(eps: 1e-5)
            for index in zeroed.y.indices {
                #expect(zeroed.y[index] == inputs.beta![(index / 16) % 2])
                #expect(zeroed.dx[index] == 0)
            }
            #expect(zeroed.dgamma == plain.dgamma)
            #expect(zeroed.dbeta == plain.dbeta)
        }
        check(Float16.self)
        check(Float.self)
        check(Double.self)
    }
}

/// Central finite differences of a random linear loss L = Σ w·y: with dy = w,
/// the backward must give ∂L/∂x, ∂L/∂γ, ∂L/∂β.
@Suite struct FiniteDifferences {
    @Test(arguments: [[2, 2, 5], [1, 3, 2, 3], [2, 1, 2, 2, 2]])
    func gradients(dimensions: [Int]) {
        let inputs = Inputs<Double>(dimensions, affine: true, seed: 21)
        let eps = 1e-5
        let analytic = inputs.run(eps: eps)
        let weights = inputs.dy
        func loss(x: [Double], gamma: [Double], beta: [Double]) -> Double {
            let run = KernelRun(x: x, dy: weights, gamma: gamma, beta: beta, shape: inputs.shape, eps: eps)
            return zip(run.y, weights).map { $0 * $1 }.reduce(0, +)
        }
        // h balances truncation error O(h²) against rounding error O(ulp/h).
        let step = 1e-5
        func derivative(_ perturb: (Double) -> Double) -> Double {
            (perturb(step) - perturb(-step)) / (2 * step)
        }
        let gamma = inputs.gamma!, beta = inputs.beta!
        let tolerance = 1e-6
        for index in inputs.x.indices {
            let numeric = derivative { h in
                var x = inputs.x
                x[index] += h
                return loss(x: x, gamma: gamma, beta: beta)
            }
            #expect(abs(numeric - analytic.dx[index]) <= tolerance * max(1, abs(numeric)), "dx[\(index)]")
        }
        for channel in gamma.indices {
            let numericGamma = derivative { h in
                var shifted = gamma
                shifted[channel] += h
                return loss(x: inputs.x, gamma: shifted, beta: beta)
            }
            let numericBeta = derivative { h in
                var shifted = beta
                shifted[channel] += h
                return loss(x: inputs.x, gamma: gamma, beta: shifted)
            }
            #expect(abs(numericGamma - analytic.dgamma[channel]) <= tolerance * max(1, abs(numericGamma)))
            #expect(abs(numericBeta - analytic.dbeta[channel]) <= tolerance * max(1, abs(numericBeta)))
        }
    }
}
