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

    /// Statistics with every field given.
    public init(mean: Double, variance: Double, invstd: Double) {
        self.mean = mean
        self.variance = variance
        self.invstd = invstd
    }

    /// Statistics whose invstd is computed: r = 1 / sqrt(`variance` + `eps`).
    public init(mean: Double, variance: Double, eps: Double) {
        self.init(mean: mean, variance: variance, invstd: 1 / (variance + eps).squareRoot())
    }

    /// The mean split as μ = μ_hi + μ_lo with μ_hi representable in the
    /// compute precision of storage `T`.
    ///
    /// x − μ_hi is exact in `T.Compute` for every stored x within a factor of
    /// two of μ_hi (Sterbenz; every value of `T` is one of `T.Compute`), which
    /// is where cancellation would otherwise happen; μ_lo is folded into a
    /// per-instance constant computed in `Double`.
    @inlinable
    func splitMean<T: InstanceNormScalar>(as _: T.Type) -> (high: T.Compute, low: Double) {
        let high = T.Compute(mean)
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
/// The derivation is in docs/numerics-and-reproducibility.md. Values are read in the storage precision
/// `T` and computed in `T.Compute` (see `InstanceNormScalar`); every sum is
/// finished in `Double`, chunk by chunk in a fixed order, so the result does
/// not depend on who calls. No kernel forms E[x²] − E[x]²: the variance is a
/// two-pass sum about a shift.
public enum InstanceKernel {
    /// The mean and biased variance of one instance (M ≥ 1), as accurate as
    /// a careful two-pass computation in `Double`, usually in one pass:
    ///
    ///     K = x_1        S = Σ (x_m − K)        Q = Σ (x_m − K)²
    ///     μ = K + S/M    σ² = Q/M − (S/M)²
    ///
    /// The shift K makes a constant instance give μ = K and σ² = 0 exactly
    /// and keeps the terms small, so the lanes can sum in the compute type
    /// within a chunk (see `reductionChunk`) before widening to `Double`.
    /// The subtraction in σ² loses about log2(1 + (μ − K)²/σ²) bits; when
    /// (μ − K)² > 4σ² (the first value is an outlier) a second pass about μ
    /// from cache recomputes σ² with the classic correction term
    /// (Chan, Golub, LeVeque 1983), so no input loses more than two bits.
    @inlinable
    public static func moments<T: InstanceNormScalar>(
        of x: UnsafeBufferPointer<T>
    ) -> (mean: Double, variance: Double) {
        var none = NoCompanion()
        return moments(of: x, alongside: &none)
    }

    /// `moments(of:)` with `companion` stepping along the first pass.
    @inlinable @inline(__always)
    static func moments<T: InstanceNormScalar, Companion: SumsCompanion>(
        of x: UnsafeBufferPointer<T>, alongside companion: inout Companion
    ) -> (mean: Double, variance: Double) {
        let count = x.count
        precondition(count >= 1, "an instance has at least one value")
        let base = x.baseAddress!
        let shift = x[0]
        let (sum, sumSquares) = chunkedSums(count) { chunk in
            // A local copy: the optimizer keeps it in registers, where through
            // the capture it would reload the companion after every store.
            var local = companion
            defer { companion = local }
            return shiftedChunkSums(base, chunk, shift: shift.computed, alongside: &local)
        }
        if let moments = momentsFromShiftedSums(sum, sumSquares, count: count, shift: shift) { return moments }
        let center = secondPassCenter(sum, count: count, shift: shift)
        let (deviation, squaredDeviation) = chunkedSums(count) { shiftedChunkSums(base, $0, shift: center) }
        return momentsFromCenteredSums(deviation, squaredDeviation, count: count, center: center)
    }

    /// μ and σ² from the one-pass sums about the shift K, or nil when the
    /// cancellation in σ² = Q/M − (S/M)² would cost more than two bits,
    /// that is when (μ − K)² > 4σ²: then a second pass about μ is needed.
    @inlinable
    public static func momentsFromShiftedSums<T: InstanceNormScalar>(
        _ sum: Double, _ sumSquares: Double, count: Int, shift: T
    ) -> (mean: Double, variance: Double)? {
        let shiftedMean = sum / Double(count)
        let variance = sumSquares / Double(count) - shiftedMean * shiftedMean
        guard shiftedMean * shiftedMean <= 4 * variance else { return nil }
        return (shift.widened + shiftedMean, variance)
    }

    /// The center of the second pass: the one-pass mean rounded to T's compute precision.
    @inlinable
    public static func secondPassCenter<T: InstanceNormScalar>(_ sum: Double, count: Int, shift: T) -> T.Compute {
        T.Compute(shift.widened + sum / Double(count))
    }

    /// μ and σ² from a second pass about c: D = Σ (x − c), E = Σ (x − c)²,
    /// μ = c + D/M, σ² = (E − D²/M)/M (the correction term removes the error
    /// of c from σ² to first order).
    @inlinable
    public static func momentsFromCenteredSums<T: InstanceNormScalar>(
        _ deviation: Double, _ squaredDeviation: Double, count: Int, center: T
    ) -> (mean: Double, variance: Double) {
        let variance = (squaredDeviation - deviation * deviation / Double(count)) / Double(count)
        return (center.widened + deviation / Double(count), max(variance, 0))
    }

    /// Writes y = γ·(x − μ)·r + β for one instance.
    ///
    /// Folded to one subtraction and one FMA per value in `T.Compute`:
    ///
    ///     a = γ·r        b = β − μ_lo·a        y = (x − μ_hi)·a + b
    ///
    /// where μ = μ_hi + μ_lo (see `InstanceStatistics.splitMean`). The usual
    /// folding y = a·x + (β − μ·a) would cancel catastrophically when |μ| ≫ σ
    /// (with μ = 1e4, σ = 1e-3 in Float, a·x ≈ 1e7 has an ulp of 1). y is
    /// rounded to `T` once, when it is stored.
    ///
    /// - Parameters:
    ///   - y: the instance's M output values.
    ///   - x: the instance's M input values.
    ///   - statistics: the instance's statistics (from `moments(of:)`).
    ///   - gamma: γ of the instance's channel.
    ///   - beta: β of the instance's channel.
    ///   - streaming: write y with non-temporal stores (for outputs
    ///     larger than the last-level cache: see `StorePolicy`).
    @inlinable
    public static func normalize<T: InstanceNormScalar>(
        _ y: UnsafeMutableBufferPointer<T>,
        _ x: UnsafeBufferPointer<T>,
        statistics: InstanceStatistics,
        gamma: Double, beta: Double,
        streaming: Bool = false
    ) {
        precondition(y.count == x.count)
        writeElementwise(
            y.baseAddress!, 0..<x.count, streaming: streaming,
            normalizeOperation(x: x.baseAddress!, statistics: statistics, gamma: gamma, beta: beta))
    }

    /// y = (x − μ_hi)·a + b of `normalize` for the values from `x` on.
    @inlinable @inline(__always)
    static func normalizeOperation<T: InstanceNormScalar>(
        x: UnsafePointer<T>, statistics: InstanceStatistics, gamma: Double, beta: Double
    ) -> NormalizeOperation<T> {
        let (meanHigh, scale, offset) = normalizeConstants(statistics, gamma: gamma, beta: beta, as: T.self)
        return NormalizeOperation(x: x, meanHigh: meanHigh, scale: scale, offset: offset)
    }

    /// The constants of y = (x − μ_hi)·a + b for one instance (or channel):
    /// μ = μ_hi + μ_lo, a = γ·r and b = β − μ_lo·a formed in `Double`, then
    /// rounded to the compute precision.
    @inlinable @inline(__always)
    static func normalizeConstants<T: InstanceNormScalar>(
        _ statistics: InstanceStatistics, gamma: Double, beta: Double, as _: T.Type
    ) -> (meanHigh: T.Compute, scale: T.Compute, offset: T.Compute) {
        let (meanHigh, meanLow) = statistics.splitMean(as: T.self)
        let scaleWide = gamma * statistics.invstd
        return (meanHigh, T.Compute(scaleWide), T.Compute(beta - meanLow * scaleWide))
    }

    /// The two reductions of the backward for one instance:
    ///
    ///     sumDy     = s1 = Σ dy_m
    ///     sumDyXHat = s2 = Σ dy_m·x̂_m = r·(Σ dy_m·(x_m − μ_hi) − μ_lo·s1)
    ///
    /// Only x and dy are read; x̂ is never formed. Summed by chunks in the
    /// compute type, widened to `Double` per chunk (see `reductionChunk`).
    @inlinable
    public static func gradientSums<T: InstanceNormScalar>(
        dy: UnsafeBufferPointer<T>,
        x: UnsafeBufferPointer<T>,
        statistics: InstanceStatistics
    ) -> (sumDy: Double, sumDyXHat: Double) {
        precondition(dy.count == x.count)
        let meanHigh = statistics.splitMean(as: T.self).high
        let gradients = dy.baseAddress!, values = x.baseAddress!
        let (sumDy, sumDyCentered) = chunkedSums(x.count) {
            gradientChunkSums(gradients, values, $0, center: meanHigh)
        }
        return gradientSums(sumDy: sumDy, sumDyCentered: sumDyCentered, statistics: statistics, as: T.self)
    }

    /// s1 and s2 from Σ dy and Σ dy·(x − μ_hi).
    @inlinable
    public static func gradientSums<T: InstanceNormScalar>(
        sumDy: Double, sumDyCentered: Double, statistics: InstanceStatistics, as _: T.Type
    ) -> (sumDy: Double, sumDyXHat: Double) {
        let meanLow = statistics.splitMean(as: T.self).low
        return (sumDy, statistics.invstd * (sumDyCentered - meanLow * sumDy))
    }

    /// Writes dx = γ·r·(dy − s1/M − x̂·s2/M) for one instance.
    ///
    /// Folded to two subtractions and two FMAs per value in `T.Compute`:
    ///
    ///     k = γ·r        p = −k·r·s2/M        m̄ = s1/M rounded to T.Compute
    ///     q = k·(m̄ − s1/M) − p·μ_lo
    ///     dx = k·(dy − m̄) + p·(x − μ_hi) + q
    ///
    /// Centering dy on m̄ and x on μ_hi keeps the terms small, so an instance
    /// of one value (M = 1) or a constant dy gives dx = 0 exactly.
    ///
    /// - Parameters:
    ///   - dx: the output values (the instance, or a part of it).
    ///   - dy: the gradient with respect to y at the same positions.
    ///   - x: the forward's input at the same positions.
    ///   - statistics: the instance's statistics.
    ///   - gamma: γ of the instance's channel.
    ///   - sumDy: s1 of the whole instance (from `gradientSums`).
    ///   - sumDyXHat: s2 of the whole instance.
    ///   - spatialCount: M, when the buffers hold only part of the
    ///     instance (a thread's share); the buffers' length otherwise.
    ///   - streaming: write dx with non-temporal stores.
    @inlinable
    public static func inputGradient<T: InstanceNormScalar>(
        _ dx: UnsafeMutableBufferPointer<T>,
        dy: UnsafeBufferPointer<T>,
        x: UnsafeBufferPointer<T>,
        statistics: InstanceStatistics,
        gamma: Double,
        sumDy: Double, sumDyXHat: Double,
        spatialCount: Int? = nil,
        streaming: Bool = false
    ) {
        precondition(dx.count == x.count && dy.count == x.count)
        writeElementwise(
            dx.baseAddress!, 0..<x.count, streaming: streaming,
            inputGradientOperation(
                dy: dy.baseAddress!, x: x.baseAddress!, statistics: statistics, gamma: gamma,
                sumDy: sumDy, sumDyXHat: sumDyXHat, spatialCount: spatialCount ?? x.count))
    }

    /// The per-value operation of `inputGradient`, with its constants folded.
    @inlinable
    static func inputGradientOperation<T: InstanceNormScalar>(
        dy: UnsafePointer<T>, x: UnsafePointer<T>, statistics: InstanceStatistics, gamma: Double,
        sumDy: Double, sumDyXHat: Double, spatialCount: Int
    ) -> InputGradientOperation<T> {
        let count = Double(spatialCount)
        let (meanHigh, meanLow) = statistics.splitMean(as: T.self)
        let gradientScaleWide = gamma * statistics.invstd
        let centeredScaleWide = -gradientScaleWide * statistics.invstd * sumDyXHat / count
        let meanDyWide = sumDy / count
        let meanDy = T.Compute(meanDyWide)
        let offset = T.Compute(gradientScaleWide * (meanDy.widened - meanDyWide) - centeredScaleWide * meanLow)
        return InputGradientOperation(
            dy: dy, x: x, meanHigh: meanHigh, meanDy: meanDy,
            gradientScale: T.Compute(gradientScaleWide), centeredScale: T.Compute(centeredScaleWide), offset: offset)
    }
}

/// The chunks of an instance of `count` values, reduced by `chunkSums` and
/// added in chunk order: the fixed order that makes the sums reproducible.
@inlinable @inline(__always)
func chunkedSums(_ count: Int, _ chunkSums: (Range<Int>) -> (Double, Double)) -> (Double, Double) {
    var total = (0.0, 0.0)
    var start = 0
    while start < count {
        let partial = chunkSums(start..<min(start + reductionChunk, count))
        total.0 += partial.0
        total.1 += partial.1
        start += reductionChunk
    }
    return total
}

