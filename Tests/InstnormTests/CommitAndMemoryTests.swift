import Foundation
import NPY
import Testing

/// Runs `chattr` (e2fsprogs) on `path`; false when the tool or the file system cannot.
@discardableResult
func chattr(_ flag: String, _ path: String) -> Bool {
    guard let tool = ["/usr/bin/chattr", "/bin/chattr"].first(where: FileManager.default.isExecutableFile(atPath:)) else { return false }
    let result = ProcessRunner.runBlocking(tool, [flag, path], environment: [:], timeout: 30)
    return result.exitCode == 0
}

extension InstnormCLI {
    /// Failures no failpoint simulates: a real rename that fails halfway
    /// through the commit, and buffers the system will not give.
    @Suite struct CommitAndMemory {
        /// dx.npy, the fourth output, is immutable (chattr +i: even root can
        /// neither link nor replace it), so the commit fails after y, mean
        /// and invstd were renamed into place: they must be rolled back.
        @Test func renameFailingHalfwayIsRolledBack() async throws {
            try await withTemporaryDirectory { folder in
                let inputs = ApplyInputs<Float>([7, 3, 6], seed: 621)
                try inputs.write(into: folder)
                let output = folder + "/out"
                let arguments = ApplyInputs<Float>.trainingArguments(inputs: folder, output: output, eps: 1e-5, momentum: 0.1)
                try await Launcher.apply(ranks: 2, arguments)
                // Earlier outputs that differ from what the next run writes.
                try NPY.write(output + "/y.npy", shape: [7, 3, 6], values: (0..<126).map { Float($0) })
                let before = try #require(DirectorySnapshot(output))
                guard chattr("+i", output + "/dx.npy") else {
                    Issue.record("chattr +i is not available here; the real rename failure was not tried")
                    return
                }
                defer { chattr("-i", output + "/dx.npy") }
                let result = try await Launcher.instnorm(ranks: 2, ["apply"] + arguments)
                chattr("-i", output + "/dx.npy")
                #expect(result.exitCode == ExitCode.ioFailure, "\(result.summary)")
                #expect(result.standardError.contains("dx.npy") && result.standardError.contains("Operation not permitted"),
                        "\(result.summary)")
                let after = DirectorySnapshot(output)
                #expect(strayFiles(after).isEmpty, "temporary files left: \(strayFiles(after))")
                #expect(after == before, "the output directory changed")
            }
        }

        /// A header may describe any size a sparse file can have: x here
        /// claims 1 TiB. Every rank must refuse to allocate its slice with
        /// the same error (exit 71) rather than crash in the allocator.
        @Test func inputTooLargeForMemory() async throws {
            try await withTemporaryDirectory { folder in
                let path = folder + "/huge.npy"
                let writer: NPYWriter
                do {
                    writer = try NPYWriter.create(path: path, header: NPYHeader(dtype: .float32, shape: [4096, 1024, 1024, 64]))
                } catch {
                    Issue.record("cannot make a 1 TiB sparse file here: \(error)")
                    return
                }
                try writer.close()
                defer { unlink(path) }
                let result = try await Launcher.instnorm(ranks: 2, ["apply", "--input", path, "--output", folder + "/out"])
                #expect(!result.timedOut && result.exitCode == ExitCode.resources, "\(result.summary)")
                #expect(result.standardError.components(separatedBy: "rank 0: cannot allocate 512.0 GiB for this rank's slice").count == 2,
                        "\(result.summary)")
                #expect(!FileManager.default.fileExists(atPath: folder + "/out"))
            }
        }

        /// The same for bench's synthetic batch.
        @Test func benchShapeTooLargeForMemory() async throws {
            let result = try await Launcher.instnorm(ranks: 2, ["bench", "--shape", "65536,1024,1024,64"])
            #expect(!result.timedOut && result.exitCode == ExitCode.resources, "\(result.summary)")
            #expect(result.standardError.components(separatedBy: "cannot allocate").count == 2, "\(result.summary)")
        }
    }
}
