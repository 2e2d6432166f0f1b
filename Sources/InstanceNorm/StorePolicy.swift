#if canImport(Glibc)
import Glibc
#endif

/// How the kernels write their outputs.
///
/// A streaming (non-temporal) store skips the read that an ordinary store
/// makes of every cache line it writes (read for ownership), so an output
/// far larger than the last-level cache moves a third fewer bytes; but it
/// also evicts the output from the cache, which costs more than it saves
/// when the output would have stayed there. Both give the same bits.
public enum StorePolicy: Sendable, Equatable {
    /// Stream exactly the outputs larger than the last-level cache.
    case automatic
    /// Ordinary stores.
    case cached
    /// Streaming stores.
    case streaming

    /// Under `.automatic`, a call streams its output when the tensors it
    /// touches (inputs and output) hold more bytes than this: the last-level
    /// cache size read from sysfs, 32 MiB when it cannot be read. Past that
    /// the output is evicted before anyone reads it again anyway.
    public static let streamingThreshold: Int = lastLevelCacheBytes() ?? 32 << 20

    /// - Parameter tensors: how many tensors of the output's size the call
    ///   reads and writes (2 for the forward, 3 for the backward).
    @inlinable
    func streams<T>(_ output: UnsafeMutableBufferPointer<T>, tensors: Int) -> Bool {
        switch self {
        case .automatic: tensors * output.count * MemoryLayout<T>.stride > Self.streamingThreshold
        case .cached: false
        case .streaming: true
        }
    }

    /// The largest cache of CPU 0, from /sys/devices/system/cpu/cpu0/cache.
    public static func lastLevelCacheBytes() -> Int? {
        (0..<8).compactMap { index -> Int? in
            guard let text = readFirstLine("/sys/devices/system/cpu/cpu0/cache/index\(index)/size") else { return nil }
            let multiplier = text.hasSuffix("K") ? 1 << 10 : text.hasSuffix("M") ? 1 << 20 : 1
            return Int(text.filter(\.isNumber)).map { $0 * multiplier }
        }.max()
    }

    private static func readFirstLine(_ path: String) -> String? {
        guard let file = fopen(path, "r") else { return nil }
        defer { fclose(file) }
        var buffer = [CChar](repeating: 0, count: 64)
        guard fgets(&buffer, Int32(buffer.count), file) != nil else { return nil }
        let line = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return line.split(whereSeparator: \.isWhitespace).first.map(String.init)
    }
}
