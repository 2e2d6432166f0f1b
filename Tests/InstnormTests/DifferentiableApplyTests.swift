import _Differentiation
import DataParallel
import DifferentiableDataParallel
import InstanceNorm
import MPITestSupport
import NPY
import TestSupport
import Testing

extension InstnormCLI {
    /// `instanceNorm` under `valueWithPullback` in this process (one rank)
    /// against `instnorm apply` under mpirun at np = 1, 2, 3, on the same
    /// .npy inputs: y, dx, dγ, dβ must be the same bits.
    ///
    /// Bitwise, not within a tolerance: both run the same kernels on the
    /// same values (`DataParallelInstanceNorm.forward`, `.backward`), whose
    /// results do not depend on the thread count, and dγ, dβ are exact sums
    /// rounded once at every rank count (the default `.reproducible`
    /// reduction of both). A difference means the Swift face changed
    /// something on the way: a lost or doubled rank share, a stale buffer,
    /// another reduction, a rounding.
    @Suite struct SameAsApply {
        /// N = 7 splits unevenly over 2 and 3 ranks.
        @Test(arguments: [NPYDType.float32, .float64])
        func differentiableInstanceNormGivesApplysBits(dtype: NPYDType) async throws {
            switch dtype {
            case .float32: try await check(Float.self, seed: 700)
            case .float64: try await check(Double.self, seed: 701)
            case .float16: Issue.record("not a case here")
            }
        }

        private func check<T: NPYElement & DataParallelScalar>(_: T.Type, seed: UInt64) async throws {
            let dimensions = [7, 3, 5, 4], eps = 1e-5
            let inputs = ApplyInputs<T>(dimensions, seed: seed)
            let (y, (dx, dgamma, dbeta)) = try SingletonMPI.withWorld { world in
                let layer = DataParallelInstanceNorm<T>(
                    communicator: world, globalShape: try InstanceNormShape(dimensions: dimensions), eps: eps)
                let gamma = Tensor(shape: [inputs.channels], scalars: inputs.gamma)
                let beta = Tensor(shape: [inputs.channels], scalars: inputs.beta)
                let (y, pullback) = valueWithPullback(at: Tensor(shape: dimensions, scalars: inputs.x), gamma, beta) {
                    instanceNorm($0, gamma: $1, beta: $2, layer: layer)
                }
                return (y, pullback(Tensor(shape: dimensions, scalars: inputs.dy)))
            }
            try await withTemporaryDirectory { folder in
                try inputs.write(into: folder)
                for np in 1...3 {
                    let output = "\(folder)/np\(np)"
                    try await Launcher.apply(ranks: np, [
                        "--input", folder + "/x.npy", "--grad", folder + "/dy.npy", "--weight", folder + "/gamma.npy",
                        "--bias", folder + "/beta.npy", "--eps", String(eps), "--output", output,
                    ])
                    let expectations: [(String, Tensor<T>)] = [("y", y), ("dx", dx), ("dgamma", dgamma), ("dbeta", dbeta)]
                    for (name, computed) in expectations {
                        let applied = try readOutput("\(output)/\(name).npy", as: T.self, shape: computed.shape)
                        // Widening is exact, so equal bit patterns of the widened values are equal bits.
                        #expect(applied.map(\.widened.bitPattern) == computed.scalars.map(\.widened.bitPattern),
                                "\(name) at np = \(np)")
                    }
                }
            }
        }

        /// `normalize` for GroupNorm, LayerNorm over two dimensions (γ of
        /// shape (5, 4)) and the synchronized BatchNorm, one rank in this
        /// process, against `instnorm apply --norm …` at np = 1, 2, 3: the
        /// same bits. BatchNorm's forward and dx cross ranks, so this is
        /// also its Swift face checked against the tool's at every split.
        @Test(arguments: [["--norm", "group", "--groups", "3"], ["--norm", "layer", "--normalized-dims", "2"],
                          ["--norm", "batch"]])
        func differentiableNormGivesApplysBits(norm: [String]) async throws {
            let dimensions = [7, 6, 5, 4], eps = 1e-5
            let normalization: Normalization = switch norm[1] {
            case "group": .group(groups: 3)
            case "layer": .layer(normalizedDimensions: 2)
            default: .batch
            }
            let shape = try NormShape(normalization, dimensions: dimensions)
            let inputs = ApplyInputs<Float>(dimensions, seed: 702)
            var generator = SeededGenerator(seed: 703)
            let gamma = Tensor(shape: shape.parameterDimensions, scalars: generator.normals(
                shape.parameterCount, mean: 1, deviation: 0.5).map { Float($0) })
            let beta = Tensor(shape: shape.parameterDimensions, scalars: generator.normals(shape.parameterCount).map { Float($0) })
            let (y, (dx, dgamma, dbeta)) = try SingletonMPI.withWorld { world in
                let layer = DataParallelNorm<Float>(communicator: world, globalShape: shape, eps: eps)
                let (y, pullback) = valueWithPullback(at: Tensor(shape: dimensions, scalars: inputs.x), gamma, beta) {
                    normalize($0, gamma: $1, beta: $2, layer: layer)
                }
                return (y, pullback(Tensor(shape: dimensions, scalars: inputs.dy)))
            }
            try await withTemporaryDirectory { folder in
                try inputs.write(into: folder)
                try NPY.write(folder + "/gamma.npy", shape: gamma.shape, values: gamma.scalars)
                try NPY.write(folder + "/beta.npy", shape: beta.shape, values: beta.scalars)
                for np in 1...3 {
                    let output = "\(folder)/np\(np)"
                    try await Launcher.apply(ranks: np, norm + [
                        "--input", folder + "/x.npy", "--grad", folder + "/dy.npy", "--weight", folder + "/gamma.npy",
                        "--bias", folder + "/beta.npy", "--eps", String(eps), "--output", output,
                    ])
                    let expectations: [(String, Tensor<Float>)] = [("y", y), ("dx", dx), ("dgamma", dgamma), ("dbeta", dbeta)]
                    for (name, computed) in expectations {
                        let applied = try readOutput("\(output)/\(name).npy", as: Float.self, shape: computed.shape)
                        #expect(applied.map(\.bitPattern) == computed.scalars.map(\.bitPattern), "\(norm[1]) \(name) at np = \(np)")
                    }
                }
            }
        }

        /// A training step that updates the running statistics, then
        /// evaluation with them, in this process, against `instnorm apply`
        /// with `--running-mean`/`--running-var` and then `--eval` at
        /// np = 1, 2, 3: the same bits, for InstanceNorm and BatchNorm.
        @Test(arguments: [["--norm", "instance"], ["--norm", "batch"]])
        func runningStatisticsGiveApplysBits(norm: [String]) async throws {
            let dimensions = [7, 3, 5, 4], eps = 1e-5, momentum = 0.25
            let shape = try NormShape(norm[1] == "batch" ? .batch : .instance, dimensions: dimensions)
            let inputs = ApplyInputs<Float>(dimensions, seed: 704)
            let channels = inputs.channels
            let x = Tensor(shape: dimensions, scalars: inputs.x)
            let (gamma, beta) = (Tensor(shape: [channels], scalars: inputs.gamma), Tensor(shape: [channels], scalars: inputs.beta))
            let (trained, evaluated) = try SingletonMPI.withWorld { world in
                let layer = DataParallelNorm<Float>(communicator: world, globalShape: shape, eps: eps)
                let running = RunningMeanAndVariance(
                    mean: Tensor(shape: [channels], scalars: inputs.runningMean),
                    variance: Tensor(shape: [channels], scalars: inputs.runningVar), momentum: momentum)
                _ = normalize(x, gamma: gamma, beta: beta, layer: layer, updating: running)
                let trained = (running.mean, running.variance)
                let start = RunningMeanAndVariance(
                    mean: Tensor(shape: [channels], scalars: inputs.runningMean),
                    variance: Tensor(shape: [channels], scalars: inputs.runningVar))
                return (trained, normalizeForInference(x, gamma: gamma, beta: beta, layer: layer, statistics: start))
            }
            try await withTemporaryDirectory { folder in
                try inputs.write(into: folder)
                for np in 1...3 {
                    let output = "\(folder)/np\(np)", evalOutput = "\(folder)/eval\(np)"
                    try await Launcher.apply(
                        ranks: np, norm + ApplyInputs<Float>.trainingArguments(inputs: folder, output: output, eps: eps, momentum: momentum))
                    try await Launcher.apply(ranks: np, norm + [
                        "--input", folder + "/x.npy", "--weight", folder + "/gamma.npy", "--bias", folder + "/beta.npy",
                        "--running-mean", folder + "/rm.npy", "--running-var", folder + "/rv.npy", "--eps", String(eps),
                        "--eval", "--output", evalOutput,
                    ])
                    let expectations: [(String, Tensor<Float>)] = [
                        ("\(output)/running_mean.npy", trained.0), ("\(output)/running_var.npy", trained.1),
                        ("\(evalOutput)/y.npy", evaluated),
                    ]
                    for (path, computed) in expectations {
                        let applied = try readOutput(path, as: Float.self, shape: computed.shape)
                        #expect(applied.map(\.bitPattern) == computed.scalars.map(\.bitPattern), "\(path)")
                    }
                }
            }
        }
    }
}
