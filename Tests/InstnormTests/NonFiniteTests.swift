import Foundation
import NPY
import TestSupport
import Testing

/// Inputs of shape (7, 3, 10) with non-finite values planted in chosen
/// instances, next to the same inputs without them.
struct PlantedInputs {
    static let dimensions = [7, 3, 10]
    static let spatialCount = 10
    static let channels = 3
    let clean = ApplyInputs<Float>(dimensions, seed: 701)

    /// (sample, channel, element, value) planted in x and in dy.
    var inX: [(Int, Int, Int, Float)] = []
    var inDy: [(Int, Int, Int, Float)] = []
    var gammaNaNChannel: Int?

    func index(_ sample: Int, _ channel: Int, _ element: Int) -> Int {
        (sample * Self.channels + channel) * Self.spatialCount + element
    }

    var x: [Float] {
        var values = clean.x
        for (sample, channel, element, value) in inX { values[index(sample, channel, element)] = value }
        return values
    }

    var dy: [Float] {
        var values = clean.dy
        for (sample, channel, element, value) in inDy { values[index(sample, channel, element)] = value }
        return values
    }

    /// The clean inputs into `clean/`, the planted ones into `planted/`.
    func write(into folder: String) throws {
        try FileManager.default.createDirectory(atPath: folder + "/clean", withIntermediateDirectories: false)
        try FileManager.default.createDirectory(atPath: folder + "/planted", withIntermediateDirectories: false)
        try clean.write(into: folder + "/clean")
        try clean.write(into: folder + "/planted")
        try NPY.write(folder + "/planted/x.npy", shape: Self.dimensions, values: x)
        try NPY.write(folder + "/planted/dy.npy", shape: Self.dimensions, values: dy)
        if let channel = gammaNaNChannel {
            var gamma = clean.gamma
            gamma[channel] = .nan
            try NPY.write(folder + "/planted/gamma.npy", shape: [Self.channels], values: gamma)
        }
    }
}

extension InstnormCLI {
    /// NaN and infinity follow PyTorch: they make their own instance's
    /// outputs non-finite (and the per-channel sums of their channel) and
    /// leave every other instance exactly as without them; `--check-finite`
    /// turns them into an error naming the first bad sample and channel.
    @Suite struct NonFinite {
        /// NaN in x of (1, 2), +inf in x of (5, 0), NaN in dy of (3, 1), at
        /// np = 1 and 3 (the bad instances on different ranks).
        @Test(arguments: [1, 3])
        func staysInItsInstance(ranks: Int) async throws {
            var planted = PlantedInputs()
            planted.inX = [(1, 2, 4, .nan), (5, 0, 0, .infinity)]
            planted.inDy = [(3, 1, 9, .nan)]
            let xBad: Set = [1 * 3 + 2, 5 * 3 + 0], dyBad: Set = [3 * 3 + 1]
            try await withTemporaryDirectory { folder in
                try planted.write(into: folder)
                for kind in ["clean", "planted"] {
                    try await Launcher.apply(ranks: ranks, ApplyInputs<Float>.trainingArguments(
                        inputs: "\(folder)/\(kind)", output: "\(folder)/\(kind)/out", eps: 1e-5, momentum: 0.1))
                }
                func read(_ kind: String, _ name: String, _ shape: [Int]) throws -> [Float] {
                    try readOutput("\(folder)/\(kind)/out/\(name)", as: Float.self, shape: shape)
                }
                let m = PlantedInputs.spatialCount, dims = PlantedInputs.dimensions
                let perInstance: [(String, [Int], Int, Set<Int>)] = [
                    ("y.npy", dims, m, xBad), ("dx.npy", dims, m, xBad.union(dyBad)),
                    ("mean.npy", [7, 3], 1, xBad), ("invstd.npy", [7, 3], 1, xBad),
                ]
                for (name, shape, size, bad) in perInstance {
                    let clean = try read("clean", name, shape), dirty = try read("planted", name, shape)
                    for instance in 0..<21 {
                        let range = instance * size..<(instance + 1) * size
                        if bad.contains(instance) {
                            #expect(dirty[range].allSatisfy { !$0.isFinite }, "\(name) instance \(instance) should be non-finite")
                        } else {
                            #expect(fileBytes(Array(dirty[range])) == fileBytes(Array(clean[range])),
                                    "\(name) instance \(instance) changed although its inputs are finite")
                        }
                    }
                }
                // Per channel: dγ = Σ dy·x̂ over every instance of the channel,
                // dβ = Σ dy (x does not enter it), the running statistics from x alone.
                let perChannel: [(String, Set<Int>)] = [
                    ("dgamma.npy", [2, 0, 1]), ("dbeta.npy", [1]), ("running_mean.npy", [2, 0]), ("running_var.npy", [2, 0]),
                ]
                for (name, bad) in perChannel {
                    let clean = try read("clean", name, [3]), dirty = try read("planted", name, [3])
                    for channel in 0..<3 {
                        if bad.contains(channel) {
                            #expect(!dirty[channel].isFinite, "\(name) channel \(channel) should be non-finite")
                        } else {
                            #expect(fileBytes([dirty[channel]]) == fileBytes([clean[channel]]), "\(name) channel \(channel) changed")
                        }
                    }
                }
                // And the finite instances against the reference, computed on
                // the planted inputs (it too keeps non-finite values in their instance).
                let wide = planted.clean.wide
                let x = planted.x.map(Double.init), dy = planted.dy.map(Double.init)
                let forward = Reference.forward(x: x, batch: 7, channels: 3, spatialCount: m, gamma: wide.gamma, beta: wide.beta, eps: 1e-5)
                let backward = Reference.backward(dy: dy, x: x, batch: 7, channels: 3, spatialCount: m, gamma: wide.gamma, eps: 1e-5)
                let y = try read("planted", "y.npy", dims), dx = try read("planted", "dx.npy", dims)
                let finite = (0..<21).filter { !xBad.contains($0) && !dyBad.contains($0) }
                // Scales as in MultiRankTests: the size of the (finite) data.
                let yScale = magnitude(finite.flatMap { forward.y[$0 * m..<($0 + 1) * m] }, minimum: 1)
                let dxScale = magnitude(finite.flatMap { backward.dx[$0 * m..<($0 + 1) * m] }, minimum: 1e-3)
                for instance in finite {
                    let range = instance * m..<(instance + 1) * m
                    let yError = maxScaledError(Array(y[range]), Array(forward.y[range]), scale: yScale)
                    let dxError = maxScaledError(Array(dx[range]), Array(backward.dx[range]), scale: dxScale)
                    #expect(yError <= tolerance(Float.self) && dxError <= tolerance(Float.self),
                            "instance \(instance): y error \(yError), dx error \(dxError)")
                }
            }
        }

        struct CheckCase: Sendable, CustomTestStringConvertible {
            let name: String
            let ranks: Int
            let inX: [(Int, Int, Int, Float)]
            let inDy: [(Int, Int, Int, Float)]
            var gammaNaNChannel: Int? = nil
            let message: String
            var testDescription: String { "\(name) at np = \(ranks)" }
        }

        /// N = 7 over 3 ranks: samples 0-2, 3-4, 5-6. The first bad sample
        /// is reported, whichever rank holds it and whichever file.
        static let checkCases = [
            CheckCase(name: "NaN in x on the last rank", ranks: 3, inX: [(6, 1, 3, .nan)], inDy: [],
                      message: "x.npy: non-finite value nan at sample 6, channel 1 (element 3 of that instance)"),
            CheckCase(name: "lowest sample wins across ranks and files", ranks: 3, inX: [(5, 2, 0, .nan)], inDy: [(3, 2, 7, -.infinity)],
                      message: "dy.npy: non-finite value -inf at sample 3, channel 2 (element 7 of that instance)"),
            CheckCase(name: "x before dy in one instance", ranks: 2, inX: [(4, 0, 9, .infinity)], inDy: [(4, 0, 1, .nan)],
                      message: "x.npy: non-finite value inf at sample 4, channel 0 (element 9 of that instance)"),
            CheckCase(name: "NaN in gamma", ranks: 2, inX: [(0, 0, 0, .nan)], inDy: [], gammaNaNChannel: 2,
                      message: "gamma.npy: non-finite value nan at channel 2"),
        ]

        /// `--check-finite`: exit 65, the first bad sample and channel in
        /// global indices, reported once, nothing written.
        @Test(arguments: checkCases)
        func checkFiniteRefuses(_ testCase: CheckCase) async throws {
            var planted = PlantedInputs()
            planted.inX = testCase.inX
            planted.inDy = testCase.inDy
            planted.gammaNaNChannel = testCase.gammaNaNChannel
            try await withTemporaryDirectory { folder in
                try planted.write(into: folder)
                let output = folder + "/out"
                let result = try await Launcher.instnorm(ranks: testCase.ranks, ["apply"] + ApplyInputs<Float>.trainingArguments(
                    inputs: folder + "/planted", output: output, eps: 1e-5, momentum: 0.1) + ["--check-finite"])
                #expect(!result.timedOut && result.exitCode == ExitCode.badInput, "\(result.summary)")
                #expect(result.standardError.components(separatedBy: testCase.message).count == 2,
                        "stderr should hold \"\(testCase.message)\" once\n\(result.summary)")
                #expect(!FileManager.default.fileExists(atPath: output), "a refused run created --output")
            }
        }

        /// Finite inputs pass `--check-finite` with the same bytes as without it.
        @Test func checkFiniteAcceptsFiniteInputs() async throws {
            try await withTemporaryDirectory { folder in
                try PlantedInputs().clean.write(into: folder)
                for (output, extra) in [("plain", [String]()), ("checked", ["--check-finite"])] {
                    try await Launcher.apply(ranks: 2, ApplyInputs<Float>.trainingArguments(
                        inputs: folder, output: "\(folder)/\(output)", eps: 1e-5, momentum: 0.1) + extra)
                }
                let plain = try #require(DirectorySnapshot(folder + "/plain"))
                #expect(plain.names == MultiRank.trainingOutputs.sorted())
                #expect(DirectorySnapshot(folder + "/checked") == plain)
            }
        }

        /// float64 values whose spread overflows: finite inputs, non-finite
        /// outputs, which `--check-finite` reports as such.
        @Test func checkFiniteRefusesOverflowingOutputs() async throws {
            try await withTemporaryDirectory { folder in
                var x = (0..<24).map { Double($0 % 5) }
                x[12..<18] = [1e308, -1e308, 1e308, -1e308, 1e308, -1e308]  // sample 1, channel 0 of (2, 2, 6)
                try NPY.write(folder + "/x.npy", shape: [2, 2, 6], values: x)
                let result = try await Launcher.instnorm(
                    ranks: 2, ["apply", "--input", folder + "/x.npy", "--output", folder + "/out", "--check-finite"])
                #expect(result.exitCode == ExitCode.badInput, "\(result.summary)")
                #expect(result.standardError.contains("at sample 1, channel 0 although the inputs there are finite"), "\(result.summary)")
                #expect(!FileManager.default.fileExists(atPath: folder + "/out"))
            }
        }

        /// Eval mode normalizes with r = 1/sqrt(v + ε) from the running
        /// variance v: v + ε ≤ 0 makes that channel's outputs NaN or ∞ from
        /// finite inputs, as PyTorch does; `--check-finite` refuses it before
        /// anything runs, naming the channel and the cause. A v below zero
        /// but above −ε still gives finite outputs and passes.
        @Test(arguments: ["instance", "batch"])
        func evalRefusesRunningVarianceBelowMinusEps(norm: String) async throws {
            try await withTemporaryDirectory { folder in
                try NPY.write(folder + "/x.npy", shape: [4, 3, 5], values: (0..<60).map { Float($0 % 7) - 3 })
                try NPY.write(folder + "/rm.npy", shape: [3], values: [Float](repeating: 0.5, count: 3))
                let arguments = ["apply", "--norm", norm, "--input", folder + "/x.npy", "--eval", "--running-mean", folder + "/rm.npy",
                                 "--running-var", folder + "/rv.npy"]
                try NPY.write(folder + "/rv.npy", shape: [3], values: [Float(1), -0.5, 2])
                let refused = try await Launcher.instnorm(ranks: 2, arguments + ["--output", folder + "/refused", "--check-finite"])
                #expect(refused.exitCode == ExitCode.badInput, "\(refused.summary)")
                #expect(refused.standardError.components(separatedBy: "running variance -0.5 at channel 1 is at most").count == 2,
                        "\(refused.summary)")
                #expect(!FileManager.default.fileExists(atPath: folder + "/refused"))
                // Without the check: PyTorch's NaN in channel 1 only.
                try await Launcher.apply(ranks: 2, Array(arguments.dropFirst()) + ["--output", folder + "/plain"])
                let y = try NPY.read(folder + "/plain/y.npy", as: Float.self).values
                let channelOf = { (index: Int) in index / 5 % 3 }
                #expect(y.indices.allSatisfy { y[$0].isNaN == (channelOf($0) == 1) })
                try NPY.write(folder + "/rv.npy", shape: [3], values: [Float(1), -1e-6, 2])
                let accepted = try await Launcher.instnorm(ranks: 2, arguments + ["--output", folder + "/accepted", "--check-finite"])
                #expect(accepted.exitCode == 0, "\(accepted.summary)")
            }
        }
    }
}

/// The bytes of float values as stored (NaN payloads and -0.0 count).
func fileBytes(_ values: [Float]) -> [UInt8] {
    values.withUnsafeBytes { Array($0) }
}
