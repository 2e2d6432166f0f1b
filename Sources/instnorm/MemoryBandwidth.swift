import Dispatch
import InstanceNorm
import MPI

/// The machine's memory bandwidth, measured the way STREAM measures it, in
/// the same run as the kernels: the yardstick of the bench's floor.
///
/// Copy (c = s·a, 16 bytes counted per element) and add (c = a + b, 24
/// bytes counted) over arrays of doubles, with ordinary stores, as STREAM
/// has: those stores also read each line before writing it, which STREAM
/// does not count, so a kernel with streaming stores can run above 100% of
/// this floor. Every rank runs at once with its threads; each repetition
/// lasts as long as its slowest rank (as STREAM times a parallel region by
/// its slowest thread, and as a bench step lasts), and the result is every
/// rank's bytes over that time: the bandwidth this job has.
///
/// Array size: the ranks of a node share its last-level cache, so each
/// rank's three arrays are sized for the node's ranks together to touch
/// four times that cache (43 MiB per array for one rank on a 32 MiB cache).
/// That is far enough beyond the cache and, on the memory-bound shapes,
/// smaller than the bench's own tensors; the arrays are freed before those
/// are allocated, so they do not raise the bench's peak memory.
struct MemoryBandwidth {
    /// Bytes per second of the whole job.
    let copy: Double
    let add: Double
    /// Bytes per array.
    let arrayBytes: Int

    static func measure(threads: Int, communicator: Communicator, repetitions: Int = 5) throws -> MemoryBandwidth {
        let cache = StorePolicy.lastLevelCacheBytes() ?? 32 << 20
        let arrayBytes = 4 * cache / (3 * (try communicator.ranksSharingNode()))
        let count = arrayBytes / MemoryLayout<Double>.stride
        let a = TensorBuffer<Double>(repeating: 1, count: count)
        let b = TensorBuffer<Double>(repeating: 2, count: count)
        let c = TensorBuffer<Double>(repeating: 0, count: count)
        let arrays = StreamArrays(a: a.elements.baseAddress!, b: b.elements.baseAddress!, c: c.elements.baseAddress!)
        // Read from the arrays so the compiler cannot know it is 1.
        let scale = a.elements[count / 2]
        var copySeconds: [Double] = [], addSeconds: [Double] = []
        for _ in 0..<repetitions {
            try communicator.barrier()
            // Each repetition ends at a barrier: ranks that share a core run
            // one after another, and a repetition lasts until all are done.
            copySeconds.append(try timedUntilAll(communicator) { arrays.copy(count: count, threads: threads, scale: scale) })
            try communicator.barrier()
            addSeconds.append(try timedUntilAll(communicator) { arrays.add(count: count, threads: threads) })
        }
        // As STREAM times a parallel region by its slowest thread: each
        // repetition takes as long as its slowest rank, as a bench step does.
        let slowest = try communicator.allreduce(copySeconds + addSeconds, .max)
        let elements = Double(count * communicator.size)
        return MemoryBandwidth(
            copy: 16 * elements / Summary(Array(slowest[..<repetitions])).median,
            add: 24 * elements / Summary(Array(slowest[repetitions...])).median,
            arrayBytes: arrayBytes)
    }
}

private struct StreamArrays: @unchecked Sendable {
    let a, b, c: UnsafeMutablePointer<Double>

    func copy(count: Int, threads: Int, scale: Double) {
        DispatchQueue.concurrentPerform(iterations: threads) { part in
            for index in balanced(count, part, threads) { c[index] = scale * a[index] }
        }
    }

    func add(count: Int, threads: Int) {
        DispatchQueue.concurrentPerform(iterations: threads) { part in
            for index in balanced(count, part, threads) { c[index] = a[index] + b[index] }
        }
    }
}

private func balanced(_ count: Int, _ part: Int, _ parts: Int) -> Range<Int> {
    (count * part / parts)..<(count * (part + 1) / parts)
}

/// Seconds from now until every rank has finished `body` (collective).
func timedUntilAll(_ communicator: Communicator, _ body: () -> Void) throws -> Double {
    let start = MPI.wallTime()
    body()
    try communicator.barrier()
    return MPI.wallTime() - start
}
