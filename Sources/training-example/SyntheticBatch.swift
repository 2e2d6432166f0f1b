import DataParallel
import DifferentiableDataParallel

/// This rank's slice of a synthetic batch: inputs, U[−1, 1) values drawn
/// from a generator seeded by the global sample index, so a sample has the
/// same values whichever rank holds it; and targets, what the model makes
/// of them with the teacher's parameters.
struct SyntheticBatch {
    let inputs: Tensor<Double>
    let targets: Tensor<Double>

    /// The batch of `layer`'s rank, its targets normalized by `layer`'s
    /// norm (a collective forward for BatchNorm).
    init(layer: DataParallelNorm<Double>, seed: UInt64) {
        let shape = layer.globalShape
        let perSample = shape.sampleElementCount
        let values = layer.samples.flatMap { sample in
            var random = SplitMix64(seed: seed &+ UInt64(sample))
            return (0..<perSample).map { _ in random.nextSigned() }
        }
        inputs = Tensor(shape: layer.localShape.dimensions, scalars: values)
        let channels = shape.parameterCount
        let teacher = teacherParameters(channels: channels, seed: seed &- 1, spread: 0.5)
        let mixed = mixChannels(inputs, weights: teacher.weights, on: layer.communicator)
        targets = normalize(mixed, gamma: teacher.gamma, beta: teacher.beta, layer: layer)
    }

    /// The same for InstanceNorm, whose forwards run on each sample alone.
    init(layer: DataParallelInstanceNorm<Double>, seed: UInt64) {
        self.init(layer: layer.norm, seed: seed)
    }
}

/// The parameters training starts from: no mixing (W = I), γ = 1, β = 0.
func identityParameters(channels: Int) -> (weights: Tensor<Double>, gamma: Tensor<Double>, beta: Tensor<Double>) {
    let identity = (0..<channels * channels).map { $0 / channels == $0 % channels ? 1.0 : 0.0 }
    return (Tensor(shape: [channels, channels], scalars: identity),
            Tensor(repeating: 1, shape: [channels]), Tensor(repeating: 0, shape: [channels]))
}

/// The parameters that made the targets: the identity parameters, each
/// disturbed by `spread`·U[−1, 1); the same on every rank.
func teacherParameters(
    channels: Int, seed: UInt64, spread: Double
) -> (weights: Tensor<Double>, gamma: Tensor<Double>, beta: Tensor<Double>) {
    var random = SplitMix64(seed: seed)
    func disturbed(_ tensor: Tensor<Double>) -> Tensor<Double> {
        Tensor(shape: tensor.shape, scalars: tensor.scalars.map { $0 + spread * random.nextSigned() })
    }
    let start = identityParameters(channels: channels)
    return (disturbed(start.weights), disturbed(start.gamma), disturbed(start.beta))
}

/// SplitMix64 (Steele, Lea, Flood 2014): a tiny seeded generator whose
/// numbers are the same on every machine and rank.
struct SplitMix64 {
    private var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A value in [−1, 1): the top 53 bits as a fraction, scaled.
    mutating func nextSigned() -> Double {
        Double(next() >> 11) * 0x1p-52 - 1
    }
}
