import DataParallel
import InstanceNorm
import MPI

/// `bench --checksum`: a checksum of every iteration's results (y, dx,
/// dgamma, dbeta), compared with the first iteration's on every rank. The
/// inputs never change, so every iteration must give the same bits; a
/// difference means a race, a stale buffer or a reduction that is not
/// deterministic.
///
/// The checksum is computed after each iteration's timed phases, outside
/// them; it reads y and dx once more, which leaves other data in the cache
/// than a plain run would, so time with it off.
struct ChecksumTracker {
    private(set) var first: UInt64?
    private(set) var iterations = 0
    /// The first iteration (counting warm-up from 0) whose checksum differed, and that checksum.
    private(set) var firstMismatch: (iteration: Int, checksum: UInt64)?

    mutating func record(_ checksum: UInt64) {
        defer { iterations += 1 }
        guard let first else {
            first = checksum
            return
        }
        if checksum != first && firstMismatch == nil { firstMismatch = (iterations, checksum) }
    }

    /// The verdict of every rank: collective.
    func overRanks(_ communicator: Communicator) throws -> ChecksumResult {
        let local = Int64(bitPattern: first ?? 0)
        var all = [Int64](repeating: 0, count: communicator.size)
        try [local].withUnsafeBufferPointer { send in
            try all.withUnsafeMutableBufferPointer { receive in
                try communicator.allgatherv(send, into: receive, counts: Array(repeating: 1, count: communicator.size))
            }
        }
        // Per rank: the first iteration that differed, or Int64.max.
        var mismatches = [Int64](repeating: .max, count: communicator.size)
        if let firstMismatch { mismatches[communicator.rank] = Int64(firstMismatch.iteration) }
        mismatches = try communicator.allreduce(mismatches, .min)
        let failing = mismatches.firstIndex { $0 != .max }
        // A wrapping sum: the same for every split of the batch.
        let value = all.reduce(UInt64(0)) { $0 &+ UInt64(bitPattern: $1) }
        return ChecksumResult(
            value: value, iterations: iterations,
            mismatch: failing.map { (rank: $0, iteration: Int(mismatches[$0])) })
    }
}

struct ChecksumResult {
    let value: UInt64
    let iterations: Int
    /// The lowest rank whose results changed, and the first iteration where they did.
    let mismatch: (rank: Int, iteration: Int)?

    var text: String { "0x" + String(value, radix: 16) }
}

extension SyntheticBatch {
    /// The checksum of this rank's y and dx, block by block of a row's
    /// length as stored (each block's hash mixed with its global index, and
    /// summed, so that the job's sum does not depend on the split: a slice is
    /// whole samples, a whole number of blocks), plus dgamma and dbeta, which
    /// every rank holds alike, on rank 0.
    func checksum() -> UInt64 {
        let shape = layer.localShape
        let length = shape.rowLength
        let firstBlock = layer.localRows.lowerBound
        var sum: UInt64 = 0
        for block in 0..<shape.rowCount {
            let range = block * length..<(block + 1) * length
            let hash = hashBytes(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(y.elements)[byteRange(range)]))
                ^ hashBytes(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(dx.elements)[byteRange(range)])) &* 3
            sum &+= mix(hash ^ UInt64(firstBlock + block))
        }
        if layer.communicator.rank == 0 {
            sum &+= mix(hashBytes(UnsafeRawBufferPointer(dgamma.elements)) &+ 7 &* hashBytes(UnsafeRawBufferPointer(dbeta.elements)))
        }
        return sum
    }

    private func byteRange(_ elements: Range<Int>) -> Range<Int> {
        elements.lowerBound * MemoryLayout<T>.stride..<elements.upperBound * MemoryLayout<T>.stride
    }
}

/// A 64-bit hash of `bytes`: four independent multiply-xor lanes over 8-byte
/// words (so the multiplications overlap), then the tail, then a final mix.
/// For telling results apart, not for security.
func hashBytes(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
    let prime: UInt64 = 0x9E37_79B9_7F4A_7C15
    var lanes: (UInt64, UInt64, UInt64, UInt64) = (1, 2, 3, 4)
    let words = bytes.count / 8
    var word = 0
    while word + 4 <= words {
        lanes.0 = (lanes.0 ^ bytes.loadUnaligned(fromByteOffset: 8 * word, as: UInt64.self)) &* prime
        lanes.1 = (lanes.1 ^ bytes.loadUnaligned(fromByteOffset: 8 * word + 8, as: UInt64.self)) &* prime
        lanes.2 = (lanes.2 ^ bytes.loadUnaligned(fromByteOffset: 8 * word + 16, as: UInt64.self)) &* prime
        lanes.3 = (lanes.3 ^ bytes.loadUnaligned(fromByteOffset: 8 * word + 24, as: UInt64.self)) &* prime
        word += 4
    }
    var hash = mix(lanes.0) &+ mix(lanes.1 &+ 1) &* 3 &+ mix(lanes.2 &+ 2) &* 5 &+ mix(lanes.3 &+ 3) &* 7
    while word < words {
        hash = (hash ^ bytes.loadUnaligned(fromByteOffset: 8 * word, as: UInt64.self)) &* prime
        word += 1
    }
    for index in (8 * words)..<bytes.count { hash = (hash ^ UInt64(bytes[index])) &* prime }
    return mix(hash ^ UInt64(bytes.count))
}

/// SplitMix64's finalizer: every input bit affects every output bit.
func mix(_ value: UInt64) -> UInt64 {
    var z = value
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
}
