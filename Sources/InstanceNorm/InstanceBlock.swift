import _InstanceNormShims

/// One worker's scratch for blocks of small instances (see
/// `SmallInstances`): a block is B = `T.Vector.scalarCount` consecutive
/// instances of M values, which are B·M consecutive values, or M whole
/// vectors, of the tensor.
///
/// The block is held transposed, as M columns of B lanes: lane b of column
/// m is value m of instance b, in the compute precision. Every per-value
/// operation of a kernel is then lane-wise, and lane b computes exactly
/// what the per-instance kernels compute for instance b.
///
///     natural (tensor):  instance b's values at b·M ..< (b+1)·M
///     columns (scratch): value m of instance b at m·B + b
///
/// Both ways go through square tiles of `T.Compute.tileSize`, turned in
/// registers (`InstanceNormScalar.transposeTile`); instances of four
/// values (2×2 maps), whose tiles would be half past the instances, go
/// through `transposeQuads`, and their outputs are computed as columns and
/// turned back (`writeQuads`).
@usableFromInline
final class BlockScratch<T: InstanceNormScalar> {
    /// M.
    @usableFromInline let spatialCount: Int
    /// M rounded up to whole tiles: the columns a transpose fills (those
    /// past M hold whatever follows an instance, and are never used).
    @usableFromInline let columnCount: Int
    /// Per set (two blocks in flight) and kind (x, and for the backward
    /// dy): the columns.
    @usableFromInline let columnSlots: UnsafeMutablePointer<T.Compute>
    /// Per set and kind, room for an input block copied and padded with
    /// zeros, for the blocks whose tiles would read past the tensor or that
    /// hold fewer than B instances: B·M values and a vector.
    @usableFromInline let paddedSlots: UnsafeMutablePointer<T>
    @usableFromInline let paddedCount: Int
    /// Room for three vectors of per-lane doubles, gathered or scattered
    /// one lane at a time (see `LaneStatistics`).
    @usableFromInline let staging: UnsafeMutablePointer<Double>
    /// Per set, up to five vectors of per-lane constants of the block's
    /// output, kept here between the stages of the pipelined loops
    /// (passed as values, their 64-byte vectors are copied by memmove).
    @usableFromInline let constantSets: UnsafeMutablePointer<T.Compute>
    /// Whether the instances hold four values each (see the type's notes).
    @usableFromInline let holdsQuads: Bool
    /// For quads: an output's four columns, then the same turned back.
    @usableFromInline let outputColumns, outputRows: UnsafeMutablePointer<T.Compute>

    @inlinable init(spatialCount: Int) {
        let lanes = T.Vector.scalarCount, tile = T.Compute.tileSize
        self.spatialCount = spatialCount
        columnCount = (spatialCount + tile - 1) / tile * tile
        paddedCount = lanes * spatialCount + lanes
        columnSlots = allocateAligned(4 * columnCount * lanes, of: T.Compute.self)
        paddedSlots = allocateAligned(4 * paddedCount, of: T.self)
        staging = allocateAligned(3 * lanes, of: Double.self)
        constantSets = allocateAligned(2 * 5 * lanes, of: T.Compute.self)
        holdsQuads = spatialCount == 4
        outputColumns = allocateAligned(2 * 4 * lanes, of: T.Compute.self)
        outputRows = outputColumns + 4 * lanes
    }

    deinit {
        columnSlots.deallocate()
        paddedSlots.deallocate()
        staging.deallocate()
        constantSets.deallocate()
        outputColumns.deallocate()
    }

    /// Whether a block's sums in registers (`sumsGroupsInRegisters`) ask
    /// for the next block group by group (`NextBlockLines`), so that `load`
    /// must not ask for it at once: one answer for both, or the lines are
    /// asked twice or not at all.
    @inlinable var groupsAskForNext: Bool {
        T.sumsGroupsInRegisters && NextBlockLines.spreads(spatialCount: spatialCount)
    }

    /// The columns of set 0 or 1, of x (kind 0) or dy (kind 1).
    @inlinable @inline(__always)
    func columns(_ set: Int, _ kind: Int = 0) -> UnsafeMutablePointer<T.Compute> {
        columnSlots + (2 &* set &+ kind) &* columnCount &* T.Vector.scalarCount
    }

    /// Constant vector `index` (< 5) of set 0 or 1.
    @inlinable @inline(__always)
    func constant(_ set: Int, _ index: Int) -> UnsafeMutablePointer<T.Compute> {
        constantSets + (set &* 5 &+ index) &* T.Vector.scalarCount
    }

    /// Lane b of column m of `columns`.
    @inlinable @inline(__always)
    func column(_ columns: UnsafeMutablePointer<T.Compute>, _ m: Int) -> T.Vector {
        loadVector(UnsafePointer(columns), m &* T.Vector.scalarCount)
    }

    /// Transposes the `count` ≤ B instances at `block` into the columns of
    /// `set` and `kind`, and returns where their values can be read in
    /// natural order with a vector's room past their end: `block` itself,
    /// or, for a block near the tensor's end (a tile or a vector reads past
    /// an instance's end) or one of fewer than B instances, a copy padded
    /// with zeros (the missing instances' lanes are computed, never stored).
    /// `available` is how many values the tensor holds from `block` on.
    /// Without `transposing`, only the natural-order source (for kernels
    /// that turn their tiles in registers, `gradientGroupSums`). Unless
    /// `askingForNext` is false (the caller's sums ask for the next block
    /// group by group, `NextBlockLines`), the next block's lines are asked
    /// for here.
    @inlinable @inline(__always)
    func load(
        _ block: UnsafePointer<T>, count: Int, available: Int, set: Int, kind: Int = 0, transposing: Bool = true,
        askingForNext: Bool = true
    ) -> UnsafePointer<T> {
        let lanes = T.Vector.scalarCount, tile = T.Compute.tileSize, length = spatialCount
        // The next block, which a worker usually reads next: the tiles read a
        // block eight rows at a time, an order the hardware prefetchers do
        // not follow far enough ahead. (A prefetch never faults, past the
        // tensor's end too.)
        if askingForNext { prefetchLines(block + lanes * length, count: lanes * length) }
        var source = block
        if count < lanes || lanes * length + lanes > available {
            let padded = paddedSlots + (2 * set + kind) * paddedCount
            padded.update(from: block, count: count * length)
            (padded + count * length).update(repeating: 0, count: paddedCount - count * length)
            source = UnsafePointer(padded)
        }
        guard transposing else { return source }
        let columns = columns(set, kind)
        if holdsQuads {
            T.transposeQuads(source, into: columns)
            return source
        }
        for firstRow in stride(from: 0, to: lanes, by: tile) {
            for firstColumn in stride(from: 0, to: columnCount, by: tile) {
                T.transposeTile(
                    source + firstRow * length + firstColumn, rowStride: length,
                    into: columns + firstColumn * lanes + firstRow, columnStride: lanes)
            }
        }
        return source
    }
}

/// The lines of the block after a block held in natural order (B
/// instances of M values at `rows`), asked into L2 a slice at a time: one
/// slice per group of `blockedSumGroup` positions that the block's sums
/// take, so that the requests spread over the block's arithmetic. Asked
/// all at once before the block (98 lines of x and dy at M = 49 in the
/// backward), they filled the line-fill buffers, and the core waited for
/// them to drain with nothing of its own to do: one thread, float32,
/// (2048,128,7,7), backward 0.75× the time spread out (5 alternating
/// rounds). A sum that goes over its block twice (the forward's second
/// pass) asks twice; the lines are in L2 by then.
@usableFromInline
struct NextBlockLines {
    /// The most positions a block can have and still ask for the next
    /// block at once, before its sums: spread over only two groups, the
    /// lines of M = 16 came too late (backward 1.02× the time, asked two
    /// blocks ahead 1.3×; 7 alternating rounds).
    @usableFromInline static let burstLimit = 2 * blockedSumGroup

    /// Whether blocks of `spatialCount` positions ask group by group.
    @inlinable static func spreads(spatialCount: Int) -> Bool { spatialCount > burstLimit }

    /// B·M values, in bytes.
    @usableFromInline let blockBytes: Int
    /// Bytes of a slice: whole lines, enough that the groups cover the block.
    @usableFromInline let sliceBytes: Int

    /// Nil for blocks that ask at once (`spreads`).
    @inlinable init?<T: InstanceNormScalar>(_: T.Type, spatialCount: Int) {
        guard Self.spreads(spatialCount: spatialCount) else { return nil }
        blockBytes = T.Vector.scalarCount * spatialCount * MemoryLayout<T>.stride
        let groups = (spatialCount + blockedSumGroup - 1) / blockedSumGroup
        // A block that does not start on a line touches one line more.
        sliceBytes = ((blockBytes + 64) / groups + 63) & ~63
    }

    /// Asks for the slice of the group that starts at position `start` of
    /// the block at `rows`, and of the block at `otherRows` with it (x and
    /// dy in the backward).
    @inlinable @inline(__always)
    func ask(after rows: UnsafeRawPointer, and otherRows: UnsafeRawPointer? = nil, group start: Int) {
        let (from, lines) = slice(after: rows, group: start)
        guard let otherRows else {
            instnorm_prefetch_line_pairs(from, nil, lines)
            return
        }
        let (otherFrom, otherLines) = slice(after: otherRows, group: start)
        instnorm_prefetch_line_pairs(from, otherFrom, max(lines, otherLines))
    }

    /// The first line of the slice of group `start` of the block after
    /// the one at `rows`, and its lines up to that block's end (≤ 0 past it).
    @inlinable @inline(__always)
    func slice(after rows: UnsafeRawPointer, group start: Int) -> (UnsafeRawPointer?, Int) {
        let next = rows + blockBytes, firstLine = Int(bitPattern: next) & ~63
        let end = Int(bitPattern: next + blockBytes), from = firstLine &+ start / blockedSumGroup &* sliceBytes
        return (UnsafeRawPointer(bitPattern: from), (min(from &+ sliceBytes, end) &- from &+ 63) >> 6)
    }
}

/// `count` zeros, 64-byte aligned: vectors loaded from scratch never
/// straddle a cache line. (Free with `deallocate()`.)
@inlinable
func allocateAligned<Element: BinaryFloatingPoint>(_ count: Int, of _: Element.Type) -> UnsafeMutablePointer<Element> {
    let raw = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1) * MemoryLayout<Element>.stride, alignment: 64)
    let pointer = raw.bindMemory(to: Element.self, capacity: count)
    pointer.initialize(repeating: 0, count: count)
    return pointer
}
