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

/// BatchNorm shifts each channel's sums by one value the whole batch shares,
/// the channel's first value in sample 0 (`BatchNormKernel.shifts`); when
/// that value lies far from the channel's mean, the second pass about the
/// one-pass mean keeps the variance's digits, in both layouts (the
/// per-instance chunks channels first, `ChannelRows` channels last, both
/// summing in the compute precision before widening).
@Suite struct BatchNormOutlierShift {
    /// First values 1000σ out (both signs). A second pass about the shift
    /// itself (the one-pass sums again) put invstd 5 to 15 times past the
    /// statistics' tolerance in Float and Float16, and 90 times in Double.
    @Test(arguments: [TensorLayout.channelsFirst, .channelsLast])
    func firstValueFarFromTheMean(_ layout: TensorLayout) {
        check(Float16.self, layout)
        check(Float.self, layout)
        check(Double.self, layout)
    }

    private func check<T: InstanceNormScalar>(_: T.Type, _ layout: TensorLayout) {
        let dimensions = [2, 3, 1100], positions = 1100
        var inputs = FamilyInputs<T>(.batch, dimensions, seed: 62, mean: 3, deviation: 1, layout: layout)
        for channel in 0..<3 {
            // Channels first here whatever the layout (`FamilyInputs.run` transposes).
            inputs.x[channel * positions] = T(3 + (channel % 2 == 0 ? 1000 : -1000))
        }
        checkFamily(inputs)
    }
}
