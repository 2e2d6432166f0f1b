import Foundation
import NPY
import Testing

extension ExitCode {
    static let mpiFailure: Int32 = 70
    static let resources: Int32 = 71
    static let ioFailure: Int32 = 74
}

/// A job with a failing rank must end within this many seconds (the bound).
let failureDeadline = 10.0

/// One run with `INSTNORM_FAILPOINT` set.
struct FailpointCase: Sendable, CustomTestStringConvertible {
    let point: String
    let rank: Int
    let ranks: Int
    var action: String? = nil
    /// nil: any non-zero code (a killed rank: mpirun reports 128 + the signal).
    let exitCode: Int32?
    /// Text stderr must hold exactly once; nil for a killed rank.
    let message: String?
    /// Further text stderr must hold.
    var keywords: [String] = []
    /// The output directory does not exist before the run (and must not after).
    var freshOutput = false

    var specification: String { "\(point)@\(rank)" + (action.map { ":\($0)" } ?? "") }
    var testDescription: String { "\(specification) at np = \(ranks)" + (freshOutput ? ", new directory" : "") }
}

/// Every point at np = 2 and 3 on the last rank (a rank that does not own
/// the files), the points where rank 0 differs, and ranks killed there.
let failpointCases: [FailpointCase] = [2, 3].flatMap { ranks -> [FailpointCase] in
    let last = ranks - 1
    let injected = "[injected by INSTNORM_FAILPOINT: "
    return [
        FailpointCase(point: "reading", rank: last, ranks: ranks, exitCode: ExitCode.badInput,
                      message: "x.npy: cannot read", keywords: ["rank \(last): ", "Input/output error", injected]),
        FailpointCase(point: "computing", rank: last, ranks: ranks, exitCode: ExitCode.resources,
                      message: "rank \(last): cannot allocate the outputs of this rank: Cannot allocate memory \(injected)computing]"),
        FailpointCase(point: "reducing", rank: last, ranks: ranks, exitCode: ExitCode.mpiFailure,
                      message: "error on rank \(last): MPI_Iallreduce failed: MPI_ERR_OTHER: known error not in list \(injected)reducing]"),
        FailpointCase(point: "writing", rank: last, ranks: ranks, exitCode: ExitCode.ioFailure,
                      message: "No space left on device (errno 28) \(injected)writing]", keywords: ["rank \(last): "]),
        FailpointCase(point: "renaming", rank: last, ranks: ranks, exitCode: ExitCode.ioFailure,
                      message: "rank \(last): cannot report the outputs ready to commit \(injected)renaming]"),
        FailpointCase(point: "renaming", rank: 0, ranks: ranks, exitCode: ExitCode.ioFailure,
                      message: "mean.npy: Invalid cross-device link \(injected)renaming]", keywords: ["rank 0: "]),
        FailpointCase(point: "writing", rank: last, ranks: ranks, action: "kill", exitCode: nil, message: nil),
        FailpointCase(point: "writing", rank: 0, ranks: ranks, action: "kill", exitCode: nil, message: nil),
    ]
} + [
    FailpointCase(point: "writing", rank: 0, ranks: 2, exitCode: ExitCode.ioFailure,
                  message: "No space left on device", keywords: ["rank 0: "], freshOutput: true),
    FailpointCase(point: "writing", rank: 1, ranks: 3, action: "kill", exitCode: nil, message: nil, freshOutput: true),
]

/// What an earlier run left in the output directory: a forward-only run's
/// outputs (which the training run replaces), a file of the user's and a
/// hidden one (which it must not touch). The training run adds five new names.
func makeEarlierOutputs(_ output: String) throws {
    try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: false)
    try NPY.write(output + "/y.npy", shape: [7, 3, 6], values: (0..<126).map { Float($0) / 7 })
    try NPY.write(output + "/mean.npy", shape: [7, 3], values: (0..<21).map { Float($0) / 3 })
    try NPY.write(output + "/invstd.npy", shape: [7, 3], values: (0..<21).map { Float($0) + 1 })
    try Data("the user's notes\n".utf8).write(to: URL(fileURLWithPath: output + "/notes.txt"))
    try Data("hidden\n".utf8).write(to: URL(fileURLWithPath: output + "/.keep"))
}

/// The hidden temporary and backup files a run may leave.
func strayFiles(_ snapshot: DirectorySnapshot?) -> [String] {
    (snapshot?.names ?? []).filter { $0.contains(".partial-") || $0.contains(".backup-") }
}

extension InstnormCLI {
    @Suite struct Failpoints {
        /// The rank named fails at the point named; the job ends within 10 s
        /// with the documented code, rank 0 (or, for an MPI failure, the
        /// failing rank) reports it once, and the output directory is byte
        /// for byte what it was, with no temporary file left.
        @Test(arguments: failpointCases)
        func rankFailsAtPoint(_ testCase: FailpointCase) async throws {
            try await withTemporaryDirectory { folder in
                let inputs = ApplyInputs<Float>([7, 3, 6], seed: 601)
                try inputs.write(into: folder)
                let output = folder + "/out/sub"
                if testCase.freshOutput {
                    // Neither out nor out/sub exists: both must be gone again.
                } else {
                    try FileManager.default.createDirectory(atPath: folder + "/out", withIntermediateDirectories: false)
                    try makeEarlierOutputs(output)
                }
                let before = DirectorySnapshot(output)
                let inputsBefore = try #require(DirectorySnapshot(folder)).entries.filter { $0.key != "out" }

                let result = try await Launcher.instnorm(
                    ranks: testCase.ranks,
                    ["apply"] + ApplyInputs<Float>.trainingArguments(inputs: folder, output: output, eps: 1e-5, momentum: 0.1),
                    extraEnvironment: ["INSTNORM_FAILPOINT": testCase.specification])

                #expect(!result.timedOut && result.seconds < failureDeadline, "\(result.summary)")
                if let code = testCase.exitCode {
                    #expect(result.exitCode == code, "\(result.summary)")
                } else {
                    #expect(result.exitCode != 0, "\(result.summary)")
                }
                if let message = testCase.message {
                    let occurrences = result.standardError.components(separatedBy: message).count - 1
                    #expect(occurrences == 1, "stderr should hold \"\(message)\" once\n\(result.summary)")
                }
                for keyword in testCase.keywords {
                    #expect(result.standardError.contains(keyword), "stderr lacks \"\(keyword)\"\n\(result.summary)")
                }
                let after = DirectorySnapshot(output)
                #expect(strayFiles(after).isEmpty, "temporary files left: \(strayFiles(after))")
                #expect(after == before, "the output directory changed: \(before.map(\.description) ?? "absent") → \(after.map(\.description) ?? "absent")")
                if testCase.freshOutput {
                    #expect(!FileManager.default.fileExists(atPath: folder + "/out"), "the directories the run created are left")
                }
                #expect(try #require(DirectorySnapshot(folder)).entries.filter { $0.key != "out" } == inputsBefore, "an input changed")
            }
        }

        /// The same run without a failpoint succeeds: the cases above fail
        /// because of the failpoint, not the setup.
        @Test func sameRunWithoutFailpointSucceeds() async throws {
            try await withTemporaryDirectory { folder in
                let inputs = ApplyInputs<Float>([7, 3, 6], seed: 601)
                try inputs.write(into: folder)
                let output = folder + "/out"
                try makeEarlierOutputs(output)
                try await Launcher.apply(ranks: 3, ApplyInputs<Float>.trainingArguments(inputs: folder, output: output, eps: 1e-5, momentum: 0.1))
                let after = try #require(DirectorySnapshot(output))
                #expect(after.names == (MultiRank.trainingOutputs + ["notes.txt", ".keep"]).sorted())
                #expect(after.entries["notes.txt"] == Data("the user's notes\n".utf8))
            }
        }

        /// bench passes through two points: reserving its buffers and the
        /// first timed iteration's allreduce.
        @Test(arguments: [("computing", ExitCode.resources, "rank 1: cannot allocate"),
                          ("reducing", ExitCode.mpiFailure, "error on rank 1: MPI_Iallreduce failed")])
        func benchRankFails(point: String, exitCode: Int32, message: String) async throws {
            let result = try await Launcher.instnorm(
                ranks: 2, ["bench", "--shape", "4,3,50", "--iterations", "3", "--warmup", "1"],
                extraEnvironment: ["INSTNORM_FAILPOINT": "\(point)@1"])
            #expect(!result.timedOut && result.seconds < failureDeadline && result.exitCode == exitCode, "\(result.summary)")
            #expect(result.standardError.components(separatedBy: message).count == 2, "\(result.summary)")
        }

        /// A malformed INSTNORM_FAILPOINT is a usage error, reported once.
        @Test(arguments: [
            "reading", "nowhere@1", "reading@9", "reading@1:explode", "reading@-1",
            // nan and skew belong to the corrupt-* points, which take nothing else.
            "reading@0:nan", "corrupt-y@0:kill", "corrupt-dx@1", "corrupt-dgamma@0:fail",
        ])
        func malformedFailpointIsAUsageError(_ specification: String) async throws {
            let result = try await Launcher.instnorm(
                ranks: 2, ["bench", "--shape", "2,2,8", "--iterations", "1"],
                extraEnvironment: ["INSTNORM_FAILPOINT": specification])
            #expect(result.exitCode == ExitCode.usage, "\(result.summary)")
            #expect(result.standardError.components(separatedBy: "INSTNORM_FAILPOINT=\(specification)").count == 2, "\(result.summary)")
        }
    }
}
