import Foundation
import NPY
import Testing

/// The process of rank `rank` among mpirun's descendants (its environment
/// holds OMPI_COMM_WORLD_RANK), or nil while it is not running yet.
func rankProcess(under mpirun: pid_t, rank: Int) -> pid_t? {
    for pid in ProcessRunner.descendants(of: mpirun) {
        guard let environment = FileManager.default.contents(atPath: "/proc/\(pid)/environ"),
              let command = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline")
        else { continue }
        let entries = environment.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        let arguments = command.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        if entries.contains("OMPI_COMM_WORLD_RANK=\(rank)"), arguments.first?.hasSuffix("instnorm") == true {
            return pid
        }
    }
    return nil
}

/// When the test's signal was sent, set from the thread that sent it.
final class SignalRecord: @unchecked Sendable {
    private let lock = NSLock()
    private var sentAt: Date?
    private var problem: String?

    func sent() { lock.withLock { sentAt = Date() } }
    func failed(_ text: String) { lock.withLock { problem = text } }

    /// Seconds from the signal to `end`; nil with the reason when no signal was sent.
    func seconds(until end: Date) -> Result<Double, LaunchError> {
        lock.withLock {
            if let sentAt { return .success(end.timeIntervalSince(sentAt)) }
            return .failure(LaunchError(problem ?? "no signal was sent"))
        }
    }
}

/// Polls `condition` every 50 ms for up to `seconds`.
func waitFor(seconds: Double, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if condition() { return true }
        usleep(50_000)
    }
    return false
}

extension InstnormCLI {
    /// A rank killed from outside (SIGKILL, as the OOM killer or a node
    /// failure would) in the middle of a long job; the job must end within
    /// 10 s, non-zero, and an `apply` must leave its output directory as it was.
    @Suite struct KilledRanks {
        /// A bench of ~10^6 iterations: rank `victim` is killed once every
        /// rank has run for 3 s (past MPI's start and the bandwidth measurement).
        @Test(arguments: [(3, 1), (2, 0)])
        func killedDuringBench(ranks: Int, victim: Int) async throws {
            let record = SignalRecord()
            let result = try await Launcher.instnorm(
                ranks: ranks, ["bench", "--shape", "8,16,32,32", "--iterations", "1000000", "--warmup", "0"]
            ) { mpirun in
                guard waitFor(seconds: 60, { (0..<ranks).allSatisfy { rankProcess(under: mpirun, rank: $0) != nil } }) else {
                    return record.failed("the ranks never started")
                }
                usleep(3_000_000)
                guard let pid = rankProcess(under: mpirun, rank: victim) else { return record.failed("rank \(victim) ended early") }
                record.sent()
                kill(pid, SIGKILL)
            }
            let end = Date()
            let seconds = try record.seconds(until: end).get()
            #expect(!result.timedOut && result.exitCode != 0, "\(result.summary)")
            #expect(seconds < failureDeadline, "the job took \(seconds) s to end after SIGKILL of rank \(victim)\n\(result.summary)")
        }

        /// An `apply` whose rank `staller` stalls while writing (the
        /// temporary files exist, the others wait in the agreement): rank
        /// `victim` is killed, or mpirun itself is terminated as by Ctrl-C
        /// (victim nil). The survivors' termination handlers remove the
        /// temporary files, also when rank 0, their owner, is the one killed.
        @Test(arguments: [(2, 1, 1 as Int?), (3, 2, 0 as Int?), (2, 1, nil as Int?)])
        func killedDuringApply(ranks: Int, staller: Int, victim: Int?) async throws {
            try await withTemporaryDirectory { folder in
                let inputs = ApplyInputs<Float>([7, 3, 6], seed: 611)
                try inputs.write(into: folder)
                let output = folder + "/out"
                try makeEarlierOutputs(output)
                let before = try #require(DirectorySnapshot(output))
                let record = SignalRecord()
                let result = try await Launcher.instnorm(
                    ranks: ranks,
                    ["apply"] + ApplyInputs<Float>.trainingArguments(inputs: folder, output: output, eps: 1e-5, momentum: 0.1),
                    extraEnvironment: ["INSTNORM_FAILPOINT": "writing@\(staller):stall"]
                ) { mpirun in
                    guard waitFor(seconds: 60, { !strayFiles(DirectorySnapshot(output)).isEmpty }) else {
                        return record.failed("no temporary file appeared")
                    }
                    usleep(500_000)  // the staller is asleep by now
                    if let victim {
                        guard let pid = rankProcess(under: mpirun, rank: victim) else { return record.failed("rank \(victim) is gone") }
                        record.sent()
                        kill(pid, SIGKILL)
                    } else {
                        record.sent()
                        kill(mpirun, SIGTERM)
                    }
                }
                let seconds = try record.seconds(until: Date()).get()
                #expect(!result.timedOut && result.exitCode != 0, "\(result.summary)")
                #expect(seconds < failureDeadline, "the job took \(seconds) s to end after the signal\n\(result.summary)")
                let after = DirectorySnapshot(output)
                #expect(strayFiles(after).isEmpty, "temporary files left: \(strayFiles(after))")
                #expect(after == before, "the output directory changed")
            }
        }
    }
}
