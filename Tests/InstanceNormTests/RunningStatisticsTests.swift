import InstanceNorm
import TestSupport
import Testing

@Suite struct RunningStatisticsSteps {
    /// N = 2, C = 1, M = 2. Sample 0 is [0, 2]: μ = 1, unbiased σ² = 2.
    /// Sample 1 is [4, 8]: μ = 6, unbiased σ² = 8. Batch means: 3.5 and 5.
    /// From running (0, 1) with momentum 0.1, by hand:
    ///   step 1: 0.9·0     + 0.35 = 0.35,   0.9·1    + 0.5 = 1.4
    ///   step 2: 0.9·0.35  + 0.35 = 0.665,  0.9·1.4  + 0.5 = 1.76
    ///   step 3: 0.9·0.665 + 0.35 = 0.9485, 0.9·1.76 + 0.5 = 2.084
    @Test func threeSteps() {
        func check<T: InstanceNormScalar>(_: T.Type) {
            let x: [T] = [0, 2, 4, 8]
            let shape = try! InstanceNormShape(batch: 2, channels: 1, spatial: [2])
            let runningMean = TensorBuffer<T>([0]), runningVar = TensorBuffer<T>([1])
            let expected: [(Double, Double)] = [(0.35, 1.4), (0.665, 1.76), (0.9485, 2.084)]
            for (mean, variance) in expected {
                let run = KernelRun(x: x, dy: x, gamma: nil, beta: nil, shape: shape, eps: 1e-5)
                let sums = run.statistics.withUnsafeBufferPointer {
                    RunningStatistics.channelSums($0, channels: 1, spatialCount: 2)
                }
                RunningStatistics.update(
                    runningMean: runningMean.elements, runningVar: runningVar.elements,
                    meanSum: sums.meanSum, unbiasedVarianceSum: sums.unbiasedVarianceSum,
                    batch: 2, momentum: RunningStatistics.defaultMomentum)
                // Three roundings to T (one per step, each shrunk by 0.9 after): under 4 ulps.
                let tolerance = 4 * T.ulpOfOne.widened
                #expect(abs(runningMean.array[0].widened - mean) <= tolerance * mean)
                #expect(abs(runningVar.array[0].widened - variance) <= tolerance * variance)
            }
        }
        check(Float16.self)
        check(Float.self)
        check(Double.self)
    }

    /// Evaluation mode against the reference, with running statistics that
    /// are far from the batch's own.
    @Test func inference() {
        func check<T: InstanceNormScalar>(_: T.Type) {
            let inputs = Inputs<T>([3, 4, 5, 6], affine: true, seed: 31)
            let runningMean: [T] = [0.5, -1, 2, 0], runningVar: [T] = [0.25, 4, 1, 9]
            let x = TensorBuffer(inputs.x), y = TensorBuffer<T>(repeating: .nan, count: inputs.x.count)
            let mean = TensorBuffer(runningMean), variance = TensorBuffer(runningVar)
            let gamma = TensorBuffer(inputs.gamma!), beta = TensorBuffer(inputs.beta!)
            BatchKernel.forwardInference(
                y: y.elements, x: x.readOnly, runningMean: mean.readOnly, runningVar: variance.readOnly,
                gamma: gamma.readOnly, beta: beta.readOnly, shape: inputs.shape, eps: 1e-5)
            let expected = Reference.forwardInference(
                x: inputs.wideX, batch: 3, channels: 4, spatialCount: 30,
                runningMean: runningMean.map(\.widened), runningVar: runningVar.map(\.widened),
                gamma: inputs.wideGamma, beta: inputs.wideBeta, eps: 1e-5)
            #expect(maxScaledError(y.array, expected, scale: magnitude(expected, minimum: 1)) <= outputTolerance(T.self))
        }
        check(Float16.self)
        check(Float.self)
        check(Double.self)
    }
}
