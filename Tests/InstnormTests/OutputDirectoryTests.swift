import Foundation
import Testing

extension InstnormCLI {
    @Suite struct FailedRun {
        /// A run that fails leaves the outputs of an earlier run exactly as
        /// they were, and no hidden temporary files behind.
        @Test func failedRunKeepsEarlierOutputs() async throws {
            try await withTemporaryDirectory { folder in
                let inputs = ApplyInputs<Float>([5, 3, 8], seed: 501)
                try inputs.write(into: folder)
                let output = folder + "/out"
                let arguments = ApplyInputs<Float>.trainingArguments(inputs: folder, output: output, eps: 1e-5, momentum: 0.1)
                try await Launcher.apply(ranks: 2, arguments)
                let before = try #require(DirectorySnapshot(output))
                #expect(before.names == MultiRank.trainingOutputs.sorted())

                try FileManager.default.copyItem(atPath: folder + "/dy.npy", toPath: folder + "/dy_trunc.npy")
                try truncate(folder + "/dy_trunc.npy", droppingLast: 4)
                let failing = arguments.map { $0 == folder + "/dy.npy" ? folder + "/dy_trunc.npy" : $0 }
                try #require(failing.contains(folder + "/dy_trunc.npy"))
                let result = try await Launcher.instnorm(ranks: 2, ["apply"] + failing)

                #expect(!result.timedOut && result.exitCode == ExitCode.badInput, "\(result.summary)")
                #expect(result.standardError.contains("dy_trunc.npy") && result.standardError.contains("truncated"),
                        "\(result.summary)")
                let after = try #require(DirectorySnapshot(output))
                #expect(after.names.filter { $0.hasPrefix(".") && $0.contains(".partial-") } == [], "temporary files left")
                #expect(after == before, "the earlier outputs changed: \(before) → \(after)")
            }
        }
    }
}
