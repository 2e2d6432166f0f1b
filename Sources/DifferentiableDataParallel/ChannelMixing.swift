import _Differentiation
import DataParallel
import MPI
import ReproducibleSum

/// A 1×1 convolution without bias: at every position of every sample of
/// this rank's slice, the vector of C_in channel values is multiplied by
/// the (C_out, C_in) matrix `weights`:
///
///     y[n, o, m] = Σ_i weights[o, i] · x[n, i, m]
///
/// - `x`: this rank's slice, (local N, C_in, S…), channels first.
/// - `weights`: shape (C_out, C_in), the same on every rank.
/// - Returns: (local N, C_out, S…).
///
/// Each output sums in `Double` and is rounded once to `Scalar`. The
/// pullback, given this rank's cotangent dy, returns this rank's dx and
/// the gradient of the weights over the *whole batch*,
///
///     dW[o, i] = Σ over every rank's samples n of Σ_m dy[n, o, m] · x[n, i, m],
///
/// the same bits on every rank and at every rank count: each sample's sum
/// over m (in `Double`, in order, from that sample's values alone) is one
/// addend of a `ReproducibleSums`, and one allreduce adds them exactly. So,
/// as with γ in ``instanceNorm(_:gamma:beta:layer:)``, dW is the gradient
/// of the global loss: do not sum it across ranks again.
///
/// Collective: the pullback is (one allreduce of C_out·C_in reproducible
/// sums); the forward is not. Every rank must run its pullback, in the same
/// order relative to the other collective steps, also a rank with no
/// samples. An MPI failure ends the job (exit code 70).
@differentiable(reverse, wrt: (x, weights))
public func mixChannels<Scalar>(
    _ x: Tensor<Scalar>, weights: Tensor<Scalar>, on communicator: Communicator
) -> Tensor<Scalar> {
    ChannelMixing(x: x, weights: weights).output
}

@usableFromInline
@derivative(of: mixChannels, wrt: (x, weights))
func mixChannelsVJP<Scalar>(
    _ x: Tensor<Scalar>, weights: Tensor<Scalar>, on communicator: Communicator
) -> (value: Tensor<Scalar>, pullback: (Tensor<Scalar>) -> (Tensor<Scalar>, Tensor<Scalar>)) {
    let mixing = ChannelMixing(x: x, weights: weights)
    return (mixing.output, { dy in mixing.backward(dy, on: communicator) })
}

/// One channel mixing: its input, its weights and its output.
struct ChannelMixing<Scalar: DataParallelScalar> {
    let x: Tensor<Scalar>
    let weights: Tensor<Scalar>
    let output: Tensor<Scalar>
    private let samples: Int, inputChannels: Int, outputChannels: Int, positions: Int

    init(x: Tensor<Scalar>, weights: Tensor<Scalar>) {
        precondition(x.shape.count >= 2, "x needs shape (N, C, S...), got \(x.shape)")
        precondition(weights.shape.count == 2 && weights.shape[1] == x.shape[1],
                     "weights need shape (C_out, \(x.shape[1])), got \(weights.shape)")
        self.x = x
        self.weights = weights
        samples = x.shape[0]
        inputChannels = x.shape[1]
        outputChannels = weights.shape[0]
        positions = x.shape.dropFirst(2).reduce(1, *)
        let widenedWeights = weights.scalars.map(\.widened)
        output = Tensor(
            shape: [samples, outputChannels] + x.shape.dropFirst(2),
            scalars: Self.multiply(x.scalars, by: widenedWeights, rows: outputChannels, columns: inputChannels,
                                   samples: samples, positions: positions))
    }

    /// (dx, dW) for this rank's `dy`; collective.
    func backward(_ dy: Tensor<Scalar>, on communicator: Communicator) -> (Tensor<Scalar>, Tensor<Scalar>) {
        let dy = dy.materialized(shape: output.shape)
        precondition(dy.shape == output.shape, "dy has shape \(dy.shape), y has \(output.shape)")
        let dx = Self.multiply(dy.scalars, by: transposedWeights, rows: inputChannels, columns: outputChannels,
                               samples: samples, positions: positions)
        let sums = weightGradientAddends(dy)
        collective(on: communicator) { try communicator.allreduce(sums) }
        return (Tensor(shape: x.shape, scalars: dx), Tensor(shape: weights.shape, scalars: sums.sums().map { Scalar($0) }))
    }

    /// Wᵀ, widened: dx[n, i, m] = Σ_o W[o, i] · dy[n, o, m] is the same
    /// product as the forward's with the matrix transposed.
    private var transposedWeights: [Double] {
        (0..<inputChannels * outputChannels).map { index in
            let (row, column) = index.quotientAndRemainder(dividingBy: outputChannels)
            return weights.scalars[column * inputChannels + row].widened
        }
    }

    /// This rank's addends of dW: per sample n and entry (o, i), Σ_m dy[n, o, m] · x[n, i, m].
    private func weightGradientAddends(_ dy: Tensor<Scalar>) -> ReproducibleSums {
        let sums = ReproducibleSums(count: outputChannels * inputChannels)
        for sample in 0..<samples {
            for row in 0..<outputChannels {
                let gradients = (sample * outputChannels + row) * positions
                for column in 0..<inputChannels {
                    let values = (sample * inputChannels + column) * positions
                    var sum = 0.0
                    for position in 0..<positions {
                        sum += dy.scalars[gradients + position].widened * x.scalars[values + position].widened
                    }
                    sums.add(sum, to: row * inputChannels + column)
                }
            }
        }
        return sums
    }

    /// out[n, r, m] = Σ_c matrix[r, c] · values[n, c, m] for a (rows,
    /// columns) matrix, each sum in `Double` in the order of c, rounded once.
    private static func multiply(
        _ values: [Scalar], by matrix: [Double], rows: Int, columns: Int, samples: Int, positions: Int
    ) -> [Scalar] {
        var out = [Scalar](repeating: 0, count: samples * rows * positions)
        var row = [Double](repeating: 0, count: positions)
        for sample in 0..<samples {
            for r in 0..<rows {
                for position in 0..<positions { row[position] = 0 }
                for c in 0..<columns {
                    let weight = matrix[r * columns + c], start = (sample * columns + c) * positions
                    for position in 0..<positions { row[position] += weight * values[start + position].widened }
                }
                let start = (sample * rows + r) * positions
                for position in 0..<positions { out[start + position] = Scalar(row[position]) }
            }
        }
        return out
    }
}
