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
        streaming = stores.streams(y, tensors: 2)
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

    /// y over `range` of one instance.
    @inlinable func normalize(_ instance: Int, _ range: Range<Int>, _ instanceStatistics: InstanceStatistics) {
        let channel = instance % shape.channels
        let start = instance * spatialCount + range.lowerBound
        InstanceKernel.normalize(
            UnsafeMutableBufferPointer(start: y.base + start, count: range.count),
            UnsafeBufferPointer(start: x.base + start, count: range.count),
            statistics: instanceStatistics,
            gamma: gamma.map { $0.base[channel].widened } ?? 1, beta: beta.map { $0.base[channel].widened } ?? 0,
            streaming: streaming)
    }

    /// The forward with instances cut into chunks shared by the workers:
    /// per-chunk sums in parallel, combined per instance in chunk order (the
    /// single-thread order), a second pass where `moments` would take one,
    /// then y in parallel.
    @inlinable func forwardSplit(_ split: WorkSplit) {
        let shifts = (0..<shape.instanceCount).map { values($0)[0].computed }
        let first = chunkSums(split, shifts)
        var centers = [T.Compute?](repeating: nil, count: shape.instanceCount)
        var moments = [(mean: Double, variance: Double)](repeating: (0, 0), count: shape.instanceCount)
        for instance in 0..<shape.instanceCount {
            let (sum, sumSquares) = first[instance]
            if let result = InstanceKernel.momentsFromShiftedSums(sum, sumSquares, count: spatialCount, shift: shifts[instance]) {
                moments[instance] = result
            } else {
                centers[instance] = InstanceKernel.secondPassCenter(sum, count: spatialCount, shift: shifts[instance])
            }
        }
        if centers.contains(where: { $0 != nil }) {
            let second = chunkSums(split, centers.enumerated().map { $0.element ?? shifts[$0.offset] }, only: centers.map { $0 != nil })
            for (instance, center) in centers.enumerated() {
                guard let center else { continue }
                moments[instance] = InstanceKernel.momentsFromCenteredSums(
                    second[instance].0, second[instance].1, count: spatialCount, center: center)
            }
        }
        let perInstance = moments.map { InstanceStatistics(mean: $0.mean, variance: $0.variance, eps: eps) }
        for (instance, instanceStatistics) in perInstance.enumerated() { statistics!.base[instance] = instanceStatistics }
        split.run { worker in
            split.forEachPiece(of: worker) { instance, range in normalize(instance, range, perInstance[instance]) }
        }
    }

    /// Σ (x − shift) and Σ (x − shift)² per instance: chunks in parallel,
    /// combined in chunk order.
    @inlinable func chunkSums(_ split: WorkSplit, _ shifts: [T.Compute], only included: [Bool]? = nil) -> [(Double, Double)] {
        split.sumsInChunkOrder { instance, range in
            guard included?[instance] ?? true else { return (0, 0) }
            return shiftedChunkSums(values(instance).baseAddress!, range, shift: shifts[instance])
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
    /// (s1, s2) per instance; small: N·C pairs.
    @usableFromInline let instanceSums: UnsafeMutableBufferPointer<(sumDy: Double, sumDyXHat: Double)>

    @inlinable
    init(
        dx: UnsafeMutableBufferPointer<T>, dy: UnsafeBufferPointer<T>, x: UnsafeBufferPointer<T>,
        statistics: UnsafeBufferPointer<InstanceStatistics>, gamma: UnsafeBufferPointer<T>?, shape: InstanceNormShape,
        stores: StorePolicy
    ) {
        self.dx = SharedBuffer(start: dx.baseAddress)
        self.dy = SharedBuffer(start: UnsafeMutablePointer(mutating: dy.baseAddress))
        self.x = SharedBuffer(start: UnsafeMutablePointer(mutating: x.baseAddress))
        self.statistics = statistics
        self.gamma = gamma
        self.shape = shape
        spatialCount = shape.spatialCount
        streaming = stores.streams(dx, tensors: 3)
        instanceSums = .allocate(capacity: shape.instanceCount)
        instanceSums.initialize(repeating: (0, 0))
    }

    deinit { instanceSums.deallocate() }

    /// The last instances of a worker's run whose dx waits for `sumsReady`:
    /// enough to hold `elements` values (at least one when elements > 0).
    @inlinable func tail(of instances: Range<Int>, elements: Int) -> Range<Int> {
        guard elements > 0 else { return instances.upperBound..<instances.upperBound }
        let count = min(instances.count, (elements + spatialCount - 1) / spatialCount)
        return instances.upperBound - count..<instances.upperBound
    }

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

    /// dγ_c = Σ_n s2(n,c), dβ_c = Σ_n s1(n,c), added in sample order.
    @inlinable func combineParameterGradients(
        dgamma: UnsafeMutableBufferPointer<Double>, dbeta: UnsafeMutableBufferPointer<Double>
    ) {
        dgamma.update(repeating: 0)
        dbeta.update(repeating: 0)
        for instance in 0..<shape.instanceCount {
            dbeta[instance % shape.channels] += instanceSums[instance].sumDy
            dgamma[instance % shape.channels] += instanceSums[instance].sumDyXHat
        }
    }
}
