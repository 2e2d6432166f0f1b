import DataParallel
import InstanceNorm
import InstanceNormReference
import MPI

/// `bench --verify`: the kernels' results against the plain double-precision
/// reference, for a sample of instances on every rank and for the full
/// dγ, dβ of the global batch. Collective: every rank learns the verdict.
///
/// Errors are measured relative to the size of the data, and the tolerance
/// is the one the unit tests justify (`Reference.outputTolerance`): 16 ulps
/// of the compute precision, or for half storage one ulp of half, twice the
/// rounding of the one store that ends each output.
struct Verification {
    /// The largest scaled errors over all ranks.
    let forwardError: Double
    let backwardError: Double
    let parameterError: Double
    let tolerance: Double

    /// Each error compared on its own: `max(_:_:_:)` would drop a NaN.
    var passed: Bool { [forwardError, backwardError, parameterError].allSatisfy { $0 <= tolerance } }

    var summary: String {
        "max scaled error y \(forwardError), dx \(backwardError), dgamma/dbeta \(parameterError) "
            + "(tolerance \(tolerance))"
    }

    init<T: DataParallelScalar>(layer: DataParallelInstanceNorm<T>, batch: SyntheticBatch<T>) throws {
        let shape = layer.globalShape
        let spatialCount = shape.spatialCount
        let instances = layer.localShape.instanceCount
        var local = (forward: 0.0, backward: 0.0)
        var parameterSums = [Double](repeating: 0, count: 2 * shape.channels)
        let offsets = InstanceOffsets(shape: layer.localShape, layout: layer.layout)
        for instance in 0..<instances {
            let channel = instance % shape.channels
            let x = offsets.values(of: instance, in: batch.x).map(\.widened)
            let dy = offsets.values(of: instance, in: batch.dy).map(\.widened)
            let gamma = [batch.gamma.elements[channel].widened], beta = [batch.beta.elements[channel].widened]
            let backward = Reference.backward(
                dy: dy, x: x, batch: 1, channels: 1, spatialCount: spatialCount, gamma: gamma, eps: layer.eps)
            parameterSums[channel] += backward.dgamma[0]
            parameterSums[shape.channels + channel] += backward.dbeta[0]
            // y and dx of three instances per rank: the first, a middle and the last.
            guard [0, instances / 2, instances - 1].contains(instance) else { continue }
            let forward = Reference.forward(
                x: x, batch: 1, channels: 1, spatialCount: spatialCount, gamma: gamma, beta: beta, eps: layer.eps)
            local.forward = max(local.forward, scaledError(offsets.values(of: instance, in: batch.y), forward.y))
            local.backward = max(local.backward, scaledError(offsets.values(of: instance, in: batch.dx), backward.dx))
        }
        let communicator = layer.communicator
        let globalSums = try communicator.allreduce(parameterSums, .sum)
        let computed = (batch.dgamma.array + batch.dbeta.array).map(\.widened)
        // The synthetic dy is bounded by 1 and x̂ by √3, so each sum adds at
        // most N·M terms of size < 2: that bounds its rounding.
        let sumScale = 2 * Double(shape.batch * spatialCount)
        // NaN counts as infinite, as in `scaledError`: `max` would drop it.
        let parameterError = zip(computed, globalSums).map { abs($0 - $1) / (abs($1) + sumScale) }
            .reduce(0.0) { $1.isNaN || $0.isNaN ? .infinity : max($0, $1) }
        let worst = try communicator.allreduce([local.forward, local.backward, parameterError], .max)
        forwardError = worst[0]
        backwardError = worst[1]
        self.parameterError = worst[2]
        tolerance = outputTolerance(T.self)
    }
}

/// `Reference.outputTolerance` for storage T and its compute precision.
func outputTolerance<T: InstanceNormScalar>(_: T.Type) -> Double {
    Reference.outputTolerance(storageEpsilon: T.ulpOfOne.widened, computeEpsilon: T.Compute.ulpOfOne.widened)
}

/// max |actual − expected| / (|expected| + max |expected|), NaN counting as infinite.
func scaledError<T: InstanceNormScalar>(_ actual: [T], _ expected: [Double]) -> Double {
    let scale = expected.reduce(1e-300) { max($0, abs($1)) }
    var worst = 0.0
    for (value, reference) in zip(actual, expected) {
        let error = abs(value.widened - reference) / (abs(reference) + scale)
        if error.isNaN { return .infinity }
        worst = max(worst, error)
    }
    return worst
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
