import Foundation
import NPY
import TestSupport
import Testing

/// A fresh directory under the system's temporary folder, removed afterwards.
func withTemporaryDirectory<R>(_ body: (String) async throws -> R) async throws -> R {
    let path = FileManager.default.temporaryDirectory
        .appendingPathComponent("instnorm-tests-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
    defer { try? FileManager.default.removeItem(atPath: path) }
    return try await body(path)
}

/// Every entry of a directory (hidden ones too) with its bytes; nil for a
/// missing path. Two snapshots are equal when nothing was added, removed or
/// changed.
struct DirectorySnapshot: Equatable, CustomStringConvertible {
    /// name → bytes; a subdirectory maps to nil.
    let entries: [String: Data?]

    init?(_ path: String) {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue,
              let names = try? FileManager.default.contentsOfDirectory(atPath: path)
        else { return nil }
        var entries: [String: Data?] = [:]
        for name in names {
            entries[name] = FileManager.default.contents(atPath: path + "/" + name)
        }
        self.entries = entries
    }

    var names: [String] { entries.keys.sorted() }

    var description: String {
        names.map { "\($0) (\(entries[$0]!.map { "\($0.count) bytes" } ?? "directory"))" }.joined(separator: ", ")
    }
}

/// The bytes of a file (nil if it cannot be read).
func bytes(_ path: String) -> Data? { FileManager.default.contents(atPath: path) }

/// x (mean 1, deviation 2), dy, γ (mean 1) and β in float32, drawn from
/// `seed` in that order, as x.npy, dy.npy, g.npy and b.npy in `folder`.
func writeNormInputs(into folder: String, dimensions: [Int], parameters: [Int], seed: UInt64) throws {
    var generator = SeededGenerator(seed: seed)
    let count = dimensions.reduce(1, *), parameterCount = parameters.reduce(1, *)
    try NPY.write(folder + "/x.npy", shape: dimensions, values: generator.normals(count, mean: 1, deviation: 2).map { Float($0) })
    try NPY.write(folder + "/dy.npy", shape: dimensions, values: generator.normals(count).map { Float($0) })
    try NPY.write(folder + "/g.npy", shape: parameters, values: generator.normals(parameterCount, mean: 1).map { Float($0) })
    try NPY.write(folder + "/b.npy", shape: parameters, values: generator.normals(parameterCount).map { Float($0) })
}

/// A .npy file with dtype '<i4' (int32), written by hand since `NPY` writes
/// floats only: magic, version 1.0, header length, header dict padded with
/// spaces to a multiple of 64 and ended by a newline, then the data.
func writeInt32NPY(_ path: String, shape: [Int]) throws {
    let shapeText = shape.count == 1 ? "(\(shape[0]),)" : "(" + shape.map(String.init).joined(separator: ", ") + ")"
    var header = "{'descr': '<i4', 'fortran_order': False, 'shape': \(shapeText), }"
    let preamble = 10
    let padded = (preamble + header.utf8.count + 1 + 63) / 64 * 64
    header += String(repeating: " ", count: padded - preamble - header.utf8.count - 1) + "\n"
    var data = Data([0x93] + Array("NUMPY".utf8) + [1, 0])
    data.append(contentsOf: [UInt8(header.utf8.count & 0xFF), UInt8(header.utf8.count >> 8)])
    data.append(contentsOf: Array(header.utf8))
    for index in 0..<shape.reduce(1, *) {
        withUnsafeBytes(of: Int32(index).littleEndian) { data.append(contentsOf: $0) }
    }
    try data.write(to: URL(fileURLWithPath: path))
}

/// Cuts the last `count` bytes off a file.
func truncate(_ path: String, droppingLast count: Int) throws {
    let data = try #require(bytes(path))
    try data.prefix(data.count - count).write(to: URL(fileURLWithPath: path))
}

/// Random inputs for one `apply` run, rounded to T, written as .npy files
/// into a folder, with the same values in Double for the reference.
struct ApplyInputs<T: NPYElement> {
    let dimensions: [Int]
    let x, dy, gamma, beta, runningMean, runningVar: [T]

    var batch: Int { dimensions[0] }
    var channels: Int { dimensions[1] }
    var spatialCount: Int { dimensions.dropFirst(2).reduce(1, *) }

    init(_ dimensions: [Int], seed: UInt64) {
        self.dimensions = dimensions
        var generator = SeededGenerator(seed: seed)
        let count = dimensions.reduce(1, *), channels = dimensions[1]
        // An offset and a spread per channel, so instances differ.
        let spatialCount = dimensions.dropFirst(2).reduce(1, *)
        let noise = generator.normals(count)
        x = noise.indices.map { index in
            let channel = Double((index / spatialCount) % channels)
            return T(channel - 1 + (1 + channel / 2) * noise[index])
        }
        dy = generator.normals(count).map { T($0) }
        gamma = generator.normals(channels, mean: 1, deviation: 0.5).map { T($0) }
        beta = generator.normals(channels, deviation: 0.5).map { T($0) }
        runningMean = generator.normals(channels, deviation: 0.5).map { T($0) }
        runningVar = generator.normals(channels).map { T(0.5 + abs($0)) }
    }

    var wide: (x: [Double], dy: [Double], gamma: [Double], beta: [Double], runningMean: [Double], runningVar: [Double]) {
        (x.map(Double.init), dy.map(Double.init), gamma.map(Double.init), beta.map(Double.init),
         runningMean.map(Double.init), runningVar.map(Double.init))
    }

    /// Writes x.npy, dy.npy, gamma.npy, beta.npy, rm.npy, rv.npy into `folder`.
    func write(into folder: String) throws {
        try NPY.write(folder + "/x.npy", shape: dimensions, values: x)
        try NPY.write(folder + "/dy.npy", shape: dimensions, values: dy)
        try NPY.write(folder + "/gamma.npy", shape: [channels], values: gamma)
        try NPY.write(folder + "/beta.npy", shape: [channels], values: beta)
        try NPY.write(folder + "/rm.npy", shape: [channels], values: runningMean)
        try NPY.write(folder + "/rv.npy", shape: [channels], values: runningVar)
    }

    /// The arguments of a full training run: affine, backward, running statistics.
    static func trainingArguments(inputs folder: String, output: String, eps: Double, momentum: Double) -> [String] {
        [
            "--input", folder + "/x.npy", "--grad", folder + "/dy.npy",
            "--weight", folder + "/gamma.npy", "--bias", folder + "/beta.npy",
            "--running-mean", folder + "/rm.npy", "--running-var", folder + "/rv.npy",
            "--eps", String(eps), "--momentum", String(momentum), "--output", output,
        ]
    }
}

/// Reads an output and checks its shape.
func readOutput<T: NPYElement>(
    _ path: String, as _: T.Type, shape: [Int], sourceLocation: SourceLocation = #_sourceLocation
) throws -> [T] {
    let (fileShape, values) = try NPY.read(path, as: T.self)
    try #require(fileShape == shape, "\(path): shape \(fileShape), expected \(shape)", sourceLocation: sourceLocation)
    return values
}
