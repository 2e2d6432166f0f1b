import DataParallel
import InstanceNorm

/// What `bench` prints: a `#` header with the configuration and the
/// machine's bandwidth, then one row per phase (median / min / max
/// milliseconds, achieved GB/s and fraction of the floor); or the same as
/// one JSON object.
struct BenchReport {
    let options: Bench
    let shape: NormShape
    let ranks: Int
    let elementBytes: Int
    let timings: PhaseTimings
    let bandwidth: MemoryBandwidth
    let library: String
    let verification: Verification?
    let checksum: ChecksumResult?
    /// The dγ, dβ collective's bytes on rank 0, which holds the most samples.
    let reductionBytes: (sent: Int, received: Int)

    func print(json: Bool) {
        Console.output(json ? jsonText : tableText)
    }

    /// Bytes a phase must move at least: forward reads x and writes y,
    /// backward reads x and dy and writes dx. BatchNorm must read its
    /// inputs twice (the statistics, then y; the sums, then dx): its channel
    /// spans the batch and cannot stay in cache in between.
    private var forwardBytes: Double { Double((shape.normalization == .batch ? 3 : 2) * elementBytes * shape.elementCount) }
    private var backwardBytes: Double { Double((shape.normalization == .batch ? 5 : 3) * elementBytes * shape.elementCount) }

    /// LayerNorm's fused backward orders here: whether it takes rows in pairs
    /// (`LayerRowPairs`) and adds the column sums in its loops (`LayerColumnsInLoop`).
    private var layerOrders: (rowPairs: Bool, columnsInLoop: Bool) {
        switch options.dtype {
        case .float16: (LayerRowPairs.taken(for: Float16.self), LayerColumnsInLoop.taken(for: Float16.self))
        case .float32: (LayerRowPairs.taken(for: Float.self), LayerColumnsInLoop.taken(for: Float.self))
        case .float64: (LayerRowPairs.taken(for: Double.self), LayerColumnsInLoop.taken(for: Double.self))
        }
    }

    private struct Row {
        let name: String
        let summary: Summary
        /// Achieved bytes per second and its fraction of the floor, for the
        /// phases that move tensors.
        let rate: (bytesPerSecond: Double, floorFraction: Double)?
    }

    private var rows: [Row] {
        let forward = Summary(timings.forward), backward = Summary(timings.backward)
        return [
            Row(name: "forward", summary: forward,
                rate: (forwardBytes / forward.median, forwardBytes / forward.median / bandwidth.copy)),
            Row(name: "backward", summary: backward,
                rate: (backwardBytes / backward.median, backwardBytes / backward.median / bandwidth.add)),
            Row(name: "allreduce", summary: Summary(timings.exposedAllreduce), rate: nil),
            Row(name: "imbalance", summary: Summary(timings.imbalance), rate: nil),
            Row(name: "step", summary: Summary(timings.step), rate: nil),
        ]
    }

    private var reductionText: String {
        switch options.reduction {
        case .reproducible: "an allreduce of exact integer sums, rounded once (the same bits at any rank count)"
        case .allreduce: "an allreduce of the per-rank sums (the last bits depend on the rank count)"
        case .gather: "gathering every instance's sums and adding them in sample order (the same bits at any rank count)"
        }
    }

    private var tableText: String {
        let partition = BatchPartition(batch: shape.batch, ranks: ranks)
        let perRank = Set(partition.counts).sorted().map(String.init).joined(separator: " or ")
        var lines = [
            "# instnorm bench",
            "# \(shape) (global), ranks \(ranks), threads per rank \(options.threads), samples per rank \(perRank), dtype \(options.dtype.rawValue)",
            "# \(options.iterations) timed iterations after \(options.warmup) warm-up; each phase time is the max over ranks",
            "# memory bandwidth of this job (STREAM-like, ordinary stores, 3 arrays of \(bandwidth.arrayBytes >> 20) MiB per rank, all ranks at once): "
                + "copy \(gigabytes(bandwidth.copy)) GB/s, add \(gigabytes(bandwidth.add)) GB/s",
            "# floor: forward moves \(Int(forwardBytes) / shape.elementCount) B/element against copy, "
                + "backward \(Int(backwardBytes) / shape.elementCount) B/element against add"
                + (shape.normalization == .batch ? " (batch norm reads x, dy twice)" : ""),
            "# layout \(options.layout.rawValue); dgamma, dbeta reduced by \(reductionText), "
                + "\(options.overlap ? "started as soon as the local sums exist, hidden behind the dx pass" : "blocking, after the dx pass")",
            "# reduction traffic per rank and backward: \(reductionBytes.sent) B sent, \(reductionBytes.received) B received",
            "# allreduce row: what the reduction adds after the dx pass (wait for the collective\(options.reduction == .allreduce ? "" : " + the final sum")) "
                + "on the last rank to finish its dx, part of backward; imbalance is how much longer the first rank waited",
            "# \(library)",
        ]
        if let verification {
            lines.append("# verify: \(verification.passed ? "passed" : "FAILED"), \(verification.summary)")
        }
        if let checksum {
            let verdict = checksum.mismatch.map { "CHANGED on rank \($0.rank) at iteration \($0.iteration)" }
                ?? "identical in all \(checksum.iterations) iterations (warm-up included)"
            lines.append("# checksum of y, dx, dgamma, dbeta: \(checksum.text), \(verdict)")
        }
        lines.append(row(["phase", "median_ms", "min_ms", "max_ms", "GB/s", "floor"]))
        for entry in rows {
            lines.append(row([
                entry.name, milliseconds(entry.summary.median), milliseconds(entry.summary.minimum),
                milliseconds(entry.summary.maximum),
                entry.rate.map { gigabytes($0.bytesPerSecond) } ?? "-",
                entry.rate.map { fixed(100 * $0.floorFraction, 0) + "%" } ?? "-",
            ]))
        }
        return lines.joined(separator: "\n")
    }

    private var jsonText: String {
        var fields: [(String, String)] = [
            ("ranks", "\(ranks)"),
            ("threads", "\(options.threads)"),
            ("shape", "[" + shape.dimensions.map(String.init).joined(separator: ", ") + "]"),
            ("norm", quoted(options.family.norm.rawValue)),
            ("groups", options.family.groups.map(String.init) ?? "null"),
            ("normalized_dims", options.family.norm == .layer ? "\(shape.dimensions.count - shape.statisticsDimensions.count)" : "null"),
            ("dtype", quoted(options.dtype.rawValue)),
            ("layer_row_pairs", options.family.norm == .layer ? "\(layerOrders.rowPairs)" : "null"),
            ("layer_columns_in_loop", options.family.norm == .layer ? "\(layerOrders.columnsInLoop)" : "null"),
            ("fused_forward", "\(FusedForward.taken)"),
            ("iterations", "\(options.iterations)"),
            ("warmup", "\(options.warmup)"),
            ("overlap", options.overlap ? "true" : "false"),
            ("layout", quoted(options.layout.rawValue)),
            ("reduction", quoted(options.reduction.rawValue)),
            ("reduction_bytes_per_rank", "\(reductionBytes.sent + reductionBytes.received)"),
            ("reduction_sent_bytes_per_rank", "\(reductionBytes.sent)"),
            ("reduction_received_bytes_per_rank", "\(reductionBytes.received)"),
        ]
        for entry in rows {
            fields += [
                ("\(entry.name)_ms", milliseconds(entry.summary.median)),
                ("\(entry.name)_min_ms", milliseconds(entry.summary.minimum)),
                ("\(entry.name)_max_ms", milliseconds(entry.summary.maximum)),
            ]
            if let rate = entry.rate {
                fields += [
                    ("\(entry.name)_gbps", gigabytes(rate.bytesPerSecond)),
                    ("\(entry.name)_floor_fraction", fixed(rate.floorFraction, 4)),
                ]
            }
        }
        fields += [
            ("exposed_allreduce_ms", milliseconds(Summary(timings.exposedAllreduce).median)),
            ("stream_copy_gbps", gigabytes(bandwidth.copy)),
            ("stream_add_gbps", gigabytes(bandwidth.add)),
            ("mpi_library", quoted(library)),
        ]
        if let verification { fields.append(("verified", verification.passed ? "true" : "false")) }
        if let checksum {
            fields += [
                ("checksum", quoted(checksum.text)), ("checksum_iterations", "\(checksum.iterations)"),
                ("checksum_identical", checksum.mismatch == nil ? "true" : "false"),
            ]
        }
        return "{" + fields.map { "\(quoted($0.0)): \($0.1)" }.joined(separator: ", ") + "}"
    }

    private func row(_ columns: [String]) -> String {
        columns[0] + String(repeating: " ", count: max(0, 10 - columns[0].count))
            + columns.dropFirst().map { rightAligned($0, 11) }.joined()
    }
}

/// Median, minimum and maximum of a non-empty sample.
struct Summary {
    let median, minimum, maximum: Double

    init(_ values: [Double]) {
        precondition(!values.isEmpty)
        let sorted = values.sorted()
        let middle = sorted.count / 2
        median = sorted.count % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
        minimum = sorted[0]
        maximum = sorted[sorted.count - 1]
    }
}

func milliseconds(_ seconds: Double) -> String { fixed(seconds * 1000, 4) }
func gigabytes(_ bytesPerSecond: Double) -> String { fixed(bytesPerSecond / 1e9, 2) }

/// A JSON string literal.
func quoted(_ text: String) -> String {
    var result = "\""
    for scalar in text.unicodeScalars {
        switch scalar {
        case "\"": result += "\\\""
        case "\\": result += "\\\\"
        case _ where scalar.value < 0x20:
            let hex = String(scalar.value, radix: 16)
            result += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
        default: result.unicodeScalars.append(scalar)
        }
    }
    return result + "\""
}
