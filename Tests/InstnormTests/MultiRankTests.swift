import Foundation
import NPY
import TestSupport
import Testing

/// Every test of this bundle launches mpirun, and the machine has 2 cores:
/// they run one at a time, nested in this suite (`.serialized` applies to
/// every suite and parameterized test inside it).
@Suite(.serialized) struct InstnormCLI {}

/// One training case: dtype and shape (N, C, S1, ...).
struct TrainingCase: Sendable, CustomTestStringConvertible {
    let dtype: NPYDType
    let dimensions: [Int]
    let seed: UInt64

    var testDescription: String { "\(dtype.name) \(dimensions)" }

    /// The Swift type of the dtype, to open into a generic check.
    var elementType: any NPYElement.Type { dtype.elementType }
}

extension NPYDType {
    var elementType: any NPYElement.Type {
        switch self {
        case .float16: Float16.self
        case .float32: Float.self
        case .float64: Double.self
        }
    }
}

/// N = 7 splits unevenly over 2, 3 and 4 ranks; N = 2 leaves ranks without
/// samples at np = 3, 4. One, two and three spatial dimensions.
let trainingCases = [
    TrainingCase(dtype: .float16, dimensions: [7, 3, 5, 4], seed: 100),
    TrainingCase(dtype: .float32, dimensions: [7, 3, 5, 4], seed: 101),
    TrainingCase(dtype: .float32, dimensions: [2, 3, 11], seed: 102),
    TrainingCase(dtype: .float64, dimensions: [7, 2, 3, 2, 3], seed: 103),
    TrainingCase(dtype: .float64, dimensions: [2, 2, 6, 5], seed: 104),
]

/// The tolerance of Tests/InstanceNormTests (`Reference.outputTolerance`):
/// 16 ulps of the compute precision (T, or Float for Float16, whichever is
/// wider), or one ulp of T where that is larger (half: the outputs' own rounding).
func tolerance<T: NPYElement>(_: T.Type) -> Double {
    Reference.outputTolerance(
        storageEpsilon: Double(T.ulpOfOne), computeEpsilon: min(Double(T.ulpOfOne), Double(Float.ulpOfOne)))
}

extension InstnormCLI {
    @Suite struct MultiRank {
        static let trainingOutputs = [
            "y.npy", "mean.npy", "invstd.npy", "dx.npy", "dgamma.npy", "dbeta.npy", "running_mean.npy", "running_var.npy",
        ]
        /// Outputs each rank computes from its own samples alone (y, dx, the
        /// statistics), or from all statistics gathered in sample order (the
        /// running statistics): the same bits at every np.
        static let exactOutputs = ["y.npy", "dx.npy", "mean.npy", "invstd.npy", "running_mean.npy", "running_var.npy"]

        /// Affine training with backward and running statistics at np = 1…4:
        /// every np gives the single process's bytes, and np = 1 matches the reference.
        @Test(arguments: trainingCases)
        func trainingAtEveryRankCount(_ testCase: TrainingCase) async throws {
            try await checkTraining(testCase.elementType, testCase)
        }

        func checkTraining<T: NPYElement>(_: T.Type, _ testCase: TrainingCase) async throws {
            try await withTemporaryDirectory { folder in
                let inputs = ApplyInputs<T>(testCase.dimensions, seed: testCase.seed)
                try inputs.write(into: folder)
                // Not the defaults, so a flag the tool ignored shows in the comparison.
                let eps = 1e-3, momentum = 0.25
                let ranks = 1...4
                for np in ranks {
                    try await Launcher.apply(ranks: np, ApplyInputs<T>.trainingArguments(
                        inputs: folder, output: "\(folder)/np\(np)", eps: eps, momentum: momentum))
                }
                for np in ranks {
                    #expect(DirectorySnapshot("\(folder)/np\(np)")?.names == Self.trainingOutputs.sorted(), "np = \(np)")
                }
                let single = "\(folder)/np1"
                for np in ranks.dropFirst() {
                    for name in Self.exactOutputs {
                        let expected = try #require(bytes("\(single)/\(name)"))
                        #expect(bytes("\(folder)/np\(np)/\(name)") == expected, "\(name) at np = \(np) differs from np = 1")
                    }
                }
                let reference = ReferenceRun(inputs, eps: eps, momentum: momentum)
                let channels = [inputs.channels]
                let dgamma1 = try readOutput("\(single)/dgamma.npy", as: T.self, shape: channels)
                let dbeta1 = try readOutput("\(single)/dbeta.npy", as: T.self, shape: channels)
                for np in ranks.dropFirst() {
                    let dgamma = try readOutput("\(folder)/np\(np)/dgamma.npy", as: T.self, shape: channels)
                    let dbeta = try readOutput("\(folder)/np\(np)/dbeta.npy", as: T.self, shape: channels)
                    for c in 0..<inputs.channels {
                        let dgammaBound = reorderBound(dgamma1[c], termSum: reference.dgammaTermSum[c], batch: inputs.batch)
                        let dbetaBound = reorderBound(dbeta1[c], termSum: reference.dbetaTermSum[c], batch: inputs.batch)
                        #expect(abs(Double(dgamma[c]) - Double(dgamma1[c])) <= dgammaBound,
                                "dgamma[\(c)] np = \(np): \(dgamma[c]) vs \(dgamma1[c])")
                        #expect(abs(Double(dbeta[c]) - Double(dbeta1[c])) <= dbetaBound,
                                "dbeta[\(c)] np = \(np): \(dbeta[c]) vs \(dbeta1[c])")
                    }
                }
                try reference.check(outputs: single, as: T.self, dimensions: inputs.dimensions)
            }
        }

        /// How far dγ or dβ at np > 1 may be from np = 1.
        ///
        /// Each is a sum of N·M terms in Double: every rank sums its own
        /// instances in the single process's order, then MPI_Allreduce adds the
        /// ranks' partial sums in an order of its own. Reassociating a sum of
        /// at most N instance sums moves it by at most (N − 1)·ε_Double·Σ|terms|;
        /// the cast to T then rounds each side once, which can land them on
        /// neighbouring values: 2 ulps of T at the value covers that with room.
        /// For Float the Double part is ~1e-9 of an ulp; for Double it matters
        /// only when the sum cancels (|sum| ≪ Σ|terms|).
        func reorderBound<T: NPYElement>(_ value: T, termSum: Double, batch: Int) -> Double {
            2 * Double(value.magnitude.ulp) + 2 * Double(batch) * Double.ulpOfOne * termSum
        }

        /// Evaluation mode normalizes with the running statistics and writes y only.
        @Test(arguments: [
            TrainingCase(dtype: .float32, dimensions: [7, 2, 9], seed: 201),  // np = 2
            TrainingCase(dtype: .float64, dimensions: [2, 3, 4, 3], seed: 202),  // np = 3: one rank idle
            TrainingCase(dtype: .float16, dimensions: [5, 3, 8], seed: 203),  // np = 2
        ])
        func evalMatchesReference(_ testCase: TrainingCase) async throws {
            try await checkEval(testCase.elementType, testCase, ranks: testCase.dimensions[0] == 2 ? 3 : 2)
        }

        func checkEval<T: NPYElement>(_: T.Type, _ testCase: TrainingCase, ranks: Int) async throws {
            try await withTemporaryDirectory { folder in
                let inputs = ApplyInputs<T>(testCase.dimensions, seed: testCase.seed)
                try inputs.write(into: folder)
                let before = try #require(DirectorySnapshot(folder))
                let eps = 1e-3
                try await Launcher.apply(ranks: ranks, [
                    "--input", folder + "/x.npy", "--weight", folder + "/gamma.npy", "--bias", folder + "/beta.npy",
                    "--running-mean", folder + "/rm.npy", "--running-var", folder + "/rv.npy",
                    "--eval", "--eps", String(eps), "--output", folder + "/out",
                ])
                #expect(DirectorySnapshot(folder + "/out")?.names == ["y.npy"])
                // The running statistics are read, never written, in evaluation mode.
                #expect(DirectorySnapshot(folder)?.entries.filter { $0.key != "out" } == before.entries)
                let wide = inputs.wide
                let expected = Reference.forwardInference(
                    x: wide.x, batch: inputs.batch, channels: inputs.channels, spatialCount: inputs.spatialCount,
                    runningMean: wide.runningMean, runningVar: wide.runningVar,
                    gamma: wide.gamma, beta: wide.beta, eps: eps)
                let y = try readOutput(folder + "/out/y.npy", as: T.self, shape: inputs.dimensions)
                let error = maxScaledError(y, expected, scale: magnitude(expected, minimum: 1))
                #expect(error <= tolerance(T.self), "eval y error \(error)")
            }
        }

        /// Neither --grad nor --weight: y, mean and invstd only, with the default ε.
        @Test func forwardOnlyWritesThreeFiles() async throws {
            try await withTemporaryDirectory { folder in
                let inputs = ApplyInputs<Float>([5, 4, 6], seed: 301)
                try inputs.write(into: folder)
                try await Launcher.apply(ranks: 3, ["--input", folder + "/x.npy", "--output", folder + "/out"])
                #expect(DirectorySnapshot(folder + "/out")?.names == ["invstd.npy", "mean.npy", "y.npy"])
                #expect(!FileManager.default.fileExists(atPath: folder + "/out/dx.npy"))
                let wide = inputs.wide
                let expected = Reference.forward(
                    x: wide.x, batch: inputs.batch, channels: inputs.channels, spatialCount: inputs.spatialCount,
                    eps: 1e-5)  // the documented default
                let y = try readOutput(folder + "/out/y.npy", as: Float.self, shape: inputs.dimensions)
                let mean = try readOutput(folder + "/out/mean.npy", as: Float.self, shape: [5, 4])
                let invstd = try readOutput(folder + "/out/invstd.npy", as: Float.self, shape: [5, 4])
                #expect(maxScaledError(y, expected.y, scale: magnitude(expected.y, minimum: 1)) <= tolerance(Float.self))
                #expect(maxScaledError(mean, expected.mean, scale: magnitude(wide.x, minimum: 1)) <= tolerance(Float.self))
                #expect(maxScaledError(invstd, expected.invstd, scale: 0) <= tolerance(Float.self))
            }
        }
    }
}

/// The Double reference for one training run, and the sums of |terms| of dγ
/// and dβ that scale their errors.
struct ReferenceRun {
    let forward: Reference.Forward
    let backward: Reference.Backward
    let running: (mean: [Double], variance: [Double])
    /// Σ_{n,m} |dy·x̂| and Σ_{n,m} |dy| per channel.
    let dgammaTermSum: [Double]
    let dbetaTermSum: [Double]
    let dataMagnitude: Double

    init<T: NPYElement>(_ inputs: ApplyInputs<T>, eps: Double, momentum: Double) {
        let wide = inputs.wide
        let (batch, channels, spatialCount) = (inputs.batch, inputs.channels, inputs.spatialCount)
        forward = Reference.forward(
            x: wide.x, batch: batch, channels: channels, spatialCount: spatialCount,
            gamma: wide.gamma, beta: wide.beta, eps: eps)
        backward = Reference.backward(
            dy: wide.dy, x: wide.x, batch: batch, channels: channels, spatialCount: spatialCount,
            gamma: wide.gamma, eps: eps)
        running = Reference.runningUpdate(
            runningMean: wide.runningMean, runningVar: wide.runningVar,
            x: wide.x, batch: batch, channels: channels, spatialCount: spatialCount, momentum: momentum)
        var dgammaTermSum = [Double](repeating: 0, count: channels)
        var dbetaTermSum = [Double](repeating: 0, count: channels)
        for index in wide.x.indices {
            let instance = index / spatialCount, channel = instance % channels
            let xHat = (wide.x[index] - forward.mean[instance]) * forward.invstd[instance]
            dgammaTermSum[channel] += abs(wide.dy[index] * xHat)
            dbetaTermSum[channel] += abs(wide.dy[index])
        }
        self.dgammaTermSum = dgammaTermSum
        self.dbetaTermSum = dbetaTermSum
        dataMagnitude = magnitude(wide.x, minimum: 1)
    }

    /// Every training output in `folder` against the reference, within 16 ulps of T.
    func check<T: NPYElement>(outputs folder: String, as _: T.Type, dimensions: [Int]) throws {
        let (batch, channels) = (dimensions[0], dimensions[1])
        let limit = tolerance(T.self)
        func read(_ name: String, _ shape: [Int]) throws -> [T] {
            try readOutput(folder + "/" + name, as: T.self, shape: shape)
        }
        let errors: [(String, Double)] = [
            ("y", maxScaledError(try read("y.npy", dimensions), forward.y, scale: magnitude(forward.y, minimum: 1))),
            ("mean", maxScaledError(try read("mean.npy", [batch, channels]), forward.mean, scale: dataMagnitude)),
            ("invstd", maxScaledError(try read("invstd.npy", [batch, channels]), forward.invstd, scale: 0)),
            ("dx", maxScaledError(try read("dx.npy", dimensions), backward.dx, scale: magnitude(backward.dx, minimum: 1e-3))),
            ("dgamma", parameterError(try read("dgamma.npy", [channels]), backward.dgamma, dgammaTermSum)),
            ("dbeta", parameterError(try read("dbeta.npy", [channels]), backward.dbeta, dbetaTermSum)),
            ("running_mean", maxScaledError(try read("running_mean.npy", [channels]), running.mean,
                                            scale: magnitude(running.mean, minimum: 1))),
            ("running_var", maxScaledError(try read("running_var.npy", [channels]), running.variance,
                                           scale: magnitude(running.variance, minimum: 1))),
        ]
        for (name, error) in errors {
            #expect(error <= limit, "\(T.self) \(dimensions) \(name): scaled error \(error) > \(limit)")
        }
    }

    /// max over channels of |actual − expected| / (|expected| + Σ|terms|).
    private func parameterError<T: NPYElement>(_ actual: [T], _ expected: [Double], _ termSums: [Double]) -> Double {
        zip(actual, zip(expected, termSums)).map { value, pair in
            let error = abs(Double(value) - pair.0) / (abs(pair.0) + pair.1)
            return error.isNaN ? .infinity : error
        }.max() ?? .infinity
    }
}
