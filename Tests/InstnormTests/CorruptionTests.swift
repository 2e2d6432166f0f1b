import Foundation
import NPY
import TestSupport
import Testing

extension InstnormCLI {
    /// The checks bite: results made wrong on purpose (`INSTNORM_FAILPOINT`
    /// `corrupt-*`) must fail them. The corrupted value is the largest of
    /// the last rank's part; `skew` moves it 64 ulps of its storage type.
    @Suite struct Corruption {
        /// 6 samples: 2 on each of 3 ranks, so rank 2 holds samples 4 and 5.
        static let benchShape = "6,3,8,9"
        static let dtypes = ["float16", "float32", "float64"]
        static let failpoints = ["corrupt-y", "corrupt-dx", "corrupt-dgamma", "corrupt-dbeta"].flatMap { point in
            ["nan", "skew"].map { "\(point)@2:\($0)" }
        }

        /// bench --verify at P = 3, with `failpoint` armed if given.
        static func verify(dtype: String, failpoint: String?) async throws -> ProcessResult {
            try await Launcher.instnorm(
                ranks: 3,
                ["bench", "--shape", benchShape, "--dtype", dtype, "--iterations", "1", "--warmup", "0", "--verify"],
                extraEnvironment: failpoint.map { ["INSTNORM_FAILPOINT": $0] } ?? [:])
        }

        /// Without a failpoint the same run verifies: the failures below are the corruption's.
        @Test(arguments: dtypes)
        func uncorruptedRunVerifies(dtype: String) async throws {
            let result = try await Self.verify(dtype: dtype, failpoint: nil)
            #expect(!result.timedOut && result.exitCode == 0, "\(result.summary)")
            #expect(result.standardOutput.contains("# verify: passed"), "\(result.summary)")
            let ratios = try #require(verificationRatios(result.standardOutput), "\(result.summary)")
            #expect(ratios.values.allSatisfy { $0 <= 1 }, "\(ratios)")
        }

        /// Each point and action at P = 3 on rank 2: exit 1, the corrupted
        /// output (and only it) over its bound, and the skew really 64 ulps.
        @Test(arguments: dtypes, failpoints)
        func corruptedResultFailsVerification(dtype: String, failpoint: String) async throws {
            let result = try await Self.verify(dtype: dtype, failpoint: failpoint)
            #expect(!result.timedOut && result.exitCode == 1, "\(result.summary)")
            #expect(result.standardOutput.contains("# verify: FAILED"), "\(result.summary)")
            #expect(result.standardError.contains("instnorm: error: verification failed"), "\(result.summary)")
            let point = String(failpoint.prefix { $0 != "@" })
            let output = String(point.dropFirst("corrupt-".count))
            let injection = try #require(Injection(result.standardError, rank: 2, point: point), "\(result.summary)")
            if failpoint.hasSuffix(":skew") {
                #expect(ulpDistance(injection.before, injection.after, dtype: dtype) == 64, "\(injection)")
            } else {
                #expect(injection.after.isNaN, "\(injection)")
            }
            let ratios = try #require(verificationRatios(result.standardOutput), "\(result.summary)")
            #expect(ratios[output].map { $0 > 1 } == true, "\(output): \(ratios)")
            for (name, ratio) in ratios where name != output {
                #expect(ratio <= 1, "\(name) disturbed by \(failpoint): \(ratios)")
            }
        }

        /// apply at P = 1 and at P = 3 with rank 2's largest dx moved 64
        /// ulps: the byte comparison of the multi-rank tests flags dx, at
        /// that one value, in rank 2's samples, and nothing else.
        @Test func corruptedApplyDiffersFromOneRank() async throws {
            try await withTemporaryDirectory { folder in
                let dimensions = [6, 3, 5, 4], perSample = 3 * 5 * 4
                let inputs = ApplyInputs<Float>(dimensions, seed: 300)
                try inputs.write(into: folder)
                let training = { (output: String) in
                    ApplyInputs<Float>.trainingArguments(inputs: folder, output: "\(folder)/\(output)", eps: 1e-5, momentum: 0.1)
                }
                try await Launcher.apply(ranks: 1, training("np1"))
                let corrupted = try await Launcher.instnorm(
                    ranks: 3, ["apply"] + training("np3"), extraEnvironment: ["INSTNORM_FAILPOINT": "corrupt-dx@2:skew"])
                try #require(!corrupted.timedOut && corrupted.exitCode == 0, "\(corrupted.summary)")
                for name in InstnormCLI.MultiRank.exactOutputs where name != "dx.npy" {
                    #expect(bytes("\(folder)/np3/\(name)") == bytes("\(folder)/np1/\(name)"), "\(name)")
                }
                #expect(bytes("\(folder)/np3/dx.npy") != bytes("\(folder)/np1/dx.npy"), "the comparison must flag dx")
                let single = try readOutput("\(folder)/np1/dx.npy", as: Float.self, shape: dimensions)
                let three = try readOutput("\(folder)/np3/dx.npy", as: Float.self, shape: dimensions)
                let differing = single.indices.filter { single[$0] != three[$0] }
                try #require(differing.count == 1, "\(differing)")
                // Rank 2 of 3 holds samples 4 and 5 of 6 (a balanced split).
                #expect((4 * perSample..<6 * perSample).contains(differing[0]), "\(differing)")
                #expect(ulpDistance(Double(single[differing[0]]), Double(three[differing[0]]), dtype: "float32") == 64)
            }
        }

        /// With --check-finite, a NaN put into rank 2's y is refused (65).
        @Test func checkFiniteRefusesACorruptedY() async throws {
            try await withTemporaryDirectory { folder in
                let inputs = ApplyInputs<Double>([6, 2, 9], seed: 301)
                try inputs.write(into: folder)
                let result = try await Launcher.instnorm(
                    ranks: 3,
                    ["apply"] + ApplyInputs<Double>.trainingArguments(
                        inputs: folder, output: "\(folder)/out", eps: 1e-5, momentum: 0.1) + ["--check-finite"],
                    extraEnvironment: ["INSTNORM_FAILPOINT": "corrupt-y@2:nan"])
                #expect(!result.timedOut && result.exitCode == ExitCode.badInput, "\(result.summary)")
                #expect(result.standardError.contains("rank 2: --check-finite: y.npy would hold nan"), "\(result.summary)")
                #expect(!FileManager.default.fileExists(atPath: "\(folder)/out"), "\(result.summary)")
            }
        }
    }
}

/// What the tool reports when it corrupts a value: rank, point, old and new value.
struct Injection: CustomStringConvertible {
    let before: Double, after: Double

    /// Parses "rank R corrupts 'POINT' (ACTION): element I of its part, BEFORE -> AFTER".
    init?(_ text: String, rank: Int, point: String) {
        guard let line = text.split(separator: "\n").first(where: { $0.contains("rank \(rank) corrupts '\(point)'") }),
              let values = line.split(separator: ", ").last?.components(separatedBy: " -> "), values.count == 2,
              let before = Double(values[0]), let after = Double(values[1].trimmingCharacters(in: .whitespaces))
        else { return nil }
        self.before = before
        self.after = after
    }

    var description: String { "\(before) -> \(after)" }
}

/// The per-output error/bound ratios of a `# verify:` line, by output name.
func verificationRatios(_ output: String) -> [String: Double]? {
    guard let line = output.split(separator: "\n").first(where: { $0.hasPrefix("# verify:") }),
          let start = line.range(of: "(passes at <= 1): "),
          let end = line[start.upperBound...].firstIndex(of: ";") else { return nil }
    var ratios: [String: Double] = [:]
    for entry in line[start.upperBound..<end].split(separator: ", ") {
        let parts = entry.split(separator: " ")
        guard parts.count == 2, let value = Double(parts[1]) else { return nil }
        ratios[String(parts[0])] = value
    }
    return ratios
}

/// How many representable values of the dtype lie from `a` to `b` (both of
/// that dtype), counted by stepping: independent of how the tool skews.
func ulpDistance(_ a: Double, _ b: Double, dtype: String) -> Int? {
    func steps<T: BinaryFloatingPoint>(_: T.Type) -> Int? {
        var value = T(a)
        let target = T(b)
        guard Double(value) == a, Double(target) == b else { return nil }
        for count in 0...1000 {
            if value == target { return count }
            value = value < target ? value.nextUp : value.nextDown
        }
        return nil
    }
    switch dtype {
    case "float16": return steps(Float16.self)
    case "float32": return steps(Float.self)
    default: return steps(Double.self)
    }
}
