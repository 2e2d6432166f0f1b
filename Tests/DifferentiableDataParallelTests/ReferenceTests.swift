import _Differentiation
import DataParallel
import DifferentiableDataParallel
import InstanceNorm
import MPITestSupport
import TestSupport
import Testing

/// `instanceNorm` and its pullback against the plain double-precision
/// reference, in Float and Double: the forward's y, and dx, dγ, dβ for a
/// random cotangent.
///
/// Tolerances as the kernels' own tests (`Reference.outputTolerance`): 16
/// ulps of the precision for y and dx against the size of the data; dγ, dβ
/// are finished in Double and rounded to T once, so 16 ulps of T against
/// N·M, the size of the sum of their |terms|.
@Suite struct AgainstReference {
    @Test(arguments: [[2, 3, 5], [3, 2, 4, 5], [1, 4, 33]])
    func double(dimensions: [Int]) throws { try check(Double.self, dimensions: dimensions, seed: 51) }

    @Test(arguments: [[2, 3, 5], [3, 2, 4, 5], [1, 4, 33]])
    func float(dimensions: [Int]) throws { try check(Float.self, dimensions: dimensions, seed: 52) }

    private func check<T: DataParallelScalar>(_: T.Type, dimensions: [Int], seed: UInt64) throws {
        let eps = 1e-5, (batch, channels) = (dimensions[0], dimensions[1])
        let positions = dimensions.dropFirst(2).reduce(1, *)
        var generator = SeededGenerator(seed: seed)
        let x: Tensor<T> = randomTensor(dimensions, &generator, mean: 1, deviation: 2)
        let gamma: Tensor<T> = randomTensor([channels], &generator, mean: 1, deviation: 0.5)
        let beta: Tensor<T> = randomTensor([channels], &generator)
        let dy: Tensor<T> = randomTensor(dimensions, &generator)
        let (y, (dx, dgamma, dbeta)) = try SingletonMPI.withWorld { world in
            let layer = try singleRankLayer(T.self, dimensions, world: world, eps: eps)
            let (y, pullback) = valueWithPullback(at: x, gamma, beta) { instanceNorm($0, gamma: $1, beta: $2, layer: layer) }
            return (y, pullback(dy))
        }
        let wide = { (tensor: Tensor<T>) in tensor.scalars.map(\.widened) }
        let forward = Reference.forward(
            x: wide(x), batch: batch, channels: channels, spatialCount: positions, gamma: wide(gamma), beta: wide(beta),
            eps: eps)
        let backward = Reference.backward(
            dy: wide(dy), x: wide(x), batch: batch, channels: channels, spatialCount: positions, gamma: wide(gamma), eps: eps)
        let tolerance = Reference.outputTolerance(storageEpsilon: T.ulpOfOne.widened, computeEpsilon: T.ulpOfOne.widened)
        #expect(y.shape == dimensions && dx.shape == dimensions && dgamma.shape == [channels] && dbeta.shape == [channels])
        #expect(maxScaledError(y.scalars, forward.y, scale: magnitude(forward.y, minimum: 1)) <= tolerance, "y")
        #expect(maxScaledError(dx.scalars, backward.dx, scale: magnitude(backward.dx, minimum: 1e-3)) <= tolerance, "dx")
        let sumScale = Double(batch * positions)
        #expect(maxScaledError(dgamma.scalars, backward.dgamma, scale: sumScale) <= tolerance, "dgamma")
        #expect(maxScaledError(dbeta.scalars, backward.dbeta, scale: sumScale) <= tolerance, "dbeta")
    }
}
