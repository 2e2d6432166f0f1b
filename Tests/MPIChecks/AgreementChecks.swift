import DataParallel
import MPI

/// A local failure with an exit code of its own, as the tool's errors carry one.
private struct CodedFailure: Error, ExitCodeProviding, CustomStringConvertible {
    let description: String
    let exitCode: Int32
}

private struct UncodedFailure: Error, CustomStringConvertible {
    let description: String
}

/// The message rank r fails with: long (more than one buffer's worth of a
/// naive broadcast) and not ASCII, so its length must travel in bytes.
private func failureMessage(_ rank: Int) -> String {
    "rank \(rank) cannot go on: é€ " + String(repeating: "\(rank)", count: 300)
}

/// `Communicator.agree`: without a failure every rank gets its own result;
/// with failures every rank throws the lowest failing rank's message and
/// exit code (or the default code when the error carries none).
func checkAgreement(_ world: Communicator, _ checker: Checker) {
    let (rank, size) = (world.rank, world.size)
    checker.run("agree without failures") {
        let result = try world.agree { rank * 10 }
        checker.expect("agree without failures returns this rank's result", result, rank * 10)
    }
    // Ranks 1 and the last fail: rank 1 is the lowest, and not rank 0.
    let failing: Set<Int> = [1, size - 1]
    expectAgreedFailure(
        "agree, ranks \(failing.sorted()) failing with codes", world, checker,
        lowest: 1, message: failureMessage(1), code: 11
    ) {
        if failing.contains(rank) { throw CodedFailure(description: failureMessage(rank), exitCode: Int32(10 + rank)) }
    }
    expectAgreedFailure(
        "agree, last rank failing without a code", world, checker,
        lowest: size - 1, message: "no code on \(size - 1)", code: 42
    ) {
        if rank == size - 1 { throw UncodedFailure(description: "no code on \(rank)") }
    }
    // An MPIError is rethrown unsettled; every rank throws one here, so no
    // rank is left in a collective.
    do {
        try world.agree { throw MPIError(call: "MPI_Fake", code: 16, message: "rank \(rank)") }
        checker.expect("agree rethrows an MPIError", false, "it returned")
    } catch let error as MPIError {
        checker.expect("agree rethrows this rank's MPIError", error.message, "rank \(rank)")
    } catch {
        checker.expect("agree rethrows an MPIError", false, "threw \(error)")
    }
}

private func expectAgreedFailure(
    _ name: String, _ world: Communicator, _ checker: Checker,
    lowest: Int, message: String, code: Int32, _ body: () throws -> Void
) {
    do {
        try world.agree(defaultExitCode: 42, body)
        checker.expect(name, false, "agree returned on rank \(world.rank)")
    } catch let failure as AgreedFailure {
        checker.expect("\(name): rank", failure.rank, lowest)
        checker.expect("\(name): ranks", failure.ranks, world.size)
        checker.expect("\(name): message", failure.message, message)
        checker.expect("\(name): exit code", failure.exitCode, code)
    } catch {
        checker.expect(name, false, "threw \(error) instead of an AgreedFailure")
    }
}
