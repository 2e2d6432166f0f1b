import InstanceNorm
import TestSupport
import Testing

/// BatchNorm channels first over instances of fewer than 2·B values (B = 16
/// for half and float, 8 for double): their sums are taken B instances at a
/// time in vector lanes, and y and dx written as C·M tiled channels. Each
/// instance's sums must still be what the per-instance kernels add for such
/// an instance, every term widened to `Double` and added in position order:
/// checked here bit for bit against that order written out, at thread
/// counts that cut the blocks differently, with C not a multiple of B.
@Suite struct BatchNormSmallInstances {
    @Test(arguments: [2, 3, 4, 7, 16, 31])
    func sumsInPositionOrder(spatialCount: Int) {
        check(Float.self, [5, 19, spatialCount])
        check(Float16.self, [3, 21, spatialCount])
        if spatialCount < 16 { check(Double.self, [4, 11, spatialCount]) }
    }

    private func check<T: InstanceNormScalar>(_: T.Type, _ dimensions: [Int]) {
        let shape = try! InstanceNormShape(dimensions: dimensions)
        var generator = SeededGenerator(seed: UInt64(dimensions.reduce(0, +)))
        let x = generator.normals(shape.elementCount, mean: 3, deviation: 2).map { T($0) }
        let dy = generator.normals(shape.elementCount).map { T($0) }
        // Shifts and means the compute precision holds exactly (μ_lo = 0).
        let shifts = (0..<shape.channels).map { T.Compute(Double($0) / 4 + 2) }
        let statistics = shifts.map { InstanceStatistics(mean: Double($0), variance: 1.5, eps: 1e-5) }
        for threads in [1, 3] {
            var moments = [Double](repeating: 0, count: 2 * shape.instanceCount), gradients = moments
            moments.withUnsafeMutableBufferPointer { sums in
                x.withUnsafeBufferPointer { x in
                    shifts.withUnsafeBufferPointer { shifts in
                        BatchNormKernel.partialMoments(into: sums, x: x, shifts: shifts, shape: shape, threads: threads)
                    }
                }
            }
            gradients.withUnsafeMutableBufferPointer { sums in
                dy.withUnsafeBufferPointer { dy in
                    x.withUnsafeBufferPointer { x in
                        statistics.withUnsafeBufferPointer { statistics in
                            BatchNormKernel.partialGradientSums(
                                into: sums, dy: dy, x: x, statistics: statistics, shape: shape, threads: threads)
                        }
                    }
                }
            }
            var expectedMoments = [Double](), expectedGradients = [Double]()
            for instance in 0..<shape.instanceCount {
                let channel = instance % shape.channels, values = instance * shape.spatialCount
                var sum = 0.0, squares = 0.0, sumDy = 0.0, centered = 0.0
                for position in values..<values + shape.spatialCount {
                    let deviation = (x[position].computed - shifts[channel]).widened
                    sum += deviation
                    squares += deviation * deviation
                    sumDy += dy[position].widened
                    centered += dy[position].widened * deviation
                }
                expectedMoments += [sum, squares]
                expectedGradients += [sumDy, statistics[channel].invstd * centered]
            }
            let label = "\(T.self) \(dimensions) threads \(threads)"
            #expect(bitPatterns(moments) == bitPatterns(expectedMoments), "moments, \(label)")
            #expect(bitPatterns(gradients) == bitPatterns(expectedGradients), "gradient sums, \(label)")
        }
    }
}
