import DataParallel
#if canImport(Glibc)
import Glibc
#endif
import InstanceNorm
import MPI
import NPY

/// One `apply` run in precision T: read this rank's slice, compute, write.
///
/// A failure only one rank sees is settled at one of these agreed steps
/// (`Communicator.agree`), so that every rank leaves with the same message
/// and code and no rank is left waiting in a collective:
///
/// 1. reading: reserve the input buffers, read this rank's slice, and with
///    `--check-finite` look for NaN and infinity in it (exit 65, 71);
/// 2. computing: reserve the output buffers and run the forward (exit 71);
/// then the collectives (the dγ, dβ allreduce, the gather of the statistics),
/// where a failed MPI call ends the job with MPI_Abort (exit 70);
/// 3. checking, with `--check-finite`: non-finite outputs (exit 65);
/// 4. writing, in four steps (see `write`; exit 74).
struct ApplyJob<T: DataParallelScalar & NPYElement> {
    let options: Apply
    let files: ApplyFiles
    let communicator: Communicator

    private var shape: NormShape { files.shape }
    private var elementSize: Int { MemoryLayout<T>.stride }

    func run() throws {
        let partition = BatchPartition(batch: shape.batch, ranks: communicator.size)
        let samples = partition.samples(of: communicator.rank)
        let perSample = shape.sampleElementCount
        let slice = samples.lowerBound * perSample ..< samples.upperBound * perSample
        let inputs = try communicator.agree(defaultExitCode: ToolExitCode.badInput) {
            try Memory.reserve(
                Memory.bytes((slice.count * (files.grad == nil ? 1 : 2), elementSize), (6 * shape.parameterCount, elementSize),
                             (2 * shape.parameterCount, MemoryLayout<Double>.stride)),
                for: "this rank's slice of the inputs (samples \(samples.lowerBound)..<\(samples.upperBound))")
            let inputs = try LocalInputs<T>(files: files, elements: slice)
            if options.checkFinite {
                try inputs.checkFinite(files: files, firstSample: samples.lowerBound)
                if options.eval { try inputs.checkRunningVariance(files: files, eps: options.eps) }
            }
            return inputs
        }
        let layer = DataParallelNorm<T>(
            communicator: communicator, globalShape: shape, eps: options.eps, threads: options.threads,
            reduction: options.reduction.method, layout: files.layout)
        let outputs = try compute(layer, inputs)
        applyCorruptionFailpoints(outputs)
        if options.checkFinite { try checkFinite(outputs, firstSample: samples.lowerBound) }
        try write(outputs)
    }

    /// The outputs, each with the part of it this rank writes.
    private func compute(_ layer: DataParallelNorm<T>, _ inputs: LocalInputs<T>) throws -> [OutputArray<T>] {
        let localCount = layer.localShape.elementCount, localRows = layer.localShape.statisticsCount
        let statisticsSize = MemoryLayout<InstanceStatistics>.stride
        // Agreed before the forward, which is collective for BatchNorm: a
        // rank that cannot get its memory must not leave the others inside it.
        try communicator.agree(defaultExitCode: ToolExitCode.resources) {
            try Memory.reserve(
                Memory.bytes((localCount * (inputs.dy == nil ? 1 : 2), elementSize), (localRows, statisticsSize + 2 * elementSize),
                             (2 * shape.batch * shape.parameterCount, MemoryLayout<Double>.stride),
                             (options.threads, NormKernel.scratchBytes(shape: shape, layout: files.layout, as: T.self))),
                for: "this rank's outputs")
            if Failpoint.computing.fires() {
                throw ToolError.resources("cannot allocate the outputs of this rank: Cannot allocate memory \(Failpoint.computing.note)")
            }
        }
        let (y, statistics) = try forward(layer, inputs)
        let elementOffset = layer.localElements.lowerBound
        if options.eval {
            return [OutputArray(name: "y.npy", shape: files.tensorDimensions, values: y, elementOffset: elementOffset)]
        }
        // BatchNorm's statistics are the whole batch's, the same on every rank: rank 0 writes them.
        let instanceOffset = shape.normalization == .batch ? nil : layer.localRows.lowerBound
        let perInstanceShape = shape.statisticsDimensions
        var outputs = [
            OutputArray(name: "y.npy", shape: files.tensorDimensions, values: y, elementOffset: elementOffset),
            OutputArray(name: "mean.npy", shape: perInstanceShape,
                        values: TensorBuffer(statistics.array.map { T($0.mean) }), elementOffset: instanceOffset),
            OutputArray(name: "invstd.npy", shape: perInstanceShape,
                        values: TensorBuffer(statistics.array.map { T($0.invstd) }), elementOffset: instanceOffset),
        ]
        // The first collective: a rank whose MPI call fails here cannot tell
        // the others, who are already inside it.
        if (inputs.dy != nil || inputs.runningMean != nil) && Failpoint.reducing.fires() {
            throw MPIError(call: "MPI_Iallreduce", code: 16, message: "MPI_ERR_OTHER: known error not in list \(Failpoint.reducing.note)")
        }
        if let dy = inputs.dy {
            outputs += try backward(layer, inputs, dy: dy, statistics: statistics)
        }
        if let runningMean = inputs.runningMean, let runningVar = inputs.runningVar {
            try layer.updateRunningStatistics(
                runningMean: runningMean.elements, runningVar: runningVar.elements,
                statistics: statistics.readOnly, momentum: options.momentum)
            outputs += [
                OutputArray(name: "running_mean.npy", shape: shape.parameterDimensions, values: runningMean, elementOffset: nil),
                OutputArray(name: "running_var.npy", shape: shape.parameterDimensions, values: runningVar, elementOffset: nil),
            ]
        }
        return outputs
    }

    /// Makes this rank's part of an output wrong where an `INSTNORM_FAILPOINT`
    /// `corrupt-*` point says so, before the outputs are checked and written.
    /// dγ and dβ are written by rank 0 alone: corrupting them on another
    /// rank changes nothing on disk.
    private func applyCorruptionFailpoints(_ outputs: [OutputArray<T>]) {
        let points: [String: Failpoint] = [
            "y.npy": .corruptY, "dx.npy": .corruptDx, "dgamma.npy": .corruptDgamma, "dbeta.npy": .corruptDbeta,
        ]
        for output in outputs { points[output.name]?.corrupt(output.values.elements) }
    }

    /// y and the statistics of this rank's slice (BatchNorm: of the whole
    /// batch, and collective).
    private func forward(
        _ layer: DataParallelNorm<T>, _ inputs: LocalInputs<T>
    ) throws -> (y: TensorBuffer<T>, statistics: TensorBuffer<InstanceStatistics>) {
        let y = TensorBuffer<T>(repeating: 0, count: layer.localShape.elementCount)
        let statistics = TensorBuffer(
            repeating: InstanceStatistics(mean: 0, variance: 0, invstd: 0), count: layer.localShape.statisticsCount)
        if options.eval {
            layer.forwardInference(
                y: y.elements, x: inputs.x.readOnly,
                runningMean: inputs.runningMean!.readOnly, runningVar: inputs.runningVar!.readOnly,
                gamma: inputs.gamma?.readOnly, beta: inputs.beta?.readOnly)
        } else {
            try layer.forward(
                y: y.elements, statistics: statistics.elements, x: inputs.x.readOnly,
                gamma: inputs.gamma?.readOnly, beta: inputs.beta?.readOnly)
        }
        return (y, statistics)
    }

    private func backward(
        _ layer: DataParallelNorm<T>, _ inputs: LocalInputs<T>,
        dy: TensorBuffer<T>, statistics: TensorBuffer<InstanceStatistics>
    ) throws -> [OutputArray<T>] {
        let parameters = shape.parameterCount
        let dx = TensorBuffer<T>(repeating: 0, count: layer.localShape.elementCount)
        let dgamma = TensorBuffer<T>(repeating: 0, count: parameters)
        let dbeta = TensorBuffer<T>(repeating: 0, count: parameters)
        try layer.backward(
            dx: dx.elements, dgamma: dgamma.elements, dbeta: dbeta.elements,
            dy: dy.readOnly, x: inputs.x.readOnly, statistics: statistics.readOnly, gamma: inputs.gamma?.readOnly)
        var outputs = [OutputArray(
            name: "dx.npy", shape: files.tensorDimensions, values: dx, elementOffset: layer.localElements.lowerBound)]
        if options.weight != nil {
            outputs.append(OutputArray(name: "dgamma.npy", shape: shape.parameterDimensions, values: dgamma, elementOffset: nil))
        }
        if options.bias != nil {
            outputs.append(OutputArray(name: "dbeta.npy", shape: shape.parameterDimensions, values: dbeta, elementOffset: nil))
        }
        return outputs
    }

    /// `--check-finite` on the outputs, whose inputs were finite: first the
    /// per-sample outputs (the lowest failing rank holds the lowest sample),
    /// then the (C,) arrays, which every rank holds alike.
    private func checkFinite(_ outputs: [OutputArray<T>], firstSample: Int) throws {
        try communicator.agree(defaultExitCode: ToolExitCode.badInput) {
            var first: (row: Int, problem: String)?
            for output in outputs where output.elementOffset != nil {
                let values = output.values.readOnly
                let isStatistics = output.shape == shape.statisticsDimensions
                let found = isStatistics
                    ? firstNonFinite(values, perInstance: 1) : firstNonFinite(values, shape: shape, layout: files.layout)
                guard let bad = found else { continue }
                // Compare by sample: a statistics row and an instance are counted differently.
                let samples = isStatistics ? shape.rowsPerSample : (shape.channelShape?.channels ?? shape.rowsPerSample)
                guard bad.instance / samples < first?.row ?? .max else { continue }
                let place = isStatistics
                    ? shape.statisticsRowName(bad.instance, firstSample: firstSample) : shape.rowName(bad.instance, firstSample: firstSample)
                first = (bad.instance / samples, "\(output.name) would hold \(bad.value) at \(place) "
                    + "although the inputs there are finite: their values overflow \(T.npyDType.name)")
            }
            if let first { throw ToolError.badInput("--check-finite: " + first.problem) }
        }
        try communicator.agree(defaultExitCode: ToolExitCode.badInput) {
            // BatchNorm's statistics of an empty batch are those of no values: NaN by definition, not an overflow.
            let emptyBatch = shape.batch == 0
            for output in outputs where output.elementOffset == nil && !(emptyBatch && output.shape == shape.statisticsDimensions) {
                guard let bad = firstNonFinite(output.values.readOnly, perInstance: 1) else { continue }
                throw ToolError.badInput(
                    "--check-finite: \(output.name) would hold \(bad.value) at \(shape.parameterName) \(bad.instance) "
                        + "although the inputs are finite: the sums over the batch overflow \(T.npyDType.name)")
            }
        }
    }

    /// Four agreed steps: rank 0 creates every file under its temporary
    /// name (header written, size set); every rank writes its part and
    /// syncs; every rank reports ready; rank 0 renames them all into place,
    /// all or nothing (`OutputDirectory.commit`). A failure at any step
    /// removes the temporary files and leaves the directory as it was; so
    /// does a termination signal (see `Termination`).
    private func write(_ outputs: [OutputArray<T>]) throws {
        precondition(outputs.map(\.name) == files.outputs.names, "outputs differ from the names checked up front")
        let directory = files.outputs
        let tag = try communicator.allreduce(communicator.rank == 0 ? Int64(getpid()) : 0, .sum)
        let isRoot = communicator.rank == 0
        let partials = directory.names.map { directory.partialPath($0, tag: tag) }
        // Every rank removes the temporary files and then the directories
        // the run creates: rmdir succeeds only once they are empty, so the
        // last handler to finish leaves nothing, whichever ranks are killed.
        Termination.removeOnTermination(files: partials, directories: Array(directory.missingDirectories.reversed()))
        defer { Termination.forget() }
        do {
            try communicator.agree(defaultExitCode: ToolExitCode.ioFailure) {
                guard isRoot else { return }
                try directory.createDirectory()
                for output in outputs {
                    try ioFailure { _ = try NPYWriter.create(path: directory.partialPath(output.name, tag: tag), header: output.header) }
                }
            }
            try communicator.agree(defaultExitCode: ToolExitCode.ioFailure) {
                for (index, output) in outputs.enumerated() where output.elementOffset != nil || isRoot {
                    try ioFailure {
                        let path = directory.partialPath(output.name, tag: tag)
                        let writer = try NPYWriter.open(path: path, header: output.header)
                        try writer.write(output.values.readOnly, elementOffset: output.elementOffset ?? 0)
                        if index == 0 && Failpoint.writing.fires() {
                            throw NPYError(
                                path: path,
                                problem: "cannot write \(output.values.count * elementSize) bytes: No space left on device (errno 28) \(Failpoint.writing.note)")
                        }
                        try writer.sync()
                        try writer.close()
                    }
                }
            }
            try communicator.agree(defaultExitCode: ToolExitCode.ioFailure) {
                if !isRoot && Failpoint.renaming.fires() {
                    throw ToolError.io("cannot report the outputs ready to commit \(Failpoint.renaming.note)")
                }
            }
            try communicator.agree(defaultExitCode: ToolExitCode.ioFailure) {
                guard isRoot else { return }
                try Termination.deferringTermination {
                    try directory.commit(tag: tag) { index, from, to in
                        guard index == min(1, directory.names.count - 1), Failpoint.renaming.fires() else { return }
                        throw ToolError.io("cannot rename \(from) to \(to): Invalid cross-device link \(Failpoint.renaming.note)")
                    }
                }
            }
        } catch let failure as AgreedFailure {
            if isRoot { directory.abandon(tag: tag) }
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

    /// Reads `elements` of x and dy (this rank's samples) and every element of the (C,) arrays.
    init(files: ApplyFiles, elements: Range<Int>) throws {
        x = try Self.read(files.input, elements: elements)
        if Failpoint.reading.fires() {
            let size = MemoryLayout<T>.stride
            throw NPYError(
                path: files.input.path,
                problem: "cannot read \(elements.count * size) bytes at byte \(files.input.header.dataOffset + elements.lowerBound * size): "
                    + "Input/output error (errno 5) \(Failpoint.reading.note)")
        }
        dy = try files.grad.map { try Self.read($0, elements: elements) }
        let parameters = 0..<files.shape.parameterCount
        gamma = try files.weight.map { try Self.read($0, elements: parameters) }
        beta = try files.bias.map { try Self.read($0, elements: parameters) }
        runningMean = try files.runningMean.map { try Self.read($0, elements: parameters) }
        runningVar = try files.runningVar.map { try Self.read($0, elements: parameters) }
    }

    /// `--check-finite`: refuses NaN and infinity, naming the file and where.
    /// The (C,) arrays first (every rank holds them, so rank 0 reports), then
    /// the first instance of this rank's slice with a non-finite x or dy,
    /// named by its global sample and channel; the ranks hold the samples in
    /// rank order, so the lowest failing rank holds the lowest bad sample.
    func checkFinite(files: ApplyFiles, firstSample: Int) throws {
        let parameters = [(files.weight, gamma), (files.bias, beta), (files.runningMean, runningMean), (files.runningVar, runningVar)]
        for case let (file?, values?) in parameters {
            if let bad = firstNonFinite(values.readOnly, perInstance: 1) {
                throw ToolError.badInput(
                    "\(file.path): non-finite value \(bad.value) at \(files.shape.parameterName) \(bad.instance); --check-finite refuses NaN and infinity")
            }
        }
        var first: (instance: Int, element: Int, value: T, path: String)?
        let slices: [(NPYReader?, TensorBuffer<T>?)] = [(files.input, x), (files.grad, dy)]
        for case let (file?, values?) in slices {
            guard let bad = firstNonFinite(values.readOnly, shape: files.shape, layout: files.layout),
                  bad.instance < first?.instance ?? .max else { continue }
            first = (bad.instance, bad.element, bad.value, file.path)
        }
        guard let first else { return }
        throw ToolError.badInput(
            "\(first.path): non-finite value \(first.value) at \(files.shape.rowName(first.instance, firstSample: firstSample)) "
                + "(element \(first.element) of that \(files.shape.rowKind)); --check-finite refuses NaN and infinity")
    }

    /// `--check-finite` in eval mode: a running variance v with v + ε ≤ 0
    /// would give its channel r = 1/sqrt(v + ε) = NaN or ∞, and every output
    /// of the channel NaN or ∞ from finite inputs. Refused here, naming the
    /// channel and the cause, rather than after the outputs as an overflow.
    func checkRunningVariance(files: ApplyFiles, eps: Double) throws {
        guard let file = files.runningVar, let values = runningVar?.readOnly else { return }
        guard let channel = values.firstIndex(where: { $0.widened + eps <= 0 }) else { return }
        throw ToolError.badInput(
            "\(file.path): running variance \(values[channel]) at \(files.shape.parameterName) \(channel) is at most −ε = "
                + "\(-eps): --eval would normalize with 1/sqrt(\(values[channel].widened + eps)); --check-finite refuses it")
    }

    private static func read(_ reader: NPYReader, elements: Range<Int>) throws -> TensorBuffer<T> {
        let buffer = TensorBuffer<T>(repeating: 0, count: elements.count)
        try reader.read(into: buffer.elements, elementOffset: elements.lowerBound)
        return buffer
    }
}

/// The first non-finite value of `values`, read as instances of
/// `perInstance` values: its instance, its place in that instance, the value.
func firstNonFinite<T: BinaryFloatingPoint>(
    _ values: UnsafeBufferPointer<T>, perInstance: Int
) -> (instance: Int, element: Int, value: T)? {
    guard let index = values.firstIndex(where: { !$0.isFinite }) else { return nil }
    return (index / perInstance, index % perInstance, values[index])
}

/// The first non-finite value of a slice of whole samples of `shape` stored
/// in `layout`: its instance (or layer-norm row) within the slice, its
/// position in that, the value. A group's values are named by instance:
/// a channel says more than a group.
func firstNonFinite<T: BinaryFloatingPoint>(
    _ values: UnsafeBufferPointer<T>, shape: NormShape, layout: TensorLayout
) -> (instance: Int, element: Int, value: T)? {
    guard let index = values.firstIndex(where: { !$0.isFinite }) else { return nil }
    guard let channelShape = shape.channelShape else { return (index / shape.rowLength, index % shape.rowLength, values[index]) }
    let (instance, position) = channelShape.instanceAndPosition(ofOffset: index, in: layout)
    return (instance, position, values[index])
}

extension NormShape {
    /// "sample n, channel c" for instance and group norm (`index` an
    /// instance of the slice), "sample n, row r" for layer norm.
    func rowName(_ index: Int, firstSample: Int) -> String {
        if let channelShape {
            return "sample \(firstSample + index / channelShape.channels), channel \(index % channelShape.channels)"
        }
        return "sample \(firstSample + index / rowsPerSample), row \(index % rowsPerSample)"
    }

    /// "sample n, channel c" (instance), "group g" (group) or "row r" (layer)
    /// of row `index` of the saved statistics of a slice.
    func statisticsRowName(_ index: Int, firstSample: Int) -> String {
        let kind = switch normalization { case .instance, .batch: "channel"; case .group: "group"; case .layer: "row" }
        if normalization == .batch { return "channel \(index)" }
        return "sample \(firstSample + index / rowsPerSample), \(kind) \(index % rowsPerSample)"
    }

    /// What `firstNonFinite` counts in: an instance or a row.
    var rowKind: String { channelShape == nil ? "row" : "instance" }

    /// What a γ entry is called.
    var parameterName: String { channelShape == nil ? "position" : "channel" }
}
