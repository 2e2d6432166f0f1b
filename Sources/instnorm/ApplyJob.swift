import DataParallel
#if canImport(Glibc)
import Glibc
#endif
import InstanceNorm
import MPI
import NPY

/// One `apply` run in precision T: read this rank's slice, compute, write.
struct ApplyJob<T: DataParallelScalar & NPYElement> {
    let options: Apply
    let files: ApplyFiles
    let communicator: Communicator

    func run() throws {
        let layer = DataParallelInstanceNorm<T>(
            communicator: communicator, globalShape: files.shape, eps: options.eps, threads: options.threads)
        let inputs = try communicator.agree(defaultExitCode: ToolExitCode.badInput) {
            try LocalInputs<T>(files: files, layer: layer)
        }
        let outputs = try compute(layer, inputs)
        try write(outputs, layer: layer)
    }

    /// The outputs, each with the part of it this rank writes.
    private func compute(_ layer: DataParallelInstanceNorm<T>, _ inputs: LocalInputs<T>) throws -> [OutputArray<T>] {
        let globalShape = files.shape
        let y = TensorBuffer<T>(repeating: 0, count: layer.localShape.elementCount)
        let elementOffset = layer.localElements.lowerBound
        if options.eval {
            layer.forwardInference(
                y: y.elements, x: inputs.x.readOnly,
                runningMean: inputs.runningMean!.readOnly, runningVar: inputs.runningVar!.readOnly,
                gamma: inputs.gamma?.readOnly, beta: inputs.beta?.readOnly)
            return [OutputArray(name: "y.npy", shape: globalShape.dimensions, values: y, elementOffset: elementOffset)]
        }
        let statistics = TensorBuffer(
            repeating: InstanceStatistics(mean: 0, variance: 0, invstd: 0), count: layer.localShape.instanceCount)
        layer.forward(
            y: y.elements, statistics: statistics.elements, x: inputs.x.readOnly,
            gamma: inputs.gamma?.readOnly, beta: inputs.beta?.readOnly)
        let instanceOffset = layer.samples.lowerBound * globalShape.channels
        let perInstanceShape = [globalShape.batch, globalShape.channels]
        var outputs = [
            OutputArray(name: "y.npy", shape: globalShape.dimensions, values: y, elementOffset: elementOffset),
            OutputArray(name: "mean.npy", shape: perInstanceShape,
                        values: TensorBuffer(statistics.array.map { T($0.mean) }), elementOffset: instanceOffset),
            OutputArray(name: "invstd.npy", shape: perInstanceShape,
                        values: TensorBuffer(statistics.array.map { T($0.invstd) }), elementOffset: instanceOffset),
        ]
        if let dy = inputs.dy {
            outputs += try backward(layer, inputs, dy: dy, statistics: statistics)
        }
        if let runningMean = inputs.runningMean, let runningVar = inputs.runningVar {
            try layer.updateRunningStatistics(
                runningMean: runningMean.elements, runningVar: runningVar.elements,
                statistics: statistics.readOnly, momentum: options.momentum)
            outputs += [
                OutputArray(name: "running_mean.npy", shape: [globalShape.channels], values: runningMean, elementOffset: nil),
                OutputArray(name: "running_var.npy", shape: [globalShape.channels], values: runningVar, elementOffset: nil),
            ]
        }
        return outputs
    }

    private func backward(
        _ layer: DataParallelInstanceNorm<T>, _ inputs: LocalInputs<T>,
        dy: TensorBuffer<T>, statistics: TensorBuffer<InstanceStatistics>
    ) throws -> [OutputArray<T>] {
        let channels = files.shape.channels
        let dx = TensorBuffer<T>(repeating: 0, count: layer.localShape.elementCount)
        let dgamma = TensorBuffer<T>(repeating: 0, count: channels)
        let dbeta = TensorBuffer<T>(repeating: 0, count: channels)
        try layer.backward(
            dx: dx.elements, dgamma: dgamma.elements, dbeta: dbeta.elements,
            dy: dy.readOnly, x: inputs.x.readOnly, statistics: statistics.readOnly, gamma: inputs.gamma?.readOnly)
        var outputs = [OutputArray(
            name: "dx.npy", shape: files.shape.dimensions, values: dx, elementOffset: layer.localElements.lowerBound)]
        if options.affine {
            outputs += [
                OutputArray(name: "dgamma.npy", shape: [channels], values: dgamma, elementOffset: nil),
                OutputArray(name: "dbeta.npy", shape: [channels], values: dbeta, elementOffset: nil),
            ]
        }
        return outputs
    }

    /// Three agreed steps: rank 0 creates every file under its temporary name
    /// (header written, size set); every rank writes its part and syncs;
    /// rank 0 renames them all into place. A failure at any step removes the
    /// temporary files and leaves the directory as it was.
    private func write(_ outputs: [OutputArray<T>], layer: DataParallelInstanceNorm<T>) throws {
        precondition(outputs.map(\.name) == files.outputs.names, "outputs differ from the names checked up front")
        let directory = files.outputs
        let tag = try communicator.allreduce(communicator.rank == 0 ? Int64(getpid()) : 0, .sum)
        let isRoot = communicator.rank == 0
        do {
            try communicator.agree(defaultExitCode: ToolExitCode.ioFailure) {
                guard isRoot else { return }
                try directory.createDirectory()
                for output in outputs {
                    try ioFailure { _ = try NPYWriter.create(path: directory.partialPath(output.name, tag: tag), header: output.header) }
                }
            }
            try communicator.agree(defaultExitCode: ToolExitCode.ioFailure) {
                for output in outputs where output.elementOffset != nil || isRoot {
                    try ioFailure {
                        let writer = try NPYWriter.open(path: directory.partialPath(output.name, tag: tag), header: output.header)
                        try writer.write(output.values.readOnly, elementOffset: output.elementOffset ?? 0)
                        try writer.sync()
                        try writer.close()
                    }
                }
            }
            try communicator.agree(defaultExitCode: ToolExitCode.ioFailure) {
                if isRoot { try directory.commit(tag: tag) }
            }
        } catch let failure as AgreedFailure {
            if isRoot { directory.removePartials(tag: tag) }
            throw failure
        }
    }
}

/// An output file and the part of it this rank writes: its slice at
/// `elementOffset`, or, for the small (C,) arrays that every rank holds in
/// full, the whole array written by rank 0 alone (`elementOffset` nil).
struct OutputArray<T: NPYElement> {
    let name: String
    let shape: [Int]
    let values: TensorBuffer<T>
    let elementOffset: Int?

    var header: NPYHeader { NPYHeader(dtype: T.npyDType, shape: shape) }
}

/// Runs an output step, reporting any failure as an I/O failure (exit 74):
/// here even an `NPYError` is about a file this tool writes, not bad input.
func ioFailure(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let error as ToolError {
        throw error
    } catch {
        throw ToolError.io(String(describing: error))
    }
}

/// This rank's slice of x and dy, and the (C,) arrays in full.
struct LocalInputs<T: DataParallelScalar & NPYElement> {
    let x: TensorBuffer<T>
    let dy: TensorBuffer<T>?
    let gamma: TensorBuffer<T>?
    let beta: TensorBuffer<T>?
    let runningMean: TensorBuffer<T>?
    let runningVar: TensorBuffer<T>?

    init(files: ApplyFiles, layer: DataParallelInstanceNorm<T>) throws {
        let slice = layer.localElements
        x = try Self.read(files.input, elements: slice)
        dy = try files.grad.map { try Self.read($0, elements: slice) }
        let channels = 0..<files.shape.channels
        gamma = try files.weight.map { try Self.read($0, elements: channels) }
        beta = try files.bias.map { try Self.read($0, elements: channels) }
        runningMean = try files.runningMean.map { try Self.read($0, elements: channels) }
        runningVar = try files.runningVar.map { try Self.read($0, elements: channels) }
    }

    private static func read(_ reader: NPYReader, elements: Range<Int>) throws -> TensorBuffer<T> {
        let buffer = TensorBuffer<T>(repeating: 0, count: elements.count)
        try reader.read(into: buffer.elements, elementOffset: elements.lowerBound)
        return buffer
    }
}
