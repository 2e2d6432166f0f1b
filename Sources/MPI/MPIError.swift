import CMPI

/// A failed MPI call, as a thrown Swift error.
///
/// Every communicator this module hands out returns error codes instead of
/// aborting (`MPI_ERRORS_RETURN`), so a failed call reaches Swift as this
/// error. The other ranks may still be waiting in the same collective: unless
/// every rank is known to have failed alike, end the job with
/// `Communicator.abort(code:)` instead of returning.
public struct MPIError: Error, CustomStringConvertible, Sendable {
    /// The MPI function that failed, for example `"MPI_Allreduce"`.
    public let call: String
    /// The MPI error code (`MPI_ERR_*`).
    public let code: Int32
    /// `MPI_Error_string` of `code`; when this module refused the arguments
    /// before calling MPI, followed by the reason.
    public let message: String

    /// A failure of `call` with MPI error `code`, described by `message`.
    public init(call: String, code: Int32, message: String) {
        self.call = call
        self.code = code
        self.message = message
    }

    /// `"MPI_Allreduce failed: MPI_ERR_COUNT: invalid count argument (code 2)"`.
    public var description: String { "\(call) failed: \(message) (code \(code))" }
}

extension MPIError {
    /// Arguments refused before `call` reached MPI, reported with the MPI
    /// error class that fits (`MPI_ERR_COUNT`, ...) so callers see one kind of
    /// error whichever side found the problem.
    static func refused(_ call: String, _ code: Int32, _ reason: String) -> MPIError {
        MPIError(call: call, code: code, message: "\(errorString(code)): \(reason)")
    }
}

/// Throws an `MPIError` naming `call` and carrying `MPI_Error_string(code)`,
/// unless `code` is `MPI_SUCCESS`. Every MPI return code goes through here.
func check(_ code: Int32, _ call: String) throws {
    guard code != MPI_SUCCESS else { return }
    throw MPIError(call: call, code: code, message: errorString(code))
}

/// The text MPI gives for an error code, or a plain fallback when MPI does
/// not know the code.
func errorString(_ code: Int32) -> String {
    var text = [CChar](repeating: 0, count: Int(MPI_MAX_ERROR_STRING))
    var length: Int32 = 0
    guard MPI_Error_string(code, &text, &length) == MPI_SUCCESS else {
        return "unknown MPI error code \(code)"
    }
    return string(fromC: text, length: Int(length))
}

/// `count` as the `Int32` that MPI takes.
///
/// MPI counts are C `int`; a larger Swift `Int` would be truncated, so it is
/// refused with a thrown error naming `call` rather than a trap.
func mpiCount(_ count: Int, _ call: String, what: String = "count") throws -> Int32 {
    guard let mpiCount = Int32(exactly: count), mpiCount >= 0 else {
        throw MPIError.refused(call, MPI_ERR_COUNT,
            "\(what) \(count) is outside 0...\(Int32.max), the range of an MPI count")
    }
    return mpiCount
}

/// The first `length` bytes of a C character buffer, decoded as UTF-8.
func string(fromC characters: [CChar], length: Int) -> String {
    // Open MPI counts the terminating NUL in some lengths: stop at the first.
    let bytes = characters.prefix(max(0, min(length, characters.count)))
        .prefix { $0 != 0 }
        .map { UInt8(bitPattern: $0) }
    return String(decoding: bytes, as: UTF8.self)
}
