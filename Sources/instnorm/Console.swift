#if canImport(Glibc)
import Glibc
#endif

/// Line-at-a-time output. Under mpirun stdout is a pipe and fully buffered:
/// a line still in the buffer is lost when a rank dies, so every line is
/// written through at once, with write(2).
enum Console {
    static func output(_ line: String) { write(line + "\n", to: STDOUT_FILENO) }
    static func error(_ line: String) { write(line + "\n", to: STDERR_FILENO) }

    private static func write(_ text: String, to descriptor: Int32) {
        var bytes = Array(text.utf8)[...]
        while !bytes.isEmpty {
            let written = bytes.withUnsafeBytes { Glibc.write(descriptor, $0.baseAddress, $0.count) }
            if written < 0 && errno == EINTR { continue }
            guard written > 0 else { return }
            bytes = bytes.dropFirst(written)
        }
    }
}

/// `value` with exactly `decimals` digits after the point, as printf's %.Nf
/// (the tool does without Foundation: it costs 10 MB of resident memory).
func fixed(_ value: Double, _ decimals: Int) -> String {
    guard value.isFinite, abs(value) < 1e15 else { return "\(value)" }
    let scale = (0..<decimals).reduce(1) { product, _ in product * 10 }
    let units = Int((abs(value) * Double(scale)).rounded())
    let sign = value < 0 && units != 0 ? "-" : ""
    guard decimals > 0 else { return sign + String(units) }
    let fraction = String(units % scale)
    return sign + String(units / scale) + "." + String(repeating: "0", count: decimals - fraction.count) + fraction
}

/// `text` padded with spaces on the left to `width` characters.
func rightAligned(_ text: String, _ width: Int) -> String {
    String(repeating: " ", count: max(0, width - text.count)) + text
}

func errnoText() -> String { String(cString: strerror(errno)) }
