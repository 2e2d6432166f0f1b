import InstanceNorm
import TestSupport
import Testing

/// (N, C, M) channels first → (N, M, C) channels last, and back.
func channelsLast<T>(_ values: [T], _ shape: InstanceNormShape) -> [T] {
    channelsLast(values, channels: shape.channels, positions: shape.spatialCount)
}

func channelsFirst<T>(_ values: [T], _ shape: InstanceNormShape) -> [T] {
    channelsFirst(values, channels: shape.channels, positions: shape.spatialCount)
}

/// Expects a channels-last run on the transposed inputs to give the bits of
/// the channels-first run: statistics, y, dx, dγ, dβ, per-instance sums.
func expectSameBits<T: InstanceNormScalar>(
    _ last: KernelRun<T>, _ first: KernelRun<T>, _ shape: InstanceNormShape, _ label: String
) {
    #expect(last.statistics == first.statistics, "statistics, \(label)")
    #expect(channelsFirst(last.y, shape) == first.y, "y, \(label)")
    #expect(channelsFirst(last.dx, shape) == first.dx, "dx, \(label)")
    #expect(last.dgamma == first.dgamma && last.dbeta == first.dbeta, "dgamma, dbeta, \(label)")
    #expect(last.instanceSums == first.instanceSums, "instance sums, \(label)")
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
                expectSameBits(last, first, shape, "\(T.self) \(dimensions), \(threads) threads")
            }
        }
        check(Float.self)
        check(Double.self)
    }

    /// The paths of the tiled kernels: C that is not a multiple of the
    /// vector (3, 17), or is one (1, 16, 64); fewer rows than one block of
    /// 2L (7); rows that leave a ragged group of blocks and a ragged block
    /// inside a chunk (1024 + 32·5 + 7, odd); several samples per worker;
    /// one sample shared by threads (N < threads), chunk by chunk. Each with
    /// streaming stores too, which start the vectors at a 64-byte boundary
    /// rather than at a row.
    @Test(arguments: [
        [2, 3, 37, 29], [1, 17, 1191], [5, 1, 1100], [3, 16, 7], [2, 64, 45], [1, 3, 2500], [2, 8, 5, 301],
    ])
    func tiledPathsSameBits(dimensions: [Int]) {
        func check<T: InstanceNormScalar>(_: T.Type) {
            let inputs = Inputs<T>(dimensions, affine: true, seed: 73)
            let shape = inputs.shape
            let first = inputs.run(eps: 1e-5)
            for threads in [1, 2, 3] {
                for stores in [StorePolicy.cached, .streaming] {
                    let last = KernelRun(
                        x: channelsLast(inputs.x, shape), dy: channelsLast(inputs.dy, shape),
                        gamma: inputs.gamma, beta: inputs.beta, shape: shape, eps: 1e-5,
                        threads: threads, stores: stores, layout: .channelsLast)
                    expectSameBits(last, first, shape, "\(T.self) \(dimensions), \(threads) threads, \(stores)")
                }
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
        for threads in [1, 2, 3] {
            let last = KernelRun(
                x: channelsLast(values, shape), dy: channelsLast(dy, shape), gamma: nil, beta: nil,
                shape: shape, eps: 1e-12, threads: threads, layout: .channelsLast)
            #expect(last.statistics == first.statistics, "\(threads) threads")
            #expect(channelsFirst(last.y, shape) == first.y, "\(threads) threads")
            let reference = Reference.forward(
                x: values.map(\.widened), batch: 2, channels: 2, spatialCount: 1500, eps: 1e-12)
            #expect(maxScaledError(last.statistics.map(\.invstd), reference.invstd, scale: 0) <= 16 * Double(Float.ulpOfOne))
        }
    }

    @Test func inferenceSameBitsAsChannelsFirst() {
        for dimensions in [[3, 4, 9, 11], [2, 3, 37, 29]] {
            let inputs = Inputs<Float>(dimensions, affine: true, seed: 71)
            let shape = inputs.shape
            let runningMean = (0..<shape.channels).map { Float($0) * 0.5 - 1 }
            let runningVar = (0..<shape.channels).map { Float($0) + 0.25 }
            func run(_ x: [Float], _ layout: TensorLayout, _ stores: StorePolicy) -> [Float] {
                let x = TensorBuffer(x), y = TensorBuffer<Float>(repeating: .nan, count: x.count)
                let mean = TensorBuffer(runningMean), variance = TensorBuffer(runningVar)
                let gamma = TensorBuffer(inputs.gamma!), beta = TensorBuffer(inputs.beta!)
                BatchKernel.forwardInference(
                    y: y.elements, x: x.readOnly, runningMean: mean.readOnly, runningVar: variance.readOnly,
                    gamma: gamma.readOnly, beta: beta.readOnly, shape: shape, eps: 1e-5, threads: 2,
                    stores: stores, layout: layout)
                return y.array
            }
            let expected = run(inputs.x, .channelsFirst, .cached)
            for stores in [StorePolicy.cached, .streaming] {
                #expect(channelsFirst(run(channelsLast(inputs.x, shape), .channelsLast, stores), shape) == expected,
                        "\(dimensions), \(stores)")
            }
        }
    }

    /// With `BackwardOverlap`, each worker's last samples (or, when the
    /// workers share samples, the batch's last samples) wait for
    /// `sumsReady`: the bits stay the same, `sumsReady` runs once with dγ,
    /// dβ final, and `progress` runs while the waiting samples are written.
    @Test(arguments: [([5, 6, 20, 21], 1), ([5, 6, 20, 21], 2), ([5, 6, 20, 21], 3), ([2, 3, 2100], 3)])
    func overlapKeepsBits(dimensions: [Int], threads: Int) throws {
        let inputs = Inputs<Float>(dimensions, affine: true, seed: 79)
        let shape = inputs.shape
        let first = inputs.run(eps: 1e-5)
        let last = KernelRun(
            x: channelsLast(inputs.x, shape), dy: channelsLast(inputs.dy, shape), gamma: inputs.gamma,
            beta: inputs.beta, shape: shape, eps: 1e-5, threads: threads, layout: .channelsLast)
        let dx = TensorBuffer<Float>(repeating: .nan, count: shape.elementCount)
        let dgamma = TensorBuffer<Double>(repeating: .nan, count: shape.channels)
        let dbeta = TensorBuffer<Double>(repeating: .nan, count: shape.channels)
        let x = TensorBuffer(channelsLast(inputs.x, shape)), dy = TensorBuffer(channelsLast(inputs.dy, shape))
        let statistics = TensorBuffer(last.statistics), gamma = TensorBuffer(inputs.gamma!)
        let events = EventLog()
        let overlap = BackwardOverlap(
            tailElements: 3000, progressInterval: 500,
            sumsReady: { events.append(dgamma.array == first.dgamma && dbeta.array == first.dbeta ? "ready" : "early") },
            progress: { events.append("progress") })
        BatchKernel.backward(
            dx: dx.elements, dgamma: dgamma.elements, dbeta: dbeta.elements, dy: dy.readOnly, x: x.readOnly,
            statistics: statistics.readOnly, gamma: gamma.readOnly, shape: shape, threads: threads,
            overlap: overlap, layout: .channelsLast)
        #expect(channelsFirst(dx.array, shape) == first.dx)
        #expect(events.entries.first == "ready" && events.entries.filter { $0 == "ready" }.count == 1)
        #expect(events.entries.dropFirst().allSatisfy { $0 == "progress" } && events.entries.count > 1)
    }
}

/// Records the overlap hooks' calls; the backward calls them one at a time.
final class EventLog: @unchecked Sendable {
    private(set) var entries: [String] = []
    func append(_ entry: String) { entries.append(entry) }
}
