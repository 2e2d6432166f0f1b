import ArgumentParser
import DataParallel
import MPI
import NPY

/// `instnorm apply`: InstanceNorm on tensors stored as .npy files.
struct Apply: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Apply InstanceNorm to tensors in .npy files and write the results.",
        discussion: """
            Writes into DIR: y.npy; in training mode mean.npy and invstd.npy, shape (N, C) (instance), \
            (N, G) (group) or x.shape[:-K] (layer); with --grad: dx.npy, and dgamma.npy with --weight, \
            dbeta.npy with --bias, shape (C,) (instance, group) or x.shape[-K:] (layer); \
            with running statistics in training mode the updated running_mean.npy and running_var.npy. \
            Outputs have the input's dtype. Each rank reads and writes only its own samples. \
            Outputs are written under temporary names and renamed into place only when every \
            rank has succeeded; a failed or terminated run leaves DIR as it was.
            """)

    @Option(help: ArgumentHelp(
        "The input x: (N, C, S1, ...), or (N, S1, ..., C) with --layout nhwc; (N, ..., D1, ..., DK) for --norm layer; also (N, C) for group and batch; N may be 0; float16, float32 or float64, C order.",
        valueName: "X.npy"))
    var input: String

    @OptionGroup var family: NormOptions

    @Option(help: ArgumentHelp("The gradient dy of the same shape and dtype as x: also compute the backward.", valueName: "DY.npy"))
    var grad: String?

    @Option(help: ArgumentHelp("γ, shape (C,) (instance, group) or the normalized dimensions (layer); without it γ = 1.", valueName: "G.npy"))
    var weight: String?

    @Option(help: ArgumentHelp("β, the shape of γ; without it β = 0 (PyTorch's bias=False).", valueName: "B.npy"))
    var bias: String?

    // Unconditional: `--eps -1e-5` then reaches the check of ε (> 0) rather
    // than reading as a missing value followed by an unknown flag.
    @Option(parsing: .unconditional, help: "ε added to the variance; must be > 0.")
    var eps: Double = 1e-5

    @Option(help: ArgumentHelp("Running mean, shape (C,): updated in training mode, used with --eval.", valueName: "RM.npy"))
    var runningMean: String?

    @Option(help: ArgumentHelp("Running variance, shape (C,); comes with --running-mean.", valueName: "RV.npy"))
    var runningVar: String?

    @Option(name: .customLong("momentum"), parsing: .unconditional, help: "Momentum of the running statistics' update, in [0, 1] (default: 0.1, PyTorch's).")
    var givenMomentum: Double?

    /// --momentum, or PyTorch's default.
    var momentum: Double { givenMomentum ?? 0.1 }

    @Flag(help: "Evaluation mode: normalize with the running statistics; writes y.npy only.")
    var eval = false

    @Option(help: ArgumentHelp("The output directory, created if missing.", valueName: "DIR"))
    var output: String

    @Option(help: "Worker threads per rank (the results do not depend on it).")
    var threads: Int = 1

    @Option(help: """
        Memory layout of x, dy and of y, dx: nchw = (N, C, S1, ...), nhwc = channels last, (N, S1, ..., C), \
        normalized in place of the layout (no transposed copy) with the same results as nchw on the transposed data.
        """)
    var layout: Layout = .nchw

    @Option(help: """
        How dgamma, dbeta are summed over ranks: reproducible sums every sample's sums exactly and rounds once \
        (the same bits at any rank count); allreduce sums each rank's samples, then over ranks; gather adds \
        every sample's sums in sample order on every rank.
        """)
    var reduction: Reduction = .reproducible

    @Flag(help: """
        Refuse NaN and infinity (exit 65), naming the first bad sample and channel: in the inputs, \
        and in the outputs of finite inputs; with --eval, also a running variance at most -eps. \
        Without it a non-finite value makes its instance's outputs non-finite (and dgamma, dbeta, \
        the running statistics of its channel), as in PyTorch.
        """)
    var checkFinite = false

    /// Every check that needs no data: the same verdict on every rank, before any collective.
    func validate() throws {
        guard threads >= 1 else { throw ValidationError("--threads must be >= 1, got \(threads)") }
        guard eps > 0, eps.isFinite else {
            throw ValidationError("--eps must be a positive finite number, got \(eps)")
        }
        guard momentum >= 0, momentum <= 1 else {
            throw ValidationError("--momentum must be in [0, 1], got \(momentum)")
        }
        guard (runningMean == nil) == (runningVar == nil) else {
            throw ValidationError("--running-mean and --running-var come together or not at all")
        }
        do {
            try family.checkFits(layout: layout, runningStatistics: runningMean != nil, momentum: givenMomentum != nil)
        } catch let error as ToolError {
            throw ValidationError(error.message)
        }
        if eval {
            guard runningMean != nil else {
                throw ValidationError("--eval normalizes with the running statistics: give --running-mean and --running-var")
            }
            guard grad == nil else {
                throw ValidationError("--eval writes y.npy only; --grad needs training mode (drop --eval)")
            }
        }
    }

    func run() throws {
        let communicator = Communicator.world
        let files = try communicator.agree(defaultExitCode: ToolExitCode.badInput) { try ApplyFiles(self) }
        switch files.dtype {
        case .float16: try ApplyJob<Float16>(options: self, files: files, communicator: communicator).run()
        case .float32: try ApplyJob<Float>(options: self, files: files, communicator: communicator).run()
        case .float64: try ApplyJob<Double>(options: self, files: files, communicator: communicator).run()
        }
    }

    var tracksRunningStatistics: Bool { runningMean != nil }
}

extension NPYError: ExitCodeProviding {
    public var exitCode: Int32 { ToolExitCode.badInput }
}
