import _InstanceNormShims

/// Division by M, lane by lane: by multiplication when M is a power of
/// two, where x·(1/M) and x/M are the same correctly rounded value of the
/// same real number (so the same bits, at a fraction of a division's cost).
@usableFromInline
struct LaneDivisor: Sendable {
    @usableFromInline let count: Double
    @usableFromInline let reciprocal: Double?

    @inlinable init(_ count: Int) {
        self.count = Double(count)
        reciprocal = count.nonzeroBitCount == 1 ? 1 / Double(count) : nil
    }

    @inlinable @inline(__always)
    func divide<Wide: SIMD>(_ value: Wide) -> Wide where Wide.Scalar == Double {
        if let reciprocal { return value * reciprocal }
        return value / count
    }
}

/// The statistics of a block's instances, one per lane, computed by the
/// operations of `InstanceKernel.moments` and `InstanceStatistics` in their
/// order: each lane holds its instance's bits.
@usableFromInline
struct LaneStatistics<C: InstanceNormComputeScalar> {
    /// μ, σ², r = 1/sqrt(σ² + ε) per lane.
    @usableFromInline var mean, variance, invstd: C.WideLanes

    @inlinable init(mean: C.WideLanes, variance: C.WideLanes, invstd: C.WideLanes) {
        self.mean = mean
        self.variance = variance
        self.invstd = invstd
    }

    /// The moments of every lane's instance from its columns (see
    /// `InstanceKernel.moments`): one pass about the first value K, and,
    /// if any lane's first value is an outlier, a second pass about each
    /// lane's rounded mean, kept for exactly the lanes that need it.
    @inlinable @inline(__always)
    init<T: InstanceNormScalar>(
        columns: UnsafePointer<T>, stride: Int = C.Lanes.scalarCount, count: Int, divisor: LaneDivisor, eps: Double,
        eachGroup: () -> Void = {}
    ) where T.Compute == C {
        self.init(shift: loadVector(columns, 0), divisor: divisor, eps: eps) { shift in
            laneSums(ShiftedColumns(columns, stride: stride, shift: shift), count: count, eachGroup: eachGroup)
        }
    }

    /// The same from a block held in natural order (instance b's `count`
    /// values at `rows + b·count`), each group's sums from tiles turned in
    /// registers (`InstanceNormScalar.shiftedGroupSums`): the same bits.
    /// Above `NextBlockLines.burstLimit` positions, each group asks for its
    /// slice of the next block's lines.
    @inlinable @inline(__always)
    init<T: InstanceNormScalar>(rows: UnsafePointer<T>, count: Int, divisor: LaneDivisor, eps: Double) where T.Compute == C {
        let next = NextBlockLines(T.self, spatialCount: count)
        self.init(shift: T.firstValues(rows, rowStride: count), divisor: divisor, eps: eps) { shift in
            sumsByGroup(C.self, count: count) { start, length in
                next?.ask(after: UnsafeRawPointer(rows), group: start)
                return T.shiftedGroupSums(x: rows + start, rowStride: count, shift: shift, count: length)
            }
        }
    }

    /// The moments from `shiftedSums(K)`, Σ (x − K) and Σ (x − K)² per lane
    /// in `laneSums`' order, about each lane's first value, then about its
    /// rounded mean where the first value was an outlier.
    @inlinable @inline(__always)
    init(shift: C.Lanes, divisor: LaneDivisor, eps: Double, shiftedSums: (C.Lanes) -> (C.WideLanes, C.WideLanes)) {
        let (sum, sumSquares) = shiftedSums(shift)
        let shiftedMean = divisor.divide(sum)
        var variance = divisor.divide(sumSquares) - shiftedMean * shiftedMean
        var mean = C.widen(shift) + shiftedMean
        let outlier = shiftedMean * shiftedMean, limit = 4 * variance
        // As `momentsFromShiftedSums`: a NaN lane takes the second pass too.
        if !C.allAtMost(outlier, limit) {
            let center = C.narrow(mean)
            let (deviation, squaredDeviation) = shiftedSums(center)
            var centeredVariance = divisor.divide(squaredDeviation - divisor.divide(deviation * deviation))
            // max(σ², 0) as Swift's `max` takes it: 0 where 0 >= σ².
            centeredVariance = C.select(centeredVariance, atMost: C.WideLanes(), C.WideLanes(), else: centeredVariance)
            mean = C.select(outlier, atMost: limit, mean, else: C.widen(center) + divisor.divide(deviation))
            variance = C.select(outlier, atMost: limit, variance, else: centeredVariance)
        }
        self.init(mean: mean, variance: variance, invstd: 1 / C.squareRoot(variance + eps))
    }

    /// The lanes' means and invstds read from `statistics` (`count`
    /// instances; the other lanes and the variances are zero), through
    /// `staging` (3·B doubles).
    @inlinable @inline(__always)
    init(_ statistics: UnsafePointer<InstanceStatistics>, count: Int, staging: UnsafeMutablePointer<Double>) {
        let lanes = C.WideLanes.scalarCount
        if count == lanes {
            let source = UnsafeRawPointer(statistics).assumingMemoryBound(to: Double.self)
            for first in stride(from: 0, to: lanes, by: 4) {
                instnorm_load_statistics4(source + 3 * first, staging + first, staging + lanes + first)
            }
        } else {
            for lane in 0..<lanes {
                staging[lane] = lane < count ? statistics[lane].mean : 0
                staging[lanes + lane] = lane < count ? statistics[lane].invstd : 0
            }
        }
        self.init(mean: lanesAt(staging), variance: C.WideLanes(), invstd: lanesAt(staging + lanes))
    }

    /// Writes the first `count` lanes to `statistics`, through `staging`;
    /// `streaming`, a whole block with streaming stores (see
    /// `streamsTable`).
    @inlinable @inline(__always)
    func store(
        to statistics: UnsafeMutablePointer<InstanceStatistics>, count: Int, staging: UnsafeMutablePointer<Double>,
        streaming: Bool
    ) {
        let lanes = C.WideLanes.scalarCount
        storeLanes(mean, staging)
        storeLanes(variance, staging + lanes)
        storeLanes(invstd, staging + 2 * lanes)
        if count == lanes {
            let out = UnsafeMutableRawPointer(statistics).assumingMemoryBound(to: Double.self)
            let streams = streamsTable(streaming, out)
            for first in stride(from: 0, to: lanes, by: 4) {
                let (means, variances, invstds): (SIMD4<Double>, SIMD4<Double>, SIMD4<Double>) =
                    (lanesAt(staging + first), lanesAt(staging + lanes + first), lanesAt(staging + 2 * lanes + first))
                if streams {
                    instnorm_stream_statistics4(out + 3 * first, means, variances, invstds)
                } else {
                    instnorm_store_statistics4(out + 3 * first, means, variances, invstds)
                }
            }
            return
        }
        for lane in 0..<count {
            statistics[lane] = InstanceStatistics(
                mean: staging[lane], variance: staging[lanes + lane], invstd: staging[2 * lanes + lane])
        }
    }

    /// μ = μ_hi + μ_lo per lane, as `InstanceStatistics.splitMean`.
    @inlinable @inline(__always)
    var splitMean: (high: C.Lanes, low: C.WideLanes) {
        let high = C.narrow(mean)
        return (high, mean - C.widen(high))
    }
}

/// γ or β of every channel, widened, tiled so that the lanes of any run
/// of B consecutive instances are one vector: value j is that of channel
/// j mod C, for j < C + B.
@usableFromInline
final class ChannelLanes: @unchecked Sendable {
    @usableFromInline let values: UnsafeMutablePointer<Double>
    @usableFromInline let channels: InstanceChannels

    /// `parameters` widened, or `value` for every channel without them.
    @inlinable init<T: InstanceNormScalar>(_ parameters: UnsafeBufferPointer<T>?, channels: Int, lanes: Int, default value: Double) {
        self.channels = InstanceChannels(channels)
        values = .allocate(capacity: channels + lanes)
        for index in 0..<channels + lanes {
            values[index] = parameters.map { $0[index % channels].widened } ?? value
        }
    }

    deinit { values.deallocate() }

    /// The lanes of the B instances from `firstInstance` on.
    @inlinable @inline(__always)
    func lanes<Wide: SIMD>(from firstInstance: Int) -> Wide where Wide.Scalar == Double {
        lanesAt(values + channels.channel(of: firstInstance))
    }
}

/// The channel of an instance, n mod C, once per block: below 2^32 by two
/// multiplications (Lemire, Kaser and Kurz, "Faster remainder by direct
/// computation", 2019: exact for n and C below 2^32), where an integer
/// division per block came two or three times per 64 values at M = 4.
@usableFromInline
struct InstanceChannels: Sendable {
    @usableFromInline let count: Int
    /// ⌊(2^64 − 1)/C⌋ + 1 (wrapping to 0 for C = 1, whose remainder is 0).
    @usableFromInline let factor: UInt64
    /// The instances below which `factor` gives n mod C: 2^32, or none for C ≥ 2^32.
    @usableFromInline let limit: Int

    @inlinable init(_ count: Int) {
        self.count = count
        factor = UInt64.max / UInt64(count) &+ 1
        limit = count < 1 << 32 ? 1 << 32 : 0
    }

    /// n mod C for an instance n ≥ 0.
    @inlinable @inline(__always)
    func channel(of instance: Int) -> Int {
        guard instance < limit else { return instance % count }
        let fraction = factor &* UInt64(truncatingIfNeeded: instance)
        return Int(truncatingIfNeeded: fraction.multipliedFullWidth(by: UInt64(truncatingIfNeeded: count)).high)
    }
}

/// The vector of doubles at `address`.
@inlinable @inline(__always)
func lanesAt<Wide: SIMD>(_ address: UnsafeMutablePointer<Double>) -> Wide where Wide.Scalar == Double {
    UnsafeRawPointer(address).loadUnaligned(as: Wide.self)
}

/// Stores the vector `lanes` at `address`.
@inlinable @inline(__always)
func storeLanes<Wide: SIMD>(_ lanes: Wide, _ address: UnsafeMutablePointer<Double>) where Wide.Scalar == Double {
    UnsafeMutableRawPointer(address).storeBytes(of: lanes, as: Wide.self)
}

/// A row of a table of pairs, (count, 2) interleaved: a sample's
/// (Σ dy, Σ dy·x̂) per position for LayerNorm (`RowShares`), its two sums
/// per channel for `ChannelRows`.
@usableFromInline
struct ShareTable: ShareSink {
    @usableFromInline let pairs: UnsafeMutablePointer<Double>

    @inlinable init(_ pairs: UnsafeMutablePointer<Double>) { self.pairs = pairs }

    @inlinable @inline(__always)
    func take(_ first: SIMD4<Double>, _ second: SIMD4<Double>, at position: Int) {
        instnorm_store_pairs4(pairs + 2 &* position, first, second)
    }

    @inlinable @inline(__always)
    func take(_ first: Double, _ second: Double, at position: Int) {
        pairs[2 &* position] = first
        pairs[2 &* position &+ 1] = second
    }

    /// Pairs `positions` from the planar `first` and `second`, indexed as the positions.
    @inlinable @inline(__always)
    func take(first: UnsafeMutablePointer<Double>, second: UnsafeMutablePointer<Double>, positions: Range<Int>) {
        var position = positions.lowerBound
        while position + 4 <= positions.upperBound {
            take(lanesAt(first + position), lanesAt(second + position), at: position)
            position += 4
        }
        while position < positions.upperBound {
            take(first[position], second[position], at: position)
            position += 1
        }
    }
}
