/// SplitMix64: a small, seeded generator so every test input is reproducible.
public struct SeededGenerator: RandomNumberGenerator {
    private var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Approximately normal values (sum of uniforms), scaled and shifted.
    public mutating func normals(_ count: Int, mean: Double = 0, deviation: Double = 1) -> [Double] {
        (0..<count).map { _ in
            let sum = (0..<12).reduce(0.0) { partial, _ in partial + Double.random(in: 0..<1, using: &self) }
            return mean + deviation * (sum - 6)
        }
    }
}

/// The largest |actual − expected| / (|expected| + scale) over the elements:
/// an error relative to each value, floored by `scale` so that values near
/// zero are judged against the size of the data rather than against zero.
public func maxScaledError<T: BinaryFloatingPoint>(_ actual: [T], _ expected: [Double], scale: Double) -> Double {
    precondition(actual.count == expected.count, "compared arrays differ in length")
    var worst = 0.0
    for (value, reference) in zip(actual, expected) {
        let error = abs(Double(value) - reference) / (abs(reference) + scale)
        if error.isNaN { return .infinity }
        worst = max(worst, error)
    }
    return worst
}

/// max |value| of an array, at least `minimum`.
public func magnitude(_ values: [Double], minimum: Double = 0) -> Double {
    values.reduce(minimum) { max($0, abs($1)) }
}
