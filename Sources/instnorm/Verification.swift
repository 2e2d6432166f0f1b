import DataParallel
import InstanceNorm
import InstanceNormReference
import MPI

/// `bench --verify`: every result of every rank against the exact result,
/// each value within a bound derived from the rounding errors the kernels
/// make (`InstanceNormReference`'s `InstanceCheck`, `GroupRowCheck`,
/// `LayerRowCheck`, `ParameterGradientCheck`), so that an error of a few
/// ulps in any output of any rank fails. Collective: every rank learns the
/// verdict.
///
/// Checked, per row of every rank (an instance, a group, a layer-norm row):
/// the statistics (mean, variance, invstd) against the exact ones; y and dx
/// against the exact results of the kernel's statistics; and per parameter,
/// every rank's own copy of dγ, dβ against the exact sum over the global
/// batch of every sample's share.
struct Verification {
    /// What is checked, in the order of the summary.
    enum Output: Int, CaseIterable {
        case y, dx, dgamma, dbeta, mean, variance, invstd

        var name: String { ["y", "dx", "dgamma", "dbeta", "mean", "variance", "invstd"][rawValue] }
        /// The outputs stored in T, whose bounds are shown in ulps of T.
        static let stored: [Output] = [.y, .dx, .dgamma, .dbeta]
    }

    /// Per output, the largest |computed − exact| / bound over all ranks: ≤ 1 passes.
    let ratios: [Double]
    /// Per stored output, the bound at each rank's largest exact value, in
    /// ulps of T, the largest over ranks: how small an error there would
    /// still be caught.
    let boundUlps: [Double]

    var passed: Bool { ratios.allSatisfy { $0 <= 1 } }

    var summary: String {
        let ratioText = Output.allCases.map { "\($0.name) \(short(ratios[$0.rawValue]))" }.joined(separator: ", ")
        let ulpText = Output.stored.map { "\($0.name) \(short(boundUlps[$0.rawValue]))" }.joined(separator: ", ")
        return "largest error/bound (passes at <= 1): \(ratioText); bound in ulps at each rank's largest value: \(ulpText)"
    }

    init<T: DataParallelScalar>(layer: DataParallelNorm<T>, batch: SyntheticBatch<T>) throws {
        var arithmetic = KernelArithmetic(for: T.self)
        // InstanceNorm sums small instances in blocks; GroupNorm the same
        // way its groups of few values and its small channel segments, up
        // to limits of its own (`SmallGroupLimits`).
        let shape = layer.globalShape
        switch shape.normalization {
        case .instance, .group(shape.dimensions[1]):  // G = C runs InstanceNorm's kernels
            arithmetic.blockedLimit = SmallInstances.limit
            arithmetic.blockedBackwardLimit = SmallInstances.backwardLimit
        case .group:
            arithmetic.blockedLimit = SmallGroupLimits.blockedGroup
            arithmetic.blockedBackwardLimit = SmallGroupLimits.backward
        default:
            break
        }
        var local = Measures()
        if layer.globalShape.normalization == .batch {
            try local.recordBatchNorm(layer: layer, batch: batch, arithmetic: arithmetic)
            try self.init(local, on: layer.communicator)
            return
        }
        let rows = RowValues(layer: layer)
        // (N_local, P, 2) shares of dβ, dγ, each as a Term of its exact value and errors.
        var shares = [ParameterGradientCheck.Term](
            repeating: ParameterGradientCheck.Term(high: 0, low: 0, errors: RoundingErrors()),
            count: 2 * layer.localShape.batch * layer.globalShape.parameterCount)
        var blocks = [Double](repeating: 0, count: shares.count)
        for row in 0..<layer.localShape.rowCount {
            let x = rows.values(of: row, in: batch.x), dy = rows.values(of: row, in: batch.dy)
            let statistics = batch.statistics.elements[row]
            let check = RowCheck(layer: layer, batch: batch, row: row, x: x, dy: dy, statistics: statistics, arithmetic: arithmetic)
            local.record(statistics: check.statisticsErrors)
            let y = rows.values(of: row, in: batch.y), dx = rows.values(of: row, in: batch.dx)
            for position in x.indices {
                local.record(.y, y[position].widened, check.normalized(at: position), arithmetic)
                local.record(.dx, dx[position].widened, check.inputGradient(at: position), arithmetic)
            }
            check.addShares(to: &shares, blocks: &blocks, row: row, layer: layer, arithmetic: arithmetic)
        }
        _ = try local.recordParameterGradients(gathering: shares.flatMap(\.flattened), layer: layer, batch: batch, arithmetic: arithmetic)
        try self.init(local, on: layer.communicator)
    }

    /// The verdict of every rank's measures: the largest of each over ranks.
    init(_ local: Measures, on communicator: Communicator) throws {
        let worst = try communicator.allreduce(local.ratios + local.boundUlps, .max)
        ratios = Array(worst[..<Output.allCases.count])
        boundUlps = Array(worst[Output.allCases.count...])
    }
}

/// The check of one local row of any norm, with the kernel's statistics.
private enum RowCheck {
    case instance(InstanceCheck)
    case group(GroupRowCheck)
    case layer(LayerRowCheck)

    init<T: DataParallelScalar>(
        layer: DataParallelNorm<T>, batch: SyntheticBatch<T>, row: Int, x: [T], dy: [T],
        statistics: InstanceStatistics, arithmetic: KernelArithmetic
    ) {
        let shape = layer.globalShape, (wideX, wideDy) = (x.map(\.widened), dy.map(\.widened))
        let parameters = RowValues(layer: layer).parameters(of: row)
        let gamma = parameters.map { batch.gamma.elements[$0].widened }, beta = parameters.map { batch.beta.elements[$0].widened }
        let (mean, variance, invstd) = (statistics.mean, statistics.variance, statistics.invstd)
        switch shape.normalization {
        case .instance:
            self = .instance(InstanceCheck(
                arithmetic: arithmetic, x: wideX, dy: wideDy, gamma: gamma[0], beta: beta[0], eps: layer.eps,
                mean: mean, variance: variance, invstd: invstd))
        case .group(let groups) where groups == shape.dimensions[1]:
            self = .instance(InstanceCheck(
                arithmetic: arithmetic, x: wideX, dy: wideDy, gamma: gamma[0], beta: beta[0], eps: layer.eps,
                mean: mean, variance: variance, invstd: invstd))
        case .group:
            self = .group(GroupRowCheck(
                arithmetic: arithmetic, x: wideX, dy: wideDy, gamma: gamma, beta: beta, eps: layer.eps,
                mean: mean, variance: variance, invstd: invstd))
        case .batch:
            preconditionFailure("BatchNorm's statistics span the ranks: Measures.recordBatchNorm checks it")
        case .layer:
            self = .layer(LayerRowCheck(
                arithmetic: arithmetic, x: wideX, dy: wideDy, gamma: gamma, beta: beta, eps: layer.eps,
                mean: mean, variance: variance, invstd: invstd))
        }
    }

    var statisticsErrors: (mean: Double, variance: Double, invstd: Double) {
        switch self {
        case .instance(let check): check.statisticsErrors()
        case .group(let check): check.row.statisticsErrors()
        case .layer(let check): check.row.statisticsErrors()
        }
    }

    func normalized(at index: Int) -> (value: Double, bound: Double) {
        switch self {
        case .instance(let check): check.normalized(at: index)
        case .group(let check): check.normalized(at: index)
        case .layer(let check): check.normalized(at: index)
        }
    }

    func inputGradient(at index: Int) -> (value: Double, bound: Double) {
        switch self {
        case .instance(let check): check.inputGradient(at: index)
        case .group(let check): check.inputGradient(at: index)
        case .layer(let check): check.inputGradient(at: index)
        }
    }

    /// Adds this row's contributions to the (N_local, P, 2) shares: an
    /// instance's or a group segment's (s1, s2) as they are; a layer-norm
    /// row's per-position terms into its sample's column sums as the kernel
    /// adds them: into a block partial in the compute precision (`blocks`,
    /// (N_local, P, 2)), which every `layerColumnBlock` rows (and at the
    /// sample's last) is added to the sum in `Double`.
    func addShares(
        to shares: inout [ParameterGradientCheck.Term], blocks: inout [Double], row: Int,
        layer: DataParallelNorm<some DataParallelScalar>, arithmetic: KernelArithmetic
    ) {
        let parameters = layer.globalShape.parameterCount, rowsPerSample = layer.globalShape.rowsPerSample
        let sample = row / rowsPerSample
        switch self {
        case .instance(let check):
            let (dbeta, dgamma) = check.parameterTerms
            let share = sample * parameters + row % rowsPerSample
            (shares[2 * share], shares[2 * share + 1]) = (dbeta, dgamma)
        case .group(let check):
            let first = (row % rowsPerSample) * check.segments.count
            for (index, segment) in check.segments.enumerated() {
                let (dbeta, dgamma) = segment.parameterTerms
                let share = sample * parameters + first + index
                (shares[2 * share], shares[2 * share + 1]) = (dbeta, dgamma)
            }
        case .layer(let check):
            let rowInSample = row % rowsPerSample
            let flushes = rowInSample % layerColumnBlock == layerColumnBlock - 1 || rowInSample == rowsPerSample - 1
            for position in 0..<check.count {
                let (dy, dyXHat, error) = check.columnTerms(at: position)
                let share = sample * parameters + position
                for (index, value, valueError) in [(2 * share, dy, 0.0), (2 * share + 1, dyXHat, error)] {
                    blocks[index] += value
                    shares[index] = shares[index].adding(value, error: valueError, rounding: (arithmetic.compute, blocks[index]))
                    if flushes {
                        shares[index] = shares[index].adding(0, error: 0, rounding: (KernelArithmetic.double, shares[index].value))
                        blocks[index] = 0
                    }
                }
            }
        }
    }
}

extension ParameterGradientCheck.Term {
    /// This term plus `value` (exact, up to `error` of the kernel's own
    /// value), with one rounding of unit `rounding.unit` of the partial sum
    /// the kernel forms there (`rounding.partial`).
    func adding(_ value: Double, error: Double, rounding: (unit: Double, partial: Double)) -> Self {
        var exact = AccurateSum()
        exact.add(high)
        exact.add(low)
        exact.add(value)
        var errors = self.errors
        errors.event(1, error)
        errors.event(rounding.unit, rounding.partial)
        return Self(high: exact.high, low: exact.low, errors: errors)
    }

    /// The exact value, rounded once.
    var value: Double { high + low }
}

/// The values of one row of a tensor, in either layout, in the row's order,
/// and the parameter of each.
struct RowValues<T: DataParallelScalar> {
    let layer: DataParallelNorm<T>

    /// The storage offsets of row `row` of this rank's slice.
    func offsets(of row: Int) -> [Int] {
        let shape = layer.localShape, length = shape.rowLength
        guard let channelShape = shape.channelShape else { return Array(row * length..<(row + 1) * length) }
        let channelsPerRow = length / channelShape.spatialCount
        let sample = row / shape.rowsPerSample, firstChannel = (row % shape.rowsPerSample) * channelsPerRow
        return (0..<length).map { index in
            channelShape.offset(
                sample: sample, channel: firstChannel + index / channelShape.spatialCount,
                position: index % channelShape.spatialCount, in: layer.layout)
        }
    }

    func values(of row: Int, in tensor: TensorBuffer<T>) -> [T] { offsets(of: row).map { tensor.elements[$0] } }

    /// The parameters a row uses: its channel (instance), its channels
    /// (group), every position (layer).
    func parameters(of row: Int) -> [Int] {
        let shape = layer.localShape
        switch shape.normalization {
        case .instance, .batch: return [row % shape.rowsPerSample]
        case .group: let count = shape.rowLength / shape.spatialCount
            return Array((row % shape.rowsPerSample) * count..<(row % shape.rowsPerSample + 1) * count)
        case .layer: return Array(0..<shape.rowLength)
        }
    }
}

/// The largest error/bound ratio per output on this rank (NaN errors count
/// as infinite: `errorRatio`), and the bounds in ulps at the largest values.
struct Measures {
    var ratios = [Double](repeating: 0, count: Verification.Output.allCases.count)
    var boundUlps = [Double](repeating: 0, count: Verification.Output.allCases.count)
    private var largest = [Double](repeating: -1, count: Verification.Output.allCases.count)

    mutating func record(
        _ output: Verification.Output, _ computed: Double, _ exact: (value: Double, bound: Double),
        _ arithmetic: KernelArithmetic
    ) {
        worsen(output, errorRatio(abs(computed - exact.value), exact.bound))
        if abs(exact.value) > largest[output.rawValue] {
            largest[output.rawValue] = abs(exact.value)
            boundUlps[output.rawValue] = exact.bound / arithmetic.storageUlp(exact.value)
        }
    }

    mutating func record(statistics: (mean: Double, variance: Double, invstd: Double)) {
        worsen(.mean, statistics.mean)
        worsen(.variance, statistics.variance)
        worsen(.invstd, statistics.invstd)
    }

    /// `ratio` comes from `errorRatio`, which turns NaN into infinity: here
    /// `max` would drop a NaN.
    private mutating func worsen(_ output: Verification.Output, _ ratio: Double) {
        ratios[output.rawValue] = max(ratios[output.rawValue], ratio)
    }

    /// dγ, dβ: every rank gathers every sample's shares (sample order is
    /// rank order) and checks its own copy of each parameter's sums.
    /// Returns, per parameter, the exact dβ and dγ and their bounds.
    mutating func recordParameterGradients<T: DataParallelScalar>(
        gathering terms: [Double], layer: DataParallelNorm<T>, batch: SyntheticBatch<T>,
        arithmetic: KernelArithmetic
    ) throws -> [(dbeta: (value: Double, bound: Double), dgamma: (value: Double, bound: Double))] {
        let parameters = layer.globalShape.parameterCount, fields = 2 * ParameterGradientCheck.Term.fieldCount
        let sharesByRank = layer.partition.counts.map { $0 * parameters }
        var gathered = [Double](repeating: 0, count: layer.globalShape.batch * parameters * fields)
        try terms.withUnsafeBufferPointer { send in
            try gathered.withUnsafeMutableBufferPointer { receive in
                try layer.communicator.allgatherv(send, into: receive, counts: sharesByRank.map { $0 * fields })
            }
        }
        let order: ParameterGradientCheck.Order = switch layer.reduction {
        case .reproducible: .correctlyRounded
        case .gather: .sampleOrder
        case .allreduce: .ranksThenAllreduce
        }
        return (0..<parameters).map { parameter in
            let checks = [(Verification.Output.dbeta, 0, batch.dbeta), (.dgamma, 1, batch.dgamma)].map { output, part, computed in
                let termsByRank = parameterTerms(gathered, parameter: parameter, part: part, parameters: parameters, sharesByRank)
                let exact = ParameterGradientCheck.check(termsByRank, order: order, arithmetic: arithmetic)
                record(output, computed.elements[parameter].widened, exact, arithmetic)
                return exact
            }
            return (checks[0], checks[1])
        }
    }

    /// Parameter `parameter`'s terms of one kind (0: dβ, 1: dγ), rank by rank, in sample order.
    private func parameterTerms(
        _ gathered: [Double], parameter: Int, part: Int, parameters: Int, _ sharesByRank: [Int]
    ) -> [[ParameterGradientCheck.Term]] {
        let size = ParameterGradientCheck.Term.fieldCount
        var first = 0
        return sharesByRank.map { count in
            defer { first += count }
            return stride(from: first + parameter, to: first + count, by: parameters).map { share in
                let start = (2 * share + part) * size
                return ParameterGradientCheck.Term(flattened: gathered[start..<start + size])
            }
        }
    }
}

extension KernelArithmetic {
    /// The arithmetic of the kernels for storage T.
    init<T: InstanceNormScalar>(for _: T.Type) {
        self.init(storage: T.self, compute: T.Compute.self, lanes: T.Vector.scalarCount, chunk: reductionChunk)
    }
}

/// Three significant digits, for the summary.
private func short(_ value: Double) -> String {
    guard value.isFinite else { return "\(value)" }
    guard value != 0 else { return "0" }
    let digits = max(0, 2 - Int((abs(value)).exponent10))
    return fixed(value, min(digits, 12))
}

extension Double {
    /// ⌊log10 |self|⌋ for finite non-zero values.
    fileprivate var exponent10: Double {
        var exponent = 0.0, magnitude = abs(self)
        while magnitude >= 10 { magnitude /= 10; exponent += 1 }
        while magnitude < 1 { magnitude *= 10; exponent -= 1 }
        return exponent
    }
}

