import Foundation
import Testing

extension InstnormCLI {
    /// The MPI face (Sources/MPI) and `Communicator.agree` at P = 2, 3, 4:
    /// `mpi-checks` (Tests/MPIChecks) under mpirun. At P = 1, where
    /// Tests/MPITests runs, every reduction and gather hands its input back,
    /// so a swapped operator or a wrong displacement would pass there.
    @Suite struct MPIFace {
        @Test(arguments: [2, 3, 4])
        func everyCheckPassesOnEveryRank(ranks: Int) async throws {
            let program = try Launcher.builtExecutable("mpi-checks").get(), mpirun = try Launcher.mpirun.get()
            let result = await ProcessRunner.run(
                mpirun, ["--oversubscribe", "-np", String(ranks), program],
                environment: Launcher.environment, timeout: Launcher.timeout)
            #expect(!result.timedOut && result.exitCode == 0, "\(result.summary)")
            let failures = result.standardOutput.split(separator: "\n").filter { $0.hasPrefix("FAIL") }
            #expect(failures.isEmpty, "\(failures.joined(separator: "\n"))")
            // The summary proves the checks ran, at this rank count.
            #expect(result.standardOutput.contains("checks per rank on \(ranks) ranks, 0 failure(s) in all"),
                    "\(result.summary)")
        }
    }
}
