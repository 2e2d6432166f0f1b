#if canImport(Glibc)
import Glibc
#endif
import MPI

/// Records checks on one rank and prints one line per failure, naming the
/// rank, the check, what was expected and what came. Nothing here is
/// collective: a rank's verdict is its own exit code, so a broken reduction
/// cannot hide a failure by reducing the verdicts.
final class Checker {
    let rank: Int
    let size: Int
    private(set) var checks = 0
    private(set) var failures = 0

    init(rank: Int, size: Int) {
        self.rank = rank
        self.size = size
    }

    /// Expects `actual == expected`.
    func expect<Value: Equatable>(_ name: String, _ actual: Value, _ expected: Value) {
        checks += 1
        guard actual != expected else { return }
        fail(name, "expected \(expected), got \(actual)")
    }

    /// Expects `condition`, describing what was seen otherwise.
    func expect(_ name: String, _ condition: Bool, _ seen: @autoclosure () -> String) {
        checks += 1
        guard !condition else { return }
        fail(name, seen())
    }

    /// Runs a check that may throw; a thrown error is a failure of it.
    func run(_ name: String, _ body: () throws -> Void) {
        do {
            try body()
        } catch {
            checks += 1
            fail(name, "threw \(error)")
        }
    }

    private func fail(_ name: String, _ detail: String) {
        failures += 1
        emit("FAIL rank \(rank) of \(size): \(name): \(detail)")
    }
}

/// One line on standard output at once (under mpirun stdout is a buffered
/// pipe, and a line still in the buffer is lost if the rank dies).
func emit(_ line: String) {
    var bytes = Array((line + "\n").utf8)[...]
    while !bytes.isEmpty {
        let written = bytes.withUnsafeBytes { write(STDOUT_FILENO, $0.baseAddress, $0.count) }
        guard written > 0 else { return }
        bytes = bytes.dropFirst(written)
    }
}
