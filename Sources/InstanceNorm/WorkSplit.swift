import Dispatch

/// How a batch of N·C instances is spread over worker threads.
///
/// With at least as many instances as workers, each worker takes a
/// contiguous run of whole instances, and runs every pass of an instance
/// before the next (its second pass reads from cache). With fewer instances
/// than workers, every instance is cut at `reductionChunk` boundaries and the
/// workers share the chunks; the per-chunk partial sums are then combined in
/// chunk order, the order a single thread uses, so the results are the same
/// bits for every worker count.
@usableFromInline
struct WorkSplit: Sendable {
    @usableFromInline let instanceCount: Int
    @usableFromInline let spatialCount: Int
    @usableFromInline let workers: Int

    @inlinable
    init(shape: InstanceNormShape, threads: Int) {
        self.init(units: shape.instanceCount, length: shape.spatialCount, threads: threads)
    }

    /// `units` independent runs of `length` positions each: the instances
    /// of the channels-first layout, the samples of the channels-last one
    /// (whose positions are rows of C values).
    @inlinable
    init(units: Int, length: Int, threads: Int) {
        precondition(threads >= 1, "at least one thread")
        instanceCount = units
        spatialCount = length
        workers = max(1, min(threads, max(units, 1) * chunkCount(spatialCount: length)))
    }

    /// True when workers share instances (fewer instances than workers).
    @inlinable var splitsInstances: Bool { instanceCount < workers }

    @inlinable var chunksPerInstance: Int { chunkCount(spatialCount: spatialCount) }

    /// Whole-instance mode: the instances of one worker.
    @inlinable func instances(of worker: Int) -> Range<Int> { balancedRange(instanceCount, worker, workers) }

    /// Split mode: one worker's share of all instances' chunks, numbered
    /// instance·chunksPerInstance + chunk.
    @inlinable func chunks(of worker: Int) -> Range<Int> {
        balancedRange(instanceCount * chunksPerInstance, worker, workers)
    }

    /// The element range, within its instance, of a numbered chunk.
    @inlinable func elements(ofChunk chunk: Int) -> (instance: Int, range: Range<Int>) {
        let start = (chunk % chunksPerInstance) * reductionChunk
        return (chunk / chunksPerInstance, start..<min(start + reductionChunk, spatialCount))
    }

    /// Runs `body(worker)` for every worker, concurrently, and returns when
    /// all are done. One worker runs on the calling thread.
    @inlinable func run(_ body: @Sendable (Int) -> Void) {
        if workers == 1 { return body(0) }
        DispatchQueue.concurrentPerform(iterations: workers, execute: body)
    }
}

extension WorkSplit {
    /// Per instance, two sums over its chunks: `chunkSums(instance, range)`
    /// for every chunk, the chunks shared by the workers, then added per
    /// instance in chunk order, as `chunkedSums` adds them on one thread.
    @inlinable
    func sumsInChunkOrder(_ chunkSums: @Sendable (Int, Range<Int>) -> (Double, Double)) -> [(Double, Double)] {
        let partials = UnsafeMutableBufferPointer<(Double, Double)>.allocate(capacity: instanceCount * chunksPerInstance)
        defer { partials.deallocate() }
        let shared = SharedBuffer(partials)
        run { worker in
            for chunk in chunks(of: worker) {
                let (instance, range) = elements(ofChunk: chunk)
                shared.base[chunk] = chunkSums(instance, range)
            }
        }
        return (0..<instanceCount).map { instance in
            var total = (0.0, 0.0)
            for chunk in instance * chunksPerInstance..<(instance + 1) * chunksPerInstance {
                total.0 += partials[chunk].0
                total.1 += partials[chunk].1
            }
            return total
        }
    }
}

extension WorkSplit {
    /// μ and σ² of every unit (`spatialCount` values from `values(unit)`),
    /// from chunks shared by the workers and combined in chunk order, with
    /// a second pass where `InstanceKernel.moments` would take one: the
    /// bits that function gives on one thread.
    @inlinable
    func splitMoments<T: InstanceNormScalar>(
        _ values: @Sendable (Int) -> UnsafePointer<T>
    ) -> [(mean: Double, variance: Double)] {
        let shifts = (0..<instanceCount).map { values($0)[0].computed }
        func chunkSums(_ centers: [T.Compute], _ included: [Bool]?) -> [(Double, Double)] {
            sumsInChunkOrder { unit, range in
                guard included?[unit] ?? true else { return (0, 0) }
                return shiftedChunkSums(values(unit), range, shift: centers[unit])
            }
        }
        let first = chunkSums(shifts, nil)
        var centers = [T.Compute?](repeating: nil, count: instanceCount)
        var moments = [(mean: Double, variance: Double)](repeating: (0, 0), count: instanceCount)
        for unit in 0..<instanceCount {
            let (sum, sumSquares) = first[unit]
            if let result = InstanceKernel.momentsFromShiftedSums(sum, sumSquares, count: spatialCount, shift: shifts[unit]) {
                moments[unit] = result
            } else {
                centers[unit] = InstanceKernel.secondPassCenter(sum, count: spatialCount, shift: shifts[unit])
            }
        }
        guard centers.contains(where: { $0 != nil }) else { return moments }
        let second = chunkSums(centers.enumerated().map { $0.element ?? shifts[$0.offset] }, centers.map { $0 != nil })
        for (unit, center) in centers.enumerated() {
            guard let center else { continue }
            moments[unit] = InstanceKernel.momentsFromCenteredSums(second[unit].0, second[unit].1, count: spatialCount, center: center)
        }
        return moments
    }
}

@inlinable
func chunkCount(spatialCount: Int) -> Int { (spatialCount + reductionChunk - 1) / reductionChunk }

/// Part `part` of `parts` of 0..<count: the first count mod parts parts take one more.
@inlinable
func balancedRange(_ count: Int, _ part: Int, _ parts: Int) -> Range<Int> {
    let base = count / parts, extra = count % parts
    let start = part * base + min(part, extra)
    return start..<start + base + (part < extra ? 1 : 0)
}

/// A buffer pointer that may cross into worker closures: the workers write
/// disjoint parts of it, which is what makes sharing it safe.
@usableFromInline
struct SharedBuffer<Element>: @unchecked Sendable {
    @usableFromInline let base: UnsafeMutablePointer<Element>
    @inlinable init(_ buffer: UnsafeMutableBufferPointer<Element>) { self.init(start: buffer.baseAddress) }
    @inlinable init(_ buffer: UnsafeBufferPointer<Element>) { self.init(start: UnsafeMutablePointer(mutating: buffer.baseAddress)) }
    /// A nil start (an empty buffer) becomes a pointer that is never read.
    @inlinable init(start: UnsafeMutablePointer<Element>?) {
        base = start ?? UnsafeMutablePointer(bitPattern: MemoryLayout<Element>.alignment)!
    }
}
