/// Adding a table of addends to several sums at once, one sum per vector
/// lane: the same words as `BinnedSum.add` of every addend, about three
/// times faster, because the lanes share no state.
///
/// The scalar `add` spends most of its time deciding, addend by addend,
/// whether the top must rise and which limbs take the digits. Here the top
/// of each lane is raised once, to the bin of the largest addend of its
/// column (the final top of the scalar sequence too: a top only rises, to
/// the largest addend's bin), and then every addend's digits are added to
/// six lane-wise limb accumulators without a branch:
///
///     offset = lowBit − 32·(top − 5)          where the addend starts in the window
///     offset < 0: significand >>= −offset, offset = 0   (bits below the window dropped)
///     d0, d1, d2 = the 32-bit digits of significand·2^(offset mod 32), signed
///     limb[offset/32 + i] += d_i
///
/// Digits land in the bins the scalar path gives them and integer addition
/// is associative, so the words are the same bits as adding the addends
/// one by one, in any order (the tests compare them word for word).
extension BinnedSum {
    @usableFromInline typealias Lanes = SIMD4<Int64>
    @usableFromInline static let laneCount = Lanes.scalarCount

    /// Adds `table[row·rowLength + column]` for every row to the sum at
    /// `sums + column·words`, for every column of `columns` (a multiple of
    /// `laneCount` of them). The table is read row by row, twice: once for
    /// each column's largest magnitude, once for the digits, into limb
    /// accumulators that stay in L1 (six vectors per four columns). A
    /// column that holds a NaN or an infinity takes the scalar path (its
    /// flags are per addend).
    @inlinable
    static func addTable(
        _ table: UnsafePointer<Double>, rows: Int, rowLength: Int, columns: Range<Int>, to sums: UnsafeMutablePointer<Int64>
    ) {
        let blocks = columns.count / laneCount
        withUnsafeTemporaryAllocation(of: Lanes.self, capacity: blocks * (limbs + 3)) { scratch in
            // Per block of four columns: the largest magnitudes, then the
            // window bases and the mask of lanes to skip, then six limb sums.
            let largest = scratch.baseAddress!, windowBases = largest + blocks, skipped = windowBases + blocks
            let limbSums = skipped + blocks
            largest.initialize(repeating: .zero, count: blocks)
            for row in 0..<rows {
                let values = table + row * rowLength + columns.lowerBound
                for block in 0..<blocks {
                    largest[block] = pointwiseMax(largest[block], loadLanes(values + block * laneCount) & Int64.max)
                }
            }
            for block in 0..<blocks {
                let column = columns.lowerBound + block * laneCount
                (windowBases[block], skipped[block]) = prepareLanes(
                    largest[block], table + column, rows: rows, rowLength: rowLength, sums: sums + column * words)
            }
            limbSums.initialize(repeating: .zero, count: limbs * blocks)
            for row in 0..<rows {
                let values = table + row * rowLength + columns.lowerBound
                for block in 0..<blocks {
                    addDigits(loadLanes(values + block * laneCount) & ~skipped[block],
                              windowBase: windowBases[block], to: limbSums + limbs * block)
                }
            }
            for block in 0..<blocks {
                let column = columns.lowerBound + block * laneCount
                for lane in 0..<laneCount where skipped[block][lane] == 0 {
                    for limb in 0..<limbs { sums[(column + lane) * words + 2 + limb] &+= limbSums[limbs * block + limb][lane] }
                }
            }
        }
    }

    /// Before the digits of four columns are added: each sum counts its
    /// addends and raises its top to the bin of its column's largest
    /// magnitude; a column with a NaN or infinity is added by the scalar
    /// path. Returns 32·(top − 5) per lane, and −1 in the lanes that the
    /// vector path must skip (scalar, or only zeros).
    @inlinable
    static func prepareLanes(
        _ largest: Lanes, _ column: UnsafePointer<Double>, rows: Int, rowLength: Int, sums: UnsafeMutablePointer<Int64>
    ) -> (windowBase: Lanes, skipped: Lanes) {
        var windowBase = Lanes(), skipped = Lanes()
        for lane in 0..<laneCount {
            let sum = sums + lane * words
            if largest[lane] &>> 52 == 0x7FF {
                for row in 0..<rows { add(column[row * rowLength + lane], to: sum) }
                skipped[lane] = -1
            } else {
                sum[1] &+= Int64(rows) << countShift
                guard largest[lane] != 0 else { skipped[lane] = -1; continue }
                raiseTop(of: sum, to: highBit(ofMagnitude: largest[lane]) >> 5)
                windowBase[lane] = (sum[0] - Int64(limbs - 1)) << 5
            }
        }
        return (windowBase, skipped)
    }

    /// The bit patterns of four consecutive doubles (any alignment).
    @inlinable @inline(__always)
    static func loadLanes(_ address: UnsafePointer<Double>) -> Lanes {
        UnsafeRawPointer(address).loadUnaligned(as: Lanes.self)
    }

    /// The position of the highest set bit of |value| on the 2^-1074 grid,
    /// from its bit pattern without the sign (nonzero, finite).
    @inlinable
    static func highBit(ofMagnitude magnitude: Int64) -> Int64 {
        let biasedExponent = magnitude >> 52
        return biasedExponent != 0 ? biasedExponent - 1 + 52 : 63 - Int64(magnitude.leadingZeroBitCount)
    }

    /// The digits of four finite addends (bit patterns) added to the limb
    /// accumulators; `windowBase` is 32·(top − 5) per lane, the grid
    /// position of the window's lowest bit. Branch-free, and written with
    /// shifts and compares that AVX2 has for 64-bit lanes.
    @inlinable @inline(__always)
    static func addDigits(
        _ bits: Lanes, windowBase: Lanes, to limbSums: UnsafeMutablePointer<Lanes>
    ) {
        let biasedExponent = (bits &>> 52) & 0x7FF
        // Normals have the hidden bit and start at exponent − 1; subnormals
        // (exponent field 0) have neither and start at 0.
        let isNormal = (0 &- biasedExponent) &>> 63  // −1 or 0
        let significand = bits & (1 << 52 - 1) | isNormal & 1 << 52
        var offset = (biasedExponent &+ isNormal) &- windowBase
        // Below the window: the magnitude truncated at the window's lowest
        // bit, which then sits at offset 0 (a shift of 64 or more leaves 0).
        let isBelow = offset &>> 63
        let dropped = (0 &- offset) & isBelow
        let kept = SIMD4<UInt64>(truncatingIfNeeded: significand) &>> SIMD4<UInt64>(truncatingIfNeeded: dropped)
        let keptSignificand = Lanes(truncatingIfNeeded: kept) & ((dropped &- 64) &>> 63)
        offset &= ~isBelow
        let shift = SIMD4<UInt64>(truncatingIfNeeded: offset & 31)
        let unsigned = SIMD4<UInt64>(truncatingIfNeeded: keptSignificand)
        let low = unsigned &<< shift
        let high = (unsigned &>> 1) &>> (63 &- shift)  // bits 64… of significand·2^shift
        let sign = bits &>> 63  // 0 or −1: (x ^ sign) − sign negates when −1
        let digit0 = (Lanes(truncatingIfNeeded: low & 0xFFFF_FFFF) ^ sign) &- sign
        let digit1 = (Lanes(truncatingIfNeeded: low &>> 32) ^ sign) &- sign
        let digit2 = (Lanes(truncatingIfNeeded: high) ^ sign) &- sign
        // Digit i goes to limb lowLimb + i; digits past the top limb are 0.
        // (`_storage`: a mask's lanes as −1/0, for an AND; `replacing(with:where:)`
        // is not vectorized here.)
        let lowLimb = offset &>> 5
        let startsAt = ((lowLimb .== 0)._storage, (lowLimb .== 1)._storage, (lowLimb .== 2)._storage,
                        (lowLimb .== 3)._storage, (lowLimb .== 4)._storage, (lowLimb .== 5)._storage)
        limbSums[0] &+= digit0 & startsAt.0
        limbSums[1] &+= digit0 & startsAt.1 &+ digit1 & startsAt.0
        limbSums[2] &+= digit0 & startsAt.2 &+ digit1 & startsAt.1 &+ digit2 & startsAt.0
        limbSums[3] &+= digit0 & startsAt.3 &+ digit1 & startsAt.2 &+ digit2 & startsAt.1
        limbSums[4] &+= digit0 & startsAt.4 &+ digit1 & startsAt.3 &+ digit2 & startsAt.2
        limbSums[5] &+= digit0 & startsAt.5 &+ digit1 & startsAt.4 &+ digit2 & startsAt.3
    }
}
