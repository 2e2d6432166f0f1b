/// Where the small-instance backward's workers hand over each instance's
/// shares of dγ, dβ (s1 = Σ dy, s2 = r·Σ dy·(x − μ)) while they are in
/// cache: each worker stages them in a table of its own, a run of whole
/// samples long, and passes every full run to `deposit`, which adds it to
/// sums of the worker's own (exact sums, whose result does not depend on
/// who adds what). The (N, C, 2) table of every instance's shares that a
/// reduction would otherwise read back from memory is never written.
///
/// On (4096, 128, 4, 4) float32 at two threads, writing that table took
/// 14% of the backward and reading it back for the deposits about as much
/// again (throwaway builds without the one or the other, alternating runs,
/// an Intel Xeon VM, stop 46).
public final class ShareDeposits: @unchecked Sendable {
    /// Instances per sample (C): a staged row.
    public let channels: Int
    /// Samples a worker stages before its deposit.
    public let rows: Int
    /// The workers that may stage at once: the backward's threads.
    public let workers: Int
    /// Receives a worker's staged run: `rows × 2·C` shares, (s1, s2) per
    /// instance in instance order, zeros for instances of those rows that
    /// the worker did not take. Called on the worker's thread; `worker`
    /// (0 ..< `workers`) says whose sums to add to.
    @usableFromInline let deposit: @Sendable (_ worker: Int, _ table: UnsafeBufferPointer<Double>) -> Void
    @usableFromInline let tables: UnsafeMutablePointer<Double>

    /// - Parameters:
    ///   - channels: C, the instances of a sample.
    ///   - workers: the most workers a backward will run (its threads).
    ///   - deposit: adds a staged run to worker `worker`'s sums.
    public init(channels: Int, workers: Int, deposit: @escaping @Sendable (_ worker: Int, _ table: UnsafeBufferPointer<Double>) -> Void) {
        precondition(channels >= 1 && workers >= 1)
        self.channels = channels
        self.workers = workers
        rows = Self.rows(channels: channels)
        self.deposit = deposit
        tables = .allocate(capacity: workers * rows * 2 * channels)
    }

    deinit { tables.deallocate() }

    /// Whether the backward of `shape` in `layout` stages its shares here:
    /// InstanceNorm (and GroupNorm with G = C) on instances small enough
    /// for the blocked kernels, in either layout, with at most 1024
    /// channels (32 staged rows must fit in a core's L2 cache, 512 KiB).
    public static func applies(to shape: NormShape, layout: TensorLayout) -> Bool {
        guard case .instance(let channelShape) = NormKernel.route(shape, layout) else { return false }
        return SmallInstances.appliesToBackward(channelShape) && rows(channels: channelShape.channels) >= minimumRows
    }

    /// Samples per staged run: 512 KiB of shares, at most 128 rows (the
    /// deposits' fixed work per run and column is then a few percent of it).
    static func rows(channels: Int) -> Int { min(128, (512 << 10) / (2 * channels * MemoryLayout<Double>.stride)) }

    /// The fewest rows worth a run: the deposits work in tiles of 32 rows.
    static let minimumRows = 32

    /// Worker `worker`'s staging table.
    @inlinable func table(_ worker: Int) -> UnsafeMutablePointer<Double> {
        precondition(worker < workers, "worker \(worker) of \(workers)")
        return tables + worker * rows * 2 * channels
    }
}

/// One worker's run of staged shares (see `ShareDeposits`): the instances
/// it has taken since its last deposit, consecutive, within the `rows`
/// samples from `firstInstance`'s.
@usableFromInline
struct ShareStaging {
    @usableFromInline let deposits: ShareDeposits
    @usableFromInline let worker: Int
    @usableFromInline let table: UnsafeMutablePointer<Double>
    /// The run's first row's first instance, one past its last row's last.
    @usableFromInline var firstInstance = 0, endInstance = 0
    /// The instances staged: `covered.lowerBound ..< covered.upperBound`.
    @usableFromInline var coveredStart = 0, coveredEnd = 0

    @inlinable init(_ deposits: ShareDeposits, worker: Int) {
        self.deposits = deposits
        self.worker = worker
        table = deposits.table(worker)
    }

    /// Stages the lanes' s1, s2 of `block` (through `staging`, 2·B
    /// doubles), depositing the run first when the block does not continue
    /// it or does not fit in it.
    @inlinable @inline(__always)
    mutating func record<Wide: SIMD>(_ block: Range<Int>, sumDy: Wide, sumDyXHat: Wide, staging: UnsafeMutablePointer<Double>)
    where Wide.Scalar == Double {
        if block.lowerBound != coveredEnd || block.upperBound > endInstance { restart(at: block.lowerBound) }
        ParameterSums.storePairs(sumDy, sumDyXHat, to: table + 2 * (block.lowerBound - firstInstance), count: block.count,
                                 staging: staging, streaming: false)
        coveredEnd = block.upperBound
    }

    /// Deposits the run, and starts another at `instance`'s sample.
    @inlinable @inline(never)
    mutating func restart(at instance: Int) {
        flush()
        let channels = deposits.channels
        firstInstance = instance / channels * channels
        endInstance = firstInstance + deposits.rows * channels
        (coveredStart, coveredEnd) = (instance, instance)
    }

    /// Deposits the run's whole rows, zeros in place of the instances
    /// around the staged ones (they add nothing), and empties it.
    @inlinable @inline(never)
    mutating func flush() {
        guard coveredEnd > coveredStart else { return }
        let channels = deposits.channels
        let end = firstInstance + (coveredEnd - firstInstance + channels - 1) / channels * channels
        table.update(repeating: 0, count: 2 * (coveredStart - firstInstance))
        (table + 2 * (coveredEnd - firstInstance)).update(repeating: 0, count: 2 * (end - coveredEnd))
        deposits.deposit(worker, UnsafeBufferPointer(start: table, count: 2 * (end - firstInstance)))
        coveredStart = coveredEnd
    }
}
