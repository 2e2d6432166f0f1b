/// One instance's results checked against the exact arithmetic, each value
/// with a bound derived from the rounding errors the kernels make
/// (`KernelArithmetic`), so that an error of a few ulps is caught.
///
/// The check has two stages, so that no bound has to carry the error of the
/// statistics into every value (which would make it hundreds of ulps loose
/// in Float, where the statistics' lane sums round in Float):
///
/// 1. the kernel's statistics (μ̃, σ̃², r̃) against the exact ones
///    (`statisticsErrors`);
/// 2. y, dx and the per-instance sums of dγ, dβ against the exact results
///    *of the kernel's statistics*: y* = γ·(x − μ̃)·r̃ + β and so on
///    (`normalized(at:)`, `inputGradient(at:)`, `parameterSums`).
///
/// Together they bound the distance to the exact result, and each stage is
/// tight. Every bound is first order in u (the second-order terms are below
/// 2⁻²⁰ of them here) and also covers the rounding of this check's own
/// `Double` arithmetic; bounds on sums are `RoundingErrors.worstCase`.
public struct InstanceCheck {
    /// How the kernels round.
    public let arithmetic: KernelArithmetic
    /// The instance's values as stored, widened exactly.
    public let x: [Double]
    /// Its gradient, widened exactly; empty without a backward.
    public let dy: [Double]
    /// γ of the instance's channel.
    public let gamma: Double
    /// β of the instance's channel.
    public let beta: Double
    /// ε, added to the variance.
    public let eps: Double
    /// The kernel's statistics: mean, biased variance, invstd.
    public let mean: Double, variance: Double, invstd: Double
    /// μ̃ split as the kernels split it: μ_hi in the compute precision, μ_lo the rest.
    let meanHigh: Double, meanLow: Double
    /// Σ dy, accurate (`AccurateSum`).
    public let sumDy: AccurateSum
    /// Σ dy·(x − μ̃), accurate; s2 = r̃ times it.
    public let sumDyCentered: AccurateSum
    /// The rounding errors of the kernel's s1 = Σ dy.
    public let sumDyErrors: RoundingErrors
    /// The rounding errors of the kernel's s2 = r̃·Σ dy·(x − μ̃).
    public let sumDyXHatErrors: RoundingErrors

    /// - Parameters:
    ///   - arithmetic: how the kernels round.
    ///   - x: the instance's values as stored (exactly widened).
    ///   - dy: its gradient; may be empty (no backward).
    ///   - gamma: γ of its channel.
    ///   - beta: β of its channel.
    ///   - eps: ε, added to the variance.
    ///   - mean: the mean the kernel computed.
    ///   - variance: the biased variance the kernel computed.
    ///   - invstd: the invstd the kernel computed.
    public init(
        arithmetic: KernelArithmetic, x: [Double], dy: [Double], gamma: Double, beta: Double, eps: Double,
        mean: Double, variance: Double, invstd: Double
    ) {
        self.arithmetic = arithmetic
        self.x = x
        self.dy = dy
        self.gamma = gamma
        self.beta = beta
        self.eps = eps
        self.mean = mean
        self.variance = variance
        self.invstd = invstd
        meanHigh = arithmetic.roundToCompute(mean)
        meanLow = mean - meanHigh  // exact: the error of a rounding to a narrower format
        var sumDy = AccurateSum(), sumDyCentered = AccurateSum()
        for (value, gradient) in zip(x, dy) {
            sumDy.add(gradient)
            let (deviation, deviationError) = twoSum(value, -mean)  // x − μ̃ exactly
            sumDyCentered.addProduct(gradient, deviation)
            sumDyCentered.addProduct(gradient, deviationError)
        }
        self.sumDy = sumDy
        self.sumDyCentered = sumDyCentered
        (sumDyErrors, sumDyXHatErrors) = Self.gradientSumErrors(
            arithmetic, x: x, dy: dy, meanHigh: meanHigh, meanLow: meanLow, invstd: invstd,
            sumDy: sumDy.value, sumDyXHat: invstd * sumDyCentered.value)
    }

    /// M, the instance's values.
    public var count: Int { x.count }

    /// s1 = Σ dy, the exact value rounded once.
    public var s1: Double { sumDy.value }
    /// s2 = r̃·Σ dy·(x − μ̃), the exact value rounded once.
    public var s2: Double { invstd * sumDyCentered.value }

    // MARK: - Stage 2: y and dx given the kernel's statistics

    /// y* = γ·(x_i − μ̃)·r̃ + β, and the bound on |ŷ_i − y*| for the kernel's
    ///
    ///     a = C(γ·r̃)   b = C(β − μ_lo·γ·r̃)   ŷ = S(fma(C(x − μ_hi), a, b))
    ///
    /// (C: round to compute, S: store). With A = γ·r̃ and d = x − μ_hi:
    ///
    ///     |ŷ − y*| ≤ (2u_c' + 4u_d)·|A·d| + (u_c' + 2u_d)·|β − μ_lo·A| + 2u_d·|μ_lo·A|
    ///              + (u_c + u_d)·|y*| + S's rounding u_s·(|y*| + that) + underflow
    ///
    /// where u_c' = u_c except for the rounding of Double constants, which is
    /// exact (0) when the compute precision is Double: a and b each round
    /// once (u_c'), d once (u_c), the FMA once (u_c); the u_d terms are the
    /// Double products and sums of the constants and this check's own y*.
    public func normalized(at index: Int) -> (value: Double, bound: Double) {
        let scale = gamma * invstd
        let deviation = x[index] - mean
        let value = scale * deviation + beta
        let u = arithmetic, ud = KernelArithmetic.double
        let scaled = max(abs(scale * (x[index] - meanHigh)), abs(scale * deviation))
        let offset = abs(beta - meanLow * scale)
        let computeError = (u.compute + u.constant + 4 * ud) * scaled + (u.constant + 2 * ud) * offset
            + 2 * ud * abs(meanLow * scale) + (u.compute + ud) * abs(value) + 4 * u.computeUnderflow
        return (value, stored(value, computeError))
    }

    /// dx* = K·(dy_i − s1/M) + P·(x_i − μ̃), K = γ·r̃, P = −γ·r̃²·s2/M, and
    /// the bound on |dx̂_i − dx*| for the kernel's (`InstanceKernel.inputGradient`)
    ///
    ///     k = C(K)   p = C(−K·r̃·s̃2/M)   m̄ = C(s̃1/M)   q = C(K·(m̄ − s̃1/M) − p·μ_lo)
    ///     dx̂ = S(fma(k, C(dy − m̄), fma(p, C(x − μ_hi), q)))
    ///
    /// with its own sums s̃1, s̃2 (worst-case errors Δs1, Δs2). One term per
    /// rounding, with e = dy − m̄, d = x − μ_hi:
    ///
    ///     |K·e|·(u_d + u_c' + u_c)                  K in Double, k, e
    ///     |P·d|·(4u_d + u_c' + 2u_c)                P's 4 Double roundings, p, d, the inner FMA's share
    ///     (2u_d + u_c')·(|K·(m̄ − s1/M)| + |P·μ_lo|) + u_c·|q|    q in Double and rounded; the inner FMA
    ///     (u_c + u_d)·|dx*|                         the outer FMA; this check's final sum
    ///     3u_d·|K·s1/M|                             s̃1/M in Double (kernel and check)
    ///     |K|·Δs1/M + |γ|·r̃²·|x − μ̃|·Δs2/M          the kernel's sums
    ///     3u_d·|K·(dy − s1/M)| + 8u_d·|P·(x − μ̃)|   this check's K, P (and s2), products, differences
    ///
    /// then the store's rounding and underflow. u_c' is u_c, or 0 for the
    /// constants when the compute precision is Double.
    public func inputGradient(at index: Int) -> (value: Double, bound: Double) {
        inputGradient(at: index, s1: s1, s2: s2, count: count, sumErrors: (sumDyErrors.worstCase, sumDyXHatErrors.worstCase))
    }

    /// The same with sums s1, s2 over `count` values that are not this
    /// instance's own (BatchNorm: a channel's sums over the whole batch),
    /// whose kernel errors are at most `sumErrors`.
    public func inputGradient(
        at index: Int, s1: Double, s2: Double, count countValues: Int, sumErrors: (s1: Double, s2: Double)
    ) -> (value: Double, bound: Double) {
        let count = Double(countValues), u = arithmetic, ud = KernelArithmetic.double
        let scale = gamma * invstd, centeredScale = -scale * invstd * s2 / count
        let meanDyWide = s1 / count, meanDy = arithmetic.roundToCompute(meanDyWide)
        let deviation = x[index] - mean
        let value = scale * (dy[index] - meanDyWide) + centeredScale * deviation
        let gradientTerm = max(abs(scale * (dy[index] - meanDy)), abs(scale * (dy[index] - meanDyWide)))
        let centeredTerm = max(abs(centeredScale * (x[index] - meanHigh)), abs(centeredScale * deviation))
        let offsetParts = abs(scale * (meanDy - meanDyWide)) + abs(centeredScale * meanLow)
        var error = (4 * ud + u.constant + u.compute) * gradientTerm
        error += (12 * ud + u.constant + 2 * u.compute) * centeredTerm
        error += (2 * ud + u.constant + u.compute) * offsetParts
        error += (u.compute + ud) * abs(value) + 3 * ud * abs(scale * meanDyWide)
        error += abs(scale) * sumErrors.s1 / count
        error += abs(gamma) * invstd * invstd * abs(deviation) * sumErrors.s2 / count
        error += 6 * u.computeUnderflow
        return (value, stored(value, error))
    }

    /// A compute result's bound once it is stored: the store rounds it once
    /// more (|S(v) − v| ≤ u_s·|v|, |v| ≤ |exact| + error). The factor
    /// 1 + 2⁻²⁰ covers the second-order terms and this bound's own roundings.
    private func stored(_ value: Double, _ computeError: Double) -> Double {
        let error = computeError * (1 + 0x1p-20)
        return error + arithmetic.store * (abs(value) + error) + arithmetic.storeUnderflow
    }

    // MARK: - Stage 2: the kernel's per-instance sums of the backward

    /// This instance's terms of dβ_c (s1) and dγ_c (s2 = r̃·Σ dy·(x − μ̃),
    /// the product kept exact), with the kernel's rounding errors.
    public var parameterTerms: (dbeta: ParameterGradientCheck.Term, dgamma: ParameterGradientCheck.Term) {
        var s2 = AccurateSum()
        s2.addProduct(invstd, sumDyCentered.high)
        s2.addProduct(invstd, sumDyCentered.low)
        return (ParameterGradientCheck.Term(high: sumDy.high, low: sumDy.low, errors: sumDyErrors),
                ParameterGradientCheck.Term(high: s2.high, low: s2.low, errors: sumDyXHatErrors))
    }

    /// The kernel's s1 and s2 (`InstanceKernel.gradientSums`):
    ///
    ///     s̃1 = lane sum of dy        S̃ = lane sum of dy·C(x − μ_hi)
    ///     s̃2 = r̃·(S̃ − μ_lo·s̃1)     (three Double roundings)
    ///
    /// so s2's events are S̃'s scaled by r̃, s1's scaled by r̃·|μ_lo|, and the three.
    static func gradientSumErrors(
        _ arithmetic: KernelArithmetic, x: [Double], dy: [Double], meanHigh: Double, meanLow: Double,
        invstd: Double, sumDy: Double, sumDyXHat: Double
    ) -> (RoundingErrors, RoundingErrors) {
        let s1 = arithmetic.laneSumErrors(count: dy.count, term: { dy[$0] }, backward: true)
        let product = { (index: Int) in dy[index] * (x[index] - meanHigh) }
        let centered = arithmetic.laneSumErrors(
            count: dy.count, term: product, formation: { abs(product($0)) }, tailProduct: { abs(product($0)) },
            backward: true)
        var s2 = RoundingErrors()
        s2.add(centered, scaledBy: invstd)
        s2.add(s1, scaledBy: invstd * meanLow)
        let ud = KernelArithmetic.double
        s2.event(ud, invstd * meanLow * sumDy)
        s2.event(ud, sumDyXHat)
        s2.event(ud, sumDyXHat)
        return (s1, s2)
    }

    // MARK: - Stage 1: the statistics

    /// |μ̃ − μ|, |σ̃² − σ²| and |r̃ − r| against the exact statistics, each
    /// divided by its bound (≤ 1 passes), and the exact values.
    public func statisticsErrors() -> (mean: Double, variance: Double, invstd: Double) {
        let exact = ExactMoments(x)
        let kernel = momentsBound(exact)
        let meanBound = kernel.mean + exact.meanError
        let varianceBound = kernel.variance + exact.varianceError
        // r = 1/√(σ² + ε): each relative error of σ² + ε moves r by half of
        // it; the kernel rounds the sum, the root and the quotient (3 u_d),
        // and this check does the same.
        let ud = KernelArithmetic.double, exactInvstd = 1 / (exact.variance + eps).squareRoot()
        let invstdBound = exactInvstd * (varianceBound / (2 * (exact.variance + eps)) + 7 * ud)
        return (
            errorRatio(abs(mean - exact.mean), meanBound),
            errorRatio(abs(variance - exact.variance), varianceBound),
            errorRatio(abs(invstd - exactInvstd), invstdBound))
    }

    /// Bounds on the kernel's |μ̃ − μ| and |σ̃² − σ²| (`InstanceKernel.moments`).
    ///
    /// One pass about the shift K = x₁: S = Σ (x − K), Q = Σ (x − K)², lane
    /// sums of compute differences (and of their squares, by FMA), then
    ///
    ///     μ̃ = K + S/M               |μ̃ − μ| ≤ ΔS/M + u_d·(|S/M| + |μ|)
    ///     σ̃² = Q/M − (S/M)²         |σ̃² − σ²| ≤ ΔQ/M + 2·|S/M|·ΔS/M + (ΔS/M)² + u_d·(|Q/M| + 3(S/M)² + σ²)
    ///
    /// unless (S/M)² > 4σ², when a second pass about c = C(μ̃₁) replaces them
    /// with D = Σ (x − c), E = Σ (x − c)², μ̃ = c + D/M, σ̃² = (E − D²/M)/M,
    /// whose bound has the same form. Near the threshold either may have been
    /// taken: the larger bound.
    func momentsBound(_ exact: ExactMoments) -> (mean: Double, variance: Double) {
        let shift = x[0]
        let shifted = shiftedMomentsBound(about: shift, exact)
        let outlier = (exact.mean - shift) * (exact.mean - shift), limit = 4 * exact.variance
        if outlier < limit * (1 - 1e-3) { return shifted }
        let centered = shiftedMomentsBound(about: arithmetic.roundToCompute(exact.mean), exact)
        if outlier > limit * (1 + 1e-3) { return centered }
        return (max(shifted.mean, centered.mean), max(shifted.variance, centered.variance))
    }

    private func shiftedMomentsBound(about shift: Double, _ exact: ExactMoments) -> (mean: Double, variance: Double) {
        let deviation = { (index: Int) in x[index] - shift }
        let count = Double(self.count)
        let sum = arithmetic.laneSumErrors(count: self.count, term: deviation, formation: { abs(deviation($0)) })
        let squares = arithmetic.laneSumErrors(
            count: self.count, term: { deviation($0) * deviation($0) },
            formation: { 2 * deviation($0) * deviation($0) }, tailProduct: { deviation($0) * deviation($0) })
        let shiftedMean = exact.mean - shift
        let meanSquares = exact.variance + shiftedMean * shiftedMean
        let ud = KernelArithmetic.double, sumError = sum.worstCase / count
        let meanBound = sumError + ud * (abs(shiftedMean) + abs(exact.mean))
        let varianceBound = squares.worstCase / count + 2 * abs(shiftedMean) * sumError + sumError * sumError
            + ud * (meanSquares + 3 * shiftedMean * shiftedMean + exact.variance)
        return (meanBound, varianceBound)
    }
}

/// The mean and biased variance of an instance, accurate to about one
/// rounding (`AccurateSum`), with bounds on their own error.
struct ExactMoments {
    let mean: Double, variance: Double
    let meanError: Double, varianceError: Double

    init(_ x: [Double]) {
        let count = Double(x.count)
        var sum = AccurateSum()
        for value in x { sum.add(value) }
        let ud = KernelArithmetic.double
        mean = sum.value / count
        meanError = sum.errorBound / count + ud * abs(mean)
        var squares = AccurateSum()
        for value in x {
            let (deviation, deviationError) = twoSum(value, -mean)
            squares.addProduct(deviation, deviation)
            squares.addProduct(2 * deviation, deviationError)
        }
        variance = squares.value / count
        // Σ (x − μ − δ)² = Σ (x − μ)² + M·δ² for the exact μ: the mean's
        // error enters squared; the dropped (x − μ)-error squared likewise.
        varianceError = squares.errorBound / count + ud * variance + 2 * meanError * meanError
    }
}

/// error / bound, the verdict of one check (≤ 1 passes): 0 for no error,
/// infinite for NaN or an error where the bound is 0.
public func errorRatio(_ error: Double, _ bound: Double) -> Double {
    if error == 0 { return 0 }
    guard error.isFinite else { return .infinity }
    return bound > 0 ? error / bound : .infinity
}
