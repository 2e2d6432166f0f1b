import Glibc
import NPY
import Testing

/// A file the reader must refuse, and words its message must contain.
struct Refusal: CustomTestStringConvertible, Sendable {
    var name: String
    var bytes: [UInt8]
    var keywords: [String]
    var testDescription: String { name }

    /// A well-formed v1.0 file whose dictionary is `dictionary` and whose data
    /// is `dataBytes` long: 8 bytes fit the default float32 shape (2,).
    init(_ name: String, dictionary: String, dataBytes: Int = 8, _ keywords: String...) {
        self.init(name, bytes: npyFile(dictionary: dictionary, data: Array(repeating: 0, count: dataBytes)), keywords)
    }

    init(_ name: String, bytes: [UInt8], _ keywords: [String]) {
        self.name = name
        self.bytes = bytes
        self.keywords = keywords
    }
}

private let supported = "supported: '<f2' (float16), '<f4' (float32), '<f8' (float64)"

/// Everything about the first bytes: magic, version, header length.
private let preambleRefusals: [Refusal] = [
    Refusal("empty file", bytes: [], ["empty"]),
    Refusal("shorter than the magic", bytes: [0x93, 0x4E, 0x55], ["3 bytes", "too short"]),
    Refusal("shorter than the length field", bytes: Array(npyFile(dictionary: "").prefix(9)), ["9 bytes", "too short"]),
    Refusal("not .npy", bytes: Array("PK\u{3}\u{4} a zip archive, not an array".utf8), ["not a .npy file", "magic string"]),
    Refusal("version 4.0", bytes: npyFile(version: (4, 0), dictionary: numpyDictionary(), data: Array(repeating: 0, count: 8)),
            ["unsupported .npy format version 4.0; supported: 1.0, 2.0, 3.0"]),
    Refusal("version 1.1", bytes: npyFile(version: (1, 1), dictionary: numpyDictionary(), data: Array(repeating: 0, count: 8)),
            ["version 1.1"]),
    Refusal("header length beyond the cap", bytes: npyFile(version: (2, 0), dictionary: numpyDictionary(), headerLength: 0x7FFF_FFFF),
            ["header length 2147483647", "limit of 1048576"]),
    Refusal("header length beyond the file", bytes: npyFile(dictionary: numpyDictionary(), headerLength: 1000),
            ["claims 1010 bytes", "truncated"]),
]

/// Dictionaries that are not a Python literal numpy could have written.
private let syntaxRefusals: [Refusal] = [
    Refusal("not a dictionary", dictionary: "['descr', '<f4']", "malformed at byte 0", "expected '{'"),
    Refusal("unterminated string", dictionary: "{'descr': '<f4}", "unterminated string"),
    Refusal("missing colon", dictionary: "{'descr' '<f4', 'fortran_order': False, 'shape': (2,)}", "expected ':' after the key 'descr'"),
    Refusal("missing comma", dictionary: "{'descr': '<f4' 'fortran_order': False, 'shape': (2,)}", "expected ',' or '}'"),
    Refusal("text after the dictionary", dictionary: numpyDictionary() + " x", "unexpected text after the dictionary"),
    Refusal("unclosed dictionary", dictionary: "{'descr': '<f4', ", "expected a value"),
    Refusal("lowercase false", dictionary: numpyDictionary(fortranOrder: "false"), "unknown name 'false'"),
    Refusal("non-string key", dictionary: "{1: '<f4'}", "expected a quoted key"),
    Refusal("deep nesting", dictionary: numpyDictionary(shape: String(repeating: "(", count: 5000)), "nested deeper than 8"),
    Refusal("control bytes", dictionary: "{'descr\u{1}': '<f4'}", "unknown key 'descr\\x01'"),
]

/// Well-formed dictionaries with the wrong keys or values.
private let contentRefusals: [Refusal] = [
    Refusal("unknown key", dictionary: "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'order': 'C'}",
            "unknown key 'order'", "'descr', 'fortran_order', 'shape'"),
    Refusal("missing key", dictionary: "{'descr': '<f4', 'fortran_order': False}", "missing the key 'shape'"),
    Refusal("duplicate key", dictionary: "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2,)}",
            "key 'descr' more than once"),
    Refusal("big-endian", dictionary: numpyDictionary(descr: "'>f4'"), "dtype '>f4' (big-endian float32) is not supported", supported),
    Refusal("native order", dictionary: numpyDictionary(descr: "'=f8'"), "dtype '=f8' (native-order float64) is not supported"),
    Refusal("int32", dictionary: numpyDictionary(descr: "'<i4'"), "dtype '<i4' (int32) is not supported", supported),
    Refusal("big-endian float16", dictionary: numpyDictionary(descr: "'>f2'"), "dtype '>f2' (big-endian float16)", supported),
    Refusal("uint8", dictionary: numpyDictionary(descr: "'|u1'"), "dtype '|u1' (uint8)"),
    Refusal("complex64", dictionary: numpyDictionary(descr: "'<c8'"), "dtype '<c8' (complex64)"),
    Refusal("bool", dictionary: numpyDictionary(descr: "'|b1'"), "dtype '|b1' (bool)"),
    Refusal("gibberish dtype", dictionary: numpyDictionary(descr: "'hello'"), "dtype 'hello' is not supported"),
    Refusal("structured", dictionary: numpyDictionary(descr: "[('x', '<f4'), ('y', '<f4')]"),
            "structured dtype [('x', '<f4'), ('y', '<f4')] is not supported", supported),
    Refusal("descr not a string", dictionary: numpyDictionary(descr: "4"), "'descr' must be a dtype string"),
    Refusal("Fortran order", dictionary: numpyDictionary(fortranOrder: "True"),
            "Fortran order is not supported; save with C order (np.ascontiguousarray)"),
    Refusal("fortran_order not a bool", dictionary: numpyDictionary(fortranOrder: "1"), "'fortran_order' must be True or False, not 1"),
    Refusal("negative dimension", dictionary: numpyDictionary(shape: "(2, -3)"), "negative dimension -3"),
    Refusal("fractional dimension", dictionary: numpyDictionary(shape: "(2.5,)"), "dimension 2.5 is not an integer"),
    Refusal("dimension beyond Int", dictionary: numpyDictionary(shape: "(99999999999999999999,)"),
            "dimension 99999999999999999999 is too large"),
    Refusal("element count beyond Int", dictionary: numpyDictionary(shape: "(4294967296, 4294967296)"), "more elements than Int"),
    Refusal("byte count beyond Int", dictionary: numpyDictionary(descr: "'<f8'", shape: "(1152921504606846976,)"),
            "of float64 describes more bytes"),
    Refusal("shape as a list", dictionary: numpyDictionary(shape: "[2]"), "'shape' must be a tuple", "not [2]"),
    Refusal("shape in parentheses only", dictionary: numpyDictionary(shape: "(2)"), "'shape' must be a tuple", "not (2)"),
    Refusal("65 dimensions", dictionary: numpyDictionary(shape: "(" + String(repeating: "1, ", count: 65) + ")"),
            "65 dimensions", "at most 64"),
]

/// Headers that do not describe the file's size.
private let sizeRefusals: [Refusal] = [
    Refusal("truncated data", dictionary: numpyDictionary(shape: "(1024,)"), dataBytes: 100,
            "file is 228 bytes but its header describes 4096 bytes of data at offset 128; the file is truncated"),
    Refusal("trailing bytes", dictionary: numpyDictionary(), dataBytes: 11, "3 trailing bytes follow the data"),
]

@Suite struct RefusalTests {
    @Test(arguments: preambleRefusals + syntaxRefusals + contentRefusals + sizeRefusals)
    func refuses(_ refusal: Refusal) throws {
        try withScratchDirectory { directory in
            let path = try directory.write(refusal.bytes, to: "refused.npy")
            expectRefusal(of: path, mentioning: refusal.keywords) { _ = try NPYReader(path: path) }
            // The same verdict without the file system, from the parser alone.
            expectRefusal(of: "bytes.npy", mentioning: refusal.keywords) {
                _ = try NPYHeader.parse(refusal.bytes, fileSize: refusal.bytes.count, path: "bytes.npy")
            }
        }
    }

    @Test func missingFile() throws {
        try withScratchDirectory { directory in
            let path = directory.file("absent.npy")
            expectRefusal(of: path, mentioning: ["cannot open for reading", "No such file or directory"]) {
                _ = try NPYReader(path: path)
            }
        }
    }

    @Test func directory() throws {
        try withScratchDirectory { directory in
            expectRefusal(of: directory.path, mentioning: ["not a regular file", "directory"]) {
                _ = try NPYReader(path: directory.path)
            }
        }
    }

    /// A FIFO would block a plain open() until a writer appeared; the reader
    /// must refuse it at once instead.
    @Test(.timeLimit(.minutes(1))) func fifoIsRefusedWithoutBlocking() throws {
        try withScratchDirectory { directory in
            let path = directory.file("pipe.npy")
            try #require(mkfifo(path, 0o600) == 0)
            expectRefusal(of: path, mentioning: ["not a regular file", "FIFO"]) { _ = try NPYReader(path: path) }
        }
    }
}
