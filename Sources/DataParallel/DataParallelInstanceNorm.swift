import InstanceNorm
import MPI

/// InstanceNorm over a batch split across the ranks of a communicator: a
/// `DataParallelNorm` of `.instance`, with the instance-norm shape.
///
/// Each rank holds samples `samples` of the global batch and runs the
/// kernels on them; dγ, dβ and the running statistics are summed across
/// ranks reproducibly (see `DataParallelNorm`). Every method is collective
/// where it says so: every rank must call it, also a rank with no samples.
public final class DataParallelInstanceNorm<T: DataParallelScalar> {
    /// The general layer this one is.
    public let norm: DataParallelNorm<T>
    /// (N, C, S…) of the whole batch, whatever the layout of the buffers.
    public let globalShape: InstanceNormShape
    /// This rank's slice: (samples.count, C, S…).
    public let localShape: InstanceNormShape

    /// - Parameters:
    ///   - communicator: the ranks that share the batch (every rank calls this with the same shape).
    ///   - globalShape: (N, C, S…) of the whole batch; this rank gets its balanced share of N.
    ///   - eps: ε > 0, added to the variance.
    ///   - threads: worker threads inside this rank (the results do not depend on it).
    ///   - overlapsReduction: hide the reduction of dγ, dβ behind the dx pass (the default).
    ///   - stores: how y and dx are written.
    ///   - reduction: how dγ, dβ are summed across ranks.
    ///   - layout: how the tensors are laid out; `globalShape` is (N, C, S…) either way.
    public init(
        communicator: Communicator, globalShape: InstanceNormShape, eps: Double,
        threads: Int = 1, overlapsReduction: Bool = true, stores: StorePolicy = .automatic,
        reduction: ParameterGradientReduction = .reproducible, layout: TensorLayout = .channelsFirst
    ) {
        norm = DataParallelNorm(
            communicator: communicator, globalShape: try! NormShape(.instance, dimensions: globalShape.dimensions), eps: eps,
            threads: threads, overlapsReduction: overlapsReduction, stores: stores, reduction: reduction, layout: layout)
        self.globalShape = globalShape
        localShape = globalShape.withBatch(norm.samples.count)
    }

    /// The ranks that share the batch.
    public var communicator: Communicator { norm.communicator }
    /// How the batch is split over the ranks.
    public var partition: BatchPartition { norm.partition }
    /// The global sample indices this rank holds.
    public var samples: Range<Int> { norm.samples }
    /// ε > 0, added to the variance.
    public var eps: Double { norm.eps }
    /// Worker threads inside this rank.
    public var threads: Int { norm.threads }
    /// Whether the reduction of dγ, dβ hides behind the dx pass.
    public var overlapsReduction: Bool { norm.overlapsReduction }
    /// How y and dx are written.
    public var stores: StorePolicy { norm.stores }
    /// How dγ, dβ are summed across ranks.
    public var reduction: ParameterGradientReduction { norm.reduction }
    /// How x, y, dy, dx are laid out.
    public var layout: TensorLayout { norm.layout }
    /// The bytes of the dγ, dβ reduction on this rank per backward (see `DataParallelNorm`).
    public var reductionBytes: (sent: Int, received: Int) { norm.reductionBytes }
    /// The element range of this rank's slice within a global tensor.
    public var localElements: Range<Int> { norm.localElements }

    /// Training-mode forward of the local slice; not collective.
    public func forward(
        y: UnsafeMutableBufferPointer<T>, statistics: UnsafeMutableBufferPointer<InstanceStatistics>,
        x: UnsafeBufferPointer<T>, gamma: UnsafeBufferPointer<T>?, beta: UnsafeBufferPointer<T>?
    ) {
        norm.localForward(y: y, statistics: statistics, x: x, gamma: gamma, beta: beta)
    }

    /// Evaluation-mode forward of the local slice with the running statistics; not collective.
    public func forwardInference(
        y: UnsafeMutableBufferPointer<T>, x: UnsafeBufferPointer<T>,
        runningMean: UnsafeBufferPointer<T>, runningVar: UnsafeBufferPointer<T>,
        gamma: UnsafeBufferPointer<T>?, beta: UnsafeBufferPointer<T>?
    ) {
        norm.forwardInference(y: y, x: x, runningMean: runningMean, runningVar: runningVar, gamma: gamma, beta: beta)
    }

    /// Backward: dx of the local slice, and dγ, dβ of the global batch;
    /// collective (see `DataParallelNorm.backward`).
    ///
    /// - Returns: the seconds the reduction adds after the dx pass.
    @discardableResult
    public func backward(
        dx: UnsafeMutableBufferPointer<T>,
        dgamma: UnsafeMutableBufferPointer<T>, dbeta: UnsafeMutableBufferPointer<T>,
        dy: UnsafeBufferPointer<T>, x: UnsafeBufferPointer<T>,
        statistics: UnsafeBufferPointer<InstanceStatistics>, gamma: UnsafeBufferPointer<T>?
    ) throws -> Double {
        try norm.backward(dx: dx, dgamma: dgamma, dbeta: dbeta, dy: dy, x: x, statistics: statistics, gamma: gamma)
    }

    /// One training step's update of the running statistics; collective
    /// (see `DataParallelNorm.updateRunningStatistics`).
    public func updateRunningStatistics(
        runningMean: UnsafeMutableBufferPointer<T>, runningVar: UnsafeMutableBufferPointer<T>,
        statistics: UnsafeBufferPointer<InstanceStatistics>, momentum: Double
    ) throws {
        try norm.updateRunningStatistics(runningMean: runningMean, runningVar: runningVar, statistics: statistics, momentum: momentum)
    }
}
