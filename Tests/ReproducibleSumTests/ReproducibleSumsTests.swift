import ReproducibleSum
import Testing
import TestSupport

/// The reproducible sum against an exact reference (Shewchuk's partials,
/// `correctlyRoundedSum`) and closed forms, and its independence of the
/// order and grouping of the addends.
struct ReproducibleSumsTests {
    /// One sum of `values`, added one by one.
    func sum(_ values: [Double]) -> Double {
        let sums = ReproducibleSums(count: 1)
        for value in values { sums.add(value, to: 0) }
        return sums.sum(at: 0)
    }

    /// Values of random sign spanning `binades` binades around 1, each with
    /// a full 53-bit significand.
    func spread(_ count: Int, binades: Int, seed: UInt64) -> [Double] {
        var generator = SeededGenerator(seed: seed)
        return (0..<count).map { _ in
            let significand = Double.random(in: 1..<2, using: &generator)
            let exponent = Int.random(in: -binades / 2...binades / 2, using: &generator)
            return (Bool.random(using: &generator) ? 1 : -1) * Double(sign: .plus, exponent: exponent, significand: significand)
        }
    }

    @Test(arguments: [(1, 0), (7, 4), (1000, 60), (1000, 130), (5000, 20)])
    func correctlyRoundedAgainstTheExactSum(count: Int, binades: Int) {
        for seed in 1...20 as ClosedRange<UInt64> {
            let values = spread(count, binades: binades, seed: seed)
            let expected = correctlyRoundedSum(values)
            #expect(sum(values).bitPattern == expected.bitPattern, "seed \(seed): \(sum(values)) vs \(expected)")
        }
    }

    /// Sums that cancel to a small remainder lose no digit: plain
    /// summation in any order gets most of these wrong.
    @Test func cancellationKeepsEveryDigit() {
        for seed in 1...20 as ClosedRange<UInt64> {
            var values = spread(500, binades: 100, seed: seed)
            values += values.map { -$0 }
            let remainder = Double(seed) * 0x1p-70
            values.append(remainder)
            var generator = SeededGenerator(seed: seed)
            values.shuffle(using: &generator)
            #expect(sum(values) == remainder)
            #expect(sum(values.dropLast().map { $0 }) == correctlyRoundedSum(Array(values.dropLast())))
        }
    }

    /// Ties round to even; anything past the tie, however small and
    /// wherever it sits among the addends, rounds away from it.
    @Test func tiesRoundToEvenAndTheStickyBitCounts() {
        let halfUlp = 0x1p-53
        #expect(sum([1, halfUlp]) == 1)
        #expect(sum([1 + 2 * halfUlp, halfUlp]) == 1 + 4 * halfUlp)
        #expect(sum([0x1p-120, 1, halfUlp]) == 1 + 2 * halfUlp)
        #expect(sum([1, halfUlp, -0x1p-120]) == 1)
        #expect(sum([-1, -halfUlp, -0x1p-120]) == -(1 + 2 * halfUlp))
        #expect(sum([0x1p-1074, 0x1p-1074, 0x1p-1074]) == 3 * .leastNonzeroMagnitude)
    }

    /// The rounding finds the leading bit, the round bit and the sticky bits
    /// wherever they fall among the 64-bit words of the window: a leading
    /// bit at every offset within a word (2^e over 70 binades), a tie or a
    /// near-tie, and a sticky term from 1 to 105 bits below the round bit
    /// (at most 159 below the leading bit: every bit the window keeps), of
    /// either sign, against the exact sum.
    @Test func roundingAtEveryBitOffsetOfTheWindow() {
        for exponent in -35...35 {
            let leading = Double(sign: .plus, exponent: exponent, significand: 1.5)
            let halfUlp = Double(sign: .plus, exponent: exponent - 53, significand: 1)
            for below in [1, 7, 11, 31, 32, 33, 63, 64, 65, 100, 105] {
                let sticky = Double(sign: .plus, exponent: exponent - 53 - below, significand: 1)
                for values in [[leading, halfUlp, sticky], [leading, halfUlp, -sticky], [-leading, -halfUlp, sticky],
                               [leading, 3 * halfUlp, -sticky], [leading + 2 * halfUlp, halfUlp], [leading, sticky]] {
                    #expect(sum(values).bitPattern == correctlyRoundedSum(values).bitPattern,
                            "2^\(exponent) with a sticky bit \(below) below: \(values)")
                }
            }
        }
    }

    /// Near the bottom of the exponent range the window reaches below
    /// 2^-1074 and is shifted before rounding: sums there, from a few
    /// subnormal units up to 2^-900, against the exact sum.
    @Test func roundingWhereTheWindowReachesBelowTheSmallestSubnormal() {
        let unit = Double.leastNonzeroMagnitude
        for exponent in stride(from: -1073, through: -900, by: 3) {
            let leading = Double(sign: .plus, exponent: exponent, significand: 1.75)
            for values in [[leading, 3 * unit], [leading, -unit], [-leading, 5 * unit, unit], [leading, leading / 3, unit]] {
                #expect(sum(values).bitPattern == correctlyRoundedSum(values).bitPattern, "2^\(exponent): \(values)")
            }
        }
    }

    /// The same words, so the same result, for every order and grouping:
    /// addends dealt to parts in many ways, each part summed alone, then
    /// merged in shuffled order (what ranks and a reduction tree do).
    /// Two sets: 150 binades, where the parts' top bins differ by a few and
    /// every merge must align them; and the same with 1e300 − 1e300 and
    /// subnormals, where most bits fall below the window.
    @Test(arguments: [false, true])
    func wordsDoNotDependOnOrderOrGrouping(extremes: Bool) {
        let values = spread(2000, binades: 150, seed: 7)
            + (extremes ? [1e300, -1e300, 0x1p-1070, .leastNonzeroMagnitude, 0, -0.0] : [0, -0.0])
        let whole = ReproducibleSums(count: 1)
        for value in values { whole.add(value, to: 0) }
        var generator = SeededGenerator(seed: 11)
        for parts in [1, 2, 3, 8, 64] {
            var shuffled = values
            shuffled.shuffle(using: &generator)
            let partial = (0..<parts).map { _ in ReproducibleSums(count: 1) }
            for (index, value) in shuffled.enumerated() { partial[(index * 7) % parts].add(value, to: 0) }
            let merged = ReproducibleSums(count: 1)
            for part in partial.shuffled(using: &generator) { merged.add(part) }
            #expect(Array(merged.words) == Array(whole.words), "\(parts) parts")
            #expect(merged.addendCount(at: 0) == values.count)
        }
    }

    /// Parts whose top bins differ by one to four bins (each part's values
    /// 40 binades above the last's), merged in rising, falling and shuffled
    /// order: every merge must shift one side's limbs, in either direction.
    @Test func mergesAlignPartsWithDifferentTopBins() {
        let parts = (0..<5).map { part in
            spread(30, binades: 20, seed: 40 + UInt64(part)).map { $0 * Double(sign: .plus, exponent: 40 * part - 80, significand: 1) }
        }
        let whole = ReproducibleSums(count: 1)
        for value in parts.joined() { whole.add(value, to: 0) }
        let partial = parts.map { values in
            let sums = ReproducibleSums(count: 1)
            for value in values { sums.add(value, to: 0) }
            return sums
        }
        var generator = SeededGenerator(seed: 3)
        for order in [Array(partial.indices), partial.indices.reversed(), partial.indices.shuffled(using: &generator)] {
            let merged = ReproducibleSums(count: 1)
            for index in order { merged.add(partial[index]) }
            #expect(Array(merged.words) == Array(whole.words), "merged in order \(order)")
        }
        #expect(whole.sum(at: 0) == correctlyRoundedSum(Array(parts.joined())))
    }

    @Test func nonFiniteAddendsFollowFloatingPointAddition() {
        #expect(sum([1, .infinity, 2]) == .infinity)
        #expect(sum([-.infinity, 1e308, 1e308]) == -.infinity)
        #expect(sum([.infinity, -.infinity]).isNaN)
        #expect(sum([1, .nan]).isNaN)
        #expect(sum([.infinity, .nan]).isNaN)
        // Finite addends whose exact sum exceeds the largest double.
        #expect(sum([.greatestFiniteMagnitude, .greatestFiniteMagnitude]) == .infinity)
        #expect(sum([-.greatestFiniteMagnitude, -.greatestFiniteMagnitude]) == -.infinity)
        #expect(sum([.greatestFiniteMagnitude, .greatestFiniteMagnitude, -.greatestFiniteMagnitude]) == .greatestFiniteMagnitude)
        // Rounding up from the largest double, a tie to even (its significand is odd): past it.
        let halfUlp = Double.greatestFiniteMagnitude.ulp / 2
        #expect(sum([.greatestFiniteMagnitude, halfUlp]) == .infinity)
        #expect(sum([-.greatestFiniteMagnitude, -halfUlp, -0x1p900]) == -.infinity)
        #expect(sum([.greatestFiniteMagnitude, halfUlp, -0x1p900]) == .greatestFiniteMagnitude)
    }

    @Test func emptyZeroAndSubnormalSums() {
        #expect(sum([]) == 0)
        #expect(sum([0, -0.0]) == 0)
        #expect(sum([.leastNonzeroMagnitude, -.leastNonzeroMagnitude]) == 0)
        #expect(sum([.leastNormalMagnitude, -.leastNonzeroMagnitude]) == .leastNormalMagnitude.nextDown)
        #expect(sum(Array(repeating: 0x1p-1074, count: 1 << 12)) == 0x1p-1062)
        #expect(sum([-0x1p-1074, 2]) == 2)
    }

    /// The documented bound: addends within 2^108 of the largest are kept
    /// exactly, wherever the largest sits against the 32-bit bins (every
    /// alignment is tried); far below it, their bits are dropped (the same
    /// way for every order, see the test above).
    @Test func theWindowKeepsAddendsWithin2To108OfTheLargest() {
        for shift in -40..<40 {
            let large = Double(sign: .plus, exponent: 108 + shift, significand: 0x1.fffffffffffffp0)
            let small = Double(sign: .plus, exponent: shift, significand: 0x1.fffffffffffffp0)
            #expect(sum([large, small, -large]) == small, "shift \(shift)")
            #expect(sum([-large, -small, large]) == -small, "shift \(shift)")
        }
        #expect(sum([0x1p200, 1, -0x1p200]) == 0)
    }

    @Test func independentSumsStayApart() {
        let sums = ReproducibleSums(count: 3)
        let values: [Double] = [1, -2, 0.5]
        for _ in 0..<4 { values.withUnsafeBufferPointer { sums.add($0) } }
        sums.add(1e-30, to: 1)
        #expect(sums.sums() == [4, -8 + 1e-30, 2])
        sums.removeAll()
        #expect(sums.sums() == [0, 0, 0])
        #expect(sums.addendCount(at: 2) == 0)
    }

    /// One sum of `values` rounded once to `T`.
    func sum<T: BinaryFloatingPoint>(_ values: [Double], as type: T.Type) -> T {
        let sums = ReproducibleSums(count: 1)
        for value in values { sums.add(value, to: 0) }
        return sums.sum(at: 0, as: type)
    }

    /// Rounded once to a narrower `T`, by construction: m is the midpoint
    /// of two neighbours of T (a double), and m ± t for a t far below m's
    /// ulp as a double (so the nearest double is m itself) must round to
    /// the neighbour on t's side, m alone to the even one. Rounding the
    /// nearest double again would give the even one every time.
    func checkTiesOfNarrowerType<T: BinaryFloatingPoint>(_: T.Type, lows: [T]) {
        for low in lows {
            // Past the largest finite value, the grid's next point 2^(emax + 1) rounds to ∞.
            let high = low.nextUp
            let midpoint = (Double(low) + (high.isInfinite ? Double(low) + Double(low.ulp) : Double(high))) / 2
            let even = low.significandBitPattern & 1 == 0 ? low : high
            for below in [1, 20, 60, 100] {  // within the 160 bits the window keeps below the leading one
                let tiny = Double(sign: .plus, exponent: midpoint.exponent - 53 - below, significand: 1)
                #expect(sum([midpoint, tiny], as: T.self) == high, "\(low) + half an ulp + 2^-\(below) ulp")
                #expect(sum([midpoint, -tiny], as: T.self) == low, "\(low) + half an ulp - 2^-\(below) ulp")
                #expect(sum([-midpoint, -tiny], as: T.self) == -high, "below \(below)")
                #expect(sum([tiny, -tiny, midpoint], as: T.self) == even)
            }
            #expect(sum([midpoint], as: T.self) == even, "\(low): a tie rounds to even")
        }
    }

    @Test func roundsOnceToFloat() {
        checkTiesOfNarrowerType(Float.self, lows: [
            1, 1.5, 3.25e-3, 7e30, .leastNormalMagnitude, .leastNonzeroMagnitude, 0,
            .leastNormalMagnitude.nextDown, .greatestFiniteMagnitude.nextDown, .greatestFiniteMagnitude,
        ])
        // The audit's case: 1 + 2^-24 + 2^-60 is past Float's tie at 1 + 2^-24.
        #expect(sum([1, 0x1p-24, 0x1p-60], as: Float.self) == 1 + 0x1p-23)
        #expect(sum([1, 0x1p-24, 0x1p-60], as: Double.self) == 1 + 0x1p-24)
    }

    @Test func roundsOnceToFloat16() {
        checkTiesOfNarrowerType(Float16.self, lows: [
            1, 0.75, 1000, .leastNormalMagnitude, .leastNonzeroMagnitude, 0,
            .greatestFiniteMagnitude.nextDown, .greatestFiniteMagnitude,
        ])
    }

    /// Off the ties, rounding once to Float agrees with rounding the
    /// nearest double, on random sums of many binades.
    @Test func roundsToFloatAsTheDoubleDoesOffTheTies() {
        for seed in 1...20 as ClosedRange<UInt64> {
            let values = spread(300, binades: 60, seed: seed)
            #expect(sum(values, as: Float.self) == Float(correctlyRoundedSum(values)), "seed \(seed)")
        }
        #expect(sum([.nan, 1], as: Float.self).isNaN)
        #expect(sum([.infinity, 1], as: Float16.self) == .infinity)
        #expect(sum([1e300, -1e300], as: Float.self) == 0)
    }
}
