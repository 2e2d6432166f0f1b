import InstanceNorm
import TestSupport
import Testing

/// The results must be the same bits for every thread count and store
/// policy: threads share instances only at fixed chunk boundaries and their
/// partial sums are combined in chunk order, and the vector and scalar paths
/// compute the same expressions.
@Suite struct Reproducibility {
    /// Whole instances per thread (N·C ≥ threads), instances split across
    /// threads (N·C < threads, M spanning several chunks), uneven sizes.
    @Test(arguments: [[4, 3, 50, 41], [1, 1, 5000], [1, 2, 3, 1031], [3, 1, 2049], [2, 2, 7]])
    func sameBitsForEveryThreadCount(dimensions: [Int]) {
        func check<T: InstanceNormScalar>(_: T.Type) {
            let inputs = Inputs<T>(dimensions, affine: true, seed: 41)
            let single = inputs.run(eps: 1e-5, threads: 1)
            for threads in [2, 3, 4, 7] {
                let run = inputs.run(eps: 1e-5, threads: threads)
                #expect(run.y == single.y, "y, \(threads) threads, \(T.self) \(dimensions)")
                #expect(run.statistics == single.statistics, "statistics, \(threads) threads")
                #expect(run.dx == single.dx, "dx, \(threads) threads")
                #expect(run.dgamma == single.dgamma && run.dbeta == single.dbeta, "dgamma/dbeta, \(threads) threads")
            }
        }
        check(Float16.self)
        check(Float.self)
        check(Double.self)
    }

    @Test func streamingAndCachedStoresAgree() {
        func check<T: InstanceNormScalar>(_: T.Type) {
            let inputs = Inputs<T>([3, 2, 37, 29], affine: true, seed: 43)
            let cached = inputs.run(eps: 1e-5, threads: 2, stores: .cached)
            let streamed = inputs.run(eps: 1e-5, threads: 2, stores: .streaming)
            #expect(cached.y == streamed.y)
            #expect(cached.dx == streamed.dx)
            let (forward, backward) = inputs.reference(eps: 1e-5)
            let tolerance = outputTolerance(T.self)
            #expect(maxScaledError(streamed.y, forward.y, scale: magnitude(forward.y, minimum: 1)) <= tolerance)
            #expect(maxScaledError(streamed.dx, backward.dx, scale: magnitude(backward.dx, minimum: 1e-3)) <= tolerance)
        }
        check(Float16.self)
        check(Float.self)
        check(Double.self)
    }

    /// Streamed instances of 8-64 KiB take the fused backward (dx of one
    /// instance written while the next is summed); it must give the bits of
    /// the plain order, with instances that start off a 64-byte boundary
    /// (M = 4111), chains of one to six instances per worker, and with the
    /// overlap's tail instances left out of the chains.
    @Test(arguments: [1, 2, 4])
    func fusedBackwardKeepsBits(threads: Int) {
        func check<T: InstanceNormScalar>(_: T.Type) {
            let inputs = Inputs<T>([2, 3, 4111], affine: true, seed: 53)
            let shape = inputs.shape
            let plain = inputs.run(eps: 1e-5, threads: threads, stores: .cached)
            let fused = inputs.run(eps: 1e-5, threads: threads, stores: .streaming)
            // Compared first: a failing #expect would print both arrays whole.
            let sameDx = fused.dx == plain.dx
            #expect(sameDx, "\(T.self), \(threads) threads")
            #expect(fused.dgamma == plain.dgamma && fused.dbeta == plain.dbeta && fused.instanceSums == plain.instanceSums)
            let backward = inputs.reference(eps: 1e-5).backward
            #expect(maxScaledError(fused.dx, backward.dx, scale: magnitude(backward.dx, minimum: 1e-3))
                    <= outputTolerance(T.self))

            let dx = TensorBuffer<T>(repeating: .nan, count: shape.elementCount)
            let dgamma = TensorBuffer<Double>(repeating: .nan, count: shape.channels)
            let dbeta = TensorBuffer<Double>(repeating: .nan, count: shape.channels)
            let x = TensorBuffer(inputs.x), dy = TensorBuffer(inputs.dy)
            let statistics = TensorBuffer(plain.statistics), gamma = TensorBuffer(inputs.gamma!)
            let ready = EventLog()
            let overlap = BackwardOverlap(
                tailElements: 5000, progressInterval: 1000,
                sumsReady: { ready.append(dgamma.array == plain.dgamma ? "ready" : "early") }, progress: {})
            BatchKernel.backward(
                dx: dx.elements, dgamma: dgamma.elements, dbeta: dbeta.elements, dy: dy.readOnly, x: x.readOnly,
                statistics: statistics.readOnly, gamma: gamma.readOnly, shape: shape, threads: threads,
                stores: .streaming, overlap: overlap)
            let sameDxWithOverlap = dx.array == plain.dx
            #expect(sameDxWithOverlap, "with overlap: \(T.self), \(threads) threads")
            #expect(ready.entries == ["ready"])
        }
        check(Float16.self)
        check(Float.self)
        check(Double.self)
    }

    /// A first value far from the rest makes the one-pass variance about it
    /// cancel; the kernel must notice and take a second pass, on one thread
    /// and with the instance split across threads.
    @Test(arguments: [1, 3])
    func outlierFirstValue(threads: Int) {
        func check<T: InstanceNormScalar>(_: T.Type) {
            var generator = SeededGenerator(seed: 47)
            var x = generator.normals(4000, mean: 5, deviation: 0.01)
            x[0] = 1000
            let values = x.map { T($0) }
            let shape = try! InstanceNormShape(batch: 1, channels: 1, spatial: [4000])
            let dy = generator.normals(4000).map { T($0) }
            let run = KernelRun(x: values, dy: dy, gamma: nil, beta: nil, shape: shape, eps: 1e-12, threads: threads)
            let wide = values.map(\.widened)
            let forward = Reference.forward(x: wide, batch: 1, channels: 1, spatialCount: 4000, eps: 1e-12)
            #expect(maxScaledError(run.statistics.map(\.invstd), forward.invstd, scale: 0) <= computeTolerance(T.self))
            #expect(maxScaledError(run.y, forward.y, scale: magnitude(forward.y, minimum: 1)) <= outputTolerance(T.self))
        }
        check(Float16.self)
        check(Float.self)
        check(Double.self)
    }

    /// The per-instance kernels (M > 196) write each instance's s1, s2
    /// straight into the caller's table (filled with NaN first by the
    /// harness): every entry is written, with whole instances per thread,
    /// the fused order (streamed), and instances split across threads; each
    /// is Σ dy and Σ dy·(x − μ)·r to within the float chunks' rounding, and
    /// dγ, dβ are the entries added in sample order, bit for bit.
    @Test(arguments: [([3, 5, 16, 16], 1, StorePolicy.cached), ([3, 5, 16, 16], 2, .cached),
                      ([2, 3, 4111], 2, .streaming), ([1, 1, 64, 64], 2, .automatic)])
    func perInstanceSumsFillTheCallersTable(dimensions: [Int], threads: Int, stores: StorePolicy) {
        let inputs = Inputs<Float>(dimensions, affine: true, seed: 59), shape = inputs.shape
        let run = inputs.run(eps: 1e-5, threads: threads, stores: stores)
        let (x, dy) = (inputs.wideX, inputs.wideDy), m = shape.spatialCount
        var dbeta = [Double](repeating: 0, count: shape.channels), dgamma = dbeta
        for instance in 0..<shape.instanceCount {
            let (mean, invstd) = (run.statistics[instance].mean, run.statistics[instance].invstd)
            let values = instance * m..<(instance + 1) * m
            let sumDy = values.reduce(0) { $0 + dy[$1] }
            let sumDyXHat = values.reduce(0) { $0 + dy[$1] * (x[$1] - mean) * invstd }
            let scale = values.reduce(0) { $0 + abs(dy[$1]) * max(1, abs(x[$1] - mean) * invstd) }
            let tolerance = computeTolerance(Float.self) * scale
            #expect(abs(run.instanceSums[2 * instance] - sumDy) <= tolerance, "s1 of \(instance), \(dimensions)")
            #expect(abs(run.instanceSums[2 * instance + 1] - sumDyXHat) <= tolerance, "s2 of \(instance), \(dimensions)")
            dbeta[instance % shape.channels] += run.instanceSums[2 * instance]
            dgamma[instance % shape.channels] += run.instanceSums[2 * instance + 1]
        }
        #expect(bitPatterns(run.dbeta) == bitPatterns(dbeta), "dbeta, \(dimensions), \(threads) threads")
        #expect(bitPatterns(run.dgamma) == bitPatterns(dgamma), "dgamma, \(dimensions), \(threads) threads")
    }
}
