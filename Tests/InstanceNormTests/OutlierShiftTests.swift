import InstanceNorm
import TestSupport
import Testing

/// The statistics shift by an instance's first value; when that value lies
/// more than 2σ from the mean, the one-pass variance would lose bits to
/// cancellation and the kernels take a second pass about the mean. First
/// values 3σ to 12σ out (squared: 9 to 144 times σ²) must still give every
/// output within its rounding bound, which assumes the second pass there.
@Suite struct OutlierShift {
    @Test(arguments: [3.0, 6.0, 12.0])
    func firstValueSigmasOut(_ sigmas: Double) {
        check(Float16.self, sigmas)
        check(Float.self, sigmas)
        check(Double.self, sigmas)
    }

    private func check<T: InstanceNormScalar>(_: T.Type, _ sigmas: Double) {
        let dimensions = [2, 2, 1100], count = 1100, eps = 1e-5
        let plain = Inputs<T>(dimensions, affine: true, seed: 61, mean: 3, deviation: 1)
        var x = plain.x
        for instance in 0..<4 {
            // Alternate sides so both signs of μ − K are covered.
            x[instance * count] = T(3 + (instance % 2 == 0 ? sigmas : -sigmas))
        }
        let inputs = Inputs<T>(shape: plain.shape, x: x, dy: plain.dy, gamma: plain.gamma, beta: plain.beta)
        expectWithinErrorBounds(inputs, inputs.run(eps: eps), eps: eps, "\(T.self) first value \(sigmas)σ out")
    }
}

extension Inputs {
    /// Given values, already in T.
    init(shape: InstanceNormShape, x: [T], dy: [T], gamma: [T]?, beta: [T]?) {
        self.shape = shape
        self.x = x
        self.dy = dy
        self.gamma = gamma
        self.beta = beta
    }
}
