import _InstanceNormShims

/// The forward's fused order, for a worker's consecutive runs of values
/// (InstanceNorm's instances, GroupNorm's groups, LayerNorm's rows): y of
/// run i streams out in the loop that sums run i + 1 for its moments, and
/// run i + 1's lines are asked into L2 some KiB ahead of those loads.
///
/// The plain order (a run's moments from memory, then its y from L1) runs
/// its two phases one after the other on one core: the reads wait while y
/// drains, and y waits on the reads. Interleaved, memory serves both at
/// once, as in the backward's fused order (`BackwardBatch.sumsAndDx`). In
/// `scripts/kernel-limits`' yardstick of the two loops on the Zen 3 machine
/// of 2026-12-07 (float32, one thread, streamed y, instances of 12 KiB),
/// `nchw_forward_fused` took 0.88 of the plain loop's time (152% against
/// 134% of the STREAM-copy floor); a throwaway sweep of runs of 2-128 KiB
/// gave 135-173% against 102-140%.
///
/// The arithmetic is the plain order's: the same sums in the same order,
/// the same constants and operations per value, so the same bits.
///
/// - Parameters:
///   - runs: the worker's runs, run r the values r·length ..< (r + 1)·length of x and y.
///   - eps: ε of the runs' statistics.
///   - output: records run r's statistics and gives its y.
@inlinable @inline(__always)
func fusedForward<T: InstanceNormScalar, Output: RunOutput>(
    runs: Range<Int>, length: Int, x: UnsafePointer<T>, y: UnsafeMutablePointer<T>, eps: Double,
    output: (_ run: Int, _ statistics: InstanceStatistics) -> Output
) where Output.Operation.Scalar == T {
    func statistics(_ moments: (mean: Double, variance: Double)) -> InstanceStatistics {
        InstanceStatistics(mean: moments.mean, variance: moments.variance, eps: eps)
    }
    guard var pending = runs.first else { return }
    var pendingOutput = output(pending, statistics(InstanceKernel.moments(of: UnsafeBufferPointer(start: x + pending * length, count: length))))
    for next in runs.dropFirst() {
        let nextX = x + next * length
        var streamer = OutputStreamer(out: y + pending * length, count: length, pendingOutput, summing: UnsafeRawPointer(nextX))
        let moments = InstanceKernel.moments(of: UnsafeBufferPointer(start: nextX, count: length), alongside: &streamer)
        streamer.finish()
        pending = next
        pendingOutput = output(next, statistics(moments))
    }
    // No run is summed alongside the last one's y.
    var last = OutputStreamer(out: y + pending * length, count: length, pendingOutput, summing: UnsafeRawPointer(x + pending * length))
    last.finish()
}

/// How many bytes ahead y's stores start in the fused loop, given where
/// its stores and its loads start: 1 KiB where the stores would otherwise
/// lie less than 1 KiB above the loads modulo 4 KiB, else none. A load
/// whose address matches a recent store's in its low 12 bits waits as if
/// it depended on it (4K aliasing). Tensors allocated alike sit a multiple
/// of 4 KiB apart, so with rows of a multiple of 4 KiB (LayerNorm's D of
/// 1024, 2048, 4096 floats) the loads of row i + 1 met the stores of row i
/// at every step: the fused forward of (8,1024,4096) took 0.80-0.88 of the
/// time with the stores 1 KiB ahead (Zen 3, one thread, alternating runs;
/// 2 and 3 KiB were no better), and InstanceNorm's (64,64,56,56), whose
/// stores sit 256 B below its loads, gained nothing.
@inlinable
func storeLeadBytes(stores: UnsafeRawPointer, loads: UnsafeRawPointer) -> Int {
    (Int(bitPattern: stores) &- Int(bitPattern: loads)) & 4095 < 1024 ? 1024 : 0
}

/// Whether the forwards take the fused order (`fusedForward`), and for
/// which runs. `INSTNORM_FUSED_FORWARD=0` (or `1`) decides instead, for
/// measurements side by side; values do not depend on it.
///
/// Streamed runs of 4-128 KiB take it. In the library, forward time fused /
/// plain on the Zen 3 machine (float32 unless said, one thread, medians of
/// 6 alternating pairs of runs): InstanceNorm M = 3136 (12 KiB) 0.75-0.83,
/// M = 1024 0.74, M = 16384 0.95, float16 M = 3136 0.88, M = 512 (2 KiB)
/// 0.93; GroupNorm G = 32 on (32,64,56,56) and (64,64,56,56) (25 KiB
/// groups) 0.61-0.79; LayerNorm rows of 4096 0.77-0.87, 1024 0.89, 768
/// 0.96-1.01, and 512 (2 KiB) 1.19-1.24, slower: below 4 KiB a row's y
/// drains from the store queue while the next is read anyway, and the
/// fused loop's setup per row is not repaid. It replaced the GroupNorm and
/// LayerNorm forwards' requests for the next run's lines while y streamed
/// out (2026-12-05, taken only where L2 holds 1 MiB since stop 41), which
/// the fused loop makes as it goes.
public enum FusedForward {
    @usableFromInline static let chosen = environmentSwitch("INSTNORM_FUSED_FORWARD")

    /// Whether the forwards fuse the runs whose size lets them.
    @inlinable public static var taken: Bool { chosen ?? true }

    /// Whether a forward whose streamed runs hold `count` values of `T` each
    /// takes the fused order; `weightsPerValue` for LayerNorm, whose γ and
    /// β vary along the run. In half precision those runs stay in the plain
    /// order: there a value of y converts x, γ and β to float, and LayerNorm
    /// (8,1024,4096) float16 took 1.28× the plain order's time fused (one
    /// thread, 6 pairs), where InstanceNorm (64,64,56,56) float16, one
    /// conversion a value, took 0.88 and GroupNorm (32,64,56,56) 1.00.
    @inlinable public static func applies<T>(toRunsOf count: Int, _: T.Type, weightsPerValue: Bool = false) -> Bool {
        taken && (4 << 10...128 << 10).contains(count * MemoryLayout<T>.stride)
            && !(weightsPerValue && MemoryLayout<T>.stride == 2)
    }
}

/// y of one run as the fused forward writes it: consecutive segments of
/// `segmentLength` values (one segment for an instance or a LayerNorm row;
/// a GroupNorm group's channels), each its own operation, indexed from the
/// segment's first value.
@usableFromInline
protocol RunOutput {
    associatedtype Operation: ElementwiseOperation
    var segmentLength: Int { get }
    func operation(ofSegment segment: Int) -> Operation
}

/// A run whose values all take one operation.
@usableFromInline
struct WholeRunOutput<Operation: ElementwiseOperation>: RunOutput {
    @usableFromInline let operation: Operation
    @usableFromInline let segmentLength: Int

    @inlinable init(_ operation: Operation, length: Int) {
        self.operation = operation
        segmentLength = length
    }

    @inlinable @inline(__always) func operation(ofSegment segment: Int) -> Operation { operation }
}

/// The companion of the fused forward's moments: streams out two vectors
/// of another run's y per step, segment by segment (each segment's values
/// before its first 64-byte boundary and after its last whole vector one
/// by one, as `writeElementwise` writes them), and asks for the summed
/// run's lines ahead of the step (`fusedPrefetchDistance`).
@usableFromInline
struct OutputStreamer<Output: RunOutput>: SumsCompanion {
    @usableFromInline typealias T = Output.Operation.Scalar
    @usableFromInline let out: UnsafeMutablePointer<T>
    @usableFromInline let output: Output
    @usableFromInline let count: Int
    @usableFromInline var operation: Output.Operation
    @usableFromInline var segment: Int
    @usableFromInline var segmentStart: Int
    @usableFromInline var segmentEnd: Int
    /// y[..< written] is out.
    @usableFromInline var written: Int
    /// The summed run's lines to ask for, at index 0.
    @usableFromInline let prefetching: UnsafeRawPointer

    @inlinable
    init(out: UnsafeMutablePointer<T>, count: Int, _ output: Output, summing summed: UnsafeRawPointer) {
        self.out = out
        self.output = output
        self.count = count
        prefetching = summed + fusedPrefetchDistance
        operation = output.operation(ofSegment: 0)
        segment = 0
        segmentStart = 0
        segmentEnd = min(output.segmentLength, count)
        written = 0
        writeHead()
        // Where the stores would trail the loads by less than 1 KiB modulo
        // 4 KiB, they start 1 KiB ahead (see `storeLeadBytes`).
        let lanes = T.Vector.scalarCount
        let lead = written + storeLeadBytes(stores: UnsafeRawPointer(out), loads: summed) / MemoryLayout<T>.stride
        while written < lead && written + 2 * lanes <= segmentEnd { writeStep() }
    }

    /// Two vectors of y, from `written` on.
    @inlinable @inline(__always) mutating func writeStep() {
        let lanes = T.Vector.scalarCount, at = written - segmentStart
        T.streamStore(operation.vector(at: at), to: out + written)
        T.streamStore(operation.vector(at: at + lanes), to: out + written + lanes)
        written += 2 * lanes
    }

    @inlinable @inline(__always)
    mutating func step(at index: Int) {
        let lanes = T.Vector.scalarCount
        let offset = index &* MemoryLayout<T>.stride
        for line in stride(from: 0, to: 2 * lanes * MemoryLayout<T>.stride, by: 64) {
            instnorm_prefetch(prefetching + offset + line)
        }
        if written + 2 * lanes <= segmentEnd {
            writeStep()
        } else if written < count {
            finishSegment()
        }
    }

    /// The rest of the run's y.
    @inlinable mutating func finish() {
        while written < count { finishSegment() }
    }

    /// The rest of the current segment, then the next one's values before
    /// its first 64-byte boundary.
    @inlinable mutating func finishSegment() {
        writeElementwise(out + segmentStart, written - segmentStart..<segmentEnd - segmentStart, streaming: true, operation)
        written = segmentEnd
        guard segmentEnd < count else { return }
        segment += 1
        segmentStart = segmentEnd
        segmentEnd = min(segmentStart + output.segmentLength, count)
        operation = output.operation(ofSegment: segment)
        writeHead()
    }

    /// The current segment's values before its first 64-byte boundary,
    /// from which its vectors stream.
    @inlinable mutating func writeHead() {
        let boundary = streamingStart(out, written..<segmentEnd)
        writeElementwise(out + segmentStart, written - segmentStart..<boundary - segmentStart, streaming: true, operation)
        written = boundary
    }
}
