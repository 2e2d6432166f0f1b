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
    static func rounded(_ sum: UnsafePointer<Int64>) -> Double {
        precondition(addendCount(sum) <= maximumAddends,
                     "a reproducible sum took \(addendCount(sum)) addends; at most \(maximumAddends) fit its limbs")
        let flags = sum[1]
        let positiveInfinity = flags & positiveInfinityFlag != 0, negativeInfinity = flags & negativeInfinityFlag != 0
        if flags & nanFlag != 0 || (positiveInfinity && negativeInfinity) { return .nan }
        if positiveInfinity { return .infinity }
        if negativeInfinity { return -.infinity }
        guard sum[0] != emptyTop else { return 0 }
        let (negative, wide) = WideInteger.combining(limbs: UnsafeBufferPointer(start: sum + 2, count: limbs))
        // The value is magnitude·2^exponent; bins below 0 hold nothing, so
        // the bits below 2^-1074 are zero and can go.
        var magnitude = wide
        var exponent = binBits * (Int(sum[0]) - (limbs - 1)) - 1074
        if exponent < -1074 {
            magnitude = magnitude.shiftedRight(by: -1074 - exponent)
            exponent = -1074
        }
        let sign: FloatingPointSign = negative ? .minus : .plus
        let bitLength = magnitude.bitLength
        guard bitLength > 53 else {
            // Exact: fewer than 54 bits on a grid of 2^-1074 or coarser.
            return Double(sign: sign, exponent: exponent, significand: Double(magnitude.low64))
        }
        // bitLength > 53 puts the value above 2^-1022: a normal double,
        // so rounding to 53 bits is the only rounding.
        let dropped = bitLength - 53
        var significand = magnitude.shiftedRight(by: dropped).low64
        let roundBit = magnitude.bit(dropped - 1), sticky = magnitude.hasBits(below: dropped - 1)
        if roundBit && (sticky || significand & 1 == 1) { significand += 1 }
        return Double(sign: sign, exponent: exponent + dropped, significand: Double(significand))
    }
}

/// A 256-bit unsigned integer, as much as the six limbs of a sum can make:
/// |Σ limb_j·2^(32·j)| < 2^63·2^161.
@usableFromInline
struct WideInteger {
    /// Little-endian 64-bit words.
    @usableFromInline var words: (UInt64, UInt64, UInt64, UInt64)

    @inlinable init(words: (UInt64, UInt64, UInt64, UInt64)) { self.words = words }

    /// Σ limbs[j]·2^(32·j) as a sign and a magnitude.
    @inlinable
    static func combining(limbs: UnsafeBufferPointer<Int64>) -> (negative: Bool, magnitude: WideInteger) {
        // Carries propagated from the lowest limb up, 32 bits at a time;
        // the carry is the exact signed value of everything not yet emitted.
        var value = WideInteger(words: (0, 0, 0, 0))
        var carry: Int128 = 0
        for digit in 0..<8 {
            if digit < limbs.count { carry += Int128(limbs[digit]) }
            value[digit / 2] |= UInt64(UInt32(truncatingIfNeeded: carry)) << (32 * UInt64(digit % 2))
            carry >>= 32
        }
        let negative = carry < 0
        return (negative, negative ? value.negated : value)
    }

    @inlinable subscript(index: Int) -> UInt64 {
        get { withUnsafeBytes(of: words) { $0.load(fromByteOffset: 8 * index, as: UInt64.self) } }
        set { withUnsafeMutableBytes(of: &words) { $0.storeBytes(of: newValue, toByteOffset: 8 * index, as: UInt64.self) } }
    }

    /// −self modulo 2^256 (two's complement).
    @inlinable var negated: WideInteger {
        var result = self
        var carry: UInt64 = 1
        for index in 0..<4 {
            let (sum, overflow) = (~self[index]).addingReportingOverflow(carry)
            result[index] = sum
            carry = overflow ? 1 : 0
        }
        return result
    }

    @inlinable var bitLength: Int {
        for index in stride(from: 3, through: 0, by: -1) where self[index] != 0 {
            return 64 * index + 64 - self[index].leadingZeroBitCount
        }
        return 0
    }

    @inlinable var low64: UInt64 { self[0] }

    @inlinable func bit(_ position: Int) -> Bool {
        position >= 0 && position < 256 && (self[position / 64] >> UInt64(position % 64)) & 1 == 1
    }

    /// Whether any bit below `position` is set.
    @inlinable func hasBits(below position: Int) -> Bool {
        guard position > 0 else { return false }
        for index in 0..<4 {
            let start = 64 * index
            guard start < position else { break }
            let word = position - start >= 64 ? self[index] : self[index] & (1 << UInt64(position - start) - 1)
            if word != 0 { return true }
        }
        return false
    }

    @inlinable func shiftedRight(by count: Int) -> WideInteger {
        guard count > 0 else { return self }
        var result = WideInteger(words: (0, 0, 0, 0))
        let wordShift = count / 64, bitShift = UInt64(count % 64)
        for index in 0..<4 where index + wordShift < 4 {
            var word = self[index + wordShift] >> bitShift
            if bitShift > 0 && index + wordShift + 1 < 4 { word |= self[index + wordShift + 1] << (64 - bitShift) }
            result[index] = word
        }
        return result
    }
}
