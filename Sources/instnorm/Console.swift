import Foundation

/// Line-at-a-time output. Under mpirun stdout is a pipe and fully buffered:
/// a line still in the buffer is lost when a rank dies, so every line is
/// written through at once.
enum Console {
    static func output(_ line: String) {
        FileHandle.standardOutput.write(Data((line + "\n").utf8))
    }

    static func error(_ line: String) {
        FileHandle.standardError.write(Data((line + "\n").utf8))
    }
}
