import Foundation

/// What a finished (or killed) child process left behind.
struct ProcessResult: Sendable {
    let command: [String]
    /// The exit status, or 128 + the signal number when a signal ended it.
    let exitCode: Int32
    let standardOutput: String
    let standardError: String
    /// The child outlived its timeout and was killed: the test must fail.
    let timedOut: Bool
    let seconds: Double

    /// One line per field, for failure messages.
    var summary: String {
        """
        $ \(command.joined(separator: " "))
        exit \(exitCode)\(timedOut ? " (killed after timeout)" : ""), \(String(format: "%.2f", seconds)) s
        stdout: \(standardOutput.isEmpty ? "(empty)" : standardOutput)
        stderr: \(standardError.isEmpty ? "(empty)" : standardError)
        """
    }
}

/// Runs a child process with Foundation's `Process`, with its stdout and
/// stderr drained while it runs (a full pipe would otherwise block it) and a
/// hard timeout: SIGTERM to its process group, then SIGKILL after a grace
/// period, so a hang is a failed test rather than a stuck CI job.
///
/// `Process` on Linux starts the child in a process group of its own
/// (pgid = pid), so signalling the group reaches mpirun's ranks as well.
enum ProcessRunner {
    /// The time a terminated child gets to exit before SIGKILL.
    static let killGrace = 5.0

    /// Runs off Swift's cooperative pool: the wait blocks a thread for up to
    /// `timeout` seconds, which must not starve the test runner's tasks.
    ///
    /// - Parameter whileRunning: started on a thread of its own once the
    ///   child runs, with the child's process id (to signal one of its
    ///   descendants, for example); the timeout still applies.
    static func run(
        _ executable: String, _ arguments: [String],
        environment: [String: String], timeout: Double,
        whileRunning: (@Sendable (pid_t) -> Void)? = nil
    ) async -> ProcessResult {
        await withCheckedContinuation { continuation in
            DispatchQueue.global().async {
                continuation.resume(returning: runBlocking(
                    executable, arguments, environment: environment, timeout: timeout, whileRunning: whileRunning))
            }
        }
    }

    static func runBlocking(
        _ executable: String, _ arguments: [String],
        environment: [String: String], timeout: Double,
        whileRunning: (@Sendable (pid_t) -> Void)? = nil
    ) -> ProcessResult {
        let command = [executable] + arguments
        let start = Date()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.environment = environment
        process.standardInput = FileHandle.nullDevice
        let outputPipe = Pipe(), errorPipe = Pipe()
        process.standardOutput = outputPipe
        process.standardError = errorPipe
        let exited = DispatchSemaphore(value: 0)
        process.terminationHandler = { _ in exited.signal() }

        // One reader per pipe, blocking until EOF, on threads of their own.
        let stdoutReader = PipeDrain(outputPipe.fileHandleForReading)
        let stderrReader = PipeDrain(errorPipe.fileHandleForReading)
        do {
            try withCleanSignalMask { try process.run() }
        } catch {
            return ProcessResult(
                command: command, exitCode: -1, standardOutput: "",
                standardError: "cannot start \(executable): \(error)", timedOut: false, seconds: 0)
        }
        // `run()` closed our copies of the write ends: EOF comes when the child's close.
        stdoutReader.start()
        stderrReader.start()
        if let whileRunning {
            let pid = process.processIdentifier
            Thread { whileRunning(pid) }.start()
        }

        var timedOut = false
        if exited.wait(timeout: .now() + timeout) == .timedOut {
            timedOut = true
            // mpirun puts each rank in a process group of its own: note them
            // now, while they are still the child's descendants.
            let descendants = descendants(of: process.processIdentifier)
            signal(process, SIGTERM)  // mpirun passes it on to its ranks
            if exited.wait(timeout: .now() + killGrace) == .timedOut {
                signal(process, SIGKILL)
                exited.wait()
            }
            for pid in descendants { kill(pid, SIGKILL) }  // ESRCH when already gone
        }
        // A grandchild that kept the pipes open must not hang us either.
        let standardOutput = stdoutReader.finish(within: killGrace)
        let standardError = stderrReader.finish(within: killGrace)
        let exitCode = process.terminationReason == .uncaughtSignal
            ? 128 + process.terminationStatus : process.terminationStatus
        return ProcessResult(
            command: command, exitCode: exitCode, standardOutput: standardOutput, standardError: standardError,
            timedOut: timedOut, seconds: Date().timeIntervalSince(start))
    }

    /// Runs `body` (the spawn) with no signal blocked on this thread.
    ///
    /// `posix_spawn`, which `Process` uses, passes the calling thread's signal
    /// mask to the child, and a Dispatch worker thread blocks SIGTERM and
    /// most other signals: mpirun started from one cannot be terminated, and
    /// SIGKILL then leaves its ranks running.
    private static func withCleanSignalMask<R>(_ body: () throws -> R) rethrows -> R {
        var empty = sigset_t(), saved = sigset_t()
        sigemptyset(&empty)
        pthread_sigmask(SIG_SETMASK, &empty, &saved)
        defer { pthread_sigmask(SIG_SETMASK, &saved, nil) }
        return try body()
    }

    /// Every process below `root`, from the parent ids in /proc/*/stat.
    static func descendants(of root: pid_t) -> [pid_t] {
        var children: [pid_t: [pid_t]] = [:]
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = pid_t(entry), let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
                  let end = stat.range(of: ")", options: .backwards)
            else { continue }
            // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            let fields = stat[end.upperBound...].split(separator: " ")
            if fields.count > 1, let parent = pid_t(fields[1]) { children[parent, default: []].append(pid) }
        }
        var result: [pid_t] = [], pending = [root]
        while let next = pending.popLast() {
            let found = children[next] ?? []
            result += found
            pending += found
        }
        return result
    }

    /// Signals the child's whole process group when it leads one, else the child.
    private static func signal(_ process: Process, _ signal: Int32) {
        let pid = process.processIdentifier
        if getpgid(pid) == pid {
            kill(-pid, signal)
        } else {
            kill(pid, signal)
        }
    }
}

/// Reads one pipe to its end on a thread of its own and keeps the bytes.
private final class PipeDrain: @unchecked Sendable {
    private let handle: FileHandle
    private let lock = NSLock()
    private var data = Data()
    private let done = DispatchSemaphore(value: 0)

    init(_ handle: FileHandle) { self.handle = handle }

    func start() {
        let thread = Thread { [self] in
            while true {
                let chunk = handle.availableData  // blocks; empty at EOF
                if chunk.isEmpty { break }
                lock.withLock { data.append(chunk) }
            }
            done.signal()
        }
        thread.start()
    }

    /// The text read so far, waiting up to `seconds` for EOF.
    func finish(within seconds: Double) -> String {
        _ = done.wait(timeout: .now() + seconds)
        return lock.withLock { String(decoding: data, as: UTF8.self) }
    }
}
