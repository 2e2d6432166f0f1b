import Foundation
import Testing

/// Launches the built `instnorm` under mpirun.
enum Launcher {
    /// A launch that takes longer has hung: a run here takes 0.5–2 s, but the
    /// machine is slow and shared, so the bound is generous.
    static let timeout = 120.0

    /// The tool: `INSTNORM_BIN` if set, else `instnorm` next to the test
    /// bundle (on Linux `swift test` runs `<build>/debug/<Package>PackageTests.xctest`,
    /// and `Bundle.main.bundleURL` is that `<build>/debug` folder).
    static let tool: Result<String, LaunchError> = {
        let environment = ProcessInfo.processInfo.environment
        if let path = environment["INSTNORM_BIN"] {
            return FileManager.default.isExecutableFile(atPath: path)
                ? .success(path) : .failure(LaunchError("INSTNORM_BIN=\(path) is not an executable file"))
        }
        return builtExecutable("instnorm", orSet: "INSTNORM_BIN")
    }()

    /// An executable of this package next to the test bundle.
    static func builtExecutable(_ name: String, orSet variable: String? = nil) -> Result<String, LaunchError> {
        let folders = [
            Bundle.main.bundleURL,
            URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent(),
        ]
        let candidates = folders.map { $0.appendingPathComponent(name).path }
        if let found = candidates.first(where: FileManager.default.isExecutableFile(atPath:)) {
            return .success(found)
        }
        return .failure(LaunchError(
            "the \(name) executable is not at \(candidates.joined(separator: " or ")); "
                + "build it first (swift build --build-tests)" + (variable.map { " or set \($0)" } ?? "")))
    }

    /// mpirun from PATH.
    static let mpirun: Result<String, LaunchError> = {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        let candidates = path.split(separator: ":").map { "\($0)/mpirun" }
        if let found = candidates.first(where: FileManager.default.isExecutableFile(atPath:)) {
            return .success(found)
        }
        return .failure(LaunchError("mpirun is not on PATH (\(path)); install openmpi-bin"))
    }()

    /// This process's environment without Open MPI's variables, plus what a
    /// root, oversubscribed, quiet launch needs.
    ///
    /// A test process that initialised MPI as a singleton carries `OMPI_*`,
    /// `PMIX_*` and `OPAL_*` variables; a child mpirun that inherits them
    /// tries to join that job and fails at once.
    static let environment = childEnvironment(ProcessInfo.processInfo.environment)

    static func childEnvironment(_ parent: [String: String]) -> [String: String] {
        var environment = parent.filter { name, _ in
            !["OMPI_", "PMIX_", "OPAL_"].contains(where: name.hasPrefix)
        }
        environment["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
        environment["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
        environment["OMPI_MCA_rmaps_base_oversubscribe"] = "1"
        environment["SWIFT_BACKTRACE"] = "enable=no"
        environment["INSTNORM_FAILPOINT"] = nil  // armed only by the tests that mean to
        return environment
    }

    /// `mpirun --oversubscribe -np ranks instnorm arguments…`, with
    /// `extraEnvironment` added to the environment (`INSTNORM_FAILPOINT`).
    static func instnorm(
        ranks: Int, _ arguments: [String], extraEnvironment: [String: String] = [:],
        whileRunning: (@Sendable (pid_t) -> Void)? = nil
    ) async throws -> ProcessResult {
        let tool = try tool.get(), mpirun = try mpirun.get()
        return await ProcessRunner.run(
            mpirun, ["--oversubscribe", "-np", String(ranks), tool] + arguments,
            environment: environment.merging(extraEnvironment) { $1 }, timeout: timeout, whileRunning: whileRunning)
    }

    /// `instnorm bench --json arguments…` at `ranks`, which must succeed:
    /// its report, the JSON object of the output's last line.
    static func benchReport(
        ranks: Int, _ arguments: [String], extraEnvironment: [String: String] = [:],
        sourceLocation: SourceLocation = #_sourceLocation
    ) async throws -> [String: Any] {
        let result = try await instnorm(ranks: ranks, ["bench", "--json"] + arguments, extraEnvironment: extraEnvironment)
        try #require(!result.timedOut && result.exitCode == 0, "\(result.summary)", sourceLocation: sourceLocation)
        let line = try #require(result.standardOutput.split(separator: "\n").last.map(String.init), sourceLocation: sourceLocation)
        return try #require(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], "\(line)",
                            sourceLocation: sourceLocation)
    }

    /// `instnorm apply arguments…` at `ranks`, which must succeed.
    static func apply(ranks: Int, _ arguments: [String], sourceLocation: SourceLocation = #_sourceLocation) async throws {
        let result = try await instnorm(ranks: ranks, ["apply"] + arguments)
        try #require(!result.timedOut && result.exitCode == 0, "apply failed at np = \(ranks)\n\(result.summary)",
                     sourceLocation: sourceLocation)
    }
}

struct LaunchError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
