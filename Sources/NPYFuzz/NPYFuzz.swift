#if canImport(Glibc)
import Glibc
#endif
import NPY
import _FuzzShims

/// The `.npy` header parser under libFuzzer, or, built without it, a replay
/// of saved inputs through the same checks.
///
///     scripts/fuzz [SECONDS]                         # builds with -sanitize=fuzzer,address -DFUZZING, runs
///     .build/debug/NPYFuzz Fuzz/seeds crash-1234     # replays files and directories
///
/// Every input is a file's first bytes. The parser must return a header or
/// throw an `NPYError` naming the file; anything else (a trap, an overflow,
/// an out-of-bounds access under AddressSanitizer, a hang, a huge
/// allocation) is a finding: add its bytes to Tests/NPYTests/FuzzRegressionTests.swift.
@main
enum NPYFuzz {
    static func main() {
        #if FUZZING
        // libFuzzer's own main may be linked in its place; either way the
        // driver gets the command line.
        var argc = CommandLine.argc
        var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
        exit(LLVMFuzzerRunDriver(&argc, &argv, fuzzerTestOneInput))
        #else
        var count = 0
        for path in CommandLine.arguments.dropFirst() {
            for file in files(at: path) {
                check(contents(of: file))
                count += 1
            }
        }
        print("NPYFuzz: \(count) input(s) replayed, every one parsed or refused")
        #endif
    }

    /// The checks, for one input.
    static func check(_ bytes: [UInt8]) {
        let path = "fuzz.npy"
        // The file is exactly these bytes.
        do {
            let header = try NPYHeader.parse(bytes, fileSize: bytes.count, path: path)
            precondition(header.fileByteCount == bytes.count, "a header that does not describe its file was accepted")
            precondition(header.shape.allSatisfy { $0 >= 0 } && header.shape.count <= 64)
            // What the writer makes of the same dtype and shape reads back alike.
            let encoded = NPYHeader(dtype: header.dtype, shape: header.shape)
            let reparsed = try NPYHeader.parse(encoded.encoded(), fileSize: encoded.fileByteCount, path: path)
            precondition(reparsed == encoded, "the writer's header does not read back")
            readThroughFile(bytes, header: header)
        } catch {
            refused(error, path: path)
        }
        // The file is longer than these bytes (the reader reads the preamble
        // first, then the header): sizes far beyond the input must be refused
        // or accepted without arithmetic overflow.
        for fileSize in [bytes.count + 1, bytes.count + (1 << 40), Int.max - 1] {
            do {
                let offset = try NPYHeader.dataOffset(preamble: Array(bytes.prefix(12)), fileSize: fileSize, path: path)
                precondition(offset >= 10 && offset <= fileSize)
                let header = try NPYHeader.parse(bytes, fileSize: fileSize, path: path)
                precondition(header.fileByteCount == fileSize && header.dataOffset == offset)
            } catch {
                refused(error, path: path)
            }
        }
    }

    static func refused(_ error: NPYError, path: String) {
        precondition(error.path == path && !error.problem.isEmpty && error.description.hasPrefix(path + ": "))
    }

    /// An accepted file through `NPYReader`, from an in-memory file: the
    /// same verdict, and every element readable.
    static func readThroughFile(_ bytes: [UInt8], header: NPYHeader) {
        let descriptor = memfd_create("npy-fuzz", 0)
        precondition(descriptor >= 0, "memfd_create failed")
        defer { close(descriptor) }
        let written = bytes.withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
        precondition(written == bytes.count)
        do {
            let reader = try NPYReader(path: "/proc/self/fd/\(descriptor)")
            precondition(reader.header == header, "the reader and the parser disagree")
            let count = switch header.dtype {
            case .float16: try reader.readAll(as: Float16.self).count
            case .float32: try reader.readAll(as: Float.self).count
            case .float64: try reader.readAll(as: Double.self).count
            }
            precondition(count == header.elementCount)
        } catch {
            preconditionFailure("the reader refused what the parser accepted: \(error)")
        }
    }

    #if !FUZZING
    /// `path` itself, or the regular files directly inside it.
    static func files(at path: String) -> [String] {
        guard let directory = opendir(path) else { return [path] }
        defer { closedir(directory) }
        var names: [String] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
            if !name.hasPrefix(".") { names.append(path + "/" + name) }
        }
        return names.sorted()
    }

    static func contents(of path: String) -> [UInt8] {
        guard let file = fopen(path, "rb") else { fatalError("cannot open \(path): \(String(cString: strerror(errno)))") }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = fread(&buffer, 1, buffer.count, file)
            if count == 0 { break }
            bytes += buffer[..<count]
        }
        return bytes
    }
    #endif
}

/// libFuzzer's entry point: one input.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    NPYFuzz.check(size == 0 ? [] : Array(UnsafeBufferPointer(start: data, count: size)))
    return 0
}
