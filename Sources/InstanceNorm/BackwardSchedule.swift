/// How the backward over small instances shares its blocks among workers:
/// as the forward does, worker w takes a balanced run of whole blocks of
/// B consecutive instances. One worker adds each block's s1, s2 into dγ,
/// dβ as it goes (instance order, the order of
/// `combineParameterGradients`); several store them, and they are added
/// in sample order once all are done.
///
/// (Workers owning runs of channels in every sample, which would let each
/// add its channels' sums in line, took about twice as long as one worker
/// at two threads on (4096, 128, 4, 4) float32 on the shared test machine,
/// in 2 of 3 side-by-side rounds; runs of blocks took 1.2x.)
@usableFromInline
struct BackwardSchedule: Sendable {
    @usableFromInline let instanceCount, lanes, blocks, workers: Int

    @inlinable init(shape: InstanceNormShape, lanes: Int, threads: Int) {
        instanceCount = shape.instanceCount
        self.lanes = lanes
        blocks = (instanceCount + lanes - 1) / lanes
        workers = max(1, min(threads, blocks))
    }

    /// Whether the worker adds its own sums into dγ, dβ block by block.
    @inlinable var combinesInLine: Bool { workers == 1 }

    /// The instances of `worker`: its blocks'.
    @inlinable func instances(of worker: Int) -> Range<Int> {
        let mine = balancedRange(blocks, worker, workers)
        return mine.lowerBound * lanes..<min(mine.upperBound * lanes, instanceCount)
    }

    /// The number of blocks `worker` takes.
    @inlinable func blockCount(of worker: Int) -> Int {
        InstanceBlocks(instances: instances(of: worker), lanes: lanes).count
    }

    /// body(i, block) for the i-th block of `worker`, in order.
    @inlinable func forEachBlock(of worker: Int, _ body: (Int, Range<Int>) -> Void) {
        for (index, block) in InstanceBlocks(instances: instances(of: worker), lanes: lanes).enumerated() {
            body(index, block)
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
