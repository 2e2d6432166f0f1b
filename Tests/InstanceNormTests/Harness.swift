import InstanceNorm
import TestSupport

/// One training forward and backward of the package's kernels, in precision T.
struct KernelRun<T: InstanceNormScalar> {
    var y: [T]
    var statistics: [InstanceStatistics]
    var dx: [T]
    var dgamma: [Double]
    var dbeta: [Double]
    /// (N, C, 2): s1, s2 of every instance.
    var instanceSums: [Double]

    init(
        x: [T], dy: [T], gamma: [T]?, beta: [T]?, shape: InstanceNormShape, eps: Double,
        threads: Int = 1, stores: StorePolicy = .automatic, layout: TensorLayout = .channelsFirst,
        combinesParameterGradients: Bool = true
    ) {
        let x = TensorBuffer(x), dy = TensorBuffer(dy)
        let gamma = gamma.map { TensorBuffer($0) }, beta = beta.map { TensorBuffer($0) }
        let y = TensorBuffer<T>(repeating: .nan, count: x.elements.count)
        let dx = TensorBuffer<T>(repeating: .nan, count: x.elements.count)
        let statistics = TensorBuffer(
            repeating: InstanceStatistics(mean: .nan, variance: .nan, invstd: .nan), count: shape.instanceCount)
        let dgamma = TensorBuffer<Double>(repeating: .nan, count: shape.channels)
        let dbeta = TensorBuffer<Double>(repeating: .nan, count: shape.channels)
        let instanceSums = TensorBuffer<Double>(repeating: .nan, count: 2 * shape.instanceCount)
        BatchKernel.forward(
            y: y.elements, statistics: statistics.elements, x: x.readOnly,
            gamma: gamma?.readOnly, beta: beta?.readOnly, shape: shape, eps: eps, threads: threads, stores: stores,
            layout: layout)
        BatchKernel.backward(
            dx: dx.elements, dgamma: dgamma.elements, dbeta: dbeta.elements,
            dy: dy.readOnly, x: x.readOnly, statistics: statistics.readOnly,
            gamma: gamma?.readOnly, shape: shape, threads: threads, stores: stores,
            instanceSums: instanceSums.elements, combinesParameterGradients: combinesParameterGradients, layout: layout)
        self.y = y.array
        self.statistics = statistics.array
        self.dx = dx.array
        self.dgamma = dgamma.array
        self.dbeta = dbeta.array
        self.instanceSums = instanceSums.array
    }
}

/// Random inputs for one shape, rounded to T, and the same values in Double
/// for the reference (so both sides see identical data).
struct Inputs<T: InstanceNormScalar> {
    let shape: InstanceNormShape
    let x: [T], dy: [T], gamma: [T]?, beta: [T]?

    init(_ dimensions: [Int], affine: Bool, seed: UInt64, mean: Double = 0, deviation: Double = 1,
         gradientMean: Double = 0) {
        shape = try! InstanceNormShape(dimensions: dimensions)
        var generator = SeededGenerator(seed: seed)
        x = generator.normals(shape.elementCount, mean: mean, deviation: deviation).map { T($0) }
        dy = generator.normals(shape.elementCount, mean: gradientMean).map { T($0) }
        gamma = affine ? generator.normals(shape.channels, mean: 1, deviation: 0.5).map { T($0) } : nil
        beta = affine ? generator.normals(shape.channels, deviation: 0.5).map { T($0) } : nil
    }

    var wideX: [Double] { x.map(\.widened) }
    var wideDy: [Double] { dy.map(\.widened) }
    var wideGamma: [Double]? { gamma?.map(\.widened) }
    var wideBeta: [Double]? { beta?.map(\.widened) }

    func run(eps: Double, threads: Int = 1, stores: StorePolicy = .automatic) -> KernelRun<T> {
        KernelRun(x: x, dy: dy, gamma: gamma, beta: beta, shape: shape, eps: eps, threads: threads, stores: stores)
    }

    func reference(eps: Double) -> (forward: Reference.Forward, backward: Reference.Backward) {
        let (n, c, m) = (shape.batch, shape.channels, shape.spatialCount)
        return (
            Reference.forward(x: wideX, batch: n, channels: c, spatialCount: m,
                              gamma: wideGamma, beta: wideBeta, eps: eps),
            Reference.backward(dy: wideDy, x: wideX, batch: n, channels: c, spatialCount: m,
                               gamma: wideGamma, eps: eps))
    }
}

/// `Reference.outputTolerance` for storage T and its compute precision: 16
/// ulps of T for Float and Double, one ulp of half (2⁻¹⁰) for Float16.
func outputTolerance<T: InstanceNormScalar>(_: T.Type) -> Double {
    Reference.outputTolerance(storageEpsilon: T.ulpOfOne.widened, computeEpsilon: T.Compute.ulpOfOne.widened)
}

/// 16 ulps of the compute precision: the bound for what the kernels keep in
/// `Double` (statistics, dγ, dβ), which no store to T rounds.
func computeTolerance<T: InstanceNormScalar>(_: T.Type) -> Double { 16 * T.Compute.ulpOfOne.widened }

/// dy = 1024 + j/8 with j uniform in −16…16: every Float sum of up to 2^10
/// of them is exact (a grid of 1/8 below 2^20), and their mean is a float
/// only where the count is a power of two. Where ε is large, the rounding
/// of the mean gradient is then the largest error left in dx (see
/// `meanGradientRoundingFoldedBack`).
func gradientWithExactSums(count: Int, seed: UInt64) -> [Float] {
    var generator = SeededGenerator(seed: seed)
    return (0..<count).map { _ in Float(1024 + Double(Int.random(in: -16...16, using: &generator)) / 8) }
}

/// The largest |dx − exact| in units of 16 Float ulps of the largest
/// |exact| in the value's row (`row(index)`: its instance, group, …).
func worstErrorOverRowTolerance(_ dx: [Float], _ exact: [Double], row: (Int) -> Int) -> Double {
    var largest = [Int: Double]()
    for index in exact.indices { largest[row(index), default: 0] = max(largest[row(index), default: 0], abs(exact[index])) }
    return exact.indices.map { abs(Double(dx[$0]) - exact[$0]) / (16 * 0x1p-24 * largest[row($0)]!) }.max() ?? 0
}
