import InstanceNorm
import TestSupport
import Testing

/// (N, C, M) channels first → (N, M, C) channels last, and back.
func channelsLast<T>(_ values: [T], _ shape: InstanceNormShape) -> [T] {
    let (channels, positions) = (shape.channels, shape.spatialCount)
    return (0..<values.count).map { index in
        let (sample, rest) = index.quotientAndRemainder(dividingBy: channels * positions)
        let (position, channel) = rest.quotientAndRemainder(dividingBy: channels)
        return values[(sample * channels + channel) * positions + position]
    }
}

func channelsFirst<T>(_ values: [T], _ shape: InstanceNormShape) -> [T] {
    let (channels, positions) = (shape.channels, shape.spatialCount)
    return (0..<values.count).map { index in
        let (instance, position) = index.quotientAndRemainder(dividingBy: positions)
        let (sample, channel) = instance.quotientAndRemainder(dividingBy: channels)
        return values[(sample * positions + position) * channels + channel]
    }
}

/// The channels-last kernels add every value in the order the channels-first
/// kernels do, so on the same data, transposed, they give the same bits:
/// statistics, y, dx, dγ, dβ and the per-instance sums.
@Suite struct ChannelsLast {
    /// One to three spatial dimensions; M past one chunk with a ragged end
    /// (1600); C = 1; N = 1 with threads sharing the sample's rows.
    @Test(arguments: [[2, 3, 5, 7], [1, 4, 40, 40], [3, 2, 33], [2, 5, 3, 4, 5], [3, 1, 50], [1, 2, 3000]])
    func sameBitsAsChannelsFirst(dimensions: [Int]) {
        func check<T: InstanceNormScalar>(_: T.Type) {
            let inputs = Inputs<T>(dimensions, affine: true, seed: 61)
            let shape = inputs.shape
            let first = inputs.run(eps: 1e-5)
            for threads in [1, 3] {
                let last = KernelRun(
                    x: channelsLast(inputs.x, shape), dy: channelsLast(inputs.dy, shape),
                    gamma: inputs.gamma, beta: inputs.beta, shape: shape, eps: 1e-5,
                    threads: threads, layout: .channelsLast)
                let label = "\(T.self) \(dimensions), \(threads) threads"
                #expect(last.statistics == first.statistics, "statistics, \(label)")
                #expect(channelsFirst(last.y, shape) == first.y, "y, \(label)")
                #expect(channelsFirst(last.dx, shape) == first.dx, "dx, \(label)")
                #expect(last.dgamma == first.dgamma && last.dbeta == first.dbeta, "dgamma, dbeta, \(label)")
                #expect(last.instanceSums == first.instanceSums, "instance sums, \(label)")
            }
        }
        check(Float16.self)
        check(Float.self)
        check(Double.self)
    }

    /// A channel whose first value is an outlier takes the second pass, in
    /// both layouts alike; its neighbour does not.
    @Test func outlierChannel() {
        var generator = SeededGenerator(seed: 67)
        let shape = try! InstanceNormShape(batch: 2, channels: 2, spatial: [1500])
        var x = generator.normals(shape.elementCount, mean: 3, deviation: 0.01)
        x[0] = 800
        let values = x.map { Float($0) }, dy = generator.normals(shape.elementCount).map { Float($0) }
        let first = KernelRun(x: values, dy: dy, gamma: nil, beta: nil, shape: shape, eps: 1e-12)
        let last = KernelRun(
            x: channelsLast(values, shape), dy: channelsLast(dy, shape), gamma: nil, beta: nil,
            shape: shape, eps: 1e-12, threads: 2, layout: .channelsLast)
        #expect(last.statistics == first.statistics)
        #expect(channelsFirst(last.y, shape) == first.y)
        let reference = Reference.forward(x: values.map(\.widened), batch: 2, channels: 2, spatialCount: 1500, eps: 1e-12)
        #expect(maxScaledError(last.statistics.map(\.invstd), reference.invstd, scale: 0) <= 16 * Double(Float.ulpOfOne))
    }

    @Test func inferenceSameBitsAsChannelsFirst() {
        let inputs = Inputs<Float>([3, 4, 9, 11], affine: true, seed: 71)
        let shape = inputs.shape
        let runningMean: [Float] = [0.5, -1, 2, 0], runningVar: [Float] = [0.25, 4, 1, 9]
        func run(_ x: [Float], _ layout: TensorLayout) -> [Float] {
            let x = TensorBuffer(x), y = TensorBuffer<Float>(repeating: .nan, count: x.count)
            let mean = TensorBuffer(runningMean), variance = TensorBuffer(runningVar)
            let gamma = TensorBuffer(inputs.gamma!), beta = TensorBuffer(inputs.beta!)
            BatchKernel.forwardInference(
                y: y.elements, x: x.readOnly, runningMean: mean.readOnly, runningVar: variance.readOnly,
                gamma: gamma.readOnly, beta: beta.readOnly, shape: shape, eps: 1e-5, threads: 2, layout: layout)
            return y.array
        }
        #expect(channelsFirst(run(channelsLast(inputs.x, shape), .channelsLast), shape) == run(inputs.x, .channelsFirst))
    }
}
