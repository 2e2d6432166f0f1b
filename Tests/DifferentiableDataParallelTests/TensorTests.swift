import _Differentiation
import DataParallel
import DifferentiableDataParallel
import MPITestSupport
import TestSupport
import Testing

/// The tensor's arithmetic, ``Tensor/zero``, and what the functions do
/// with inputs whose results are known in closed form.
@Suite struct TensorArithmetic {
    @Test func zeroIsTheIdentityOfEveryShape() {
        let tensor = Tensor<Double>(shape: [2, 3], scalars: [1, -2, 3, 4.5, 0, -6])
        #expect(tensor + .zero == tensor && .zero + tensor == tensor && tensor - .zero == tensor)
        #expect(.zero - tensor == Tensor(shape: [2, 3], scalars: [-1, 2, -3, -4.5, 0, 6]))
        #expect(tensor - tensor == Tensor(repeating: 0, shape: [2, 3]))
        #expect(2 * tensor == tensor + tensor)
    }

    /// A pullback that no gradient reaches gets `.zero`: it must still give
    /// zeros of the right shapes (and join its collective).
    @Test func pullbacksOfZeroGiveZerosOfTheInputsShapes() throws {
        let dimensions = [2, 3, 4]
        var generator = SeededGenerator(seed: 61)
        let x: Tensor<Double> = randomTensor(dimensions, &generator)
        let gamma = Tensor<Double>(repeating: 1, shape: [3]), beta = Tensor<Double>(repeating: 0, shape: [3])
        let weights: Tensor<Double> = randomTensor([3, 3], &generator)
        let (normGradients, mixingGradients) = try SingletonMPI.withWorld { world in
            let layer = try singleRankLayer(Double.self, dimensions, world: world)
            let norm = valueWithPullback(at: x, gamma, beta) { instanceNorm($0, gamma: $1, beta: $2, layer: layer) }.pullback(.zero)
            let mixing = valueWithPullback(at: x, weights) { mixChannels($0, weights: $1, on: world) }.pullback(.zero)
            return (norm, mixing)
        }
        #expect(normGradients.0 == Tensor(repeating: 0, shape: dimensions))
        #expect(normGradients.1 == Tensor(repeating: 0, shape: [3]) && normGradients.2 == Tensor(repeating: 0, shape: [3]))
        #expect(mixingGradients.0 == Tensor(repeating: 0, shape: dimensions))
        #expect(mixingGradients.1 == Tensor(repeating: 0, shape: [3, 3]))
    }

    /// The identity matrix leaves x as it is; a permutation matrix moves
    /// whole channels: output channel o is input channel σ(o), exactly.
    @Test func channelMixingByIdentityAndPermutation() throws {
        let (samples, channels, positions) = (2, 3, 5)
        var generator = SeededGenerator(seed: 62)
        let x: Tensor<Float> = randomTensor([samples, channels, positions], &generator)
        let permutation = [2, 0, 1]
        let identity = Tensor<Float>(shape: [3, 3], scalars: (0..<9).map { $0 / 3 == $0 % 3 ? 1 : 0 })
        let permuting = Tensor<Float>(shape: [3, 3], scalars: (0..<9).map { permutation[$0 / 3] == $0 % 3 ? 1 : 0 })
        let (unchanged, permuted) = try SingletonMPI.withWorld { world in
            (mixChannels(x, weights: identity, on: world), mixChannels(x, weights: permuting, on: world))
        }
        #expect(unchanged == x)
        let expected = (0..<x.scalars.count).map { index in
            let (sample, rest) = index.quotientAndRemainder(dividingBy: channels * positions)
            let (channel, position) = rest.quotientAndRemainder(dividingBy: positions)
            return x.scalars[(sample * channels + permutation[channel]) * positions + position]
        }
        #expect(permuted.scalars == expected)
    }

    /// Float values square exactly in Double, so the global sum of squares
    /// must be their exact sum rounded once: `correctlyRoundedSum`, an
    /// independent exact summation. The squares span 60 binades, so a
    /// plain Double sum rounds at almost every step and may miss it.
    @Test func globalSumOfSquaresIsTheCorrectlyRoundedSum() throws {
        var generator = SeededGenerator(seed: 63)
        let values = generator.normals(200).enumerated().map { index, value in
            Float(value) * Float(sign: .plus, exponent: (index % 4) * 10 - 20, significand: 1)
        }
        let x = Tensor<Float>(shape: [4, 5, 10], scalars: values)
        let sum = try SingletonMPI.withWorld { world in globalSumOfSquares(x, on: world) }
        #expect(sum == correctlyRoundedSum(values.map { Double($0) * Double($0) }))
    }
}
