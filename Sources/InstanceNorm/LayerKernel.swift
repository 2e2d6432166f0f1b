import _InstanceNormShims

/// LayerNorm over a batch (N, …, D1…DK) held by one process: every row of
/// D = D1·…·DK trailing values is normalized with its own statistics
/// (those of `InstanceKernel.moments`) and γ, β of D entries each:
///
///     y_d = γ_d·x̂_d + β_d
///     A = Σ_d γ_d·dy_d       S = Σ_d γ_d·dy_d·x̂_d
///     dx_d = r·(γ_d·dy_d − A/D − x̂_d·S/D)
///     dβ_d = Σ_rows dy_d     dγ_d = Σ_rows dy_d·x̂_d
///
/// The parameter gradients are summed per sample first (in `Double`, row
/// after row), so that a sample's share does not depend on who computed
/// it: those per-sample sums are the addends a reduction across ranks
/// needs. Workers take whole rows in the forward and whole samples in the
/// backward (no more workers than samples there).
@usableFromInline
final class LayerBatch<T: InstanceNormScalar>: @unchecked Sendable {
    @usableFromInline let x: SharedBuffer<T>
    @usableFromInline let gamma: SharedBuffer<T>
    @usableFromInline let beta: SharedBuffer<T>
    @usableFromInline let samples: Int
    @usableFromInline let rowsPerSample: Int
    @usableFromInline let rowLength: Int
    @usableFromInline let streaming: Bool
    /// γ = 1 and β = 0 when the caller has none.
    @usableFromInline let defaults: UnsafeMutableBufferPointer<T>?

    @inlinable
    init(x: UnsafeBufferPointer<T>, gamma: UnsafeBufferPointer<T>?, beta: UnsafeBufferPointer<T>?, shape: NormShape, streaming: Bool) {
        let length = shape.rowLength
        if gamma == nil || beta == nil {
            let defaults = UnsafeMutableBufferPointer<T>.allocate(capacity: 2 * length)
            defaults[0..<length].initialize(repeating: 1)
            defaults[length...].initialize(repeating: 0)
            self.defaults = defaults
        } else {
            defaults = nil
        }
        self.x = SharedBuffer(x)
        self.gamma = gamma.map { SharedBuffer($0) } ?? SharedBuffer(start: defaults!.baseAddress)
        self.beta = beta.map { SharedBuffer($0) } ?? SharedBuffer(start: defaults!.baseAddress! + length)
        samples = shape.batch
        rowsPerSample = shape.rowsPerSample
        rowLength = length
        self.streaming = streaming
    }

    deinit { defaults?.deallocate() }

    @inlinable var rows: Int { samples * rowsPerSample }

    @inlinable func row(_ base: SharedBuffer<T>, _ row: Int) -> UnsafeMutablePointer<T> { base.base + row * rowLength }
}

// MARK: - Forward

extension LayerBatch {
    @inlinable
    func forward(y: UnsafeMutableBufferPointer<T>, statistics: UnsafeMutableBufferPointer<InstanceStatistics>?, eps: Double, threads: Int) {
        let output = SharedBuffer(y), saved = statistics.map { SharedBuffer($0) }
        let split = WorkSplit(units: rows, length: rowLength, threads: threads)
        let write = { @Sendable (row: Int, range: Range<Int>, rowStatistics: InstanceStatistics) in
            writeElementwise(
                self.row(output, row), range, streaming: self.streaming,
                LayerNormalizeOperation(
                    x: self.row(self.x, row), gamma: self.gamma.base, beta: self.beta.base, statistics: rowStatistics))
        }
        if split.splitsInstances {
            let moments = split.splitMoments { UnsafePointer(self.row(self.x, $0)) }
            let perRow = moments.map { InstanceStatistics(mean: $0.mean, variance: $0.variance, eps: eps) }
            for (row, rowStatistics) in perRow.enumerated() { saved?.base[row] = rowStatistics }
            split.run { worker in split.forEachPiece(of: worker) { write($0, $1, perRow[$0]) } }
        } else {
            split.run { worker in
                let rows = split.instances(of: worker), length = self.rowLength
                if self.streaming && FusedForward.applies(toRunsOf: length, T.self, weightsPerValue: true) {
                    return fusedForward(runs: rows, length: length, x: UnsafePointer(self.x.base), y: output.base, eps: eps) {
                        row, rowStatistics in
                        saved?.base[row] = rowStatistics
                        return WholeRunOutput(
                            LayerNormalizeOperation(x: self.row(self.x, row), gamma: self.gamma.base, beta: self.beta.base, statistics: rowStatistics),
                            length: length)
                    }
                }
                for row in rows {
                    let moments = InstanceKernel.moments(of: UnsafeBufferPointer(start: self.row(self.x, row), count: length))
                    let rowStatistics = InstanceStatistics(mean: moments.mean, variance: moments.variance, eps: eps)
                    saved?.base[row] = rowStatistics
                    write(row, 0..<length, rowStatistics)
                }
            }
        }
        if streaming { instnorm_store_fence() }
    }
}

/// y = ((x − μ_hi)·r − μ_lo·r)·γ + β, γ and β per position in the row.
@usableFromInline
struct LayerNormalizeOperation<Scalar: InstanceNormScalar>: ElementwiseOperation {
    @usableFromInline let x, gamma, beta: UnsafePointer<Scalar>
    @usableFromInline let meanHigh, invstd, lowTerm: Scalar.Compute
    @usableFromInline let meanVector, invstdVector, lowTermVector: Scalar.Vector

    @inlinable
    init(x: UnsafePointer<Scalar>, gamma: UnsafePointer<Scalar>, beta: UnsafePointer<Scalar>, statistics: InstanceStatistics) {
        self.x = x
        self.gamma = gamma
        self.beta = beta
        let (high, low) = statistics.splitMean(as: Scalar.self)
        meanHigh = high
        invstd = Scalar.Compute(statistics.invstd)
        lowTerm = Scalar.Compute(-low * statistics.invstd)
        meanVector = Scalar.Vector(repeating: meanHigh)
        invstdVector = Scalar.Vector(repeating: invstd)
        lowTermVector = Scalar.Vector(repeating: lowTerm)
    }

    @inlinable @inline(__always)
    func vector(at index: Int) -> Scalar.Vector {
        let xHat = lowTermVector.addingProduct(loadVector(x, index) - meanVector, invstdVector)
        return loadVector(beta, index).addingProduct(xHat, loadVector(gamma, index))
    }

    @inlinable @inline(__always)
    func scalar(at index: Int) -> Scalar.Compute {
        let xHat = lowTerm.addingProduct(x[index].computed - meanHigh, invstd)
        return beta[index].computed.addingProduct(xHat, gamma[index].computed)
    }
}

// MARK: - Backward

/// The sums of one LayerNorm backward: per row (A, S), per sample and
/// position (Σ dy, Σ dy·x̂).
@usableFromInline
final class LayerBackward<T: InstanceNormScalar>: @unchecked Sendable {
    @usableFromInline let batch: LayerBatch<T>
    @usableFromInline let dx, dy: SharedBuffer<T>
    @usableFromInline let statistics: UnsafeBufferPointer<InstanceStatistics>
    /// (A, S) per row.
    @usableFromInline let rowSums: UnsafeMutableBufferPointer<(Double, Double)>
    /// (N, D, 2): per sample and position, Σ dy and Σ dy·x̂ over the sample's rows.
    @usableFromInline let parameterSums: UnsafeMutableBufferPointer<Double>
    @usableFromInline let ownsParameterSums: Bool

    /// Where one-row samples add their shares straight into dγ, dβ instead
    /// of the table (see `LayerBatch.addsSharesInLine`).
    @usableFromInline let inLineTotals: ShareTotals?

    /// `inLineTotals`: dγ, dβ (zeroed) for one-row samples to add their
    /// shares into, in sample order, with no table (`parameterSums` nil).
    @inlinable
    init(batch: LayerBatch<T>, dx: UnsafeMutableBufferPointer<T>, dy: UnsafeBufferPointer<T>,
         statistics: UnsafeBufferPointer<InstanceStatistics>, parameterSums: UnsafeMutableBufferPointer<Double>?,
         inLineTotals: ShareTotals? = nil) {
        self.batch = batch
        self.dx = SharedBuffer(dx)
        self.dy = SharedBuffer(dy)
        self.statistics = statistics
        self.inLineTotals = inLineTotals
        rowSums = .allocate(capacity: batch.rows)
        rowSums.initialize(repeating: (0, 0))
        ownsParameterSums = parameterSums == nil
        self.parameterSums = parameterSums ?? .allocate(capacity: inLineTotals == nil ? 2 * batch.samples * batch.rowLength : 0)
    }

    deinit {
        rowSums.deallocate()
        if ownsParameterSums { parameterSums.deallocate() }
    }

    /// A, S of every row of `sample` and its (Σ dy, Σ dy·x̂) per position,
    /// rows in order; dx of each row below `firstDeferred` too. The column sums
    /// are planar (2·D: all Σ dy, then all Σ dy·x̂, so that they add in
    /// vectors): each block of `layerColumnBlock` rows adds up in the compute
    /// precision, in the loops of the sums into `block` (2·D, see
    /// `LayerColumnsInLoop`) or once its rows are summed (`addColumnSums`,
    /// `block` nil), and is widened into `columns`, in `Double`; at the end
    /// they are stored interleaved, (D, 2).
    @inlinable func sums(
        ofSample sample: Int, dxBelow firstDeferred: Int, columns: UnsafeMutablePointer<Double>,
        block: UnsafeMutablePointer<T.Compute>?
    ) {
        if batch.rowsPerSample == 1 {
            // Its columns' room, 2·D ≥ 2·B doubles whenever a row holds a vector, stages the shares.
            return oneRowSample(sample, writesDx: sample < firstDeferred, staging: columns)
        }
        let length = batch.rowLength, rows = sample * batch.rowsPerSample..<(sample + 1) * batch.rowsPerSample
        columns.update(repeating: 0, count: 2 * length)
        if let block {
            block.update(repeating: 0, count: 2 * length)
            sums(of: rows, dxBelow: firstDeferred, columnsOf: { self.columns(of: $0, addingTo: block) }) { _ in
                self.flush(block, into: columns)
            }
        } else {
            sums(of: rows, dxBelow: firstDeferred, columnsOf: columnsApart(of:)) { self.addColumnSums(of: $0, into: columns) }
        }
        let shares = parameterSums.baseAddress! + 2 * sample * length
        for position in 0..<length {
            shares[2 * position] = columns[position]
            shares[2 * position + 1] = columns[length + position]
        }
    }

    /// The row sums of a sample's `rows` in order (and their dx below
    /// `firstDeferred`), each row's column contributions going to
    /// `columnsOf(row)`; `blockDone` after each block of `layerColumnBlock`
    /// rows and after the last.
    @inlinable @inline(__always)
    func sums<Columns: ColumnContributions>(
        of rows: Range<Int>, dxBelow firstDeferred: Int, columnsOf: (Int) -> Columns, blockDone: (Range<Int>) -> Void
    ) where Columns.Scalar == T {
        let pairs = pairsRows
        var waiting = rows.lowerBound..<rows.lowerBound  // summed, their dx not yet written (the fused order)
        var row = rows.lowerBound, blockStart = rows.lowerBound
        while row < rows.upperBound {
            // Pairs start at even rows of the sample, so a block of rows (even) ends with a pair.
            let summed = row..<(pairs && row + 1 < rows.upperBound ? row + 2 : row + 1)
            sums(of: summed, writingDxOf: waiting, columnsOf: columnsOf)
            let undeferred = summed.lowerBound..<max(summed.lowerBound, min(summed.upperBound, firstDeferred))
            waiting = fusesRows ? undeferred : summed.lowerBound..<summed.lowerBound
            if !fusesRows { for next in undeferred { inputGradient(next, 0..<batch.rowLength) } }
            let last = summed.upperBound - 1
            if (last - rows.lowerBound) % layerColumnBlock == layerColumnBlock - 1 || last == rows.upperBound - 1 {
                blockDone(blockStart..<last + 1)
                blockStart = last + 1
            }
            row = summed.upperBound
        }
        for previous in waiting { inputGradient(previous, 0..<batch.rowLength) }
    }

    /// The sums of one or two rows, and dx of the rows `waiting` for it
    /// (none, one or two): two of each in one loop where they can
    /// (`sharedLinePairSums`), else the last waiting row's dx along the first
    /// row's sums and any other dx before.
    @inlinable @inline(__always)
    func sums<Columns: ColumnContributions>(
        of summed: Range<Int>, writingDxOf waiting: Range<Int>, columnsOf: (Int) -> Columns
    ) where Columns.Scalar == T {
        if summed.count == 2 && waiting.count == 2 {
            return sharedLinePairSums(of: summed.lowerBound, writingDxOf: waiting.lowerBound,
                                      columns: (columnsOf(summed.lowerBound), columnsOf(summed.lowerBound + 1)))
        }
        for previous in waiting.dropLast() { inputGradient(previous, 0..<batch.rowLength) }
        for next in summed {
            if let previous = waiting.last, next == summed.lowerBound {
                rowSumsWritingDx(of: previous, sumsOf: next, columns: columnsOf(next))
            } else {
                var none = NoCompanion()
                rowSums(next, into: columnsOf(next), alongside: &none)
            }
        }
    }

    /// `row`'s centre, its column sums left to `addColumnSums`.
    @inlinable func columnsApart(of row: Int) -> ColumnsApart<T> { ColumnsApart(center: normalization(of: row).center) }

    /// What `row` adds to the column sums in `block`, about its μ_hi.
    @inlinable func columns(of row: Int, addingTo block: UnsafeMutablePointer<T.Compute>) -> LayerColumns<T> {
        LayerColumns(block: block, length: batch.rowLength, row: normalization(of: row))
    }

    /// A, S of `row`, its column contributions into `columns`.
    @inlinable @inline(__always)
    func rowSums<Companion: SumsCompanion, Columns: ColumnContributions>(
        _ row: Int, into columns: Columns, alongside companion: inout Companion
    ) where Columns.Scalar == T {
        let gradients = batch.row(dy, row), values = batch.row(batch.x, row), gamma = batch.gamma.base
        let (sumA, centered) = chunkedSums(batch.rowLength) { chunk in
            // A local copy: through the capture the optimizer would reload
            // the companion after every store.
            var local = companion
            defer { companion = local }
            return weightedGradientChunkSums(
                gradients, values, gamma, chunk, center: columns.center, columns: columns, alongside: &local)
        }
        keepRowSums(row, sumA: sumA, centered: centered)
    }

    /// x̂ of `row` from its statistics: about μ_hi, r and −μ_lo·r rounded to the compute precision.
    @inlinable func normalization(of row: Int) -> RowNormalization<T> {
        let rowStatistics = statistics[row]
        let (meanHigh, meanLow) = rowStatistics.splitMean(as: T.self)
        return RowNormalization<T>(
            center: meanHigh, invstd: T.Compute(rowStatistics.invstd), lowTerm: T.Compute(-meanLow * rowStatistics.invstd))
    }

    /// `sums(ofSample:)` of a sample of one row (x of (N, D)): the row's A,
    /// S and its shares written straight into the table (`RowShares`, the
    /// values `addColumnSums` and the columns of `sums` would leave there; or
    /// added into dγ, dβ, `inLineTotals`), then its dx unless deferred, the
    /// row still in cache. Through the columns, every row paid for clearing,
    /// widening and copying 2·D values.
    @inlinable func oneRowSample(_ row: Int, writesDx: Bool, staging: UnsafeMutablePointer<Double>) {
        var none = NoCompanion()
        if let inLineTotals {
            rowSums(row, into: RowShares<T, ShareTotals>(inLineTotals, staging: staging, row: normalization(of: row)),
                    alongside: &none)
        } else {
            let table = ShareTable(parameterSums.baseAddress! + 2 * row * batch.rowLength)
            rowSums(row, into: RowShares<T, ShareTable>(table, staging: staging, row: normalization(of: row)), alongside: &none)
        }
        if writesDx { inputGradient(row, 0..<batch.rowLength) }
    }

    /// A and S = r·(Σ γ·dy·(x − μ_hi) − μ_lo·A) of `row`, from A and the centred sum.
    @inlinable func keepRowSums(_ row: Int, sumA: Double, centered: Double) {
        let rowStatistics = statistics[row], meanLow = rowStatistics.splitMean(as: T.self).low
        rowSums[row] = (sumA, rowStatistics.invstd * (centered - meanLow * sumA))
    }

    /// Whether rows take the fused order: the dx of row i streamed out in
    /// the loop that sums row i + 1, with that row's lines asked into L2
    /// ahead of the loads (see `BackwardBatch.sumsAndDx`). Written in order,
    /// each row's dx waits for its sums and a row's read and the previous
    /// row's streaming stores do not overlap on one core. The arithmetic
    /// is that of the plain order: the same bits.
    @inlinable var fusesRows: Bool { batch.streaming }

    /// A and S of `next` (its column contributions into `columns`) while dx
    /// of `previous` (already summed) is streamed out, two vectors per step;
    /// the rest of dx after.
    @inlinable func rowSumsWritingDx<Columns: ColumnContributions>(
        of previous: Int, sumsOf next: Int, columns: Columns
    ) where Columns.Scalar == T {
        let length = batch.rowLength, gradient = gradientOperation(of: previous)
        let out = batch.row(dx, previous)
        let beforeBoundary = streamingStart(out, 0..<length)
        if beforeBoundary == 0 { return sharedLineSums(of: next, writingDx: gradient, to: out, columns: columns) }
        writeElementwise(out, 0..<beforeBoundary, streaming: true, gradient)
        var writer = StreamingWriter(
            out: out, gradient, written: beforeBoundary, count: length,
            prefetching: (UnsafeRawPointer(batch.row(dy, next)), UnsafeRawPointer(batch.row(batch.x, next))))
        rowSums(next, into: columns, alongside: &writer)
        writeElementwise(out, writer.written..<length, streaming: true, gradient)
    }

    /// `rowSumsWritingDx` when dx's row starts on a line: one line of every
    /// row per step, the sums of `next` and dx of the previous row at the
    /// same index, so that γ is loaded once for both. The sums' arithmetic
    /// is `weightedGradientChunkSums`'s and dx's `LayerGradientOperation`'s:
    /// the same bits as the other orders.
    @inlinable func sharedLineSums<Columns: ColumnContributions>(
        of next: Int, writingDx gradient: LayerGradientOperation<T>, to out: UnsafeMutablePointer<T>, columns: Columns
    ) where Columns.Scalar == T {
        let length = batch.rowLength, lanes = T.Vector.scalarCount
        let meanHigh = columns.center
        let gradients = batch.row(dy, next), values = batch.row(batch.x, next), gamma = batch.gamma.base
        let ahead = fusedPrefetchTargets(dy: UnsafeRawPointer(gradients), x: UnsafeRawPointer(values))
        var written = 0
        let (sumA, centered) = chunkedSums(length) { chunk in
            // Formed here, not captured: a captured vector is read back from memory in halves.
            let centerVector = T.Vector(repeating: meanHigh)
            var sums = WeightedLineSums<T>(), index = chunk.lowerBound
            while index + lanes <= chunk.upperBound {
                // A vector is at most one line (64 bytes).
                let offset = index &* MemoryLayout<T>.stride
                instnorm_prefetch(ahead.dy + offset)
                instnorm_prefetch(ahead.x + offset)
                let weights = loadVector(gamma, index)
                sums.add(weights: weights, gradient: loadVector(gradients, index),
                         centered: loadVector(values, index) - centerVector, columns: columns, at: index)
                T.streamStore(gradient.vector(at: index, gamma: weights), to: out + index)
                index += lanes
            }
            // Every chunk but the row's last is whole vectors (`reductionChunk`), so dx is written up to here.
            written = index
            return weightedGradientTail(gradients, values, gamma, index..<chunk.upperBound, center: meanHigh, columns: columns,
                                        sums: sums.widened)
        }
        keepRowSums(next, sumA: sumA, centered: centered)
        writeElementwise(out, written..<length, streaming: true, gradient)
    }

    /// Whether the fused order takes rows two at a time
    /// (`sharedLinePairSums`): where this machine gains by it
    /// (`LayerRowPairs`) and every row of dx starts on a line.
    @inlinable var pairsRows: Bool {
        fusesRows && LayerRowPairs.taken(for: T.self) && (batch.rowLength * MemoryLayout<T>.stride) % 64 == 0
            && streamingStart(dx.base, 0..<batch.rowLength) == 0
    }

    /// `sharedLineSums` of rows `next` and `next + 1` at once, writing dx of
    /// rows `previous` and `previous + 1`: γ is loaded once for four rows.
    /// Each row's A and S add up chunk by chunk as in `chunkedSums`, and dx
    /// is `LayerGradientOperation`'s: the same bits as one row at a time.
    @inlinable func sharedLinePairSums<Columns: ColumnContributions>(
        of next: Int, writingDxOf previous: Int, columns: (first: Columns, second: Columns)
    ) where Columns.Scalar == T {
        let length = batch.rowLength
        let pair = FusedRowPair(
            gamma: batch.gamma.base, first: columns.first, second: columns.second,
            firstDy: batch.row(dy, next), firstX: batch.row(batch.x, next),
            secondDy: batch.row(dy, next + 1), secondX: batch.row(batch.x, next + 1),
            firstGradient: gradientOperation(of: previous), secondGradient: gradientOperation(of: previous + 1),
            firstOut: batch.row(dx, previous), secondOut: batch.row(dx, previous + 1),
            // Each row's stream asks for the lines of the row a pair later.
            thirdDy: batch.row(dy, next + 2), thirdX: batch.row(batch.x, next + 2))
        var second = (0.0, 0.0), written = 0
        // The second row's totals add up chunk by chunk beside the first's, in the same order.
        let first = chunkedSums(length) { chunk in
            let partial = pair.sums(chunk)
            second = (second.0 + partial.second.0, second.1 + partial.second.1)
            // Every chunk but the row's last is whole vectors (`reductionChunk`), so dx is written up to here.
            written = partial.written
            return partial.first
        }
        keepRowSums(next, sumA: first.0, centered: first.1)
        keepRowSums(next + 1, sumA: second.0, centered: second.1)
        writeElementwise(pair.firstOut, written..<length, streaming: true, pair.firstGradient)
        writeElementwise(pair.secondOut, written..<length, streaming: true, pair.secondGradient)
    }

    /// columns += block, widened exactly, in `Double`; block ← 0: the end of
    /// a block of rows whose column sums the loops of the sums added up
    /// (`LayerColumnsInLoop`).
    @inlinable func flush(_ block: UnsafeMutablePointer<T.Compute>, into columns: UnsafeMutablePointer<Double>) {
        let count = 2 * batch.rowLength, lanes = T.Vector.scalarCount
        var index = 0
        // Each vector cleared as it is read: one pass over the block, not two.
        while index + lanes <= count {
            T.Compute.addWidened(loadVector(block, index), to: columns + index)
            storeVector(T.Vector(), block, index)
            index += lanes
        }
        while index < count {
            columns[index] += block[index].widened
            block[index] = 0
            index += 1
        }
    }

    /// The column sums of a block of summed rows (at most
    /// `layerColumnBlock`), added into `columns` (2·D, planar), each
    /// position's in the compute precision from 0, row after row, and then
    /// widened exactly:
    ///
    ///     columns[d] += Σ_rows dy_d     columns[D + d] += Σ_rows dy_d·x̂_d
    ///
    /// x̂ as `LayerNormalizeOperation` forms it. A pass of their own over rows
    /// the sums have just read (in L2), with the accumulators in registers:
    /// added in the loops of the sums instead, a block of 2·D accumulators
    /// was loaded and stored with every row, and those stores, queued behind
    /// the streaming stores of dx, held back the loads of the next lines
    /// on the Zen 3 machine (where `LayerColumnsInLoop` keeps this pass).
    @inlinable func addColumnSums(of block: Range<Int>, into columns: UnsafeMutablePointer<Double>) {
        let length = batch.rowLength, lanes = T.Vector.scalarCount
        withUnsafeTemporaryAllocation(of: ColumnRow<T>.self, capacity: block.count) { rows in
            for (slot, row) in block.enumerated() {
                rows.initializeElement(at: slot, to: ColumnRow(
                    dy: batch.row(dy, row), x: batch.row(batch.x, row), normalization: normalization(of: row)))
            }
            let rows = UnsafeBufferPointer(rows)
            var index = 0
            // Two vectors a step: four chains of additions, each waiting on the row before.
            while index + 2 * lanes <= length {
                var first = ColumnSums<T>(), second = ColumnSums<T>()
                for row in rows {
                    first.add(row, at: index)
                    second.add(row, at: index + lanes)
                }
                first.addWidened(to: columns, length: length, at: index)
                second.addWidened(to: columns, length: length, at: index + lanes)
                index += 2 * lanes
            }
            if index + lanes <= length {
                var sums = ColumnSums<T>()
                for row in rows { sums.add(row, at: index) }
                sums.addWidened(to: columns, length: length, at: index)
                index += lanes
            }
            while index < length {
                var sumDy = T.Compute.zero, sumDyXHat = T.Compute.zero
                for row in rows {
                    let gradient = row.dy[index].computed
                    sumDy += gradient
                    sumDyXHat += gradient * row.normalization.xHat(row.x[index].computed - row.normalization.center)
                }
                columns[index] += sumDy.widened
                columns[length + index] += sumDyXHat.widened
                index += 1
            }
        }
    }

    /// dx over `range` of one row, about Ā = A/D rounded to the compute
    /// precision, so that γ·dy − Ā is 0 where γ·dy equals its row's mean
    /// (a row of one value gives dx = 0 exactly):
    ///
    ///     p = −r²·S/D     q = r·(Ā − A/D) − p·μ_lo     dx = r·(γ·dy − Ā) + p·(x − μ_hi) + q
    @inlinable func inputGradient(_ row: Int, _ range: Range<Int>) {
        writeElementwise(batch.row(dx, row), range, streaming: batch.streaming, gradientOperation(of: row))
    }

    /// The per-value dx of one summed row, indexed from the row's start.
    @inlinable func gradientOperation(of row: Int) -> LayerGradientOperation<T> {
        let rowStatistics = statistics[row], invstd = rowStatistics.invstd
        let (meanHigh, meanLow) = rowStatistics.splitMean(as: T.self)
        let count = Double(batch.rowLength), (sumA, sumS) = rowSums[row]
        let meanWeighted = T.Compute(sumA / count)
        let centeredScale = -invstd * invstd * sumS / count
        let offset = invstd * (meanWeighted.widened - sumA / count) - centeredScale * meanLow
        return LayerGradientOperation(
            dy: batch.row(dy, row), x: batch.row(batch.x, row), gamma: batch.gamma.base, meanHigh: meanHigh,
            meanWeighted: meanWeighted, invstd: T.Compute(invstd), centeredScale: T.Compute(centeredScale),
            offset: T.Compute(offset))
    }
}

/// Whether LayerNorm's fused backward takes rows two at a time
/// (`LayerBackward.sharedLinePairSums`) or one at a time: the same bits
/// either way, so a question of speed alone, and machines answer it
/// differently. Float32, backward time, (8,1024,4096) and (64,196,768):
/// - on the 2-vCPU Intel Xeon of 2026-12-06 (48 KiB L1d), pairs took 0.88
///   to 0.96 of the one-row loop's time on (8,1024,4096) at one thread and
///   0.94 at two, and were level on (64,196,768);
/// - on the 2-vCPU AMD EPYC Zen 3 of 2026-12-07 (32 KiB L1d), one row at a
///   time took 0.76 and 0.85 of the pairs' time at one thread, 0.90 and
///   0.97 at two (medians of alternating pairs of runs); float64 0.68,
///   float16 0.31 and 0.75. There the pair loop's two rows of sums and of
///   dx constants outnumber the vector registers and spill.
/// (Both while the loops still added the column sums; with those in a pass
/// of their own, `addColumnSums`, pairs took 1.22× the one-row loop's time
/// on both shapes on the Zen 3, 6 alternating pairs of runs.)
/// So pairs are taken for float32 where the level-1 data cache holds
/// 48 KiB or more. `INSTNORM_LAYER_ROW_PAIRS=1` (or `0`) in the
/// environment takes them (or not) in every precision instead: for
/// machines measured otherwise, and for the tests, which run both orders on
/// every machine.
public enum LayerRowPairs {
    @usableFromInline static let chosen = environmentSwitch("INSTNORM_LAYER_ROW_PAIRS")

    @usableFromInline static let wideLevelOne = (StorePolicy.levelOneDataCacheBytes() ?? 0) >= 48 << 10

    /// Whether the fused backward of storage type `T` takes rows in pairs
    /// (where they start on lines).
    @inlinable public static func taken<T>(for type: T.Type) -> Bool { chosen ?? measuredFaster(for: type) }

    /// Where the fused backward's wider choices were measured faster: float32
    /// with a level-1 data cache of 48 KiB or more (see also `LayerColumnsInLoop`).
    @inlinable static func measuredFaster<T>(for _: T.Type) -> Bool { T.self == Float.self && wideLevelOne }
}

/// Whether LayerNorm's fused backward adds each row's column sums (Σ dy,
/// Σ dy·x̂ per position) into a block of 2·D accumulators in the loops of
/// the row sums (`LayerColumns`), or in a pass of their own over each
/// block of `layerColumnBlock` summed rows, with the accumulators in
/// registers (`LayerBackward.addColumnSums`). The same additions in the
/// same order either way: a question of speed alone.
/// - On the 2-vCPU AMD EPYC Zen 3 of 2026-12-07 (32 KiB L1d, 512 KiB L2),
///   the pass took 0.75–0.85 of the backward's time on (64,196,768) and
///   0.91 on (8,1024,4000), level on (8,1024,4096): the block's stores,
///   queued behind dx's streaming stores, held back the next lines' loads.
/// - On the 2-vCPU Intel Xeon of the same night (48 KiB L1d, 2 MiB L2),
///   the loops took 0.91 and 0.83 of the pass's time on (8,1024,4096) at
///   one and two threads, 0.91 and 0.92 on (64,196,768) (6 alternating
///   rounds each, float32).
/// So the loops keep them for float32 where the level-1 data cache holds
/// 48 KiB or more (where `LayerRowPairs` takes pairs).
/// `INSTNORM_LAYER_COLUMNS_IN_LOOP=1` (or `0`) decides instead, in every
/// precision: for machines measured otherwise, and for the tests, which
/// run both on every machine.
public enum LayerColumnsInLoop {
    @usableFromInline static let chosen = environmentSwitch("INSTNORM_LAYER_COLUMNS_IN_LOOP")

    /// Whether the fused backward of storage type `T` adds the column sums in its loops.
    @inlinable public static func taken<T>(for type: T.Type) -> Bool { chosen ?? LayerRowPairs.measuredFaster(for: type) }
}

/// Rows whose column sums (LayerNorm's per-position Σ dy, Σ dy·x̂) add up
/// in the compute precision before they are widened to `Double`: the
/// `Double` additions, which cost four times the vector work, happen once
/// per block, and a block of 8 keeps each sum within 8 roundings of the
/// compute precision. Public for checks that model the kernel's roundings.
public let layerColumnBlock = 8

/// Where one row's column contributions to dβ, dγ (dy and dy·x̂ at each
/// position, x̂ = (x − μ_hi)·r + (−μ_lo·r) in the compute precision) go: a
/// block of rows' sums (`LayerColumns`), a one-row sample's shares
/// (`RowShares`), or nowhere, left to `LayerBackward.addColumnSums`
/// (`ColumnsApart`).
@usableFromInline
protocol ColumnContributions {
    associatedtype Scalar: InstanceNormScalar
    /// μ_hi, which the row's values are centred on before they reach `add`.
    var center: Scalar.Compute { get }
    /// Adds dy and dy·x̂ at `index`, given dy and x − μ_hi there.
    func add(_ gradient: Scalar.Vector, centered: Scalar.Vector, at index: Int)
    func add(_ gradient: Scalar.Compute, centered: Scalar.Compute, at index: Int)
    /// `add` of this row's vector, then of `other`'s (the next row of the
    /// same block): the same additions in the same order.
    func add(_ gradient: Scalar.Vector, centered: Scalar.Vector, then other: Self, _ otherGradient: Scalar.Vector,
             centered otherCentered: Scalar.Vector, at index: Int)
}

extension ColumnContributions {
    @inlinable @inline(__always)
    func add(_ gradient: Scalar.Vector, centered: Scalar.Vector, then other: Self, _ otherGradient: Scalar.Vector,
             centered otherCentered: Scalar.Vector, at index: Int) {
        add(gradient, centered: centered, at: index)
        other.add(otherGradient, centered: otherCentered, at: index)
    }
}

/// x̂ = (x − μ_hi)·r + (−μ_lo·r) of one row in the compute precision,
/// from x − μ_hi, as a vector or a scalar (the same expression).
@usableFromInline
struct RowNormalization<Scalar: InstanceNormScalar> {
    /// μ_hi, which the row's values are centred on.
    @usableFromInline let center: Scalar.Compute
    @usableFromInline let invstd, lowTerm: Scalar.Compute

    @inlinable init(center: Scalar.Compute, invstd: Scalar.Compute, lowTerm: Scalar.Compute) {
        self.center = center
        self.invstd = invstd
        self.lowTerm = lowTerm
    }

    // Splats formed where they are used, not stored: a stored vector of 16
    // floats is two registers' worth of loads the optimizer cannot tell
    // apart, where a splat of a scalar is one register.
    @inlinable @inline(__always)
    func xHat(_ centered: Scalar.Vector) -> Scalar.Vector {
        Scalar.Vector(repeating: lowTerm).addingProduct(centered, Scalar.Vector(repeating: invstd))
    }

    @inlinable @inline(__always)
    func xHat(_ centered: Scalar.Compute) -> Scalar.Compute { lowTerm.addingProduct(centered, invstd) }
}

/// A one-row sample's shares, (Σ dy, Σ dy·x̂) over its row at each
/// position: 0 + dy and 0 + dy·x̂ in the compute precision (−0 becomes
/// +0), widened, which is what a block of one row adds to columns of zeros
/// (`LayerBackward.addColumnSums`): the same bits. `Sink` keeps them
/// (`ShareTable`) or adds them up (`ShareTotals`).
@usableFromInline
struct RowShares<Scalar: InstanceNormScalar, Sink: ShareSink>: ColumnContributions {
    @usableFromInline let sink: Sink
    /// 2·B doubles for a vector's widened lanes on their way to the sink.
    @usableFromInline let staging: UnsafeMutablePointer<Double>
    @usableFromInline let row: RowNormalization<Scalar>

    @inlinable
    init(_ sink: Sink, staging: UnsafeMutablePointer<Double>, row: RowNormalization<Scalar>) {
        self.sink = sink
        self.staging = staging
        self.row = row
    }

    @inlinable var center: Scalar.Compute { row.center }

    @inlinable @inline(__always)
    func add(_ gradient: Scalar.Vector, centered: Scalar.Vector, at index: Int) {
        typealias C = Scalar.Compute
        let lanes = Scalar.Vector.scalarCount
        storeLanes(C.widen(Scalar.Vector() + gradient), staging)
        storeLanes(C.widen(Scalar.Vector() + gradient * row.xHat(centered)), staging + lanes)
        for first in stride(from: 0, to: lanes, by: 4) {
            sink.take(lanesAt(staging + first), lanesAt(staging + (lanes &+ first)), at: index &+ first)
        }
    }

    @inlinable @inline(__always)
    func add(_ gradient: Scalar.Compute, centered: Scalar.Compute, at index: Int) {
        sink.take((Scalar.Compute.zero + gradient).widened, (Scalar.Compute.zero + gradient * row.xHat(centered)).widened,
                  at: index)
    }
}

/// Where `RowShares` puts a one-row sample's shares (Σ dy first, Σ dy·x̂ second).
@usableFromInline
protocol ShareSink {
    /// The pairs of the four positions from `position` on.
    func take(_ first: SIMD4<Double>, _ second: SIMD4<Double>, at position: Int)
    func take(_ first: Double, _ second: Double, at position: Int)
}

/// dβ, dγ themselves (`LayerBackward.inLineTotals`): each share added as
/// `addInSampleOrder` adds a row of the table, so that samples taken in
/// order give its bits.
@usableFromInline
struct ShareTotals: ShareSink {
    @usableFromInline let dgamma, dbeta: UnsafeMutablePointer<Double>

    @inlinable init(dgamma: UnsafeMutablePointer<Double>, dbeta: UnsafeMutablePointer<Double>) {
        self.dgamma = dgamma
        self.dbeta = dbeta
    }

    @inlinable @inline(__always)
    func take(_ sumDy: SIMD4<Double>, _ sumDyXHat: SIMD4<Double>, at position: Int) {
        storeLanes(lanesAt(dbeta + position) + sumDy, dbeta + position)
        storeLanes(lanesAt(dgamma + position) + sumDyXHat, dgamma + position)
    }

    @inlinable @inline(__always)
    func take(_ sumDy: Double, _ sumDyXHat: Double, at position: Int) {
        dbeta[position] += sumDy
        dgamma[position] += sumDyXHat
    }
}

/// A block of LayerNorm's column sums and what one row adds to it: dy and
/// dy·x̂, x̂ = (x − μ_hi)·r + (−μ_lo·r) in the compute precision
/// (`LayerColumnsInLoop`).
@usableFromInline
struct LayerColumns<Scalar: InstanceNormScalar>: ColumnContributions {
    @usableFromInline let block: UnsafeMutablePointer<Scalar.Compute>
    @usableFromInline let length: Int
    @usableFromInline let row: RowNormalization<Scalar>

    @inlinable init(block: UnsafeMutablePointer<Scalar.Compute>, length: Int, row: RowNormalization<Scalar>) {
        self.block = block
        self.length = length
        self.row = row
    }

    @inlinable var center: Scalar.Compute { row.center }

    @inlinable @inline(__always)
    func add(_ gradient: Scalar.Vector, centered: Scalar.Vector, at index: Int) {
        storeVector(loadVector(block, index) + gradient, block, index)
        storeVector(loadVector(block, length + index) + gradient * row.xHat(centered), block, length + index)
    }

    @inlinable @inline(__always)
    func add(_ gradient: Scalar.Compute, centered: Scalar.Compute, at index: Int) {
        block[index] += gradient
        block[length + index] += gradient * row.xHat(centered)
    }

    /// Both rows with one load and one store of each accumulator.
    @inlinable @inline(__always)
    func add(_ gradient: Scalar.Vector, centered: Scalar.Vector, then other: Self, _ otherGradient: Scalar.Vector,
             centered otherCentered: Scalar.Vector, at index: Int) {
        storeVector(loadVector(block, index) + gradient + otherGradient, block, index)
        storeVector(loadVector(block, length + index) + gradient * row.xHat(centered) + otherGradient * other.row.xHat(otherCentered),
                    block, length + index)
    }
}

/// A row's centre, its column contributions left to a pass of their own
/// (`LayerBackward.addColumnSums`).
@usableFromInline
struct ColumnsApart<Scalar: InstanceNormScalar>: ColumnContributions {
    @usableFromInline let center: Scalar.Compute

    @inlinable init(center: Scalar.Compute) { self.center = center }

    @inlinable @inline(__always)
    func add(_ gradient: Scalar.Vector, centered: Scalar.Vector, at index: Int) {}

    @inlinable @inline(__always)
    func add(_ gradient: Scalar.Compute, centered: Scalar.Compute, at index: Int) {}
}

/// One row of a block whose column sums `LayerBackward.addColumnSums` adds up.
@usableFromInline
struct ColumnRow<Scalar: InstanceNormScalar> {
    @usableFromInline let dy, x: UnsafePointer<Scalar>
    @usableFromInline let normalization: RowNormalization<Scalar>

    @inlinable init(dy: UnsafePointer<Scalar>, x: UnsafePointer<Scalar>, normalization: RowNormalization<Scalar>) {
        self.dy = dy
        self.x = x
        self.normalization = normalization
    }
}

/// Σ dy and Σ dy·x̂ of one vector of positions over a block's rows, in the
/// compute precision, from 0.
@usableFromInline
struct ColumnSums<Scalar: InstanceNormScalar> {
    @usableFromInline var sumDy = Scalar.Vector(), sumDyXHat = Scalar.Vector()

    @inlinable init() {}

    @inlinable @inline(__always)
    mutating func add(_ row: ColumnRow<Scalar>, at index: Int) {
        let gradient = loadVector(row.dy, index)
        let centered = loadVector(row.x, index) - Scalar.Vector(repeating: row.normalization.center)
        sumDy += gradient
        sumDyXHat += gradient * row.normalization.xHat(centered)
    }

    /// columns[index…] += Σ dy and columns[length + index…] += Σ dy·x̂, widened exactly.
    @inlinable @inline(__always)
    func addWidened(to columns: UnsafeMutablePointer<Double>, length: Int, at index: Int) {
        Scalar.Compute.addWidened(sumDy, to: columns + index)
        Scalar.Compute.addWidened(sumDyXHat, to: columns + length + index)
    }
}

/// Two rows summed in one loop and the two rows of dx written in it
/// (`LayerBackward.sharedLinePairSums`).
@usableFromInline
struct FusedRowPair<T: InstanceNormScalar, Columns: ColumnContributions> where Columns.Scalar == T {
    @usableFromInline let gamma: UnsafePointer<T>
    @usableFromInline let first, second: Columns
    @usableFromInline let firstDy, firstX, secondDy, secondX: UnsafePointer<T>
    @usableFromInline let firstGradient, secondGradient: LayerGradientOperation<T>
    @usableFromInline let firstOut, secondOut: UnsafeMutablePointer<T>
    /// dy's and x's lines to ask for, at index 0, for each row.
    @usableFromInline let firstAhead, secondAhead: (dy: UnsafeRawPointer, x: UnsafeRawPointer)

    @inlinable
    init(gamma: UnsafePointer<T>, first: Columns, second: Columns,
         firstDy: UnsafePointer<T>, firstX: UnsafePointer<T>, secondDy: UnsafePointer<T>, secondX: UnsafePointer<T>,
         firstGradient: LayerGradientOperation<T>, secondGradient: LayerGradientOperation<T>,
         firstOut: UnsafeMutablePointer<T>, secondOut: UnsafeMutablePointer<T>,
         thirdDy: UnsafePointer<T>, thirdX: UnsafePointer<T>) {
        self.gamma = gamma
        (self.first, self.second) = (first, second)
        (self.firstDy, self.firstX, self.secondDy, self.secondX) = (firstDy, firstX, secondDy, secondX)
        (self.firstGradient, self.secondGradient) = (firstGradient, secondGradient)
        (self.firstOut, self.secondOut) = (firstOut, secondOut)
        firstAhead = fusedPrefetchTargets(dy: UnsafeRawPointer(secondDy), x: UnsafeRawPointer(secondX))
        secondAhead = fusedPrefetchTargets(dy: UnsafeRawPointer(thirdDy), x: UnsafeRawPointer(thirdX))
    }

    /// Each row's Σ γ·dy and Σ γ·dy·(x − μ_hi) over `chunk`, its column
    /// sums added where `Columns` keeps them, and dx written over the
    /// chunk's whole vectors, which end at `written`.
    @inlinable @inline(__always)
    func sums(_ chunk: Range<Int>) -> (first: (Double, Double), second: (Double, Double), written: Int) {
        let lanes = T.Vector.scalarCount
        // Formed here, not stored: a stored vector is read back from memory in halves.
        let firstCenter = T.Vector(repeating: first.center), secondCenter = T.Vector(repeating: second.center)
        var firstSums = WeightedLineSums<T>(), secondSums = WeightedLineSums<T>(), index = chunk.lowerBound
        while index + lanes <= chunk.upperBound {
            let offset = index &* MemoryLayout<T>.stride
            instnorm_prefetch(firstAhead.dy + offset)
            instnorm_prefetch(firstAhead.x + offset)
            instnorm_prefetch(secondAhead.dy + offset)
            instnorm_prefetch(secondAhead.x + offset)
            let weights = loadVector(gamma, index)
            let firstGradients = loadVector(firstDy, index), firstCentered = loadVector(firstX, index) - firstCenter
            let secondGradients = loadVector(secondDy, index), secondCentered = loadVector(secondX, index) - secondCenter
            firstSums.add(weights: weights, gradient: firstGradients, centered: firstCentered)
            secondSums.add(weights: weights, gradient: secondGradients, centered: secondCentered)
            first.add(firstGradients, centered: firstCentered, then: second, secondGradients, centered: secondCentered, at: index)
            T.streamStore(firstGradient.vector(at: index, gamma: weights), to: firstOut + index)
            T.streamStore(secondGradient.vector(at: index, gamma: weights), to: secondOut + index)
            index += lanes
        }
        let tail = index..<chunk.upperBound
        return (weightedGradientTail(firstDy, firstX, gamma, tail, center: first.center, columns: first, sums: firstSums.widened),
                weightedGradientTail(secondDy, secondX, gamma, tail, center: second.center, columns: second, sums: secondSums.widened),
                index)
    }
}

/// The lane sums of Σ γ·dy and Σ γ·dy·(x − center) over a chunk of a row,
/// one line at a time (every order of the backward adds them so, for the
/// same bits), with the line's column sums on the way. One pair of
/// accumulators: the loops wait on memory, not on the additions' latency.
@usableFromInline
struct WeightedLineSums<T: InstanceNormScalar> {
    @usableFromInline var weighted = T.Vector(), product = T.Vector()

    @inlinable init() {}

    @inlinable @inline(__always)
    mutating func add<Columns: ColumnContributions>(
        weights: T.Vector, gradient: T.Vector, centered: T.Vector, columns: Columns, at index: Int
    ) where Columns.Scalar == T {
        add(weights: weights, gradient: gradient, centered: centered)
        columns.add(gradient, centered: centered, at: index)
    }

    /// The sums alone, the column sums left to the caller.
    @inlinable @inline(__always)
    mutating func add(weights: T.Vector, gradient: T.Vector, centered: T.Vector) {
        let weightedGradient = weights * gradient
        weighted += weightedGradient
        product.addProduct(weightedGradient, centered)
    }

    /// Both sums across lanes, in `Double`.
    @inlinable var widened: (Double, Double) { (T.Compute.widenedSum(weighted), T.Compute.widenedSum(product)) }
}

/// Σ γ·dy and Σ γ·dy·(x − center) over one chunk of a row, and the row's
/// column sums added to `columns` on the way; `companion` steps along (the
/// fused order writes the previous row's dx there, see `SumsCompanion`).
@inlinable @inline(__always)
func weightedGradientChunkSums<T: InstanceNormScalar, Companion: SumsCompanion, Columns: ColumnContributions>(
    _ dy: UnsafePointer<T>, _ x: UnsafePointer<T>, _ gamma: UnsafePointer<T>, _ range: Range<Int>, center: T.Compute,
    columns: Columns, alongside companion: inout Companion
) -> (Double, Double) where Columns.Scalar == T {
    let lanes = T.Vector.scalarCount
    let centerVector = T.Vector(repeating: center)
    var sums = WeightedLineSums<T>()
    func addLine(at line: Int) {
        sums.add(weights: loadVector(gamma, line), gradient: loadVector(dy, line), centered: loadVector(x, line) - centerVector,
                 columns: columns, at: line)
    }
    var index = range.lowerBound
    while index + 2 * lanes <= range.upperBound {
        companion.step(at: index)
        addLine(at: index)
        addLine(at: index + lanes)
        index += 2 * lanes
    }
    while index + lanes <= range.upperBound {
        addLine(at: index)
        index += lanes
    }
    return weightedGradientTail(dy, x, gamma, index..<range.upperBound, center: center, columns: columns, sums: sums.widened)
}

/// The values of a chunk past its last whole vector, one by one, added to
/// the vector part's `sums`.
@inlinable @inline(__always)
func weightedGradientTail<T: InstanceNormScalar, Columns: ColumnContributions>(
    _ dy: UnsafePointer<T>, _ x: UnsafePointer<T>, _ gamma: UnsafePointer<T>, _ range: Range<Int>, center: T.Compute,
    columns: Columns, sums: (Double, Double)
) -> (Double, Double) where Columns.Scalar == T {
    var (sumA, centered) = sums
    for index in range {
        let gradient = gamma[index].computed * dy[index].computed, deviation = x[index].computed - center
        sumA += gradient.widened
        centered += (gradient * deviation).widened
        columns.add(dy[index].computed, centered: deviation, at: index)
    }
    return (sumA, centered)
}

/// dx = r·(γ·dy − Ā) + p·(x − μ_hi) + q (see `LayerBackward.inputGradient`);
/// γ·dy is rounded as in the row's sums.
@usableFromInline
struct LayerGradientOperation<Scalar: InstanceNormScalar>: ElementwiseOperation {
    @usableFromInline let dy, x, gamma: UnsafePointer<Scalar>
    @usableFromInline let meanHigh, meanWeighted, invstd, centeredScale, offset: Scalar.Compute
    // Splats formed where they are used (see `RowNormalization`).
    @inlinable var meanVector: Scalar.Vector { Scalar.Vector(repeating: meanHigh) }
    @inlinable var meanWeightedVector: Scalar.Vector { Scalar.Vector(repeating: meanWeighted) }
    @inlinable var invstdVector: Scalar.Vector { Scalar.Vector(repeating: invstd) }
    @inlinable var centeredScaleVector: Scalar.Vector { Scalar.Vector(repeating: centeredScale) }
    @inlinable var offsetVector: Scalar.Vector { Scalar.Vector(repeating: offset) }

    @inlinable
    init(dy: UnsafePointer<Scalar>, x: UnsafePointer<Scalar>, gamma: UnsafePointer<Scalar>, meanHigh: Scalar.Compute,
         meanWeighted: Scalar.Compute, invstd: Scalar.Compute, centeredScale: Scalar.Compute, offset: Scalar.Compute) {
        self.dy = dy
        self.x = x
        self.gamma = gamma
        self.meanHigh = meanHigh
        self.meanWeighted = meanWeighted
        self.invstd = invstd
        self.centeredScale = centeredScale
        self.offset = offset
    }

    @inlinable @inline(__always)
    func vector(at index: Int) -> Scalar.Vector { vector(at: index, gamma: loadVector(gamma, index)) }

    /// dx at `index` given γ there, loaded by the caller.
    @inlinable @inline(__always)
    func vector(at index: Int, gamma weights: Scalar.Vector) -> Scalar.Vector {
        let weighted = weights * loadVector(dy, index) - meanWeightedVector
        return offsetVector.addingProduct(centeredScaleVector, loadVector(x, index) - meanVector)
            .addingProduct(invstdVector, weighted)
    }

    @inlinable @inline(__always)
    func scalar(at index: Int) -> Scalar.Compute {
        let weighted = gamma[index].computed * dy[index].computed - meanWeighted
        return offset.addingProduct(centeredScale, x[index].computed - meanHigh).addingProduct(invstd, weighted)
    }
}

extension LayerBatch {
    /// Backward of `forward`: dx; per sample and position (Σ dy, Σ dy·x̂)
    /// into `parameterSums` (N, D, 2) before `overlap.sumsReady`; dγ, dβ
    /// their sums in sample order, unless `combines` is false (dγ, dβ are
    /// then zeros: the caller adds the table up itself). Without a table
    /// to fill, one-row samples may skip it (`addsSharesInLine`).
    @inlinable
    func backward(
        dx: UnsafeMutableBufferPointer<T>, dgamma: UnsafeMutableBufferPointer<Double>, dbeta: UnsafeMutableBufferPointer<Double>,
        dy: UnsafeBufferPointer<T>, statistics: UnsafeBufferPointer<InstanceStatistics>,
        parameterSums: UnsafeMutableBufferPointer<Double>?, combines: Bool = true, threads: Int, overlap: BackwardOverlap?
    ) {
        // Whole samples per worker: a sample's sums are added row after row by one thread.
        let split = WorkSplit(units: samples, length: rowsPerSample * rowLength, threads: min(threads, max(samples, 1)))
        let inLine = combines && parameterSums == nil && addsSharesInLine(workers: split.workers)
        dgamma.update(repeating: 0)
        dbeta.update(repeating: 0)
        let work = LayerBackward(
            batch: self, dx: dx, dy: dy, statistics: statistics, parameterSums: parameterSums,
            inLineTotals: inLine ? ShareTotals(dgamma: dgamma.baseAddress!, dbeta: dbeta.baseAddress!) : nil)
        let tails = deferredRows(split, overlap)
        let length = rowLength
        let inLoop = LayerColumnsInLoop.taken(for: T.self)
        split.run { worker in
            let columns = UnsafeMutablePointer<Double>.allocate(capacity: 2 * length)
            let block = inLoop ? UnsafeMutablePointer<T.Compute>.allocate(capacity: 2 * length) : nil
            defer { columns.deallocate(); block?.deallocate() }
            for sample in split.instances(of: worker) {
                work.sums(ofSample: sample, dxBelow: tails[worker].lowerBound, columns: columns, block: block)
            }
        }
        // Each position's shares in sample order, as the instance kernels add theirs.
        if combines && !inLine && samples > 0 {
            addInSampleOrder(work.parameterSums.baseAddress!, samples: samples, channels: rowLength,
                             dgamma: dgamma.baseAddress!, dbeta: dbeta.baseAddress!, threads: split.workers)
        }
        overlap?.sumsReady()
        if rows > 0 {
            let rowSplit = WorkSplit(units: rows, length: length, threads: split.workers)
            precondition(rowSplit.workers == split.workers && !rowSplit.splitsInstances, "one worker per run of rows")
            rowSplit.writeDeferred(tails: tails, overlap: overlap) { row, range in work.inputGradient(row, range) }
        }
        if streaming { instnorm_store_fence() }
    }

    /// Whether a backward whose dγ, dβ nobody needs as a table adds each
    /// one-row sample's shares straight into them (`ShareTotals`): one
    /// worker, taking the samples in order, adds them in `addInSampleOrder`'s
    /// order. The table is N·D·2 doubles, four times a float32 x of
    /// (N, D): at (64, 196·768), LayerNorm over whole samples, 154 MB
    /// written, faulted in and read back every call, where the backward's
    /// tensors move 116 MB.
    @inlinable func addsSharesInLine(workers: Int) -> Bool { rowsPerSample == 1 && workers == 1 }

    /// Per worker, the last rows of its samples whose dx waits for
    /// `overlap.sumsReady`: enough for `overlap.tailElements` values. Rows,
    /// not samples: a sample can be most of a worker's batch (8 of
    /// (8,1024,4096) deferred a whole eighth of the tensor, read twice).
    @inlinable
    func deferredRows(_ split: WorkSplit, _ overlap: BackwardOverlap?) -> [Range<Int>] {
        (0..<split.workers).map { worker in
            let samples = split.instances(of: worker)
            let end = samples.upperBound * rowsPerSample, elements = overlap?.tailElements ?? 0
            let count = min(samples.count * rowsPerSample, (elements + rowLength - 1) / rowLength)
            return end - count..<end
        }
    }
}
