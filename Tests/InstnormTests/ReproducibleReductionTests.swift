import Foundation
import NPY
import TestSupport
import Testing

extension InstnormCLI {
    /// dγ and dβ are summed in sample order whatever the split: every output,
    /// the parameter gradients included, is the same bytes at every rank count.
    @Suite struct ReproducibleReduction {
        /// float64, where the Double sums reach the output unrounded. N = 13
        /// splits unevenly over every np; N = 3 leaves up to five ranks
        /// without samples; C = 300 makes the gathered sums larger than the
        /// tensors' per-rank share.
        static let cases: [(dimensions: [Int], float64: Bool)] = [
            ([13, 3, 4, 5], true), ([3, 2, 7], true), ([5, 300, 6], false),
        ]

        @Test(arguments: 0..<cases.count)
        func sameBytesAtEveryRankCount(_ index: Int) async throws {
            let (dimensions, float64) = Self.cases[index]
            try await withTemporaryDirectory { folder in
                if float64 {
                    try ApplyInputs<Double>(dimensions, seed: 300 + UInt64(index)).write(into: folder)
                } else {
                    try ApplyInputs<Float>(dimensions, seed: 300 + UInt64(index)).write(into: folder)
                }
                for np in 1...8 {
                    try await Launcher.apply(ranks: np, ApplyInputs<Float>.trainingArguments(
                        inputs: folder, output: "\(folder)/np\(np)", eps: 1e-5, momentum: 0.1))
                }
                for name in MultiRank.trainingOutputs {
                    let expected = try #require(bytes("\(folder)/np1/\(name)"))
                    for np in 2...8 {
                        #expect(bytes("\(folder)/np\(np)/\(name)") == expected, "\(name): np = \(np) differs from np = 1")
                    }
                }
            }
        }
    }
}
