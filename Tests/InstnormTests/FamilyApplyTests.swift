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
        ]

        @Test(arguments: 0..<cases.count)
        func sameBytesAtEveryRankCount(_ index: Int) async throws {
            let (flags, dimensions, parameters, statistics) = Self.cases[index]
            try await withTemporaryDirectory { folder in
                var generator = SeededGenerator(seed: 900 + UInt64(index))
                let count = dimensions.reduce(1, *), parameterCount = parameters.reduce(1, *)
                try NPY.write(folder + "/x.npy", shape: dimensions, values: generator.normals(count, mean: 1, deviation: 2).map { Float($0) })
                try NPY.write(folder + "/dy.npy", shape: dimensions, values: generator.normals(count).map { Float($0) })
                try NPY.write(folder + "/g.npy", shape: parameters, values: generator.normals(parameterCount, mean: 1).map { Float($0) })
                try NPY.write(folder + "/b.npy", shape: parameters, values: generator.normals(parameterCount).map { Float($0) })
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

        /// Each refused at one and two ranks, with exit 64 and a message naming the flag.
        static let refusals: [(flags: [String], dimensions: [Int], keyword: String)] = [
            (["--norm", "group", "--groups", "3"], [2, 4, 5], "--groups 3"),
            (["--norm", "group"], [2, 4, 5], "--groups"),
            (["--groups", "2"], [2, 4, 5], "--norm group"),
            (["--norm", "layer", "--normalized-dims", "3"], [2, 4, 5], "--normalized-dims 3"),
            (["--norm", "layer", "--normalized-dims", "2", "--layout", "nhwc"], [2, 4, 5], "--layout nhwc"),
            (["--norm", "instance", "--normalized-dims", "1"], [2, 4, 5], "--normalized-dims"),
            (["--norm", "group", "--groups", "2", "--running-mean", "rm.npy", "--running-var", "rv.npy"], [2, 4, 5], "running"),
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
