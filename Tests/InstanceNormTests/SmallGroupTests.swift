import InstanceNorm
import TestSupport
import Testing

/// GroupNorm whose channel segments hold few values, which runs the blocked
/// kernels with one segment per lane (`SmallGroups`): every M from 1 to 64,
/// groups of 2-8 segments, blocks cut across groups and samples, partial
/// last blocks, groups of at most 100 values (statistics in lanes) and of
/// more, M on both sides of the forward's limit (36).
@Suite struct SmallGroupTests {
    static let cases: [(Normalization, [Int])] = [
        (.group(groups: 5), [7, 40]), (.group(groups: 4), [3, 16, 2]), (.group(groups: 2), [2, 8, 3]),
        (.group(groups: 4), [5, 8, 2, 2]), (.group(groups: 3), [4, 12, 1, 5]), (.group(groups: 2), [2, 4, 7]),
        (.group(groups: 8), [9, 16, 4, 4]), (.group(groups: 2), [3, 8, 6, 6]), (.group(groups: 2), [3, 8, 37]),
        (.group(groups: 2), [3, 32, 7, 7]), (.group(groups: 2), [3, 6, 8, 8]), (.group(groups: 16), [2, 32, 5, 5]),
    ]

    @Test(arguments: 0..<cases.count)
    func againstTheReference(_ index: Int) {
        let (normalization, dimensions) = Self.cases[index]
        checkFamilyInEveryPrecision(normalization, dimensions, seed: 120 + UInt64(index))
    }

    /// The same bits at every thread count, with cached or streamed
    /// stores, in both layouts (channels last transposes each sample and
    /// runs the same kernels on it), and with an overlap that leaves each
    /// worker's last groups for after `sumsReady`.
    @Test(arguments: 0..<cases.count)
    func sameBitsEverywhere(_ index: Int) {
        let (normalization, dimensions) = Self.cases[index]
        let inputs = FamilyInputs<Float>(normalization, dimensions, seed: 180 + UInt64(index))
        let single = inputs.run(stores: .cached)
        for threads in [1, 2, 3, 5] {
            #expect(inputs.run(threads: threads) == single, "threads \(threads)")
            #expect(inputs.run(threads: threads, stores: .streaming) == single, "streaming, threads \(threads)")
            let events = EventLog()
            let overlap = BackwardOverlap(
                tailElements: 50, progressInterval: 20, sumsReady: { events.append("ready") },
                progress: { events.append("progress") })
            #expect(inputs.run(threads: threads, overlap: overlap) == single, "overlap, threads \(threads)")
            #expect(events.entries.first == "ready" && events.entries.filter { $0 == "ready" }.count == 1)
            #expect(events.entries.contains("progress"), "threads \(threads)")
        }
        let last = FamilyInputs<Float>(normalization, dimensions, seed: 180 + UInt64(index), layout: .channelsLast)
        for threads in [1, 3] {
            #expect(last.run(threads: threads) == single, "channels last, threads \(threads)")
        }
        // Double's tiles are 4 × 4 where float's are 8 × 8 (`transposeMatrix`).
        let wide = FamilyInputs<Double>(normalization, dimensions, seed: 190 + UInt64(index))
        let wideLast = FamilyInputs<Double>(normalization, dimensions, seed: 190 + UInt64(index), layout: .channelsLast)
        #expect(wideLast.run(threads: 2) == wide.run(stores: .cached), "channels last, float64")
    }

    /// Without γ and β, GroupNorm's forward is InstanceNorm's on x seen as
    /// (N, G, L): the group statistics are summed in the order (lanes of
    /// groups up to `SmallGroupLimits.blockedGroup` values, the
    /// per-instance kernel above) and y folded
    /// as InstanceNorm sums and folds an instance of L values, so the bits
    /// are equal; a wrong lane's statistics, channel or offset would not be.
    @Test(arguments: 0..<cases.count)
    func forwardIsInstanceNormOfTheGroups(_ index: Int) {
        let (normalization, dimensions) = Self.cases[index]
        guard case .group(let groups) = normalization else { return }
        func check<T: InstanceNormScalar>(_: T.Type) {
            let inputs = FamilyInputs<T>(normalization, dimensions, affine: false, seed: 200 + UInt64(index))
            let length = inputs.shape.elementCount / (dimensions[0] * groups)
            let instance = KernelRun(
                x: inputs.x, dy: inputs.dy, gamma: nil, beta: nil,
                shape: try! InstanceNormShape(dimensions: [dimensions[0], groups, length]), eps: 1e-5)
            let group = inputs.run()
            #expect(bitPatterns(group.y) == bitPatterns(instance.y), "\(T.self) \(dimensions)")
            #expect(group.statistics == instance.statistics, "\(T.self) \(dimensions)")
        }
        check(Float16.self)
        check(Float.self)
        check(Double.self)
    }

    /// A rank with no samples takes the same route and reports its empty sums once.
    @Test func emptyBatch() {
        let inputs = FamilyInputs<Float>(.group(groups: 4), [0, 8, 2, 2], seed: 21)
        let events = EventLog()
        let overlap = BackwardOverlap(tailElements: 50, progressInterval: 20, sumsReady: { events.append("ready") }, progress: {})
        let run = inputs.run(threads: 2, overlap: overlap)
        #expect(run.dx.isEmpty && run.dgamma == Array(repeating: 0, count: 8) && events.entries == ["ready"])
    }
}
