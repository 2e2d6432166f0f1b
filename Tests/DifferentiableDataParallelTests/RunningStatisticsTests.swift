import _Differentiation
import DataParallel
import DifferentiableDataParallel
import InstanceNorm
import MPITestSupport
import TestSupport
import Testing

/// `RunningMeanAndVariance` against PyTorch's update written out in double
/// precision from the reference's statistics, and evaluation mode against
/// its closed form.
@Suite struct RunningStatisticsUpdate {
    /// One training forward moves mean and variance by momentum towards the
    /// batch's mean and unbiased variance; y and the gradients are those of
    /// `normalize` without them.
    @Test(arguments: FamilyCase.withRunningStatistics)
    func oneStepIsPyTorchsUpdate(familyCase: FamilyCase) throws {
        var generator = SeededGenerator(seed: 64)
        let channels = familyCase.dimensions[1], momentum = 0.3
        let x: Tensor<Double> = randomTensor(familyCase.dimensions, &generator, mean: 1, deviation: 2)
        let gamma: Tensor<Double> = randomTensor([channels], &generator, mean: 1, deviation: 0.5)
        let beta: Tensor<Double> = randomTensor([channels], &generator)
        let startMean: Tensor<Double> = randomTensor([channels], &generator)
        let startVariance = Tensor(shape: [channels], scalars: generator.normals(channels).map { 0.5 + abs($0) })
        let (running, updated, plain) = try SingletonMPI.withWorld { world in
            let layer = try singleRankNorm(Double.self, familyCase, world: world)
            let running = RunningMeanAndVariance(mean: startMean, variance: startVariance, momentum: momentum)
            let updated = valueWithGradient(at: x, gamma, beta) { x, gamma, beta in
                globalSumOfSquares(normalize(x, gamma: gamma, beta: beta, layer: layer, updating: running), on: world)
            }
            let plain = valueWithGradient(at: x, gamma, beta) { x, gamma, beta in
                globalSumOfSquares(normalize(x, gamma: gamma, beta: beta, layer: layer), on: world)
            }
            return (running, updated, plain)
        }
        #expect(updated.value == plain.value && updated.gradient == plain.gradient)

        let reference = Reference.forward(x: x.scalars, rows: familyCase.rows, gamma: nil, beta: nil, eps: 1e-5)
        let rowsPerChannel = reference.mean.count / channels, values = familyCase.rows.rows[0].count
        let correction = Double(values) / Double(values - 1)
        // Instance rows are sample-major ((n, c) at n·C + c); BatchNorm has one row per channel.
        let rowsOf = { (channel: Int) in (0..<rowsPerChannel).map { $0 * channels + channel } }
        for channel in 0..<channels {
            let batchMean = rowsOf(channel).map { reference.mean[$0] }.reduce(0, +) / Double(rowsPerChannel)
            let batchVariance = rowsOf(channel).map { reference.variance[$0] * correction }.reduce(0, +) / Double(rowsPerChannel)
            let expectedMean = (1 - momentum) * startMean.scalars[channel] + momentum * batchMean
            let expectedVariance = (1 - momentum) * startVariance.scalars[channel] + momentum * batchVariance
            #expect(abs(running.mean.scalars[channel] - expectedMean) <= 1e-13 * (1 + abs(expectedMean)), "mean \(channel)")
            #expect(abs(running.variance.scalars[channel] - expectedVariance) <= 1e-13 * expectedVariance, "variance \(channel)")
        }
    }

    /// Evaluation mode: y = γ·(x − mean)/sqrt(variance + ε) + β per channel.
    @Test(arguments: FamilyCase.withRunningStatistics)
    func inferenceUsesTheRunningStatistics(familyCase: FamilyCase) throws {
        var generator = SeededGenerator(seed: 65)
        let channels = familyCase.dimensions[1], eps = 1e-5
        let spatialCount = familyCase.dimensions.dropFirst(2).reduce(1, *)
        let x: Tensor<Double> = randomTensor(familyCase.dimensions, &generator, mean: 1, deviation: 2)
        let gamma: Tensor<Double> = randomTensor([channels], &generator, mean: 1, deviation: 0.5)
        let beta: Tensor<Double> = randomTensor([channels], &generator)
        let running = RunningMeanAndVariance(
            mean: randomTensor([channels], &generator),
            variance: Tensor(shape: [channels], scalars: generator.normals(channels).map { 0.5 + abs($0) }))
        let y = try SingletonMPI.withWorld { world in
            normalizeForInference(
                x, gamma: gamma, beta: beta, layer: try singleRankNorm(Double.self, familyCase, world: world), statistics: running)
        }
        let expected = x.scalars.indices.map { index in
            let channel = (index / spatialCount) % channels
            return gamma.scalars[channel] * (x.scalars[index] - running.mean.scalars[channel])
                / (running.variance.scalars[channel] + eps).squareRoot() + beta.scalars[channel]
        }
        #expect(y.shape == familyCase.dimensions)
        #expect(maxScaledError(y.scalars, expected, scale: magnitude(expected, minimum: 1)) <= 1e-14)
    }
}

extension FamilyCase {
    /// The norms with running statistics: InstanceNorm, BatchNorm with
    /// spatial dimensions and of (N, C).
    static let withRunningStatistics = [
        FamilyCase(normalization: .instance, dimensions: [2, 3, 5]),
        FamilyCase(normalization: .batch, dimensions: [3, 2, 5]),
        FamilyCase(normalization: .batch, dimensions: [6, 3]),
    ]
}
