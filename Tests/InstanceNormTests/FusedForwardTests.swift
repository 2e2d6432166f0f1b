import InstanceNorm
import TestSupport
import Testing

/// The forwards' fused order (`FusedForward`: y of one run streamed out
/// while the next run is summed) is taken for streamed runs of 4-128 KiB.
/// It must give the bits of the plain order, which cached stores take and
/// the family tests check against the reference.
@Suite struct FusedForwardOrder {
    /// Instances, groups of several channel segments and LayerNorm rows, of
    /// lengths that start runs and segments off 64-byte boundaries and end
    /// them inside a vector (1073, 1000, 1500, 1056 values), chains of one
    /// to fifteen runs per worker, and a row of 4096 floats (whose stores
    /// start ahead where they would alias the loads).
    @Test(arguments: [
        (Normalization.instance, [3, 5, 1073]), (.instance, [2, 3, 4111]), (.group(groups: 2), [2, 6, 1000]),
        (.group(groups: 3), [3, 6, 1500]), (.layer(normalizedDimensions: 1), [2, 9, 1056]),
        (.layer(normalizedDimensions: 1), [2, 5, 4096]),
    ])
    func keepsTheBitsOfThePlainOrder(_ normalization: Normalization, _ dimensions: [Int]) {
        let shape = try! NormShape(normalization, dimensions: dimensions)
        let runLength = shape.elementCount / shape.statisticsCount
        let weightsPerValue = if case .layer = normalization { true } else { false }
        func check<T: InstanceNormScalar>(_: T.Type) {
            let inputs = FamilyInputs<T>(normalization, dimensions, seed: 61)
            // Not vacuous: the streamed runs take the fused order.
            #expect(FusedForward.applies(toRunsOf: runLength, T.self, weightsPerValue: weightsPerValue), "\(T.self) \(dimensions)")
            let plain = inputs.run(stores: .cached)
            for threads in [1, 2, 3] {
                let fused = inputs.run(threads: threads, stores: .streaming)
                #expect(bitPatterns(fused.y) == bitPatterns(plain.y), "y, \(T.self) \(dimensions), \(threads) threads")
                #expect(fused.statistics == plain.statistics, "statistics, \(T.self) \(dimensions), \(threads) threads")
            }
        }
        check(Float.self)
        check(Double.self)
        // Half-precision runs of 2048 values and more (4 KiB), but LayerNorm's.
        if FusedForward.applies(toRunsOf: runLength, Float16.self, weightsPerValue: weightsPerValue) { check(Float16.self) }
    }

    /// A run whose first value is an outlier takes a second pass for its
    /// variance, from cache, after the fused loop that summed it: the runs
    /// before and after it in the chain keep their bits, and its statistics
    /// are the plain order's.
    @Test(arguments: [(Normalization.instance, [2, 4, 1500]), (.layer(normalizedDimensions: 1), [2, 4, 1500])])
    func outlierRunsInTheChainKeepTheirBits(_ normalization: Normalization, _ dimensions: [Int]) {
        var inputs = FamilyInputs<Float>(normalization, dimensions, seed: 62, mean: 3, deviation: 1e-3)
        for run in [1, 4, 6] { inputs.x[run * 1500] = 1e4 }
        let plain = inputs.run(stores: .cached)
        let fused = inputs.run(threads: 1, stores: .streaming)
        #expect(bitPatterns(fused.y) == bitPatterns(plain.y))
        #expect(fused.statistics == plain.statistics)
        checkFamily(inputs)
    }

    /// The fused loop starts its stores 1 KiB ahead where y's row would lie
    /// within 1 KiB above the next row's x modulo 4 KiB (4K aliasing), and
    /// in step otherwise: rows of 1024 floats with y placed 0, 512, 2048
    /// and 3584 bytes past x modulo 4 KiB, each the plain order's bits.
    @Test(arguments: [0, 512, 2048, 3584])
    func everyPlacementOfYKeepsTheBits(yOffset: Int) throws {
        let inputs = FamilyInputs<Float>(.layer(normalizedDimensions: 1), [1, 6, 1024], seed: 63)
        let shape = inputs.shape, count = shape.elementCount
        let plain = inputs.run(stores: .cached)
        let memory = UnsafeMutableRawPointer.allocate(byteCount: 3 * count * 4 + 8192, alignment: 4096)
        defer { memory.deallocate() }
        let x = memory.bindMemory(to: Float.self, capacity: count)
        let yStart = (memory + (count * 4 + 4095) / 4096 * 4096 + yOffset).bindMemory(to: Float.self, capacity: count)
        x.initialize(from: inputs.x, count: count)
        let y = UnsafeMutableBufferPointer(start: yStart, count: count)
        y.initialize(repeating: .nan)
        let statistics = TensorBuffer(repeating: InstanceStatistics(mean: .nan, variance: .nan, invstd: .nan), count: shape.statisticsCount)
        let gamma = TensorBuffer(try #require(inputs.gamma)), beta = TensorBuffer(try #require(inputs.beta))
        NormKernel.forward(
            y: y, statistics: statistics.elements, x: UnsafeBufferPointer(start: x, count: count), gamma: gamma.readOnly,
            beta: beta.readOnly, shape: shape, eps: 1e-5, stores: .streaming)
        #expect(bitPatterns(Array(y)) == bitPatterns(plain.y), "y placed \(yOffset) bytes past x")
        #expect(statistics.array == plain.statistics)
    }
}
