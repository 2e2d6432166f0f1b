import Foundation
import NPY
import TestSupport
import Testing

extension InstnormCLI {
    /// dγ and dβ are summed exactly whatever the split: every output,
    /// the parameter gradients included, is the same bytes at every rank count.
    @Suite struct ReproducibleReduction {
        /// float64, where the Double sums reach the output unrounded. N = 13
        /// splits unevenly over every np; N = 3 leaves up to five ranks
        /// without samples; C = 300 makes the gathered sums larger than the
        /// tensors' per-rank share. float16 stores every output in half.
        static let cases: [(dimensions: [Int], dtype: NPYDType)] = [
            ([13, 3, 4, 5], .float64), ([3, 2, 7], .float64), ([5, 300, 6], .float32), ([13, 3, 4, 5], .float16),
        ]

        @Test(arguments: 0..<cases.count)
        func sameBytesAtEveryRankCount(_ index: Int) async throws {
            let (dimensions, dtype) = Self.cases[index]
            try await withTemporaryDirectory { folder in
                try writeInputs(dtype.elementType, dimensions, seed: 300 + UInt64(index), into: folder)
                for np in 1...8 {
                    try await Launcher.apply(ranks: np, ApplyInputs<Float>.trainingArguments(
                        inputs: folder, output: "\(folder)/np\(np)", eps: 1e-5, momentum: 0.1))
                }
                for name in MultiRank.trainingOutputs {
                    let expected = try #require(bytes("\(folder)/np1/\(name)"))
                    #expect(try NPYReader(path: "\(folder)/np1/\(name)").header.dtype == dtype, "\(name) is stored as the input")
                    for np in 2...8 {
                        #expect(bytes("\(folder)/np\(np)/\(name)") == expected, "\(name): np = \(np) differs from np = 1")
                    }
                }
            }
        }

        private func writeInputs<T: NPYElement>(_: T.Type, _ dimensions: [Int], seed: UInt64, into folder: String) throws {
            try ApplyInputs<T>(dimensions, seed: seed).write(into: folder)
        }
    }
}

extension InstnormCLI.ReproducibleReduction {
    /// The second half of the batch mirrors the first with dy negated, and
    /// dy is scaled by 2^-40 … 2^40 from sample to sample: every channel's
    /// per-instance sums span 80 binades and cancel in pairs, so the exact
    /// dγ and dβ are 0. They must come out as exactly 0.0, and every output
    /// the same bytes, at every rank count and in both layouts (float32).
    @Test(arguments: ["nchw", "nhwc"])
    func cancellingSumsOverManyBinadesGiveExactZero(_ layout: String) async throws {
        let half = 6, dimensions = [2 * half, 3, 5, 7]
        let perSample = dimensions.dropFirst().reduce(1, *)
        let random = ApplyInputs<Float>(dimensions, seed: 77)
        let x = Array(random.x[0..<half * perSample]) + random.x[0..<half * perSample]
        let scaledDy = (0..<half * perSample).map { random.dy[$0] * Float(sign: .plus, exponent: 16 * ($0 / perSample) - 40, significand: 1) }
        let dy = scaledDy + scaledDy.map { -$0 }
        try await withTemporaryDirectory { folder in
            try random.write(into: folder)
            // The same values read as (N, S…, C) for nhwc: C = 3 either way.
            let stored = layout == "nchw" ? dimensions : [2 * half, 5, 7, 3]
            try NPY.write(folder + "/x.npy", shape: stored, values: x)
            try NPY.write(folder + "/dy.npy", shape: stored, values: dy)
            for np in 1...8 {
                try await Launcher.apply(ranks: np, ApplyInputs<Float>.trainingArguments(
                    inputs: folder, output: "\(folder)/np\(np)", eps: 1e-5, momentum: 0.1) + ["--layout", layout])
            }
            for name in ["dgamma.npy", "dbeta.npy"] {
                let values = try readOutput("\(folder)/np1/\(name)", as: Float.self, shape: [3])
                #expect(values.allSatisfy { $0 == 0 && $0.sign == .plus }, "\(name): \(values)")
            }
            for name in InstnormCLI.MultiRank.trainingOutputs {
                let expected = try #require(bytes("\(folder)/np1/\(name)"))
                for np in 2...8 {
                    #expect(bytes("\(folder)/np\(np)/\(name)") == expected, "\(name): np = \(np) differs from np = 1")
                }
            }
        }
    }
    /// dβ in float32 is the exact sum rounded once to float, not through
    /// the nearest double: 1 + 2^-24 + 2^-60 lies past Float's tie at
    /// 1 + 2^-24 (which the double would keep, and Float round to 1), so dβ
    /// is 1 + 2^-23 at every rank count. x is constant per instance (x̂ = 0,
    /// dγ = 0), M = 1: each instance adds its dy to dβ.
    @Test func float32ParameterGradientsAreRoundedOnceFromTheExactSum() async throws {
        try await withTemporaryDirectory { folder in
            try NPY.write(folder + "/x.npy", shape: [3, 1, 1], values: [Float](repeating: 0, count: 3))
            try NPY.write(folder + "/dy.npy", shape: [3, 1, 1], values: [Float(1), 0x1p-24, 0x1p-60])
            try NPY.write(folder + "/beta.npy", shape: [1], values: [Float(0)])
            for np in [1, 2, 3] {
                try await Launcher.apply(ranks: np, [
                    "--input", folder + "/x.npy", "--grad", folder + "/dy.npy", "--bias", folder + "/beta.npy",
                    "--output", "\(folder)/np\(np)",
                ])
                let dbeta = try readOutput("\(folder)/np\(np)/dbeta.npy", as: Float.self, shape: [1])
                #expect(dbeta == [1 + 0x1p-23], "np \(np): \(dbeta.map { $0.debugDescription })")
            }
        }
    }
}
