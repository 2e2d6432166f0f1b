import Foundation
import NPY
import TestSupport
import Testing

extension InstnormCLI {
    /// GroupNorm and LayerNorm through `apply`: the outputs of the norm's
    /// shapes, the same bytes at every rank count (with ranks that hold no
    /// samples), and every flag that does not fit refused with exit 64.
    @Suite struct FamilyApply {
        /// (flags, x's shape, γ's shape, the statistics' shape).
        static let cases: [(flags: [String], dimensions: [Int], parameters: [Int], statistics: [Int])] = [
            (["--norm", "group", "--groups", "2"], [3, 4, 5, 3], [4], [3, 2]),
            (["--norm", "group", "--groups", "1"], [3, 6, 7], [6], [3, 1]),
            (["--norm", "layer", "--normalized-dims", "1"], [3, 5, 8], [8], [3, 5]),
            (["--norm", "layer"], [3, 2, 3, 4], [2, 3, 4], [3]),
            (["--norm", "group", "--groups", "2", "--layout", "nhwc"], [3, 5, 3, 4], [4], [3, 2]),
            // (N, C), as PyTorch's GroupNorm takes it (its own tests' GroupNorm_1d_affine_GN is (4, 12), G = 3).
            (["--norm", "group", "--groups", "3"], [4, 12], [12], [4, 3]),
        ]

        @Test(arguments: 0..<cases.count)
        func sameBytesAtEveryRankCount(_ index: Int) async throws {
            let (flags, dimensions, parameters, statistics) = Self.cases[index]
            try await withTemporaryDirectory { folder in
                try writeNormInputs(into: folder, dimensions: dimensions, parameters: parameters, seed: 900 + UInt64(index))
                let arguments = { (np: Int) in
                    ["--input", folder + "/x.npy", "--grad", folder + "/dy.npy", "--weight", folder + "/g.npy",
                     "--bias", folder + "/b.npy", "--output", "\(folder)/np\(np)"] + flags
                }
                for np in 1...4 { try await Launcher.apply(ranks: np, arguments(np)) }
                let expectedShapes = [
                    "y.npy": dimensions, "dx.npy": dimensions, "mean.npy": statistics, "invstd.npy": statistics,
                    "dgamma.npy": parameters, "dbeta.npy": parameters,
                ]
                #expect(DirectorySnapshot("\(folder)/np1")?.names == expectedShapes.keys.sorted())
                for (name, shape) in expectedShapes {
                    #expect(try NPYReader(path: "\(folder)/np1/\(name)").header.shape == shape, "\(name)")
                    let expected = try #require(bytes("\(folder)/np1/\(name)"))
                    for np in 2...4 {
                        #expect(bytes("\(folder)/np\(np)/\(name)") == expected, "\(name): np = \(np) differs from np = 1")
                    }
                }
            }
        }

        /// GroupNorm of (N, C) is that of (N, C, 1), in either layout (for
        /// which the two are the same memory): the same bytes as the 3-D
        /// file, whose path the reference tests check.
        @Test(arguments: ["nchw", "nhwc"])
        func groupNormOfFeaturesIsThatOfOnePosition(_ layout: String) async throws {
            try await withTemporaryDirectory { folder in
                var generator = SeededGenerator(seed: 950)
                let (n, c) = (5, 8)
                let x = generator.normals(n * c, mean: 1, deviation: 2).map { Float($0) }, dy = generator.normals(n * c).map { Float($0) }
                let gamma = generator.normals(c, mean: 1).map { Float($0) }, beta = generator.normals(c).map { Float($0) }
                for (name, shape) in [("flat", [n, c]), ("spatial", layout == "nchw" ? [n, c, 1] : [n, 1, c])] {
                    try NPY.write("\(folder)/\(name)-x.npy", shape: shape, values: x)
                    try NPY.write("\(folder)/\(name)-dy.npy", shape: shape, values: dy)
                }
                try NPY.write(folder + "/g.npy", shape: [c], values: gamma)
                try NPY.write(folder + "/b.npy", shape: [c], values: beta)
                for name in ["flat", "spatial"] {
                    try await Launcher.apply(ranks: name == "flat" ? 2 : 1, [
                        "--input", "\(folder)/\(name)-x.npy", "--grad", "\(folder)/\(name)-dy.npy", "--weight", folder + "/g.npy",
                        "--bias", folder + "/b.npy", "--norm", "group", "--groups", "4", "--layout", layout,
                        "--output", "\(folder)/\(name)",
                    ])
                }
                for output in ["y", "dx", "mean", "invstd", "dgamma", "dbeta"] {
                    let flat = try NPY.read("\(folder)/flat/\(output).npy", as: Float.self).values
                    let spatial = try NPY.read("\(folder)/spatial/\(output).npy", as: Float.self).values
                    #expect(flat.map(\.bitPattern) == spatial.map(\.bitPattern), "\(output)")
                }
                #expect(try NPYReader(path: "\(folder)/flat/y.npy").header.shape == [n, c])
            }
        }

        /// An empty batch (N = 0), which PyTorch's own tests run (LayerNorm
        /// of (0, 5), BatchNorm of (0, 5, 9)): empty y and dx, dγ = dβ = 0,
        /// the saved statistics empty, or for BatchNorm (C,) of NaN, the
        /// statistics of no values, and its running statistics as they were.
        static let emptyBatches: [(flags: [String], dimensions: [Int], parameters: [Int], statistics: [Int])] = [
            (["--norm", "layer"], [0, 5], [5], [0]),
            (["--norm", "group", "--groups", "3"], [0, 6, 9], [6], [0, 3]),
            (["--norm", "instance", "--layout", "nhwc"], [0, 9, 6], [6], [0, 6]),
            (["--norm", "batch", "--running-mean", "rm.npy", "--running-var", "rv.npy"], [0, 6, 9], [6], [6]),
        ]

        @Test(arguments: 0..<emptyBatches.count, [1, 2])
        func emptyBatchGivesEmptyOutputsAndZeroGradients(_ index: Int, ranks: Int) async throws {
            let (flags, dimensions, parameters, statistics) = Self.emptyBatches[index]
            try await withTemporaryDirectory { folder in
                var generator = SeededGenerator(seed: 960)
                let c = parameters.reduce(1, *)
                try NPY.write(folder + "/x.npy", shape: dimensions, values: [Float]())
                try NPY.write(folder + "/dy.npy", shape: dimensions, values: [Float]())
                try NPY.write(folder + "/g.npy", shape: parameters, values: generator.normals(c, mean: 1).map { Float($0) })
                try NPY.write(folder + "/b.npy", shape: parameters, values: generator.normals(c).map { Float($0) })
                try NPY.write(folder + "/rm.npy", shape: parameters, values: generator.normals(c).map { Float($0) })
                try NPY.write(folder + "/rv.npy", shape: parameters, values: generator.normals(c).map { Float(1 + $0 * $0) })
                try await Launcher.apply(ranks: ranks, [
                    "--input", folder + "/x.npy", "--grad", folder + "/dy.npy", "--weight", folder + "/g.npy",
                    "--bias", folder + "/b.npy", "--output", folder + "/out",
                ] + flags.map { $0.hasSuffix(".npy") ? folder + "/" + $0 : $0 })
                for name in ["y", "dx"] {
                    #expect(try readOutput("\(folder)/out/\(name).npy", as: Float.self, shape: dimensions).isEmpty, "\(name)")
                }
                for name in ["dgamma", "dbeta"] {
                    let values = try readOutput("\(folder)/out/\(name).npy", as: Float.self, shape: parameters)
                    #expect(values.allSatisfy { $0 == 0 }, "\(name): \(values)")
                }
                for name in ["mean", "invstd"] {
                    let values = try readOutput("\(folder)/out/\(name).npy", as: Float.self, shape: statistics)
                    #expect(values.allSatisfy { $0.isNaN }, "\(name): \(values)")  // vacuous where empty
                }
                for (input, output) in [("rm", "running_mean"), ("rv", "running_var")] where flags.contains("--running-mean") {
                    #expect(bytes("\(folder)/out/\(output).npy") == bytes("\(folder)/\(input).npy"), "\(output) changed")
                }
            }
        }

        /// Fewer than two dimensions: batch and group norm name what they
        /// need, (N, C), not instance norm's spatial dimension; bad input, 65.
        @Test(arguments: [["--norm", "group", "--groups", "1"], ["--norm", "batch"]])
        func refusesAOneDimensionalInputNamingItsNorm(_ flags: [String]) async throws {
            try await withTemporaryDirectory { folder in
                try NPY.write(folder + "/x.npy", shape: [5], values: [Float](repeating: 1, count: 5))
                let result = try await Launcher.instnorm(
                    ranks: 1, ["apply", "--input", folder + "/x.npy", "--output", folder + "/out"] + flags)
                #expect(result.exitCode == 65, "\(result.summary)")
                #expect(result.standardError.contains("\(flags[1]) norm needs at least (N, C)"), "\(result.summary)")
                #expect(!FileManager.default.fileExists(atPath: folder + "/out"))
            }
        }

        /// InstanceNorm's running statistics have no update from no
        /// instances (PyTorch's instance_norm fails there): refused, 65.
        @Test func emptyBatchRefusesInstanceRunningStatistics() async throws {
            try await withTemporaryDirectory { folder in
                try NPY.write(folder + "/x.npy", shape: [0, 3, 4], values: [Float]())
                try NPY.write(folder + "/rm.npy", shape: [3], values: [Float](repeating: 0, count: 3))
                try NPY.write(folder + "/rv.npy", shape: [3], values: [Float](repeating: 1, count: 3))
                let result = try await Launcher.instnorm(ranks: 2, [
                    "apply", "--input", folder + "/x.npy", "--running-mean", folder + "/rm.npy",
                    "--running-var", folder + "/rv.npy", "--output", folder + "/out",
                ])
                #expect(result.exitCode == 65, "\(result.summary)")
                #expect(result.standardError.contains("the batch is empty (N = 0)"), "\(result.summary)")
                #expect(!FileManager.default.fileExists(atPath: folder + "/out"))
            }
        }

        /// Each refused at one and two ranks, with exit 64 and a message naming the flag.
        static let refusals: [(flags: [String], dimensions: [Int], keyword: String)] = [
            (["--norm", "group", "--groups", "3"], [2, 4, 5], "--groups 3"),
            (["--norm", "group", "--groups", "0"], [2, 4, 5], "--groups must be a positive divisor of the channel count C = 4, got 0"),
            (["--norm", "group"], [2, 4, 5], "--groups"),
            (["--groups", "2"], [2, 4, 5], "--norm group"),
            (["--norm", "layer", "--normalized-dims", "3"], [2, 4, 5], "--normalized-dims 3"),
            (["--norm", "layer", "--normalized-dims", "2", "--layout", "nhwc"], [2, 4, 5], "--layout nhwc"),
            (["--norm", "instance", "--normalized-dims", "1"], [2, 4, 5], "--normalized-dims"),
            (["--norm", "group", "--groups", "2", "--running-mean", "rm.npy", "--running-var", "rv.npy"], [2, 4, 5], "running"),
            // Negative values reach the checks (not "missing value").
            (["--norm", "group", "--groups", "-2"], [2, 4, 5], "--groups must be a positive divisor of the channel count C = 4, got -2"),
            (["--norm", "layer", "--normalized-dims", "-1"], [2, 4, 5], "--normalized-dims -1 must be between 1 and 2"),
            // A momentum with nothing to update is refused, not ignored.
            (["--norm", "layer", "--momentum", "0.5"], [2, 4, 5], "--momentum has nothing to update"),
            (["--norm", "group", "--groups", "2", "--momentum", "0.5"], [2, 4, 5], "--momentum has nothing to update"),
        ]

        @Test(arguments: 0..<refusals.count, [1, 2])
        func refusesFlagsThatDoNotFit(_ index: Int, ranks: Int) async throws {
            let (flags, dimensions, keyword) = Self.refusals[index]
            try await withTemporaryDirectory { folder in
                try NPY.write(folder + "/x.npy", shape: dimensions, values: [Float](repeating: 1, count: dimensions.reduce(1, *)))
                let result = try await Launcher.instnorm(
                    ranks: ranks, ["apply", "--input", folder + "/x.npy", "--output", folder + "/out"]
                        + flags.map { $0.hasSuffix(".npy") ? folder + "/" + $0 : $0 })
                #expect(result.exitCode == 64, "\(result.summary)")
                #expect(result.standardError.contains(keyword), "\(result.summary)")
                #expect(!FileManager.default.fileExists(atPath: folder + "/out"))
            }
        }

        /// bench refuses the same combinations before it allocates anything.
        @Test func benchRefusesAGroupCountThatDoesNotDivideC() async throws {
            let result = try await Launcher.instnorm(ranks: 1, ["bench", "--shape", "2,6,5", "--norm", "group", "--groups", "4"])
            #expect(result.exitCode == 64, "\(result.summary)")
            #expect(result.standardError.contains("--groups 4 must divide"), "\(result.summary)")
        }
    }
}
