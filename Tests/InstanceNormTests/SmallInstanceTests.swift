import InstanceNorm
import TestSupport
import Testing

/// The blocked kernels of small instances (`SmallInstances`, M ≤ 196): a
/// block of B instances (B = 16 for half and float, 8 for double) is
/// computed one instance per vector lane, in both layouts.
///
/// The instance counts here are not multiples of B (blocks of fewer lanes,
/// with padding), and the thread counts 1-4 cut the blocks among workers
/// in several ways: by blocks of instances in the forward, by samples
/// (C < B) or by blocks of channels (C ≥ 2B) in the backward.
@Suite struct SmallInstances_ {
    /// The sizes the issue names (below a vector, odd, one and several
    /// groups of 8), one vector of doubles (8) and of floats (16), whose
    /// outputs take one vector per instance, one past the old limits (65:
    /// blocks whose requests for the next block span many groups), 100,
    /// and the largest that takes the blocked kernels.
    static let sizes = [1, 2, 3, 4, 5, 7, 8, 16, 49, 64, 65, 100, SmallInstances.limit]

    /// Against the Double reference (data's-scale tolerance and each value's
    /// own rounding bound), the same bits at threads 1-4, and channels last
    /// (on the transposed data) the same bits as channels first.
    @Test(arguments: sizes, [[3, 7], [2, 37]])
    func everyDtypeLayoutAndThreadCount(spatialCount: Int, batchAndChannels: [Int]) {
        let dimensions = batchAndChannels + [spatialCount]
        check(Float16.self, dimensions)
        check(Float.self, dimensions)
        check(Double.self, dimensions)
    }

    private func check<T: InstanceNormScalar>(_: T.Type, _ dimensions: [Int]) {
        let label = "\(T.self) \(dimensions)"
        checkAgainstReference(T.self, dimensions: dimensions, affine: true, seed: 71)
        let inputs = Inputs<T>(dimensions, affine: true, seed: 71), shape = inputs.shape
        let single = inputs.run(eps: 1e-5)
        let transposedX = channelsLast(inputs.x, shape), transposedDy = channelsLast(inputs.dy, shape)
        for threads in 1...4 {
            expectSameBitPatterns(inputs.run(eps: 1e-5, threads: threads), single, "\(threads) threads, \(label)")
            let last = KernelRun(
                x: transposedX, dy: transposedDy, gamma: inputs.gamma, beta: inputs.beta, shape: shape, eps: 1e-5,
                threads: threads, layout: .channelsLast)
            expectSameBits(last, single, shape, "channels last, \(threads) threads, \(label)")
            // Streaming stores write the statistics and the instance sums
            // with stores of their own (these runs are too small for them
            // to be chosen automatically).
            guard threads % 2 == 1 else { continue }
            expectSameBitPatterns(
                inputs.run(eps: 1e-5, threads: threads, stores: .streaming), single, "streaming, \(threads) threads, \(label)")
            let streamedLast = KernelRun(
                x: transposedX, dy: transposedDy, gamma: inputs.gamma, beta: inputs.beta, shape: shape, eps: 1e-5,
                threads: threads, stores: .streaming, layout: .channelsLast)
            expectSameBits(streamedLast, single, shape, "channels last streaming, \(threads) threads, \(label)")
        }
    }

    private func expectSameBitPatterns<T: InstanceNormScalar>(_ run: KernelRun<T>, _ single: KernelRun<T>, _ label: String) {
        #expect(bitPatterns(run.y) == bitPatterns(single.y), "y, \(label)")
        #expect(bitPatterns(run.dx) == bitPatterns(single.dx), "dx, \(label)")
        #expect(run.statistics == single.statistics, "statistics, \(label)")
        #expect(bitPatterns(run.dgamma) == bitPatterns(single.dgamma), "dgamma, \(label)")
        #expect(bitPatterns(run.dbeta) == bitPatterns(single.dbeta), "dbeta, \(label)")
        #expect(bitPatterns(run.instanceSums) == bitPatterns(single.instanceSums), "sums, \(label)")
    }

    /// Channels last takes a sample's channels in units whose columns fit
    /// 64 KiB per tensor: here 16 blocks of 64 positions (4 KiB each) a
    /// unit, so the 22 blocks of float32 (339 = 21·16 + 3 channels) fall
    /// into units of 16 and 6, the 43 of float64 into 16, 16 and 11, each
    /// with a partial last block; the same bits as channels first, at every
    /// thread count (see `everyDtypeLayoutAndThreadCount`).
    @Test func channelsLastCutsWideSamplesIntoUnits() {
        check(Float.self, [2, 339, 64])
        check(Double.self, [2, 339, 64])
    }

    /// A caller that adds up the shares itself (the exact sums across
    /// ranks) lets the blocked kernels skip dγ, dβ: the same dx and shares,
    /// bit for bit, in both layouts, with one worker (which adds in line)
    /// and three (which add the stored sums afterwards), and dγ, dβ zero.
    @Test(arguments: [4, 49])
    func sharesAloneAreTheSameBits(spatialCount: Int) {
        let inputs = Inputs<Float>([5, 37, spatialCount], affine: true, seed: 89), shape = inputs.shape
        for layout in [TensorLayout.channelsFirst, .channelsLast] {
            let first = layout == .channelsFirst
            let x = first ? inputs.x : channelsLast(inputs.x, shape), dy = first ? inputs.dy : channelsLast(inputs.dy, shape)
            for threads in [1, 3] {
                let label = "M \(spatialCount), \(layout), \(threads) threads"
                let full = KernelRun(
                    x: x, dy: dy, gamma: inputs.gamma, beta: inputs.beta, shape: shape, eps: 1e-5, threads: threads,
                    layout: layout)
                let sharesAlone = KernelRun(
                    x: x, dy: dy, gamma: inputs.gamma, beta: inputs.beta, shape: shape, eps: 1e-5, threads: threads,
                    layout: layout, combinesParameterGradients: false)
                #expect(bitPatterns(sharesAlone.dx) == bitPatterns(full.dx), "dx, \(label)")
                #expect(bitPatterns(sharesAlone.instanceSums) == bitPatterns(full.instanceSums), "shares, \(label)")
                #expect(sharesAlone.dgamma.allSatisfy { $0 == 0 } && sharesAlone.dbeta.allSatisfy { $0 == 0 }, "dγ, dβ, \(label)")
                #expect(full.dbeta.contains { $0 != 0 }, "dβ summed, \(label)")
            }
        }
    }

    /// Half precision writes channels last two blocks at a time (16 values
    /// of 2 bytes fill half a line): whole lines by streaming stores where
    /// rows start on a line (C = 64), and a last block of a sample written
    /// alone (C = 48, three blocks); the same bits as channels first.
    @Test func halfPrecisionChannelsLastWritesBlocksInPairs() {
        check(Float16.self, [3, 64, 49])
        check(Float16.self, [3, 48, 49])
    }

    /// dγ_c, dβ_c are the instances' s2, s1 added in sample order, bit for
    /// bit, with more instances than one worker combines alone (2^16,
    /// where the workers split the channels) and three threads, in both
    /// layouts. (The per-instance kernels combine through the same
    /// function; at M = 65 this many instances take too long unoptimized.)
    @Test func parameterGradientsAreSampleOrderSumsOfManyInstances() {
        let spatialCount = 2
        let inputs = Inputs<Float>([1031, 67, spatialCount], affine: true, seed: 83), shape = inputs.shape
        for layout in [TensorLayout.channelsFirst, .channelsLast] {
            let run = layout == .channelsFirst
                ? inputs.run(eps: 1e-5, threads: 3)
                : KernelRun(x: channelsLast(inputs.x, shape), dy: channelsLast(inputs.dy, shape), gamma: inputs.gamma,
                            beta: inputs.beta, shape: shape, eps: 1e-5, threads: 3, layout: .channelsLast)
            var dbeta = [Double](repeating: 0, count: shape.channels), dgamma = dbeta
            for instance in 0..<shape.instanceCount {
                dbeta[instance % shape.channels] += run.instanceSums[2 * instance]
                dgamma[instance % shape.channels] += run.instanceSums[2 * instance + 1]
            }
            #expect(bitPatterns(run.dbeta) == bitPatterns(dbeta), "dbeta, M \(spatialCount), \(layout)")
            #expect(bitPatterns(run.dgamma) == bitPatterns(dgamma), "dgamma, M \(spatialCount), \(layout)")
        }
    }

    /// The transposes of four-value instances (`transposeQuads`, and
    /// `untransposeQuads` back) against their index formulas, in every
    /// dtype: columns[m·B + b] = rows[4·b + m].
    @Test func quadTransposesMoveEveryValueToItsPlace() {
        quadTransposes(Float16.self)
        quadTransposes(Float.self)
        quadTransposes(Double.self)
    }

    private func quadTransposes<T: InstanceNormScalar>(_: T.Type) {
        let lanes = T.Vector.scalarCount
        // Distinct values, exact in half.
        let rows = (0..<4 * lanes).map { T(Float($0) - 17.5) }
        var columns = [T.Compute](repeating: .nan, count: 4 * lanes), back = columns
        rows.withUnsafeBufferPointer { rows in
            columns.withUnsafeMutableBufferPointer { T.transposeQuads(rows.baseAddress!, into: $0.baseAddress!) }
        }
        for instance in 0..<lanes {
            for position in 0..<4 {
                #expect(columns[position * lanes + instance] == rows[4 * instance + position].computed,
                        "\(T.self) instance \(instance) position \(position)")
            }
        }
        columns.withUnsafeBufferPointer { columns in
            back.withUnsafeMutableBufferPointer { T.Compute.untransposeQuads(columns.baseAddress!, into: $0.baseAddress!) }
        }
        #expect(back == rows.map(\.computed), "\(T.self) turned back")
    }

    /// Float and half blocks take their sums from tiles turned in registers
    /// and float64 from columns, through the generic code that the kernels
    /// are: a witness that fell back to the columns would keep every bit
    /// (the tests above could not tell) and lose the speed.
    @Test func floatAndHalfSumTilesInRegisters() {
        func inRegisters<T: InstanceNormScalar>(_: T.Type) -> Bool { T.sumsGroupsInRegisters }
        #expect(inRegisters(Float.self))
        #expect(inRegisters(Float16.self))
        #expect(!inRegisters(Double.self))
    }

    /// A group's sums from a block in natural order equal `laneSums` over
    /// its transposed columns, lane by lane, at every group length (1-8).
    @Test func groupSumsFromRowsMatchColumns() {
        var generator = SeededGenerator(seed: 81)
        let spatialCount = 13, lanes = 16
        let x = generator.normals(lanes * spatialCount + lanes, mean: 2, deviation: 3).map { Float($0) }
        let dy = generator.normals(lanes * spatialCount + lanes).map { Float($0) }
        let center = SIMD16<Float>((0..<lanes).map { Float($0) / 4 })
        for start in [0, 8] {
            let count = min(8, spatialCount - start)
            for length in 1...count {
                let (sumDy, sumProduct) = x.withUnsafeBufferPointer { xs in
                    dy.withUnsafeBufferPointer { dys in
                        Float.gradientGroupSums(dy: dys.baseAddress! + start, x: xs.baseAddress! + start,
                                                rowStride: spatialCount, center: center, count: length)
                    }
                }
                let (sum, sumSquares) = x.withUnsafeBufferPointer {
                    Float.shiftedGroupSums(x: $0.baseAddress! + start, rowStride: spatialCount, shift: center, count: length)
                }
                for lane in 0..<lanes {
                    var expected = (dy: Float(0), product: Float(0), sum: Float(0), squares: Float(0))
                    for m in start..<start + length {
                        let value = x[lane * spatialCount + m], gradient = dy[lane * spatialCount + m]
                        expected.dy += gradient
                        expected.product = expected.product.addingProduct(gradient, value - center[lane])
                        expected.sum += value - center[lane]
                        expected.squares = expected.squares.addingProduct(value - center[lane], value - center[lane])
                    }
                    #expect(sumDy[lane].bitPattern == expected.dy.bitPattern, "Σ dy, lane \(lane), start \(start), \(length)")
                    #expect(sumProduct[lane].bitPattern == expected.product.bitPattern, "Σ dy·(x − c), lane \(lane)")
                    #expect(sum[lane].bitPattern == expected.sum.bitPattern, "Σ (x − K), lane \(lane)")
                    #expect(sumSquares[lane].bitPattern == expected.squares.bitPattern, "Σ (x − K)², lane \(lane)")
                }
                let first = x.withUnsafeBufferPointer { Float.firstValues($0.baseAddress! + start, rowStride: spatialCount) }
                #expect((0..<lanes).allSatisfy { first[$0] == x[$0 * spatialCount + start] })
            }
        }
    }

    /// Mean 1e4, spread 1e-3 (half: 1e3, 1) at small M: every value within
    /// its rounding bound. Not half at M = 2: with half's ulp of 0.5 at 1e3
    /// a pair of equal values is likely, so σ = 0, r = 1/sqrt(ε) = 1e6, and
    /// the exact dx = γ·r·(dy − s1/M) lies beyond half's range.
    @Test(arguments: [[3, 7, 1], [3, 7, 2], [2, 9, 4], [2, 9, 5], [2, 9, 16], [2, 9, 49]])
    func largeMeanTinySpread(dimensions: [Int]) {
        if dimensions.last != 2 { largeMeanCheck(Float16.self, dimensions, affine: true, mean: 1e3, deviation: 1) }
        largeMeanCheck(Float.self, dimensions, affine: true, mean: 1e4, deviation: 1e-3)
        largeMeanCheck(Double.self, dimensions, affine: true, mean: 1e4, deviation: 1e-3)
    }

    /// One lane of a block whose first value lies 12σ out takes the second
    /// pass alone: its outputs stay within their rounding bounds (which
    /// assume the second pass), and every instance of the batch, that one
    /// and its neighbours, gives the bits it gives computed on its own.
    @Test(arguments: [4, 16, 49])
    func outlierInOneLane(spatialCount: Int) {
        func check<T: InstanceNormScalar>(_: T.Type) {
            let plain = Inputs<T>([1, 21, spatialCount], affine: false, seed: 73, mean: 3, deviation: 1)
            var x = plain.x
            x[5 * spatialCount] = T(3 + 12)
            let inputs = Inputs<T>(shape: plain.shape, x: x, dy: plain.dy, gamma: nil, beta: nil)
            let run = inputs.run(eps: 1e-5)
            expectWithinErrorBounds(inputs, run, eps: 1e-5, "\(T.self) M \(spatialCount), lane 5 12σ out")
            expectEachInstanceAsAlone(inputs, run, finite: 0..<21, "\(T.self) M \(spatialCount) outlier")
        }
        check(Float16.self)
        check(Float.self)
        check(Double.self)
    }

    /// A NaN in one instance and an infinity in another: their own outputs
    /// are not finite, the other instances of their blocks are finite and
    /// the bits they give alone, whatever the layout.
    @Test(arguments: [1, 4, 7, 49])
    func nonFiniteLaneStaysInItsLane(spatialCount: Int) {
        func check<T: InstanceNormScalar>(_: T.Type) {
            let plain = Inputs<T>([1, 21, spatialCount], affine: false, seed: 79)
            var x = plain.x
            x[3 * spatialCount + spatialCount / 2] = .nan
            x[10 * spatialCount] = .infinity
            let inputs = Inputs<T>(shape: plain.shape, x: x, dy: plain.dy, gamma: nil, beta: nil)
            let run = inputs.run(eps: 1e-5)
            let others = (0..<21).filter { $0 != 3 && $0 != 10 }
            for poisoned in [3, 10] {
                #expect(!run.statistics[poisoned].mean.isFinite || !run.statistics[poisoned].variance.isFinite)
                #expect(run.y[poisoned * spatialCount..<(poisoned + 1) * spatialCount].contains { !$0.isFinite })
            }
            expectEachInstanceAsAlone(inputs, run, finite: others, "\(T.self) M \(spatialCount) NaN, Inf")
            let last = KernelRun(
                x: channelsLast(x, inputs.shape), dy: channelsLast(inputs.dy, inputs.shape), gamma: nil, beta: nil,
                shape: inputs.shape, eps: 1e-5, threads: 2, layout: .channelsLast)
            let lastY = channelsFirst(last.y, inputs.shape), lastDx = channelsFirst(last.dx, inputs.shape)
            for instance in others {
                let values = instance * spatialCount..<(instance + 1) * spatialCount
                #expect(bitPatterns(Array(lastY[values])) == bitPatterns(Array(run.y[values])), "channels last y \(instance)")
                #expect(bitPatterns(Array(lastDx[values])) == bitPatterns(Array(run.dx[values])), "channels last dx \(instance)")
                #expect(last.statistics[instance] == run.statistics[instance])
            }
        }
        check(Float16.self)
        check(Float.self)
        check(Double.self)
    }

    /// Expects every instance in `finite` to have finite outputs, the same
    /// bits as a run of that instance alone (shape (1, 1, M), so lane 0 of
    /// a block of one).
    private func expectEachInstanceAsAlone<T: InstanceNormScalar>(
        _ inputs: Inputs<T>, _ run: KernelRun<T>, finite: some Sequence<Int>, _ label: String
    ) {
        let count = inputs.shape.spatialCount
        for instance in finite {
            let values = instance * count..<(instance + 1) * count
            let alone = KernelRun(
                x: Array(inputs.x[values]), dy: Array(inputs.dy[values]), gamma: nil, beta: nil,
                shape: try! InstanceNormShape(dimensions: [1, 1, count]), eps: 1e-5)
            #expect(run.y[values].allSatisfy(\.isFinite) && run.dx[values].allSatisfy(\.isFinite), "\(label) \(instance)")
            #expect(bitPatterns(Array(run.y[values])) == bitPatterns(alone.y), "y of \(instance), \(label)")
            #expect(bitPatterns(Array(run.dx[values])) == bitPatterns(alone.dx), "dx of \(instance), \(label)")
            #expect(run.statistics[instance] == alone.statistics[0], "statistics of \(instance), \(label)")
            #expect(bitPatterns(Array(run.instanceSums[2 * instance..<2 * instance + 2])) == bitPatterns(alone.instanceSums),
                    "sums of \(instance), \(label)")
        }
    }
}
