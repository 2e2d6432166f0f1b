import DataParallel
import InstanceNorm
import InstanceNormReference
import MPI

/// `bench --verify`: every result of every rank against the exact result,
/// each value within a bound derived from the rounding errors the kernels
/// make (`InstanceNormReference.InstanceCheck`, `ParameterGradientCheck`),
/// so that an error of a few ulps in any output of any rank fails.
/// Collective: every rank learns the verdict.
///
/// Checked, per instance of every rank: the statistics (mean, variance,
/// invstd) against the exact ones; y and dx against the exact results of
/// the kernel's statistics; and per channel, every rank's own copy of dγ,
/// dβ against the exact sum over the global batch.
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

    init<T: DataParallelScalar>(layer: DataParallelInstanceNorm<T>, batch: SyntheticBatch<T>) throws {
        let arithmetic = KernelArithmetic(for: T.self)
        var local = Measures()
        var terms: [Double] = []
        let offsets = InstanceOffsets(shape: layer.localShape, layout: layer.layout)
        for instance in 0..<layer.localShape.instanceCount {
            let check = instanceCheck(instance, layer, batch, offsets, arithmetic)
            local.record(statistics: check.statisticsErrors())
            let y = offsets.values(of: instance, in: batch.y), dx = offsets.values(of: instance, in: batch.dx)
            for position in 0..<check.count {
                local.record(.y, y[position].widened, check.normalized(at: position), arithmetic)
                local.record(.dx, dx[position].widened, check.inputGradient(at: position), arithmetic)
            }
            let (dbeta, dgamma) = check.parameterTerms
            terms += dbeta.flattened + dgamma.flattened
        }
        try local.recordParameterGradients(gathering: terms, layer: layer, batch: batch, arithmetic: arithmetic)
        let worst = try layer.communicator.allreduce(local.ratios + local.boundUlps, .max)
        ratios = Array(worst[..<Output.allCases.count])
        boundUlps = Array(worst[Output.allCases.count...])
    }
}

/// The check of one local instance, with the kernel's statistics.
private func instanceCheck<T: DataParallelScalar>(
    _ instance: Int, _ layer: DataParallelInstanceNorm<T>, _ batch: SyntheticBatch<T>,
    _ offsets: InstanceOffsets, _ arithmetic: KernelArithmetic
) -> InstanceCheck {
    let channel = instance % layer.globalShape.channels
    let statistics = batch.statistics.elements[instance]
    return InstanceCheck(
        arithmetic: arithmetic,
        x: offsets.values(of: instance, in: batch.x).map(\.widened),
        dy: offsets.values(of: instance, in: batch.dy).map(\.widened),
        gamma: batch.gamma.elements[channel].widened, beta: batch.beta.elements[channel].widened, eps: layer.eps,
        mean: statistics.mean, variance: statistics.variance, invstd: statistics.invstd)
}

/// The largest error/bound ratio per output on this rank (NaN errors count
/// as infinite: `errorRatio`), and the bounds in ulps at the largest values.
private struct Measures {
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

    /// dγ, dβ: every rank gathers every instance's terms (sample order is
    /// rank order) and checks its own copy of each channel's sums.
    mutating func recordParameterGradients<T: DataParallelScalar>(
        gathering terms: [Double], layer: DataParallelInstanceNorm<T>, batch: SyntheticBatch<T>,
        arithmetic: KernelArithmetic
    ) throws {
        let channels = layer.globalShape.channels, fields = 2 * ParameterGradientCheck.Term.fieldCount
        let instancesByRank = layer.partition.counts.map { $0 * channels }
        var gathered = [Double](repeating: 0, count: layer.globalShape.instanceCount * fields)
        try terms.withUnsafeBufferPointer { send in
            try gathered.withUnsafeMutableBufferPointer { receive in
                try layer.communicator.allgatherv(send, into: receive, counts: instancesByRank.map { $0 * fields })
            }
        }
        let order: ParameterGradientCheck.Order = layer.reduction == .reproducible ? .sampleOrder : .ranksThenAllreduce
        for channel in 0..<channels {
            for (output, part, computed) in [(Verification.Output.dbeta, 0, batch.dbeta), (.dgamma, 1, batch.dgamma)] {
                let termsByRank = channelTerms(gathered, channel: channel, part: part, channels: channels, instancesByRank)
                let exact = ParameterGradientCheck.check(termsByRank, order: order, arithmetic: arithmetic)
                record(output, computed.elements[channel].widened, exact, arithmetic)
            }
        }
    }

    /// Channel `channel`'s terms of one kind (0: dβ, 1: dγ), rank by rank, in sample order.
    private func channelTerms(
        _ gathered: [Double], channel: Int, part: Int, channels: Int, _ instancesByRank: [Int]
    ) -> [[ParameterGradientCheck.Term]] {
        let size = ParameterGradientCheck.Term.fieldCount
        var first = 0
        return instancesByRank.map { count in
            defer { first += count }
            return stride(from: first + channel, to: first + count, by: channels).map { instance in
                let start = (2 * instance + part) * size
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

/// The values of one instance of a tensor in either layout, in order.
struct InstanceOffsets {
    let shape: InstanceNormShape
    let layout: TensorLayout

    func values<T>(of instance: Int, in tensor: TensorBuffer<T>) -> [T] {
        let sample = instance / shape.channels, channel = instance % shape.channels
        return (0..<shape.spatialCount).map {
            tensor.elements[shape.offset(sample: sample, channel: channel, position: $0, in: layout)]
        }
    }
}
