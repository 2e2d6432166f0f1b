import Foundation
import Testing

extension InstnormCLI {
    /// The harness itself: a hang must end as a failed test, a chatty child
    /// must not block on a full pipe.
    @Suite struct Runner {
        /// More than a pipe's 64 KiB on both streams at once.
        @Test func drainsBothPipesWhileTheChildRuns() async throws {
            let script = "head -c 1000000 /dev/zero | tr '\\0' o; head -c 700000 /dev/zero | tr '\\0' e >&2; exit 3"
            let result = await ProcessRunner.run("/bin/sh", ["-c", script], environment: Launcher.environment, timeout: 60)
            #expect(!result.timedOut)
            #expect(result.exitCode == 3)
            #expect(result.standardOutput.utf8.count == 1_000_000 && result.standardOutput.allSatisfy { $0 == "o" })
            #expect(result.standardError.utf8.count == 700_000 && result.standardError.allSatisfy { $0 == "e" })
        }

        /// A hung mpirun job is killed at the timeout, its ranks with it.
        @Test func killsAHungMpirunJobAtTheTimeout() async throws {
            let mpirun = try Launcher.mpirun.get()
            let marker = "317.\(getpid() % 1000)"  // a sleep no one else runs
            async let launched = ProcessRunner.run(
                mpirun, ["--oversubscribe", "-np", "2", "/bin/sleep", marker], environment: Launcher.environment, timeout: 3)
            try await Task.sleep(for: .seconds(1.5))
            let ranks = processes(withCommandLine: ["/bin/sleep", marker])
            let result = await launched
            #expect(ranks.count == 2, "expected 2 ranks running before the timeout, found \(ranks)")
            #expect(result.timedOut)
            #expect(result.exitCode != 0)
            // SIGTERM alone must end it: mpirun stops its ranks then. A child
            // spawned with SIGTERM blocked (see withCleanSignalMask) needs SIGKILL.
            #expect(result.exitCode != 128 + SIGKILL, "mpirun did not stop on SIGTERM\n\(result.summary)")
            #expect(result.seconds < 3 + ProcessRunner.killGrace, "took \(result.seconds) s")
            try await Task.sleep(for: .seconds(1))
            #expect(processes(withCommandLine: ["/bin/sleep", marker]) == [], "ranks outlived the killed mpirun")
        }

        /// The child gets none of this process's Open MPI variables (a test
        /// bundle that initialised MPI carries them), and what a root launch needs.
        @Test func childEnvironment() async throws {
            let parent = [
                "PATH": "/usr/bin:/bin", "OMPI_COMM_WORLD_SIZE": "1", "OMPI_MCA_ess": "singleton",
                "PMIX_RANK": "0", "OPAL_PREFIX": "/usr", "HOME_OMPI_": "kept",
            ]
            let environment = Launcher.childEnvironment(parent)
            let result = await ProcessRunner.run("/usr/bin/env", [], environment: environment, timeout: 30)
            #expect(result.exitCode == 0)
            let lines = Set(result.standardOutput.split(separator: "\n").map(String.init))
            #expect(lines == [
                "PATH=/usr/bin:/bin", "HOME_OMPI_=kept", "OMPI_ALLOW_RUN_AS_ROOT=1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1",
                "OMPI_MCA_rmaps_base_oversubscribe=1", "SWIFT_BACKTRACE=enable=no",
            ])
        }

        /// The process ids whose command line is exactly `arguments`, from /proc.
        func processes(withCommandLine arguments: [String]) -> [Int] {
            let wanted = Data(arguments.map { $0 + "\0" }.joined().utf8)
            let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
            return entries.compactMap(Int.init).filter { bytes("/proc/\($0)/cmdline") == wanted }
        }
    }
}
