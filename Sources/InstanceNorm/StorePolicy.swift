#if canImport(Glibc)
import Glibc
#endif

/// How the kernels write their outputs.
///
/// A streaming (non-temporal) store skips the read that an ordinary store
/// makes of every cache line it writes (read for ownership), so an output
/// far larger than the last-level cache moves a third fewer bytes; but it
/// also evicts the output from the cache, which costs more than it saves
/// when the output would have stayed there. Both give the same bits. The
/// kernels of small instances write their per-instance statistics and
/// sums as they write the tensors (`streamsTable`).
public enum StorePolicy: Sendable, Equatable {
    /// Stream exactly the outputs larger than the last-level cache.
    case automatic
    /// Ordinary stores.
    case cached
    /// Streaming stores.
    case streaming
    /// What `.automatic` decides for a call whose tensors exceed the
    /// last-level cache, whatever the size of this one: streaming stores,
    /// but for outputs written in runs under `shortRunBytes`. For a caller
    /// that cuts one large call into smaller ones (`forSlices(of:tensors:)`).
    case pastCache

    /// Under `.automatic`, a call streams its output when the tensors it
    /// touches (inputs and output) hold more bytes than this: the last-level
    /// cache size read from sysfs, but at most `cacheShareLimit` (and that
    /// when it cannot be read). Past that the output is evicted before
    /// anyone reads it again anyway.
    public static let streamingThreshold: Int = min(lastLevelCacheBytes() ?? cacheShareLimit, cacheShareLimit)

    /// The most cache a call counts on keeping its tensors in, whatever
    /// sysfs reports: 32 MiB. A virtual machine of a few cores on a large
    /// server sees the whole shared L3 (300 MiB on a 2-vCPU Intel Xeon
    /// slice) but holds a small part of it: there InstanceNorm on
    /// (32,64,56,56) float32, 26 MB per tensor, ran 1.4× faster forward and
    /// 1.6× backward with streamed outputs than with cached ones, and on
    /// (128,64,56,56) 1.6× and 1.7×, while at 13 MB per tensor the two
    /// were level (forward 1.14× faster cached, backward 1.05× slower).
    public static let cacheShareLimit = 32 << 20

    /// Under `.automatic`, outputs written in runs shorter than this (an
    /// instance, a group's or a row's values, each with its own constants)
    /// take ordinary stores whatever their size. Such a run rarely starts
    /// on a 64-byte line: the lines it shares with its neighbours take
    /// ordinary stores between the streamed ones, and a few of those per
    /// kilobyte of streamed lines cost more than the reads they save. On
    /// the bench machine (one thread, float32, 3 alternating rounds), with
    /// tensors of 26-205 MB, streamed / ordinary time of the forward and
    /// backward: M = 196 (784 B) 2.3 / 1.8, M = 324 1.5 / 1.2, M = 484 1.4 /
    /// 1.05, M = 729 1.13 / 0.85, M = 900 0.85 / 0.88, M = 3025 0.74 / 0.79.
    public static let shortRunBytes = 2 << 10

    /// The policy for calls over slices of `output`, decided as for one
    /// call over all of it: `.automatic` becomes `.pastCache` or `.cached`.
    public func forSlices<T>(of output: UnsafeMutableBufferPointer<T>, tensors: Int) -> StorePolicy {
        guard self == .automatic else { return self }
        return streams(output, tensors: tensors) ? .pastCache : .cached
    }

    /// - Parameters:
    ///   - tensors: how many tensors of the output's size the call reads
    ///     and writes (2 for the forward, 3 for the backward).
    ///   - run: the values the output is written in runs of, each with its
    ///     own constants (see `shortRunBytes`).
    @inlinable
    func streams<T>(_ output: UnsafeMutableBufferPointer<T>, tensors: Int, runsOf run: Int) -> Bool {
        switch self {
        case .automatic, .pastCache:
            streams(output, tensors: tensors) && run * MemoryLayout<T>.stride >= Self.shortRunBytes
        case .cached, .streaming: streams(output, tensors: tensors)
        }
    }

    /// Whether a kernel that writes long runs whatever the shape streams.
    ///
    /// - Parameter tensors: how many tensors of the output's size the call
    ///   reads and writes (2 for the forward, 3 for the backward).
    @inlinable
    func streams<T>(_ output: UnsafeMutableBufferPointer<T>, tensors: Int) -> Bool {
        switch self {
        case .automatic: tensors * output.count * MemoryLayout<T>.stride > Self.streamingThreshold
        case .cached: false
        case .streaming, .pastCache: true
        }
    }

    /// The largest cache of CPU 0, from /sys/devices/system/cpu/cpu0/cache.
    public static func lastLevelCacheBytes() -> Int? {
        (0..<8).compactMap { cacheBytes(index: $0) }.max()
    }

    /// CPU 0's level-1 data cache, from the same place.
    public static func levelOneDataCacheBytes() -> Int? { cacheBytes(level: "1", types: ["Data"]) }

    private static func cacheBytes(level: String, types: Set<String>) -> Int? {
        (0..<8).first { index in
            readFirstLine("/sys/devices/system/cpu/cpu0/cache/index\(index)/level") == level
                && readFirstLine("/sys/devices/system/cpu/cpu0/cache/index\(index)/type").map(types.contains) == true
        }.flatMap { cacheBytes(index: $0) }
    }

    private static func cacheBytes(index: Int) -> Int? {
        guard let text = readFirstLine("/sys/devices/system/cpu/cpu0/cache/index\(index)/size") else { return nil }
        let multiplier = text.hasSuffix("K") ? 1 << 10 : text.hasSuffix("M") ? 1 << 20 : 1
        return Int(text.filter(\.isNumber)).map { $0 * multiplier }
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

/// Whether a kernel whose tensor outputs stream (`streaming`) writes its
/// per-instance table at `address` (statistics, s1 and s2) with streaming
/// stores too: on small instances the table is a large part of what is
/// written (24 of every 40 bytes of the forward's output at M = 4, float),
/// and an ordinary store reads each line from memory before it writes it.
/// The table must be 16-byte aligned (the stores go in pairs of doubles),
/// as the allocator's large blocks are; a table that is not takes
/// ordinary stores.
@inlinable @inline(__always)
func streamsTable(_ streaming: Bool, _ address: UnsafeMutablePointer<Double>) -> Bool {
    streaming && Int(bitPattern: address) & 15 == 0
}
