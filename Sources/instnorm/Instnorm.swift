import ArgumentParser
import DataParallel
#if canImport(Glibc)
import Glibc
#endif
import MPI

/// The root command: a declaration only; `main` below runs it the MPI way.
struct Instnorm: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "instnorm",
        abstract: "InstanceNorm forward and backward, data-parallel over MPI ranks.",
        discussion: """
            Launch with mpirun: the batch dimension is split across the ranks, each \
            rank normalizes its own samples, and the parameter gradients are summed \
            across ranks exactly and rounded once, so every rank count gives the same bits. Exit codes: 0 success, 1 verification failed, \
            64 usage error, 65 bad input file, 70 MPI failure, 71 out of memory, 74 I/O failure.
            """,
        version: "0.1.0",
        subcommands: [Bench.self, Apply.self, Collectives.self],
        defaultSubcommand: Bench.self)
}

/// Every rank parses the same arguments, so every rank reaches the same
/// verdict; rank 0 alone prints it, and every rank exits with the same code.
/// MPI is initialised first so that rank 0 is known, and finalised on every
/// path that ends normally (mpirun reports a rank that exits without it).
@main
enum InstnormMain {
    static func main() {
        do {
            // Serialized: the backward polls its allreduce from a worker
            // thread while the main thread waits for the workers.
            try MPI.initialize(threadLevel: .serialized)
        } catch {
            Console.error("instnorm: error: \(error)")
            exit(ToolExitCode.mpiFailure)
        }
        let communicator = Communicator.world
        let code = run(Array(CommandLine.arguments.dropFirst()), on: communicator)
        do {
            try MPI.finalize()
        } catch {
            Console.error("instnorm: error: \(error)")
            exit(ToolExitCode.mpiFailure)
        }
        exit(code)
    }

    static func run(_ arguments: [String], on communicator: Communicator) -> Int32 {
        do {
            var command = try Instnorm.parseAsRoot(arguments)
            try Failpoint.load(on: communicator)
            try command.run()
            return 0
        } catch let failure as AgreedFailure {
            if communicator.rank == 0 { Console.error("instnorm: error: \(failure.description)") }
            return failure.exitCode
        } catch let error as MPIError {
            // An MPI call failed: the ranks may no longer be able to agree on
            // anything, so the one safe way out is to take the whole job down.
            Console.error("instnorm: error on rank \(communicator.rank): \(error)")
            Termination.removeRegisteredFiles()
            communicator.abort(code: ToolExitCode.mpiFailure)
        } catch {
            let code = Instnorm.exitCode(for: error).rawValue
            if communicator.rank == 0 {
                let message = Instnorm.fullMessage(for: error)
                if code == 0 { Console.output(message) } else { Console.error(message) }
            }
            return code
        }
    }
}
