import Foundation
import NPY
import TestSupport
import Testing

extension InstnormCLI {
    /// Threads inside a rank, and the bench that reports them.
    @Suite struct Threads {
        /// The thread count must not change a bit of any output, dγ and dβ
        /// included: (5, 3, 40) gives each thread whole instances, (1, 2, 3000)
        /// has fewer instances than threads, so threads share instances.
        @Test(arguments: [[5, 3, 40], [1, 2, 3000]])
        func sameBytesForEveryThreadCount(dimensions: [Int]) async throws {
            try await withTemporaryDirectory { folder in
                let inputs = ApplyInputs<Float>(dimensions, seed: 211)
                try inputs.write(into: folder)
                func run(ranks: Int, threads: Int) async throws -> String {
                    let output = "\(folder)/np\(ranks)-t\(threads)"
                    try await Launcher.apply(ranks: ranks, ApplyInputs<Float>.trainingArguments(
                        inputs: folder, output: output, eps: 1e-5, momentum: 0.1) + ["--threads", String(threads)])
                    return output
                }
                for ranks in [1, 2] {
                    let single = try await run(ranks: ranks, threads: 1)
                    let threaded = try await run(ranks: ranks, threads: 3)
                    for name in MultiRank.trainingOutputs {
                        let expected = try #require(bytes("\(single)/\(name)"))
                        #expect(bytes("\(threaded)/\(name)") == expected, "\(name), np = \(ranks), 3 threads vs 1")
                    }
                }
            }
        }

        /// bench --json --verify with threads, overlapped or blocking
        /// allreduce, in float32 and float16: passes, and carries every key
        /// the docs promise with values that make sense together.
        @Test(arguments: [(1, "--overlap", "float32"), (2, "--overlap", "float32"), (3, "--no-overlap", "float32"),
                          (2, "--overlap", "float16")])
        func benchReportsTheFloor(ranks: Int, overlap: String, dtype: String) async throws {
            let report = try await Launcher.benchReport(ranks: ranks, [
                "--shape", "3,4,33,31", "--threads", "2", "--iterations", "3", "--warmup", "1",
                overlap, "--verify", "--dtype", dtype,
            ])
            #expect(report["ranks"] as? Int == ranks)
            #expect(report["threads"] as? Int == 2)
            #expect(report["shape"] as? [Int] == [3, 4, 33, 31])
            #expect(report["verified"] as? Bool == true)
            #expect(report["overlap"] as? Bool == (overlap == "--overlap"))
            #expect(report["dtype"] as? String == dtype)
            for key in ["forward_ms", "backward_ms", "allreduce_ms", "exposed_allreduce_ms", "forward_gbps",
                        "backward_gbps", "forward_floor_fraction", "backward_floor_fraction",
                        "stream_copy_gbps", "stream_add_gbps"] {
                let value = try #require(report[key] as? Double, "\(key) missing from \(report)")
                #expect(value >= 0 && value.isFinite, "\(key) = \(value)")
            }
            let backward = try #require(report["backward_ms"] as? Double)
            let exposed = try #require(report["exposed_allreduce_ms"] as? Double)
            #expect(exposed <= backward, "the exposed wait is part of the backward")
            // The achieved rate is bytes over time, with the storage's bytes
            // per value (x read, y written): check it against the times.
            let forwardRate = try #require(report["forward_gbps"] as? Double)
            let forward = try #require(report["forward_ms"] as? Double)
            let bytes = 2.0 * (dtype == "float16" ? 2 : 4) * Double(3 * 4 * 33 * 31)
            #expect(abs(forwardRate - bytes / (forward / 1000) / 1e9) <= 0.01 + 0.01 * forwardRate)
            let backwardRate = try #require(report["backward_gbps"] as? Double)
            #expect(abs(backwardRate - 1.5 * bytes / (backward / 1000) / 1e9) <= 0.01 + 0.01 * backwardRate)
        }
    }
}
