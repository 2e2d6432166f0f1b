/// GroupNorm and LayerNorm rows checked as `InstanceCheck` checks an
/// instance: the kernel's statistics against the exact ones (stage 1, the
/// same `InstanceKernel.moments` arithmetic over the row), then y, dx and
/// the parameter-gradient terms against the exact results *of the kernel's
/// statistics* (stage 2), each value within a first-order bound on the
/// roundings of the kernel's formula. Where a row's arithmetic is the
/// instance kernel's (a group's segments: `InstanceKernel.normalize` and
/// `gradientSums` with the group's statistics) the instance bounds are used
/// as they are; the new formulas (a group's dx, a layer-norm row's y and
/// dx, the column sums of dγ, dβ) get their own, derived the same way: one
/// term u·|value rounded| per rounding, then doubled (`safety`), which still
/// leaves them tens of times tighter than the 64-ulp corruptions the tests
/// must catch.

/// Doubles every new first-order bound: room for a rounding this
/// accounting may have missed, without loosening it to where a few ulps
/// would pass.
let safety = 2.0

/// One group of a GroupNorm: C/G channel segments of M values.
public struct GroupRowCheck {
    /// How the kernels round.
    public let arithmetic: KernelArithmetic
    /// The whole row, for the statistics.
    public let row: InstanceCheck
    /// Each channel's segment, with the group's statistics.
    public let segments: [InstanceCheck]
    /// γ of each of the group's channels.
    public let gamma: [Double]
    /// A = Σ_c γ_c·s1_c and B = Σ_c γ_c·s2_c, exact given the statistics, and the kernel's errors on them.
    let sumA: Double, sumB: Double
    let sumAError: Double, sumBError: Double

    /// - Parameters:
    ///   - arithmetic: how the kernels round.
    ///   - x: the group's values as stored, channel after channel.
    ///   - dy: their gradient, or empty (no backward).
    ///   - gamma: the group's channels' γ.
    ///   - beta: the group's channels' β.
    ///   - eps: ε, added to the variance.
    ///   - mean: the group's mean as the kernel computed it.
    ///   - variance: the group's biased variance as the kernel computed it.
    ///   - invstd: the group's invstd as the kernel computed it.
    public init(
        arithmetic: KernelArithmetic, x: [Double], dy: [Double], gamma: [Double], beta: [Double], eps: Double,
        mean: Double, variance: Double, invstd: Double
    ) {
        self.arithmetic = arithmetic
        self.gamma = gamma
        row = InstanceCheck(
            arithmetic: arithmetic, x: x, dy: [], gamma: 1, beta: 0, eps: eps, mean: mean, variance: variance, invstd: invstd)
        let length = x.count / gamma.count
        segments = gamma.indices.map { channel in
            let range = channel * length..<(channel + 1) * length
            return InstanceCheck(
                arithmetic: arithmetic, x: Array(x[range]), dy: dy.isEmpty ? [] : Array(dy[range]),
                gamma: gamma[channel], beta: beta[channel], eps: eps, mean: mean, variance: variance, invstd: invstd)
        }
        var exactA = AccurateSum(), exactB = AccurateSum()
        var errorA = 0.0, errorB = 0.0, partialA = 0.0, partialB = 0.0
        let ud = KernelArithmetic.double
        for (channel, segment) in segments.enumerated() {
            exactA.addProduct(gamma[channel], segment.s1)
            exactB.addProduct(gamma[channel], segment.s2)
            // The kernel's γ·s, in Double, added in channel order.
            partialA += gamma[channel] * segment.s1
            partialB += gamma[channel] * segment.s2
            errorA += abs(gamma[channel]) * segment.sumDyErrors.worstCase + ud * (abs(gamma[channel] * segment.s1) + abs(partialA))
            errorB += abs(gamma[channel]) * segment.sumDyXHatErrors.worstCase + ud * (abs(gamma[channel] * segment.s2) + abs(partialB))
        }
        (sumA, sumB, sumAError, sumBError) = (exactA.value, exactB.value, errorA, errorB)
    }

    /// L, the group's values.
    public var count: Int { segments.count * segments[0].count }

    /// y at `index` of the group: its segment's, with the group's statistics.
    public func normalized(at index: Int) -> (value: Double, bound: Double) {
        segments[index / segments[0].count].normalized(at: index % segments[0].count)
    }

    /// dx* = r̃·(γ_c·dy − A/L) − r̃²·B/L·(x − μ̃) and the bound on the kernel's
    ///
    ///     k = C(γ_c·r̃)   p = C(−r̃²·B̃/L)   d̄ = C(A/(L·γ_c))   q = C(K·d̄ − r̃·Ã/L − P·μ_lo)
    ///     dx̂ = S(fma(k, C(dy − d̄), fma(p, C(x − μ_hi), q)))
    ///
    /// one term per rounding: K, k and the difference e = dy − d̄; P's three
    /// Double roundings, p, x − μ_hi and the inner FMA; q's four Double
    /// roundings and its own; the outer FMA; Ã, B̃'s errors; this check's
    /// own Double arithmetic.
    public func inputGradient(at index: Int) -> (value: Double, bound: Double) {
        let segment = segments[index / segments[0].count], position = index % segments[0].count
        let channel = index / segments[0].count, count = Double(count)
        let invstd = segment.invstd, u = arithmetic, ud = KernelArithmetic.double
        let gradientScale = gamma[channel] * invstd, centeredScale = -invstd * invstd * sumB / count
        let constant = -invstd * sumA / count
        let meanDy = gradientScale != 0 ? arithmetic.roundToCompute(-constant / gradientScale) : 0
        let deviation = segment.x[position] - segment.mean
        let value = gradientScale * segment.dy[position] + constant + centeredScale * deviation
        let gradientTerm = abs(gradientScale * (segment.dy[position] - meanDy))
        let centeredTerm = max(abs(centeredScale * (segment.x[position] - segment.meanHigh)), abs(centeredScale * deviation))
        let offsetParts = abs(gradientScale * meanDy) + abs(constant) + abs(centeredScale * segment.meanLow)
        var error = (ud + u.constant + u.compute) * gradientTerm
        error += (3 * ud + u.constant + 2 * u.compute) * centeredTerm
        error += (4 * ud + u.constant + u.compute) * offsetParts
        error += (u.compute + ud) * abs(value)
        error += invstd * sumAError / count + invstd * invstd * abs(deviation) * sumBError / count
        error += 6 * ud * (abs(gradientScale * segment.dy[position]) + abs(constant) + abs(centeredScale * deviation))
        error += 6 * u.computeUnderflow
        return (value, arithmetic.stored(value, safety * error))
    }
}

/// One row of a LayerNorm: D values, γ, β per position.
public struct LayerRowCheck {
    /// How the kernels round.
    public let arithmetic: KernelArithmetic
    /// The row, for the statistics and its split mean.
    public let row: InstanceCheck
    /// γ per position.
    public let gamma: [Double]
    /// β per position.
    public let beta: [Double]
    /// A = Σ γ·dy, S = r̃·Σ γ·dy·(x − μ̃), exact given the statistics, and the kernel's errors on them.
    let sumA: Double, sumS: Double
    let sumAError: Double, sumSError: Double

    /// The same parameters as `GroupRowCheck.init`, for one row of D values
    /// with γ, β per position.
    public init(
        arithmetic: KernelArithmetic, x: [Double], dy: [Double], gamma: [Double], beta: [Double], eps: Double,
        mean: Double, variance: Double, invstd: Double
    ) {
        self.arithmetic = arithmetic
        self.gamma = gamma
        self.beta = beta
        row = InstanceCheck(
            arithmetic: arithmetic, x: x, dy: dy, gamma: 1, beta: 0, eps: eps, mean: mean, variance: variance, invstd: invstd)
        guard !dy.isEmpty else {
            (sumA, sumS, sumAError, sumSError) = (0, 0, 0, 0)
            return
        }
        var exactA = AccurateSum(), exactB = AccurateSum()
        for index in x.indices {
            exactA.addProduct(gamma[index], dy[index])
            let (deviation, deviationError) = twoSum(x[index], -mean)
            exactB.addProduct(gamma[index] * dy[index], deviation)
            exactB.addProduct(gamma[index] * dy[index], deviationError)
        }
        let meanHigh = arithmetic.roundToCompute(mean), meanLow = mean - meanHigh
        let weighted = { (index: Int) in gamma[index] * dy[index] }
        let centered = { (index: Int) in weighted(index) * (x[index] - meanHigh) }
        // γ·dy rounds to the compute precision; x − μ_hi too; the product
        // rounds once more in the scalar tail: three formations at most.
        let errorA = arithmetic.laneSumErrors(count: x.count, term: weighted, formation: { abs(weighted($0)) })
        let errorB = arithmetic.laneSumErrors(count: x.count, term: centered, formation: { 3 * abs(centered($0)) })
        let ud = KernelArithmetic.double
        sumA = exactA.value
        sumS = invstd * exactB.value
        sumAError = errorA.worstCase + exactA.errorBound
        sumSError = invstd * (errorB.worstCase + abs(meanLow) * errorA.worstCase) + 3 * ud * abs(sumS) + invstd * exactB.errorBound
    }

    /// D, the row's values.
    public var count: Int { row.count }

    /// x̂* = (x − μ̃)·r̃ and the bound on the kernel's x̂ = C(fma(C(x − μ_hi), C(r̃), C(−μ_lo·r̃))):
    /// the difference, r's and the constant's roundings, the FMA.
    func normalizedValue(at index: Int) -> (value: Double, error: Double) {
        let invstd = row.invstd, u = arithmetic, ud = KernelArithmetic.double
        let value = (row.x[index] - row.mean) * invstd
        let scaled = max(abs(invstd * (row.x[index] - row.meanHigh)), abs(value))
        let error = (u.compute + u.constant + 2 * ud) * scaled + (u.constant + ud) * abs(row.meanLow * invstd)
            + u.compute * abs(value) + 2 * u.computeUnderflow
        return (value, error)
    }

    /// y* = γ·x̂* + β and the bound on the kernel's S(fma(x̂, γ, β)).
    public func normalized(at index: Int) -> (value: Double, bound: Double) {
        let (xHat, xHatError) = normalizedValue(at: index)
        let value = gamma[index] * xHat + beta[index]
        let ud = KernelArithmetic.double
        let error = abs(gamma[index]) * xHatError + (arithmetic.compute + 2 * ud) * abs(value)
            + 2 * ud * abs(gamma[index] * xHat) + arithmetic.computeUnderflow
        return (value, arithmetic.stored(value, safety * error))
    }

    /// dx* = r̃·(γ·dy − A/D) − r̃·S/D·x̂* and the bound on the kernel's
    ///
    ///     Ā = C(Ã/D)   p = C(−r̃²·S̃/D)   q = C(r̃·(Ā − Ã/D) − p·μ_lo)
    ///     dx̂ = S(fma(C(r̃), C(C(γ·dy) − Ā), fma(p, C(x − μ_hi), q)))
    public func inputGradient(at index: Int) -> (value: Double, bound: Double) {
        let count = Double(count), invstd = row.invstd, u = arithmetic, ud = KernelArithmetic.double
        let (xHat, _) = normalizedValue(at: index)
        let weighted = gamma[index] * row.dy[index]
        let meanWeighted = arithmetic.roundToCompute(sumA / count)
        let centeredScale = -invstd * invstd * sumS / count
        let value = invstd * (weighted - sumA / count) - invstd * sumS / count * xHat
        let gradientTerm = abs(invstd * (weighted - meanWeighted))
        let centeredTerm = max(abs(centeredScale * (row.x[index] - row.meanHigh)), abs(invstd * sumS / count * xHat))
        let offsetParts = abs(invstd * (meanWeighted - sumA / count)) + abs(centeredScale * row.meanLow)
        var error = (u.constant + 2 * u.compute + ud) * gradientTerm + u.compute * abs(invstd * weighted)
        error += (3 * ud + u.constant + 2 * u.compute) * centeredTerm
        error += (3 * ud + u.constant + u.compute) * offsetParts
        error += (u.compute + ud) * abs(value)
        error += invstd * sumAError / count + invstd * abs(xHat) * sumSError / count
        error += 6 * ud * (abs(invstd * weighted) + abs(invstd * sumA / count) + abs(centeredTerm))
        error += 6 * u.computeUnderflow
        return (value, arithmetic.stored(value, safety * error))
    }

    /// This row's share of the column sums at `index`: dy (exact) and
    /// dy·x̂*, with the kernel's error on C(dy·x̂) (x̂'s own error, the product's rounding).
    public func columnTerms(at index: Int) -> (dy: Double, dyXHat: Double, dyXHatError: Double) {
        let (xHat, xHatError) = normalizedValue(at: index)
        let gradient = row.dy[index]
        return (gradient, gradient * xHat, abs(gradient) * xHatError + arithmetic.compute * abs(gradient * xHat))
    }
}

extension KernelArithmetic {
    /// A compute result's bound once it is stored: the store rounds it once
    /// more (|S(v) − v| ≤ u_s·|v|, |v| ≤ |exact| + error); 1 + 2⁻²⁰ covers
    /// the second-order terms.
    public func stored(_ value: Double, _ computeError: Double) -> Double {
        let error = computeError * (1 + 0x1p-20)
        return error + store * (abs(value) + error) + storeUnderflow
    }
}
