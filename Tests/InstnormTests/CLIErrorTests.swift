import Foundation
import NPY
import Testing

/// The exit codes of ToolError.swift.
enum ExitCode {
    static let usage: Int32 = 64
    static let badInput: Int32 = 65
}

/// The folders one error case runs in: valid and broken inputs, and the
/// --output path.
struct ErrorFixture: Sendable {
    let inputs: String
    let output: String

    func input(_ name: String) -> String { inputs + "/" + name }

    /// --input x.npy, then `extra`, then --output.
    func arguments(input: String = "x.npy", _ extra: [String] = []) -> [String] {
        ["--input", self.input(input)] + extra + ["--output", output]
    }
}

/// What lies at the --output path before the run.
enum OutputSetup: Sendable {
    /// Nothing at np = 1; at np = 2 a directory holding an earlier run's outputs.
    case standard
    /// A regular file.
    case regularFile
    /// A directory whose y.npy is the --input itself.
    case inputAsY
}

struct ErrorCase: Sendable, CustomTestStringConvertible {
    let name: String
    let arguments: @Sendable (ErrorFixture) -> [String]
    let exitCode: Int32
    /// Text stderr must hold exactly once: rank 0 alone reports.
    let message: String
    /// Further words stderr must hold.
    var keywords: [String] = []
    var output = OutputSetup.standard

    var testDescription: String { name }
}

let errorCases: [ErrorCase] = [
    ErrorCase(
        name: "unknown flag", arguments: { $0.arguments(["--no-such-flag"]) },
        exitCode: ExitCode.usage, message: "Unknown option '--no-such-flag'"),
    ErrorCase(
        name: "--eps 0", arguments: { $0.arguments(["--eps", "0"]) },
        exitCode: ExitCode.usage, message: "--eps must be a positive finite number, got 0"),
    ErrorCase(
        name: "--eps=-1", arguments: { $0.arguments(["--eps=-1"]) },
        exitCode: ExitCode.usage, message: "--eps must be a positive finite number, got -1"),
    ErrorCase(
        name: "--eps -1 (a negative value after a space)", arguments: { $0.arguments(["--eps", "-1"]) },
        exitCode: ExitCode.usage, message: "--eps must be a positive finite number, got -1"),
    ErrorCase(
        name: "--eval without running statistics", arguments: { $0.arguments(["--eval"]) },
        exitCode: ExitCode.usage, message: "--eval normalizes with the running statistics",
        keywords: ["--running-mean", "--running-var"]),
    ErrorCase(
        name: "--grad of another shape", arguments: { $0.arguments(["--grad", $0.input("dy_short.npy")]) },
        exitCode: ExitCode.badInput, message: "dy_short.npy: shape (3, 2, 4) does not match the expected (3, 2, 5)"),
    ErrorCase(
        name: "--weight of the wrong length",
        arguments: { $0.arguments(["--grad", $0.input("dy.npy"), "--weight", $0.input("gamma_long.npy"), "--bias", $0.input("beta.npy")]) },
        exitCode: ExitCode.badInput, message: "gamma_long.npy: shape (3,) does not match the expected (2,)"),
    ErrorCase(
        name: "input with 2 dimensions", arguments: { $0.arguments(input: "x2d.npy") },
        exitCode: ExitCode.badInput, message: "x2d.npy: ", keywords: ["spatial dimension"]),
    ErrorCase(
        name: "truncated input", arguments: { $0.arguments(input: "x_trunc.npy") },
        exitCode: ExitCode.badInput, message: "x_trunc.npy: file is 242 bytes", keywords: ["truncated"]),
    ErrorCase(
        name: "int32 input", arguments: { $0.arguments(input: "x_int32.npy") },
        exitCode: ExitCode.badInput, message: "x_int32.npy: dtype '<i4'", keywords: ["not supported"]),
    ErrorCase(
        name: "missing input", arguments: { $0.arguments(input: "missing.npy") },
        exitCode: ExitCode.badInput, message: "missing.npy: cannot open", keywords: ["No such file"]),
    ErrorCase(
        name: "--output is a regular file", arguments: { $0.arguments() },
        exitCode: ExitCode.usage, message: "exists and is not a directory", keywords: ["--output"],
        output: .regularFile),
    ErrorCase(
        name: "input would be overwritten as y.npy", arguments: { ["--input", $0.output + "/y.npy", "--output", $0.output] },
        exitCode: ExitCode.usage, message: "/y.npy is the input file", keywords: ["choose another --output"],
        output: .inputAsY),
    ErrorCase(
        name: "running statistics with spatial size 1",
        arguments: { $0.arguments(input: "x_s1.npy", ["--running-mean", $0.input("rm.npy"), "--running-var", $0.input("rv.npy")]) },
        exitCode: ExitCode.badInput, message: "x_s1.npy: a training step with running statistics",
        keywords: ["spatial size is 1"]),
]

extension InstnormCLI {
    @Suite struct CLIErrors {
        /// Each bad invocation at np = 1 and 2: the documented exit code, one
        /// message on stderr naming the problem, no hang, and nothing written:
        /// the inputs and whatever was at --output stay as they were.
        @Test(arguments: errorCases, [1, 2])
        func refused(_ errorCase: ErrorCase, ranks: Int) async throws {
            try await withTemporaryDirectory { folder in
                let fixture = ErrorFixture(inputs: folder + "/in", output: folder + "/out")
                try makeInputs(fixture)
                try makeOutput(errorCase.output, ranks: ranks, fixture: fixture)
                let inputsBefore = try #require(DirectorySnapshot(fixture.inputs))
                let outputExisted = FileManager.default.fileExists(atPath: fixture.output)
                let outputFolderBefore = DirectorySnapshot(fixture.output)
                let outputFileBefore = outputFolderBefore == nil ? bytes(fixture.output) : nil

                let result = try await Launcher.instnorm(ranks: ranks, ["apply"] + errorCase.arguments(fixture))

                #expect(!result.timedOut, "\(result.summary)")
                #expect(result.exitCode == errorCase.exitCode, "\(result.summary)")
                let occurrences = result.standardError.components(separatedBy: errorCase.message).count - 1
                #expect(occurrences == 1, "stderr should report \"\(errorCase.message)\" once\n\(result.summary)")
                for keyword in errorCase.keywords {
                    #expect(result.standardError.contains(keyword), "stderr lacks \"\(keyword)\"\n\(result.summary)")
                }
                #expect(!result.standardOutput.contains(errorCase.message), "the error belongs on stderr\n\(result.summary)")
                #expect(DirectorySnapshot(fixture.inputs) == inputsBefore, "an input changed")
                if !outputExisted {
                    #expect(!FileManager.default.fileExists(atPath: fixture.output), "a refused run created --output")
                } else if let outputFolderBefore {
                    let after = DirectorySnapshot(fixture.output)
                    #expect(after == outputFolderBefore, "--output changed: \(outputFolderBefore) → \(after.map { "\($0)" } ?? "gone")")
                } else {
                    #expect(outputFileBefore != nil && bytes(fixture.output) == outputFileBefore, "the file at --output changed")
                }
            }
        }

        /// x, dy, γ, β, running statistics of shape (3, 2, 5) in float32, and broken variants.
        func makeInputs(_ fixture: ErrorFixture) throws {
            try FileManager.default.createDirectory(atPath: fixture.inputs, withIntermediateDirectories: false)
            let inputs = ApplyInputs<Float>([3, 2, 5], seed: 401)
            try inputs.write(into: fixture.inputs)
            try NPY.write(fixture.input("dy_short.npy"), shape: [3, 2, 4], values: Array(inputs.dy.prefix(24)))
            try NPY.write(fixture.input("gamma_long.npy"), shape: [3], values: inputs.gamma + [1])
            try NPY.write(fixture.input("x2d.npy"), shape: [3, 2], values: Array(inputs.x.prefix(6)))
            try NPY.write(fixture.input("x_s1.npy"), shape: [3, 2, 1], values: Array(inputs.x.prefix(6)))
            try NPY.write(fixture.input("x_trunc.npy"), shape: [3, 2, 5], values: inputs.x)  // 128 + 120 bytes
            try truncate(fixture.input("x_trunc.npy"), droppingLast: 6)
            try writeInt32NPY(fixture.input("x_int32.npy"), shape: [3, 2, 5])
        }

        func makeOutput(_ setup: OutputSetup, ranks: Int, fixture: ErrorFixture) throws {
            switch setup {
            case .standard:
                guard ranks > 1 else { return }
                // What an earlier forward-only run left.
                try FileManager.default.createDirectory(atPath: fixture.output, withIntermediateDirectories: false)
                try NPY.write(fixture.output + "/y.npy", shape: [3, 2, 5], values: (0..<30).map { Float($0) / 7 })
                try NPY.write(fixture.output + "/mean.npy", shape: [3, 2], values: (0..<6).map { Float($0) / 3 })
                try NPY.write(fixture.output + "/invstd.npy", shape: [3, 2], values: (0..<6).map { Float($0) + 1 })
            case .regularFile:
                try Data("not a directory\n".utf8).write(to: URL(fileURLWithPath: fixture.output))
            case .inputAsY:
                try FileManager.default.createDirectory(atPath: fixture.output, withIntermediateDirectories: false)
                try FileManager.default.copyItem(atPath: fixture.input("x.npy"), toPath: fixture.output + "/y.npy")
            }
        }
    }
}
