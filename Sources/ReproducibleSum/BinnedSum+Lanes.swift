/// Adding a table of addends to several sums at once, one sum per vector
/// lane: the same words as `BinnedSum.add` of every addend, several times
/// faster, because the lanes share no state.
///
/// The scalar `add` spends most of its time deciding, addend by addend,
/// whether the top must rise and which limbs take the digits. Here the top
/// of each lane is raised once, to the bin of the largest addend of its
/// column (the final top of the scalar sequence too: a top only rises, to
/// the largest addend's bin), and every addend's digits then come off in
/// floating point, without a branch. Scaled by a power of two, so that
/// the window's lowest bit weighs 1 (exact), an addend is y, |y| < 2^192,
/// and its six 32-bit digits are
///
///     T_k = trunc(y / 2^32k)       d_5 = T_5      d_k = T_k − T_(k+1)·2^32   (k = 4 … 0)
///
/// (each step exact: a power of two, a truncation, and a difference below
/// 2^32), which are the digits of the integer path: those of trunc(|y|),
/// the bits below the window dropped, negated with the addend. Digits below 2^32
/// add up exactly in doubles for 2^21 rows; every `digitFlushRows` rows
/// they move to the sums' 64-bit limbs. Digits land in the bins the scalar path
/// gives them and integer addition is associative, so the words are the
/// same bits as adding the addends one by one, in any order (the tests
/// compare them word for word).
extension BinnedSum {
    @usableFromInline typealias Lanes = SIMD4<Int64>
    @usableFromInline static let laneCount = Lanes.scalarCount

    /// Adds `table[row·rowLength + column]` for every row to the sum at
    /// `sums + column·words`, for every column of `columns` (a multiple of
    /// `laneCount` of them). The table is read twice: row by row for each
    /// column's largest and smallest magnitudes, then in tiles of
    /// `digitTileRows` rows, four columns at a time down a tile, for the
    /// digits (six vectors of digit sums in registers), of which those
    /// below the smallest magnitude's lowest bit are skipped (`lowestDigit`). A column that holds a NaN or an infinity,
    /// or whose addends are all tiny, takes the scalar path (its flags are
    /// per addend).
    @inlinable
    static func addTable(
        _ table: UnsafePointer<Double>, rows: Int, rowLength: Int, columns: Range<Int>, to sums: UnsafeMutablePointer<Int64>
    ) {
        var start = columns.lowerBound
        while start < columns.upperBound {
            let end = min(start + tableColumnChunk, columns.upperBound)
            addTableColumns(table, rows: rows, rowLength: rowLength, columns: start..<end, to: sums)
            start = end
        }
    }

    /// Columns `addTable` takes at a time: their scratch (seventeen vectors
    /// per four columns) stays near 70 KB, memory the allocator reuses,
    /// however wide the table (LayerNorm's rows can be 150 000 values, whose
    /// scratch at once was 40 MB of fresh pages per call). A multiple of
    /// `laneCount`.
    @usableFromInline static let tableColumnChunk = 512

    /// `addTable` over at most `tableColumnChunk` columns.
    @inlinable
    static func addTableColumns(
        _ table: UnsafePointer<Double>, rows: Int, rowLength: Int, columns: Range<Int>, to sums: UnsafeMutablePointer<Int64>
    ) {
        let blocks = columns.count / laneCount
        withUnsafeTemporaryAllocation(of: Lanes.self, capacity: blocks * 4) { scratch in
            // Per block of four columns: the largest and smallest
            // magnitudes, then the window bases and the mask of lanes to skip.
            let largest = scratch.baseAddress!, smallest = largest + blocks
            let windowBases = smallest + blocks, skipped = windowBases + blocks
            findExtremes(table, rows: rows, rowLength: rowLength, columns: columns, largest: largest, smallest: smallest)
            withUnsafeTemporaryAllocation(of: Int.self, capacity: blocks) { lowestDigits in
                for block in 0..<blocks {
                    let column = columns.lowerBound + block * laneCount
                    (windowBases[block], skipped[block]) = prepareLanes(
                        largest[block], table + column, rows: rows, rowLength: rowLength, sums: sums + column * words)
                    lowestDigits[block] = lowestDigit(
                        smallest: smallest[block], windowBase: windowBases[block], skipped: skipped[block])
                }
                addDigitTiles(table, rows: rows, rowLength: rowLength, columns: columns, windowBases: windowBases,
                              skipped: skipped, lowestDigits: lowestDigits.baseAddress!, to: sums)
            }
        }
    }

    /// Per block of four of `columns`, the largest and the smallest
    /// magnitude (bit patterns without the sign) over every row.
    @inlinable
    static func findExtremes(
        _ table: UnsafePointer<Double>, rows: Int, rowLength: Int, columns: Range<Int>,
        largest: UnsafeMutablePointer<Lanes>, smallest: UnsafeMutablePointer<Lanes>
    ) {
        let blocks = columns.count / laneCount
        largest.initialize(repeating: .zero, count: blocks)
        smallest.initialize(repeating: Lanes(repeating: .max), count: blocks)
        for row in 0..<rows {
            let values = table + row * rowLength + columns.lowerBound
            for block in 0..<blocks {
                let magnitudes = loadLanes(values + block * laneCount) & Int64.max
                largest[block] = pointwiseMax(largest[block], magnitudes)
                smallest[block] = pointwiseMin(smallest[block], magnitudes)
            }
        }
    }

    /// The digits of every row's addends in `columns`, their sums' tops
    /// raised (`prepareLanes`), added to the limbs: rows in tiles that stay
    /// in L2, each block of four columns down a tile with its digit sums in
    /// registers, moved to the limbs every `digitFlushRows` rows.
    @inlinable
    static func addDigitTiles(
        _ table: UnsafePointer<Double>, rows: Int, rowLength: Int, columns: Range<Int>,
        windowBases: UnsafeMutablePointer<Lanes>, skipped: UnsafeMutablePointer<Lanes>,
        lowestDigits: UnsafeMutablePointer<Int>, to sums: UnsafeMutablePointer<Int64>
    ) {
        let blocks = columns.count / laneCount
        withUnsafeTemporaryAllocation(of: SIMD4<Double>.self, capacity: blocks * (limbs + 1)) { floating in
            let scales = floating.baseAddress!, digitSums = scales + blocks
            for block in 0..<blocks { scales[block] = scale(windowBase: windowBases[block], skipped: skipped[block]) }
            var start = 0
            while start < rows {
                let flushEnd = min(start + digitFlushRows, rows)
                digitSums.initialize(repeating: .zero, count: limbs * blocks)
                for tileStart in stride(from: start, to: flushEnd, by: digitTileRows) {
                    for block in 0..<blocks {
                        addDigits(table + columns.lowerBound + block * laneCount,
                                  rows: tileStart..<min(tileStart + digitTileRows, flushEnd), rowLength: rowLength,
                                  skipped: skipped[block], scale: scales[block], lowestDigit: lowestDigits[block],
                                  to: digitSums + limbs * block)
                    }
                }
                flush(digitSums, blocks: blocks, skipped: skipped, to: sums + columns.lowerBound * words)
                start = flushEnd
            }
        }
    }

    /// Adds the digit sums of `blocks` blocks of four columns (six vectors
    /// each, in `Double`) to the limbs of their sums, from `sums` on, but in
    /// the `skipped` lanes.
    @inlinable
    static func flush(
        _ digitSums: UnsafeMutablePointer<SIMD4<Double>>, blocks: Int, skipped: UnsafeMutablePointer<Lanes>,
        to sums: UnsafeMutablePointer<Int64>
    ) {
        for block in 0..<blocks {
            for lane in 0..<laneCount where skipped[block][lane] == 0 {
                for limb in 0..<limbs {
                    // A whole number below 2^53: exact as an integer.
                    sums[(block * laneCount + lane) * words + 2 + limb] &+= Int64(digitSums[limbs * block + limb][lane])
                }
            }
        }
    }

    /// Before the digits of four columns are added: each sum counts its
    /// addends and raises its top to the bin of its column's largest
    /// magnitude. A column with a NaN or infinity, or whose window lies so
    /// low that the scale 2^(1074 − base) is not a double (tops below
    /// about 2^-850), is added by the scalar path. Returns 32·(top − 5) per
    /// lane, and −1 in the lanes that the vector path must skip (scalar, or
    /// only zeros).
    @inlinable
    static func prepareLanes(
        _ largest: Lanes, _ column: UnsafePointer<Double>, rows: Int, rowLength: Int, sums: UnsafeMutablePointer<Int64>
    ) -> (windowBase: Lanes, skipped: Lanes) {
        var windowBase = Lanes(), skipped = Lanes()
        for lane in 0..<laneCount {
            let sum = sums + lane * words
            let top = largest[lane] == 0 ? sum[0] : max(sum[0], highBit(ofMagnitude: largest[lane]) >> 5)
            if largest[lane] &>> 52 == 0x7FF || (largest[lane] != 0 && (top - Int64(limbs - 1)) << 5 < lowestScaledBase) {
                for row in 0..<rows { add(column[row * rowLength + lane], to: sum) }
                skipped[lane] = -1
            } else {
                sum[1] &+= Int64(rows) << countShift
                guard largest[lane] != 0 else { skipped[lane] = -1; continue }
                raiseTop(of: sum, to: top)
                windowBase[lane] = (sum[0] - Int64(limbs - 1)) << 5
            }
        }
        return (windowBase, skipped)
    }

    /// The lowest window base (grid position of the window's lowest bit)
    /// whose scale 2^(1074 − base) is a normal double.
    @usableFromInline static let lowestScaledBase: Int64 = 1074 - 1023

    /// Rows whose digits add up in doubles before they move to the limb
    /// sums: each digit is below 2^32 in magnitude, so 2^20 of them stay
    /// below 2^52, exact.
    @usableFromInline static let digitFlushRows = 1 << 20

    /// Per lane 2^(1074 − windowBase): an addend times it has the window's
    /// lowest bit at 2^0. 1 in the skipped lanes (their addends are zeros).
    @inlinable
    static func scale(windowBase: Lanes, skipped: Lanes) -> SIMD4<Double> {
        var scale = SIMD4<Double>(repeating: 1)
        for lane in 0..<laneCount where skipped[lane] == 0 {
            scale[lane] = Double(sign: .plus, exponent: Int(1074 - windowBase[lane]), significand: 1)
        }
        return scale
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

    /// The lowest digit any finite addend of four columns can have nonzero:
    /// every addend's lowest bit lies at or above that of the smallest
    /// magnitude (its exponent's, the significand's bit 0), so the digits
    /// of the bins below it are zero in every lane. 0 when the smallest is
    /// zero or subnormal, or lies below the window; the skipped lanes do
    /// not count.
    @inlinable
    static func lowestDigit(smallest: Lanes, windowBase: Lanes, skipped: Lanes) -> Int {
        var lowest = limbs - 1
        for lane in 0..<laneCount where skipped[lane] == 0 {
            let biasedExponent = smallest[lane] >> 52
            let lowBit = biasedExponent == 0 ? 0 : biasedExponent - 1
            lowest = min(lowest, Int(max(0, (lowBit - windowBase[lane]) >> 5)))
        }
        return lowest
    }

    /// Rows of the column tile in which `addDigits` keeps the digit sums
    /// of four columns in registers: 32 rows of a table of a few thousand
    /// columns stay in L2 for the next block's pass.
    @usableFromInline static let digitTileRows = 32

    /// `addDigits` with the digits from `lowestDigit` (0…5) up: one copy
    /// of the loop per lowest digit, each without the work of the digits
    /// below it, which are zero.
    @inlinable @inline(__always)
    static func addDigits(
        _ column: UnsafePointer<Double>, rows: Range<Int>, rowLength: Int, skipped: Lanes, scale: SIMD4<Double>,
        lowestDigit: Int, to digitSums: UnsafeMutablePointer<SIMD4<Double>>
    ) {
        switch lowestDigit {
        case 0: addDigits(column, rows: rows, rowLength: rowLength, skipped: skipped, scale: scale, from: 0, to: digitSums)
        case 1: addDigits(column, rows: rows, rowLength: rowLength, skipped: skipped, scale: scale, from: 1, to: digitSums)
        case 2: addDigits(column, rows: rows, rowLength: rowLength, skipped: skipped, scale: scale, from: 2, to: digitSums)
        case 3: addDigits(column, rows: rows, rowLength: rowLength, skipped: skipped, scale: scale, from: 3, to: digitSums)
        case 4: addDigits(column, rows: rows, rowLength: rowLength, skipped: skipped, scale: scale, from: 4, to: digitSums)
        default: addDigits(column, rows: rows, rowLength: rowLength, skipped: skipped, scale: scale, from: 5, to: digitSums)
        }
    }

    /// The digits of four columns' finite addends (bit patterns, the
    /// `skipped` lanes read as zeros) over `rows`, added to the digit sums,
    /// (see the type's notes): y = addend·scale, then per digit a
    /// multiplication by a power of two, a truncation, an exact fused
    /// multiply-add and an exact addition. Branch-free. Digits below
    /// `lowest` are zero and not computed; for `lowest` > 0, y / 2^32·lowest
    /// is then a whole number, its own truncation (at 0, y may have bits
    /// below the window, which the truncation drops). (`lowest` a constant: the loop is
    /// specialized per value.)
    @inlinable @inline(__always)
    static func addDigits(
        _ column: UnsafePointer<Double>, rows: Range<Int>, rowLength: Int, skipped: Lanes, scale: SIMD4<Double>,
        from lowest: Int, to digitSums: UnsafeMutablePointer<SIMD4<Double>>
    ) {
        var digit5 = digitSums[5], digit4 = digitSums[4], digit3 = digitSums[3]
        var digit2 = digitSums[2], digit1 = digitSums[1], digit0 = digitSums[0]
        var address = column + rows.lowerBound * rowLength
        @inline(__always) func above(_ scaled: SIMD4<Double>, _ digit: Int) -> SIMD4<Double> {
            let shifted = scaled * digitWeight(digit)
            return digit == lowest && lowest > 0 ? shifted : shifted.rounded(.towardZero)
        }
        for _ in rows {
            let scaled = unsafeBitCast(loadLanes(address) & ~skipped, to: SIMD4<Double>.self) * scale
            // Independent truncations, so that the six digits do not wait on each other.
            let above5 = above(scaled, 5)
            let above4 = lowest <= 4 ? above(scaled, 4) : .zero, above3 = lowest <= 3 ? above(scaled, 3) : .zero
            let above2 = lowest <= 2 ? above(scaled, 2) : .zero, above1 = lowest <= 1 ? above(scaled, 1) : .zero
            let above0 = lowest == 0 ? above(scaled, 0) : .zero
            digit5 += above5
            if lowest <= 4 { digit4 += digit(above4, below: above5) }
            if lowest <= 3 { digit3 += digit(above3, below: above4) }
            if lowest <= 2 { digit2 += digit(above2, below: above3) }
            if lowest <= 1 { digit1 += digit(above1, below: above2) }
            if lowest == 0 { digit0 += digit(above0, below: above1) }
            address += rowLength
        }
        (digitSums[5], digitSums[4], digitSums[3]) = (digit5, digit4, digit3)
        (digitSums[2], digitSums[1], digitSums[0]) = (digit2, digit1, digit0)
    }

    /// 2^-32k, the weight that brings digit k to the units.
    @inlinable @inline(__always)
    static func digitWeight(_ digit: Int) -> SIMD4<Double> {
        switch digit {
        case 0: SIMD4(repeating: 1)
        case 1: SIMD4(repeating: 0x1p-32)
        case 2: SIMD4(repeating: 0x1p-64)
        case 3: SIMD4(repeating: 0x1p-96)
        case 4: SIMD4(repeating: 0x1p-128)
        default: SIMD4(repeating: 0x1p-160)
        }
    }

    /// The digit between two truncations T_k = trunc(y / 2^32k) and
    /// T_(k+1): T_k − T_(k+1)·2^32, which is below 2^32, so the fused
    /// multiply-add gives it exactly.
    @inlinable @inline(__always)
    static func digit(_ truncated: SIMD4<Double>, below higher: SIMD4<Double>) -> SIMD4<Double> {
        truncated.addingProduct(-higher, SIMD4(repeating: 0x1p32))
    }
}
