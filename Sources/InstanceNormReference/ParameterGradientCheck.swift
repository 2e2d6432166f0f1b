/// dγ_c or dβ_c of a batch, the sum over its instances of s2 or s1, against
/// the exact sum with a bound derived from the kernels' roundings.
///
/// The kernels compute each instance's sum in compute-precision lanes
/// (`InstanceCheck.sumDyErrors`, `sumDyXHatErrors`), add the instances in
/// `Double` and store the total in the storage precision. The sum over a
/// batch cancels heavily (|dγ| ≈ √(N·M) while Σ|terms| ≈ N·M), so the
/// worst-case bound of its roundings grows to hundreds of ulps of the
/// result; the bound here uses the probabilistic form of
/// `RoundingErrors.bound(lambda:)` (never looser than the worst case):
///
///     |computed − exact| ≤ E + u_n·(|exact| + E) + underflow + reference error,
///     E = min(Σ_e u_e·|c_e|, λ·√(Σ_e (u_e·c_e)²))
///
/// over the events e of every instance's sum and of the additions over
/// instances, with u_n the rounding of `Double` to storage (half an ulp of
/// the storage type: 2⁻¹¹, 2⁻²⁴ or 0) and the reference error the bound of
/// `AccurateSum`.
public enum ParameterGradientCheck {
    /// One instance's contribution: its exact sum as the two parts of an
    /// `AccurateSum`, and the rounding errors of the kernel's own sum.
    public struct Term: Sendable, Equatable {
        /// The exact sum's leading part.
        public var high: Double
        /// The rest of the exact sum: high + low is it.
        public var low: Double
        /// The rounding errors of the kernel's own value of this sum.
        public var errors: RoundingErrors

        /// A term of exact value high + low, with the kernel's errors.
        public init(high: Double, low: Double, errors: RoundingErrors) {
            self.high = high
            self.low = low
            self.errors = errors
        }

        /// The number of Doubles `flattened` takes.
        public static let fieldCount = 4
        /// The term as `fieldCount` Doubles, to send between ranks.
        public var flattened: [Double] { [high, low, errors.worstCase, errors.variance] }
        /// The term from its `flattened` form.
        public init(flattened fields: ArraySlice<Double>) {
            let start = fields.startIndex
            self.init(
                high: fields[start], low: fields[start + 1],
                errors: RoundingErrors(worstCase: fields[start + 2], variance: fields[start + 3]))
        }

        var value: Double { high + low }
    }

    /// How the kernels add the instances of a channel.
    public enum Order: Sendable {
        /// The exact sum of the instances' sums, rounded once to `Double`
        /// (the reproducible reduction).
        case correctlyRounded
        /// Every instance of the batch in sample order, from 0.
        case sampleOrder
        /// Each rank its instances in sample order, then MPI sums the
        /// ranks' partial sums in an order of its own.
        case ranksThenAllreduce
    }

    /// The exact sum of `terms` and the bound on the kernels' result.
    ///
    /// - Parameters:
    ///   - termsByRank: the channel's instances, rank after rank, each
    ///     rank's in sample order (one process: one rank).
    ///   - order: how the kernels add them.
    ///   - arithmetic: how the kernels round.
    ///   - lambda: the λ of the probabilistic bound (`RoundingErrors.lambda`).
    public static func check(
        _ termsByRank: [[Term]], order: Order, arithmetic: KernelArithmetic, lambda: Double = RoundingErrors.lambda
    ) -> (value: Double, bound: Double) {
        var exact = AccurateSum()
        var errors = RoundingErrors()
        for term in termsByRank.joined() {
            exact.add(term.high)
            exact.add(term.low)
            errors.add(term.errors)
        }
        addInstanceSumEvents(termsByRank, order: order, to: &errors)
        // 1 + 2⁻²⁰: the second-order terms and this bound's own roundings.
        let value = exact.value, computed = errors.bound(lambda: lambda) * (1 + 0x1p-20)
        let bound = computed + arithmetic.narrowing * (abs(value) + computed) + arithmetic.storeUnderflow
            + exact.errorBound
        return (value, bound)
    }

    /// The `Double` additions over instances: each rounds its partial sum.
    private static func addInstanceSumEvents(_ termsByRank: [[Term]], order: Order, to errors: inout RoundingErrors) {
        let ud = KernelArithmetic.double
        switch order {
        case .correctlyRounded:
            errors.event(ud, termsByRank.joined().reduce(0) { $0 + $1.value })
        case .sampleOrder:
            var partial = 0.0
            for term in termsByRank.joined() {
                partial += term.value
                errors.event(ud, partial)
            }
        case .ranksThenAllreduce:
            var rankSums: [Double] = []
            for terms in termsByRank {
                var partial = 0.0
                for term in terms {
                    partial += term.value
                    errors.event(ud, partial)
                }
                rankSums.append(partial)
            }
            // MPI's P − 1 additions, each of a partial no larger than Σ|rank sums|.
            let largestPartial = rankSums.reduce(0) { $0 + abs($1) }
            for _ in rankSums.dropFirst() { errors.event(ud, largestPartial) }
        }
    }
}
