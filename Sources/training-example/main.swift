// Trains a model data-parallel on a synthetic batch: a per-pixel channel
// mixing (a C×C matrix W at every position), then InstanceNorm with γ, β,
// and the mean squared error against fixed targets, 50 steps of SGD.
//
//     mpirun -np P training-example              # InstanceNorm
//     mpirun -np P training-example --batch-norm # a synchronized BatchNorm
//
// Every rank holds a slice of the batch and a copy of the parameters; rank 0
// prints `step K loss L`, L to 17 significant digits: the same lines at every
// rank count, since every sum across ranks (the loss, dW, dγ, dβ, BatchNorm's
// statistics) is exact. With --batch-norm the layer also keeps its running
// statistics, and a last line `eval loss L` is the loss of the trained model
// in evaluation mode, normalized with them.
#if canImport(Glibc)
import Glibc
#endif
import _Differentiation
import DataParallel
import DifferentiableDataParallel
import InstanceNorm
import MPI

let steps = 50, learningRate = 0.3, seed: UInt64 = 2024
let arguments = Array(CommandLine.arguments.dropFirst())
guard arguments.isEmpty || arguments == ["--batch-norm"] else {
    let usage = "usage: training-example [--batch-norm]\n"
    _ = usage.withCString { write(STDERR_FILENO, $0, strlen($0)) }
    exit(64)
}

try MPI.initialize(threadLevel: .serialized)
let shape = try InstanceNormShape(batch: 5, channels: 4, spatial: [8, 8])  // the global batch
if arguments.isEmpty {
    let layer = DataParallelInstanceNorm<Double>(communicator: .world, globalShape: shape, eps: 1e-5)
    let batch = SyntheticBatch(layer: layer, seed: seed)  // this rank's samples and their targets
    train(on: batch) { instanceNorm($0, gamma: $1, beta: $2, layer: layer) }
} else {
    let layer = DataParallelNorm<Double>(
        communicator: .world, globalShape: try NormShape(.batch, dimensions: shape.dimensions), eps: 1e-5)
    let running = RunningMeanAndVariance<Double>(channels: shape.channels)
    let batch = SyntheticBatch(layer: layer, seed: seed)
    let (weights, gamma, beta) = train(on: batch) { normalize($0, gamma: $1, beta: $2, layer: layer, updating: running) }
    let mixed = mixChannels(batch.inputs, weights: weights, on: .world)
    let y = normalizeForInference(mixed, gamma: gamma, beta: beta, layer: layer, statistics: running)
    let loss = globalSumOfSquares(y - batch.targets, on: .world) / Double(shape.elementCount)
    if layer.communicator.rank == 0 { printLine("eval loss \(significantDigits17(loss))") }
}
try MPI.finalize()

/// 50 steps of SGD from the identity parameters on the loss
/// Σ (norm(mix(x)) − target)² / count, `norm` the layer under training;
/// prints each step's loss on rank 0 and returns the trained parameters.
@discardableResult
func train(
    on batch: SyntheticBatch,
    norm: @escaping @differentiable(reverse) (Tensor<Double>, Tensor<Double>, Tensor<Double>) -> Tensor<Double>
) -> (weights: Tensor<Double>, gamma: Tensor<Double>, beta: Tensor<Double>) {
    var (weights, gamma, beta) = identityParameters(channels: shape.channels)
    for step in 1...steps {
        let (loss, (dW, dgamma, dbeta)) = valueWithGradient(at: weights, gamma, beta) { weights, gamma, beta in
            let mixed = mixChannels(batch.inputs, weights: weights, on: .world)
            let y = norm(mixed, gamma, beta)
            return globalSumOfSquares(y - batch.targets, on: .world) / Double(shape.elementCount)
        }
        // The gradients of the global loss, the same on every rank: no sum here.
        weights -= learningRate * dW
        gamma -= learningRate * dgamma
        beta -= learningRate * dbeta
        if Communicator.world.rank == 0 { printLine("step \(step) loss \(significantDigits17(loss))") }
    }
    return (weights, gamma, beta)
}

/// `value` as printf's `%.17g`: enough digits to tell any two doubles apart.
func significantDigits17(_ value: Double) -> String {
    var text = [CChar](repeating: 0, count: 32)
    _ = withVaList([value]) { vsnprintf(&text, text.count, "%.17g", $0) }
    return String(decoding: text.prefix { $0 != 0 }.map(UInt8.init(bitPattern:)), as: UTF8.self)
}

/// Prints `line` and flushes it: under mpirun stdout is a buffered pipe.
func printLine(_ line: String) {
    print(line)
    fflush(nil)
}
