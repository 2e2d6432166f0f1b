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
/// second += b·c. `ShiftedTerms` gives the statistics' sums, `GradientTerms`
/// the backward's.
@usableFromInline
protocol LaneTerms: SendableMetatype {
    associatedtype Scalar: InstanceNormScalar
    func vectors(at index: Int, tiled: Int) -> (Scalar.Vector, Scalar.Vector, Scalar.Vector)
    func scalars(at index: Int, tiled: Int) -> (Scalar.Compute, Scalar.Compute, Scalar.Compute)
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
    func vectors(at index: Int, tiled: Int) -> (Scalar.Vector, Scalar.Vector, Scalar.Vector) {
        let deviation = loadVector(x, index) - loadVector(shift, tiled)
        return (deviation, deviation, deviation)
    }

    @inlinable @inline(__always)
    func scalars(at index: Int, tiled: Int) -> (Scalar.Compute, Scalar.Compute, Scalar.Compute) {
        let deviation = x[index].computed - shift[tiled]
        return (deviation, deviation, deviation)
    }
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
    func vectors(at index: Int, tiled: Int) -> (Scalar.Vector, Scalar.Vector, Scalar.Vector) {
        let gradient = loadVector(dy, index)
        return (gradient, gradient, loadVector(x, index) - loadVector(center, tiled))
    }

    @inlinable @inline(__always)
    func scalars(at index: Int, tiled: Int) -> (Scalar.Compute, Scalar.Compute, Scalar.Compute) {
        (dy[index].computed, dy[index].computed, x[index].computed - center[tiled])
    }
}

/// Per channel, the two sums of `terms` over one chunk of rows of a sample,
/// added in exactly the order the channels-first kernels add the same
/// channel's values (`shiftedChunkSums`, `gradientChunkSums`), so both
/// layouts give the same bits.
///
/// Those kernels sum a chunk in two vectors of L lanes, position p of the
/// chunk going to lane p mod 2L, then widen each vector (`widenedSum`) and
/// add the positions past the last full 2L in `Double`. Here 2L rows of C
/// channels are 2L·C contiguous values, so lane accumulators laid out as
/// [2L][C] take a whole block of rows in a plain contiguous vector loop:
/// value (row, c) goes to accumulator (row mod 2L)·C + c, the lane the
/// channels-first kernel gives it.
@inlinable
func channelsLastChunkSums<Terms: LaneTerms>(
    _ terms: Terms, rows: Range<Int>, scratch: ChannelsLastScratch<Terms.Scalar>,
    first: UnsafeMutableBufferPointer<Double>, second: UnsafeMutableBufferPointer<Double>
) {
    typealias T = Terms.Scalar
    let lanes = T.Vector.scalarCount, channels = scratch.channels, blockLength = scratch.blockLength
    let firstLanes = scratch.firstLanes.baseAddress!, secondLanes = scratch.secondLanes.baseAddress!
    scratch.firstLanes.update(repeating: 0)
    scratch.secondLanes.update(repeating: 0)
    var row = rows.lowerBound
    while row + 2 * lanes <= rows.upperBound {
        let base = row * channels
        var offset = 0
        while offset < blockLength {
            let (a, b, c) = terms.vectors(at: base + offset, tiled: offset)
            storeVector(loadVector(firstLanes, offset) + a, firstLanes, offset)
            var product = loadVector(secondLanes, offset)
            product.addProduct(b, c)
            storeVector(product, secondLanes, offset)
            offset += lanes
        }
        row += 2 * lanes
    }
    for channel in 0..<channels {
        first[channel] = widenedLaneSum(lanes: lanes) { firstLanes[$0 * channels + channel] }
            + widenedLaneSum(lanes: lanes) { firstLanes[(lanes + $0) * channels + channel] }
        second[channel] = widenedLaneSum(lanes: lanes) { secondLanes[$0 * channels + channel] }
            + widenedLaneSum(lanes: lanes) { secondLanes[(lanes + $0) * channels + channel] }
    }
    while row < rows.upperBound {
        for channel in 0..<channels {
            let (a, b, c) = terms.scalars(at: row * channels + channel, tiled: channel)
            first[channel] += a.widened
            second[channel] += b.widened * c.widened
        }
        row += 1
    }
}

/// Per-worker scratch of the channels-last kernels, allocated once per call:
/// lane accumulators and per-channel constants tiled over a block of 2L rows
/// (2L·C values, plus one vector so a load that starts late in the block
/// can run past its end), and per-channel sums.
@usableFromInline
final class ChannelsLastScratch<T: InstanceNormScalar> {
    @usableFromInline let channels: Int
    /// 2L·C: the values of one block of rows.
    @usableFromInline let blockLength: Int
    @usableFromInline let firstLanes, secondLanes: UnsafeMutableBufferPointer<T.Compute>
    /// Per-channel constants, each tiled: tiled[k][j] = value(j mod C).
    @usableFromInline let tiled: [UnsafeMutableBufferPointer<T.Compute>]
    @usableFromInline let first, second, totalFirst, totalSecond: UnsafeMutableBufferPointer<Double>

    @inlinable init(channels: Int) {
        self.channels = channels
        blockLength = 2 * T.Vector.scalarCount * channels
        firstLanes = .allocate(capacity: blockLength)
        secondLanes = .allocate(capacity: blockLength)
        tiled = (0..<5).map { _ in .allocate(capacity: 2 * T.Vector.scalarCount * channels + T.Vector.scalarCount) }
        first = .allocate(capacity: channels)
        second = .allocate(capacity: channels)
        totalFirst = .allocate(capacity: channels)
        totalSecond = .allocate(capacity: channels)
    }

    deinit {
        for buffer in [firstLanes, secondLanes] + tiled { buffer.deallocate() }
        for buffer in [first, second, totalFirst, totalSecond] { buffer.deallocate() }
    }

    /// Fills tiled constant `slot` with value(channel) at every position.
    @inlinable func tile(_ slot: Int, _ value: (Int) -> T.Compute) {
        for channel in 0..<channels { tiled[slot][channel] = value(channel) }
        replicate(slot)
    }

    /// Sets one channel's value of a tiled constant; `replicate` then
    /// copies the first C values over the rest of the slot.
    @inlinable func set(_ slot: Int, channel: Int, _ value: T.Compute) { tiled[slot][channel] = value }

    /// Doubles the filled prefix until the slot is full: log2 block copies
    /// rather than one dependent copy per value.
    @inlinable func replicate(_ slot: Int) {
        let base = tiled[slot].baseAddress!, count = tiled[slot].count
        var filled = channels
        while filled < count {
            let copied = min(filled, count - filled)
            (base + filled).update(from: base, count: copied)
            filled += copied
        }
    }

    @inlinable func tiledBase(_ slot: Int) -> UnsafePointer<T.Compute> { UnsafePointer(tiled[slot].baseAddress!) }

    /// Per channel, the sums of `terms` over `rows`, chunk by chunk
    /// (`reductionChunk` rows), added in chunk order into totalFirst,
    /// totalSecond: what `chunkedSums` does for one channels-first instance.
    @inlinable func chunkedSums<Terms: LaneTerms>(_ terms: Terms, rows: Int) where Terms.Scalar == T {
        totalFirst.update(repeating: 0)
        totalSecond.update(repeating: 0)
        var start = 0
        while start < rows {
            channelsLastChunkSums(terms, rows: start..<min(start + reductionChunk, rows), scratch: self,
                                  first: first, second: second)
            for channel in 0..<channels {
                totalFirst[channel] += first[channel]
                totalSecond[channel] += second[channel]
            }
            start += reductionChunk
        }
    }
}

// MARK: - Elementwise

/// y = (x − μ_hi)·a + b with per-channel constants in tiled slots 0, 1, 2.
@usableFromInline
struct TiledNormalizeOperation<Scalar: InstanceNormScalar>: ElementwiseOperation {
    @usableFromInline let x: UnsafePointer<Scalar>
    @usableFromInline let meanHigh, scale, offset: UnsafePointer<Scalar.Compute>
    @usableFromInline let period: Int

    @inlinable init(x: UnsafePointer<Scalar>, scratch: ChannelsLastScratch<Scalar>) {
        self.x = x
        meanHigh = scratch.tiledBase(0)
        scale = scratch.tiledBase(1)
        offset = scratch.tiledBase(2)
        period = scratch.blockLength
    }

    @inlinable @inline(__always)
    func vector(at index: Int, tiled: Int) -> Scalar.Vector {
        loadVector(offset, tiled).addingProduct(loadVector(x, index) - loadVector(meanHigh, tiled), loadVector(scale, tiled))
    }

    @inlinable @inline(__always)
    func scalar(at index: Int, tiled: Int) -> Scalar.Compute {
        offset[tiled].addingProduct(x[index].computed - meanHigh[tiled], scale[tiled])
    }
}

/// dx = k·(dy − m̄) + p·(x − μ_hi) + q with per-channel constants in tiled
/// slots 0 (μ_hi), 1 (m̄), 2 (k), 3 (p), 4 (q).
@usableFromInline
struct TiledInputGradientOperation<Scalar: InstanceNormScalar>: ElementwiseOperation {
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
        period = scratch.blockLength
    }

    @inlinable @inline(__always)
    func vector(at index: Int, tiled: Int) -> Scalar.Vector {
        loadVector(offset, tiled)
            .addingProduct(loadVector(centeredScale, tiled), loadVector(x, index) - loadVector(meanHigh, tiled))
            .addingProduct(loadVector(gradientScale, tiled), loadVector(dy, index) - loadVector(meanDy, tiled))
    }

    @inlinable @inline(__always)
    func scalar(at index: Int, tiled: Int) -> Scalar.Compute {
        offset[tiled].addingProduct(centeredScale[tiled], x[index].computed - meanHigh[tiled])
            .addingProduct(gradientScale[tiled], dy[index].computed - meanDy[tiled])
    }
}
