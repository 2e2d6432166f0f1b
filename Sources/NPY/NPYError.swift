import Glibc

/// Why a `.npy` file was refused or an I/O call on it failed.
///
/// The message always names the file, says what is wrong and, where there is
/// one, what to do about it: the user of a batch job sees only this line.
public struct NPYError: Error, CustomStringConvertible, Equatable, Sendable {
    /// The file concerned, as the caller named it.
    public let path: String
    /// What is wrong with it, without the path.
    public let problem: String

    /// An error about the file at `path`.
    public init(path: String, problem: String) {
        self.path = path
        self.problem = problem
    }

    /// `"data/x.npy: Fortran order is not supported; ..."`.
    public var description: String { "\(path): \(problem)" }
}

extension NPYError {
    /// A failed system call, with errno's text so the user reads
    /// "Permission denied" rather than a number.
    static func system(path: String, _ action: String, errno code: Int32) -> NPYError {
        NPYError(path: path, problem: "\(action): \(String(cString: strerror(code))) (errno \(code))")
    }
}

/// `text` made safe to quote in a one-line message: bytes outside printable
/// ASCII become `\xNN`, and anything past `limit` characters becomes "…",
/// because the text may come from a hostile file of any length.
func printable(_ text: String, limit: Int = 60) -> String {
    var result = ""
    for scalar in text.unicodeScalars.prefix(limit) {
        if (0x20...0x7E).contains(scalar.value) {
            result.unicodeScalars.append(scalar)
        } else {
            let hex = String(scalar.value, radix: 16)
            result += scalar.value < 0x100 ? "\\x" + String(repeating: "0", count: 2 - hex.count) + hex : "\\u{\(hex)}"
        }
    }
    return text.unicodeScalars.count > limit ? result + "…" : result
}

/// Bytes read as latin-1, the encoding of format 1.0 and 2.0 headers: every
/// byte is one character, so no input can fail to decode.
func latin1(_ bytes: some Sequence<UInt8>) -> String {
    String(String.UnicodeScalarView(bytes.map(Unicode.Scalar.init)))
}
