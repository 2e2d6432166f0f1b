/// (N, C, M) values in C order rearranged as (N, M, C): channels first to
/// channels last, written from the index formulas alone so the tests do
/// not lean on the library's own offset arithmetic.
public func channelsLast<T>(_ values: [T], channels: Int, positions: Int) -> [T] {
    (0..<values.count).map { index in
        let (sample, rest) = index.quotientAndRemainder(dividingBy: channels * positions)
        let (position, channel) = rest.quotientAndRemainder(dividingBy: channels)
        return values[(sample * channels + channel) * positions + position]
    }
}

/// (N, M, C) values in C order rearranged as (N, C, M): the inverse of `channelsLast`.
public func channelsFirst<T>(_ values: [T], channels: Int, positions: Int) -> [T] {
    (0..<values.count).map { index in
        let (instance, position) = index.quotientAndRemainder(dividingBy: positions)
        let (sample, channel) = instance.quotientAndRemainder(dividingBy: channels)
        return values[(sample * positions + position) * channels + channel]
    }
}

/// Each value's sign, exponent and significand bits: equal only if the bits
/// are (so NaN equals NaN, and 0 differs from −0).
public func bitPatterns<T: BinaryFloatingPoint>(_ values: [T]) -> [String] {
    values.map { "\($0.sign) \($0.exponentBitPattern) \($0.significandBitPattern)" }
}
