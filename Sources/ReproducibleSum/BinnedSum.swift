/// One sum of `Double`s held as integers on a fixed grid: the arithmetic of
/// `ReproducibleSums`, on the eight words of one sum.
///
/// Every finite double is an integer multiple of 2^-1074, so |x| = I·2^-1074
/// with I < 2^2098. I is cut into *bins* of 32 bits at fixed absolute
/// positions: bin j holds bits [32j, 32j + 32) of I, j = 0…65. A sum keeps
/// the six bins below and including its *top*, the bin of the highest bit
/// of its largest addend, as signed 64-bit integers ("limbs"); each addend
/// adds the (at most three) 32-bit digits of its I, with its sign, to the
/// limbs of their bins. Digits of bins below the window are dropped.
///
/// Why the result does not depend on the order of the additions:
/// - integer addition is associative and commutative, and each limb holds
///   at most 2^31 digits below 2^32, so it never overflows (`maximumAddends`);
/// - the top is the maximum over the addends, itself order-free, and a
///   digit survives iff its bin lies within six bins of the final top.
///   A merge that raises a sum's top drops exactly the bins that the final
///   top drops too, so dropping early drops nothing that would have stayed.
///
/// Word layout, eight `Int64` (one cache line):
///
///     [0]  top: the window's highest bin, or `emptyTop` (no nonzero finite addend)
///     [1]  flags in bits 0-2 (NaN, +∞, −∞ seen) | number of addends << 8
///     [2…7] limbs: limb j holds bin top − 5 + j
///
/// What is kept: every bit at or above 2^(32·(top − 5) − 1074). The top
/// bin starts at most 31 bits below the largest addend's leading bit, so
/// that is every bit down to at least 160 bits below it. An addend of at
/// least 2^-108 times the largest in magnitude has all its bits there (its
/// lowest is at most 108 + 52 below that leading bit), so a sum of such
/// addends is exact, and `rounded` rounds it once.
@usableFromInline
enum BinnedSum {
    @usableFromInline static let words = 8
    @usableFromInline static let limbs = 6
    @usableFromInline static let binBits = 32
    @usableFromInline static let emptyTop = Int64.min
    @usableFromInline static let nanFlag: Int64 = 1, positiveInfinityFlag: Int64 = 2, negativeInfinityFlag: Int64 = 4
    @usableFromInline static let countShift: Int64 = 8
    /// Addends one sum can take before a limb could overflow: each limb
    /// gains at most one digit below 2^32 per addend, and holds ±2^63.
    @usableFromInline static let maximumAddends = 1 << 31

    /// Sets a sum to empty.
    @inlinable @inline(__always)
    static func clear(_ sum: UnsafeMutablePointer<Int64>) {
        sum.update(repeating: 0, count: words)
        sum[0] = emptyTop
    }

    /// Adds `value` to the sum, exactly above its window.
    @inlinable @inline(__always)
    static func add(_ value: Double, to sum: UnsafeMutablePointer<Int64>) {
        sum[1] &+= 1 << countShift
        let bits = value.bitPattern
        let biasedExponent = Int64(truncatingIfNeeded: (bits >> 52) & 0x7FF)
        let fraction = bits & (1 << 52 - 1)
        guard biasedExponent != 0x7FF else {
            sum[1] |= fraction != 0 ? nanFlag : value > 0 ? positiveInfinityFlag : negativeInfinityFlag
            return
        }
        // |value| = significand·2^(lowBit − 1074); subnormals have no hidden
        // bit, normals have it at bit 52.
        let normal = biasedExponent != 0
        let significand = fraction | UInt64(normal ? 1 : 0) << 52
        guard significand != 0 else { return }
        let lowBit = normal ? biasedExponent &- 1 : 0
        let highBit = normal ? lowBit &+ 52 : 63 &- Int64(significand.leadingZeroBitCount)
        if highBit >> 5 > sum[0] { raiseTop(of: sum, to: highBit >> 5) }
        // Where the value's lowest bit falls in the window, counted from
        // the window's lowest bit.
        let offset = lowBit &- Int64(binBits) &* (sum[0] &- Int64(limbs - 1))
        guard offset >= 0 else { return addStraddlingTheWindow(significand, lowBit, negative: bits >> 63 != 0, to: sum) }
        // Three digits from bin offset/32 up; the value ends at or below
        // the top bin, so a digit past it is 0 and may go to the top limb.
        let lowLimb = Int(offset >> 5)
        let shift = UInt64(offset & 31)
        let low = significand &<< shift, high = (significand >> 1) &>> (63 - shift)  // the 84-bit significand·2^shift
        let sign = Int64(bitPattern: bits) >> 63  // 0 or −1: x ↦ (x ^ sign) − sign negates when −1
        let limbs = sum + 2
        limbs[lowLimb] &+= (Int64(low & 0xFFFF_FFFF) ^ sign) &- sign
        limbs[min(lowLimb + 1, Self.limbs - 1)] &+= (Int64(low >> 32) ^ sign) &- sign
        limbs[min(lowLimb + 2, Self.limbs - 1)] &+= (Int64(high) ^ sign) &- sign
    }

    /// The digits of a value whose lowest bits lie below the window: those
    /// in it are added, the others dropped.
    @usableFromInline
    static func addStraddlingTheWindow(_ significand: UInt64, _ lowBit: Int64, negative: Bool, to sum: UnsafeMutablePointer<Int64>) {
        let lowBin = lowBit >> 5, baseBin = sum[0] - Int64(limbs - 1)
        let aligned = UInt128(significand) << (lowBit & 31)
        for digitIndex in 0..<Int64(3) where lowBin + digitIndex >= baseBin && lowBin + digitIndex <= sum[0] {
            let digit = Int64(truncatingIfNeeded: (aligned >> (32 * digitIndex)) & 0xFFFF_FFFF)
            sum[2 + Int(lowBin + digitIndex - baseBin)] &+= negative ? -digit : digit
        }
    }

    /// Makes `top` the sum's top if it is higher, moving the limbs down the
    /// window (and dropping those that fall out of it).
    @inlinable @inline(__always)
    static func raiseTop(of sum: UnsafeMutablePointer<Int64>, to top: Int64) {
        let current = sum[0]
        guard top > current else { return }
        sum[0] = top
        guard current != emptyTop, top - current < limbs else {
            (sum + 2).update(repeating: 0, count: limbs)
            return
        }
        let shift = Int(top - current)
        for limb in 0..<limbs {
            sum[2 + limb] = limb + shift < limbs ? sum[2 + limb + shift] : 0
        }
    }

    /// target ← target + source.
    @inlinable @inline(__always)
    static func merge(_ source: UnsafePointer<Int64>, into target: UnsafeMutablePointer<Int64>) {
        let flagMask: Int64 = (1 << countShift) - 1
        let addends: Int64 = (target[1] &>> countShift) &+ (source[1] &>> countShift)
        let flags: Int64 = (target[1] | source[1]) & flagMask
        target[1] = addends &<< countShift | flags
        guard source[0] != emptyTop else { return }
        raiseTop(of: target, to: source[0])
        let shift = Int(target[0] - source[0])
        for limb in min(shift, limbs)..<limbs {
            target[2 + limb - shift] &+= source[2 + limb]
        }
    }

    /// The number of addends the sum has taken.
    @inlinable static func addendCount(_ sum: UnsafePointer<Int64>) -> Int { Int(sum[1] >> countShift) }

    /// The sum rounded once to the nearest double (ties to even): NaN if a
    /// NaN or both infinities were added, ±∞ if one infinity was, or if the
    /// exact sum overflows; +0 for an exact zero.
    @inlinable
    static func rounded(_ sum: UnsafePointer<Int64>) -> Double { roundedWithExcess(sum).nearest }

    /// The sum rounded once to the nearest value of `T` (ties to even), as
    /// `rounded` to the nearest double.
    ///
    /// Rounding the nearest double to `T` would round twice, and err when
    /// the double lies exactly halfway between two values of `T` while the
    /// exact sum does not (1 + 2^-24 + 2^-60 gave 1 in `Float`, not
    /// 1 + 2^-23). The double is exact or within half its ulp of the sum,
    /// and every midpoint of a narrower `T` is a double, so only that case
    /// differs: there the sum's side of the double decides.
    @inlinable
    static func rounded<T: BinaryFloatingPoint>(_ sum: UnsafePointer<Int64>, as _: T.Type) -> T {
        let (nearest, excess) = roundedWithExcess(sum)
        guard excess != 0, nearest.isFinite, T.significandBitCount < Double.significandBitCount else { return T(nearest) }
        let magnitude = roundedMagnitude(nearest.magnitude, above: (excess > 0) == (nearest > 0), as: T.self)
        return nearest < 0 ? -magnitude : magnitude
    }

    /// The value of `T` nearest to an exact positive value that lies just
    /// above (`above`) or just below `magnitude`, a double, by less than
    /// half its ulp.
    @inlinable
    static func roundedMagnitude<T: BinaryFloatingPoint>(_ magnitude: Double, above: Bool, as _: T.Type) -> T {
        let nearest = T(magnitude)
        let lower = Double(nearest) <= magnitude ? nearest : nearest.nextDown
        // Past the largest finite value, the next value on T's grid is 2^(emax + 1), which rounds to ∞.
        let upperValue = lower == .greatestFiniteMagnitude ? Double(lower) + Double(lower.ulp) : Double(lower.nextUp)
        guard 2 * magnitude == Double(lower) + upperValue else { return nearest }
        return above ? lower.nextUp : lower
    }

    /// The sum rounded once to the nearest double, and the sign of the
    /// exact sum minus that double (0 when it is exact, or not finite).
    @inlinable
    static func roundedWithExcess(_ sum: UnsafePointer<Int64>) -> (nearest: Double, excess: Int) {
        precondition(addendCount(sum) <= maximumAddends,
                     "a reproducible sum took \(addendCount(sum)) addends; at most \(maximumAddends) fit its limbs")
        let flags = sum[1]
        let positiveInfinity = flags & positiveInfinityFlag != 0, negativeInfinity = flags & negativeInfinityFlag != 0
        if flags & nanFlag != 0 || (positiveInfinity && negativeInfinity) { return (.nan, 0) }
        if positiveInfinity { return (.infinity, 0) }
        if negativeInfinity { return (-.infinity, 0) }
        guard sum[0] != emptyTop else { return (0, 0) }
        let (negative, wide) = WideInteger.combining(limbs: sum + 2)
        // The value is magnitude·2^exponent; bins below 0 hold nothing, so
        // the bits below 2^-1074 are zero and can go.
        var magnitude = wide
        var exponent = binBits * (Int(sum[0]) - (limbs - 1)) - 1074
        if exponent < -1074 {
            magnitude = magnitude.shiftedRight(by: -1074 - exponent)
            exponent = -1074
        }
        let (nearest, magnitudeExcess) = magnitude.rounded(exponent: exponent)
        return negative ? (-nearest, -magnitudeExcess) : (nearest, magnitudeExcess)
    }
}

/// A 256-bit unsigned integer, as much as the six limbs of a sum can make:
/// |Σ limb_j·2^(32·j)| < 2^63·2^161. Four words in named fields, so that
/// the rounding of a sum stays in registers (through a tuple read with
/// `withUnsafeBytes` it took about 45 ns a sum, which a LayerNorm with
/// D = 4096 pays 8192 times a step after its collective).
@usableFromInline
struct WideInteger {
    /// Little-endian 64-bit words.
    @usableFromInline var w0, w1, w2, w3: UInt64

    @inlinable init(_ w0: UInt64, _ w1: UInt64, _ w2: UInt64, _ w3: UInt64) {
        (self.w0, self.w1, self.w2, self.w3) = (w0, w1, w2, w3)
    }

    /// Σ limbs[j]·2^(32·j), j = 0…5, as a sign and a magnitude.
    @inlinable @inline(__always)
    static func combining(limbs: UnsafePointer<Int64>) -> (negative: Bool, magnitude: WideInteger) {
        // Carries propagated from the lowest limb up, 32 bits at a time;
        // the carry is the exact signed value of everything not yet emitted.
        var carry: Int128 = 0
        func digit(_ limb: Int64) -> UInt64 {
            carry += Int128(limb)
            defer { carry >>= 32 }
            return UInt64(truncatingIfNeeded: carry) & 0xFFFF_FFFF
        }
        let d0 = digit(limbs[0]), d1 = digit(limbs[1]), d2 = digit(limbs[2])
        let d3 = digit(limbs[3]), d4 = digit(limbs[4]), d5 = digit(limbs[5])
        // What is left, below 2^31 in magnitude, is the top word, sign-extended.
        let value = WideInteger(d0 | d1 << 32, d2 | d3 << 32, d4 | d5 << 32, UInt64(truncatingIfNeeded: carry))
        let negative = carry < 0
        return (negative, negative ? value.negated : value)
    }

    /// −self modulo 2^256 (two's complement).
    @inlinable var negated: WideInteger {
        let (r0, c0) = (~w0).addingReportingOverflow(1)
        let (r1, c1) = (~w1).addingReportingOverflow(c0 ? 1 : 0)
        let (r2, c2) = (~w2).addingReportingOverflow(c1 ? 1 : 0)
        return WideInteger(r0, r1, r2, ~w3 &+ (c2 ? 1 : 0))
    }

    /// self·2^exponent rounded to the nearest double, ties to even, for an
    /// `exponent` of at least −1074 (bits on a grid no finer than the
    /// smallest subnormal's), and the sign of the exact value minus the
    /// double (0 when exact; −1 after rounding up, which may overflow to ∞).
    @inlinable @inline(__always)
    func rounded(exponent: Int) -> (nearest: Double, excess: Int) {
        // The highest nonzero word, the one below it, whether any lower is nonzero.
        let (high, next, lower, index): (UInt64, UInt64, Bool, Int) =
            w3 != 0 ? (w3, w2, w1 | w0 != 0, 3) : w2 != 0 ? (w2, w1, w0 != 0, 2) : w1 != 0 ? (w1, w0, false, 1) : (w0, 0, false, 0)
        let leading = high.leadingZeroBitCount
        let bitLength = 64 * index + 64 - leading
        // Exact: fewer than 54 bits (all in w0) on a grid of 2^-1074 or coarser.
        guard bitLength > 53 else { return (Double(sign: .plus, exponent: exponent, significand: Double(w0)), 0) }
        // bitLength > 53 puts the value above 2^-1022: a normal double, so
        // rounding to 53 bits is the only rounding. `top` holds the 64
        // highest bits; the sticky bit is whatever lies below its 54th.
        let top = leading == 0 ? high : high << UInt64(leading) | next >> UInt64(64 - leading)
        let rest = leading == 0 ? next : next << UInt64(leading)
        var significand = top >> 11
        let roundBit = top & 0x400 != 0, sticky = top & 0x3FF != 0 || rest != 0 || lower
        let roundsUp = roundBit && (sticky || significand & 1 == 1)
        if roundsUp { significand += 1 }
        let nearest = Double(sign: .plus, exponent: exponent + bitLength - 53, significand: Double(significand))
        return (nearest, roundsUp ? -1 : roundBit || sticky ? 1 : 0)
    }

    /// self / 2^count, rounded toward zero (only for the rare window that
    /// reaches below 2^-1074, whose dropped bits are zero).
    @inlinable func shiftedRight(by count: Int) -> WideInteger {
        guard count > 0 else { return self }
        let wordShift = count / 64, bitShift = UInt64(count % 64)
        func word(_ index: Int) -> UInt64 {
            switch index {
            case 0: w0
            case 1: w1
            case 2: w2
            case 3: w3
            default: 0
            }
        }
        func shifted(_ index: Int) -> UInt64 {
            let low = word(index + wordShift) >> bitShift
            return bitShift == 0 ? low : low | word(index + wordShift + 1) << (64 - bitShift)
        }
        return WideInteger(shifted(0), shifted(1), shifted(2), shifted(3))
    }
}
