import Foundation
import NPY
import TestSupport
import Testing

extension InstnormCLI {
    /// `apply --layout nhwc` reads (N, S…, C) files and writes y, dx in that
    /// layout with exactly the values the channels-first run gives on the
    /// transposed data, at every rank count.
    @Suite struct ChannelsLastApply {
        static let cases: [(dimensions: [Int], dtype: NPYDType)] = [
            ([5, 3, 4, 6], .float32), ([3, 7, 5], .float64), ([4, 2, 3, 2, 5], .float32), ([2, 17, 33], .float32),
            ([5, 3, 4, 6], .float16),
        ]

        @Test(arguments: 0..<cases.count)
        func transposedResultsAtEveryRankCount(_ index: Int) async throws {
            let (dimensions, dtype) = Self.cases[index]
            try await check(dtype.elementType, dimensions, seed: 500 + UInt64(index))
        }

        private func check<T: NPYElement>(_: T.Type, _ dimensions: [Int], seed: UInt64) async throws {
            try await check(ApplyInputs<T>(dimensions, seed: seed))
        }

        private func check<T: NPYElement & BinaryFloatingPoint>(_ inputs: ApplyInputs<T>) async throws {
            let batch = inputs.batch, channels = inputs.channels, spatialCount = inputs.spatialCount
            let lastDimensions = [batch] + inputs.dimensions.dropFirst(2) + [channels]
            func toLast(_ values: [T]) -> [T] {
                channelsLast(values, channels: channels, positions: spatialCount)
            }
            try await withTemporaryDirectory { folder in
                try FileManager.default.createDirectory(atPath: folder + "/last", withIntermediateDirectories: false)
                try inputs.write(into: folder)
                try inputs.write(into: folder + "/last")
                try NPY.write(folder + "/last/x.npy", shape: lastDimensions, values: toLast(inputs.x))
                try NPY.write(folder + "/last/dy.npy", shape: lastDimensions, values: toLast(inputs.dy))
                try await Launcher.apply(ranks: 1, ApplyInputs<T>.trainingArguments(
                    inputs: folder, output: folder + "/first1", eps: 1e-5, momentum: 0.1))
                for np in [1, 2, 3] {
                    try await Launcher.apply(ranks: np, ApplyInputs<T>.trainingArguments(
                        inputs: folder + "/last", output: "\(folder)/last\(np)", eps: 1e-5, momentum: 0.1)
                        + ["--layout", "nhwc"])
                }
                for name in ["y.npy", "dx.npy"] {
                    let first = try readOutput("\(folder)/first1/\(name)", as: T.self, shape: inputs.dimensions)
                    let last = try readOutput("\(folder)/last1/\(name)", as: T.self, shape: lastDimensions)
                    #expect(bitPatterns(last) == bitPatterns(toLast(first)),
                            "\(name): channels last is not the transposed channels-first result")
                }
                for name in MultiRank.trainingOutputs where !["y.npy", "dx.npy"].contains(name) {
                    #expect(bytes("\(folder)/last1/\(name)") == bytes("\(folder)/first1/\(name)"),
                            "\(name) differs between the layouts")
                }
                for name in MultiRank.trainingOutputs {
                    let single = try #require(bytes("\(folder)/last1/\(name)"))
                    for np in [2, 3] {
                        #expect(bytes("\(folder)/last\(np)/\(name)") == single, "\(name): np = \(np) differs from np = 1")
                    }
                }
            }
        }

        /// --check-finite names the instance of a NaN in channels-last data
        /// by its sample, channel and position, as the channels-first run does.
        @Test func checkFiniteNamesSampleAndChannel() async throws {
            try await withTemporaryDirectory { folder in
                let (batch, positions, channels) = (4, 5, 3)
                var x = ApplyInputs<Float>([batch, channels, positions], seed: 41).x
                x[(2 * positions + 3) * channels + 1] = .nan  // sample 2, position 3, channel 1
                try NPY.write(folder + "/x.npy", shape: [batch, positions, channels], values: x)
                let result = try await Launcher.instnorm(
                    ranks: 2, ["apply", "--input", folder + "/x.npy", "--output", folder + "/out",
                               "--layout", "nhwc", "--check-finite"])
                #expect(result.exitCode == 65, "\(result.summary)")
                #expect(result.standardError.contains("sample 2, channel 1 (element 3 of that instance)"), "\(result.summary)")
                #expect(!FileManager.default.fileExists(atPath: folder + "/out"))
            }
        }

        @Test func refusesAnInputWithoutSpatialDimension() async throws {
            try await withTemporaryDirectory { folder in
                try NPY.write(folder + "/x.npy", shape: [4, 3], values: [Float](repeating: 1, count: 12))
                let result = try await Launcher.instnorm(
                    ranks: 2, ["apply", "--input", folder + "/x.npy", "--output", folder + "/out", "--layout", "nhwc"])
                #expect(result.exitCode == 65, "\(result.summary)")
                #expect(result.standardError.contains("(N, S1, ..., C)"), "\(result.summary)")
                #expect(!FileManager.default.fileExists(atPath: folder + "/out"))
            }
        }

        @Test func refusesAnUnknownLayout() async throws {
            let result = try await Launcher.instnorm(
                ranks: 1, ["apply", "--input", "x.npy", "--output", "out", "--layout", "nwhc"])
            #expect(result.exitCode == 64, "\(result.summary)")
            #expect(result.standardError.contains("--layout"), "\(result.summary)")
        }
    }

    /// `--reduction allreduce` sums dγ, dβ per rank, then over ranks, and
    /// `gather` in sample order: with one rank (the same order of additions)
    /// the same bits; split over ranks, and the exact sums of
    /// `reproducible`, the same values up to rounding.
    @Suite struct AllreduceReduction {
        @Test func closeToTheReproducibleSum() async throws {
            try await withTemporaryDirectory { folder in
                let inputs = ApplyInputs<Double>([13, 5, 4, 6], seed: 77)
                try inputs.write(into: folder)
                let arguments = { (output: String) in
                    ApplyInputs<Double>.trainingArguments(inputs: folder, output: folder + output, eps: 1e-5, momentum: 0.1)
                }
                try await Launcher.apply(ranks: 3, arguments("/reproducible"))
                try await Launcher.apply(ranks: 1, arguments("/gather") + ["--reduction", "gather"])
                try await Launcher.apply(ranks: 1, arguments("/allreduce1") + ["--reduction", "allreduce"])
                try await Launcher.apply(ranks: 3, arguments("/allreduce3") + ["--reduction", "allreduce"])
                for name in ["dgamma.npy", "dbeta.npy"] {
                    #expect(bytes(folder + "/allreduce1/" + name) == bytes(folder + "/gather/" + name))
                    let expected = try readOutput(folder + "/gather/" + name, as: Double.self, shape: [5])
                    for other in ["/allreduce3/", "/reproducible/"] {
                        let values = try readOutput(folder + other + name, as: Double.self, shape: [5])
                        let scale = expected.map(abs).max()! + 1
                        for (value, reference) in zip(values, expected) {
                            #expect(abs(value - reference) <= 1e-13 * scale, "\(other)\(name): \(value) vs \(reference)")
                        }
                    }
                }
            }
        }
    }
}


