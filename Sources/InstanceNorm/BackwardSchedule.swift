/// How the backward over small instances shares its blocks among workers
/// so that each worker can add its instances' s1, s2 into dγ, dβ as it
/// goes, in sample order (the order of `combineParameterGradients`), with
/// no pass over N·C stored sums afterwards:
///
/// - one worker takes every instance in order;
/// - with C wide enough (at least a block of channels per worker), worker w
///   takes a run of channels, whole blocks of them, in every sample: the
///   channels' sums are its alone, added sample after sample;
/// - otherwise (few channels, several threads) worker w takes a run of
///   samples, and the sums are added in sample order once all are done.
@usableFromInline
struct BackwardSchedule: Sendable {
    @usableFromInline let batch, channels, lanes, workers: Int
    /// Workers own channels (rather than samples).
    @usableFromInline let splitsChannels: Bool

    @inlinable init(shape: InstanceNormShape, lanes: Int, threads: Int) {
        batch = shape.batch
        channels = shape.channels
        self.lanes = lanes
        let channelBlocks = (channels + lanes - 1) / lanes
        if threads > 1 && channelBlocks >= 2 {
            workers = min(threads, channelBlocks)
            splitsChannels = true
        } else {
            workers = max(1, min(threads, batch))
            splitsChannels = false
        }
    }

    /// Whether each worker adds its own sums into dγ, dβ block by block.
    @inlinable var combinesInLine: Bool { splitsChannels || workers == 1 }

    /// The channels of `worker`: whole blocks of them, balanced.
    @inlinable func channels(of worker: Int) -> Range<Int> {
        guard splitsChannels else { return 0..<channels }
        let blocks = balancedRange((channels + lanes - 1) / lanes, worker, workers)
        return blocks.lowerBound * lanes..<min(blocks.upperBound * lanes, channels)
    }

    /// The samples of `worker`.
    @inlinable func samples(of worker: Int) -> Range<Int> {
        splitsChannels ? 0..<batch : balancedRange(batch, worker, workers)
    }

    /// The runs of consecutive instances of `worker`, in order: one per
    /// sample when it owns channels, one over its samples otherwise.
    @inlinable func runs(of worker: Int) -> [Range<Int>] {
        let owned = channels(of: worker), samples = samples(of: worker)
        if owned.count == channels { return [samples.lowerBound * channels..<samples.upperBound * channels] }
        return samples.map { $0 * channels + owned.lowerBound..<$0 * channels + owned.upperBound }
    }

    /// The number of blocks `worker` takes.
    @inlinable func blockCount(of worker: Int) -> Int {
        runs(of: worker).reduce(0) { $0 + InstanceBlocks(instances: $1, lanes: lanes).count }
    }

    /// body(i, block) for the i-th block of `worker`, in order.
    @inlinable func forEachBlock(of worker: Int, _ body: (Int, Range<Int>) -> Void) {
        var index = 0
        for run in runs(of: worker) {
            for block in InstanceBlocks(instances: run, lanes: lanes) {
                body(index, block)
                index += 1
            }
        }
    }

    /// The number of a worker's last blocks whose dx waits for
    /// `BackwardOverlap.sumsReady`: enough for `elements` values (at least
    /// one block when positive), as `WorkSplit.deferredTails` counts instances.
    @inlinable func tailBlocks(of worker: Int, elements: Int, spatialCount: Int) -> Int {
        guard elements > 0 else { return 0 }
        let perBlock = lanes * spatialCount
        return min(blockCount(of: worker), (elements + perBlock - 1) / perBlock)
    }
}
