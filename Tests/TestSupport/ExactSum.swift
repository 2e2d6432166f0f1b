/// Σ values, the exact sum rounded once to the nearest double (ties to
/// even): Shewchuk's exact partials ("Adaptive precision floating-point
/// arithmetic", 1997) with the final rounding of Python's `math.fsum`. The
/// partials are a non-overlapping expansion whose sum is exactly the sum of
/// the values, so this is an exact reference made by other means than the
/// integer bins of `ReproducibleSums`. Finite values whose partial sums do
/// not overflow only.
public func correctlyRoundedSum(_ values: [Double]) -> Double {
    var partials: [Double] = []
    for value in values {
        precondition(value.isFinite, "the reference sums finite values only")
        var running = value
        var kept = 0
        for index in partials.indices {
            var small = partials[index]
            if abs(running) < abs(small) { swap(&running, &small) }
            let high = running + small
            let low = small - (high - running)
            if low != 0 {
                partials[kept] = low
                kept += 1
            }
            running = high
        }
        partials.removeSubrange(kept...)
        partials.append(running)
    }
    return roundedSum(ofExpansion: partials)
}

/// The sum of non-overlapping partials (increasing magnitude), rounded once:
/// add from the top until a nonzero remainder appears; if that remainder is
/// exactly half an ulp and the next partial has its sign, the true sum lies
/// beyond the tie, so round away from it.
private func roundedSum(ofExpansion partials: [Double]) -> Double {
    guard var index = partials.indices.last else { return 0 }
    var high = partials[index]
    var low = 0.0
    while index > 0 {
        index -= 1
        let previous = high
        high = previous + partials[index]
        low = partials[index] - (high - previous)
        if low != 0 { break }
    }
    if index > 0 && ((low < 0 && partials[index - 1] < 0) || (low > 0 && partials[index - 1] > 0)) {
        let doubled = low * 2
        let candidate = high + doubled
        if doubled == candidate - high { high = candidate }
    }
    return high
}
