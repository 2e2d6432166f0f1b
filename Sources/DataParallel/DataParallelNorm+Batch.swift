import InstanceNorm
import MPI
import ReproducibleSum

/// BatchNorm across ranks: the "synchronized" BatchNorm. Each rank sums its
/// own instances (n, c) (`BatchNormKernel`), and the channels' totals over
/// the global batch cross ranks through the layer's `reduction`: in the
/// forward, the statistics' sums about a shift K_c broadcast from the
/// batch's first sample (a second reduction about μ_c for a channel whose
/// K_c lay far from its mean); in the backward, Σ dy and Σ dy·x̂, before dx.
/// With `.reproducible` every output is the same bits at every rank count.
extension DataParallelNorm {
    /// BatchNorm's forward: collective (a broadcast of C shifts and one or
    /// two reductions of 2·C sums), every rank ending with the same C statistics.
    func batchForward(
        y: UnsafeMutableBufferPointer<T>, statistics: UnsafeMutableBufferPointer<InstanceStatistics>,
        x: UnsafeBufferPointer<T>, gamma: UnsafeBufferPointer<T>?, beta: UnsafeBufferPointer<T>?
    ) throws {
        guard globalChannelCount > 0 else {
            // An empty batch, known alike on every rank: no collective, and
            // statistics of no values (PyTorch's batch_norm returns the empty y too).
            statistics.update(repeating: InstanceStatistics(mean: .nan, variance: .nan, invstd: .nan))
            lastForwardCollectiveSeconds = 0
            return
        }
        let channelShape = instanceShape(localShape)
        let collectives = CollectiveClock()
        let shifts = try collectives.time { try sharedShifts(x, channelShape) }
        try BatchNormKernel.forward(
            y: y, statistics: statistics, x: x, gamma: gamma, beta: beta, shape: channelShape, count: globalChannelCount,
            shifts: shifts, eps: eps, threads: threads, stores: stores, layout: layout,
            // The backward's table of shares, free until the backward fills it.
            instanceSums: localParameterSums.elements
        ) { shares in try collectives.time { try reduceShares(shares) } }
        lastForwardCollectiveSeconds = collectives.seconds
    }

    /// BatchNorm's backward: collective (one reduction of 2·C sums before
    /// dx). Returns the seconds spent in it, all exposed.
    func batchBackward(
        dx: UnsafeMutableBufferPointer<T>, dgamma: UnsafeMutableBufferPointer<T>, dbeta: UnsafeMutableBufferPointer<T>,
        dy: UnsafeBufferPointer<T>, x: UnsafeBufferPointer<T>, statistics: UnsafeBufferPointer<InstanceStatistics>,
        gamma: UnsafeBufferPointer<T>?
    ) throws -> Double {
        let channels = globalShape.parameterCount, collectives = CollectiveClock()
        guard globalChannelCount > 0 else {
            // An empty batch: dγ = dβ = 0 (sums over no values), no collective.
            dgamma.update(repeating: 0)
            dbeta.update(repeating: 0)
            return 0
        }
        let totals = UnsafeMutableBufferPointer<Double>.allocate(capacity: 2 * channels)
        defer { totals.deallocate() }
        try BatchNormKernel.backward(
            dx: dx, dgamma: UnsafeMutableBufferPointer(rebasing: totals[0..<channels]),
            dbeta: UnsafeMutableBufferPointer(rebasing: totals[channels...]), dy: dy, x: x, statistics: statistics,
            gamma: gamma, parameterSums: localParameterSums.elements, shape: instanceShape(localShape),
            count: globalChannelCount, threads: threads, stores: stores, layout: layout
        ) { shares in try collectives.time { try reduceShares(shares) } }
        for channel in 0..<channels {
            dgamma[channel] = T(totals[channel])
            dbeta[channel] = T(totals[channels + channel])
        }
        return collectives.seconds
    }

    /// L = N·M, the values of a channel in the whole batch.
    var globalChannelCount: Int { globalShape.batch * globalShape.spatialCount }

    /// Each channel's K, the first value of the channel in the batch's first
    /// sample, which rank 0 holds: broadcast, so that every rank sums about
    /// the same shift whatever the split.
    func sharedShifts(_ x: UnsafeBufferPointer<T>, _ channelShape: InstanceNormShape) throws -> [T.Compute] {
        var shifts = [Double](repeating: 0, count: channelShape.channels)
        if communicator.rank == 0 {
            shifts = BatchNormKernel.shifts(of: x, shape: channelShape, layout: layout).map { $0.widened }
        }
        try shifts.withUnsafeMutableBufferPointer { try communicator.broadcast($0, root: 0) }
        return shifts.map { T.Compute($0) }  // exact: they were compute values
    }

    /// (N_local, P, 2) per-sample shares → (P, 2) totals over the global
    /// batch, the same on every rank, by `reduction`: exact sums rounded
    /// once (the same bits at every rank count), each rank's sums in sample
    /// order then an allreduce, or every share gathered and added in sample order.
    func reduceShares(_ shares: UnsafeBufferPointer<Double>) throws -> [Double] {
        let parameters = globalShape.parameterCount
        switch reduction {
        case .reproducible:
            let sums = ReproducibleSums(count: 2 * parameters)
            sums.add(rows: shares)  // a row per sample: (s1, s2) of each parameter
            try communicator.allreduce(sums)
            return sums.sums()
        case .allreduce:
            var totals = BatchNormKernel.sampleOrderTotals(shares, channels: parameters)
            try totals.withUnsafeMutableBufferPointer { try communicator.allreduce($0, .sum) }
            return totals
        case .gather:
            var gathered = [Double](repeating: 0, count: 2 * globalShape.batch * parameters)
            try gathered.withUnsafeMutableBufferPointer {
                try communicator.allgatherv(shares, into: $0, counts: partition.counts.map { 2 * $0 * parameters })
            }
            return gathered.withUnsafeBufferPointer { BatchNormKernel.sampleOrderTotals($0, channels: parameters) }
        }
    }

    /// PyTorch's BatchNorm update, per channel, from the forward's global
    /// statistics (the same on every rank, so not collective):
    /// running_mean ← (1 − m)·running_mean + m·μ, running_var ← (1 − m)·running_var + m·σ²·L/(L − 1);
    /// unchanged by an empty batch (L = 0).
    func batchRunningStatistics(
        runningMean: UnsafeMutableBufferPointer<T>, runningVar: UnsafeMutableBufferPointer<T>,
        statistics: UnsafeBufferPointer<InstanceStatistics>, momentum: Double
    ) {
        // An empty batch leaves them as they were, as PyTorch's batch_norm does.
        guard globalChannelCount > 0 else { return }
        let count = Double(globalChannelCount)
        precondition(count >= 2, "the unbiased variance needs at least two values per channel")
        for channel in 0..<statistics.count {
            runningMean[channel] = T((1 - momentum) * runningMean[channel].widened + momentum * statistics[channel].mean)
            runningVar[channel] = T(
                (1 - momentum) * runningVar[channel].widened + momentum * statistics[channel].variance * count / (count - 1))
        }
    }
}

/// Adds up the seconds spent in collectives.
final class CollectiveClock {
    private(set) var seconds = 0.0

    func time<Result>(_ body: () throws -> Result) rethrows -> Result {
        let start = MPI.wallTime()
        defer { seconds += MPI.wallTime() - start }
        return try body()
    }
}
