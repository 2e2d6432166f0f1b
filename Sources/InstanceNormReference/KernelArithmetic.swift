/// What the error analysis of `ErrorBounds` needs to know about how the
/// kernels compute: the unit roundoff of each precision they round to, and
/// the order of their sums. It knows nothing else of the kernels (this
/// module does not depend on them); the numbers come from the caller.
///
/// The model of rounding is the standard one (Higham, *Accuracy and
/// Stability of Numerical Algorithms*, 2nd ed., §2.2): a result rounded to
/// nearest in a precision of p significant bits is exact·(1 + δ) with
/// |δ| ≤ u = 2⁻ᵖ, plus an absolute error of at most half the smallest
/// subnormal where it underflows. A fused multiply-add rounds once.
public struct KernelArithmetic: Sendable {
    /// u of the compute precision (per-value arithmetic, lane sums):
    /// 2⁻²⁴ for Float (also half storage), 2⁻⁵³ for Double.
    public let compute: Double
    /// Rounding a `Double` constant (a, b, k, p, q, μ_hi, m̄) to the compute
    /// precision: u of it, or 0 when it is `Double`.
    public let constant: Double
    /// Storing a compute value (y, dx) in the storage precision: 2⁻¹¹ for
    /// half, 0 when storage and compute are the same.
    public let store: Double
    /// Storing a `Double` result (dγ, dβ) in the storage precision: 2⁻¹¹
    /// (half), 2⁻²⁴ (Float), 0 (Double).
    public let narrowing: Double
    /// Half the smallest subnormal of storage and of compute: the absolute
    /// error of a rounding that underflows.
    public let storeUnderflow: Double
    /// Half the smallest subnormal of the compute precision.
    public let computeUnderflow: Double
    /// Significant bits of the storage precision (11, 24, 53), for ulps.
    public let storageBits: Int
    /// Lanes of one compute vector; the kernels sum two vectors side by side.
    public let lanes: Int
    /// Values per chunk: lane sums are widened to `Double` once per chunk.
    public let chunk: Int
    /// Significant bits of the compute precision (24, 53).
    public let computeBits: Int
    /// The largest instance the kernels sum in the blocked order (groups
    /// of `blockedGroup` values, see `laneSumErrors`), 0 for none: set it
    /// for InstanceNorm (`SmallInstances.limit`), not for the other norms.
    public var blockedLimit = 0
    /// The same for the backward's sums (`SmallInstances.backwardLimit`).
    public var blockedBackwardLimit = 0
    /// Values per compute-precision running sum in the blocked order.
    public var blockedGroup = 8

    /// u of `Double`.
    public static let double = 0x1p-53

    /// The arithmetic of kernels that store in `storage`, compute in
    /// `compute`, sum in vectors of `lanes` and widen every `chunk` values.
    public init<Storage: BinaryFloatingPoint, Compute: BinaryFloatingPoint>(
        storage: Storage.Type, compute: Compute.Type, lanes: Int, chunk: Int
    ) {
        let storageBits = Storage.significandBitCount + 1, computeBits = Compute.significandBitCount + 1
        let unit = { (bits: Int) in Double(sign: .plus, exponent: -bits, significand: 1) }
        self.compute = unit(computeBits)
        constant = computeBits >= 53 ? 0 : unit(computeBits)
        store = storageBits >= computeBits ? 0 : unit(storageBits)
        narrowing = storageBits >= 53 ? 0 : unit(storageBits)
        storeUnderflow = Double(Storage.leastNonzeroMagnitude) / 2
        computeUnderflow = Double(Compute.leastNonzeroMagnitude) / 2
        self.storageBits = storageBits
        self.lanes = lanes
        self.chunk = chunk
        self.computeBits = computeBits
    }

    /// `value` rounded to nearest even in the compute precision, as the
    /// kernels round μ_hi and m̄ (normal range: scaling by a power of two
    /// and rounding to an integer are exact in `Double`).
    public func roundToCompute(_ value: Double) -> Double {
        guard computeBits < 53, value != 0, value.isFinite else { return value }
        let scale = Double(sign: .plus, exponent: value.exponent - (computeBits - 1), significand: 1)
        return (value / scale).rounded(.toNearestOrEven) * scale
    }

    /// One ulp of the storage precision at `value` (normal range).
    public func storageUlp(_ value: Double) -> Double {
        guard value != 0, value.isFinite else { return storeUnderflow * 2 }
        return Double(sign: .plus, exponent: value.exponent - (storageBits - 1), significand: 1)
    }
}

/// The rounding errors of one computed quantity, first order: each rounding
/// event e contributes δ_e·c_e, with |δ_e| ≤ u_e and c_e the exact value it
/// rounds (for an addition in a running sum: the partial sum after it).
///
/// Two bounds on |Σ δ_e·c_e|:
///
/// - `worstCase` = Σ u_e·|c_e|, which always holds (the running-error form
///   of Higham's bound (4.3) for recursive summation, with the partial sums
///   taken exact: their own error is second order);
/// - λ·√(Σ (u_e·c_e)²), which holds with probability at
///   least 1 − 2·exp(−λ²/2) when the δ_e are modelled as independent,
///   mean-zero random variables bounded by u_e (the model of Higham and
///   Mary, "A new approach to probabilistic rounding error analysis", SIAM
///   J. Sci. Comput. 41(5), 2019; the bound is the Azuma–Hoeffding
///   inequality for the martingale Σ δ_e·c_e, as in Ipsen and Zhou,
///   "Probabilistic error analysis for inner products", SIAM J. Matrix
///   Anal. Appl. 41(4), 2020).
///
/// The worst case grows with the number of events; the probable bound with
/// its square root. It is what makes a sum over a whole batch, with heavy
/// cancellation (|Σ| ≪ Σ|terms|), checkable to a few ulps.
public struct RoundingErrors: Sendable, Equatable {
    /// Σ u_e·|c_e|: a bound that always holds.
    public private(set) var worstCase = 0.0
    /// Σ (u_e·c_e)²: the variance of the error under the probabilistic model.
    public private(set) var variance = 0.0

    /// The λ of the probabilistic bound: under the model a checked sum
    /// exceeds it with probability at most 2·exp(−λ²/2) = 3·10⁻⁸ for λ = 6.
    /// The model's range bound is generous: an error spread evenly over
    /// [−u, u] has a standard deviation of u/√3, so λ = 6 is about ten of
    /// them. (λ = 8 would make dγ, dβ's float64 bound about 50 ulps on a
    /// chunk-sized instance, too close to the 64 ulps the corruption tests
    /// must catch.)
    public static let lambda = 6.0

    /// No rounding yet.
    public init() {}

    /// Errors with the given worst case and variance (one sent between ranks, say).
    public init(worstCase: Double, variance: Double) {
        self.worstCase = worstCase
        self.variance = variance
    }

    /// One rounding of unit `unit` of the exact value `value`.
    public mutating func event(_ unit: Double, _ value: Double) {
        let size = unit * abs(value)
        worstCase += size
        variance += size * size
    }

    /// The events of `other`, scaled by `factor` (the quantity they feed is
    /// multiplied by it).
    public mutating func add(_ other: RoundingErrors, scaledBy factor: Double = 1) {
        worstCase += abs(factor) * other.worstCase
        variance += factor * factor * other.variance
    }

    /// The smaller of the two bounds: the worst case always holds, so the
    /// result holds at least as often as `λ·√variance`.
    public func bound(lambda: Double = RoundingErrors.lambda) -> Double {
        min(worstCase, lambda * variance.squareRoot())
    }
}

extension KernelArithmetic {
    /// The rounding events of Σ term(i), i < count, summed as the kernels
    /// sum an instance (`VectorKernel`'s `shiftedChunkSums`,
    /// `gradientChunkSums`; the channels-last kernels add every value in the
    /// same lane and order, and threads split instances at chunk boundaries):
    ///
    /// - chunks of `chunk` values at fixed offsets; per chunk, whole blocks of
    ///   2·lanes values go to two vectors of compute lanes, value k of a
    ///   block to lane k, each lane a running sum (an add or an FMA:
    ///   one rounding each);
    /// - each vector's lanes widened exactly and added in `Double`, in
    ///   pairs (lane i + lane i + lanes/2, then into the total), the two
    ///   vectors' totals added;
    /// - the values after the last whole block added one by one in `Double`;
    /// - the chunk totals added in `Double`, in chunk order.
    ///
    /// `formation(i)` is the size of the compute rounding made while forming
    /// term i (|x − shift| for a difference, 2·(x − shift)² for its
    /// square, 0 when exact); `tailProduct(i)` that of a `Double` product
    /// the values after the last block form instead of an FMA.
    ///
    /// Instances of at most `blockedLimit` values (`blockedBackwardLimit`
    /// for the backward's sums) are summed in the blocked order instead
    /// (`blockedSumErrors`).
    public func laneSumErrors(
        count: Int, term: (Int) -> Double, formation: (Int) -> Double = { _ in 0 },
        tailProduct: (Int) -> Double = { _ in 0 }, backward: Bool = false
    ) -> RoundingErrors {
        if count <= (backward ? blockedBackwardLimit : blockedLimit) {
            return blockedSumErrors(count: count, term: term, formation: formation)
        }
        var errors = RoundingErrors()
        var total = 0.0
        var lanePartials = [Double](repeating: 0, count: 2 * lanes)
        for start in stride(from: 0, to: count, by: chunk) {
            let end = min(start + chunk, count)
            for lane in lanePartials.indices { lanePartials[lane] = 0 }
            var index = start
            while index + 2 * lanes <= end {
                for lane in 0..<2 * lanes {
                    lanePartials[lane] += term(index + lane)
                    errors.event(compute, lanePartials[lane])
                    errors.event(compute, formation(index + lane))
                }
                index += 2 * lanes
            }
            var chunkTotal = widenedVectorSums(lanePartials, &errors)
            while index < end {
                chunkTotal += term(index)
                errors.event(Self.double, chunkTotal)
                errors.event(compute, formation(index))
                errors.event(Self.double, tailProduct(index))
                index += 1
            }
            total += chunkTotal
            errors.event(Self.double, total)
        }
        return errors
    }

    /// The rounding events of Σ term(i) in the blocked order of small
    /// instances (`laneSums` of the kernels): groups of `blockedGroup`
    /// consecutive values, each a running sum in the compute precision from
    /// zero (an add or an FMA: one rounding each, plus the term's own
    /// formation), widened exactly and added to a `Double` total in order.
    public func blockedSumErrors(
        count: Int, term: (Int) -> Double, formation: (Int) -> Double = { _ in 0 }
    ) -> RoundingErrors {
        var errors = RoundingErrors()
        var total = 0.0
        for start in stride(from: 0, to: count, by: blockedGroup) {
            var group = 0.0
            for index in start..<min(start + blockedGroup, count) {
                group += term(index)
                errors.event(compute, group)
                errors.event(compute, formation(index))
            }
            total += group
            errors.event(Self.double, total)
        }
        return errors
    }

    /// The two vectors' lanes summed as `widenedLaneSum` sums them.
    private func widenedVectorSums(_ lanePartials: [Double], _ errors: inout RoundingErrors) -> Double {
        var sum = 0.0
        for vector in 0..<2 {
            var vectorTotal = 0.0
            for lane in 0..<lanes / 2 {
                let pair = lanePartials[vector * lanes + lane] + lanePartials[vector * lanes + lane + lanes / 2]
                errors.event(Self.double, pair)
                vectorTotal += pair
                errors.event(Self.double, vectorTotal)
            }
            sum += vectorTotal
            if vector == 1 { errors.event(Self.double, sum) }
        }
        return sum
    }
}
