/// `count` sums of `Double`s whose results do not depend on the order in
/// which their addends arrive: the same bits however the addends are split
/// over threads or ranks and whatever tree combines the parts.
///
/// Each sum holds its addends exactly as integers on a fixed grid (eight
/// `Int64` words per sum, see `BinnedSum`), so adding is integer addition,
/// which is associative; the result is rounded once, at the end:
///
///     sums.add(x, to: i)          exact (above the window, see below)
///     sums.add(rows: table)       exact: value j of every row to sum j
///     sums.add(other)             exact: two partial sums merged
///     sums.sum(at: i)             Σ of every addend of sum i, rounded once
///
/// Guarantees:
/// - **Correctly rounded** whenever every nonzero addend of a sum is at
///   least 2^-108 times the largest in magnitude: the result is the exact
///   sum rounded to the nearest double, ties to even.
/// - Below that, each small addend loses its bits more than 160 to 191
///   binades below the largest addend's leading bit (truncated toward
///   zero), the same bits for every order: the result is still
///   reproducible, and what is lost is at most (number of addends)·2^-160
///   times the largest addend, plus the final rounding.
/// - NaN and infinities as in plain floating-point addition: a NaN addend,
///   or +∞ and −∞ together, give NaN; one kind of infinity gives it back.
///   An exact sum beyond the largest double rounds to ±∞.
/// - At most 2^31 addends per sum (each limb must not overflow); `sum(at:)`
///   stops the program beyond that.
///
/// The words are what crosses ranks: `Communicator.allreduce(_:)` (module
/// MPI) combines every rank's `ReproducibleSums` with one `MPI_Allreduce` of
/// `8·count` words, whatever the number of ranks or addends.
///
/// Not thread-safe: give each thread its own, then merge them.
public final class ReproducibleSums: @unchecked Sendable {
    /// The number of independent sums.
    public let count: Int
    /// `wordsPerSum` words per sum, sum after sum (64-byte aligned): the
    /// exact state of every sum, what a collective sends.
    public let words: UnsafeMutableBufferPointer<Int64>

    /// The words of one sum: a top bin, flags and a count, six 32-bit bins
    /// with 31 bits of carry room each.
    public static let wordsPerSum = BinnedSum.words

    /// `count` empty sums (each 0 until something is added).
    public init(count: Int) {
        precondition(count >= 0, "a negative number of sums")
        let raw = UnsafeMutableRawPointer.allocate(
            byteCount: max(count, 1) * BinnedSum.words * MemoryLayout<Int64>.stride, alignment: 64)
        words = UnsafeMutableBufferPointer(
            start: raw.bindMemory(to: Int64.self, capacity: count * BinnedSum.words), count: count * BinnedSum.words)
        self.count = count
        removeAll()
    }

    deinit { UnsafeMutableRawPointer(words.baseAddress!).deallocate() }

    /// Makes every sum empty again, keeping the storage.
    public func removeAll() {
        for index in 0..<count { BinnedSum.clear(words.baseAddress! + index * BinnedSum.words) }
    }

    /// Adds `value` to sum `index`.
    @inlinable
    public func add(_ value: Double, to index: Int) {
        precondition(index >= 0 && index < count, "sum \(index) of \(count)")
        BinnedSum.add(value, to: words.baseAddress! + index * BinnedSum.words)
    }

    /// Adds `values[i]` to sum i, for every i (`values.count == count`).
    public func add(_ values: UnsafeBufferPointer<Double>) {
        precondition(values.count == count, "\(values.count) values for \(count) sums")
        for (index, value) in values.enumerated() { BinnedSum.add(value, to: words.baseAddress! + index * BinnedSum.words) }
    }

    /// Adds a table of addends: `table` holds rows of `count` values, and
    /// value j of every row goes to sum j. With `columns`, only the sums in
    /// that range take their values (threads that share a table take
    /// disjoint ranges: each sum is its own cache line).
    ///
    /// The same words as adding the values one by one, in any order, and
    /// about five times faster (1 ns a value here): the sums of four
    /// columns are worked in the lanes of one vector, their digits taken in
    /// floating point (see `BinnedSum.addTable`).
    public func add(rows table: UnsafeBufferPointer<Double>, columns: Range<Int>? = nil) {
        precondition(table.count % max(count, 1) == 0, "a table of \(table.count) values does not hold rows of \(count)")
        let columns = columns ?? 0..<count
        precondition(columns.lowerBound >= 0 && columns.upperBound <= count, "columns \(columns) of \(count) sums")
        guard let base = table.baseAddress, count > 0 else { return }
        let rows = table.count / count
        let vectorEnd = columns.lowerBound + columns.count / BinnedSum.laneCount * BinnedSum.laneCount
        BinnedSum.addTable(base, rows: rows, rowLength: count, columns: columns.lowerBound..<vectorEnd, to: words.baseAddress!)
        for row in 0..<rows {
            for column in vectorEnd..<columns.upperBound { add(base[row * count + column], to: column) }
        }
    }

    /// Adds every sum of `other` to the same sum of this one: afterwards this
    /// holds the addends of both, exactly as if each had been added here.
    public func add(_ other: ReproducibleSums) {
        precondition(other.count == count, "merging \(other.count) sums into \(count)")
        Self.combine(UnsafePointer(other.words.baseAddress!), into: words.baseAddress!, sums: count)
    }

    /// Sum `index`, rounded once to the nearest double.
    public func sum(at index: Int) -> Double {
        precondition(index >= 0 && index < count, "sum \(index) of \(count)")
        return BinnedSum.rounded(words.baseAddress! + index * BinnedSum.words)
    }

    /// Sum `index`, rounded once to the nearest value of `T`: for `Float`
    /// and `Float16`, not the nearest double rounded again, which can land
    /// on the wrong side of a tie.
    public func sum<T: BinaryFloatingPoint>(at index: Int, as type: T.Type) -> T {
        precondition(index >= 0 && index < count, "sum \(index) of \(count)")
        return BinnedSum.rounded(words.baseAddress! + index * BinnedSum.words, as: type)
    }

    /// Every sum, rounded once each.
    public func sums() -> [Double] { (0..<count).map(sum(at:)) }

    /// Writes every sum, rounded once each, into `results` (`count` values).
    public func round(into results: UnsafeMutableBufferPointer<Double>) {
        precondition(results.count == count, "\(results.count) results for \(count) sums")
        for index in 0..<count { results[index] = sum(at: index) }
    }

    /// How many addends sum `index` has taken, on every rank together once
    /// reduced.
    public func addendCount(at index: Int) -> Int {
        BinnedSum.addendCount(words.baseAddress! + index * BinnedSum.words)
    }

    /// target ← target + source for `sums` consecutive sums in the word
    /// layout of `words`: the combining function of a reduction (an
    /// `MPI_Op`), commutative and associative.
    public static func combine(_ source: UnsafePointer<Int64>, into target: UnsafeMutablePointer<Int64>, sums: Int) {
        for index in 0..<sums {
            BinnedSum.merge(source + index * BinnedSum.words, into: target + index * BinnedSum.words)
        }
    }
}
