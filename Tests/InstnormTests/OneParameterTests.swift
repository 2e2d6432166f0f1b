import Foundation
import NPY
import TestSupport
import Testing

extension InstnormCLI {
    /// γ without β (PyTorch's `bias=False`) and β without γ: an absent
    /// parameter is its default, so each run must give the bytes of the same
    /// run with that default written out as a file (β = 0, γ = 1), and
    /// write only the gradient of the parameter it was given.
    @Suite struct OneParameter {
        /// (flags, x's shape, γ's shape): every norm, channels last, and
        /// instances of four values (the blocked kernels).
        static let cases: [(flags: [String], dimensions: [Int], parameters: [Int])] = [
            ([], [5, 3, 7], [3]),
            (["--layout", "nhwc"], [5, 7, 3], [3]),
            ([], [5, 6, 2, 2], [6]),
            (["--norm", "group", "--groups", "2"], [5, 4, 6], [4]),
            (["--norm", "layer", "--normalized-dims", "1"], [5, 3, 16], [16]),
            (["--norm", "batch"], [5, 3, 7], [3]),
        ]

        @Test(arguments: 0..<cases.count)
        func absentParameterIsItsDefault(_ index: Int) async throws {
            let (flags, dimensions, parameters) = Self.cases[index]
            try await withTemporaryDirectory { folder in
                try writeNormInputs(into: folder, dimensions: dimensions, parameters: parameters, seed: 990 + UInt64(index))
                let parameterCount = parameters.reduce(1, *)
                try NPY.write(folder + "/ones.npy", shape: parameters, values: [Float](repeating: 1, count: parameterCount))
                try NPY.write(folder + "/zeros.npy", shape: parameters, values: [Float](repeating: 0, count: parameterCount))
                func apply(_ name: String, _ parameterFlags: [String]) async throws -> String {
                    let output = "\(folder)/\(name)"
                    try await Launcher.apply(ranks: 2, [
                        "--input", folder + "/x.npy", "--grad", folder + "/dy.npy", "--output", output,
                    ] + parameterFlags.map { $0.hasSuffix(".npy") ? "\(folder)/\($0)" : $0 } + flags)
                    return output
                }
                let weightOnly = try await apply("weight", ["--weight", "g.npy"])
                let zeroBias = try await apply("weight-zero-bias", ["--weight", "g.npy", "--bias", "zeros.npy"])
                let biasOnly = try await apply("bias", ["--bias", "b.npy"])
                let unitWeight = try await apply("unit-weight-bias", ["--weight", "ones.npy", "--bias", "b.npy"])
                let common = ["y.npy", "dx.npy", "mean.npy", "invstd.npy"]
                #expect(DirectorySnapshot(weightOnly)?.names == (common + ["dgamma.npy"]).sorted())
                #expect(DirectorySnapshot(biasOnly)?.names == (common + ["dbeta.npy"]).sorted())
                for name in common + ["dgamma.npy"] {
                    let expected = try #require(bytes("\(zeroBias)/\(name)"), "\(name)")
                    #expect(bytes("\(weightOnly)/\(name)") == expected, "\(name): --weight alone differs from β = 0 written out")
                }
                for name in common + ["dbeta.npy"] {
                    let expected = try #require(bytes("\(unitWeight)/\(name)"), "\(name)")
                    #expect(bytes("\(biasOnly)/\(name)") == expected, "\(name): --bias alone differs from γ = 1 written out")
                }
            }
        }
    }
}
