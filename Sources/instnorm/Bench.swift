import ArgumentParser
import DataParallel
import InstanceNorm
import MPI

/// `instnorm bench`, the default: a synthetic batch, forward + backward per iteration.
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Time forward and backward on a synthetic batch split over the ranks (the default command).",
        discussion: """
            Each iteration's phase time is the maximum over ranks (the step is as slow as \
            its slowest rank); the table gives median, min and max over the timed iterations, \
            the achieved bandwidth and its fraction of the floor: the bytes a phase must move \
            divided by the machine's STREAM-like bandwidth measured at the start of the same run. \
            The data depend only on --seed and the global shape, not on the rank or thread count.
            """)

    @Option(help: ArgumentHelp(
        "Global shape: N,C,S1[,S2,...] for instance norm (at least one spatial dimension), N,C[,S1,...] for group and batch norm, N,...,D for layer norm.",
        valueName: "N,C,H,W"))
    var shape: ShapeArgument = ShapeArgument(dimensions: [32, 64, 56, 56])

    @OptionGroup var family: NormOptions

    @Option(help: "Storage precision (float16 is computed in float32; the floor's bytes follow the storage size).")
    var dtype: DType = .float32

    @Option(help: "Worker threads per rank (with mpirun, pass --bind-to none or --map-by slot:PE=T so they get cores).")
    var threads: Int = 1

    @Flag(inversion: .prefixedNo, help: "Hide the allreduce of dgamma, dbeta behind the dx pass.")
    var overlap = true

    @Option(help: "How y and dx are written (and small instances' statistics and sums with them): automatic streams them when the tensors a call touches exceed the last-level cache and the runs of values with their own statistics hold 2 KiB or more.")
    var stores: Stores = .automatic

    @Option(help: "Memory layout of x, y, dy, dx: nchw = (N, C, S...), nhwc = (N, S..., C); --shape is N,C,S... either way.")
    var layout: Layout = .nchw

    @Option(help: """
        How dgamma, dbeta are summed over ranks: reproducible (exact integer sums in one allreduce of 16·C words, \
        the same bits at any rank count), allreduce (plain double sums, the bits depend on the rank count) \
        or gather (every sample's sums to every rank, added in sample order).
        """)
    var reduction: Reduction = .reproducible

    @Option(help: "Timed iterations.")
    var iterations: Int = 20

    @Option(help: "Untimed iterations first (page faults, caches).")
    var warmup: Int = 3

    // Unconditional: `--eps -1e-5` then reaches the check of ε (> 0) rather
    // than reading as a missing value followed by an unknown flag.
    @Option(parsing: .unconditional, help: "ε added to the variance; must be > 0.")
    var eps: Double = 1e-5

    @Option(help: "Seed of the synthetic data.")
    var seed: UInt64 = 1

    @Flag(help: "Print one JSON object instead of the table.")
    var json = false

    @Flag(help: """
        Checksum every iteration's y, dx, dgamma and dbeta (outside the timed phases) and fail \
        (exit 1) if any iteration's differs from the first one's; prints the checksum.
        """)
    var checksum = false

    @Flag(help: "Check every value of every rank (y, dx, the statistics, dgamma, dbeta) against the exact result, within a bound from the kernels' rounding errors; fail on a mismatch.")
    var verify = false

    func validate() throws {
        do {
            if let problem = try family.shape(shape.dimensions).singleValuePerChannel {
                throw ValidationError("--shape \(shape): \(problem)")
            }
        } catch let error as InstanceNormError {
            throw ValidationError("--shape \(shape): \(error)")
        }
        do {
            try family.checkFits(layout: layout, runningStatistics: false)
        } catch let error as ToolError {
            throw ValidationError(error.message)
        }
        guard threads >= 1 else { throw ValidationError("--threads must be >= 1, got \(threads)") }
        guard shape.dimensions.first.map({ $0 >= 1 }) ?? false else {
            throw ValidationError("--shape \(shape): the batch N must be >= 1")
        }
        guard iterations >= 1 else { throw ValidationError("--iterations must be >= 1, got \(iterations)") }
        guard warmup >= 0 else { throw ValidationError("--warmup must be >= 0, got \(warmup)") }
        guard eps > 0, eps.isFinite else { throw ValidationError("--eps must be a positive finite number, got \(eps)") }
    }

    func run() throws {
        let globalShape = try family.shape(shape.dimensions)
        switch dtype {
        case .float16: try BenchRun<Float16>(options: self, globalShape: globalShape).run()
        case .float32: try BenchRun<Float>(options: self, globalShape: globalShape).run()
        case .float64: try BenchRun<Double>(options: self, globalShape: globalShape).run()
        }
    }
}

enum DType: String, ExpressibleByArgument, CaseIterable {
    case float16, float32, float64
}

/// `TensorLayout` as a flag value, named as PyTorch and numpy users name it.
enum Layout: String, ExpressibleByArgument, CaseIterable {
    case nchw, nhwc

    var tensorLayout: TensorLayout {
        switch self {
        case .nchw: .channelsFirst
        case .nhwc: .channelsLast
        }
    }
}

/// `ParameterGradientReduction` as a flag value.
enum Reduction: String, ExpressibleByArgument, CaseIterable {
    case reproducible, allreduce, gather

    var method: ParameterGradientReduction { ParameterGradientReduction(rawValue: rawValue)! }
}

/// `StorePolicy` as a flag value.
enum Stores: String, ExpressibleByArgument, CaseIterable {
    case automatic, cached, streaming

    var policy: StorePolicy {
        switch self {
        case .automatic: .automatic
        case .cached: .cached
        case .streaming: .streaming
        }
    }
}

/// A shape written N,C,H,W.
struct ShapeArgument: ExpressibleByArgument, CustomStringConvertible {
    let dimensions: [Int]

    init(dimensions: [Int]) { self.dimensions = dimensions }

    init?(argument: String) {
        let parts = argument.split(separator: ",", omittingEmptySubsequences: false)
        let values = parts.compactMap { Int($0.filter { !$0.isWhitespace }) }
        guard !parts.isEmpty, values.count == parts.count else { return nil }
        dimensions = values
    }

    var description: String { dimensions.map(String.init).joined(separator: ",") }
    var defaultValueDescription: String { description }
}
