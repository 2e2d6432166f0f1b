import ArgumentParser
import DataParallel
import InstanceNorm
import MPI
import ReproducibleSum

/// `instnorm collectives`: the latency of the collectives the library uses,
/// over a sweep of message sizes, as the OSU micro-benchmarks measure them;
/// the input of `scripts/scaling-model`.
struct Collectives: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Time the library's collectives (allreduce, reproducible allreduce, allgatherv) over message sizes.",
        discussion: """
            For each collective and size: a barrier, then --iterations calls back to back; a rank's time \
            per call is the average over them, the call's time the maximum over ranks; the row gives the \
            median, min and max over --rounds. Sizes are the bytes of one rank's buffer: the 2·C doubles \
            of allreduce, the 64-byte sums of reproducible (8 words each), and for allgatherv the bytes \
            every rank receives, split as evenly over the ranks as the batch is.
            """)

    @Option(help: ArgumentHelp("Message sizes in bytes, comma separated.", valueName: "B,B,..."))
    var sizes: ShapeArgument = ShapeArgument(dimensions: [64, 512, 4096, 32768, 262_144, 2_097_152])

    @Option(help: "Calls per round (fewer for messages over 64 KiB: a round is kept near this many KiB·calls).")
    var iterations: Int = 200

    @Option(help: "Rounds per size; the median is reported.")
    var rounds: Int = 5

    @Flag(help: "One JSON object per line instead of the table.")
    var json = false

    func validate() throws {
        guard sizes.dimensions.allSatisfy({ $0 >= 64 && $0 % 64 == 0 }) else {
            throw ValidationError("--sizes \(sizes): every size must be a multiple of 64 bytes, at least 64")
        }
        guard iterations >= 1 else { throw ValidationError("--iterations must be >= 1, got \(iterations)") }
        guard rounds >= 1 else { throw ValidationError("--rounds must be >= 1, got \(rounds)") }
    }

    func run() throws {
        let communicator = Communicator.world
        if communicator.rank == 0 && !json {
            Console.output("# instnorm collectives: \(communicator.size) ranks; \(MPI.libraryVersion)")
            Console.output("# microseconds per call (max over ranks of each rank's average), median / min / max over \(rounds) rounds")
            Console.output(["collective", "bytes", "median_us", "min_us", "max_us"].map { rightAligned($0, 13) }.joined())
        }
        if communicator.rank == 0 { printLocalCosts() }
        for kind in CollectiveKind.allCases {
            for bytes in sizes.dimensions {
                let calls = max(1, min(iterations, iterations * 65536 / bytes))
                let call = try kind.prepare(bytes: bytes, communicator: communicator)
                try call()  // warm-up: connections, the op's creation
                var perCall: [Double] = []
                for _ in 0..<rounds {
                    try communicator.barrier()
                    let start = MPI.wallTime()
                    for _ in 0..<calls { try call() }
                    perCall.append(try communicator.allreduce((MPI.wallTime() - start) / Double(calls), .max))
                }
                guard communicator.rank == 0 else { continue }
                let summary = Summary(perCall)
                let micro = { (seconds: Double) in fixed(seconds * 1e6, 2) }
                if json {
                    Console.output("{\"collective\": \"\(kind.rawValue)\", \"ranks\": \(communicator.size), \"bytes\": \(bytes), "
                        + "\"median_us\": \(micro(summary.median)), \"min_us\": \(micro(summary.minimum)), \"max_us\": \(micro(summary.maximum))}")
                } else {
                    Console.output([kind.rawValue, "\(bytes)", micro(summary.median), micro(summary.minimum), micro(summary.maximum)]
                        .map { rightAligned($0, 13) }.joined())
                }
            }
        }
    }
}

extension Collectives {
    /// What the modes cost outside the collective, per value, on one core:
    /// an exact deposit into `ReproducibleSums` (reproducible; from a table,
    /// as the library makes them, and one by one), the final
    /// rounding of one sum, and one `Double` addition in sample order
    /// (gather adds every sample's sums; allreduce its own). Best of five.
    func printLocalCosts() {
        let addends = 1 << 20, sumCount = 512
        // Random signs and sizes over 16 binades.
        let values = TensorBuffer<Double>((0..<addends).map { index in
            uniform(1, 0, index) * Double(sign: .plus, exponent: Int(8 * uniform(1, 1, index)), significand: 1)
        })
        let sums = ReproducibleSums(count: sumCount)
        let plain = TensorBuffer<Double>(repeating: 0, count: sumCount)
        let costs: [(String, Int, () -> Void)] = [
            // As the library deposits: a table with a row per sample.
            ("deposit", addends, {
                sums.removeAll()
                sums.add(rows: UnsafeBufferPointer(values.elements))
            }),
            ("deposit_one_by_one", addends, {
                sums.removeAll()
                for index in 0..<addends { sums.add(values.elements[index], to: index & (sumCount - 1)) }
            }),
            ("round", sumCount, { for index in 0..<sumCount { plain.elements[index] = sums.sum(at: index) } }),
            ("add", addends, {
                for index in 0..<addends { plain.elements[index & (sumCount - 1)] += values.elements[index] }
            }),
        ]
        for (name, count, body) in costs {
            var best = Double.infinity
            for _ in 0..<5 {
                let start = MPI.wallTime()
                body()
                best = min(best, MPI.wallTime() - start)
            }
            let nanoseconds = fixed(best / Double(count) * 1e9, 3)
            Console.output(json ? "{\"cost\": \"\(name)\", \"ns_per_value\": \(nanoseconds), \"check\": \(plain.elements[0])}"
                                : "# \(name): \(nanoseconds) ns per value (best of 5, one core)")
        }
    }
}

/// The collectives of the three `--reduction` modes.
enum CollectiveKind: String, CaseIterable {
    case allreduce, reproducible, allgatherv

    /// One call of this collective on a buffer of `bytes`, its buffers
    /// allocated once.
    func prepare(bytes: Int, communicator: Communicator) throws -> () throws -> Void {
        switch self {
        case .allreduce:
            let buffer = TensorBuffer<Double>(repeating: 1, count: bytes / 8)
            return { try communicator.allreduce(buffer.elements, .sum) }
        case .reproducible:
            let sums = ReproducibleSums(count: bytes / (8 * ReproducibleSums.wordsPerSum))
            for index in 0..<sums.count { sums.add(Double(index + communicator.rank), to: index) }
            // The same words every call: the sums grow by the ranks' count
            // of addends, far below the 2^31 a sum holds.
            return { try communicator.allreduce(sums) }
        case .allgatherv:
            let counts = BatchPartition(batch: bytes / 8, ranks: communicator.size).counts
            let send = TensorBuffer<Double>(repeating: 1, count: counts[communicator.rank])
            let receive = TensorBuffer<Double>(repeating: 0, count: bytes / 8)
            return { try communicator.allgatherv(send.readOnly, into: receive.elements, counts: counts) }
        }
    }
}
