import Glibc
import _InstanceNormShims

/// The buffers of one forward call, shared by its workers; each worker
/// writes the instances or chunks that `WorkSplit` gives it.
@usableFromInline
struct ForwardBatch<T: InstanceNormScalar>: @unchecked Sendable {
    @usableFromInline let y: SharedBuffer<T>
    @usableFromInline let statistics: SharedBuffer<InstanceStatistics>?
    @usableFromInline let x: SharedBuffer<T>
    @usableFromInline let gamma: SharedBuffer<T>?
    @usableFromInline let beta: SharedBuffer<T>?
    @usableFromInline let shape: InstanceNormShape
    @usableFromInline let spatialCount: Int
    @usableFromInline let eps: Double
    @usableFromInline let streaming: Bool

    @inlinable
    init(
        y: UnsafeMutableBufferPointer<T>, statistics: UnsafeMutableBufferPointer<InstanceStatistics>?,
        x: UnsafeBufferPointer<T>, gamma: UnsafeBufferPointer<T>?, beta: UnsafeBufferPointer<T>?,
        shape: InstanceNormShape, eps: Double, stores: StorePolicy
    ) {
        self.y = SharedBuffer(y)
        self.statistics = statistics.map { SharedBuffer($0) }
        self.x = SharedBuffer(x)
        self.gamma = gamma.map { SharedBuffer($0) }
        self.beta = beta.map { SharedBuffer($0) }
        self.shape = shape
        spatialCount = shape.spatialCount
        self.eps = eps
        streaming = stores.streams(y, tensors: 2, runsOf: shape.spatialCount)
    }

    @inlinable func values(_ instance: Int) -> UnsafeBufferPointer<T> {
        UnsafeBufferPointer(start: x.base + instance * spatialCount, count: spatialCount)
    }

    /// Statistics and y of one whole instance.
    @inlinable func forwardInstance(_ instance: Int) {
        let moments = InstanceKernel.moments(of: values(instance))
        let instanceStatistics = InstanceStatistics(mean: moments.mean, variance: moments.variance, eps: eps)
        statistics!.base[instance] = instanceStatistics
        normalize(instance, 0..<spatialCount, instanceStatistics)
    }

    /// Statistics and y of a worker's run of whole instances, in the fused
    /// order where it pays (`fusedForward`), else one after the other.
    @inlinable func forwardInstances(_ instances: Range<Int>) {
        guard streaming && FusedForward.applies(toRunsOf: spatialCount, T.self) else {
            for instance in instances { forwardInstance(instance) }
            return
        }
        fusedForward(runs: instances, length: spatialCount, x: UnsafePointer(x.base), y: y.base, eps: eps) { instance, instanceStatistics in
            statistics!.base[instance] = instanceStatistics
            return WholeRunOutput(normalizeOperation(instance, instanceStatistics), length: spatialCount)
        }
    }

    /// y over `range` of one instance.
    @inlinable func normalize(_ instance: Int, _ range: Range<Int>, _ instanceStatistics: InstanceStatistics) {
        writeElementwise(
            y.base + instance * spatialCount, range, streaming: streaming, normalizeOperation(instance, instanceStatistics))
    }

    /// The per-value y of `instance` (with `statistics`: a GroupNorm
    /// segment takes its group's), indexed from the instance's start.
    @inlinable func normalizeOperation(_ instance: Int, _ statistics: InstanceStatistics) -> NormalizeOperation<T> {
        let channel = instance % shape.channels
        return InstanceKernel.normalizeOperation(
            x: x.base + instance * spatialCount, statistics: statistics,
            gamma: gamma.map { $0.base[channel].widened } ?? 1, beta: beta.map { $0.base[channel].widened } ?? 0)
    }

    /// The forward with instances cut into chunks shared by the workers:
    /// per-chunk sums in parallel, combined per instance in chunk order (the
    /// single-thread order), a second pass where `moments` would take one,
    /// then y in parallel.
    @inlinable func forwardSplit(_ split: WorkSplit) {
        let base = x
        let moments = split.splitMoments { UnsafePointer(base.base + $0 * split.spatialCount) }
        let perInstance = moments.map { InstanceStatistics(mean: $0.mean, variance: $0.variance, eps: eps) }
        for (instance, instanceStatistics) in perInstance.enumerated() { statistics!.base[instance] = instanceStatistics }
        split.run { worker in
            split.forEachPiece(of: worker) { instance, range in normalize(instance, range, perInstance[instance]) }
        }
    }
}

/// The buffers of one backward call and its per-instance sums (s1, s2),
/// shared by its workers.
@usableFromInline
final class BackwardBatch<T: InstanceNormScalar>: @unchecked Sendable {
    @usableFromInline let dx: SharedBuffer<T>
    @usableFromInline let dy: SharedBuffer<T>
    @usableFromInline let x: SharedBuffer<T>
    @usableFromInline let statistics: UnsafeBufferPointer<InstanceStatistics>
    @usableFromInline let gamma: UnsafeBufferPointer<T>?
    @usableFromInline let shape: InstanceNormShape
    @usableFromInline let spatialCount: Int
    @usableFromInline let streaming: Bool
    /// (s1, s2) per instance, N·C pairs: the caller's table when it passes
    /// one (every pair is written before it is read), else the batch's own.
    @usableFromInline let instanceSums: UnsafeMutableBufferPointer<(sumDy: Double, sumDyXHat: Double)>
    @usableFromInline let ownsSums: Bool

    @inlinable
    init(
        dx: UnsafeMutableBufferPointer<T>, dy: UnsafeBufferPointer<T>, x: UnsafeBufferPointer<T>,
        statistics: UnsafeBufferPointer<InstanceStatistics>, gamma: UnsafeBufferPointer<T>?, shape: InstanceNormShape,
        stores: StorePolicy, sharing table: UnsafeMutableBufferPointer<Double>? = nil
    ) {
        self.dx = SharedBuffer(start: dx.baseAddress)
        self.dy = SharedBuffer(start: UnsafeMutablePointer(mutating: dy.baseAddress))
        self.x = SharedBuffer(start: UnsafeMutablePointer(mutating: x.baseAddress))
        self.statistics = statistics
        self.gamma = gamma
        self.shape = shape
        spatialCount = shape.spatialCount
        streaming = stores.streams(dx, tensors: 3, runsOf: shape.spatialCount)
        if let table, let base = table.baseAddress {
            // Two doubles side by side, as the tuples lie.
            instanceSums = UnsafeMutableBufferPointer(
                start: UnsafeMutableRawPointer(base).assumingMemoryBound(to: (sumDy: Double, sumDyXHat: Double).self),
                count: shape.instanceCount)
            ownsSums = false
        } else {
            instanceSums = .allocate(capacity: shape.instanceCount)
            instanceSums.initialize(repeating: (0, 0))
            ownsSums = true
        }
    }

    deinit { if ownsSums { instanceSums.deallocate() } }

    @inlinable func buffer(_ base: SharedBuffer<T>, _ instance: Int, _ range: Range<Int>) -> UnsafeMutableBufferPointer<T> {
        UnsafeMutableBufferPointer(start: base.base + instance * spatialCount + range.lowerBound, count: range.count)
    }

    /// s1, s2 of one whole instance, and its dx when `writeDx`.
    @inlinable func sums(_ instance: Int, writeDx: Bool) {
        let whole = 0..<spatialCount
        instanceSums[instance] = InstanceKernel.gradientSums(
            dy: UnsafeBufferPointer(buffer(dy, instance, whole)), x: UnsafeBufferPointer(buffer(x, instance, whole)),
            statistics: statistics[instance])
        if writeDx { inputGradient(instance, whole) }
    }

    /// Whether a worker's run of whole instances takes the fused schedule
    /// (`sumsAndDx(of:tail:)`): for streamed outputs whose instances are too
    /// large for one instance's dx to drain from the store queue while the
    /// next one's sums are read (from 8 KiB per tensor on the bench machine;
    /// below that the plain order overlaps the two by itself and was
    /// faster), and small enough that x and dy of two instances stay in a
    /// 1 MiB L2 with room to spare (up to 64 KiB, where it gained 2-4%; at
    /// 128 KiB it was even, with 1 MiB instances 15% slower).
    @inlinable var fusesInstances: Bool { streaming && fusedOrderPays(forRunsOf: spatialCount, T.self) }

    /// s1, s2 of each of `instances`, and dx of those outside `tail`.
    ///
    /// The plain order reads an instance for its sums, then writes its dx
    /// from L1: on one core the two phases do not overlap, and the backward
    /// takes about as long as the reads plus the writes. The fused order
    /// writes the dx of instance i in the same loop that reads instance
    /// i + 1 for its sums, with a prefetch into L2 ahead of those reads, so
    /// that memory serves both at once (1.14-1.22x the plain order's speed
    /// on (64,64,56,56)). The arithmetic is unchanged: the same bits either way.
    @inlinable func sumsAndDx(of instances: Range<Int>, tail: Range<Int>) {
        guard fusesInstances else {
            for instance in instances { sums(instance, writeDx: !tail.contains(instance)) }
            return
        }
        var waiting: Int?  // summed, its dx not yet written
        for instance in instances {
            if let current = waiting {
                sumsWritingDx(of: current, sumsOf: instance)
            } else {
                sums(instance, writeDx: false)
            }
            waiting = tail.contains(instance) ? nil : instance
        }
        if let current = waiting { inputGradient(current, 0..<spatialCount) }
    }

    /// s1, s2 of `next` while dx of `current` (already summed) is streamed
    /// out, two vectors per step of the sums; the rest of dx after.
    @inlinable func sumsWritingDx(of current: Int, sumsOf next: Int) {
        let gradient = gradientOperation(of: current)
        let out = dx.base + current * spatialCount
        // The writer's vectors start at the first 64-byte boundary; the
        // values before it one by one.
        let beforeBoundary = streamingStart(out, 0..<spatialCount)
        writeElementwise(out, 0..<beforeBoundary, streaming: true, gradient)
        let nextDy = dy.base + next * spatialCount, nextX = x.base + next * spatialCount
        var writer = StreamingWriter(
            out: out, gradient, written: beforeBoundary, count: spatialCount,
            prefetching: (UnsafeRawPointer(nextDy), UnsafeRawPointer(nextX)))
        let center = statistics[next].splitMean(as: T.self).high
        let (sumDy, sumDyCentered) = chunkedSums(spatialCount) { chunk in
            // A local copy: the optimizer keeps it in registers, where through
            // the capture it would reload the writer after every store.
            var local = writer
            defer { writer = local }
            return gradientChunkSums(nextDy, nextX, chunk, center: center, alongside: &local)
        }
        instanceSums[next] = InstanceKernel.gradientSums(
            sumDy: sumDy, sumDyCentered: sumDyCentered, statistics: statistics[next], as: T.self)
        writeElementwise(out, writer.written..<spatialCount, streaming: true, gradient)
    }

    /// s1, s2 of every instance from chunks shared by the workers.
    @inlinable func chunkSumsSplit(_ split: WorkSplit) {
        let totals = split.sumsInChunkOrder { instance, range in
            let center = statistics[instance].splitMean(as: T.self).high
            return gradientChunkSums(
                dy.base + instance * spatialCount, x.base + instance * spatialCount, range, center: center)
        }
        for (instance, total) in totals.enumerated() {
            instanceSums[instance] = InstanceKernel.gradientSums(
                sumDy: total.0, sumDyCentered: total.1, statistics: statistics[instance], as: T.self)
        }
    }

    /// dx over `range` of one instance, from its stored sums.
    @inlinable func inputGradient(_ instance: Int, _ range: Range<Int>) {
        let channel = instance % shape.channels
        InstanceKernel.inputGradient(
            buffer(dx, instance, range), dy: UnsafeBufferPointer(buffer(dy, instance, range)),
            x: UnsafeBufferPointer(buffer(x, instance, range)), statistics: statistics[instance],
            gamma: gamma.map { $0[channel].widened } ?? 1,
            sumDy: instanceSums[instance].sumDy, sumDyXHat: instanceSums[instance].sumDyXHat,
            spatialCount: spatialCount, streaming: streaming)
    }

    /// The per-value dx of one summed instance, indexed from its start (for
    /// the fused order, which writes it step by step).
    @inlinable func gradientOperation(of instance: Int) -> InputGradientOperation<T> {
        InstanceKernel.inputGradientOperation(
            dy: dy.base + instance * spatialCount, x: x.base + instance * spatialCount,
            statistics: statistics[instance], gamma: gamma.map { $0[instance % shape.channels].widened } ?? 1,
            sumDy: instanceSums[instance].sumDy, sumDyXHat: instanceSums[instance].sumDyXHat,
            spatialCount: spatialCount)
    }

    /// dγ_c = Σ_n s2(n,c), dβ_c = Σ_n s1(n,c), added in sample order.
    @inlinable func combineParameterGradients(
        dgamma: UnsafeMutableBufferPointer<Double>, dbeta: UnsafeMutableBufferPointer<Double>, threads: Int
    ) {
        dgamma.update(repeating: 0)
        dbeta.update(repeating: 0)
        guard shape.instanceCount > 0 else { return }
        // (s1, s2) tuples: two doubles each, side by side.
        let sums = UnsafeRawPointer(instanceSums.baseAddress!).assumingMemoryBound(to: Double.self)
        addInSampleOrder(sums, samples: shape.batch, channels: shape.channels, dgamma: dgamma.baseAddress!,
                         dbeta: dbeta.baseAddress!, threads: threads)
    }
}

/// Whether the fused backward (a run's dx written while the next run of
/// `count` values is summed, `BackwardBatch.sumsAndDx`) was the faster
/// order on the bench machine: for runs of 8-64 KiB per tensor.
@inlinable
func fusedOrderPays<T>(forRunsOf count: Int, _: T.Type) -> Bool {
    (8 << 10...64 << 10).contains(count * MemoryLayout<T>.stride)
}

/// A kernel choice the environment may make: `name`=1 true, =0 false,
/// anything else or unset nil (the machine's own choice).
@usableFromInline
func environmentSwitch(_ name: String) -> Bool? {
    getenv(name).flatMap { value in
        switch String(cString: value) {
        case "1": true
        case "0": false
        default: nil
        }
    }
}

/// Asks for the cache lines of `count` values from `start` into L2
/// (`instnorm_prefetch_lines`; a prefetch never faults).
@inlinable
func prefetchLines<T>(_ start: UnsafePointer<T>, count: Int) {
    let raw = UnsafeRawPointer(start)
    instnorm_prefetch_lines(raw, raw + count * MemoryLayout<T>.stride)
}

/// Where the fused backward's prefetches land for the values at index 0 of
/// the summed run: x's lines 12 KiB ahead (into L2: with the hint into L1,
/// or with no hint, the fused order was slower than the plain one; 2-32 KiB
/// ahead were all within a few percent), and dy's 2 KiB further. Tensors
/// allocated back to back whose size is a large power of two (x, dy of
/// (8,1024,4096) floats, 128 MiB each) sit the same distance apart, and
/// asking memory for both at one offset made the LayerNorm backward 1.2x
/// slower than the staggered order (24.1 → 19.6 ms; InstanceNorm's on
/// (8,1024,64,64) 17.7 → 14.9 ms; 5-7 alternating rounds), with no change
/// on (8,1000,4096), whose tensors are not that far apart, nor on
/// (64,196,768). Prefetches never fault: past the tensor's end they are
/// dropped.
@inlinable @inline(__always)
func fusedPrefetchTargets(dy: UnsafeRawPointer, x: UnsafeRawPointer) -> (dy: UnsafeRawPointer, x: UnsafeRawPointer) {
    (dy + fusedPrefetchDistance + (2 << 10), x + fusedPrefetchDistance)
}

/// How far ahead of its loads a fused loop asks for the summed run's x
/// (and the fused forward's only run) into L2.
@inlinable var fusedPrefetchDistance: Int { 12 << 10 }

/// The companion of the fused backward's sums: streams out two vectors of
/// another instance's dx per step (while they last), and asks for the
/// summed instance's lines ahead of the step (`fusedPrefetchTargets`), so
/// that the loads find them in L2 rather than waiting on memory behind the
/// stores.
@usableFromInline
struct StreamingWriter<Operation: ElementwiseOperation>: SumsCompanion {
    @usableFromInline typealias T = Operation.Scalar
    @usableFromInline let out: UnsafeMutablePointer<T>
    @usableFromInline let operation: Operation
    @usableFromInline var written: Int
    @usableFromInline let count: Int
    /// dy's and x's lines to ask for, at index 0.
    @usableFromInline let prefetching: (dy: UnsafeRawPointer, x: UnsafeRawPointer)

    @inlinable
    init(out: UnsafeMutablePointer<T>, _ operation: Operation, written: Int, count: Int,
         prefetching: (dy: UnsafeRawPointer, x: UnsafeRawPointer)) {
        self.out = out
        self.operation = operation
        self.written = written
        self.count = count
        self.prefetching = fusedPrefetchTargets(dy: prefetching.dy, x: prefetching.x)
    }

    @inlinable @inline(__always)
    mutating func step(at index: Int) {
        let lanes = T.Vector.scalarCount
        // Every line the step reads, some KiB later.
        let offset = index &* MemoryLayout<T>.stride
        for line in stride(from: 0, to: 2 * lanes * MemoryLayout<T>.stride, by: 64) {
            instnorm_prefetch(prefetching.dy + offset + line)
            instnorm_prefetch(prefetching.x + offset + line)
        }
        guard written + 2 * lanes <= count else { return }
        T.streamStore(operation.vector(at: written), to: out + written)
        T.streamStore(operation.vector(at: written + lanes), to: out + written + lanes)
        written += 2 * lanes
    }
}
