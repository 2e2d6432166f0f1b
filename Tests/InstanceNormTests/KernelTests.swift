import InstanceNorm
import TestSupport
import Testing

/// Shapes with 1, 2 and 3 spatial dimensions, C = 1, N = 1 and odd sizes.
let referenceShapes: [[Int]] = [
    [2, 3, 5], [1, 4, 33], [3, 2, 4, 5], [4, 1, 7, 9], [3, 3, 17, 13], [2, 2, 3, 3, 3], [1, 1, 2, 3, 5],
]

/// Compares forward and backward with the Double reference on the same data.
///
/// Tolerance: every sum is accumulated in Double, so the only errors are the
/// roundings of the per-value arithmetic in T's compute precision (about four
/// operations, each within half an ulp) and of the stored results: 16 ulps
/// measured against the size of the data leaves room without hiding a real
/// error (a wrong formula is off by O(1), an E[x²]−E[x]² variance by far more
/// than this on the large-mean test below). Half storage rounds y and dx to
/// half once more (`outputTolerance`; `HalfPrecision` checks them in half
/// ulps); the statistics, dγ and dβ stay in Double (`computeTolerance`).
func checkAgainstReference<T: InstanceNormScalar>(_: T.Type, dimensions: [Int], affine: Bool, seed: UInt64) {
    let eps = 1e-5
    let inputs = Inputs<T>(dimensions, affine: affine, seed: seed)
    let run = inputs.run(eps: eps)
    let (forward, backward) = inputs.reference(eps: eps)
    let tolerance = outputTolerance(T.self), statisticsTolerance = computeTolerance(T.self)
    let yScale = magnitude(forward.y, minimum: 1)
    #expect(maxScaledError(run.y, forward.y, scale: yScale) <= tolerance, "y \(T.self) \(dimensions)")
    #expect(maxScaledError(run.statistics.map(\.mean), forward.mean, scale: 1) <= statisticsTolerance)
    #expect(maxScaledError(run.statistics.map(\.invstd), forward.invstd, scale: 0) <= statisticsTolerance)
    let dxScale = magnitude(backward.dx, minimum: 1e-3)
    #expect(maxScaledError(run.dx, backward.dx, scale: dxScale) <= tolerance, "dx \(T.self) \(dimensions)")
    // dγ and dβ sum N·M terms of size ~1: judge them against the sum of |terms|.
    let sumScale = Double(inputs.shape.batch * inputs.shape.spatialCount)
    #expect(maxScaledError(run.dgamma, backward.dgamma, scale: sumScale) <= statisticsTolerance)
    #expect(maxScaledError(run.dbeta, backward.dbeta, scale: sumScale) <= statisticsTolerance)
    // The tolerances above are the data's scale; these are each value's own
    // rounding bound, a few ulps (see `InstanceCheck`).
    expectWithinErrorBounds(inputs, run, eps: eps, "\(T.self) \(dimensions) affine \(affine)")
}

@Suite struct AgainstReference {
    @Test(arguments: referenceShapes, [false, true])
    func float16(dimensions: [Int], affine: Bool) {
        checkAgainstReference(Float16.self, dimensions: dimensions, affine: affine, seed: 10)
    }

    @Test(arguments: referenceShapes, [false, true])
    func float(dimensions: [Int], affine: Bool) {
        checkAgainstReference(Float.self, dimensions: dimensions, affine: affine, seed: 11)
    }

    @Test(arguments: referenceShapes, [false, true])
    func double(dimensions: [Int], affine: Bool) {
        checkAgainstReference(Double.self, dimensions: dimensions, affine: affine, seed: 12)
    }

    /// Mean 1e4, spread 1e-3: E[x²] − E[x]² in Float would return garbage
    /// (even a negative variance); a folded y = a·x + b would lose every digit.
    /// Half cannot hold that spread (its ulp at 1e4 is 8), so it gets mean
    /// 1e3, spread 1 (ulp 0.5): a condition of 1e3, which would leave
    /// E[x²] − E[x]² in Float about 4 of its 24 bits.
    ///
    /// Every value is held to its own rounding bound (`InstanceCheck`): y
    /// and dx against the exact result of the kernel's statistics, which
    /// takes the mean's unavoidable ulp (2e-9 of x̂ here) out of the bound;
    /// the statistics against the exact ones. A folded y = a·x + b in
    /// Double, about 1e-9 off, is then a million times over its bound; the
    /// data's-scale tolerance this test used to allow was 3.6e-8.
    @Test(arguments: [[2, 3, 64], [1, 2, 15, 17]])
    func largeMeanTinySpread(dimensions: [Int]) {
        for affine in [false, true] {
            largeMeanCheck(Float16.self, dimensions, affine: affine, mean: 1e3, deviation: 1)
            largeMeanCheck(Float.self, dimensions, affine: affine, mean: 1e4, deviation: 1e-3)
            largeMeanCheck(Double.self, dimensions, affine: affine, mean: 1e4, deviation: 1e-3)
        }
    }
}

extension AgainstReference {
    /// dy = 1e3 + N(0, 1) (half: 1e2, whose ulp is 1/16): a gradient with a
    /// large common part, which every sum of dy carries and dx = k·(dy − m̄)
    /// − k·x̂·s2/M must take back out. Each output within its rounding bound,
    /// at blocked sizes (M = 4, 7, 49, 64, both paths of the float sums) and
    /// a per-instance one (255). (Here s1's Float partial sums round by as
    /// much as m̄ does, and the bound allows for it, so it cannot tell
    /// whether the kernels fold m̄'s rounding back: see
    /// `meanGradientRoundingFoldedBack`.)
    @Test(arguments: [[2, 3, 64], [2, 20, 2, 2], [3, 8, 7], [2, 9, 7, 7], [1, 2, 15, 17]])
    func largeGradientMean(dimensions: [Int]) {
        for affine in [false, true] {
            largeGradientMeanCheck(Float16.self, dimensions, affine: affine, gradientMean: 1e2)
            largeGradientMeanCheck(Float.self, dimensions, affine: affine, gradientMean: 1e3)
            largeGradientMeanCheck(Double.self, dimensions, affine: affine, gradientMean: 1e3)
        }
    }

    /// dx's constant q = k·(m̄ − s1/M) − p·μ_lo folds back the rounding of
    /// the mean gradient m̄ = s1/M to Float, which here is the largest error
    /// left: with `gradientWithExactSums` s1 is exact while s1/M is not a
    /// float, and dy − m̄ is exact (Sterbenz); ε = 10^6 makes x̂ about 10^-3
    /// and the x̂·s2 term negligible. With q every dx lies within 16 ulps of
    /// its instance's largest |dx| of the exact one; without it, off by
    /// k·|m̄ − s1/M|, up to k·2^-14: 36 and 28 times that at M = 7 and 49
    /// (blocked kernels), 14 times at M = 255 (per instance). Where M is a
    /// power of two (4, 64) s1/M is a float and there is nothing to fold
    /// back: those check the same bound with m̄ exact.
    @Test(arguments: [[2, 9, 7, 7], [2, 20, 2, 2], [3, 8, 7], [2, 3, 64], [1, 2, 15, 17]])
    func meanGradientRoundingFoldedBack(dimensions: [Int]) throws {
        let shape = try InstanceNormShape(dimensions: dimensions)
        var generator = SeededGenerator(seed: 21)
        let x = generator.normals(shape.elementCount).map { Float($0) }
        let dy = gradientWithExactSums(count: shape.elementCount, seed: 23)
        let eps = 1e6
        let run = KernelRun(x: x, dy: dy, gamma: nil, beta: nil, shape: shape, eps: eps)
        let exact = Reference.backward(
            dy: dy.map(Double.init), x: x.map(Double.init), batch: shape.batch, channels: shape.channels,
            spatialCount: shape.spatialCount, eps: eps)
        let worst = worstErrorOverRowTolerance(run.dx, exact.dx) { $0 / shape.spatialCount }
        #expect(worst <= 1, "\(dimensions): dx error over 16 ulps of the instance's largest |dx|: \(worst)")
    }
}

func largeGradientMeanCheck<T: InstanceNormScalar>(
    _: T.Type, _ dimensions: [Int], affine: Bool, gradientMean: Double, sourceLocation: SourceLocation = #_sourceLocation
) {
    let inputs = Inputs<T>(dimensions, affine: affine, seed: 9, gradientMean: gradientMean)
    let eps = 1e-5
    expectWithinErrorBounds(
        inputs, inputs.run(eps: eps), eps: eps, "gradient mean \(gradientMean) \(T.self) \(dimensions) affine \(affine)",
        sourceLocation: sourceLocation)
}

func largeMeanCheck<T: InstanceNormScalar>(
    _: T.Type, _ dimensions: [Int], affine: Bool, mean: Double, deviation: Double,
    sourceLocation: SourceLocation = #_sourceLocation
) {
    let inputs = Inputs<T>(dimensions, affine: affine, seed: 7, mean: mean, deviation: deviation)
    let eps = 1e-12
    expectWithinErrorBounds(
        inputs, inputs.run(eps: eps), eps: eps, "large mean \(T.self) \(dimensions) affine \(affine)",
        sourceLocation: sourceLocation)
}
