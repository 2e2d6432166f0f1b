import InstanceNorm
import TestSupport
import Testing

/// One forward and backward of `NormKernel`, in precision T.
struct FamilyRun<T: InstanceNormScalar>: Equatable {
    var y: [T], statistics: [InstanceStatistics], dx: [T]
    var dgamma: [Double], dbeta: [Double]
    /// (N, P, 2): each sample's (Σ dy, Σ dy·x̂) per parameter.
    var parameterSums: [Double]

    /// `keepsTable` false: the backward gets no `parameterSums` to fill
    /// (they are then empty here).
    init(x: [T], dy: [T], gamma: [T]?, beta: [T]?, shape: NormShape, eps: Double,
         threads: Int = 1, stores: StorePolicy = .automatic, layout: TensorLayout = .channelsFirst,
         overlap: BackwardOverlap? = nil, keepsTable: Bool = true) {
        let x = TensorBuffer(x), dy = TensorBuffer(dy)
        let gamma = gamma.map { TensorBuffer($0) }, beta = beta.map { TensorBuffer($0) }
        let y = TensorBuffer<T>(repeating: .nan, count: x.count), dx = TensorBuffer<T>(repeating: .nan, count: x.count)
        let statistics = TensorBuffer(
            repeating: InstanceStatistics(mean: .nan, variance: .nan, invstd: .nan), count: shape.statisticsCount)
        let dgamma = TensorBuffer<Double>(repeating: .nan, count: shape.parameterCount)
        let dbeta = TensorBuffer<Double>(repeating: .nan, count: shape.parameterCount)
        let sums = TensorBuffer<Double>(repeating: .nan, count: keepsTable ? 2 * shape.batch * shape.parameterCount : 0)
        NormKernel.forward(
            y: y.elements, statistics: statistics.elements, x: x.readOnly, gamma: gamma?.readOnly, beta: beta?.readOnly,
            shape: shape, eps: eps, threads: threads, stores: stores, layout: layout)
        NormKernel.backward(
            dx: dx.elements, dgamma: dgamma.elements, dbeta: dbeta.elements, dy: dy.readOnly, x: x.readOnly,
            statistics: statistics.readOnly, gamma: gamma?.readOnly, shape: shape, threads: threads, stores: stores,
            parameterSums: keepsTable ? sums.elements : nil, overlap: overlap, layout: layout)
        (self.y, self.statistics, self.dx) = (y.array, statistics.array, dx.array)
        (self.dgamma, self.dbeta, parameterSums) = (dgamma.array, dbeta.array, sums.array)
    }

    static func == (lhs: Self, rhs: Self) -> Bool {
        bitPatterns(lhs.y) == bitPatterns(rhs.y) && bitPatterns(lhs.dx) == bitPatterns(rhs.dx)
            && lhs.statistics == rhs.statistics && bitPatterns(lhs.dgamma) == bitPatterns(rhs.dgamma)
            && bitPatterns(lhs.dbeta) == bitPatterns(rhs.dbeta) && bitPatterns(lhs.parameterSums) == bitPatterns(rhs.parameterSums)
    }
}

/// Random inputs for a norm, rounded to T, with γ, β of the norm's parameter shape.
struct FamilyInputs<T: InstanceNormScalar> {
    let shape: NormShape
    // Variables, so that a test can plant a special value in random inputs.
    var x: [T], dy: [T], gamma: [T]?, beta: [T]?
    /// The layout the kernels run in; x, dy and the run's y, dx are channels
    /// first here whatever it is (`run` transposes on the way in and out).
    let layout: TensorLayout

    init(_ normalization: Normalization, _ dimensions: [Int], affine: Bool = true, seed: UInt64,
         mean: Double = 0, deviation: Double = 1, layout: TensorLayout = .channelsFirst) {
        self.layout = layout
        shape = try! NormShape(normalization, dimensions: dimensions)
        var generator = SeededGenerator(seed: seed)
        x = generator.normals(shape.elementCount, mean: mean, deviation: deviation).map { T($0) }
        dy = generator.normals(shape.elementCount).map { T($0) }
        gamma = affine ? generator.normals(shape.parameterCount, mean: 1, deviation: 0.5).map { T($0) } : nil
        beta = affine ? generator.normals(shape.parameterCount, deviation: 0.5).map { T($0) } : nil
    }

    func run(
        eps: Double = 1e-5, threads: Int = 1, stores: StorePolicy = .automatic, overlap: BackwardOverlap? = nil,
        keepsTable: Bool = true
    ) -> FamilyRun<T> {
        guard layout == .channelsLast else {
            return FamilyRun(x: x, dy: dy, gamma: gamma, beta: beta, shape: shape, eps: eps, threads: threads, stores: stores,
                             overlap: overlap, keepsTable: keepsTable)
        }
        let (channels, positions) = (shape.dimensions[1], shape.spatialCount)
        var run = FamilyRun(
            x: channelsLast(x, channels: channels, positions: positions), dy: channelsLast(dy, channels: channels, positions: positions),
            gamma: gamma, beta: beta, shape: shape, eps: eps, threads: threads, stores: stores, layout: .channelsLast,
            overlap: overlap)
        run.y = channelsFirst(run.y, channels: channels, positions: positions)
        run.dx = channelsFirst(run.dx, channels: channels, positions: positions)
        return run
    }

    /// The rows of the reference for channels-first data.
    var rows: Reference.Rows {
        switch shape.normalization {
        case .instance:
            .group(batch: shape.batch, channels: shape.dimensions[1], spatialCount: shape.spatialCount, groups: shape.dimensions[1])
        case .group(let groups):
            .group(batch: shape.batch, channels: shape.dimensions[1], spatialCount: shape.spatialCount, groups: groups)
        case .layer:
            .layer(rowCount: shape.rowCount, rowLength: shape.rowLength)
        case .batch:
            .batch(batch: shape.batch, channels: shape.dimensions[1], spatialCount: shape.spatialCount)
        }
    }

    func reference(eps: Double = 1e-5) -> (forward: Reference.Forward, backward: Reference.Backward) {
        let (wideX, wideDy) = (x.map(\.widened), dy.map(\.widened))
        let (wideGamma, wideBeta) = (gamma?.map(\.widened), beta?.map(\.widened))
        return (Reference.forward(x: wideX, rows: rows, gamma: wideGamma, beta: wideBeta, eps: eps),
                Reference.backward(dy: wideDy, x: wideX, rows: rows, gamma: wideGamma, eps: eps))
    }
}

/// The kernel's outputs against the Double reference, judged as
/// `checkAgainstReference` judges InstanceNorm's: y, dx within
/// `outputTolerance`, statistics within `computeTolerance`, dγ, dβ against
/// the size of their sums (a row's length times the rows that share a
/// parameter).
func checkFamily<T: InstanceNormScalar>(
    _ inputs: FamilyInputs<T>, threads: Int = 1, eps: Double = 1e-5, extraTolerance: Double = 0,
    sourceLocation: SourceLocation = #_sourceLocation
) {
    let run = inputs.run(eps: eps, threads: threads)
    let (forward, backward) = inputs.reference(eps: eps)
    let label = "\(T.self) \(inputs.shape) \(inputs.layout) threads \(threads)"
    let tolerance = outputTolerance(T.self) + extraTolerance, statisticsTolerance = computeTolerance(T.self) + extraTolerance
    #expect(maxScaledError(run.y, forward.y, scale: magnitude(forward.y, minimum: 1)) <= tolerance, "y \(label)",
            sourceLocation: sourceLocation)
    #expect(maxScaledError(run.statistics.map(\.mean), forward.mean, scale: 1) <= statisticsTolerance, "mean \(label)",
            sourceLocation: sourceLocation)
    #expect(maxScaledError(run.statistics.map(\.invstd), forward.invstd, scale: 0) <= statisticsTolerance, "invstd \(label)",
            sourceLocation: sourceLocation)
    #expect(maxScaledError(run.dx, backward.dx, scale: magnitude(backward.dx, minimum: 1e-3)) <= tolerance, "dx \(label)",
            sourceLocation: sourceLocation)
    let terms = Double(inputs.shape.elementCount / max(inputs.shape.parameterCount, 1))
    #expect(maxScaledError(run.dgamma, backward.dgamma, scale: terms) <= statisticsTolerance, "dgamma \(label)",
            sourceLocation: sourceLocation)
    #expect(maxScaledError(run.dbeta, backward.dbeta, scale: terms) <= statisticsTolerance, "dbeta \(label)",
            sourceLocation: sourceLocation)
    // The per-sample shares add up to dγ, dβ (in sample order, as the kernel adds them).
    let parameters = inputs.shape.parameterCount
    for parameter in 0..<parameters {
        let shares = (0..<inputs.shape.batch).map { 2 * ($0 * parameters + parameter) }
        #expect(shares.reduce(0.0) { $0 + run.parameterSums[$1] } == run.dbeta[parameter], sourceLocation: sourceLocation)
        #expect(shares.reduce(0.0) { $0 + run.parameterSums[$1 + 1] } == run.dgamma[parameter], sourceLocation: sourceLocation)
    }
}

/// `checkFamily` in half, float and double precision (seeds `seed`,
/// `seed` + 20, `seed` + 40), with and without γ, β.
func checkFamilyInEveryPrecision(
    _ normalization: Normalization, _ dimensions: [Int], seed: UInt64, sourceLocation: SourceLocation = #_sourceLocation
) {
    for affine in [true, false] {
        checkFamily(FamilyInputs<Float16>(normalization, dimensions, affine: affine, seed: seed), sourceLocation: sourceLocation)
        checkFamily(FamilyInputs<Float>(normalization, dimensions, affine: affine, seed: seed + 20), sourceLocation: sourceLocation)
        checkFamily(FamilyInputs<Double>(normalization, dimensions, affine: affine, seed: seed + 40), sourceLocation: sourceLocation)
    }
}

@Suite struct NormFamily {
    /// (normalization, dimensions): group sizes 1, 2 and C/2; M = 1 (also as (N, C)), odd M
    /// and a group longer than a reduction chunk (1024); layer norm over
    /// one, two and all trailing dimensions, odd D, and x of (N, D), whose
    /// every sample is one row (its shares written straight into the table).
    static let cases: [(Normalization, [Int])] = [
        (.group(groups: 1), [2, 4, 5]), (.group(groups: 2), [3, 4, 7, 3]), (.group(groups: 2), [2, 6, 1]),
        (.group(groups: 3), [2, 6, 19, 23]), (.group(groups: 1), [1, 3, 700]), (.group(groups: 3), [4, 12]),
        (.layer(normalizedDimensions: 1), [3, 5, 37]), (.layer(normalizedDimensions: 2), [2, 3, 4, 9]),
        (.layer(normalizedDimensions: 3), [2, 3, 5, 7]), (.layer(normalizedDimensions: 1), [2, 1, 1]),
        (.layer(normalizedDimensions: 1), [2, 3, 1500]), (.layer(normalizedDimensions: 1), [7, 40]),
        (.batch, [3, 4, 5]), (.batch, [2, 3, 4, 5]), (.batch, [4, 6, 1]), (.batch, [5, 3]), (.batch, [1, 2, 1100]),
    ]

    @Test(arguments: 0..<cases.count)
    func againstTheReference(_ index: Int) {
        let (normalization, dimensions) = Self.cases[index]
        checkFamilyInEveryPrecision(normalization, dimensions, seed: 20 + UInt64(index))
    }

    /// A channel whose γ is so small that A/(L·γ), the centre of its dy in
    /// GroupNorm's dx, overflows the compute precision (subnormal γ, or a
    /// tiny one with loss-scaled dy): dx stays finite and within tolerance
    /// of the reference, as PyTorch's does (it was NaN, inf − inf).
    @Test(arguments: [TensorLayout.channelsFirst, .channelsLast])
    func tinyGammaKeepsGroupDxFinite(_ layout: TensorLayout) {
        func check<T: InstanceNormScalar>(_: T.Type, gamma tiny: Double, gradientScale: Double) {
            var inputs = FamilyInputs<T>(.group(groups: 2), [3, 4, 5, 3], seed: 41, layout: layout)
            inputs.gamma![1] = T(tiny)
            inputs.dy = inputs.dy.map { $0 * T(gradientScale) }
            let run = inputs.run()
            let finite = run.dx.allSatisfy { $0.isFinite }
            #expect(finite, "\(T.self) γ \(tiny) \(layout)")
            checkFamily(inputs)
        }
        check(Float.self, gamma: 1e-40, gradientScale: 1)
        check(Float.self, gamma: 1e-34, gradientScale: 65536)
        check(Double.self, gamma: 1e-310, gradientScale: 1)
        check(Double.self, gamma: 1e-300, gradientScale: 1e10)
    }

    /// Every thread count gives the same bits: whole rows or samples per
    /// worker, and (1, 3, 700) G = 1 or (2, 1, 1500) with a single row per
    /// sample, where the workers share a row's chunks.
    @Test(arguments: 0..<cases.count)
    func sameBitsForEveryThreadCount(_ index: Int) {
        let (normalization, dimensions) = Self.cases[index]
        let inputs = FamilyInputs<Float>(normalization, dimensions, seed: 80 + UInt64(index))
        let single = inputs.run(threads: 1)
        for threads in [2, 3, 5] {
            #expect(inputs.run(threads: threads) == single, "threads \(threads)")
            #expect(inputs.run(threads: threads, stores: .streaming) == single, "streaming, threads \(threads)")
        }
    }

    /// Given no table to fill, one thread adds the shares of one-row
    /// LayerNorm samples straight into dγ, dβ (`LayerBatch.addsSharesInLine`):
    /// the bits of the table added up in sample order, in every precision.
    @Test(arguments: [[7, 40], [5, 3, 5, 7], [6, 1], [3, 1500]] as [[Int]])
    func layerSharesAddedInLineKeepTheTablesBits(_ dimensions: [Int]) {
        func check<T: InstanceNormScalar>(_: T.Type) {
            let inputs = FamilyInputs<T>(.layer(normalizedDimensions: dimensions.count - 1), dimensions, seed: 91)
            let table = inputs.run(), inLine = inputs.run(keepsTable: false)
            #expect(bitPatterns(inLine.dgamma) == bitPatterns(table.dgamma), "\(T.self) \(dimensions)")
            #expect(bitPatterns(inLine.dbeta) == bitPatterns(table.dbeta), "\(T.self) \(dimensions)")
            #expect(bitPatterns(inLine.dx) == bitPatterns(table.dx) && bitPatterns(inLine.y) == bitPatterns(table.y))
            // Not vacuous: Σ dy (with D = 1, x̂ = 0 and dγ = 0 exactly).
            #expect(inLine.dbeta.contains { $0 != 0 })
        }
        check(Float16.self)
        check(Float.self)
        check(Double.self)
    }

    /// The fused backward orders (dx of one group or row streamed while the
    /// next is summed) are taken only with streamed outputs and, for
    /// GroupNorm, channel segments of 8-64 KiB: such shapes, streamed, give
    /// the bits of the plain order at every thread count (and the plain
    /// order is checked against the reference above).
    @Test(arguments: [
        (Normalization.group(groups: 2), [3, 4, 2100]), (.group(groups: 3), [2, 6, 2049]), (.layer(normalizedDimensions: 1), [2, 9, 700]),
        // Rows on whole lines: the fused order takes them in pairs where `LayerRowPairs` says so, the ninth alone
        // (`LayerRowPairsOrders` runs both orders on every machine).
        (.layer(normalizedDimensions: 1), [2, 9, 1056]),
    ])
    func fusedBackwardKeepsBits(_ normalization: Normalization, _ dimensions: [Int]) {
        let inputs = FamilyInputs<Float>(normalization, dimensions, seed: 17)
        let plain = inputs.run(stores: .cached)
        for threads in [1, 2, 3] {
            #expect(inputs.run(threads: threads, stores: .streaming) == plain, "threads \(threads)")
        }
        let wide = FamilyInputs<Double>(normalization, dimensions, seed: 18)
        #expect(wide.run(stores: .streaming) == wide.run(stores: .cached))
        checkFamily(inputs)
    }

    /// With an overlap, each worker leaves the dx of its last values for
    /// after `sumsReady` (LayerNorm: its last rows, which may be part of a
    /// sample; GroupNorm: its last samples; small instances: the batch's
    /// last blocks, claimed by no one in particular): the same bits as without,
    /// fused or plain, at every thread count, with `sumsReady` called once
    /// and `progress` along the deferred values.
    @Test(arguments: [(Normalization.layer(normalizedDimensions: 1), [3, 9, 700]), (.layer(normalizedDimensions: 1), [3, 9, 1056]),
                      (.group(groups: 2), [3, 4, 2100]), (.instance, [64, 8, 4, 4])])
    func overlapTailsKeepBits(_ normalization: Normalization, _ dimensions: [Int]) {
        let inputs = FamilyInputs<Float>(normalization, dimensions, seed: 19)
        let plain = inputs.run(stores: .cached)
        for threads in [1, 2, 3] {
            for stores in [StorePolicy.cached, .streaming] {
                let events = EventLog()
                let overlap = BackwardOverlap(
                    tailElements: 2000, progressInterval: 500, sumsReady: { events.append("ready") },
                    progress: { events.append("progress") })
                let run = inputs.run(threads: threads, stores: stores, overlap: overlap)
                #expect(run == plain, "threads \(threads), \(stores)")
                #expect(events.entries.first == "ready" && events.entries.filter { $0 == "ready" }.count == 1)
                #expect(events.entries.contains("progress"), "threads \(threads), \(stores)")
            }
        }
    }

    /// A rank with no samples still reports its (empty) sums to the
    /// overlap, once, so that its collective starts with the others'.
    @Test(arguments: [(Normalization.layer(normalizedDimensions: 1), [0, 9, 700]), (.group(groups: 2), [0, 4, 30]),
                      (.instance, [0, 3, 5])])
    func emptyBatchReportsItsSums(_ normalization: Normalization, _ dimensions: [Int]) {
        let inputs = FamilyInputs<Float>(normalization, dimensions, seed: 20)
        for threads in [1, 2] {
            let events = EventLog()
            let overlap = BackwardOverlap(
                tailElements: 2000, progressInterval: 500, sumsReady: { events.append("ready") }, progress: {})
            let run = inputs.run(threads: threads, stores: .streaming, overlap: overlap)
            #expect(run.dx.isEmpty && events.entries == ["ready"], "\(normalization), threads \(threads)")
        }
    }

    /// G = C is InstanceNorm: the same bits as `BatchKernel`, every output.
    @Test(arguments: [[2, 3, 5], [3, 4, 17, 9], [2, 5, 1]])
    func groupsOfOneChannelAreInstanceNorm(_ dimensions: [Int]) {
        let inputs = FamilyInputs<Float>(.group(groups: dimensions[1]), dimensions, seed: 3)
        let instance = FamilyInputs<Float>(.instance, dimensions, seed: 3)
        let kernel = KernelRun(x: inputs.x, dy: inputs.dy, gamma: inputs.gamma, beta: inputs.beta,
                               shape: try! InstanceNormShape(dimensions: dimensions), eps: 1e-5)
        let group = inputs.run()
        #expect(group == instance.run())
        #expect(bitPatterns(group.y) == bitPatterns(kernel.y) && bitPatterns(group.dx) == bitPatterns(kernel.dx))
        #expect(bitPatterns(group.dgamma) == bitPatterns(kernel.dgamma) && group.statistics == kernel.statistics)
    }

    /// Channels-last GroupNorm gives the channels-first bits on the
    /// transposed data. (BatchNorm sums channels last in the tensor's
    /// order, other bits: see `BatchNormChannelsLast`.)
    @Test(arguments: [Normalization.group(groups: 1), .group(groups: 2), .group(groups: 4)], [1, 3])
    func channelsLastMatchesChannelsFirst(normalization: Normalization, threads: Int) {
        let dimensions = [3, 4, 5, 7]
        let inputs = FamilyInputs<Float>(normalization, dimensions, seed: 9)
        let first = inputs.run(threads: threads)
        let last = FamilyRun(
            x: channelsLast(inputs.x, channels: 4, positions: 35), dy: channelsLast(inputs.dy, channels: 4, positions: 35), gamma: inputs.gamma,
            beta: inputs.beta, shape: inputs.shape, eps: 1e-5, threads: threads, layout: .channelsLast)
        #expect(bitPatterns(channelsLast(first.y, channels: 4, positions: 35)) == bitPatterns(last.y))
        #expect(bitPatterns(channelsLast(first.dx, channels: 4, positions: 35)) == bitPatterns(last.dx))
        #expect(first.statistics == last.statistics)
        #expect(bitPatterns(first.dgamma) == bitPatterns(last.dgamma) && bitPatterns(first.dbeta) == bitPatterns(last.dbeta))
        #expect(bitPatterns(first.parameterSums) == bitPatterns(last.parameterSums))
    }

    /// Mean 1e4, spread 1e-3 in Float (1e3 and 1 in half): the folded
    /// arithmetic about μ_hi keeps the digits, as for InstanceNorm.
    @Test(arguments: [(Normalization.group(groups: 2), [2, 4, 64]), (.layer(normalizedDimensions: 1), [2, 3, 200]),
                      (.batch, [3, 2, 40])])
    func largeMeanTinySpread(_ normalization: Normalization, _ dimensions: [Int]) {
        // Condition |μ|/σ: an ulp of the mean in Double moves x̂ by ulp·μ/σ (see `largeMeanCheck`).
        checkFamily(FamilyInputs<Float>(normalization, dimensions, seed: 5, mean: 1e4, deviation: 1e-3), eps: 1e-12,
                    extraTolerance: 16 * Double.ulpOfOne * 1e7)
        checkFamily(FamilyInputs<Float16>(normalization, dimensions, seed: 6, mean: 1e3, deviation: 1), eps: 1e-12,
                    extraTolerance: 16 * Double.ulpOfOne * 1e3)
    }

    /// The family's dx folds the rounding of its mean gradient d̄ back into
    /// its constant q (`GroupKernel.gradientOperation`), as InstanceNorm's
    /// does m̄'s: the same check as `meanGradientRoundingFoldedBack`
    /// (`gradientWithExactSums`, ε = 10⁶), each dx within 16 ulps of the
    /// largest |dx| of its group, row or channel. Lengths that are not
    /// powers of two, so that d̄ is not a float: groups of 14 (blocked) and
    /// 510 values, rows of 49, channels of 21 and 765.
    @Test(arguments: [(Normalization.group(groups: 2), [2, 4, 7]), (.group(groups: 2), [2, 4, 15, 17]),
                      (.layer(normalizedDimensions: 1), [3, 2, 49]), (.batch, [3, 4, 7]), (.batch, [3, 2, 15, 17])])
    func meanGradientRoundingFoldedBack(_ normalization: Normalization, _ dimensions: [Int]) {
        var inputs = FamilyInputs<Float>(normalization, dimensions, affine: false, seed: 22)
        inputs.dy = gradientWithExactSums(count: inputs.dy.count, seed: 23)
        let eps = 1e6
        let (dx, exact) = (inputs.run(eps: eps).dx, inputs.reference(eps: eps).backward.dx)
        let (channels, positions) = (dimensions[1], inputs.shape.spatialCount)
        let worst = worstErrorOverRowTolerance(dx, exact) { index in
            switch normalization {
            case .group(let groups): index / (channels / groups * positions)
            case .layer: index / dimensions.last!
            default: index / positions % channels
            }
        }
        #expect(worst <= 1, "\(normalization) \(dimensions): dx error over 16 ulps of its row's largest |dx|: \(worst)")
    }

    /// dx, dγ, dβ against central differences of the loss Σ w·y in Double:
    /// an independent check of the reference's and the kernel's calculus.
    @Test(arguments: [(Normalization.group(groups: 2), [2, 4, 3]), (.layer(normalizedDimensions: 1), [2, 2, 5]),
                      (.layer(normalizedDimensions: 2), [2, 3, 4]), (.batch, [3, 2, 4]), (.batch, [4, 3])])
    func finiteDifferences(_ normalization: Normalization, _ dimensions: [Int]) {
        let inputs = FamilyInputs<Double>(normalization, dimensions, seed: 17)
        let weights = inputs.dy  // dL/dy for L = Σ w·y
        let loss = { (x: [Double], gamma: [Double], beta: [Double]) -> Double in
            let run = FamilyRun(x: x, dy: weights, gamma: gamma, beta: beta, shape: inputs.shape, eps: 1e-5)
            return zip(run.y, weights).map { $0 * $1 }.reduce(0, +)
        }
        let run = inputs.run()
        let step = 1e-6
        func derivative(_ perturb: (Double) -> Double) -> Double { (perturb(step) - perturb(-step)) / (2 * step) }
        for index in inputs.x.indices {
            let numeric = derivative { delta in var x = inputs.x; x[index] += delta; return loss(x, inputs.gamma!, inputs.beta!) }
            #expect(abs(numeric - run.dx[index]) <= 1e-6 * (1 + abs(numeric)), "dx[\(index)]")
        }
        for index in inputs.gamma!.indices {
            let dgamma = derivative { delta in var gamma = inputs.gamma!; gamma[index] += delta; return loss(inputs.x, gamma, inputs.beta!) }
            let dbeta = derivative { delta in var beta = inputs.beta!; beta[index] += delta; return loss(inputs.x, inputs.gamma!, beta) }
            #expect(abs(dgamma - run.dgamma[index]) <= 1e-6 * (1 + abs(dgamma)), "dgamma[\(index)]")
            #expect(abs(dbeta - run.dbeta[index]) <= 1e-6 * (1 + abs(dbeta)), "dbeta[\(index)]")
        }
    }

    @Test func shapesAreChecked() {
        #expect(throws: InstanceNormError.self) { try NormShape(.group(groups: 3), dimensions: [2, 4, 5]) }
        #expect(throws: InstanceNormError.self) { try NormShape(.group(groups: 0), dimensions: [2, 4, 5]) }
        #expect(throws: InstanceNormError.self) { try NormShape(.layer(normalizedDimensions: 3), dimensions: [2, 4, 5]) }
        #expect(throws: InstanceNormError.self) { try NormShape(.layer(normalizedDimensions: 0), dimensions: [2, 4, 5]) }
        let layer = try! NormShape(.layer(normalizedDimensions: 2), dimensions: [2, 3, 4, 5])
        #expect(layer.rowsPerSample == 3 && layer.rowLength == 20 && layer.parameterDimensions == [4, 5])
        #expect(layer.statisticsDimensions == [2, 3])
        let group = try! NormShape(.group(groups: 2), dimensions: [2, 4, 5, 3])
        #expect(group.rowsPerSample == 2 && group.rowLength == 30 && group.statisticsDimensions == [2, 2])
        // As a tensor stores them: channels last moves C after S1, S2; (N, C)
        // and layer norm keep theirs.
        #expect(group.dimensions(in: .channelsLast) == [2, 5, 3, 4] && group.dimensions(in: .channelsFirst) == [2, 4, 5, 3])
        #expect(try! NormShape(.batch, dimensions: [6, 3]).dimensions(in: .channelsLast) == [6, 3])
        #expect(layer.dimensions(in: .channelsLast) == [2, 3, 4, 5])
    }
}
