import InstanceNorm
import NPY

/// The opened input files of `apply`, with every check that needs their
/// headers: shapes agree with x, every dtype is x's, outputs do not land on
/// inputs. Each rank opens them read-only and reaches the same verdict.
struct ApplyFiles {
    let input: NPYReader
    let grad: NPYReader?
    let weight: NPYReader?
    let bias: NPYReader?
    let runningMean: NPYReader?
    let runningVar: NPYReader?
    /// The norm and x's logical dimensions ((N, C, S…) for instance and group norm in either layout).
    let shape: NormShape
    let outputs: OutputDirectory

    var dtype: NPYDType { input.header.dtype }
    let layout: TensorLayout
    /// x's dimensions as stored, which y, dy, dx share.
    var tensorDimensions: [Int] { input.header.shape }

    init(_ options: Apply) throws {
        let input = try NPYReader(path: options.input)
        let shape = try Self.shape(of: input, options)
        try Self.checkEmptyBatch(shape, options)
        func open(_ path: String?, shape expected: [Int]) throws -> NPYReader? {
            try path.map { try Self.open($0, shape: expected, like: input) }
        }
        self.input = input
        self.shape = shape
        layout = options.layout.tensorLayout
        grad = try open(options.grad, shape: input.header.shape)
        weight = try open(options.weight, shape: shape.parameterDimensions)
        bias = try open(options.bias, shape: shape.parameterDimensions)
        runningMean = try open(options.runningMean, shape: shape.parameterDimensions)
        runningVar = try open(options.runningVar, shape: shape.parameterDimensions)
        if let problem = shape.singleValuePerChannel, !options.eval {
            throw ToolError.badInput("\(options.input): \(problem); use --eval with running statistics, or a larger batch")
        }
        if options.tracksRunningStatistics && !options.eval && shape.normalization == .instance && shape.spatialCount < 2 {
            throw ToolError.badInput(
                "\(options.input): a training step with running statistics needs more than one value per instance "
                    + "(spatial size is 1, so the unbiased variance is undefined); drop the running statistics or use --eval")
        }
        outputs = try OutputDirectory(path: options.output, names: Self.outputNames(options))
        let inputPaths = [options.input, options.grad, options.weight, options.bias, options.runningMean, options.runningVar]
        try outputs.refuseOverlap(with: inputPaths.compactMap { $0 })
    }

    /// An empty batch (N = 0) normalizes to empty outputs with dγ = dβ = 0,
    /// as PyTorch's `layer_norm`, `group_norm` and `batch_norm` give; the
    /// running statistics of InstanceNorm have no update from no instances
    /// (PyTorch's `instance_norm` fails there), so a training step with them
    /// is refused.
    private static func checkEmptyBatch(_ shape: NormShape, _ options: Apply) throws {
        guard shape.batch == 0, options.tracksRunningStatistics, !options.eval, shape.normalization == .instance else { return }
        throw ToolError.badInput(
            "\(options.input): the batch is empty (N = 0), so there are no instance statistics to update the running statistics with; "
                + "drop --running-mean and --running-var, or use --eval")
    }

    /// The norm's shape of the input file: its dimensions read in the
    /// layout, checked against the norm. A flag that does not fit them (G
    /// not dividing C, K out of range) is a usage error (64); a shape no
    /// norm of the kind takes, a bad input (65).
    private static func shape(of input: NPYReader, _ options: Apply) throws -> NormShape {
        var dimensions = input.header.shape
        // Layer norm's dimensions are as stored; batch and group norm also take (N, C), the same in either layout
        // (and name their own need of (N, C) when there is less).
        let isFeatureBatch = (options.family.norm == .batch || options.family.norm == .group) && dimensions.count <= 2
        if options.family.norm != .layer && !isFeatureBatch {
            do {
                dimensions = try InstanceNormShape(dimensions: dimensions, layout: options.layout.tensorLayout).dimensions
            } catch {
                throw ToolError.badInput("\(options.input): \(error)")
            }
        }
        do {
            return try options.family.shape(dimensions)
        } catch .invalidArgument(let message) {
            throw ToolError.usage("\(options.input) of shape \(describe(input.header.shape)): \(message)")
        } catch {
            throw ToolError.badInput("\(options.input): \(error)")
        }
    }

    /// The files `apply` writes, as README.md lists them.
    static func outputNames(_ options: Apply) -> [String] {
        if options.eval { return ["y.npy"] }
        var names = ["y.npy", "mean.npy", "invstd.npy"]
        if options.grad != nil { names.append("dx.npy") }
        // As PyTorch gives a gradient only to the parameters a layer has (bias=False: no dβ).
        if options.grad != nil && options.weight != nil { names.append("dgamma.npy") }
        if options.grad != nil && options.bias != nil { names.append("dbeta.npy") }
        if options.tracksRunningStatistics { names += ["running_mean.npy", "running_var.npy"] }
        return names
    }

    private static func open(_ path: String, shape: [Int], like input: NPYReader) throws -> NPYReader {
        let reader = try NPYReader(path: path)
        guard reader.header.shape == shape else {
            throw ToolError.badInput(
                "\(path): shape \(describe(reader.header.shape)) does not match the expected \(describe(shape)) "
                    + "(from \(input.path), shape \(describe(input.header.shape)))")
        }
        guard reader.header.dtype == input.header.dtype else {
            throw ToolError.badInput(
                "\(path): dtype \(reader.header.dtype.name) differs from the input's \(input.header.dtype.name) "
                    + "(\(input.path)); convert it with numpy's astype")
        }
        return reader
    }
}

/// A shape as Python prints it: (3,) or (2, 3, 4).
func describe(_ shape: [Int]) -> String {
    shape.count == 1 ? "(\(shape[0]),)" : "(" + shape.map(String.init).joined(separator: ", ") + ")"
}
