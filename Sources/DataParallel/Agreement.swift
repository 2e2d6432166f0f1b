import MPI

/// A failure that every rank agreed on: the lowest failing rank's cause.
public struct AgreedFailure: Error, CustomStringConvertible, Sendable {
    /// The rank whose failure is reported (the lowest that failed).
    public let rank: Int
    /// The communicator's size, to decide whether naming the rank helps.
    public let ranks: Int
    /// What went wrong, as the failing rank described it.
    public let message: String
    /// The process exit code every rank ends with.
    public let exitCode: Int32

    /// A failure of `rank` out of `ranks`, to end every rank with `exitCode`.
    public init(rank: Int, ranks: Int, message: String, exitCode: Int32) {
        self.rank = rank
        self.ranks = ranks
        self.message = message
        self.exitCode = exitCode
    }

    public var description: String { ranks > 1 ? "rank \(rank): \(message)" : message }
}

/// A local failure that carries the process exit code it should end with.
public protocol ExitCodeProviding: Error {
    /// The exit code of a process that ends with this error (sysexits-style: 64 usage, 65 bad input, ...).
    var exitCode: Int32 { get }
}

extension Communicator {
    /// Runs `body` on every rank and settles its outcome collectively.
    ///
    /// A condition only one rank can see (its slice is unreadable, a write
    /// fails) must not leave the others waiting in the next collective. Each
    /// rank runs `body`; then one allreduce finds the lowest failing rank,
    /// which broadcasts its exit code and message, and every rank throws the
    /// same `AgreedFailure`. This is a collective call: every rank must make it.
    /// An `MPIError` thrown by `body` is rethrown at once, unsettled.
    ///
    /// - Parameters:
    ///   - defaultExitCode: the code for errors that carry none.
    ///   - body: this rank's share of the work; what it throws is this rank's failure.
    public func agree<Result>(
        defaultExitCode: Int32 = 1, _ body: () throws -> Result
    ) throws -> Result {
        let outcome = Swift.Result { try body() }
        // An MPI call that failed inside `body` may have left the other
        // ranks inside that collective: another collective cannot settle it.
        // The caller ends the job (`Communicator.abort(code:)`).
        if case .failure(let error as MPIError) = outcome { throw error }
        let localFailure: (message: String, code: Int32)? = switch outcome {
        case .success: nil
        case .failure(let error):
            (String(describing: error), (error as? ExitCodeProviding)?.exitCode ?? defaultExitCode)
        }
        let failingRank = try allreduce(localFailure == nil ? Int64.max : Int64(rank), .min)
        if failingRank == Int64.max { return try outcome.get() }
        let root = Int(failingRank)
        let (message, code) = try broadcast(localFailure ?? ("", 0), root: root)
        throw AgreedFailure(rank: root, ranks: size, message: message, exitCode: code)
    }

    /// Sends the root's message and code to every rank: length and code
    /// first, so the receivers can size their buffer, then the UTF-8 bytes.
    private func broadcast(_ failure: (message: String, code: Int32), root: Int) throws -> (String, Int32) {
        var bytes = Array(failure.message.utf8)
        var header: [Int64] = [Int64(bytes.count), Int64(failure.code)]
        try header.withUnsafeMutableBufferPointer { try broadcast($0, root: root) }
        if rank != root { bytes = Array(repeating: 0, count: Int(header[0])) }
        try bytes.withUnsafeMutableBufferPointer { try broadcast($0, root: root) }
        return (String(decoding: bytes, as: UTF8.self), Int32(header[1]))
    }
}
