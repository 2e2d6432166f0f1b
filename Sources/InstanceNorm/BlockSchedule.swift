import _InstanceNormShims

/// How the small-instance kernels (forward and backward) share their
/// blocks among workers: they claim runs of consecutive blocks of B
/// instances in turn as they come free, shorter as fewer are left
/// (`BlockClaims`), so that a worker on a slower core takes fewer; the
/// bits do not depend on who takes which, since a block's results are its
/// own. In the backward, one worker adds each block's s1, s2 into dγ, dβ
/// as it goes (instance order, the order of `combineParameterGradients`);
/// several store them, and they are added in sample order once all are
/// done.
///
/// (Workers owning runs of channels in every sample, which would let each
/// add its channels' sums in line, took about twice as long as one worker
/// at two threads on (4096, 128, 4, 4) float32 on the shared test machine,
/// in 2 of 3 side-by-side rounds; runs of blocks took 1.2x. A balanced run
/// of blocks per worker, fixed in advance, left the faster of two threads
/// waiting at the join: one took 53-55% of the kernel's samples.)
@usableFromInline
struct BlockSchedule: Sendable {
    /// The blocks of B instances (the last may hold fewer).
    @usableFromInline let instanceBlocks: InstanceBlocks
    @usableFromInline let workers: Int

    @inlinable init(shape: InstanceNormShape, lanes: Int, threads: Int) {
        self.init(instanceCount: shape.instanceCount, lanes: lanes, threads: threads)
    }

    @inlinable init(instanceCount: Int, lanes: Int, threads: Int) {
        instanceBlocks = SmallInstances.blocks(instanceCount, lanes: lanes)
        workers = max(1, min(threads, instanceBlocks.count))
    }

    /// The number of blocks.
    @inlinable var blocks: Int { instanceBlocks.count }

    /// Whether the worker adds its own sums into dγ, dβ block by block.
    @inlinable var combinesInLine: Bool { workers == 1 }

    /// The instances of block `index`.
    @inlinable func block(_ index: Int) -> Range<Int> { instanceBlocks[index] }

    /// The claims of the workers on the blocks: 1/(2·workers) of those
    /// left each time, at least 64 blocks (tens of KiB of x and dy, read in
    /// order), or a 32nd of a worker's share when that is less.
    @inlinable var claims: BlockClaims {
        BlockClaims(0..<blocks, least: min(64, blocks / (32 * workers)), divisor: 2 * workers)
    }

    /// The last blocks, whose dx waits for `BackwardOverlap.sumsReady`:
    /// enough for `elements` values per worker (at least one block each when
    /// positive), as `WorkSplit.deferredTails` counts instances.
    @inlinable func tailBlocks(elements: Int, spatialCount: Int) -> Int {
        guard elements > 0 else { return 0 }
        let perBlock = instanceBlocks.lanes * spatialCount
        return min(blocks, workers * ((elements + perBlock - 1) / perBlock))
    }
}

/// Runs of blocks claimed by workers in turn (see `BlockSchedule`):
/// each claim takes 1/`divisor` of the blocks left, at least `least`, so
/// that the first claims are long runs read in order and the last ones
/// short enough to even out the workers' finish. Iterating it (each
/// worker its own loop) gives the blocks that worker claims, in
/// increasing order.
@usableFromInline
final class BlockClaims: Sequence, @unchecked Sendable {
    @usableFromInline let next: UnsafeMutablePointer<Int>
    @usableFromInline let end, least, divisor: Int

    @inlinable init(_ range: Range<Int>, least: Int, divisor: Int) {
        next = .allocate(capacity: 1)
        next.initialize(to: range.lowerBound)
        end = range.upperBound
        self.least = Swift.max(1, least)
        self.divisor = Swift.max(1, divisor)
    }

    deinit { next.deallocate() }

    @inlinable func makeIterator() -> ClaimedBlocks { ClaimedBlocks(self) }
}

/// The blocks one worker claims from `BlockClaims`. A loop over it keeps
/// the kernels' pipeline state in the loop body's own variables: in a
/// closure they were captured in memory, and on an AMD EPYC (Zen 3) one
/// byte-wide update of the set index followed by a word-wide read cost a
/// failed store forwarding per block, 7% of the M = 4 forward's samples.
@usableFromInline
struct ClaimedBlocks: IteratorProtocol {
    @usableFromInline let claims: BlockClaims
    @usableFromInline var current = 0, claimEnd = 0

    @inlinable init(_ claims: BlockClaims) { self.claims = claims }

    /// The next block, in line; a new claim only at the end of a run.
    @inlinable @inline(__always) mutating func next() -> Int? {
        if current == claimEnd, !claim() { return nil }
        defer { current &+= 1 }
        return current
    }

    /// Claims the next run; false when none is left.
    @inlinable @inline(never) mutating func claim() -> Bool {
        var count = 0
        let start = instnorm_claim_share(claims.next, claims.end, claims.divisor, claims.least, &count)
        guard count > 0 else { return false }
        (current, claimEnd) = (start, start + count)
        return true
    }
}
