import DataParallel
import InstanceNorm
import MPITestSupport
import TestSupport
import Testing

/// Where the small-instance kernels stage each worker's shares of dγ, dβ
/// and deposit them as they go (`ShareDeposits`), every share must reach
/// the exact sums once: dγ, dβ in float64 are the correctly rounded sums
/// (Shewchuk's partials, `correctlyRoundedSum`) of the shares that the
/// kernel writes to a table when asked to (`NormKernel.backward` with
/// `parameterSums`), whatever the thread count. The cases make workers
/// claim runs that start and end inside samples, runs longer than a
/// staged table (N > 128 rows), and blocks of 8 instances that span
/// several samples (C = 1, 3), in both layouts.
@Suite struct StagedShareDeposits {
    static let cases: [(dimensions: [Int], layout: TensorLayout, threads: [Int])] = [
        ([300, 3, 2, 2], .channelsFirst, [1, 2, 3, 4]),
        ([41, 1, 5], .channelsFirst, [1, 3]),
        ([260, 130, 4], .channelsFirst, [1, 2]),
        ([9, 5, 2, 2], .channelsFirst, [1, 4]),
        ([1, 7, 3], .channelsFirst, [2]),
        ([300, 3, 2, 2], .channelsLast, [1, 2, 3]),
        ([150, 33, 7], .channelsLast, [1, 2]),
    ]

    @Test(arguments: cases.indices)
    func everyShareReachesTheExactSumsOnce(index: Int) throws {
        let (dimensions, layout, threadCounts) = Self.cases[index]
        let shape = try NormShape(.instance, dimensions: dimensions)
        #expect(ShareDeposits.applies(to: shape, layout: layout), "the case takes the staged deposits")
        var generator = SeededGenerator(seed: 900 + UInt64(index))
        let x = generator.normals(shape.elementCount, mean: 3, deviation: 2)
        // dy spread over many binades, so that a share added twice or lost shows.
        let dy = generator.normals(shape.elementCount).enumerated().map { $1 * Double(sign: .plus, exponent: $0 % 37 - 18, significand: 1) }
        let gamma = generator.normals(shape.parameterCount, mean: 1, deviation: 0.5)
        for threads in threadCounts {
            let (statistics, dgamma, dbeta) = try layerBackward(shape, layout, x: x, dy: dy, gamma: gamma, threads: threads)
            let shares = kernelShares(shape, layout, x: x, dy: dy, gamma: gamma, statistics: statistics)
            let channels = shape.parameterCount
            for channel in 0..<channels {
                let sampleRows = 0..<shape.batch
                let s1 = sampleRows.map { shares[2 * ($0 * channels + channel)] }
                let s2 = sampleRows.map { shares[2 * ($0 * channels + channel) + 1] }
                #expect(dbeta[channel].bitPattern == correctlyRoundedSum(s1).bitPattern, "dβ_\(channel), \(dimensions), \(threads) threads")
                #expect(dgamma[channel].bitPattern == correctlyRoundedSum(s2).bitPattern, "dγ_\(channel), \(dimensions), \(threads) threads")
            }
        }
    }

    /// The layer's forward and backward at one rank: its statistics, dγ, dβ.
    private func layerBackward(
        _ shape: NormShape, _ layout: TensorLayout, x: [Double], dy: [Double], gamma: [Double], threads: Int
    ) throws -> (statistics: [InstanceStatistics], dgamma: [Double], dbeta: [Double]) {
        var result: (statistics: [InstanceStatistics], dgamma: [Double], dbeta: [Double]) = ([], [], [])
        try SingletonMPI.withWorld { world in
            let layer = DataParallelNorm<Double>(communicator: world, globalShape: shape, eps: 1e-5, threads: threads, layout: layout)
            let step = try forwardThenBackward(layer, x: x, dy: dy, gamma: gamma)
            result = (step.statistics, step.dgamma, step.dbeta)
        }
        return result
    }

    /// Every instance's (s1, s2) as the kernel writes them to a table, one thread.
    private func kernelShares(
        _ shape: NormShape, _ layout: TensorLayout, x: [Double], dy: [Double], gamma: [Double], statistics: [InstanceStatistics]
    ) -> [Double] {
        var shares = [Double](repeating: .nan, count: 2 * shape.batch * shape.parameterCount)
        var dx = [Double](repeating: 0, count: x.count)
        var dgamma = [Double](repeating: 0, count: gamma.count), dbeta = dgamma
        x.withUnsafeBufferPointer { x in
            dy.withUnsafeBufferPointer { dy in
                gamma.withUnsafeBufferPointer { gamma in
                    statistics.withUnsafeBufferPointer { statistics in
                        shares.withUnsafeMutableBufferPointer { shares in
                            dx.withUnsafeMutableBufferPointer { dx in
                                dgamma.withUnsafeMutableBufferPointer { dgamma in
                                    dbeta.withUnsafeMutableBufferPointer { dbeta in
                                        NormKernel.backward(
                                            dx: dx, dgamma: dgamma, dbeta: dbeta, dy: dy, x: x, statistics: statistics,
                                            gamma: gamma, shape: shape, parameterSums: shares, combinesParameterGradients: false,
                                            layout: layout)
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        return shares
    }
}
