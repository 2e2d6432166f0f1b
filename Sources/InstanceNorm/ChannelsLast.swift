import _InstanceNormShims

/// How a tensor's dimensions are laid out in memory.
public enum TensorLayout: Sendable, Equatable {
    /// (N, C, S1…Sk), C order: each instance's M values are contiguous (NCHW).
    case channelsFirst
    /// (N, S1…Sk, C), C order: each position holds its C channels side by
    /// side (NHWC), so an instance is strided by C.
    case channelsLast
}

// MARK: - Reductions

/// The three vectors (a, b, c) a reduction adds per position: first += a,
/// second += b·c, where c may involve a per-channel constant, read once per
/// tile (`constant(at:)`) and kept in a register. `ShiftedTerms` gives the
/// statistics' sums, `GradientTerms` the backward's.
@usableFromInline
protocol LaneTerms: SendableMetatype {
    associatedtype Scalar: InstanceNormScalar
    func constant(at tiled: Int) -> Scalar.Vector
    func vectors(at index: Int, _ constant: Scalar.Vector) -> (Scalar.Vector, Scalar.Vector, Scalar.Vector)
    func scalars(at index: Int, tiled: Int) -> (Scalar.Compute, Scalar.Compute, Scalar.Compute)
    /// Asks for the inputs' cache lines at `index` (see `instnorm_prefetch`).
    func prefetch(at index: Int)
}

/// (x − shift_c, x − shift_c, x − shift_c): Σ (x − K) and Σ (x − K)².
@usableFromInline
struct ShiftedTerms<Scalar: InstanceNormScalar>: LaneTerms {
    @usableFromInline let x: UnsafePointer<Scalar>
    @usableFromInline let shift: UnsafePointer<Scalar.Compute>

    @inlinable init(x: UnsafePointer<Scalar>, shift: UnsafePointer<Scalar.Compute>) {
        self.x = x
        self.shift = shift
    }

    @inlinable @inline(__always)
    func constant(at tiled: Int) -> Scalar.Vector { loadVector(shift, tiled) }

    @inlinable @inline(__always)
    func vectors(at index: Int, _ shift: Scalar.Vector) -> (Scalar.Vector, Scalar.Vector, Scalar.Vector) {
        let deviation = loadVector(x, index) - shift
        return (deviation, deviation, deviation)
    }

    @inlinable @inline(__always)
    func scalars(at index: Int, tiled: Int) -> (Scalar.Compute, Scalar.Compute, Scalar.Compute) {
        let deviation = x[index].computed - shift[tiled]
        return (deviation, deviation, deviation)
    }

    @inlinable @inline(__always)
    func prefetch(at index: Int) { instnorm_prefetch(x + index) }
}

/// (dy, dy, x − center_c): Σ dy and Σ dy·(x − μ_hi).
@usableFromInline
struct GradientTerms<Scalar: InstanceNormScalar>: LaneTerms {
    @usableFromInline let dy: UnsafePointer<Scalar>
    @usableFromInline let x: UnsafePointer<Scalar>
    @usableFromInline let center: UnsafePointer<Scalar.Compute>

    @inlinable init(dy: UnsafePointer<Scalar>, x: UnsafePointer<Scalar>, center: UnsafePointer<Scalar.Compute>) {
        self.dy = dy
        self.x = x
        self.center = center
    }

    @inlinable @inline(__always)
    func constant(at tiled: Int) -> Scalar.Vector { loadVector(center, tiled) }

    @inlinable @inline(__always)
    func vectors(at index: Int, _ center: Scalar.Vector) -> (Scalar.Vector, Scalar.Vector, Scalar.Vector) {
        let gradient = loadVector(dy, index)
        return (gradient, gradient, loadVector(x, index) - center)
    }

    @inlinable @inline(__always)
    func scalars(at index: Int, tiled: Int) -> (Scalar.Compute, Scalar.Compute, Scalar.Compute) {
        (dy[index].computed, dy[index].computed, x[index].computed - center[tiled])
    }

    @inlinable @inline(__always)
    func prefetch(at index: Int) {
        instnorm_prefetch(dy + index)
        instnorm_prefetch(x + index)
    }
}

/// Which positions a reduction asks for ahead of use, and how far ahead.
///
/// The tiles of `channelsLastChunkSums` do not read memory in order, so the
/// hardware prefetchers do not follow them; instead, as it reads the values
/// at position p, the reduction prefetches position p + `distance`, for the
/// positions in `positions` (counted from the first value of the run of rows
/// being summed; they may run on into the next sample).
@usableFromInline
struct PrefetchPlan: Sendable {
    @usableFromInline let positions: Range<Int>
    @usableFromInline let distance: Int

    @inlinable init(positions: Range<Int>, distance: Int) {
        self.positions = positions
        self.distance = distance
    }

    @inlinable static var none: PrefetchPlan { PrefetchPlan(positions: 0..<0, distance: 0) }
}

/// Blocks of 2L rows per group in `channelsLastChunkSums`. A tile's reads
/// land in as many L1 sets as it reads lines per block when 2L·C·size is a
/// multiple of 4 KiB (C = 32 or 64): four blocks of one or two inputs fill
/// eight ways at most. Fewer blocks reload the accumulators more often;
/// 2, 3, 4, 6 and 8 measured alike on the benchmark shapes.
@usableFromInline let channelsLastGroupBlocks = 4

/// Per channel, the two sums of `terms` over one chunk of rows of a sample,
/// added in exactly the order the channels-first kernels add the same
/// channel's values (`shiftedChunkSums`, `gradientChunkSums`), so both
/// layouts give the same bits.
///
/// Those kernels sum a chunk in two vectors of L lanes, position p of the
/// chunk going to lane p mod 2L, then widen each vector (`widenedSum`) and
/// add the positions past the last full 2L in `Double`. Here a block of 2L
/// rows is 2L·C contiguous values, and value (row, c) belongs to lane
/// accumulator (row mod 2L)·C + c: the same flat offset in every block. So
/// the accumulators of a run of 2L flat offsets (a tile) must see the values
/// at that offset of block 0, 1, 2, … in order, whatever runs in between.
///
/// The kernel takes the blocks in groups; within a group it sums one tile
/// at a time over the group's blocks with the accumulators in registers
/// (`tileSums`), and keeps them in the scratch between groups. Streaming
/// the chunk through accumulators in memory instead, as a contiguous loop
/// does, costs two loads and two stores beside each input vector: a third
/// of the channels-first speed from cache, half of it from memory.
@inlinable
func channelsLastChunkSums<Terms: LaneTerms>(
    _ terms: Terms, rows: Range<Int>, prefetch plan: PrefetchPlan, scratch: ChannelsLastScratch<Terms.Scalar>,
    first: UnsafeMutableBufferPointer<Double>, second: UnsafeMutableBufferPointer<Double>
) {
    let lanes = Terms.Scalar.Vector.scalarCount, channels = scratch.channels, blockLength = scratch.blockLength
    let blocks = rows.count / (2 * lanes)
    var group = 0
    repeat {
        let count = min(channelsLastGroupBlocks, blocks - group)
        let start = (rows.lowerBound + group * 2 * lanes) * channels
        var offset = 0, tiled = 0, ahead = start + plan.distance
        while offset < blockLength {
            tileSums(terms, from: start + offset, blocks: count, stride: blockLength, offset: offset, tiled: tiled,
                     prefetching: ahead, plan.positions, into: scratch, resuming: group > 0)
            offset += 2 * lanes
            tiled = tiled + 2 * lanes == scratch.period ? 0 : tiled + 2 * lanes
            ahead += 2 * lanes * count
        }
        group += count
    } while group < blocks
    scratch.widenLanes(scratch.firstLanes, into: first.baseAddress!)
    scratch.widenLanes(scratch.secondLanes, into: second.baseAddress!)
    for row in rows.lowerBound + blocks * 2 * lanes..<rows.upperBound {
        for channel in 0..<channels {
            let (a, b, c) = terms.scalars(at: row * channels + channel, tiled: channel)
            first[channel] += a.widened
            second[channel] += b.widened * c.widened
        }
    }
}

/// The lane accumulators at flat offsets offset..<offset + 2L of a block:
/// Σ a and Σ b·c over `blocks` blocks `stride` values apart from `index`, in
/// block order, added to the scratch's lanes (`resuming`) or replacing them.
/// Two vectors of each sum stay in registers (four AVX2 registers each, in
/// either precision); the tile's constants, at `tiled`, too. Per block it
/// prefetches the two lines at `ahead` if they lie in `positions`.
@inlinable @inline(__always)
func tileSums<Terms: LaneTerms>(
    _ terms: Terms, from index: Int, blocks: Int, stride: Int, offset: Int, tiled: Int,
    prefetching ahead: Int, _ positions: Range<Int>, into scratch: ChannelsLastScratch<Terms.Scalar>, resuming: Bool
) {
    typealias Vector = Terms.Scalar.Vector
    let lanes = Vector.scalarCount, firstLanes = scratch.firstLanes, secondLanes = scratch.secondLanes
    var first0 = Vector(), first1 = Vector(), second0 = Vector(), second1 = Vector()
    if resuming {
        first0 = loadVector(firstLanes, offset)
        first1 = loadVector(firstLanes, offset + lanes)
        second0 = loadVector(secondLanes, offset)
        second1 = loadVector(secondLanes, offset + lanes)
    }
    let constant0 = terms.constant(at: tiled), constant1 = terms.constant(at: tiled + lanes)
    var index = index, ahead = ahead
    for _ in 0..<blocks {
        if ahead >= positions.lowerBound && ahead &+ 2 &* lanes <= positions.upperBound {
            terms.prefetch(at: ahead)
            terms.prefetch(at: ahead &+ lanes)
        }
        let (a0, b0, c0) = terms.vectors(at: index, constant0)
        let (a1, b1, c1) = terms.vectors(at: index &+ lanes, constant1)
        first0 += a0
        first1 += a1
        second0.addProduct(b0, c0)
        second1.addProduct(b1, c1)
        index &+= stride
        ahead &+= 2 &* lanes
    }
    storeVector(first0, firstLanes, offset)
    storeVector(first1, firstLanes, offset + lanes)
    storeVector(second0, secondLanes, offset)
    storeVector(second1, secondLanes, offset + lanes)
}

// MARK: - Scratch

/// Per-worker scratch of the channels-last kernels, allocated once per call:
/// lane accumulators for a block of 2L rows (2L·C values each), five slots
/// of per-channel constants tiled over two periods (`period`, plus one
/// vector so a load that starts late in the second period can run past its
/// end), and per-channel sums.
@usableFromInline
final class ChannelsLastScratch<T: InstanceNormScalar> {
    @usableFromInline let channels: Int
    /// 2L·C: the values of one block of rows.
    @usableFromInline let blockLength: Int
    /// lcm(C, 2L): the shortest run of values that is a whole number of
    /// rows and of pairs of vectors, so the vectors at the same offset past
    /// any multiple of it see the same channels, and a tile of two vectors
    /// (`tileSums`) never straddles the end of the tiled constants.
    @usableFromInline let period: Int
    /// 2·period + L: the values of one slot of tiled constants.
    @usableFromInline let slotLength: Int
    @usableFromInline let firstLanes, secondLanes: UnsafeMutablePointer<T.Compute>
    /// Slot k holds value_k(j mod C) at j.
    @usableFromInline let slots: UnsafeMutablePointer<T.Compute>
    @usableFromInline let first, second, totalFirst, totalSecond: UnsafeMutableBufferPointer<Double>
    /// Per channel, the widened sum of the upper L lane rows (`widenLanes`).
    @usableFromInline let upperHalf: UnsafeMutablePointer<Double>

    /// Without `sums`, for an elementwise output alone (`writeChannelwise`):
    /// no room for the lane accumulators, which it never touches.
    @inlinable init(channels: Int, sums: Bool = true) {
        self.channels = channels
        (blockLength, period, slotLength) = Self.lengths(channels: channels)
        firstLanes = allocateAligned(sums ? blockLength : 0, of: T.Compute.self)
        secondLanes = allocateAligned(sums ? blockLength : 0, of: T.Compute.self)
        slots = allocateAligned(5 * slotLength, of: T.Compute.self)
        first = .allocate(capacity: channels)
        second = .allocate(capacity: channels)
        totalFirst = .allocate(capacity: channels)
        totalSecond = .allocate(capacity: channels)
        upperHalf = .allocate(capacity: channels)
    }

    /// 2L·C, lcm(C, 2L) and 2·lcm(C, 2L) + L: see the properties.
    @inlinable static func lengths(channels: Int) -> (blockLength: Int, period: Int, slotLength: Int) {
        let lanes = T.Vector.scalarCount
        var (a, b) = (channels, 2 * lanes)
        while b != 0 { (a, b) = (b, a % b) }
        let period = channels / a * 2 * lanes
        return (2 * lanes * channels, period, 2 * period + lanes)
    }

    /// The bytes one scratch allocates: 2·2L·C + 5·(2·lcm(C, 2L) + L) values
    /// of the compute type and 5·C doubles. Up to 320·C values when C shares
    /// no factor with 2L, which a caller short of memory must plan for.
    @inlinable static func bytes(channels: Int) -> Int {
        let (blockLength, _, slotLength) = lengths(channels: channels)
        return (2 * blockLength + 5 * slotLength) * MemoryLayout<T.Compute>.stride
            + 5 * channels * MemoryLayout<Double>.stride
    }

    deinit {
        for pointer in [firstLanes, secondLanes, slots] { pointer.deallocate() }
        for buffer in [first, second, totalFirst, totalSecond] { buffer.deallocate() }
        upperHalf.deallocate()
    }

    /// Fills tiled constant `slot` with value(channel) at every position.
    @inlinable func tile(_ slot: Int, _ value: (Int) -> T.Compute) {
        for channel in 0..<channels { set(slot, channel: channel, value(channel)) }
        replicate(slot)
    }

    /// Sets one channel's value of a tiled constant; `replicate` then
    /// copies the first C values over the rest of the slot.
    @inlinable func set(_ slot: Int, channel: Int, _ value: T.Compute) { slots[slot * slotLength + channel] = value }

    /// Sets `channel` of slots 0–2 to y's constants μ_hi, a, b (the layout
    /// `TiledNormalizeOperation` reads).
    @inlinable func setNormalize(_ constants: (meanHigh: T.Compute, scale: T.Compute, offset: T.Compute), channel: Int) {
        set(0, channel: channel, constants.meanHigh)
        set(1, channel: channel, constants.scale)
        set(2, channel: channel, constants.offset)
    }

    /// Sets `channel` of slots 0–4 to dx's constants μ_hi, m̄, k, p, q
    /// (the layout `TiledInputGradientOperation` reads).
    @inlinable func setInputGradient(_ operation: InputGradientOperation<T>, channel: Int) {
        set(0, channel: channel, operation.meanHigh)
        set(1, channel: channel, operation.meanDy)
        set(2, channel: channel, operation.gradientScale)
        set(3, channel: channel, operation.centeredScale)
        set(4, channel: channel, operation.offset)
    }

    /// Doubles the filled prefix until the slot is full: log2 block copies
    /// rather than one dependent copy per value.
    @inlinable func replicate(_ slot: Int) {
        let base = slots + slot * slotLength
        var filled = channels
        while filled < slotLength {
            let copied = min(filled, slotLength - filled)
            (base + filled).update(from: base, count: copied)
            filled += copied
        }
    }

    @inlinable func tiledBase(_ slot: Int) -> UnsafePointer<T.Compute> { UnsafePointer(slots + slot * slotLength) }

    /// sums[c] = widenedSum(lane rows 0..<L of channel c) + widenedSum(lane
    /// rows L..<2L), each in the order of `widenedLaneSum`: the two vectors
    /// of the channels-first kernel widened as it widens them. The loops run
    /// over channels innermost, so they vectorize across channels while each
    /// channel's additions keep their order.
    @inlinable func widenLanes(_ lanes: UnsafePointer<T.Compute>, into sums: UnsafeMutablePointer<Double>) {
        let count = T.Vector.scalarCount, half = count / 2, upper = upperHalf
        for channel in 0..<channels {
            sums[channel] = 0
            upper[channel] = 0
        }
        for lane in 0..<half {
            let lower0 = lanes + lane * channels, lower1 = lanes + (lane + half) * channels
            let upper0 = lanes + (count + lane) * channels, upper1 = lanes + (count + lane + half) * channels
            for channel in 0..<channels {
                sums[channel] += lower0[channel].widened + lower1[channel].widened
                upper[channel] += upper0[channel].widened + upper1[channel].widened
            }
        }
        for channel in 0..<channels { sums[channel] += upper[channel] }
    }

    /// Prefetches the lines of `range` at once: the start of a run whose
    /// reduction prefetches only `PrefetchPlan.distance` ahead of itself.
    @inlinable func prefetch<Terms: LaneTerms>(_ terms: Terms, _ range: Range<Int>) {
        for index in Swift.stride(from: range.lowerBound, to: range.upperBound, by: T.Vector.scalarCount) {
            terms.prefetch(at: index)
        }
    }

    /// Per channel, the sums of `terms` over `rows`, chunk by chunk
    /// (`reductionChunk` rows), added in chunk order into totalFirst,
    /// totalSecond: what `chunkedSums` does for one channels-first instance.
    /// Prefetches as `plan` says, first the planned positions below its
    /// distance, which the reduction itself does not reach.
    @inlinable func chunkedSums<Terms: LaneTerms>(_ terms: Terms, rows: Int, prefetch plan: PrefetchPlan)
    where Terms.Scalar == T {
        totalFirst.update(repeating: 0)
        totalSecond.update(repeating: 0)
        let positions = plan.positions
        prefetch(terms, positions.lowerBound..<max(positions.lowerBound, min(plan.distance, positions.upperBound)))
        var start = 0
        while start < rows {
            channelsLastChunkSums(terms, rows: start..<min(start + reductionChunk, rows), prefetch: plan,
                                  scratch: self, first: first, second: second)
            for channel in 0..<channels {
                totalFirst[channel] += first[channel]
                totalSecond[channel] += second[channel]
            }
            start += reductionChunk
        }
    }
}

// MARK: - Elementwise

/// An elementwise output whose per-channel constants are tiled with period
/// P (`ChannelsLastScratch.period`) in slots of 2P + L values: a vector's
/// constants depend only on its offset modulo P, so they are read once per
/// slab of periods (`constants(at:)`) and stay in registers. `vector` and
/// `scalar` compute the channels-first operation's expression, so the bits
/// match it and do not depend on where the vector loop starts or ends.
@usableFromInline
protocol TiledOperation: SendableMetatype {
    associatedtype Scalar: InstanceNormScalar
    associatedtype Constants
    var period: Int { get }
    func constants(at tiled: Int) -> Constants
    func vector(at index: Int, _ constants: Constants) -> Scalar.Vector
    func scalar(at index: Int, tiled: Int) -> Scalar.Compute
    /// Asks for the inputs' cache lines at `index` (see `instnorm_prefetch`).
    func prefetch(at index: Int)
}

/// Periods per slab in `writeTiledVectors`: the vectors at one offset of
/// four periods share their constants, and the slab's lines are written
/// within a few hundred bytes of each other, which keeps streaming stores
/// whole and in order for the memory controller. Reading three or five
/// constant vectors beside each data vector instead ran at two thirds of
/// the speed from cache; passes over a whole sample at one offset ran at a
/// third from memory.
@usableFromInline let channelsLastSlabPeriods = 4

/// out[i] = operation(i) for i in `range`, as `writeElementwise` writes it:
/// with `streaming`, non-temporal stores from the first 64-byte boundary on.
@inlinable @inline(__always)
func writeTiled<Operation: TiledOperation>(
    _ out: UnsafeMutablePointer<Operation.Scalar>, _ range: Range<Int>, streaming: Bool, _ operation: Operation
) {
    typealias T = Operation.Scalar
    var index = range.lowerBound
    if streaming {
        while index < range.upperBound && Int(bitPattern: out + index) & 63 != 0 {
            out[index] = T(rounding: operation.scalar(at: index, tiled: index % operation.period))
            index += 1
        }
        index = writeTiledVectors(out, index..<range.upperBound, operation) { T.streamStore($0, to: $1) }
    } else {
        index = writeTiledVectors(out, index..<range.upperBound, operation) { storeVector($0, $1, 0) }
    }
    while index < range.upperBound {
        out[index] = T(rounding: operation.scalar(at: index, tiled: index % operation.period))
        index += 1
    }
}

/// The whole vectors of `writeTiled`, in slabs of `channelsLastSlabPeriods`
/// periods: one pass over the slab per vector offset of the period, with
/// that offset's constants in registers; the first vector's constants are
/// at `phase`, the others at fixed offsets from it, so there is no
/// wrap-around test per vector. (One loop per kind of store: a store chosen
/// inside the loop made the compiler merge the two into scalar code.)
/// Returns where the vectors end.
@inlinable @inline(__always)
func writeTiledVectors<Operation: TiledOperation>(
    _ out: UnsafeMutablePointer<Operation.Scalar>, _ range: Range<Int>, _ operation: Operation,
    store: (Operation.Scalar.Vector, UnsafeMutablePointer<Operation.Scalar>) -> Void
) -> Int {
    let lanes = Operation.Scalar.Vector.scalarCount, period = operation.period, phase = range.lowerBound % period
    var index = range.lowerBound
    while index + period <= range.upperBound {
        let end = index + min(channelsLastSlabPeriods, (range.upperBound - index) / period) * period
        var offset = 0
        while offset < period {
            let constants = operation.constants(at: phase &+ offset)
            var position = index &+ offset
            while position < end {
                store(operation.vector(at: position, constants), out + position)
                position &+= period
            }
            offset &+= lanes
        }
        index = end
    }
    var tiled = phase
    while index + lanes <= range.upperBound {
        store(operation.vector(at: index, operation.constants(at: tiled)), out + index)
        index += lanes
        tiled += lanes
    }
    return index
}

/// y = (x − μ_hi)·a + b with per-channel constants in tiled slots 0, 1, 2.
@usableFromInline
struct TiledNormalizeOperation<Scalar: InstanceNormScalar>: TiledOperation {
    @usableFromInline typealias Vector = Scalar.Vector
    @usableFromInline let x: UnsafePointer<Scalar>
    @usableFromInline let meanHigh, scale, offset: UnsafePointer<Scalar.Compute>
    @usableFromInline let period: Int

    @inlinable init(x: UnsafePointer<Scalar>, scratch: ChannelsLastScratch<Scalar>) {
        self.x = x
        meanHigh = scratch.tiledBase(0)
        scale = scratch.tiledBase(1)
        offset = scratch.tiledBase(2)
        period = scratch.period
    }

    @inlinable @inline(__always)
    func constants(at tiled: Int) -> (meanHigh: Vector, scale: Vector, offset: Vector) {
        (loadVector(meanHigh, tiled), loadVector(scale, tiled), loadVector(offset, tiled))
    }

    @inlinable @inline(__always)
    func vector(at index: Int, _ constants: (meanHigh: Vector, scale: Vector, offset: Vector)) -> Vector {
        constants.offset.addingProduct(loadVector(x, index) - constants.meanHigh, constants.scale)
    }

    @inlinable @inline(__always)
    func scalar(at index: Int, tiled: Int) -> Scalar.Compute {
        offset[tiled].addingProduct(x[index].computed - meanHigh[tiled], scale[tiled])
    }

    @inlinable @inline(__always)
    func prefetch(at index: Int) { instnorm_prefetch(x + index) }
}

/// dx = k·(dy − m̄) + p·(x − μ_hi) + q with per-channel constants in tiled
/// slots 0 (μ_hi), 1 (m̄), 2 (k), 3 (p), 4 (q).
@usableFromInline
struct TiledInputGradientOperation<Scalar: InstanceNormScalar>: TiledOperation {
    @usableFromInline typealias Vector = Scalar.Vector
    @usableFromInline let dy, x: UnsafePointer<Scalar>
    @usableFromInline let meanHigh, meanDy, gradientScale, centeredScale, offset: UnsafePointer<Scalar.Compute>
    @usableFromInline let period: Int

    @inlinable init(dy: UnsafePointer<Scalar>, x: UnsafePointer<Scalar>, scratch: ChannelsLastScratch<Scalar>) {
        self.dy = dy
        self.x = x
        meanHigh = scratch.tiledBase(0)
        meanDy = scratch.tiledBase(1)
        gradientScale = scratch.tiledBase(2)
        centeredScale = scratch.tiledBase(3)
        offset = scratch.tiledBase(4)
        period = scratch.period
    }

    @inlinable @inline(__always)
    func constants(at tiled: Int) -> (Vector, Vector, Vector, Vector, Vector) {
        (loadVector(meanHigh, tiled), loadVector(meanDy, tiled), loadVector(gradientScale, tiled),
         loadVector(centeredScale, tiled), loadVector(offset, tiled))
    }

    @inlinable @inline(__always)
    func vector(at index: Int, _ constants: (Vector, Vector, Vector, Vector, Vector)) -> Vector {
        let (meanHigh, meanDy, gradientScale, centeredScale, offset) = constants
        return offset
            .addingProduct(centeredScale, loadVector(x, index) - meanHigh)
            .addingProduct(gradientScale, loadVector(dy, index) - meanDy)
    }

    @inlinable @inline(__always)
    func scalar(at index: Int, tiled: Int) -> Scalar.Compute {
        offset[tiled].addingProduct(centeredScale[tiled], x[index].computed - meanHigh[tiled])
            .addingProduct(gradientScale[tiled], dy[index].computed - meanDy[tiled])
    }

    @inlinable @inline(__always)
    func prefetch(at index: Int) {
        instnorm_prefetch(x + index)
        instnorm_prefetch(dy + index)
    }
}
