import ReproducibleSum
import Testing
import TestSupport

/// `add(rows:)`, the lane-wise path, against adding the same values one by
/// one: the words must be identical, whatever the values (every binade,
/// subnormals, signed zeros, NaN and infinities in some columns), the
/// number of columns (a partial vector at the end), the column range and
/// what the sums held before.
struct TableAddTests {
    /// A random double from anywhere in the finite range (or a special
    /// value now and then), so that columns mix tops, straddle the window
    /// and fall below it.
    func wildValue(_ generator: inout SeededGenerator, specials: Bool) -> Double {
        let kind = Int.random(in: 0..<40, using: &generator)
        let sign: Double = Bool.random(using: &generator) ? 1 : -1
        switch kind {
        case 0: return sign * 0
        case 1: return sign * Double.leastNonzeroMagnitude * Double(Int.random(in: 1..<1 << 20, using: &generator))
        case 2: return sign * Double.greatestFiniteMagnitude / Double(Int.random(in: 1..<4, using: &generator))
        case 3 where specials: return [Double.nan, .infinity, -.infinity][Int.random(in: 0..<3, using: &generator)]
        case 4...20:
            // Near 1: most addends of a column close together.
            return sign * Double(sign: .plus, exponent: Int.random(in: -30...30, using: &generator),
                                 significand: Double.random(in: 1..<2, using: &generator))
        default:
            return sign * Double(sign: .plus, exponent: Int.random(in: -1074...1023, using: &generator),
                                 significand: Double.random(in: 1..<2, using: &generator))
        }
    }

    func words(_ sums: ReproducibleSums) -> [Int64] { Array(sums.words) }

    /// Rows of 256 and 768 values (2 and 6 KiB apart) take the copied strips of
    /// `BinnedSum.copiesStrips`, the others are read in the table.
    @Test(arguments: [(1, 4), (3, 8), (50, 13), (200, 5), (0, 6), (17, 1), (3, 1031), (45, 256), (33, 768)])
    func tableGivesTheWordsOfOneByOneAdds(rows: Int, columns: Int) {
        for seed in 1...30 as ClosedRange<UInt64> {
            var generator = SeededGenerator(seed: seed)
            let table = (0..<rows * columns).map { _ in wildValue(&generator, specials: seed % 3 == 0) }
            let byTable = ReproducibleSums(count: columns), oneByOne = ReproducibleSums(count: columns)
            // Some sums start non-empty, above or below the table's values.
            for column in 0..<columns where column % 2 == 0 {
                let start = wildValue(&generator, specials: false)
                byTable.add(start, to: column)
                oneByOne.add(start, to: column)
            }
            table.withUnsafeBufferPointer { byTable.add(rows: $0) }
            for index in table.indices.shuffled(using: &generator) { oneByOne.add(table[index], to: index % columns) }
            #expect(words(byTable) == words(oneByOne), "seed \(seed), \(rows)x\(columns)")
            for column in 0..<columns {
                #expect(byTable.sum(at: column).bitPattern == oneByOne.sum(at: column).bitPattern)
            }
        }
    }

    /// Columns whose addends lie within a few binades of each other and
    /// have few significant bits, so that the lowest digits of every
    /// addend of four columns are zero and the lane path skips them (from
    /// none to all but the top one): still the words of one-by-one adds,
    /// here and where a column's start value lies far above or below.
    @Test func narrowColumnsSkipTheirZeroDigits() {
        for seed in 1...40 as ClosedRange<UInt64> {
            var generator = SeededGenerator(seed: seed)
            let rows = 45, columns = 13
            let bits = (0..<columns).map { _ in [1, 8, 24, 53].randomElement(using: &generator)! }
            let lowestExponent = (0..<columns).map { _ in Int.random(in: -300...300, using: &generator) }
            let spread = (0..<columns).map { _ in [0, 5, 40, 90].randomElement(using: &generator)! }
            let table = (0..<rows * columns).map { index -> Double in
                let column = index % columns
                let significand = Double(UInt64.random(in: 1 << (bits[column] - 1)..<1 << bits[column], using: &generator))
                let exponent = lowestExponent[column] + Int.random(in: 0...spread[column], using: &generator)
                let sign: Double = Bool.random(using: &generator) ? 1 : -1
                return sign * significand * Double(sign: .plus, exponent: exponent - bits[column], significand: 1)
            }
            let byTable = ReproducibleSums(count: columns), oneByOne = ReproducibleSums(count: columns)
            for column in 0..<columns where column % 3 == 0 {
                let start = Double(sign: .plus, exponent: lowestExponent[column] + (seed % 2 == 0 ? 150 : -150), significand: 1.5)
                byTable.add(start, to: column)
                oneByOne.add(start, to: column)
            }
            table.withUnsafeBufferPointer { byTable.add(rows: $0) }
            for index in table.indices.shuffled(using: &generator) { oneByOne.add(table[index], to: index % columns) }
            #expect(words(byTable) == words(oneByOne), "seed \(seed)")
        }
    }

    /// Columns whose magnitudes climb (or fall) row after row, by 1 to 40
    /// binades a row, with tiny addends (below the vector path's lowest
    /// window), a NaN or an infinity in one tile only: the table path
    /// raises a sum's top tile after tile (its digits so far moved to the
    /// limbs first) and takes the scalar path in some tiles but not others.
    /// The words of one-by-one adds all the same.
    @Test func topsThatRiseTileAfterTile() {
        let rows = 200, columns = 12
        for seed in 1...12 as ClosedRange<UInt64> {
            var generator = SeededGenerator(seed: seed)
            let table = (0..<rows * columns).map { index -> Double in
                let (row, column) = (index / columns, index % columns)
                let step = [1, 3, 11, 40][column % 4], rising = column % 8 < 4
                let exponent = -1074 + 40 + (rising ? row : rows - 1 - row) * step % 2000
                let sign: Double = Bool.random(using: &generator) ? 1 : -1
                let value = sign * Double(sign: .plus, exponent: exponent, significand: Double.random(in: 1..<2, using: &generator))
                switch (column, row) {
                case (9, 70): return .nan
                case (10, 100): return -.infinity
                case (11, 40..<72): return sign * .leastNonzeroMagnitude * Double(row)
                default: return value
                }
            }
            let byTable = ReproducibleSums(count: columns), oneByOne = ReproducibleSums(count: columns)
            table.withUnsafeBufferPointer { byTable.add(rows: $0) }
            for index in table.indices.shuffled(using: &generator) { oneByOne.add(table[index], to: index % columns) }
            #expect(words(byTable) == words(oneByOne), "seed \(seed)")
        }
    }

    /// Threads that share a table take disjoint column ranges; the ranges
    /// together give the words of the whole table at once, and a range
    /// leaves the other sums alone.
    /// (Rows of 256 values take the copied strips, with an odd number of
    /// blocks of four columns in the first and last range.)
    @Test(arguments: [(22, 5, 14), (256, 12, 17)])
    func columnRangesSplitTheTable(columns: Int, firstCut: Int, secondCut: Int) {
        var generator = SeededGenerator(seed: 7)
        let rows = 41
        let table = (0..<rows * columns).map { _ in wildValue(&generator, specials: true) }
        let whole = ReproducibleSums(count: columns), split = ReproducibleSums(count: columns)
        table.withUnsafeBufferPointer { values in
            whole.add(rows: values)
            split.add(rows: values, columns: 0..<firstCut)
            let untouched = firstCut * ReproducibleSums.wordsPerSum
            #expect(Array(words(split)[untouched...]) == Array(words(ReproducibleSums(count: columns))[untouched...]))
            split.add(rows: values, columns: firstCut..<secondCut)
            split.add(rows: values, columns: secondCut..<columns)
        }
        #expect(words(whole) == words(split))
    }

    /// A column whose values cancel exactly over 80 binades sums to 0.0,
    /// and one with a NaN is NaN while its neighbours in the same vector
    /// stay finite.
    @Test func closedForms() {
        var generator = SeededGenerator(seed: 11)
        let rows = 64
        var table = [Double](repeating: 0, count: rows * 4)
        for row in 0..<rows / 2 {
            let value = Double(sign: .plus, exponent: Int.random(in: -40...40, using: &generator),
                               significand: Double.random(in: 1..<2, using: &generator))
            table[row * 4] = value
            table[(rows - 1 - row) * 4] = -value
            for column in 1..<4 { table[row * 4 + column] = 1; table[(rows - 1 - row) * 4 + column] = 0.5 }
        }
        table[5 * 4 + 2] = .nan
        let sums = ReproducibleSums(count: 4)
        table.withUnsafeBufferPointer { sums.add(rows: $0) }
        #expect(sums.sum(at: 0).bitPattern == (0.0).bitPattern)
        #expect(sums.sum(at: 1) == 48)
        #expect(sums.sum(at: 2).isNaN)
        #expect(sums.sum(at: 3) == 48)
        #expect(sums.addendCount(at: 3) == rows)
    }

    /// More rows than digit sums in doubles can take exactly: a digit of
    /// all ones (the largest a digit gets) in every row, so that a sum kept
    /// in doubles past 2^21 rows would round, whenever the lane path moves
    /// its digits to the limbs. (A fixed count, not one taken from the
    /// kernel's flush interval.)
    @Test func rowsPastADigitFlush() {
        let rows = (1 << 21) + 5, columns = 4
        var generator = SeededGenerator(seed: 13)
        let allOnes = Double(sign: .plus, exponent: 60, significand: 2 - 0x1p-52)
        var table = [Double](repeating: 0, count: rows * columns)
        for row in 0..<rows {
            table[row * columns] = allOnes
            table[row * columns + 1] = -allOnes * 0x1p-30
            table[row * columns + 2] = Double(sign: .plus, exponent: Int.random(in: -20...20, using: &generator),
                                              significand: Double.random(in: 1..<2, using: &generator))
            table[row * columns + 3] = row % 2 == 0 ? allOnes : -0x1p-40
        }
        let byTable = ReproducibleSums(count: columns), oneByOne = ReproducibleSums(count: columns)
        table.withUnsafeBufferPointer { byTable.add(rows: $0) }
        for (index, value) in table.enumerated() { oneByOne.add(value, to: index % columns) }
        #expect(words(byTable) == words(oneByOne))
        #expect(byTable.sum(at: 0) == allOnes * Double(rows))
    }
}
