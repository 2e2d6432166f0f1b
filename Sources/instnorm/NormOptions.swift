import ArgumentParser
import InstanceNorm

/// `--norm`, `--groups`, `--normalized-dims`: which member of the family
/// `bench` and `apply` run. Shared by both commands.
struct NormOptions: ParsableArguments {
    @Option(help: """
        The norm: instance (per sample and channel), group (per sample and group of channels, \
        with --groups), layer (per row of the trailing --normalized-dims dimensions) or batch \
        (per channel over the whole batch, synchronized across the ranks).
        """)
    var norm: NormKind = .instance

    // Unconditional, as --eps: `--groups -2` reaches the check of G rather
    // than reading as a missing value.
    @Option(parsing: .unconditional, help: ArgumentHelp("G, the number of groups of --norm group; it must divide C.", valueName: "G"))
    var groups: Int?

    @Option(parsing: .unconditional, help: ArgumentHelp(
        "K, the trailing dimensions --norm layer normalizes over (default: all but the first).", valueName: "K"))
    var normalizedDims: Int?

    /// The checks that need no shape: the flags fit together.
    func validate() throws {
        if norm == .group && groups == nil { throw ValidationError("--norm group needs --groups G (G divides C)") }
        if let groups, norm != .group { throw ValidationError("--groups \(groups) goes with --norm group, not --norm \(norm.rawValue)") }
        if let normalizedDims, norm != .layer {
            throw ValidationError("--normalized-dims \(normalizedDims) goes with --norm layer, not --norm \(norm.rawValue)")
        }
    }

    /// The norm for an input of `dimensionCount` dimensions.
    func normalization(dimensionCount: Int) -> Normalization {
        switch norm {
        case .instance: .instance
        case .group: .group(groups: groups ?? 0)
        case .layer: .layer(normalizedDimensions: normalizedDims ?? dimensionCount - 1)
        case .batch: .batch
        }
    }

    /// The norm's shape of logical `dimensions`: `.invalidArgument` when a
    /// flag does not fit them (G does not divide C, K out of range),
    /// `.invalidShape` when they fit no norm of this kind.
    func shape(_ dimensions: [Int]) throws(InstanceNormError) -> NormShape {
        try NormShape(normalization(dimensionCount: dimensions.count), dimensions: dimensions)
    }

    /// Refuses what a norm does not have: `--layout nhwc` with layer norm
    /// (its layout is the natural one), running statistics with group or
    /// layer norm (PyTorch keeps none for them either).
    func checkFits(layout: Layout, runningStatistics: Bool, momentum: Bool = false) throws {
        if norm == .layer && layout == .nhwc {
            throw ToolError.usage("--layout nhwc does not apply to --norm layer: it normalizes the trailing dimensions as stored")
        }
        if (norm == .group || norm == .layer) && runningStatistics {
            throw ToolError.usage("--norm \(norm.rawValue) keeps no running statistics (nor does PyTorch's): drop --running-mean and --running-var")
        }
        if (norm == .group || norm == .layer) && momentum {
            throw ToolError.usage("--norm \(norm.rawValue) keeps no running statistics (nor does PyTorch's): --momentum has nothing to update")
        }
    }
}

/// `Normalization`'s kinds as a flag value.
enum NormKind: String, ExpressibleByArgument, CaseIterable {
    case instance, group, layer, batch
}

extension NormShape {
    /// BatchNorm in training mode needs two values per channel in the whole
    /// batch, as PyTorch's ("Expected more than 1 value per channel when
    /// training"), or none (an empty batch, whose y is empty): the problem, or nil.
    var singleValuePerChannel: String? {
        guard normalization == .batch, batch * spatialCount == 1 else { return nil }
        return "batch norm in training mode needs more than one value per channel (N·M = \(batch * spatialCount))"
    }
}
