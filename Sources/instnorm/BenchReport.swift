import DataParallel
import Foundation
import InstanceNorm

/// What `bench` prints: a `#` header with the configuration, then one row per
/// phase with median / min / max in milliseconds; or the same as one JSON object.
struct BenchReport {
    let shape: InstanceNormShape
    let ranks: Int
    let dtype: String
    let iterations: Int
    let warmup: Int
    let timings: PhaseTimings
    let library: String
    let verification: Verification?

    func print(json: Bool) {
        Console.output(json ? jsonText : tableText)
    }

    private var phases: [(name: String, seconds: [Double])] {
        [("forward", Array(timings.forward)), ("backward", Array(timings.backward)),
         ("allreduce", Array(timings.allreduce)), ("step", timings.step)]
    }

    private var tableText: String {
        let partition = BatchPartition(batch: shape.batch, ranks: ranks)
        let perRank = Set(partition.counts).sorted().map(String.init).joined(separator: " or ")
        var lines = [
            "# instnorm bench",
            "# shape \(shape) (global), ranks \(ranks), samples per rank \(perRank), dtype \(dtype)",
            "# \(iterations) timed iterations after \(warmup) warm-up; each phase time is the max over ranks",
            "# \(library)",
        ]
        if let verification {
            lines.append("# verify: \(verification.passed ? "passed" : "FAILED"), \(verification.summary)")
        }
        lines.append(row("phase", "median_ms", "min_ms", "max_ms"))
        for (name, seconds) in phases {
            let summary = Summary(seconds)
            lines.append(row(name, milliseconds(summary.median), milliseconds(summary.minimum), milliseconds(summary.maximum)))
        }
        return lines.joined(separator: "\n")
    }

    private var jsonText: String {
        var fields: [(String, String)] = [
            ("ranks", "\(ranks)"),
            ("shape", "[" + shape.dimensions.map(String.init).joined(separator: ", ") + "]"),
            ("dtype", quoted(dtype)),
            ("iterations", "\(iterations)"),
            ("warmup", "\(warmup)"),
        ]
        for (name, seconds) in phases {
            let summary = Summary(seconds)
            fields += [
                ("\(name)_ms", milliseconds(summary.median)),
                ("\(name)_min_ms", milliseconds(summary.minimum)),
                ("\(name)_max_ms", milliseconds(summary.maximum)),
            ]
        }
        fields.append(("mpi_library", quoted(library)))
        if let verification { fields.append(("verified", verification.passed ? "true" : "false")) }
        return "{" + fields.map { "\(quoted($0.0)): \($0.1)" }.joined(separator: ", ") + "}"
    }

    private func row(_ columns: String...) -> String {
        columns[0].padding(toLength: 10, withPad: " ", startingAt: 0)
            + columns.dropFirst().map { String(repeating: " ", count: max(0, 11 - $0.count)) + $0 }.joined()
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

func milliseconds(_ seconds: Double) -> String { String(format: "%.4f", seconds * 1000) }

/// A JSON string literal.
func quoted(_ text: String) -> String {
    var result = "\""
    for scalar in text.unicodeScalars {
        switch scalar {
        case "\"": result += "\\\""
        case "\\": result += "\\\\"
        case _ where scalar.value < 0x20: result += String(format: "\\u%04x", scalar.value)
        default: result.unicodeScalars.append(scalar)
        }
    }
    return result + "\""
}
