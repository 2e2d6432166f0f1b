/// The statistics of one instance, kept in `Double` whatever the storage
/// precision: the backward needs the mean to more digits than `Float` holds
/// when the mean is large against the spread (see `InstanceKernel`).
public struct InstanceStatistics: Equatable, Sendable {
    /// μ = (1/M) Σ x_m.
    public var mean: Double
    /// σ² = (1/M) Σ (x_m − μ)², the biased variance that normalizes.
    public var variance: Double
    /// r = 1 / sqrt(σ² + ε).
    public var invstd: Double

    public init(mean: Double, variance: Double, invstd: Double) {
        self.mean = mean
        self.variance = variance
        self.invstd = invstd
    }

    public init(mean: Double, variance: Double, eps: Double) {
        self.init(mean: mean, variance: variance, invstd: 1 / (variance + eps).squareRoot())
    }

    /// The mean split as μ = μ_hi + μ_lo with μ_hi representable in `T`.
    ///
    /// x − μ_hi is exact in `T` for every x within a factor of two of μ_hi
    /// (Sterbenz), which is where cancellation would otherwise happen; μ_lo is
    /// folded into a per-instance constant computed in `Double`.
    @inlinable
    func splitMean<T: InstanceNormScalar>(as _: T.Type) -> (high: T, low: Double) {
        let high = T(mean)
        return (high, mean - high.widened)
    }
}

/// The per-instance kernels: one instance of M contiguous values at a time.
///
/// For one instance x_1…x_M with γ, β of its channel:
///
///     μ = (1/M) Σ x_m          σ² = (1/M) Σ (x_m − μ)²        r = 1/sqrt(σ² + ε)
///     x̂_m = (x_m − μ)·r         y_m = γ·x̂_m + β
///
///     s1 = Σ dy_m               s2 = Σ dy_m·x̂_m
///     dx_m = γ·r·(dy_m − s1/M − x̂_m·s2/M)
///
/// The derivation is in README.md. Every sum is accumulated in `Double`, in
/// four interleaved accumulators, so Float inputs lose nothing to the sum and
/// the order of additions is fixed (the result does not depend on who calls).
/// No kernel forms E[x²] − E[x]²: the variance is a two-pass sum about a shift.
public enum InstanceKernel {
    /// The mean and biased variance of one instance (M ≥ 1), exactly as a
    /// careful two-pass computation in `Double` gives them.
    ///
    ///     K = x_1                 μ = K + (1/M) Σ (x_m − K)
    ///     d_m = x_m − μ           σ² = ((Σ d²) − (Σ d)²/M) / M
    ///
    /// The shift K makes a constant instance give μ = K and σ² = 0 exactly;
    /// the (Σ d)² term is the classic correction that removes the rounding
    /// error of μ from σ² (Chan, Golub, LeVeque 1983).
    @inlinable
    public static func moments<T: InstanceNormScalar>(
        of x: UnsafeBufferPointer<T>
    ) -> (mean: Double, variance: Double) {
        let count = x.count
        precondition(count >= 1, "an instance has at least one value")
        let shift = x[0].widened
        let shiftedSum = wideSum(count) { x[$0].widened - shift }
        let mean = shift + shiftedSum / Double(count)
        let (sumDeviation, sumSquaredDeviation) = wideSumPair(count) { index in
            let deviation = x[index].widened - mean
            return (deviation, deviation * deviation)
        }
        let variance = (sumSquaredDeviation - sumDeviation * sumDeviation / Double(count)) / Double(count)
        return (mean, max(variance, 0))
    }

    /// Writes y = γ·(x − μ)·r + β for one instance.
    ///
    /// Folded to one subtraction and one FMA per value in `T`:
    ///
    ///     a = γ·r        b = β − μ_lo·a        y = (x − μ_hi)·a + b
    ///
    /// where μ = μ_hi + μ_lo (see `InstanceStatistics.splitMean`). The usual
    /// folding y = a·x + (β − μ·a) would cancel catastrophically when |μ| ≫ σ
    /// (with μ = 1e4, σ = 1e-3 in Float, a·x ≈ 1e7 has an ulp of 1).
    @inlinable
    public static func normalize<T: InstanceNormScalar>(
        _ y: UnsafeMutableBufferPointer<T>,
        _ x: UnsafeBufferPointer<T>,
        statistics: InstanceStatistics,
        gamma: Double, beta: Double
    ) {
        precondition(y.count == x.count)
        let (meanHigh, meanLow) = statistics.splitMean(as: T.self)
        let scaleWide = gamma * statistics.invstd
        let scale = T(scaleWide)
        let offset = T(beta - meanLow * scaleWide)
        for index in 0..<x.count {
            y[index] = offset.addingProduct(x[index] - meanHigh, scale)
        }
    }

    /// The two reductions of the backward for one instance:
    ///
    ///     sumDy     = s1 = Σ dy_m
    ///     sumDyXHat = s2 = Σ dy_m·x̂_m = r·(Σ dy_m·(x_m − μ_hi) − μ_lo·s1)
    ///
    /// Only x and dy are read; x̂ is never formed.
    @inlinable
    public static func gradientSums<T: InstanceNormScalar>(
        dy: UnsafeBufferPointer<T>,
        x: UnsafeBufferPointer<T>,
        statistics: InstanceStatistics
    ) -> (sumDy: Double, sumDyXHat: Double) {
        precondition(dy.count == x.count)
        let (meanHigh, meanLow) = statistics.splitMean(as: T.self)
        let (sumDy, sumDyCentered) = wideSumPair(x.count) { index in
            let gradient = dy[index].widened
            return (gradient, gradient * (x[index] - meanHigh).widened)
        }
        return (sumDy, statistics.invstd * (sumDyCentered - meanLow * sumDy))
    }

    /// Writes dx = γ·r·(dy − s1/M − x̂·s2/M) for one instance.
    ///
    /// Folded to two subtractions and two FMAs per value in `T`:
    ///
    ///     k = γ·r        p = −k·r·s2/M        m̄ = s1/M rounded to T
    ///     q = k·(m̄ − s1/M) − p·μ_lo
    ///     dx = k·(dy − m̄) + p·(x − μ_hi) + q
    ///
    /// Centering dy on m̄ and x on μ_hi keeps the terms small, so an instance
    /// of one value (M = 1) or a constant dy gives dx = 0 exactly.
    @inlinable
    public static func inputGradient<T: InstanceNormScalar>(
        _ dx: UnsafeMutableBufferPointer<T>,
        dy: UnsafeBufferPointer<T>,
        x: UnsafeBufferPointer<T>,
        statistics: InstanceStatistics,
        gamma: Double,
        sumDy: Double, sumDyXHat: Double
    ) {
        precondition(dx.count == x.count && dy.count == x.count)
        let count = Double(x.count)
        let (meanHigh, meanLow) = statistics.splitMean(as: T.self)
        let gradientScaleWide = gamma * statistics.invstd
        let centeredScaleWide = -gradientScaleWide * statistics.invstd * sumDyXHat / count
        let meanDyWide = sumDy / count
        let meanDy = T(meanDyWide)
        let gradientScale = T(gradientScaleWide)
        let centeredScale = T(centeredScaleWide)
        let offset = T(gradientScaleWide * (meanDy.widened - meanDyWide) - centeredScaleWide * meanLow)
        for index in 0..<x.count {
            let centeredTerm = offset.addingProduct(centeredScale, x[index] - meanHigh)
            dx[index] = centeredTerm.addingProduct(gradientScale, dy[index] - meanDy)
        }
    }
}

/// Σ term(i) for i in 0..<count, in four interleaved `Double` accumulators
/// combined in a fixed order.
@inlinable @inline(__always)
func wideSum(_ count: Int, _ term: (Int) -> Double) -> Double {
    var partial = (0.0, 0.0, 0.0, 0.0)
    var index = 0
    while index + 4 <= count {
        partial.0 += term(index)
        partial.1 += term(index + 1)
        partial.2 += term(index + 2)
        partial.3 += term(index + 3)
        index += 4
    }
    while index < count {
        partial.0 += term(index)
        index += 1
    }
    return (partial.0 + partial.1) + (partial.2 + partial.3)
}

/// Two sums at once, as `wideSum`.
@inlinable @inline(__always)
func wideSumPair(_ count: Int, _ terms: (Int) -> (Double, Double)) -> (Double, Double) {
    var first = (0.0, 0.0, 0.0, 0.0)
    var second = (0.0, 0.0, 0.0, 0.0)
    var index = 0
    while index + 4 <= count {
        let lane0 = terms(index), lane1 = terms(index + 1)
        let lane2 = terms(index + 2), lane3 = terms(index + 3)
        first.0 += lane0.0; second.0 += lane0.1
        first.1 += lane1.0; second.1 += lane1.1
        first.2 += lane2.0; second.2 += lane2.1
        first.3 += lane3.0; second.3 += lane3.1
        index += 4
    }
    while index < count {
        let lane0 = terms(index)
        first.0 += lane0.0; second.0 += lane0.1
        index += 1
    }
    return ((first.0 + first.1) + (first.2 + first.3), (second.0 + second.1) + (second.2 + second.3))
}
