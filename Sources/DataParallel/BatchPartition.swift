/// A balanced split of N samples over P ranks: the first N mod P ranks take
/// ⌈N/P⌉ samples, the others ⌊N/P⌋, in rank order. A rank may own none (N < P);
/// it still joins every collective.
public struct BatchPartition: Equatable, Sendable {
    /// N, the global batch size.
    public let batch: Int
    /// P, the number of ranks.
    public let ranks: Int

    /// The split of `batch` ≥ 0 samples over `ranks` ≥ 1 ranks.
    public init(batch: Int, ranks: Int) {
        precondition(batch >= 0 && ranks >= 1)
        self.batch = batch
        self.ranks = ranks
    }

    /// The global sample indices owned by `rank`.
    public func samples(of rank: Int) -> Range<Int> {
        precondition(rank >= 0 && rank < ranks)
        let base = batch / ranks, extra = batch % ranks
        let start = rank * base + min(rank, extra)
        return start..<start + base + (rank < extra ? 1 : 0)
    }

    /// Samples per rank, in rank order.
    public var counts: [Int] { (0..<ranks).map { samples(of: $0).count } }
}
