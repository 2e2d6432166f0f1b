import _Differentiation
import DataParallel
import DifferentiableDataParallel
import MPITestSupport
import TestSupport
import Testing

/// Every pullback against central differences of its own function, in
/// Double, for every coordinate: the gradient's independent yardstick.
@Suite struct FiniteDifferences {
    /// The pullback of InstanceNorm seeded with w is the gradient of Σ w·y
    /// with respect to x, γ and β. Non-unit γ, so dx's factor γ·r shows.
    @Test(arguments: [[2, 3, 5], [3, 2, 2, 3]])
    func instanceNormPullback(dimensions: [Int]) throws {
        var generator = SeededGenerator(seed: 41)
        let channels = dimensions[1]
        let x: Tensor<Double> = randomTensor(dimensions, &generator, mean: 1, deviation: 2)
        let gamma: Tensor<Double> = randomTensor([channels], &generator, mean: 1, deviation: 0.5)
        let beta: Tensor<Double> = randomTensor([channels], &generator)
        let weights: Tensor<Double> = randomTensor(dimensions, &generator)
        let (pullback, differences) = try SingletonMPI.withWorld { world in
            let layer = try singleRankLayer(Double.self, dimensions, world: world)
            return pullbackAndDifferences(x: x, gamma: gamma, beta: beta, weights: weights) {
                instanceNorm($0, gamma: $1, beta: $2, layer: layer)
            }
        }
        expectMatchesDifferences(pullback, differences)
    }

    /// The pullback of the channel mixing seeded with w is the gradient of
    /// Σ w·y with respect to x and the (C_out, C_in) weights; C_out ≠ C_in.
    @Test func channelMixingPullback() throws {
        var generator = SeededGenerator(seed: 42)
        let x: Tensor<Double> = randomTensor([3, 2, 5], &generator)
        let weights: Tensor<Double> = randomTensor([4, 2], &generator)
        let seed: Tensor<Double> = randomTensor([3, 4, 5], &generator)
        let (dx, dweights, expected) = try SingletonMPI.withWorld { world in
            func functional(_ x: Tensor<Double>, _ weights: Tensor<Double>) -> Double {
                dot(seed.scalars, mixChannels(x, weights: weights, on: world).scalars)
            }
            let (dx, dweights) = valueWithPullback(at: x, weights) { mixChannels($0, weights: $1, on: world) }.pullback(seed)
            let expected = (
                x: centralDifferences(at: x.scalars) { functional(x.replacing($0), weights) },
                weights: centralDifferences(at: weights.scalars) { functional(x, weights.replacing($0)) })
            return (dx, dweights, expected)
        }
        #expect(dx.shape == x.shape && dweights.shape == weights.shape)
        #expect(maxScaledError(dx.scalars, expected.x, scale: 1) <= finiteDifferenceTolerance, "dx")
        #expect(maxScaledError(dweights.scalars, expected.weights, scale: 1) <= finiteDifferenceTolerance, "dW")
    }

    /// The training example's loss, mixing → InstanceNorm → mean squared
    /// error, differentiated as a whole with `valueWithGradient`: the
    /// gradient with respect to every parameter, and the loss's value
    /// against the same loss computed from the reference's y.
    @Test func modelLossGradient() throws {
        let dimensions = [3, 3, 4, 2], channels = 3, eps = 1e-5
        var generator = SeededGenerator(seed: 43)
        let x: Tensor<Double> = randomTensor(dimensions, &generator)
        let target: Tensor<Double> = randomTensor(dimensions, &generator)
        let parameters = Parameters(
            weights: randomTensor([channels, channels], &generator, mean: 0.3),
            gamma: randomTensor([channels], &generator, mean: 1, deviation: 0.5),
            beta: randomTensor([channels], &generator))
        let count = Double(dimensions.reduce(1, *))
        let (loss, gradient, expected) = try SingletonMPI.withWorld { world in
            let layer = try singleRankLayer(Double.self, dimensions, world: world, eps: eps)
            let loss: @differentiable(reverse) (Parameters) -> Double = { p in
                let mixed = mixChannels(x, weights: p.weights, on: world)
                return globalSumOfSquares(instanceNorm(mixed, gamma: p.gamma, beta: p.beta, layer: layer) - target, on: world) / count
            }
            let (value, gradient) = valueWithGradient(at: parameters, of: loss)
            let expected = (
                weights: centralDifferences(at: parameters.weights.scalars) {
                    loss(parameters.with(weights: parameters.weights.replacing($0)))
                },
                gamma: centralDifferences(at: parameters.gamma.scalars) {
                    loss(parameters.with(gamma: parameters.gamma.replacing($0)))
                },
                beta: centralDifferences(at: parameters.beta.scalars) {
                    loss(parameters.with(beta: parameters.beta.replacing($0)))
                })
            return (value, gradient, expected)
        }
        #expect(maxScaledError(gradient.weights.scalars, expected.weights, scale: 1) <= finiteDifferenceTolerance, "dW")
        #expect(maxScaledError(gradient.gamma.scalars, expected.gamma, scale: 1) <= finiteDifferenceTolerance, "dgamma")
        #expect(maxScaledError(gradient.beta.scalars, expected.beta, scale: 1) <= finiteDifferenceTolerance, "dbeta")
        let referenceY = Reference.forward(
            x: mixedByHand(x.scalars, parameters.weights.scalars, channels: channels, positions: 8), batch: 3,
            channels: channels, spatialCount: 8, gamma: parameters.gamma.scalars, beta: parameters.beta.scalars, eps: eps).y
        let referenceLoss = correctlyRoundedSum(zip(referenceY, target.scalars).map { ($0 - $1) * ($0 - $1) }) / count
        // Each y is within 16 ulps of the reference's (`Reference.outputTolerance`),
        // so each (y − t)² moves by ~32ε·|y|·|y − t|: ~1e-14 of a loss whose
        // terms are all of size ~1. A wrong loss (a missing 1/count, a
        // rank's share counted twice) is off by O(1).
        #expect(abs(loss - referenceLoss) <= 1e-12 * referenceLoss, "loss \(loss), reference \(referenceLoss)")
    }
}

/// The parameters of the model in `modelLossGradient`.
struct Parameters: Differentiable {
    var weights: Tensor<Double>
    var gamma: Tensor<Double>
    var beta: Tensor<Double>

    func with(weights: Tensor<Double>? = nil, gamma: Tensor<Double>? = nil, beta: Tensor<Double>? = nil) -> Parameters {
        Parameters(weights: weights ?? self.weights, gamma: gamma ?? self.gamma, beta: beta ?? self.beta)
    }
}

/// y[n, o, m] = Σ_i W[o, i]·x[n, i, m], written out for the test.
func mixedByHand(_ x: [Double], _ weights: [Double], channels: Int, positions: Int) -> [Double] {
    x.indices.map { index in
        let (sample, rest) = index.quotientAndRemainder(dividingBy: channels * positions)
        let (output, position) = rest.quotientAndRemainder(dividingBy: positions)
        return (0..<channels).reduce(0.0) { sum, input in
            sum + weights[output * channels + input] * x[(sample * channels + input) * positions + position]
        }
    }
}
