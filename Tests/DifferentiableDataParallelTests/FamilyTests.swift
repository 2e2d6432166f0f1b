import _Differentiation
import DataParallel
import DifferentiableDataParallel
import InstanceNorm
import MPI
import MPITestSupport
import TestSupport
import Testing

/// One norm on one batch shape, as the family's tests take them.
struct FamilyCase: Sendable, CustomStringConvertible {
    let normalization: Normalization
    let dimensions: [Int]

    var description: String { "\(normalization) \(dimensions)" }

    /// The reference's rows of this case, x in C order (channels first).
    var rows: Reference.Rows {
        let batch = dimensions[0], spatialCount = dimensions.dropFirst(2).reduce(1, *)
        switch normalization {
        case .instance:
            return .group(batch: batch, channels: dimensions[1], spatialCount: spatialCount, groups: dimensions[1])
        case .group(let groups):
            return .group(batch: batch, channels: dimensions[1], spatialCount: spatialCount, groups: groups)
        case .batch:
            return .batch(batch: batch, channels: dimensions[1], spatialCount: spatialCount)
        case .layer(let normalized):
            let rowLength = dimensions.suffix(normalized).reduce(1, *)
            return .layer(rowCount: dimensions.reduce(1, *) / rowLength, rowLength: rowLength)
        }
    }

    /// Every norm, with parameters of more than one dimension (layer norm
    /// over two), a 2-D BatchNorm input and groups of several channels.
    static let all: [FamilyCase] = [
        FamilyCase(normalization: .instance, dimensions: [2, 3, 5]),
        FamilyCase(normalization: .group(groups: 2), dimensions: [2, 4, 5]),
        FamilyCase(normalization: .group(groups: 1), dimensions: [3, 2, 2, 2]),
        FamilyCase(normalization: .layer(normalizedDimensions: 1), dimensions: [2, 3, 4]),
        FamilyCase(normalization: .layer(normalizedDimensions: 2), dimensions: [2, 3, 4]),
        FamilyCase(normalization: .batch, dimensions: [3, 2, 5]),
        FamilyCase(normalization: .batch, dimensions: [6, 3]),
    ]
}

extension FamilyCase {
    /// x ~ N(1, 2²), γ ~ N(1, 0.5²) and β ~ N(0, 1) of this case's shapes.
    func randomInputs<T: DataParallelScalar>(
        _ generator: inout SeededGenerator
    ) throws -> (x: Tensor<T>, gamma: Tensor<T>, beta: Tensor<T>) {
        let parameters = try NormShape(normalization, dimensions: dimensions).parameterDimensions
        return (randomTensor(dimensions, &generator, mean: 1, deviation: 2),
                randomTensor(parameters, &generator, mean: 1, deviation: 0.5), randomTensor(parameters, &generator))
    }
}

/// A family layer on the singleton world: one rank holds the whole batch.
func singleRankNorm<T: DataParallelScalar>(
    _: T.Type, _ familyCase: FamilyCase, world: Communicator, layout: TensorLayout = .channelsFirst, eps: Double = 1e-5
) throws -> DataParallelNorm<T> {
    DataParallelNorm<T>(
        communicator: world, globalShape: try NormShape(familyCase.normalization, dimensions: familyCase.dimensions),
        eps: eps, layout: layout)
}

/// `normalize` over the whole family: its pullback against central
/// differences of its own function, its y against the plain
/// double-precision reference, and channels last against channels first.
@Suite struct Family {
    /// The pullback seeded with w is the gradient of Σ w·y with respect to
    /// x, γ and β; BatchNorm's dx mixes samples, which the differences see.
    @Test(arguments: FamilyCase.all)
    func pullbackAgainstFiniteDifferences(familyCase: FamilyCase) throws {
        var generator = SeededGenerator(seed: 61)
        let (x, gamma, beta): (Tensor<Double>, Tensor<Double>, Tensor<Double>) = try familyCase.randomInputs(&generator)
        let weights: Tensor<Double> = randomTensor(familyCase.dimensions, &generator)
        let (pullback, differences) = try SingletonMPI.withWorld { world in
            let layer = try singleRankNorm(Double.self, familyCase, world: world)
            return pullbackAndDifferences(x: x, gamma: gamma, beta: beta, weights: weights) {
                normalize($0, gamma: $1, beta: $2, layer: layer)
            }
        }
        #expect(pullback.x.shape == x.shape && pullback.gamma.shape == gamma.shape && pullback.beta.shape == beta.shape)
        expectMatchesDifferences(pullback, differences)
    }

    /// y in Float against the reference, within the kernels' own tolerance.
    @Test(arguments: FamilyCase.all)
    func forwardAgainstReference(familyCase: FamilyCase) throws {
        var generator = SeededGenerator(seed: 62)
        let (x, gamma, beta): (Tensor<Float>, Tensor<Float>, Tensor<Float>) = try familyCase.randomInputs(&generator)
        let y = try SingletonMPI.withWorld { world in
            normalize(x, gamma: gamma, beta: beta, layer: try singleRankNorm(Float.self, familyCase, world: world))
        }
        let wide = { (tensor: Tensor<Float>) in tensor.scalars.map(Double.init) }
        let expected = Reference.forward(x: wide(x), rows: familyCase.rows, gamma: wide(gamma), beta: wide(beta), eps: 1e-5).y
        let tolerance = Reference.outputTolerance(storageEpsilon: Double(Float.ulpOfOne), computeEpsilon: Double(Float.ulpOfOne))
        #expect(y.shape == familyCase.dimensions)
        #expect(maxScaledError(y.scalars, expected, scale: magnitude(expected, minimum: 1)) <= tolerance)
    }

    /// Group and batch norm on a channels-last x, whose tensors take the
    /// layout's shape (N, S…, C), give channels first's results transposed:
    /// the same bits for GroupNorm; for BatchNorm, whose channels-last
    /// kernels add a channel's values in row order, the same to rounding
    /// (docs/family.md).
    @Test(arguments: [FamilyCase(normalization: .group(groups: 2), dimensions: [2, 4, 3, 2]),
                      FamilyCase(normalization: .batch, dimensions: [3, 2, 5])])
    func channelsLastIsChannelsFirstTransposed(familyCase: FamilyCase) throws {
        var generator = SeededGenerator(seed: 63)
        let (batch, channels) = (familyCase.dimensions[0], familyCase.dimensions[1])
        let spatial = Array(familyCase.dimensions.dropFirst(2)), spatialCount = spatial.reduce(1, *)
        let x: Tensor<Float> = randomTensor(familyCase.dimensions, &generator, mean: 1, deviation: 2)
        let dy: Tensor<Float> = randomTensor(familyCase.dimensions, &generator)
        let gamma: Tensor<Float> = randomTensor([channels], &generator, mean: 1, deviation: 0.5)
        let beta: Tensor<Float> = randomTensor([channels], &generator)
        let lastShape = [batch] + spatial + [channels]
        func toLast(_ tensor: Tensor<Float>) -> Tensor<Float> {
            Tensor(shape: lastShape, scalars: (0..<tensor.scalars.count).map { index in
                let (sampleOffset, channel) = index.quotientAndRemainder(dividingBy: channels)
                let (sample, position) = sampleOffset.quotientAndRemainder(dividingBy: spatialCount)
                return tensor.scalars[(sample * channels + channel) * spatialCount + position]
            })
        }
        let (first, last) = try SingletonMPI.withWorld { world in
            func run(_ layout: TensorLayout, _ x: Tensor<Float>, _ dy: Tensor<Float>) throws -> [Tensor<Float>] {
                let layer = try singleRankNorm(Float.self, familyCase, world: world, layout: layout)
                let (y, pullback) = valueWithPullback(at: x, gamma, beta) { normalize($0, gamma: $1, beta: $2, layer: layer) }
                let (dx, dgamma, dbeta) = pullback(dy)
                return [y, dx, dgamma, dbeta]
            }
            return (try run(.channelsFirst, x, dy), try run(.channelsLast, toLast(x), toLast(dy)))
        }
        #expect(last[0].shape == lastShape && last[1].shape == lastShape)
        let expected = [toLast(first[0]), toLast(first[1]), first[2], first[3]]
        for (index, name) in ["y", "dx", "dgamma", "dbeta"].enumerated() {
            if familyCase.normalization == .batch {
                // A few ulps of Float against the size of the values; a wrong
                // transposition or channel moves them by O(1).
                let reference = expected[index].scalars.map(Double.init)
                #expect(maxScaledError(last[index].scalars, reference, scale: magnitude(reference, minimum: 1)) <= 1e-5, "\(name)")
            } else {
                #expect(last[index].scalars.map(\.bitPattern) == expected[index].scalars.map(\.bitPattern), "\(name)")
            }
        }
    }
}
