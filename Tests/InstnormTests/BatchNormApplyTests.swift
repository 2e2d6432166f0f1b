import Foundation
import NPY
import TestSupport
import Testing

extension InstnormCLI {
    /// BatchNorm through `apply`: the global batch's statistics on every
    /// rank, the same bytes at every rank count (N < P included), three
    /// training steps of running statistics then evaluation, against the
    /// double-precision reference, and the single-value channel refused.
    @Suite struct BatchNormApply {
        static let dimensions = [3, 4, 5, 2]

        /// x, dy, γ, β, running statistics for `dimensions` into `folder`
        /// (x and dy of shape `fileShape`, by default `dimensions`).
        func writeInputs(_ folder: String, seed: UInt64, fileShape: [Int] = BatchNormApply.dimensions) throws
            -> (x: [Double], dy: [Double], gamma: [Double], beta: [Double]) {
            var generator = SeededGenerator(seed: seed)
            let count = Self.dimensions.reduce(1, *), channels = Self.dimensions[1]
            let x = generator.normals(count, mean: 2, deviation: 3).map { Double(Float($0)) }
            let dy = generator.normals(count).map { Double(Float($0)) }
            let gamma = generator.normals(channels, mean: 1, deviation: 0.5).map { Double(Float($0)) }
            let beta = generator.normals(channels).map { Double(Float($0)) }
            try NPY.write(folder + "/x.npy", shape: fileShape, values: x.map { Float($0) })
            try NPY.write(folder + "/dy.npy", shape: fileShape, values: dy.map { Float($0) })
            try NPY.write(folder + "/g.npy", shape: [channels], values: gamma.map { Float($0) })
            try NPY.write(folder + "/b.npy", shape: [channels], values: beta.map { Float($0) })
            try NPY.write(folder + "/rm0.npy", shape: [channels], values: [Float](repeating: 0, count: channels))
            try NPY.write(folder + "/rv0.npy", shape: [channels], values: [Float](repeating: 1, count: channels))
            return (x, dy, gamma, beta)
        }

        func arguments(_ folder: String, step: Int, output: String) -> [String] {
            ["--input", folder + "/x.npy", "--grad", folder + "/dy.npy", "--weight", folder + "/g.npy", "--bias", folder + "/b.npy",
             "--running-mean", "\(folder)/rm\(step).npy", "--running-var", "\(folder)/rv\(step).npy",
             "--norm", "batch", "--output", output]
        }

        /// Every output the same bytes at np = 1…5 (N = 3: ranks 3 and 4 hold
        /// no samples), channels first and last (which sums in its own order).
        @Test(arguments: ["nchw", "nhwc"])
        func sameBytesAtEveryRankCount(layout: String) async throws {
            try await withTemporaryDirectory { folder in
                let (n, c) = (Self.dimensions[0], Self.dimensions[1])
                let fileShape = layout == "nchw" ? Self.dimensions : [n] + Self.dimensions.dropFirst(2) + [c]
                _ = try writeInputs(folder, seed: 51, fileShape: fileShape)
                for np in 1...5 {
                    try await Launcher.apply(
                        ranks: np, arguments(folder, step: 0, output: "\(folder)/np\(np)") + ["--layout", layout])
                }
                let names = ["y.npy", "mean.npy", "invstd.npy", "dx.npy", "dgamma.npy", "dbeta.npy", "running_mean.npy", "running_var.npy"]
                #expect(DirectorySnapshot("\(folder)/np1")?.names == names.sorted())
                #expect(try NPYReader(path: "\(folder)/np1/mean.npy").header.shape == [Self.dimensions[1]])
                for name in names {
                    let expected = try #require(bytes("\(folder)/np1/\(name)"))
                    for np in 2...5 { #expect(bytes("\(folder)/np\(np)/\(name)") == expected, "\(name): np = \(np)") }
                }
            }
        }

        /// Three training steps, each feeding its running statistics to the
        /// next, then --eval with them: at np = 1 and 3 against the
        /// reference (PyTorch's update: unbiased variance over N·M values).
        @Test(arguments: [1, 3])
        func runningStatisticsOverThreeStepsThenEval(ranks: Int) async throws {
            try await withTemporaryDirectory { folder in
                let (x, dy, gamma, beta) = try writeInputs(folder, seed: 52)
                let (n, c, m) = (Self.dimensions[0], Self.dimensions[1], Self.dimensions[2...].reduce(1, *))
                let rows = Reference.Rows.batch(batch: n, channels: c, spatialCount: m)
                let forward = Reference.forward(x: x, rows: rows, gamma: gamma, beta: beta, eps: 1e-5)
                let backward = Reference.backward(dy: dy, x: x, rows: rows, gamma: gamma, eps: 1e-5)
                var runningMean = [Double](repeating: 0, count: c), runningVar = [Double](repeating: 1, count: c)
                let count = Double(n * m)
                for step in 0..<3 {
                    try await Launcher.apply(ranks: ranks, arguments(folder, step: step, output: "\(folder)/step\(step)"))
                    for channel in 0..<c {
                        runningMean[channel] = 0.9 * Double(Float(runningMean[channel])) + 0.1 * forward.mean[channel]
                        runningVar[channel] = 0.9 * Double(Float(runningVar[channel])) + 0.1 * forward.variance[channel] * count / (count - 1)
                    }
                    let fileManager = FileManager.default
                    try fileManager.copyItem(atPath: "\(folder)/step\(step)/running_mean.npy", toPath: "\(folder)/rm\(step + 1).npy")
                    try fileManager.copyItem(atPath: "\(folder)/step\(step)/running_var.npy", toPath: "\(folder)/rv\(step + 1).npy")
                    let dgamma = try readOutput("\(folder)/step\(step)/dgamma.npy", as: Float.self, shape: [c])
                    #expect(maxScaledError(dgamma, backward.dgamma, scale: count) <= 1e-6, "dgamma, step \(step)")
                }
                let storedMean = try readOutput("\(folder)/step2/running_mean.npy", as: Float.self, shape: [c])
                let storedVar = try readOutput("\(folder)/step2/running_var.npy", as: Float.self, shape: [c])
                // Each step rounds the statistics to float32 once: a few float ulps.
                #expect(maxScaledError(storedMean, runningMean, scale: 1) <= 1e-6)
                #expect(maxScaledError(storedVar, runningVar, scale: 1) <= 1e-6)
                try await Launcher.apply(ranks: ranks, [
                    "--input", folder + "/x.npy", "--weight", folder + "/g.npy", "--bias", folder + "/b.npy",
                    "--running-mean", "\(folder)/rm3.npy", "--running-var", "\(folder)/rv3.npy",
                    "--norm", "batch", "--eval", "--output", "\(folder)/eval"])
                let expected = Reference.forwardInference(
                    x: x, batch: n, channels: c, spatialCount: m, runningMean: storedMean.map(Double.init),
                    runningVar: storedVar.map(Double.init), gamma: gamma, beta: beta, eps: 1e-5)
                let y = try readOutput("\(folder)/eval/y.npy", as: Float.self, shape: Self.dimensions)
                #expect(maxScaledError(y, expected, scale: magnitude(expected, minimum: 1)) <= 1e-6)
            }
        }

        /// PyTorch refuses one value per channel in training; so does apply (65), naming it.
        @Test func refusesASingleValuePerChannel() async throws {
            try await withTemporaryDirectory { folder in
                try NPY.write(folder + "/x.npy", shape: [1, 3, 1], values: [Float](repeating: 1, count: 3))
                let result = try await Launcher.instnorm(
                    ranks: 2, ["apply", "--input", folder + "/x.npy", "--norm", "batch", "--output", folder + "/out"])
                #expect(result.exitCode == 65, "\(result.summary)")
                #expect(result.standardError.contains("more than one value per channel"), "\(result.summary)")
                #expect(!FileManager.default.fileExists(atPath: folder + "/out"))
            }
        }
    }
}
