import DataParallel
import InstanceNorm

/// This rank's slice of a synthetic training batch, and every buffer one step
/// needs, allocated once.
///
/// Element g of the global x (g counted in logical order: (N, C, S…) for
/// instance and group norm, x's own for layer norm) is a function of
/// (seed, g) alone, so the data do not depend on how the batch is split: x
/// has an offset and scale per parameter (channel, or position in a
/// layer-norm row, modulo 8) so that the statistics differ between rows, dy
/// is uniform in [−1, 1), γ and β vary by parameter.
final class SyntheticBatch<T: DataParallelScalar> {
    let layer: DataParallelNorm<T>
    let x, dy, y, dx: TensorBuffer<T>
    let gamma, beta, dgamma, dbeta: TensorBuffer<T>
    let statistics: TensorBuffer<InstanceStatistics>

    init(layer: DataParallelNorm<T>, seed: UInt64) {
        self.layer = layer
        let shape = layer.globalShape
        let count = layer.localShape.elementCount
        let first = layer.localElements.lowerBound
        x = TensorBuffer(repeating: 0, count: count)
        dy = TensorBuffer(repeating: 0, count: count)
        // Hoisted: both are derived from the shape's dimensions, and this loop runs once per value.
        let parameters = shape.parameterCount, channelShape = layer.localShape.channelShape
        for local in 0..<count {
            // g counts in logical order whatever the layout, so a channels-last
            // run holds the transposed data of a channels-first one.
            let (global, parameter) = Self.logicalIndex(of: local, first: first, channelShape: channelShape, layout: layer.layout, parameters: parameters)
            let feature = Double(shape.normalization == .instance || parameter < 8 ? parameter : parameter % 8)
            x.elements[local] = T(feature - 3 + (1 + feature / 8) * uniform(seed, 0, global))
            dy.elements[local] = T(uniform(seed, 1, global))
        }
        gamma = TensorBuffer((0..<parameters).map { T(1 + 0.5 * uniform(seed, 2, $0)) })
        beta = TensorBuffer((0..<parameters).map { T(0.5 * uniform(seed, 3, $0)) })
        // Written by every iteration; touched now so no page faults are timed.
        y = TensorBuffer(repeating: 0, count: count)
        dx = TensorBuffer(repeating: 0, count: count)
        dgamma = TensorBuffer(repeating: 0, count: parameters)
        dbeta = TensorBuffer(repeating: 0, count: parameters)
        statistics = TensorBuffer(
            repeating: InstanceStatistics(mean: 0, variance: 0, invstd: 0), count: layer.localShape.statisticsCount)
    }

    /// The logical global index of local element `local` and its parameter
    /// (channel, or position in a layer-norm row).
    private static func logicalIndex(
        of local: Int, first: Int, channelShape: InstanceNormShape?, layout: TensorLayout, parameters: Int
    ) -> (global: Int, parameter: Int) {
        guard let channelShape else {
            return (first + local, (first + local) % parameters)
        }
        let (instance, position) = channelShape.instanceAndPosition(ofOffset: local, in: layout)
        return (first + instance * channelShape.spatialCount + position, instance % channelShape.channels)
    }

    /// The forward; collective for BatchNorm.
    func forward() throws {
        try layer.forward(y: y.elements, statistics: statistics.elements, x: x.readOnly, gamma: gamma.readOnly, beta: beta.readOnly)
    }

    /// Makes this rank's results wrong where an `INSTNORM_FAILPOINT`
    /// `corrupt-*` point says so: after the last iteration, before `--verify`.
    func applyCorruptionFailpoints() {
        Failpoint.corruptY.corrupt(y.elements)
        Failpoint.corruptDx.corrupt(dx.elements)
        Failpoint.corruptDgamma.corrupt(dgamma.elements)
        Failpoint.corruptDbeta.corrupt(dbeta.elements)
    }

    /// The backward, collective; returns the seconds of exposed allreduce wait.
    func backward() throws -> Double {
        try layer.backward(
            dx: dx.elements, dgamma: dgamma.elements, dbeta: dbeta.elements,
            dy: dy.readOnly, x: x.readOnly, statistics: statistics.readOnly, gamma: gamma.readOnly)
    }
}

/// A uniform value in [−1, 1) determined by (seed, stream, index): SplitMix64's
/// finalizer over the three, so any element can be made without the others.
func uniform(_ seed: UInt64, _ stream: UInt64, _ index: Int) -> Double {
    var z = seed &* 0x9E37_79B9_7F4A_7C15 &+ stream &* 0xD1B5_4A32_D192_ED03 &+ UInt64(index)
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    z ^= z >> 31
    return Double(z >> 11) * 0x1p-52 - 1
}
