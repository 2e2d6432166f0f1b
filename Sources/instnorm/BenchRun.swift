import DataParallel
import InstanceNorm
import MPI

/// One `bench` run in precision T. Every buffer is allocated once, before the
/// timed loop, and reused by every iteration.
struct BenchRun<T: DataParallelScalar> {
    let options: Bench
    let globalShape: InstanceNormShape

    func run() throws {
        let communicator = Communicator.world
        let layer = DataParallelInstanceNorm<T>(communicator: communicator, globalShape: globalShape, eps: options.eps)
        let batch = SyntheticBatch<T>(layer: layer, seed: options.seed)
        let timings = try time(layer, batch)
        var verdict: Verification?
        if options.verify {
            verdict = try Verification(layer: layer, batch: batch)
        }
        if communicator.rank == 0 {
            let report = BenchReport(
                shape: globalShape, ranks: communicator.size, dtype: options.dtype.rawValue,
                iterations: options.iterations, warmup: options.warmup, timings: timings,
                library: MPI.libraryVersion, verification: verdict)
            report.print(json: options.json)
        }
        if let verdict, !verdict.passed {
            throw AgreedFailure(
                rank: 0, ranks: 1, message: "verification failed: \(verdict.summary)",
                exitCode: ToolExitCode.verificationFailed)
        }
    }

    /// Runs warm-up and timed iterations; returns per-phase seconds of each
    /// timed iteration, each the maximum over ranks.
    private func time(_ layer: DataParallelInstanceNorm<T>, _ batch: SyntheticBatch<T>) throws -> PhaseTimings {
        let communicator = layer.communicator
        var local = PhaseTimings(iterations: options.iterations)
        for iteration in -options.warmup..<options.iterations {
            try communicator.barrier()
            let start = MPI.wallTime()
            batch.forward()
            let forwardEnd = MPI.wallTime()
            batch.localBackward()
            let backwardEnd = MPI.wallTime()
            try batch.reduceParameterGradients()
            let allreduceEnd = MPI.wallTime()
            if iteration >= 0 {
                local.record(
                    iteration, forward: forwardEnd - start, backward: backwardEnd - forwardEnd,
                    allreduce: allreduceEnd - backwardEnd)
            }
        }
        return try local.maximumOverRanks(communicator)
    }
}

/// Per-phase seconds of each timed iteration.
struct PhaseTimings {
    /// [forward…, backward…, allreduce…], `iterations` each.
    private(set) var seconds: [Double]
    let iterations: Int

    init(iterations: Int) {
        self.iterations = iterations
        seconds = Array(repeating: 0, count: 3 * iterations)
    }

    mutating func record(_ iteration: Int, forward: Double, backward: Double, allreduce: Double) {
        seconds[iteration] = forward
        seconds[iterations + iteration] = backward
        seconds[2 * iterations + iteration] = allreduce
    }

    /// One allreduce after the loop, so the timed region has none of its own.
    func maximumOverRanks(_ communicator: Communicator) throws -> PhaseTimings {
        var result = self
        result.seconds = try communicator.allreduce(seconds, .max)
        return result
    }

    var forward: ArraySlice<Double> { seconds[0..<iterations] }
    var backward: ArraySlice<Double> { seconds[iterations..<2 * iterations] }
    var allreduce: ArraySlice<Double> { seconds[2 * iterations..<3 * iterations] }
    /// Per iteration, the sum of the phases' maxima over ranks.
    var step: [Double] {
        (0..<iterations).map { seconds[$0] + seconds[iterations + $0] + seconds[2 * iterations + $0] }
    }
}
