/// Forward and backward over a batch (N, C, S1…Sk) held by one process.
///
/// Instances are visited in order i = n·C + c. The backward runs both of its
/// passes on one instance before the next, so the second pass reads x and dy
/// from cache. Buffers are laid out as the shape says:
/// x, y, dy, dx are (N, C, S…); statistics is (N, C); γ, β, dγ, dβ are (C,).
public enum BatchKernel {
    /// Training-mode forward: each instance normalized with its own statistics.
    ///
    /// - Parameters:
    ///   - y: (N, C, S…) output.
    ///   - statistics: (N, C) output: mean, biased variance, invstd per instance.
    ///   - x: (N, C, S…) input.
    ///   - gamma, beta: (C,) affine parameters, or nil for γ = 1, β = 0.
    ///   - eps: ε > 0, added to the variance.
    @inlinable
    public static func forward<T: InstanceNormScalar>(
        y: UnsafeMutableBufferPointer<T>,
        statistics: UnsafeMutableBufferPointer<InstanceStatistics>,
        x: UnsafeBufferPointer<T>,
        gamma: UnsafeBufferPointer<T>?, beta: UnsafeBufferPointer<T>?,
        shape: InstanceNormShape, eps: Double
    ) {
        checkCounts(shape, x.count, y.count, statistics.count, gamma, beta)
        let spatialCount = shape.spatialCount
        for instance in 0..<shape.instanceCount {
            let values = slice(x, instance, spatialCount)
            let moments = InstanceKernel.moments(of: values)
            let instanceStatistics = InstanceStatistics(mean: moments.mean, variance: moments.variance, eps: eps)
            statistics[instance] = instanceStatistics
            let (scale, shift) = affine(gamma, beta, channel: instance % shape.channels)
            InstanceKernel.normalize(
                slice(y, instance, spatialCount), values,
                statistics: instanceStatistics, gamma: scale, beta: shift)
        }
    }

    /// Evaluation-mode forward: every instance of channel c normalized with the
    /// running mean and variance of c, y = γ·(x − running_mean)/sqrt(running_var + ε) + β.
    @inlinable
    public static func forwardInference<T: InstanceNormScalar>(
        y: UnsafeMutableBufferPointer<T>,
        x: UnsafeBufferPointer<T>,
        runningMean: UnsafeBufferPointer<T>, runningVar: UnsafeBufferPointer<T>,
        gamma: UnsafeBufferPointer<T>?, beta: UnsafeBufferPointer<T>?,
        shape: InstanceNormShape, eps: Double
    ) {
        checkCounts(shape, x.count, y.count, shape.instanceCount, gamma, beta)
        precondition(runningMean.count == shape.channels && runningVar.count == shape.channels)
        let spatialCount = shape.spatialCount
        for instance in 0..<shape.instanceCount {
            let channel = instance % shape.channels
            let statistics = InstanceStatistics(
                mean: runningMean[channel].widened, variance: runningVar[channel].widened, eps: eps)
            let (scale, shift) = affine(gamma, beta, channel: channel)
            InstanceKernel.normalize(
                slice(y, instance, spatialCount), slice(x, instance, spatialCount),
                statistics: statistics, gamma: scale, beta: shift)
        }
    }

    /// Backward of the training-mode forward.
    ///
    /// dγ_c and dβ_c receive this batch's Σ_n s2(n,c) and Σ_n s1(n,c), summed
    /// in `Double` in sample order; across ranks they are partial sums that
    /// one allreduce finishes.
    ///
    /// - Parameters:
    ///   - dx: (N, C, S…) output.
    ///   - dgamma, dbeta: (C,) outputs, overwritten.
    ///   - dy, x: (N, C, S…) inputs; statistics: (N, C) from `forward`.
    ///   - gamma: (C,) or nil for γ = 1.
    @inlinable
    public static func backward<T: InstanceNormScalar>(
        dx: UnsafeMutableBufferPointer<T>,
        dgamma: UnsafeMutableBufferPointer<Double>, dbeta: UnsafeMutableBufferPointer<Double>,
        dy: UnsafeBufferPointer<T>, x: UnsafeBufferPointer<T>,
        statistics: UnsafeBufferPointer<InstanceStatistics>,
        gamma: UnsafeBufferPointer<T>?,
        shape: InstanceNormShape
    ) {
        checkCounts(shape, x.count, dx.count, statistics.count, gamma, nil)
        precondition(dy.count == x.count, "dy and x differ in size")
        precondition(dgamma.count == shape.channels && dbeta.count == shape.channels)
        let spatialCount = shape.spatialCount
        dgamma.update(repeating: 0)
        dbeta.update(repeating: 0)
        for instance in 0..<shape.instanceCount {
            let channel = instance % shape.channels
            let values = slice(x, instance, spatialCount)
            let gradients = slice(dy, instance, spatialCount)
            let sums = InstanceKernel.gradientSums(dy: gradients, x: values, statistics: statistics[instance])
            dbeta[channel] += sums.sumDy
            dgamma[channel] += sums.sumDyXHat
            InstanceKernel.inputGradient(
                slice(dx, instance, spatialCount), dy: gradients, x: values,
                statistics: statistics[instance], gamma: affine(gamma, nil, channel: channel).gamma,
                sumDy: sums.sumDy, sumDyXHat: sums.sumDyXHat)
        }
    }

    @inlinable
    static func affine<T: InstanceNormScalar>(
        _ gamma: UnsafeBufferPointer<T>?, _ beta: UnsafeBufferPointer<T>?, channel: Int
    ) -> (gamma: Double, beta: Double) {
        (gamma.map { $0[channel].widened } ?? 1, beta.map { $0[channel].widened } ?? 0)
    }

    @inlinable
    static func slice<T>(_ buffer: UnsafeBufferPointer<T>, _ instance: Int, _ spatialCount: Int) -> UnsafeBufferPointer<T> {
        UnsafeBufferPointer(rebasing: buffer[instance * spatialCount ..< (instance + 1) * spatialCount])
    }

    @inlinable
    static func slice<T>(
        _ buffer: UnsafeMutableBufferPointer<T>, _ instance: Int, _ spatialCount: Int
    ) -> UnsafeMutableBufferPointer<T> {
        UnsafeMutableBufferPointer(rebasing: buffer[instance * spatialCount ..< (instance + 1) * spatialCount])
    }

    /// Sizes are the caller's contract, not user input: a mismatch is a bug.
    @inlinable
    static func checkCounts<T>(
        _ shape: InstanceNormShape, _ input: Int, _ output: Int, _ perInstance: Int,
        _ gamma: UnsafeBufferPointer<T>?, _ beta: UnsafeBufferPointer<T>?
    ) {
        precondition(input == shape.elementCount && output == shape.elementCount,
                     "tensor sizes \(input), \(output) do not match \(shape)")
        precondition(perInstance == shape.instanceCount, "per-instance buffer does not hold N·C entries")
        precondition(gamma.map { $0.count == shape.channels } ?? true, "gamma does not hold C entries")
        precondition(beta.map { $0.count == shape.channels } ?? true, "beta does not hold C entries")
    }
}
