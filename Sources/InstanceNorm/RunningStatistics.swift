/// Running statistics with PyTorch's semantics, per channel c:
///
///     running_mean_c ← (1 − m)·running_mean_c + m·(1/N) Σ_n μ(n,c)
///     running_var_c  ← (1 − m)·running_var_c  + m·(1/N) Σ_n σ²(n,c)·M/(M−1)
///
/// m is the momentum (PyTorch's default 0.1). The running variance is the
/// unbiased one while the forward normalizes with the biased one, so a
/// training step needs M ≥ 2, as in PyTorch.
public enum RunningStatistics {
    /// PyTorch's default momentum.
    public static let defaultMomentum = 0.1

    /// Σ_n μ(n,c) and Σ_n σ²(n,c)·M/(M−1) per channel, summed in `Double`
    /// in sample order n = 0, 1, …: the same statistics in the same order give
    /// the same bits, however they were gathered.
    ///
    /// - Parameters:
    ///   - statistics: (N, C) per-instance statistics.
    ///   - channels: C.
    ///   - spatialCount: M ≥ 2, the values per instance.
    public static func channelSums(
        _ statistics: UnsafeBufferPointer<InstanceStatistics>, channels: Int, spatialCount: Int
    ) -> (meanSum: [Double], unbiasedVarianceSum: [Double]) {
        precondition(spatialCount >= 2, "the unbiased variance needs at least two values per instance")
        precondition(statistics.count % channels == 0)
        let besselCorrection = Double(spatialCount) / Double(spatialCount - 1)
        var meanSum = [Double](repeating: 0, count: channels)
        var unbiasedVarianceSum = [Double](repeating: 0, count: channels)
        for (instance, instanceStatistics) in statistics.enumerated() {
            meanSum[instance % channels] += instanceStatistics.mean
            unbiasedVarianceSum[instance % channels] += instanceStatistics.variance * besselCorrection
        }
        return (meanSum, unbiasedVarianceSum)
    }

    /// Applies one training step's update in place, from the channel sums of
    /// `channelSums` over a global batch of `batch` samples.
    public static func update<T: InstanceNormScalar>(
        runningMean: UnsafeMutableBufferPointer<T>, runningVar: UnsafeMutableBufferPointer<T>,
        meanSum: [Double], unbiasedVarianceSum: [Double],
        batch: Int, momentum: Double
    ) {
        precondition(batch >= 1, "a running-statistics update needs at least one sample")
        precondition(runningMean.count == meanSum.count && runningVar.count == unbiasedVarianceSum.count)
        let batchSize = Double(batch)
        for channel in 0..<runningMean.count {
            runningMean[channel] = T(
                (1 - momentum) * runningMean[channel].widened + momentum * (meanSum[channel] / batchSize))
            runningVar[channel] = T(
                (1 - momentum) * runningVar[channel].widened + momentum * (unbiasedVarianceSum[channel] / batchSize))
        }
    }
}
