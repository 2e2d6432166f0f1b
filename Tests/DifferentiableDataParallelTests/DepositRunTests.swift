import DataParallel
import InstanceNorm
import MPITestSupport
import TestSupport
import Testing

/// With `.reproducible`, the backward may take a rank's samples in runs,
/// one kernel call each, and deposit each run's shares of dγ, dβ before
/// the next (`DataParallelNorm.depositRunSamples`). Whatever the runs,
/// dx, dγ and dβ must be the bits of one call: for every norm whose
/// statistics stay on the rank, both layouts, the blocked small-instance
/// kernels and the per-instance ones, one and two threads.
@Suite struct DepositRuns {
    static let cases: [(Normalization, [Int], TensorLayout, threads: Int)] = [
        (.instance, [9, 5, 2, 2], .channelsFirst, 1),  // blocks of small instances
        (.instance, [9, 5, 2, 2], .channelsLast, 2),
        (.instance, [5, 3, 11, 13], .channelsFirst, 2),  // one instance at a time
        (.group(groups: 2), [6, 4, 3, 5], .channelsFirst, 1),
        (.group(groups: 2), [6, 4, 3, 5], .channelsLast, 2),
        (.layer(normalizedDimensions: 1), [5, 3, 40], .channelsFirst, 2),
    ]

    @Test(arguments: cases.indices)
    func runsGiveTheBitsOfOneCall(index: Int) throws {
        let (normalization, dimensions, layout, threads) = Self.cases[index]
        let shape = try NormShape(normalization, dimensions: dimensions)
        var generator = SeededGenerator(seed: UInt64(60 + index))
        let count = shape.elementCount
        let x = generator.normals(count, mean: 3, deviation: 2).map { Float($0) }
        let dy = generator.normals(count).map { Float($0) }
        let gamma = generator.normals(shape.parameterCount, mean: 1, deviation: 0.5).map { Float($0) }
        let whole = try backward(shape, layout, threads, runs: nil, x: x, dy: dy, gamma: gamma)
        for runs in [1, 2, 3] {
            let split = try backward(shape, layout, threads, runs: runs, x: x, dy: dy, gamma: gamma)
            #expect(split.dx.map(\.bitPattern) == whole.dx.map(\.bitPattern), "dx, runs of \(runs), \(shape) \(layout)")
            #expect(split.dgamma.map(\.bitPattern) == whole.dgamma.map(\.bitPattern), "dgamma, runs of \(runs)")
            #expect(split.dbeta.map(\.bitPattern) == whole.dbeta.map(\.bitPattern), "dbeta, runs of \(runs)")
        }
        // Not a vacuous comparison: the parameter gradients are there.
        #expect(whole.dgamma.contains { $0 != 0 } && whole.dbeta.contains { $0 != 0 })
    }

    /// `.allreduce` at one rank adds the samples' shares in sample order
    /// whatever the thread count; with several threads the kernels write
    /// them to the layer's table (kept across calls) and add them up after:
    /// the bits of one thread, for every norm and layout.
    @Test(arguments: cases.indices)
    func plainSumsAtTwoThreadsGiveTheBitsOfOne(index: Int) throws {
        let (normalization, dimensions, layout, _) = Self.cases[index]
        let shape = try NormShape(normalization, dimensions: dimensions)
        var generator = SeededGenerator(seed: UInt64(80 + index))
        let count = shape.elementCount
        let x = generator.normals(count, mean: 3, deviation: 2).map { Float($0) }
        let dy = generator.normals(count).map { Float($0) }
        let gamma = generator.normals(shape.parameterCount, mean: 1, deviation: 0.5).map { Float($0) }
        let one = try backward(shape, layout, 1, runs: nil, reduction: .allreduce, x: x, dy: dy, gamma: gamma)
        for step in 0..<2 {  // the second step reuses the table the first wrote
            let two = try backward(shape, layout, 2, runs: nil, reduction: .allreduce, x: x, dy: dy, gamma: gamma, steps: step + 1)
            #expect(two.dx.map(\.bitPattern) == one.dx.map(\.bitPattern), "dx, \(shape) \(layout), step \(step)")
            #expect(two.dgamma.map(\.bitPattern) == one.dgamma.map(\.bitPattern), "dgamma, step \(step)")
            #expect(two.dbeta.map(\.bitPattern) == one.dbeta.map(\.bitPattern), "dbeta, step \(step)")
        }
        #expect(one.dgamma.contains { $0 != 0 } && one.dbeta.contains { $0 != 0 })
    }

    /// The layer's forward, then its backward with `runs` samples per
    /// kernel call (nil: the layer decides, here one call), `steps` times.
    private func backward(
        _ shape: NormShape, _ layout: TensorLayout, _ threads: Int, runs: Int?,
        reduction: ParameterGradientReduction = .reproducible, x: [Float], dy: [Float], gamma: [Float], steps: Int = 1
    ) throws -> (dx: [Float], dgamma: [Float], dbeta: [Float]) {
        var y = [Float](repeating: 0, count: x.count), dx = y
        var dgamma = [Float](repeating: 0, count: gamma.count), dbeta = dgamma
        var statistics = [InstanceStatistics](
            repeating: InstanceStatistics(mean: 0, variance: 1, eps: 1e-5), count: shape.statisticsCount)
        try SingletonMPI.withWorld { world in
            let layer = DataParallelNorm<Float>(
                communicator: world, globalShape: shape, eps: 1e-5, threads: threads, reduction: reduction, layout: layout)
            layer.depositRunSamples = runs
            try x.withUnsafeBufferPointer { x in
                try gamma.withUnsafeBufferPointer { gamma in
                    try y.withUnsafeMutableBufferPointer { y in
                        try statistics.withUnsafeMutableBufferPointer { statistics in
                            try layer.forward(y: y, statistics: statistics, x: x, gamma: gamma, beta: nil)
                        }
                    }
                    try dy.withUnsafeBufferPointer { dy in
                        try statistics.withUnsafeBufferPointer { statistics in
                            try dx.withUnsafeMutableBufferPointer { dx in
                                try dgamma.withUnsafeMutableBufferPointer { dgamma in
                                    try dbeta.withUnsafeMutableBufferPointer { dbeta in
                                        for _ in 0..<steps {
                                            _ = try layer.backward(
                                                dx: dx, dgamma: dgamma, dbeta: dbeta, dy: dy, x: x, statistics: statistics,
                                                gamma: gamma)
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        return (dx, dgamma, dbeta)
    }
}
