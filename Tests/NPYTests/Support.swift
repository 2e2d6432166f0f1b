import Foundation
import NPY
import Testing

/// A fresh directory for one test's files, removed when `body` returns.
func withScratchDirectory<R>(_ body: (ScratchDirectory) throws -> R) throws -> R {
    let directory = try ScratchDirectory()
    defer { try? FileManager.default.removeItem(atPath: directory.path) }
    return try body(directory)
}

struct ScratchDirectory {
    let path: String

    fileprivate init() throws {
        path = NSTemporaryDirectory() + "NPYTests-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
    }

    func file(_ name: String) -> String { path + "/" + name }

    /// Writes `bytes` to a file named `name` and returns its path.
    func write(_ bytes: [UInt8], to name: String) throws -> String {
        let path = file(name)
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        return path
    }
}

/// The size the file system reports, independently of `NPYReader`.
func fileSize(_ path: String) throws -> Int {
    let attributes = try FileManager.default.attributesOfItem(atPath: path)
    return (attributes[.size] as? NSNumber)?.intValue ?? -1
}

func fileExists(_ path: String) -> Bool {
    FileManager.default.fileExists(atPath: path)
}

/// A `.npy` file assembled byte by byte from numpy's format description,
/// independently of `NPYHeader.encoded()`, so the parser is checked against
/// the specification rather than against this module's own encoder.
///
/// - Parameters:
///   - version: the two version bytes; 1.x gets a 2-byte length field, any other major version 4.
///   - dictionary: the header text; with `aligned` it is padded with spaces
///     and a newline so the data starts at a multiple of 64, as numpy does.
///   - headerLength: overrides the length field, to make it lie.
func npyFile(
    version: (major: UInt8, minor: UInt8) = (1, 0), dictionary: String, aligned: Bool = true,
    headerLength: Int? = nil, data: [UInt8] = []
) -> [UInt8] {
    let lengthFieldSize = version.major == 1 ? 2 : 4
    let preambleLength = 8 + lengthFieldSize
    var header = Array(dictionary.utf8)
    if aligned {
        while (preambleLength + header.count + 1) % 64 != 0 { header.append(UInt8(ascii: " ")) }
        header.append(UInt8(ascii: "\n"))
    }
    let length = headerLength ?? header.count
    let lengthField = (0..<lengthFieldSize).map { UInt8(truncatingIfNeeded: length >> (8 * $0)) }
    return [0x93] + Array("NUMPY".utf8) + [version.major, version.minor] + lengthField + header + data
}

/// A header dictionary in numpy's own spelling, with any field replaceable
/// by other text to make one thing wrong at a time.
func numpyDictionary(descr: String = "'<f4'", fortranOrder: String = "False", shape: String = "(2,)") -> String {
    "{'descr': \(descr), 'fortran_order': \(fortranOrder), 'shape': \(shape), }"
}

/// The elements' bytes as stored in a file (little-endian, like the host).
func fileBytes<T: NPYElement>(_ values: [T]) -> [UInt8] {
    values.withUnsafeBytes { Array($0) }
}

/// Values that exercise every bit of the format: signs, fractions, zeros of
/// both signs, infinities, NaN and a subnormal, then a ramp. Compared as bytes
/// (`fileBytes`), so -0.0 and NaN payloads count.
func sampleValues<T: NPYElement>(_ count: Int, as type: T.Type = T.self) -> [T] {
    let special: [T] = [-0.0, .infinity, -.infinity, .nan, .leastNonzeroMagnitude, .greatestFiniteMagnitude]
    return (0..<count).map { $0 < special.count ? special[$0] : T($0) * 0.375 - 7 }
}

/// Checks that `body` throws an `NPYError` about `path` whose message names
/// the file and contains every one of `keywords`.
func expectRefusal(
    of path: String, mentioning keywords: [String],
    sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void
) {
    do {
        try body()
        Issue.record("expected a refusal mentioning \(keywords)", sourceLocation: sourceLocation)
    } catch let error as NPYError {
        #expect(error.path == path, sourceLocation: sourceLocation)
        #expect(error.description.hasPrefix("\(path): "), sourceLocation: sourceLocation)
        for keyword in keywords {
            #expect(error.problem.contains(keyword), "\(error) lacks \"\(keyword)\"", sourceLocation: sourceLocation)
        }
    } catch {
        Issue.record("expected an NPYError, got \(error)", sourceLocation: sourceLocation)
    }
}
