import _InstanceNormShims

/// BatchNorm's channels-last passes in the tensor's own order. A sample is
/// M rows of C channels; each channel is a lane of the row's V = ⌈C/L⌉
/// vectors, and its constants (shift, statistics, sums) are the same in
/// every sample, so nothing is transposed.
///
/// The sums of instance (n, c), over the sample's rows r:
///
///     first = Σ_bands widen( Σ_{r in band} a(r, c) )
///     second = Σ_bands widen( Σ_{r in band} b(r, c)·d(r, c) )
///
/// with (a, b, d) = (x − K_c, x − K_c, x − K_c) for the moments and
/// (dy, dy, x − μ_hi,c) for the gradient sums (`LaneTerms`); the inner sums
/// run in the compute precision over bands of `bandRows` rows (as many
/// values per lane as the channels-first kernels sum before widening), the
/// outer ones in `Double`, band after band. Each lane sees its own
/// channel's values in row order whatever block, worker or rank holds it,
/// so the sums are the same bits at every thread and rank count. They are
/// not the channels-first bits, which add an instance's positions in
/// another order.
///
/// The workers share units of (sample, block of up to four channel
/// vectors), each block's accumulators in registers: a row of 64 floats is
/// one block, read in memory order. Wider rows take their blocks one
/// after the other over tiles of about 1 KiB of rows, so that memory is
/// still read nearly in order (a block over a whole band, reading the
/// rest of each row later, ran at half the speed).
@usableFromInline
struct ChannelRows<T: InstanceNormScalar>: Sendable {
    @usableFromInline let samples, positions, channels: Int
    /// V: vectors per row; lanes past C in the last one are computed, never stored.
    @usableFromInline let vectorsPerRow: Int
    /// Rows per band: values summed per lane before widening.
    @inlinable static var bandRows: Int { 32 }
    /// Bytes per input array and tile, when a row takes several blocks: the
    /// rows whose blocks are summed one after the other before the next
    /// rows, so that memory is read nearly in order.
    @inlinable static var tileBytes: Int { 1024 }
    /// How far ahead of the rows being summed their inputs are requested,
    /// in bytes per array (see `prefetchDistance`).
    @inlinable static var prefetchValues: Int { prefetchDistance / MemoryLayout<T>.stride }

    @inlinable init(shape: InstanceNormShape) {
        samples = shape.batch
        positions = shape.spatialCount
        channels = shape.channels
        vectorsPerRow = (shape.channels + T.Vector.scalarCount - 1) / T.Vector.scalarCount
    }

    /// Values per tiled constant table: value j is that of channel j mod C.
    @inlinable var tableLength: Int { vectorsPerRow * T.Vector.scalarCount }

    /// Vectors per block: four (a row of 64 floats summed in registers, in
    /// memory order), fewer when there would be fewer units than workers.
    @inlinable func blockWidth(threads: Int) -> Int {
        var width = 4
        while width > 1 && samples * ((vectorsPerRow + width - 1) / width) < threads { width /= 2 }
        return width
    }

    /// Per instance (n, c), the two sums of `terms(sample)` into `sums`
    /// (N, C, 2), the terms of a sample indexed from its first value.
    @inlinable
    func sums<Terms: RowTerms>(
        into sums: SharedBuffer<Double>, threads: Int, terms: @Sendable (Int) -> Terms
    ) where Terms.Scalar == T {
        let width = blockWidth(threads: threads), blocks = (vectorsPerRow + width - 1) / width
        let split = WorkSplit(units: samples * blocks, length: 1, threads: threads)
        split.run { worker in
            let scratch = RowScratch<T>(self, arrays: Terms.arrays)
            let units = split.instances(of: worker)
            var unit = units.lowerBound
            while unit < units.upperBound {
                let sample = unit / blocks, end = min(units.upperBound, (sample + 1) * blocks)
                let vectors = (unit - sample * blocks) * width..<min((end - sample * blocks) * width, vectorsPerRow)
                sampleSums(terms(sample), sample: sample, vectors: vectors, width: width, scratch: scratch, into: sums)
                unit = end
            }
        }
    }

    /// The sums of `sample`'s channels in `vectors`, band by band.
    @inlinable
    func sampleSums<Terms: RowTerms>(
        _ terms: Terms, sample: Int, vectors: Range<Int>, width: Int, scratch: RowScratch<T>,
        into sums: SharedBuffer<Double>
    ) where Terms.Scalar == T {
        let lanes = T.Vector.scalarCount, lanesUsed = vectors.lowerBound * lanes..<vectors.upperBound * lanes
        (scratch.first + lanesUsed.lowerBound).update(repeating: 0, count: lanesUsed.count)
        (scratch.second + lanesUsed.lowerBound).update(repeating: 0, count: lanesUsed.count)
        let sampleStart = sample * positions * channels, tensorEnd = samples * positions * channels
        // One block per row reads memory in order: its tile is the band.
        let tileRows = vectors.count <= width ? Self.bandRows : max(1, Self.tileBytes / (channels * MemoryLayout<T>.stride))
        var row = 0
        while row < positions {
            let rows = min(Self.bandRows, positions - row)
            // The last vector of a row reads past C: past the tensor's end on its last rows.
            let slack = tensorEnd - tableLength - (sampleStart + row * channels)
            let safeRows = slack < 0 ? 0 : min(rows, slack / channels + 1)
            bandSums(terms.moved(by: row * channels), rows: rows, safeRows: safeRows, vectors: vectors, width: width,
                     tileRows: tileRows, scratch)
            row += rows
        }
        // Four channels a step: at M = 1 (BatchNorm of (N, C)) this copy runs
        // once per value, and one scalar pair at a time it took half of this
        // function's samples.
        ShareTable(sums.base + 2 * sample * channels).take(
            first: scratch.first, second: scratch.second, positions: lanesUsed.lowerBound..<min(lanesUsed.upperBound, channels))
    }

    /// One band's sums of the channels in `vectors`, widened onto the
    /// scratch's totals: its first `safeRows` rows read in place, the others
    /// (whose last vector would read past the tensor's end) from a copy
    /// padded with zeros, after them, so each lane still adds in row order.
    @inlinable
    func bandSums<Terms: RowTerms>(
        _ band: Terms, rows: Int, safeRows: Int, vectors: Range<Int>, width: Int, tileRows: Int, _ scratch: RowScratch<T>
    ) where Terms.Scalar == T {
        let lanes = T.Vector.scalarCount, lanesUsed = vectors.lowerBound * lanes..<vectors.upperBound * lanes
        (scratch.firstLanes + lanesUsed.lowerBound).update(repeating: 0, count: lanesUsed.count)
        (scratch.secondLanes + lanesUsed.lowerBound).update(repeating: 0, count: lanesUsed.count)
        addTiles(band, rows: safeRows, vectors: vectors, width: width, tileRows: tileRows, scratch)
        if safeRows < rows {
            let copy = band.moved(by: safeRows * channels).copied(
                (rows - safeRows) * channels, into: scratch.padded, capacity: scratch.paddedCapacity)
            addTiles(copy, rows: rows - safeRows, vectors: vectors, width: width, tileRows: tileRows, scratch)
        }
        for vector in vectors {
            T.Compute.addWidened(loadVector(scratch.firstLanes, vector * lanes), to: scratch.first + vector * lanes)
            T.Compute.addWidened(loadVector(scratch.secondLanes, vector * lanes), to: scratch.second + vector * lanes)
        }
    }

    /// `rows` rows of `terms` added onto the band's lane sums, tile by tile
    /// and within a tile block by block.
    @inlinable
    func addTiles<Terms: RowTerms>(
        _ terms: Terms, rows: Int, vectors: Range<Int>, width: Int, tileRows: Int, _ scratch: RowScratch<T>
    ) where Terms.Scalar == T {
        var tileStart = 0
        while tileStart < rows {
            let tile = terms.moved(by: tileStart * channels), count = min(tileRows, rows - tileStart)
            var vector = vectors.lowerBound
            while vector < vectors.upperBound {
                let blockVectors = min(width, vectors.upperBound - vector)
                switch blockVectors {
                case 4: tileSums(tile, rows: count, vector: vector, width: 4, scratch)
                case 3: tileSums(tile, rows: count, vector: vector, width: 3, scratch)
                case 2: tileSums(tile, rows: count, vector: vector, width: 2, scratch)
                default: tileSums(tile, rows: count, vector: vector, width: 1, scratch)
                }
                vector += blockVectors
            }
            tileStart += count
        }
    }

    /// One tile's terms of `width` (1…4, a literal) channel vectors from
    /// `vector` added onto the band's lane sums in the scratch, in registers
    /// meanwhile.
    @inlinable @inline(__always)
    func tileSums<Terms: RowTerms>(_ terms: Terms, rows: Int, vector: Int, width: Int, _ scratch: RowScratch<T>)
    where Terms.Scalar == T {
        let lanes = T.Vector.scalarCount, offset = vector * lanes
        let firstLanes = scratch.firstLanes, secondLanes = scratch.secondLanes
        @inline(__always) func lanesAt(_ pointer: UnsafeMutablePointer<T.Compute>, _ k: Int) -> T.Vector {
            k < width ? loadVector(pointer, offset + k * lanes) : T.Vector()
        }
        @inline(__always) func constant(_ k: Int) -> T.Vector { k < width ? terms.constant(at: offset + k * lanes) : T.Vector() }
        var first0 = lanesAt(firstLanes, 0), first1 = lanesAt(firstLanes, 1)
        var first2 = lanesAt(firstLanes, 2), first3 = lanesAt(firstLanes, 3)
        var second0 = lanesAt(secondLanes, 0), second1 = lanesAt(secondLanes, 1)
        var second2 = lanesAt(secondLanes, 2), second3 = lanesAt(secondLanes, 3)
        let constant0 = constant(0), constant1 = constant(1), constant2 = constant(2), constant3 = constant(3)
        var index = offset
        for _ in 0..<rows {
            for k in 0..<width { terms.prefetch(at: index &+ k &* lanes &+ Self.prefetchValues) }
            let (a0, b0, d0) = terms.vectors(at: index, constant0)
            first0 += a0
            second0.addProduct(b0, d0)
            if width > 1 {
                let (a1, b1, d1) = terms.vectors(at: index &+ lanes, constant1)
                first1 += a1
                second1.addProduct(b1, d1)
            }
            if width > 2 {
                let (a2, b2, d2) = terms.vectors(at: index &+ 2 &* lanes, constant2)
                first2 += a2
                second2.addProduct(b2, d2)
            }
            if width > 3 {
                let (a3, b3, d3) = terms.vectors(at: index &+ 3 &* lanes, constant3)
                first3 += a3
                second3.addProduct(b3, d3)
            }
            index &+= channels
        }
        @inline(__always) func store(_ k: Int, _ first: T.Vector, _ second: T.Vector) {
            guard k < width else { return }
            storeVector(first, firstLanes, offset + k * lanes)
            storeVector(second, secondLanes, offset + k * lanes)
        }
        store(0, first0, second0)
        store(1, first1, second1)
        store(2, first2, second2)
        store(3, first3, second3)
    }

    /// `sums(into:threads:terms:)` with each channel's constant (the
    /// shift, or the center) in a table the terms read, lane b of vector k
    /// at k·L + b: `terms(start, table)` for the sample whose first value
    /// is at `start`.
    @inlinable
    func sums<Terms: RowTerms>(
        into sums: UnsafeMutableBufferPointer<Double>, threads: Int, constant: (Int) -> T.Compute,
        terms: @Sendable (_ start: Int, _ table: UnsafePointer<T.Compute>) -> Terms
    ) where Terms.Scalar == T {
        let sampleLength = channels * positions
        (0..<tableLength).map { constant($0 % channels) }.withUnsafeBufferPointer { table in
            let shared = SharedBuffer(table)
            self.sums(into: SharedBuffer(sums), threads: threads) { terms($0 * sampleLength, UnsafePointer(shared.base)) }
        }
    }
}

/// One worker's scratch for `ChannelRows.sums`: the `Double` totals of
/// every lane, and room for a band copied and padded with zeros.
@usableFromInline
final class RowScratch<T: InstanceNormScalar> {
    @usableFromInline let first, second: UnsafeMutablePointer<Double>
    /// The current band's sums of every lane, in the compute precision.
    @usableFromInline let firstLanes, secondLanes: UnsafeMutablePointer<T.Compute>
    @usableFromInline let padded: UnsafeMutablePointer<T>
    /// Values per input array in `padded`: the rows of a band that can read
    /// past the tensor's end, and a vector past them.
    @usableFromInline let paddedCapacity: Int

    @inlinable init(_ rows: ChannelRows<T>, arrays: Int) {
        first = .allocate(capacity: rows.tableLength)
        second = .allocate(capacity: rows.tableLength)
        firstLanes = allocateAligned(rows.tableLength, of: T.Compute.self)
        secondLanes = allocateAligned(rows.tableLength, of: T.Compute.self)
        // The rows that can read past the tensor's end: ⌈V·L/C⌉ at most (one when C ≥ L).
        let overrunRows = (rows.tableLength + rows.channels - 1) / rows.channels
        paddedCapacity = min(ChannelRows<T>.bandRows, overrunRows) * rows.channels + rows.tableLength
        padded = allocateAligned(arrays * paddedCapacity, of: T.self)
    }

    deinit {
        first.deallocate()
        second.deallocate()
        firstLanes.deallocate()
        secondLanes.deallocate()
        padded.deallocate()
    }
}

/// Lane terms that can move along their arrays and be copied into scratch
/// (`ChannelRows`).
@usableFromInline
protocol RowTerms: LaneTerms {
    /// How many input arrays the terms read.
    static var arrays: Int { get }
    /// The same terms, `offset` values further along every array.
    func moved(by offset: Int) -> Self
    /// The same terms over copies of their first `count` values, padded
    /// with zeros to `capacity`, in `scratch` (`arrays`·`capacity` values).
    func copied(_ count: Int, into scratch: UnsafeMutablePointer<Scalar>, capacity: Int) -> Self
}

/// Copies `count` values of `source` to `target`, and zeros up to `capacity`.
@inlinable
func copyPadded<T: InstanceNormScalar>(_ source: UnsafePointer<T>, _ count: Int, to target: UnsafeMutablePointer<T>, capacity: Int) {
    target.update(from: source, count: count)
    (target + count).update(repeating: 0, count: capacity - count)
}

extension ShiftedTerms: RowTerms {
    @inlinable static var arrays: Int { 1 }

    @inlinable func moved(by offset: Int) -> Self { ShiftedTerms(x: x + offset, shift: shift) }

    @inlinable func copied(_ count: Int, into scratch: UnsafeMutablePointer<Scalar>, capacity: Int) -> Self {
        copyPadded(x, count, to: scratch, capacity: capacity)
        return ShiftedTerms(x: scratch, shift: shift)
    }
}

extension GradientTerms: RowTerms {
    @inlinable static var arrays: Int { 2 }

    @inlinable func moved(by offset: Int) -> Self { GradientTerms(dy: dy + offset, x: x + offset, center: center) }

    @inlinable func copied(_ count: Int, into scratch: UnsafeMutablePointer<Scalar>, capacity: Int) -> Self {
        copyPadded(dy, count, to: scratch, capacity: capacity)
        copyPadded(x, count, to: scratch + capacity, capacity: capacity)
        return GradientTerms(dy: scratch, x: scratch + capacity, center: center)
    }
}

// MARK: - Elementwise outputs

/// How far ahead, in bytes per input array, the channels-last passes in
/// the tensor's order ask for their inputs. With the hardware prefetchers
/// alone, dx on (64,64,56,56) took 1.1 times as long as channels first
/// and the gradient sums 1.05 times; 1 KiB ahead brought both level
/// (512 B measured alike, 2–16 KiB worse; 5–6 alternating rounds, one
/// thread, float32). y, whose one input the forward's sums have just read
/// (from the cache on (32,64,56,56)), does without: its forward took 1.06
/// times as long with it there, and the same on (64,64,56,56). (One
/// table with each vector's constants side by side, so that one pointer
/// walks it, was no faster than a table per constant.)
@usableFromInline let prefetchDistance = 1024

/// Writes a channels-last output whose constants are per channel, the same
/// in every sample (BatchNorm, and any norm in evaluation mode): the
/// workers take contiguous runs of whole 64-byte lines of the tensor, each
/// written in order, every vector with the constants of its lanes' channels
/// read from one table built for the call (`fill(scratch)` sets each slot's
/// C values). Elementwise, so the same bits as channels first.
@inlinable
func writeChannelwise<T: InstanceNormScalar, Operation: TiledOperation>(
    _ out: UnsafeMutableBufferPointer<T>, channels: Int, threads: Int, streaming: Bool, prefetching: Bool,
    fill: (ChannelsLastScratch<T>) -> Void, operation: (ChannelsLastScratch<T>) -> Operation
) where Operation.Scalar == T {
    guard let base = out.baseAddress else { return }
    // Streaming stores need aligned vectors; the workers' runs start on lines of the tensor.
    let streams = streaming && Int(bitPattern: base) & 63 == 0
    let scratch = ChannelsLastScratch<T>(channels: channels, sums: false)
    fill(scratch)
    let shared = SharedBuffer(out), prepared = UncheckedSendable(operation(scratch))
    let line = max(T.Vector.scalarCount, 64 / MemoryLayout<T>.stride), count = out.count
    let lines = (count + line - 1) / line, workers = max(1, min(threads, lines))
    let split = WorkSplit(units: workers, length: 1, threads: workers)
    split.run { worker in
        let owned = balancedRange(lines, worker, workers)
        let range = owned.lowerBound * line..<min(owned.upperBound * line, count)
        if streams {
            writeInTensorOrder(shared.base, range, prepared.value, prefetching: prefetching) { T.streamStore($0, to: $1) }
        } else {
            writeInTensorOrder(shared.base, range, prepared.value, prefetching: prefetching) { storeVector($0, $1, 0) }
        }
    }
    withExtendedLifetime(scratch) {}
    if streams { instnorm_store_fence() }
}

/// How an output whose constants are per channel (BatchNorm, and any norm
/// in evaluation mode) is written in the tensor's order by
/// `writeChannelwise`: as `channels` tiled channels, channel c's constants
/// over `positions` of them (c·positions ..< (c + 1)·positions).
@usableFromInline
struct ChannelTiling {
    @usableFromInline let channels, positions: Int

    @inlinable init(channels: Int, positions: Int) {
        self.channels = channels
        self.positions = positions
    }

    /// Channels last: the C channels themselves. Channels first with
    /// instances of fewer than 2·B values: the C·M values of a sample as
    /// that many channels of one position, each channel's constants over
    /// its M positions (an instance of a few values is a call and a scalar
    /// loop of its own otherwise; BatchNorm on (8192,256,2,2): y at 5% of
    /// the floor). Nil for longer instances channels first, which amortize
    /// their call, and where the tiled constants would pass 2^16 values a slot.
    @inlinable
    static func of<T: InstanceNormScalar>(_ shape: InstanceNormShape, _ layout: TensorLayout, _: T.Type) -> ChannelTiling? {
        if layout == .channelsLast { return ChannelTiling(channels: shape.channels, positions: 1) }
        let count = shape.channels * shape.spatialCount
        guard shape.spatialCount < 2 * T.Vector.scalarCount, count > 0,
              ChannelsLastScratch<T>.lengths(channels: count).period <= 1 << 16 else { return nil }
        return ChannelTiling(channels: count, positions: shape.spatialCount)
    }
}

/// out[i] = operation(i) for i in `range`, vector after vector in order
/// (the constants of each vector read beside it), with `prefetching` the
/// inputs requested `prefetchDistance` ahead; scalars finish the range.
/// Two vectors per step, so that the wrap-around of the constants is
/// tested once per pair (the period is a whole number of pairs): dx took
/// 0.93× the time of one vector per step (`perf` samples, 3 alternating
/// rounds on (32,64,56,56)). A `store` that streams needs
/// `out + range.lowerBound` aligned.
@inlinable @inline(__always)
func writeInTensorOrder<Operation: TiledOperation>(
    _ out: UnsafeMutablePointer<Operation.Scalar>, _ range: Range<Int>, _ operation: Operation, prefetching: Bool,
    store: (Operation.Scalar.Vector, UnsafeMutablePointer<Operation.Scalar>) -> Void
) {
    typealias T = Operation.Scalar
    let lanes = T.Vector.scalarCount, period = operation.period, ahead = prefetchDistance / MemoryLayout<T>.stride
    var index = range.lowerBound, tiled = index % period
    @inline(__always) func write(_ index: Int, _ tiled: Int) {
        if prefetching { operation.prefetch(at: index &+ ahead) }
        store(operation.vector(at: index, operation.constants(at: tiled)), out + index)
    }
    if tiled % (2 * lanes) != 0 && index + lanes <= range.upperBound {
        write(index, tiled)
        index &+= lanes
        tiled &+= lanes
        if tiled >= period { tiled &-= period }
    }
    while index + 2 * lanes <= range.upperBound {
        write(index, tiled)
        write(index &+ lanes, tiled &+ lanes)
        index &+= 2 &* lanes
        tiled &+= 2 &* lanes
        if tiled >= period { tiled &-= period }
    }
    if index + lanes <= range.upperBound {
        write(index, tiled)
        index &+= lanes
    }
    while index < range.upperBound {
        out[index] = T(rounding: operation.scalar(at: index, tiled: index % period))
        index += 1
    }
}

/// A value handed to worker threads that only read it.
@usableFromInline
struct UncheckedSendable<Value>: @unchecked Sendable {
    @usableFromInline let value: Value
    @inlinable init(_ value: Value) { self.value = value }
}
