/// A plain double-precision InstanceNorm, written for clarity and nothing
/// else: the textbook formulas, one instance at a time, with the two-pass
/// variance. Every fast path in the package is compared with it.
///
/// Tensors are flat arrays in C order, (batch, channels, spatialCount).
public enum Reference {
    /// The outputs of a training-mode forward.
    public struct Forward {
        /// (N, C, M) normalized output.
        public var y: [Double]
        /// (N, C) per-instance mean, biased variance and invstd.
        public var mean: [Double]
        /// (N, C) per-instance biased variance σ².
        public var variance: [Double]
        /// (N, C) per-instance 1 / sqrt(σ² + ε).
        public var invstd: [Double]
    }

    /// The outputs of a backward.
    public struct Backward {
        /// (N, C, M) gradient with respect to x.
        public var dx: [Double]
        /// (C,) gradient with respect to γ: Σ_n Σ_m dy·x̂.
        public var dgamma: [Double]
        /// (C,) gradient with respect to β: Σ_n Σ_m dy.
        public var dbeta: [Double]
    }

    /// Training-mode forward: every instance normalized with its own mean
    /// and biased variance (a refined mean, then a two-pass variance),
    /// y = γ·(x − μ)/sqrt(σ² + ε) + β.
    ///
    /// - Parameters:
    ///   - x: (batch, channels, spatialCount) input, C order.
    ///   - batch: N.
    ///   - channels: C.
    ///   - spatialCount: M, the values per instance.
    ///   - gamma: (C,) scale, or nil for γ = 1.
    ///   - beta: (C,) shift, or nil for β = 0.
    ///   - eps: ε, added to the variance.
    public static func forward(
        x: [Double], batch: Int, channels: Int, spatialCount: Int,
        gamma: [Double]? = nil, beta: [Double]? = nil, eps: Double
    ) -> Forward {
        var result = Forward(y: x, mean: [], variance: [], invstd: [])
        for n in 0..<batch {
            for c in 0..<channels {
                let start = (n * channels + c) * spatialCount
                let values = Array(x[start..<start + spatialCount])
                // One refinement step makes the mean accurate to an ulp even
                // when the mean is large against the spread.
                let roughMean = values.reduce(0, +) / Double(spatialCount)
                let mean = roughMean + values.map { $0 - roughMean }.reduce(0, +) / Double(spatialCount)
                let variance = values.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(spatialCount)
                let invstd = 1 / (variance + eps).squareRoot()
                for m in 0..<spatialCount {
                    let xHat = (values[m] - mean) * invstd
                    result.y[start + m] = (gamma?[c] ?? 1) * xHat + (beta?[c] ?? 0)
                }
                result.mean.append(mean)
                result.variance.append(variance)
                result.invstd.append(invstd)
            }
        }
        return result
    }

    /// dx = γ·r·(dy − mean(dy) − x̂·mean(dy·x̂)), dβ = Σ dy, dγ = Σ dy·x̂.
    ///
    /// Recomputes the forward's statistics from `x` first.
    public static func backward(
        dy: [Double], x: [Double], batch: Int, channels: Int, spatialCount: Int,
        gamma: [Double]? = nil, eps: Double
    ) -> Backward {
        let saved = forward(x: x, batch: batch, channels: channels, spatialCount: spatialCount, eps: eps)
        var result = Backward(dx: dy, dgamma: Array(repeating: 0, count: channels),
                              dbeta: Array(repeating: 0, count: channels))
        for n in 0..<batch {
            for c in 0..<channels {
                let instance = n * channels + c
                let start = instance * spatialCount
                let xHat = (0..<spatialCount).map { (x[start + $0] - saved.mean[instance]) * saved.invstd[instance] }
                let gradients = Array(dy[start..<start + spatialCount])
                let meanDy = gradients.reduce(0, +) / Double(spatialCount)
                let meanDyXHat = zip(gradients, xHat).map { $0 * $1 }.reduce(0, +) / Double(spatialCount)
                for m in 0..<spatialCount {
                    result.dx[start + m] = (gamma?[c] ?? 1) * saved.invstd[instance]
                        * (gradients[m] - meanDy - xHat[m] * meanDyXHat)
                }
                result.dbeta[c] += gradients.reduce(0, +)
                result.dgamma[c] += zip(gradients, xHat).map { $0 * $1 }.reduce(0, +)
            }
        }
        return result
    }

    /// y = γ·(x − running_mean)/sqrt(running_var + ε) + β.
    public static func forwardInference(
        x: [Double], batch: Int, channels: Int, spatialCount: Int,
        runningMean: [Double], runningVar: [Double],
        gamma: [Double]? = nil, beta: [Double]? = nil, eps: Double
    ) -> [Double] {
        var y = x
        for index in x.indices {
            let c = (index / spatialCount) % channels
            let xHat = (x[index] - runningMean[c]) / (runningVar[c] + eps).squareRoot()
            y[index] = (gamma?[c] ?? 1) * xHat + (beta?[c] ?? 0)
        }
        return y
    }

    /// The largest scaled error |out − exact| / (|exact| + scale) that a
    /// correct kernel's output may show against this reference on the same
    /// inputs, for storage and compute precisions whose ε (the gap from 1 to
    /// the next value) are given:
    ///
    ///     max(16·ε_compute, ε_storage)
    ///
    /// Every sum is finished in `Double` and about four roundings of the
    /// compute precision touch each value: 16 of its ulps leave room without
    /// hiding a wrong formula, which is off by O(1). An output stored in a
    /// narrower precision (half: ε = 2⁻¹⁰ = 8192 ε_float) is also rounded
    /// once, by at most ε_storage/2 relative, which then dominates; one
    /// ε_storage bounds both, while a kernel that summed in the storage
    /// precision would be off by many.
    public static func outputTolerance(storageEpsilon: Double, computeEpsilon: Double) -> Double {
        max(16 * computeEpsilon, storageEpsilon)
    }

    /// One PyTorch running-statistics step: the batch mean of the instance
    /// means and of the unbiased instance variances, blended with momentum.
    public static func runningUpdate(
        runningMean: [Double], runningVar: [Double],
        x: [Double], batch: Int, channels: Int, spatialCount: Int, momentum: Double
    ) -> (mean: [Double], variance: [Double]) {
        let saved = forward(x: x, batch: batch, channels: channels, spatialCount: spatialCount, eps: 1)
        var mean = runningMean, variance = runningVar
        for c in 0..<channels {
            let instances = (0..<batch).map { $0 * channels + c }
            let batchMean = instances.map { saved.mean[$0] }.reduce(0, +) / Double(batch)
            let batchVar = instances.map { saved.variance[$0] * Double(spatialCount) / Double(spatialCount - 1) }
                .reduce(0, +) / Double(batch)
            mean[c] = (1 - momentum) * runningMean[c] + momentum * batchMean
            variance[c] = (1 - momentum) * runningVar[c] + momentum * batchVar
        }
        return (mean, variance)
    }
}
