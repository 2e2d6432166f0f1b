import DataParallel
import InstanceNorm
import InstanceNormReference
import MPI

/// `bench --verify` for BatchNorm, whose statistics and sums span the ranks:
///
/// - each channel's exact mean and variance over the global batch, from
///   every rank's exact sums (`AccurateSum`, gathered), against the kernel's,
///   within the rounding errors of its one-pass lane sums about the shift
///   (`KernelArithmetic.laneSumErrors` per instance, added over the batch);
/// - each instance (n, c) checked as `InstanceCheck` checks an instance,
///   with its channel's statistics: its (s1, s2) are the shares of dβ_c, dγ_c
///   (`ParameterGradientCheck` over the gathered shares), y as an
///   instance's, dx with the channel's sums over the batch and L = N·M.
extension Measures {
    mutating func recordBatchNorm<T: DataParallelScalar>(
        layer: DataParallelNorm<T>, batch: SyntheticBatch<T>, arithmetic: KernelArithmetic
    ) throws {
        let shape = layer.localShape.channelShape!, channels = shape.channels
        let rows = RowValues(layer: layer), count = layer.globalShape.batch * shape.spatialCount
        let checks = (0..<shape.instanceCount).map { instance in
            let channel = instance % channels
            return InstanceCheck(
                arithmetic: arithmetic, x: rows.values(of: instance, in: batch.x).map(\.widened),
                dy: rows.values(of: instance, in: batch.dy).map(\.widened), gamma: batch.gamma.elements[channel].widened,
                beta: batch.beta.elements[channel].widened, eps: layer.eps, mean: batch.statistics.elements[channel].mean,
                variance: batch.statistics.elements[channel].variance, invstd: batch.statistics.elements[channel].invstd)
        }
        try recordChannelStatistics(checks, layer: layer, batch: batch, count: count, arithmetic: arithmetic)
        let shares = checks.flatMap { [$0.parameterTerms.dbeta, $0.parameterTerms.dgamma] }
        let sums = try recordParameterGradients(
            gathering: shares.flatMap(\.flattened), layer: layer, batch: batch, arithmetic: arithmetic)
        for (instance, check) in checks.enumerated() {
            let channel = sums[instance % channels]
            let y = rows.values(of: instance, in: batch.y), dx = rows.values(of: instance, in: batch.dx)
            for position in 0..<check.count {
                record(.y, y[position].widened, check.normalized(at: position), arithmetic)
                record(.dx, dx[position].widened, check.inputGradient(
                    at: position, s1: channel.dbeta.value, s2: channel.dgamma.value, count: count,
                    sumErrors: (channel.dbeta.bound, channel.dgamma.bound)), arithmetic)
            }
        }
    }

    /// Each channel's mean, variance and invstd against the exact ones.
    private mutating func recordChannelStatistics<T: DataParallelScalar>(
        _ checks: [InstanceCheck], layer: DataParallelNorm<T>, batch: SyntheticBatch<T>, count: Int,
        arithmetic: KernelArithmetic
    ) throws {
        let channels = layer.globalShape.parameterCount
        // Exact Σ x per channel, then Σ (x − μ)² about the exact mean.
        let sums = try exactChannelSums(checks, channels: channels, on: layer.communicator) { _, check in
            var sum = AccurateSum()
            for value in check.x { sum.add(value) }
            return sum
        }
        let means = sums.map { $0 / Double(count) }
        // x − μ in Double is exact to first order here (|x − μ| ≪ |x| is
        // where it would not be, and there its error is squared).
        let squares = try exactChannelSums(checks, channels: channels, on: layer.communicator) { instance, check in
            var sum = AccurateSum()
            let mean = means[instance % channels]
            for value in check.x { sum.addProduct(value - mean, value - mean) }
            return sum
        }
        let bounds = try kernelMomentBounds(checks, channels: channels, count: count, means: means, layer: layer, arithmetic: arithmetic)
        for channel in 0..<channels {
            let statistics = batch.statistics.elements[channel]
            let variance = squares[channel] / Double(count), ud = KernelArithmetic.double
            let meanBound = bounds[channel].mean + 4 * ud * abs(means[channel])
            let varianceBound = bounds[channel].variance + 4 * ud * variance + 2 * meanBound * meanBound
            let exactInvstd = 1 / (variance + layer.eps).squareRoot()
            let invstdBound = exactInvstd * (varianceBound / (2 * (variance + layer.eps)) + 7 * ud)
            record(statistics: (
                errorRatio(abs(statistics.mean - means[channel]), meanBound),
                errorRatio(abs(statistics.variance - variance), varianceBound),
                errorRatio(abs(statistics.invstd - exactInvstd), invstdBound)))
        }
    }

    /// Σ over the global batch, per channel, of `sum(check)` of every
    /// instance: each rank's exact partial sums gathered and added exactly.
    private func exactChannelSums(
        _ checks: [InstanceCheck], channels: Int, on communicator: Communicator, _ sum: (Int, InstanceCheck) -> AccurateSum
    ) throws -> [Double] {
        var local = [AccurateSum](repeating: AccurateSum(), count: channels)
        for (instance, check) in checks.enumerated() { local[instance % channels].add(sum(instance, check)) }
        let parts = local.flatMap { [$0.high, $0.low] }
        var gathered = [Double](repeating: 0, count: parts.count * communicator.size)
        try parts.withUnsafeBufferPointer { send in
            try gathered.withUnsafeMutableBufferPointer { receive in
                try communicator.allgatherv(send, into: receive, counts: Array(repeating: parts.count, count: communicator.size))
            }
        }
        return (0..<channels).map { channel in
            var total = AccurateSum()
            for rank in 0..<communicator.size {
                total.add(gathered[rank * parts.count + 2 * channel])
                total.add(gathered[rank * parts.count + 2 * channel + 1])
            }
            return total.value
        }
    }

    /// Bounds on the kernel's |μ̃ − μ| and |σ̃² − σ²| per channel: its lane
    /// sums of x − K and (x − K)² per instance (K the channel's shift, the
    /// batch's first value, or for a second pass the rounded mean: the
    /// larger bound), their errors added over the batch (a sum over ranks),
    /// then μ̃ = K + S/L and σ̃² = Q/L − (S/L)².
    private func kernelMomentBounds<T: DataParallelScalar>(
        _ checks: [InstanceCheck], channels: Int, count: Int, means: [Double], layer: DataParallelNorm<T>,
        arithmetic: KernelArithmetic
    ) throws -> [(mean: Double, variance: Double)] {
        let shifts = try layer.sharedShifts(layer.communicator.rank == 0 ? firstValues(checks, channels) : [], channels: channels)
        var local = [Double](repeating: 0, count: 4 * channels)
        for (instance, check) in checks.enumerated() {
            let channel = instance % channels
            for (slot, shift) in [shifts[channel], arithmetic.roundToCompute(means[channel])].enumerated() {
                let deviation = { (index: Int) in check.x[index] - shift }
                let sum = arithmetic.laneSumErrors(count: check.count, term: deviation, formation: { abs(deviation($0)) })
                let squares = arithmetic.laneSumErrors(
                    count: check.count, term: { deviation($0) * deviation($0) },
                    formation: { 2 * deviation($0) * deviation($0) }, tailProduct: { deviation($0) * deviation($0) })
                local[4 * channel + 2 * slot] += sum.worstCase
                local[4 * channel + 2 * slot + 1] += squares.worstCase
            }
        }
        let errors = try layer.communicator.allreduce(local, .sum)
        return (0..<channels).map { channel in
            let bounds = [0, 1].map { slot -> (mean: Double, variance: Double) in
                let shift = slot == 0 ? shifts[channel] : arithmetic.roundToCompute(means[channel])
                let sumError = errors[4 * channel + 2 * slot] / Double(count) + KernelArithmetic.double * abs(means[channel])
                let shiftedMean = abs(means[channel] - shift)
                // Q's error, S's error times 2|S/L| in (S/L)², and the reduction's
                // roundings of the two totals (one per rank at most).
                let reduction = Double(layer.communicator.size + 2) * KernelArithmetic.double
                let varianceError = errors[4 * channel + 2 * slot + 1] / Double(count) + 2 * shiftedMean * sumError
                    + sumError * sumError + reduction * (shiftedMean * shiftedMean * 3 + abs(means[channel]))
                return (sumError + reduction * shiftedMean, varianceError)
            }
            return (max(bounds[0].mean, bounds[1].mean), max(bounds[0].variance, bounds[1].variance))
        }
    }

    /// Each channel's first value on this rank (rank 0 holds the batch's first sample).
    private func firstValues(_ checks: [InstanceCheck], _ channels: Int) -> [Double] {
        (0..<channels).map { checks[$0].x[0] }
    }
}

extension DataParallelNorm {
    /// The channels' shifts K as the forward broadcasts them: `values` (C
    /// doubles on rank 0, ignored elsewhere) from rank 0 to every rank.
    fileprivate func sharedShifts(_ values: [Double], channels: Int) throws -> [Double] {
        var shifts = communicator.rank == 0 ? values : [Double](repeating: 0, count: channels)
        try shifts.withUnsafeMutableBufferPointer { try communicator.broadcast($0, root: 0) }
        return shifts
    }
}
