import InstanceNorm
import MPI

/// A storage precision the layer runs in: `Float16`, `Float` or `Double`.
///
/// No tensor value crosses ranks (only `Double` sums and statistics do), so
/// the storage type needs no MPI datatype; Open MPI 4 has none for half.
public typealias DataParallelScalar = InstanceNormScalar

/// InstanceNorm over a batch split across the ranks of a communicator.
///
/// Each rank holds samples `samples` of the global batch (a `BatchPartition`)
/// and runs the kernels on them. Only two things cross ranks:
///
/// - dγ_c = Σ_n s2(n,c) and dβ_c = Σ_n s1(n,c): the sum over n is exactly the
///   sum over ranks (see `ParameterGradientReduction` for how it is formed);
/// - the running statistics, a mean over the global batch: the per-instance
///   statistics are gathered and summed in sample order on every rank, so
///   every rank ends with the bits one process holding the whole batch gets.
///
/// Every method here is collective where it says so: every rank must call it,
/// also a rank with no samples.
public final class DataParallelInstanceNorm<T: DataParallelScalar> {
    public let communicator: Communicator
    public let globalShape: InstanceNormShape
    /// This rank's slice: (samples.count, C, S…).
    public let localShape: InstanceNormShape
    public let partition: BatchPartition
    /// The global sample indices this rank holds.
    public let samples: Range<Int>
    /// ε > 0, added to the variance.
    public let eps: Double
    /// Worker threads inside this rank.
    public let threads: Int
    /// Hide the allreduce of dγ, dβ behind the dx pass (see `backward`).
    public let overlapsReduction: Bool
    /// How y and dx are written.
    public let stores: StorePolicy
    /// How dγ, dβ are summed across ranks.
    public let reduction: ParameterGradientReduction
    /// How x, y, dy, dx are laid out: (N, C, S…) or (N, S…, C). Either way
    /// a rank's slice is whole samples, contiguous, and the results are the
    /// same bits.
    public let layout: TensorLayout

    /// [dγ_0…dγ_{C−1}, dβ_0…dβ_{C−1}], in `Double`; allocated once, as are
    /// the per-instance sums (s1, s2) of this rank's and of every sample.
    private let parameterGradientSums: TensorBuffer<Double>
    private let localInstanceSums: TensorBuffer<Double>
    private let globalInstanceSums: TensorBuffer<Double>

    /// - Parameters:
    ///   - threads: worker threads inside this rank (the results do not depend on it).
    ///   - overlapsReduction: start the allreduce of dγ, dβ as soon as the
    ///     local sums exist and finish it behind the dx pass (the default);
    ///     false runs it after the backward, blocking.
    ///   - stores: how y and dx are written.
    ///   - reduction: how dγ, dβ are summed across ranks.
    ///   - layout: how the tensors are laid out; `globalShape` is (N, C, S…)
    ///     either way.
    public init(
        communicator: Communicator, globalShape: InstanceNormShape, eps: Double,
        threads: Int = 1, overlapsReduction: Bool = true, stores: StorePolicy = .automatic,
        reduction: ParameterGradientReduction = .reproducible, layout: TensorLayout = .channelsFirst
    ) {
        precondition(eps > 0, "eps must be positive")
        precondition(threads >= 1, "at least one thread")
        self.communicator = communicator
        self.globalShape = globalShape
        self.eps = eps
        self.threads = threads
        self.overlapsReduction = overlapsReduction
        self.stores = stores
        self.reduction = reduction
        self.layout = layout
        partition = BatchPartition(batch: globalShape.batch, ranks: communicator.size)
        samples = partition.samples(of: communicator.rank)
        localShape = globalShape.withBatch(samples.count)
        parameterGradientSums = TensorBuffer(repeating: 0, count: 2 * globalShape.channels)
        let gathers = reduction == .reproducible
        localInstanceSums = TensorBuffer(repeating: 0, count: gathers ? 2 * localShape.instanceCount : 0)
        globalInstanceSums = TensorBuffer(repeating: 0, count: gathers ? 2 * globalShape.instanceCount : 0)
    }

    /// The element range of this rank's slice within a global tensor (of
    /// either layout: both keep a sample's values together).
    public var localElements: Range<Int> {
        let perSample = globalShape.channels * globalShape.spatialCount
        return samples.lowerBound * perSample ..< samples.upperBound * perSample
    }

    /// Training-mode forward of the local slice; not collective.
    public func forward(
        y: UnsafeMutableBufferPointer<T>, statistics: UnsafeMutableBufferPointer<InstanceStatistics>,
        x: UnsafeBufferPointer<T>, gamma: UnsafeBufferPointer<T>?, beta: UnsafeBufferPointer<T>?
    ) {
        BatchKernel.forward(
            y: y, statistics: statistics, x: x, gamma: gamma, beta: beta, shape: localShape, eps: eps, threads: threads, stores: stores,
            layout: layout)
    }

    /// Evaluation-mode forward of the local slice with the running statistics; not collective.
    public func forwardInference(
        y: UnsafeMutableBufferPointer<T>, x: UnsafeBufferPointer<T>,
        runningMean: UnsafeBufferPointer<T>, runningVar: UnsafeBufferPointer<T>,
        gamma: UnsafeBufferPointer<T>?, beta: UnsafeBufferPointer<T>?
    ) {
        BatchKernel.forwardInference(
            y: y, x: x, runningMean: runningMean, runningVar: runningVar,
            gamma: gamma, beta: beta, shape: localShape, eps: eps, threads: threads, stores: stores,
            layout: layout)
    }

    /// Backward: dx of the local slice, and dγ, dβ of the global batch.
    /// Collective (one allgatherv of 2·N·C doubles, or one allreduce of 2·C).
    ///
    /// The collective is hidden: it starts, non-blocking, as soon as this
    /// rank's sums exist, which is before the dx of the last instances of
    /// each thread has been written; one worker polls it with `MPI_Test`
    /// while it writes them (Open MPI here has no progress thread), and the
    /// wait at the end is all that is left exposed.
    ///
    /// - Returns: the seconds from the end of the dx pass to dγ, dβ complete:
    ///   the wait for the collective (with `overlapsReduction` false: the
    ///   whole blocking collective) and, `.reproducible`, the sum in sample
    ///   order. What the reduction adds to the step.
    @discardableResult
    public func backward(
        dx: UnsafeMutableBufferPointer<T>,
        dgamma: UnsafeMutableBufferPointer<T>, dbeta: UnsafeMutableBufferPointer<T>,
        dy: UnsafeBufferPointer<T>, x: UnsafeBufferPointer<T>,
        statistics: UnsafeBufferPointer<InstanceStatistics>, gamma: UnsafeBufferPointer<T>?
    ) throws -> Double {
        let channels = globalShape.channels
        precondition(dgamma.count == channels && dbeta.count == channels)
        let sums = parameterGradientSums.elements
        let collective = OverlappedReduction(start: startReduction)
        BatchKernel.backward(
            dx: dx,
            dgamma: UnsafeMutableBufferPointer(rebasing: sums[0..<channels]),
            dbeta: UnsafeMutableBufferPointer(rebasing: sums[channels..<2 * channels]),
            dy: dy, x: x, statistics: statistics, gamma: gamma, shape: localShape, threads: threads, stores: stores,
            instanceSums: reduction == .reproducible ? localInstanceSums.elements : nil,
            overlap: overlapsReduction ? collective.hooks : nil, layout: layout)
        let waitStart = MPI.wallTime()
        if overlapsReduction { try collective.finish() } else { try startReduction().wait() }
        if reduction == .reproducible { sumGatheredInSampleOrder() }
        let exposed = MPI.wallTime() - waitStart
        for channel in 0..<channels {
            dgamma[channel] = T(sums[channel])
            dbeta[channel] = T(sums[channels + channel])
        }
        return exposed
    }

    /// Starts the collective that completes dγ, dβ across ranks.
    private func startReduction() throws -> Request {
        switch reduction {
        case .allreduce:
            return try communicator.iallreduce(parameterGradientSums.elements, .sum)
        case .reproducible:
            return try communicator.iallgatherv(
                localInstanceSums.readOnly, into: globalInstanceSums.elements,
                counts: partition.counts.map { 2 * $0 * globalShape.channels })
        }
    }

    /// dγ_c = Σ_n s2(n,c), dβ_c = Σ_n s1(n,c) over the gathered sums, added
    /// in sample order: the order one process holding the whole batch uses.
    private func sumGatheredInSampleOrder() {
        let channels = globalShape.channels
        let sums = parameterGradientSums.elements, gathered = globalInstanceSums.elements
        sums.update(repeating: 0)
        for instance in 0..<globalShape.instanceCount {
            sums[channels + instance % channels] += gathered[2 * instance]
            sums[instance % channels] += gathered[2 * instance + 1]
        }
    }

    /// One training step's update of the running statistics (PyTorch's
    /// semantics, see `RunningStatistics`), identical on every rank and equal
    /// to the single-process result bit for bit. Collective (one allgatherv
    /// of 2·N·C doubles). Needs M ≥ 2 and N ≥ 1.
    public func updateRunningStatistics(
        runningMean: UnsafeMutableBufferPointer<T>, runningVar: UnsafeMutableBufferPointer<T>,
        statistics: UnsafeBufferPointer<InstanceStatistics>, momentum: Double
    ) throws {
        let global = try gatherStatistics(statistics)
        let sums = global.withUnsafeBufferPointer {
            RunningStatistics.channelSums($0, channels: globalShape.channels, spatialCount: globalShape.spatialCount)
        }
        RunningStatistics.update(
            runningMean: runningMean, runningVar: runningVar,
            meanSum: sums.meanSum, unbiasedVarianceSum: sums.unbiasedVarianceSum,
            batch: globalShape.batch, momentum: momentum)
    }

    /// Every rank's (mean, variance) per instance, in global instance order.
    private func gatherStatistics(
        _ statistics: UnsafeBufferPointer<InstanceStatistics>
    ) throws -> [InstanceStatistics] {
        precondition(statistics.count == localShape.instanceCount)
        let local = statistics.flatMap { [$0.mean, $0.variance] }
        let counts = partition.counts.map { 2 * $0 * globalShape.channels }
        var gathered = [Double](repeating: 0, count: 2 * globalShape.instanceCount)
        try local.withUnsafeBufferPointer { send in
            try gathered.withUnsafeMutableBufferPointer { receive in
                try communicator.allgatherv(send, into: receive, counts: counts)
            }
        }
        return (0..<globalShape.instanceCount).map { instance in
            InstanceStatistics(mean: gathered[2 * instance], variance: gathered[2 * instance + 1], eps: eps)
        }
    }
}

/// How dγ_c = Σ_n s2(n,c) and dβ_c = Σ_n s1(n,c) are summed across ranks.
///
/// Floating-point addition is not associative, so a sum split differently
/// across ranks ends in different last bits: PyTorch, DDP, Horovod and NCCL
/// all give rank-count-dependent gradients. Here every instance's (s1, s2)
/// is already a per-sample partial sum, computed from that sample's data
/// alone in a fixed order (see `InstanceKernel`), so gathering them and
/// adding them in sample order on every rank reproduces the single-process
/// sum exactly, at the cost of sending 2·N·C doubles instead of 2·C. That
/// costs nothing measurable here (the gather is hidden behind the dx pass
/// like the allreduce was, and the N·C additions are a rounding error of the
/// backward's N·C·M), so it is the default.
public enum ParameterGradientReduction: Sendable, Equatable {
    /// Gather every instance's sums; add them in sample order on every
    /// rank: the same bits for every rank and thread count.
    case reproducible
    /// Each rank sums its own samples; one allreduce of 2·C numbers finishes
    /// them: the last bits depend on the rank count.
    case allreduce
}
