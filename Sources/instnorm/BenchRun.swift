import DataParallel
import InstanceNorm
import MPI

/// One `bench` run in precision T. The memory bandwidth is measured first;
/// then every buffer is allocated once and reused by every iteration.
struct BenchRun<T: DataParallelScalar> {
    let options: Bench
    let globalShape: NormShape

    func run() throws {
        let communicator = Communicator.world
        try reserveMemory(communicator)
        let bandwidth = try MemoryBandwidth.measure(threads: options.threads, communicator: communicator)
        let layer = DataParallelNorm<T>(
            communicator: communicator, globalShape: globalShape, eps: options.eps,
            threads: options.threads, overlapsReduction: options.overlap, stores: options.stores.policy,
            reduction: options.reduction.method, layout: options.layout.tensorLayout)
        let batch = SyntheticBatch<T>(layer: layer, seed: options.seed)
        var checksums = ChecksumTracker()
        let timings = try time(layer, batch, checksums: &checksums)
        batch.applyCorruptionFailpoints()
        let checksum = options.checksum ? try checksums.overRanks(communicator) : nil
        let verification = options.verify ? try Verification(layer: layer, batch: batch) : nil
        if communicator.rank == 0 {
            let report = BenchReport(
                options: options, shape: globalShape, ranks: communicator.size, elementBytes: MemoryLayout<T>.stride,
                timings: timings, bandwidth: bandwidth, library: MPI.libraryVersion, verification: verification,
                checksum: checksum, reductionBytes: layer.reductionBytes)
            report.print(json: options.json)
        }
        if let verification, !verification.passed {
            throw AgreedFailure(
                rank: 0, ranks: 1, message: "verification failed: \(verification.summary)",
                exitCode: ToolExitCode.verificationFailed)
        }
        if let mismatch = checksum?.mismatch {
            throw AgreedFailure(
                rank: mismatch.rank, ranks: communicator.size,
                message: "--checksum: iteration \(mismatch.iteration) (counting warm-up from 0) gave other results than the first",
                exitCode: ToolExitCode.verificationFailed)
        }
    }

    /// Agreed before anything is allocated: this rank can get the memory
    /// of its slice (x, dy, y, dx, the statistics), or every rank stops
    /// with the same error (exit 71).
    private func reserveMemory(_ communicator: Communicator) throws {
        let samples = BatchPartition(batch: globalShape.batch, ranks: communicator.size).samples(of: communicator.rank)
        let parameters = globalShape.parameterCount
        let bytes = Memory.bytes(
            (4 * samples.count, globalShape.sampleElementCount * MemoryLayout<T>.stride),
            (samples.count * globalShape.rowsPerSample, MemoryLayout<InstanceStatistics>.stride),
            (6 * parameters, MemoryLayout<Double>.stride), (2 * samples.count * parameters, MemoryLayout<Double>.stride),
            (options.threads, NormKernel.scratchBytes(shape: globalShape, layout: options.layout.tensorLayout, as: T.self)))
        try communicator.agree(defaultExitCode: ToolExitCode.resources) {
            try Memory.reserve(bytes, for: "this rank's synthetic batch (samples \(samples.lowerBound)..<\(samples.upperBound))")
            if Failpoint.computing.fires() {
                throw ToolError.resources(
                    "cannot allocate \(describeBytes(bytes)) for this rank's synthetic batch: Cannot allocate memory \(Failpoint.computing.note)")
            }
        }
    }

    /// Runs warm-up and timed iterations; returns per-phase seconds of each
    /// timed iteration over ranks (see `PhaseTimings`).
    /// With `--checksum`, records every iteration's checksum (after its
    /// timed phases) in `checksums`.
    private func time(
        _ layer: DataParallelNorm<T>, _ batch: SyntheticBatch<T>, checksums: inout ChecksumTracker
    ) throws -> PhaseTimings {
        let communicator = layer.communicator
        var local = PhaseTimings(iterations: options.iterations)
        for iteration in -options.warmup..<options.iterations {
            try communicator.barrier()
            let start = MPI.wallTime()
            try batch.forward()
            let forwardEnd = MPI.wallTime()
            if iteration == 0 && Failpoint.reducing.fires() {
                // The others are about to wait in the allreduce this rank never joins.
                throw MPIError(call: "MPI_Iallreduce", code: 16, message: "MPI_ERR_OTHER: known error not in list \(Failpoint.reducing.note)")
            }
            let exposedWait = try batch.backward()
            let backwardEnd = MPI.wallTime()
            if iteration >= 0 {
                // BatchNorm's forward waits for its collectives too: count them.
                let exposed = exposedWait + layer.lastForwardCollectiveSeconds
                local.record(iteration, forward: forwardEnd - start, backward: backwardEnd - forwardEnd, exposed: exposed)
            }
            if options.checksum { checksums.record(batch.checksum()) }
        }
        return try local.overRanks(communicator)
    }
}

/// Per-phase seconds of each timed iteration.
struct PhaseTimings {
    /// [forward…, backward…, allreduce wait…], `iterations` each. The
    /// backward includes its wait.
    private(set) var seconds: [Double]
    /// The allreduce wait of each iteration, minimum over ranks.
    private(set) var leastWait: [Double]
    let iterations: Int

    init(iterations: Int) {
        self.iterations = iterations
        seconds = Array(repeating: 0, count: 3 * iterations)
        leastWait = Array(repeating: 0, count: iterations)
    }

    mutating func record(_ iteration: Int, forward: Double, backward: Double, exposed: Double) {
        seconds[iteration] = forward
        seconds[iterations + iteration] = backward
        seconds[2 * iterations + iteration] = exposed
        leastWait[iteration] = exposed
    }

    /// Reduces over ranks after the loop, so the timed region has no
    /// collective of its own: every phase to its maximum, and the wait also
    /// to its minimum.
    func overRanks(_ communicator: Communicator) throws -> PhaseTimings {
        var result = self
        result.seconds = try communicator.allreduce(seconds, .max)
        result.leastWait = try communicator.allreduce(leastWait, .min)
        return result
    }

    var forward: [Double] { Array(seconds[0..<iterations]) }
    var backward: [Double] { Array(seconds[iterations..<2 * iterations]) }
    /// The allreduce as the step sees it: the wait of the last rank to
    /// finish its dx (the least wait over ranks). A rank that finishes
    /// earlier waits longer, for the slower ranks, not for the reduction.
    var exposedAllreduce: [Double] { leastWait }
    /// How much longer the longest wait was: imbalance between ranks.
    var imbalance: [Double] { (0..<iterations).map { seconds[2 * iterations + $0] - leastWait[$0] } }
    /// Per iteration, forward + backward (each the maximum over ranks).
    var step: [Double] { (0..<iterations).map { seconds[$0] + seconds[iterations + $0] } }
}
