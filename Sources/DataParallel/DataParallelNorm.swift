import Dispatch
import InstanceNorm
import MPI
import ReproducibleSum

/// A storage precision the layer runs in: `Float16`, `Float` or `Double`.
///
/// No tensor value crosses ranks (only `Double` sums and statistics do), so
/// the storage type needs no MPI datatype; Open MPI 4 has none for half.
public typealias DataParallelScalar = InstanceNormScalar

/// A member of the normalization family (`Normalization`: instance, group,
/// layer) over a batch split across the ranks of a communicator.
///
/// Each rank holds samples `samples` of the global batch (a `BatchPartition`)
/// and runs the kernels (`NormKernel`) on them: every row is within one
/// sample, so the forward needs nothing from the other ranks. Only two
/// things cross ranks:
///
/// - dγ_p = Σ_n s2(n,p) and dβ_p = Σ_n s1(n,p), p over the parameters (C
///   channels, or D positions for layer norm): the sum over n is exactly the
///   sum over ranks (see `ParameterGradientReduction` for how it is formed);
/// - for InstanceNorm, the running statistics, a mean over the global batch:
///   every rank adds its instances' statistics to `ReproducibleSums`, and one
///   allreduce of them gives every rank the bits one process holding the
///   whole batch gets.
///
/// Every method here is collective where it says so: every rank must call it,
/// also a rank with no samples.
public final class DataParallelNorm<T: DataParallelScalar> {
    /// The ranks that share the batch; every collective method runs on it.
    public let communicator: Communicator
    /// The norm and the dimensions of the whole batch (logical: (N, C, S…)
    /// for instance and group norm whatever the layout).
    public let globalShape: NormShape
    /// This rank's slice: the same with N = samples.count.
    public let localShape: NormShape
    /// How the batch is split over the ranks.
    public let partition: BatchPartition
    /// The global sample indices this rank holds.
    public let samples: Range<Int>
    /// ε > 0, added to the variance.
    public let eps: Double
    /// Worker threads inside this rank.
    public let threads: Int
    /// Hide the reduction of dγ, dβ behind the dx pass (see `backward`).
    public let overlapsReduction: Bool
    /// How y and dx are written.
    public let stores: StorePolicy
    /// How dγ, dβ are summed across ranks.
    public let reduction: ParameterGradientReduction
    /// How x, y, dy, dx are laid out (instance and group norm may be
    /// channels last; layer norm reads its natural layout). Either way a
    /// rank's slice is whole samples, contiguous, and the results are the
    /// same bits.
    public let layout: TensorLayout

    /// [dγ_0…dγ_{P−1}, dβ_0…dβ_{P−1}], in `Double`; allocated once, as are
    /// the buffers of the reduction: this rank's per-sample parameter sums
    /// (N, P, 2), the exact sums sent by `.reproducible`, every sample's sums
    /// for `.gather`.
    private let parameterGradientSums: TensorBuffer<Double>
    let localParameterSums: TensorBuffer<Double>
    private let exactSums: ReproducibleSums
    /// With `.reproducible`, where the kernels stage and deposit the shares
    /// as they go (`ShareDeposits.applies`): each worker's own exact sums,
    /// merged into `exactSums` when the collective starts.
    private let shareDeposits: ShareDeposits?
    private let workerSums: [ReproducibleSums]
    private let globalParameterSums: TensorBuffer<Double>
    /// The samples whose shares the collective's start deposits (the last
    /// run of `shareChunks`).
    private var pendingShareRows = 0..<0

    /// With `.reproducible`: how many samples the backward takes per kernel
    /// call, their shares of dγ, dβ deposited into the exact sums before
    /// the next call, while they are in cache; nil (the default) decides
    /// (runs of about 4 MiB of shares). The results do not depend on it.
    /// Not used where the kernels stage and deposit the shares themselves
    /// (`ShareDeposits.applies`: InstanceNorm on small instances).
    public var depositRunSamples: Int? {
        didSet { precondition(depositRunSamples.map { $0 > 0 } ?? true, "a run holds at least one sample") }
    }

    /// BatchNorm: the seconds the last forward spent in its collectives
    /// (on its critical path, all exposed); 0 for the other norms.
    public internal(set) var lastForwardCollectiveSeconds = 0.0

    /// - Parameters:
    ///   - communicator: the ranks that share the batch (every rank calls this with the same shape).
    ///   - globalShape: the norm and the dimensions of the whole batch; this rank gets its balanced share of N.
    ///   - eps: ε > 0, added to the variance.
    ///   - threads: worker threads inside this rank (the results do not depend on it).
    ///   - overlapsReduction: start the reduction of dγ, dβ as soon as the
    ///     local sums exist and finish it behind the dx pass (the default);
    ///     false runs it after the backward, blocking.
    ///   - stores: how y and dx are written.
    ///   - reduction: how dγ, dβ are summed across ranks.
    ///   - layout: how the tensors are laid out; `globalShape` is logical either way.
    public init(
        communicator: Communicator, globalShape: NormShape, eps: Double,
        threads: Int = 1, overlapsReduction: Bool = true, stores: StorePolicy = .automatic,
        reduction: ParameterGradientReduction = .reproducible, layout: TensorLayout = .channelsFirst
    ) {
        precondition(eps > 0, "eps must be positive")
        precondition(threads >= 1, "at least one thread")
        if case .layer = globalShape.normalization { precondition(layout == .channelsFirst, "layer norm has one layout") }
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
        let parameters = globalShape.parameterCount
        parameterGradientSums = TensorBuffer(repeating: 0, count: 2 * parameters)
        // Staged deposits need no table of every sample's shares.
        let stagesShares = reduction == .reproducible && ShareDeposits.applies(to: localShape, layout: layout)
        localParameterSums = TensorBuffer(
            repeating: 0,
            count: !stagesShares && Self.keepsShares(reduction, globalShape, threads: threads) ? 2 * localShape.batch * parameters : 0)
        exactSums = ReproducibleSums(count: reduction == .reproducible ? 2 * parameters : 0)
        if stagesShares {
            let sums = (0..<threads).map { _ in ReproducibleSums(count: 2 * parameters) }
            workerSums = sums
            shareDeposits = ShareDeposits(channels: parameters, workers: threads) { worker, table in sums[worker].add(rows: table) }
        } else {
            (workerSums, shareDeposits) = ([], nil)
        }
        globalParameterSums = TensorBuffer(repeating: 0, count: reduction == .gather ? 2 * globalShape.batch * parameters : 0)
    }

    /// Whether this layer keeps each sample's share of dγ, dβ ((N, P, 2),
    /// allocated once): the exact sums and the gather reduce them, BatchNorm
    /// needs them in its statistics, and the kernels that cannot add them
    /// up as they go write them in every mode, to add them in sample order
    /// afterwards (GroupNorm always, InstanceNorm with several threads,
    /// LayerNorm unless one thread takes samples of one row each, which it
    /// adds straight into dγ, dβ), which they would otherwise allocate anew
    /// per call: for a normalized shape of (196, 768), a table four times
    /// the tensor, and a quarter of it for (4096,128,4,4), page-faulted
    /// each step.
    static func keepsShares(_ reduction: ParameterGradientReduction, _ shape: NormShape, threads: Int) -> Bool {
        switch shape.normalization {
        case .group, .batch: true
        case .layer: reduction != .allreduce || threads > 1 || shape.rowsPerSample > 1
        case .instance: reduction != .allreduce || threads > 1
        }
    }

    /// The bytes of the dγ, dβ reduction's collective on this rank per
    /// backward: what it puts in (its own buffer) and what it gets back.
    /// How the MPI library moves them (ring, tree) multiplies both by a
    /// small factor; the point is how they grow with N and P.
    public var reductionBytes: (sent: Int, received: Int) {
        let parameters = globalShape.parameterCount, word = MemoryLayout<Double>.stride
        switch reduction {
        case .reproducible:
            let bytes = 2 * parameters * ReproducibleSums.wordsPerSum * MemoryLayout<Int64>.stride
            return (bytes, bytes)
        case .allreduce: return (2 * parameters * word, 2 * parameters * word)
        case .gather:
            return (2 * localShape.batch * parameters * word, 2 * globalShape.batch * parameters * word)
        }
    }

    /// The element range of this rank's slice within a global tensor (of
    /// either layout: both keep a sample's values together).
    public var localElements: Range<Int> {
        let perSample = globalShape.sampleElementCount
        return samples.lowerBound * perSample ..< samples.upperBound * perSample
    }

    /// The range of this rank's rows within the global saved statistics.
    public var localRows: Range<Int> {
        let perSample = globalShape.rowsPerSample
        return samples.lowerBound * perSample ..< samples.upperBound * perSample
    }

    /// Training-mode forward of the local slice: not collective, but for
    /// BatchNorm, whose statistics are the whole batch's (see
    /// `DataParallelNorm.batchForward`).
    ///
    /// - Parameters:
    ///   - y: output, this rank's slice.
    ///   - statistics: output, `localShape.statisticsCount` rows (BatchNorm: C, the same on every rank).
    ///   - x: this rank's slice.
    ///   - gamma: `globalShape.parameterCount` entries, or nil for γ = 1.
    ///   - beta: `globalShape.parameterCount` entries, or nil for β = 0.
    public func forward(
        y: UnsafeMutableBufferPointer<T>, statistics: UnsafeMutableBufferPointer<InstanceStatistics>,
        x: UnsafeBufferPointer<T>, gamma: UnsafeBufferPointer<T>?, beta: UnsafeBufferPointer<T>?
    ) throws {
        if globalShape.normalization == .batch {
            return try batchForward(y: y, statistics: statistics, x: x, gamma: gamma, beta: beta)
        }
        localForward(y: y, statistics: statistics, x: x, gamma: gamma, beta: beta)
    }

    /// The forward of the norms whose statistics stay on this rank.
    func localForward(
        y: UnsafeMutableBufferPointer<T>, statistics: UnsafeMutableBufferPointer<InstanceStatistics>,
        x: UnsafeBufferPointer<T>, gamma: UnsafeBufferPointer<T>?, beta: UnsafeBufferPointer<T>?
    ) {
        precondition(globalShape.normalization != .batch, "BatchNorm's forward is collective")
        NormKernel.forward(
            y: y, statistics: statistics, x: x, gamma: gamma, beta: beta, shape: localShape, eps: eps, threads: threads, stores: stores,
            layout: layout)
    }

    /// Evaluation-mode forward of the local slice with the running
    /// statistics (InstanceNorm and BatchNorm: PyTorch's GroupNorm and
    /// LayerNorm keep none); not collective.
    public func forwardInference(
        y: UnsafeMutableBufferPointer<T>, x: UnsafeBufferPointer<T>,
        runningMean: UnsafeBufferPointer<T>, runningVar: UnsafeBufferPointer<T>,
        gamma: UnsafeBufferPointer<T>?, beta: UnsafeBufferPointer<T>?
    ) {
        BatchKernel.forwardInference(
            y: y, x: x, runningMean: runningMean, runningVar: runningVar,
            gamma: gamma, beta: beta, shape: instanceShape(localShape), eps: eps, threads: threads, stores: stores,
            layout: layout)
    }

    /// The instance-norm shape of `shape`, for the running statistics,
    /// which only InstanceNorm and BatchNorm have.
    func instanceShape(_ shape: NormShape) -> InstanceNormShape {
        precondition(shape.normalization == .instance || shape.normalization == .batch,
                     "running statistics belong to InstanceNorm and BatchNorm, not to \(shape.normalization)")
        return shape.channelShape!
    }

    /// Backward: dx of the local slice, and dγ, dβ of the global batch.
    /// Collective: one allreduce of 2·P reproducible sums (16·P words), of
    /// 2·P doubles, or one allgatherv of 2·N·P doubles (see `reduction`).
    ///
    /// The collective is hidden: it starts, non-blocking, as soon as this
    /// rank's sums exist, which is before the dx of the last instances of
    /// each thread has been written; one worker polls it with `MPI_Test`
    /// while it writes them (Open MPI here has no progress thread), and the
    /// wait at the end is all that is left exposed.
    ///
    /// - Returns: the seconds from the end of the dx pass to dγ, dβ complete:
    ///   the wait for the collective (with `overlapsReduction` false: the
    ///   whole blocking collective) and what turns its result into dγ, dβ
    ///   (rounding the exact sums, or adding the gathered ones in sample
    ///   order). What the reduction adds to the step.
    @discardableResult
    public func backward(
        dx: UnsafeMutableBufferPointer<T>,
        dgamma: UnsafeMutableBufferPointer<T>, dbeta: UnsafeMutableBufferPointer<T>,
        dy: UnsafeBufferPointer<T>, x: UnsafeBufferPointer<T>,
        statistics: UnsafeBufferPointer<InstanceStatistics>, gamma: UnsafeBufferPointer<T>?
    ) throws -> Double {
        if globalShape.normalization == .batch {
            return try batchBackward(dx: dx, dgamma: dgamma, dbeta: dbeta, dy: dy, x: x, statistics: statistics, gamma: gamma)
        }
        let parameters = globalShape.parameterCount
        precondition(dgamma.count == parameters && dbeta.count == parameters)
        let sums = parameterGradientSums.elements
        let collective = OverlappedReduction(start: startReduction)
        let chunks = shareChunks
        if reduction == .reproducible {
            exactSums.removeAll()
            for sums in workerSums { sums.removeAll() }
        }
        for (index, chunk) in chunks.enumerated() {
            let last = index == chunks.count - 1
            if last { pendingShareRows = chunk }
            kernelBackward(
                samples: chunk, dx: dx, dy: dy, x: x, statistics: statistics, gamma: gamma,
                stores: chunks.count > 1 ? stores.forSlices(of: dx, tensors: 3) : stores,
                overlap: last && overlapsReduction ? collective.hooks : nil)
            // Deposited while the chunk's shares are still in cache.
            if !last { addLocalSums(rows: chunk, to: exactSums) }
        }
        let waitStart = MPI.wallTime()
        if overlapsReduction { try collective.finish() } else { try startReduction().wait() }
        switch reduction {
        case .reproducible:
            for parameter in 0..<parameters {
                sums[parameter] = exactSums.sum(at: 2 * parameter + 1)
                sums[parameters + parameter] = exactSums.sum(at: 2 * parameter)
            }
        case .gather: sumGatheredInSampleOrder()
        case .allreduce: break
        }
        let exposed = MPI.wallTime() - waitStart
        for parameter in 0..<parameters {
            if reduction == .reproducible {
                // Rounded once from the exact sums to T, not through the double.
                dgamma[parameter] = exactSums.sum(at: 2 * parameter + 1, as: T.self)
                dbeta[parameter] = exactSums.sum(at: 2 * parameter, as: T.self)
            } else {
                dgamma[parameter] = T(sums[parameter])
                dbeta[parameter] = T(sums[parameters + parameter])
            }
        }
        return exposed
    }

    /// The kernels' backward over the local samples `samples`: dx, dγ and
    /// dβ of that run into `parameterGradientSums`, its shares into its rows
    /// of `localParameterSums`.
    private func kernelBackward(
        samples: Range<Int>, dx: UnsafeMutableBufferPointer<T>, dy: UnsafeBufferPointer<T>, x: UnsafeBufferPointer<T>,
        statistics: UnsafeBufferPointer<InstanceStatistics>, gamma: UnsafeBufferPointer<T>?, stores: StorePolicy,
        overlap: BackwardOverlap?
    ) {
        let parameters = globalShape.parameterCount, sums = parameterGradientSums.elements
        let elements = localShape.sampleElementCount, rows = localShape.rowsPerSample
        let values = samples.lowerBound * elements..<samples.upperBound * elements
        let shares = shareDeposits == nil && Self.keepsShares(reduction, globalShape, threads: threads)
            ? UnsafeMutableBufferPointer(rebasing: localParameterSums.elements[2 * parameters * samples.lowerBound..<2 * parameters * samples.upperBound])
            : nil
        NormKernel.backward(
            dx: UnsafeMutableBufferPointer(rebasing: dx[values]),
            dgamma: UnsafeMutableBufferPointer(rebasing: sums[0..<parameters]),
            dbeta: UnsafeMutableBufferPointer(rebasing: sums[parameters..<2 * parameters]),
            dy: UnsafeBufferPointer(rebasing: dy[values]), x: UnsafeBufferPointer(rebasing: x[values]),
            statistics: UnsafeBufferPointer(rebasing: statistics[rows * samples.lowerBound..<rows * samples.upperBound]),
            gamma: gamma, shape: localShape.withBatch(samples.count), threads: threads, stores: stores,
            // The exact sums and the gather add up the shares themselves.
            parameterSums: shares, combinesParameterGradients: shareDeposits == nil && (shares == nil || reduction == .allreduce),
            overlap: overlap, layout: layout, deposits: shareDeposits)
    }

    /// The runs of local samples the backward takes one kernel call each.
    /// With the exact sums, a rank's shares ((N, P, 2) doubles) are deposited
    /// run by run, right after the kernel wrote them, from the last-level
    /// cache: deposited at once after the whole backward, a table larger
    /// than the cache went to memory and came back twice (the deposits read
    /// it once for each column's largest addend, once for the digits). One
    /// run otherwise, and when a run would hold too few samples for the
    /// deposits' per-column work to pay (LayerNorm over whole samples,
    /// whose shares are rows of up to millions of columns).
    private var shareChunks: [Range<Int>] {
        let batch = localShape.batch
        let perSample = 2 * globalShape.parameterCount * MemoryLayout<Double>.stride
        let automatic = Self.shareChunkBytes / perSample
        let chunk = depositRunSamples ?? (automatic >= Self.shareChunkMinimumSamples ? automatic : batch)
        guard reduction == .reproducible, shareDeposits == nil, chunk < batch else { return [0..<batch] }
        return stride(from: 0, to: batch, by: chunk).map { $0..<min($0 + chunk, batch) }
    }

    /// The bytes of shares per run of `shareChunks`, an eighth of a 32 MiB
    /// last-level cache. Measured on (8192,256,2,2), one rank, one thread
    /// (backward with exact sums, 3 alternating rounds): unchunked 20.5-21.5
    /// ms, runs of 128 KiB 20.2-20.8, 1 MiB 18.5-19.9, 4 MiB 17.7-18.4.
    static var shareChunkBytes: Int { 4 << 20 }

    /// The fewest samples a run of `shareChunks` may hold.
    static var shareChunkMinimumSamples: Int { 64 }

    /// Starts the collective that completes dγ, dβ across ranks.
    private func startReduction() throws -> Request {
        switch reduction {
        case .allreduce:
            return try communicator.iallreduce(parameterGradientSums.elements, .sum)
        case .reproducible:
            if shareDeposits == nil { addLocalSums(rows: pendingShareRows, to: exactSums) }
            for sums in workerSums { exactSums.add(sums) }
            return try communicator.iallreduce(exactSums)
        case .gather:
            return try communicator.iallgatherv(
                localParameterSums.readOnly, into: globalParameterSums.elements,
                counts: partition.counts.map { 2 * $0 * globalShape.parameterCount })
        }
    }

    /// This rank's addends of dβ_p = Σ_n s1(n,p) (sum 2p) and dγ_p = Σ_n s2(n,p)
    /// (sum 2p + 1): the (N_local, P, 2) shares are a table with a row per
    /// sample. Each worker thread takes a run of parameters: their sums are
    /// disjoint cache lines, and the result does not depend on who adds what.
    private func addLocalSums(rows: Range<Int>, to sums: ReproducibleSums) {
        let parameters = globalShape.parameterCount
        let table = SendablePointer(localParameterSums.elements.baseAddress! + 2 * parameters * rows.lowerBound)
        let size = 2 * parameters * rows.count
        let workers = min(threads, parameters)
        let addRun = { @Sendable (worker: Int) in
            sums.add(rows: UnsafeBufferPointer(start: table.pointer, count: size), columns: 2 * (parameters * worker / workers)..<2 * (parameters * (worker + 1) / workers))
        }
        if workers == 1 { return addRun(0) }
        DispatchQueue.concurrentPerform(iterations: workers, execute: addRun)
    }

    /// dγ_p = Σ_n s2(n,p), dβ_p = Σ_n s1(n,p) over the gathered sums, added
    /// in sample order: the order one process holding the whole batch uses.
    private func sumGatheredInSampleOrder() {
        let parameters = globalShape.parameterCount
        let sums = parameterGradientSums.elements, gathered = globalParameterSums.elements
        sums.update(repeating: 0)
        for share in 0..<globalShape.batch * parameters {
            sums[parameters + share % parameters] += gathered[2 * share]
            sums[share % parameters] += gathered[2 * share + 1]
        }
    }

    /// One training step's update of the running statistics (PyTorch's
    /// semantics, see `RunningStatistics`), identical on every rank and the
    /// same bits at every rank count: Σ_n μ(n,c) and Σ_n σ²(n,c)·M/(M−1) are
    /// reproducible sums. Collective (one allreduce of 2·C reproducible
    /// sums). Needs M ≥ 2 and N ≥ 1.
    public func updateRunningStatistics(
        runningMean: UnsafeMutableBufferPointer<T>, runningVar: UnsafeMutableBufferPointer<T>,
        statistics: UnsafeBufferPointer<InstanceStatistics>, momentum: Double
    ) throws {
        if globalShape.normalization == .batch {
            return batchRunningStatistics(runningMean: runningMean, runningVar: runningVar, statistics: statistics, momentum: momentum)
        }
        let channelShape = instanceShape(globalShape)
        precondition(statistics.count == localShape.rowCount)
        precondition(channelShape.spatialCount >= 2, "the unbiased variance needs at least two values per instance")
        let channels = channelShape.channels
        let besselCorrection = Double(globalShape.spatialCount) / Double(globalShape.spatialCount - 1)
        // A row per sample: (μ, σ²·M/(M − 1)) of each channel, summed into 2c, 2c + 1.
        let table = statistics.flatMap { [$0.mean, $0.variance * besselCorrection] }
        let sums = ReproducibleSums(count: 2 * channels)
        table.withUnsafeBufferPointer { sums.add(rows: $0) }
        try communicator.allreduce(sums)
        RunningStatistics.update(
            runningMean: runningMean, runningVar: runningVar,
            meanSum: (0..<channels).map { sums.sum(at: 2 * $0) },
            unbiasedVarianceSum: (0..<channels).map { sums.sum(at: 2 * $0 + 1) },
            batch: globalShape.batch, momentum: momentum)
    }
}

/// How dγ_c = Σ_n s2(n,c) and dβ_c = Σ_n s1(n,c) are summed across ranks.
///
/// Floating-point addition is not associative, so a sum split differently
/// across ranks ends in different last bits: PyTorch, DDP, Horovod and NCCL
/// all give rank-count-dependent gradients. Every instance's (s1, s2) is a
/// per-sample partial sum, computed from that sample's data alone in a fixed
/// order (see `InstanceKernel`); what differs between the modes is how those
/// N·C addends per parameter are added.
public enum ParameterGradientReduction: String, Sendable, Equatable, CaseIterable {
    /// Each rank adds its instances' sums exactly to `ReproducibleSums`, and
    /// one allreduce of 16·C words combines them: the exact sum rounded once,
    /// the same bits for every rank and thread count, with traffic that
    /// does not grow with the batch. The default.
    case reproducible
    /// Each rank sums its own samples in `Double`; one allreduce of 2·C
    /// doubles finishes them: the last bits depend on the rank count.
    case allreduce
    /// Every rank gathers every instance's sums (2·N·C doubles) and adds
    /// them in sample order: the same bits for every rank count, with
    /// traffic that grows with the global batch. Kept for comparison.
    case gather
}

/// A pointer that may cross into worker closures, which read it only.
struct SendablePointer<Pointee>: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<Pointee>
    init(_ pointer: UnsafeMutablePointer<Pointee>) { self.pointer = pointer }
}
