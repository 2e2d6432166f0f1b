import _InstanceNormShims

/// Adding a table of addends to several sums at once, one sum per vector
/// lane: the same words as `BinnedSum.add` of every addend, several times
/// faster, because the lanes share no state.
///
/// The scalar `add` spends most of its time deciding, addend by addend,
/// whether the top must rise and which limbs take the digits. Here the top
/// of each lane is raised at most once per tile of rows, to the bin of the
/// tile's largest addend (a top only rises, so the last tile leaves the
/// final top of the scalar sequence, the largest addend's bin), and every
/// addend's digits then come off in floating point, without a branch. Scaled by a power of two, so that
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
    /// `laneCount` of them). One pass over the table, in tiles of
    /// `digitTileRows` rows, four columns at a time down a tile (or down
    /// its copy, `copiesStrips`): first the tile's largest and smallest
    /// magnitudes per column (`prepareTile` raises the sums' tops to the
    /// largest, after moving the digits so far to the limbs), then its
    /// digits (six vectors of digit sums in registers), of which those
    /// below the tile's smallest magnitude's lowest bit are skipped
    /// (`lowestDigit`). A column's values in a tile that holds a NaN or an
    /// infinity, or whose window lies too low, take the scalar path (its
    /// flags are per addend).
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

    /// Columns `addTable` takes at a time: their scratch (nine vectors
    /// per four columns) stays near 40 KB, memory the allocator reuses,
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
        withUnsafeTemporaryAllocation(byteCount: digitTileRows * stripRowLength * MemoryLayout<Double>.stride, alignment: 64) {
            strip in
            withUnsafeTemporaryAllocation(of: SIMD4<Double>.self, capacity: blocks * (limbs + 1)) { floating in
                withUnsafeTemporaryAllocation(of: Lanes.self, capacity: 2 * blocks) { integers in
                    let windows = BlockWindows(
                        bases: integers.baseAddress!, inactive: integers.baseAddress! + blocks, scales: floating.baseAddress!,
                        digitSums: floating.baseAddress! + blocks)
                    addTiles(
                        table, rows: rows, rowLength: rowLength, columns: columns, windows: windows,
                        strip: strip.baseAddress!.bindMemory(to: Double.self, capacity: digitTileRows * stripRowLength),
                        to: sums)
                }
            }
        }
    }

    /// The body of `addTableColumns`, given the scratch of the windows and
    /// the strip (`digitTileRows` rows of `stripRowLength` values), into
    /// which each pair of blocks of a tile is first copied when the rows
    /// would share cache sets (`copiesStrips`).
    @inlinable @inline(__always)
    static func addTiles(
        _ table: UnsafePointer<Double>, rows: Int, rowLength: Int, columns: Range<Int>, windows: BlockWindows,
        strip: UnsafeMutablePointer<Double>, to sums: UnsafeMutablePointer<Int64>
    ) {
        let blocks = columns.count / laneCount
        // The first of the four columns and the first of the four sums of `block`.
        func firstColumn(_ block: Int) -> Int { columns.lowerBound + block * laneCount }
        func blockSums(_ block: Int) -> UnsafeMutablePointer<Int64> { sums + firstColumn(block) * words }
        windows.digitSums.initialize(repeating: .zero, count: limbs * blocks)
        for block in 0..<blocks { windows.update(block, from: blockSums(block)) }
        var rowsSinceFlush = 0
        for tileStart in stride(from: 0, to: rows, by: digitTileRows) {
            let tile = tileStart..<min(tileStart + digitTileRows, rows)
            if rowsSinceFlush + tile.count > digitFlushRows {
                for block in 0..<blocks { windows.flush(block, to: blockSums(block)) }
                rowsSinceFlush = 0
            }
            rowsSinceFlush += tile.count
            let nextTile = NextTileLines(
                table + columns.lowerBound, rows: tile.upperBound..<min(tile.upperBound + digitTileRows, rows),
                rowLength: rowLength, columns: columns.count, blocks: blocks)
            if copiesStrips(rowLength: rowLength) {
                var pair = (TileExtremes(), TileExtremes())
                for block in 0..<blocks {
                    nextTile.request(block)
                    if block % 2 == 0 {
                        pair = copyStrip(table + firstColumn(block), rows: tile, rowLength: rowLength,
                                         blocks: min(2, blocks - block), to: strip)
                    }
                    addTile(strip + (block % 2) * laneCount, rows: 0..<tile.count, rowLength: stripRowLength,
                            extremes: block % 2 == 0 ? pair.0 : pair.1, block: block, windows: windows, sums: blockSums(block))
                }
            } else {
                for block in 0..<blocks {
                    nextTile.request(block)
                    let column = table + firstColumn(block)
                    addTile(column, rows: tile, rowLength: rowLength, extremes: TileExtremes(column, rows: tile, rowLength: rowLength),
                            block: block, windows: windows, sums: blockSums(block))
                }
            }
        }
        for block in 0..<blocks { windows.flush(block, to: blockSums(block)) }
    }

    /// Whether `addTiles` copies each pair of blocks of a tile into its
    /// strip before their passes (`copyStrip`): when rows lie a multiple
    /// of 2 KiB apart. A tile's 32 rows then fall into at most two sets of
    /// an L1 cache whose sets repeat every 4 KiB (64 sets of 64-byte lines:
    /// 32 KiB and 8 ways, 48 KiB and 12), 16 rows to a set of 8 or 12
    /// ways, and each of a block's two passes reloaded its lines from L2.
    /// On a Zen 3 core (32 KiB, 8 ways), the exact sums' share of the
    /// small-instance backward's time at M = 4 (`perf` samples), walked in
    /// the table / copied: C = 256 (rows of 4 KiB) 0.57 / 0.35, C = 128
    /// 0.41 / 0.35, C = 64 0.31 / 0.32, C = 32 0.28 / 0.29, C = 96 0.28 /
    /// 0.32, C = 252 0.30 / 0.35: the copy pays where rows share sets, and
    /// costs its stores where they do not.
    @inlinable @inline(__always)
    static func copiesStrips(rowLength: Int) -> Bool { (rowLength * MemoryLayout<Double>.stride) % 2048 == 0 }

    /// Values per row of the strip of `addTiles`: two blocks, one 64-byte line.
    @usableFromInline static let stripRowLength = 2 * laneCount

    /// Copies `rows` of `blocks` (1 or 2) blocks of four columns from
    /// `first` into `strip`, row r at `strip + r·stripRowLength`, bit for
    /// bit, and returns each block's extremes (see `copiesStrips`).
    @inlinable @inline(__always)
    static func copyStrip(
        _ first: UnsafePointer<Double>, rows: Range<Int>, rowLength: Int, blocks: Int, to strip: UnsafeMutablePointer<Double>
    ) -> (TileExtremes, TileExtremes) {
        let source = UnsafeRawPointer(first + rows.lowerBound * rowLength)
        let rowBytes = rowLength * MemoryLayout<Double>.stride
        // `blocks` a constant in each copy of the loop: no test per row.
        return blocks == 2
            ? copyStrip(source, rows: rows.count, rowBytes: rowBytes, blocks: 2, to: UnsafeMutableRawPointer(strip))
            : copyStrip(source, rows: rows.count, rowBytes: rowBytes, blocks: 1, to: UnsafeMutableRawPointer(strip))
    }

    /// The loop of `copyStrip` over `rows` rows from `source`, `rowBytes` apart.
    @inlinable @inline(__always)
    static func copyStrip(
        _ source: UnsafeRawPointer, rows: Int, rowBytes: Int, blocks: Int, to target: UnsafeMutableRawPointer
    ) -> (TileExtremes, TileExtremes) {
        var extremes = (TileExtremes(), TileExtremes())
        let stripRowBytes = stripRowLength * MemoryLayout<Double>.stride
        var (from, to, remaining) = (source, target, rows)
        while remaining >= 2 {
            // Even and odd rows in two chains, so that no step waits on the one before.
            copyRow(from, to: to, blocks: blocks, chain: 0, &extremes)
            copyRow(from + rowBytes, to: to + stripRowBytes, blocks: blocks, chain: 1, &extremes)
            (from, to, remaining) = (from + 2 &* rowBytes, to + 2 &* stripRowBytes, remaining &- 2)
        }
        if remaining == 1 { copyRow(from, to: to, blocks: blocks, chain: 0, &extremes) }
        return extremes
    }

    /// One row of `copyStrip`.
    @inlinable @inline(__always)
    static func copyRow(
        _ source: UnsafeRawPointer, to target: UnsafeMutableRawPointer, blocks: Int, chain: Int,
        _ extremes: inout (TileExtremes, TileExtremes)
    ) {
        let left = source.loadUnaligned(as: Lanes.self)
        target.storeBytes(of: left, as: Lanes.self)
        extremes.0.take(left, chain: chain)
        guard blocks == 2 else { return }
        let right = source.loadUnaligned(fromByteOffset: MemoryLayout<Lanes>.stride, as: Lanes.self)
        target.storeBytes(of: right, toByteOffset: MemoryLayout<Lanes>.stride, as: Lanes.self)
        extremes.1.take(right, chain: chain)
    }

    /// One tile of four columns, given its extremes: the sums made ready
    /// for them (`prepareTile`), its digits.
    @inlinable @inline(__always)
    static func addTile(
        _ column: UnsafePointer<Double>, rows: Range<Int>, rowLength: Int, extremes: TileExtremes, block: Int,
        windows: BlockWindows, sums: UnsafeMutablePointer<Int64>
    ) {
        let (largest, smallest) = extremes.result
        let scalarLanes = prepareTile(largest, column, rows: rows, rowLength: rowLength, block: block, windows: windows, sums: sums)
        let skipped = windows.inactive[block] | scalarLanes
        let lowest = lowestDigit(smallest: smallest, windowBase: windows.bases[block], skipped: skipped)
        addDigits(column, rows: rows, rowLength: rowLength, skipped: skipped, scale: windows.scales[block], lowestDigit: lowest,
                  to: windows.digitSums + limbs * block)
    }

    /// The bit pattern of a quiet NaN: above every finite or infinite magnitude.
    @usableFromInline static let nanPattern = Int64(bitPattern: Double.nan.bitPattern)

    /// Before the digits of a tile of four columns are added: each sum
    /// counts the tile's addends, and raises its top to the bin of the
    /// tile's largest magnitude. A lane whose tile holds a NaN or an
    /// infinity, or whose window would lie so low that the scale 2^(1074 −
    /// base) is not a double (tops below about 2^-850), is added here by
    /// the scalar path, and returned as −1 for the digits to skip. Whenever
    /// a top is to move (or a scalar addition may move it), the block's
    /// digit sums go to the limbs first: they are relative to the old
    /// window.
    @inlinable @inline(__always)
    static func prepareTile(
        _ largest: Lanes, _ column: UnsafePointer<Double>, rows: Range<Int>, rowLength: Int, block: Int,
        windows: BlockWindows, sums: UnsafeMutablePointer<Int64>
    ) -> Lanes {
        var scalarLanes = Lanes(), moves = false
        for lane in 0..<laneCount where largest[lane] != 0 {
            let sum = sums + lane * words
            let top = max(sum[0], highBit(ofMagnitude: largest[lane]) >> 5)
            if largest[lane] &>> 52 == 0x7FF || (top - Int64(limbs - 1)) << 5 < lowestScaledBase {
                scalarLanes[lane] = -1
                moves = true
            } else if top != sum[0] {
                moves = true
            }
        }
        if moves {
            windows.flush(block, to: sums)
            for lane in 0..<laneCount where largest[lane] != 0 {
                let sum = sums + lane * words
                if scalarLanes[lane] != 0 {
                    for row in rows { add(column[row * rowLength + lane], to: sum) }
                } else {
                    raiseTop(of: sum, to: highBit(ofMagnitude: largest[lane]) >> 5)
                }
            }
            windows.update(block, from: sums)
        }
        for lane in 0..<laneCount where scalarLanes[lane] == 0 { sums[lane * words + 1] &+= Int64(rows.count) << countShift }
        return scalarLanes
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
    /// multiply-add gives it exactly. (The sign on the constant, not on
    /// T_(k+1): negating a vector is an instruction of its own.)
    @inlinable @inline(__always)
    static func digit(_ truncated: SIMD4<Double>, below higher: SIMD4<Double>) -> SIMD4<Double> {
        truncated.addingProduct(higher, SIMD4(repeating: -0x1p32))
    }
}

/// The cache lines of the next tile of `BinnedSum.addTableColumns` (its
/// rows, within the columns taken), asked for a share per block of the
/// current tile, in order along each row. A tile's pass reads four columns
/// down 32 rows a row apart, an order the hardware prefetchers do not
/// follow: without the requests each block's first loads waited on memory
/// (the table comes from the kernel's streaming stores).
@usableFromInline
struct NextTileLines {
    @usableFromInline let start: UnsafeRawPointer
    @usableFromInline let rowBytes, linesPerRow, lineCount, linesPerBlock: Int

    @inlinable
    init(_ firstColumn: UnsafePointer<Double>, rows: Range<Int>, rowLength: Int, columns: Int, blocks: Int) {
        start = UnsafeRawPointer(firstColumn + rows.lowerBound * rowLength)
        rowBytes = rowLength * MemoryLayout<Double>.stride
        // One more than the columns' own lines: they need not start on one.
        linesPerRow = (columns * MemoryLayout<Double>.stride + 63) / 64 + 1
        lineCount = rows.count * linesPerRow
        linesPerBlock = blocks > 0 ? (lineCount + blocks - 1) / blocks : 0
    }

    /// Asks for the share of `block`.
    @inlinable @inline(__always)
    func request(_ block: Int) {
        let first = block * linesPerBlock, count = min(linesPerBlock, lineCount - first)
        guard count > 0 else { return }
        var (row, lineInRow) = first.quotientAndRemainder(dividingBy: linesPerRow)
        var remaining = count
        while remaining > 0 {
            let lines = min(remaining, linesPerRow &- lineInRow), address = start + (row &* rowBytes &+ lineInRow &* 64)
            instnorm_prefetch_lines(address, address + lines &* 64)
            (row, lineInRow, remaining) = (row &+ 1, 0, remaining &- lines)
        }
    }
}

/// Per block of four columns of `BinnedSum.addTableColumns`, where its sums'
/// windows stand and the digits added since they last moved to the limbs.
@usableFromInline
struct BlockWindows {
    @usableFromInline typealias Lanes = BinnedSum.Lanes
    /// Per block, 32·(top − 5) per lane: the grid position of the window's lowest bit.
    @usableFromInline let bases: UnsafeMutablePointer<Lanes>
    /// Per block, −1 in the lanes without a window the digits can use (an
    /// empty sum, or one too low to scale), 0 in the others.
    @usableFromInline let inactive: UnsafeMutablePointer<Lanes>
    /// Per block, 2^(1074 − base) per lane (1 in the inactive lanes).
    @usableFromInline let scales: UnsafeMutablePointer<SIMD4<Double>>
    /// Per block, six vectors of digit sums, digit k of lane i at [6·block + k][i].
    @usableFromInline let digitSums: UnsafeMutablePointer<SIMD4<Double>>

    @inlinable init(
        bases: UnsafeMutablePointer<Lanes>, inactive: UnsafeMutablePointer<Lanes>, scales: UnsafeMutablePointer<SIMD4<Double>>,
        digitSums: UnsafeMutablePointer<SIMD4<Double>>
    ) {
        self.bases = bases
        self.inactive = inactive
        self.scales = scales
        self.digitSums = digitSums
    }

    /// Reads the windows of `block` from its four sums' tops.
    @inlinable @inline(__always)
    func update(_ block: Int, from sums: UnsafeMutablePointer<Int64>) {
        var base = Lanes(), unusable = Lanes()
        for lane in 0..<BinnedSum.laneCount {
            let top = sums[lane * BinnedSum.words]
            let windowBase = top == BinnedSum.emptyTop ? 0 : (top - Int64(BinnedSum.limbs - 1)) << 5
            if top == BinnedSum.emptyTop || windowBase < BinnedSum.lowestScaledBase {
                unusable[lane] = -1
            } else {
                base[lane] = windowBase
            }
        }
        (bases[block], inactive[block]) = (base, unusable)
        scales[block] = BinnedSum.scale(windowBase: base, skipped: unusable)
    }

    /// Adds the digit sums of `block` to the limbs of its sums (the
    /// inactive lanes' are zero) and clears them.
    @inlinable @inline(__always)
    func flush(_ block: Int, to sums: UnsafeMutablePointer<Int64>) {
        let digits = digitSums + BinnedSum.limbs * block
        for lane in 0..<BinnedSum.laneCount where inactive[block][lane] == 0 {
            for limb in 0..<BinnedSum.limbs {
                // A whole number below 2^53: exact as an integer.
                sums[lane * BinnedSum.words + 2 + limb] &+= Int64(digits[limb][lane])
            }
        }
        digits.update(repeating: .zero, count: BinnedSum.limbs)
    }
}

/// The largest and the smallest magnitude (bit patterns without the sign)
/// of four columns of a tile, in up to four chains of rows (each step
/// waits on the one before it in its chain): read in the table, every
/// fourth row a chain; as `BinnedSum.copyStrip` copies a strip, every
/// other row. The magnitudes are compared as doubles, which orders them as
/// their bit patterns do but for NaNs: `vmaxpd` and `vminpd` keep the
/// running extreme when the new value is a NaN, so the NaNs are seen
/// apart, and a lane that held one gets a NaN as its largest, as the
/// integer comparison gave it (NaN patterns lie above +∞'s). Its smallest
/// is then that of its other values (+∞ if none), which no one reads: the
/// lane takes the scalar path.
@usableFromInline
struct TileExtremes {
    @usableFromInline typealias Wide = SIMD4<Double>
    @usableFromInline var largest = (Wide.zero, Wide.zero, Wide.zero, Wide.zero)
    @usableFromInline var smallest = (
        Wide(repeating: .infinity), Wide(repeating: .infinity), Wide(repeating: .infinity), Wide(repeating: .infinity))
    @usableFromInline var unordered = SIMDMask<SIMD4<Int64>>()

    @inlinable init() {}

    /// The extremes of four columns over `rows`, read in the table.
    @inlinable @inline(__always)
    init(_ column: UnsafePointer<Double>, rows: Range<Int>, rowLength: Int) {
        var address = column + rows.lowerBound * rowLength
        @inline(__always) func pattern(_ row: Int) -> BinnedSum.Lanes { BinnedSum.loadLanes(address + row * rowLength) }
        var remaining = rows.count
        while remaining >= 4 {
            take(pattern(0), chain: 0)
            take(pattern(1), chain: 1)
            take(pattern(2), chain: 2)
            take(pattern(3), chain: 3)
            address += 4 * rowLength
            remaining -= 4
        }
        for row in 0..<remaining { take(pattern(row), chain: 0) }
    }

    /// Takes the row `pattern` (the values' bit patterns) into `chain` (0 ..< 4).
    @inlinable @inline(__always)
    mutating func take(_ pattern: BinnedSum.Lanes, chain: Int) {
        let value = unsafeBitCast(pattern & Int64.max, to: Wide.self)
        @inline(__always) func step(_ largest: inout Wide, _ smallest: inout Wide) {
            largest = instnorm_max_or_second_double4(value, largest)
            smallest = instnorm_min_or_second_double4(value, smallest)
        }
        switch chain {
        case 0: step(&largest.0, &smallest.0)
        case 1: step(&largest.1, &smallest.1)
        case 2: step(&largest.2, &smallest.2)
        default: step(&largest.3, &smallest.3)
        }
        unordered .|= value .!= value
    }

    /// The extremes, a NaN pattern as the largest of a lane that held a NaN.
    @inlinable var result: (largest: BinnedSum.Lanes, smallest: BinnedSum.Lanes) {
        let widest = instnorm_max_or_second_double4(
            instnorm_max_or_second_double4(largest.0, largest.1), instnorm_max_or_second_double4(largest.2, largest.3))
        let narrowest = instnorm_min_or_second_double4(
            instnorm_min_or_second_double4(smallest.0, smallest.1), instnorm_min_or_second_double4(smallest.2, smallest.3))
        return (unsafeBitCast(widest, to: BinnedSum.Lanes.self).replacing(
                    with: BinnedSum.Lanes(repeating: BinnedSum.nanPattern), where: unordered),
                unsafeBitCast(narrowest, to: BinnedSum.Lanes.self))
    }
}
