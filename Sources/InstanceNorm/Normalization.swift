/// A member of the normalization family. Each normalizes *rows*: runs of
/// contiguous values with statistics of their own, within one sample, so a
/// rank holding whole samples needs nothing from the others until dγ, dβ
/// are summed over the batch.
///
///     instance         x (N, C, S…)      row = one channel's M values          γ, β per channel
///     group(G)         x (N, C, S…)      row = C/G channels' M values each     γ, β per channel
///     layer(K)         x (N, …, D1…DK)   row = the D = D1·…·DK trailing values  γ, β per element, (D1…DK)
///     batch            x (N, C, S…)      statistics per channel over all N·M values of the batch
///
/// BatchNorm is the odd one: its statistics span the samples, so they cross
/// ranks in the forward and the backward (see `BatchNormKernel`); its
/// per-sample pieces are the instances (n, c), with the channel's statistics.
///
/// For every row of L values: μ = (1/L) Σ x, σ² = (1/L) Σ (x − μ)²,
/// r = 1/sqrt(σ² + ε), x̂ = (x − μ)·r, y = γ·x̂ + β with γ, β of the value's
/// channel (instance, group) or position in the row (layer). `group(C)` is
/// `instance`; `group(1)` is PyTorch's `GroupNorm(1, C)`; `layer(K)` is
/// `nn.LayerNorm(x.shape[-K:])`.
public enum Normalization: Hashable, Sendable, CustomStringConvertible {
    /// Per sample and channel: M values per row.
    case instance
    /// G groups of C/G consecutive channels; G divides C. x may be (N, C)
    /// (M = 1), as PyTorch's `GroupNorm` takes it.
    case group(groups: Int)
    /// Statistics over the trailing K dimensions, 1 ≤ K < rank of x.
    case layer(normalizedDimensions: Int)
    /// Statistics per channel over the whole batch, (N, S…): PyTorch's
    /// `batch_norm` in training mode. x may be (N, C) (M = 1).
    case batch

    public var description: String {
        switch self {
        case .instance: "instance"
        case .group(let groups): "group (G = \(groups))"
        case .layer(let dimensions): "layer (K = \(dimensions))"
        case .batch: "batch"
        }
    }
}

/// A batch as the normalization family sees it: N samples of
/// `rowsPerSample` rows of `rowLength` values, and the shapes of the
/// parameters and saved statistics that go with it.
///
/// `dimensions` are logical: (N, C, S…) for instance and group norm,
/// whatever the memory layout; x's shape for layer norm.
public struct NormShape: Hashable, Sendable, CustomStringConvertible {
    /// Which norm the batch is normalized by.
    public let normalization: Normalization
    /// x's dimensions: (N, C, S1…Sk) for instance and group, (N, …, D1…DK) for layer.
    public let dimensions: [Int]

    /// Checks that `dimensions` fit `normalization`: instance needs
    /// (N, C, S1…) with a spatial dimension, group and batch (N, C) or more,
    /// group 1 ≤ G ≤ C with G dividing C;
    /// layer needs at least (N, D) and 1 ≤ K < dimensions.count. N may be 0
    /// (a rank without samples); every other size is at least 1.
    public init(_ normalization: Normalization, dimensions: [Int]) throws(InstanceNormError) {
        self.normalization = normalization
        self.dimensions = dimensions
        switch normalization {
        case .instance:
            _ = try InstanceNormShape(dimensions: dimensions)
        case .batch:
            _ = try Self.channelShape(Self.withChannels(dimensions, "batch"))
        case .group(let groups):
            let channels = try Self.channelShape(Self.withChannels(dimensions, "group")).channels
            guard groups >= 1, groups <= channels, channels % groups == 0 else {
                throw .invalidArgument(groups < 1
                    ? "--groups must be a positive divisor of the channel count C = \(channels), got \(groups)"
                    : "--groups \(groups) must divide the channel count C = \(channels)")
            }
        case .layer(let normalized):
            guard dimensions.count >= 2 else {
                throw .invalidShape("layer norm needs at least (N, D), got \(dimensions.count) dimension(s) \(dimensions)")
            }
            guard normalized >= 1, normalized < dimensions.count else {
                throw .invalidArgument(
                    "--normalized-dims \(normalized) must be between 1 and \(dimensions.count - 1) for a \(dimensions.count)-dimensional input")
            }
            guard dimensions[0] >= 0 else { throw .invalidShape("the batch size N must be >= 0, got \(dimensions[0])") }
            if let bad = dimensions.dropFirst().firstIndex(where: { $0 < 1 }) {
                throw .invalidShape("dimension \(bad) must be >= 1, got \(dimensions[bad])")
            }
            guard InstanceNormShape.checkedProduct(dimensions) != nil else {
                throw .invalidShape("the element count of \(dimensions) does not fit in a 64-bit integer")
            }
        }
    }

    /// `dimensions`, which batch and group norm (`name`) need to be at
    /// least (N, C).
    private static func withChannels(_ dimensions: [Int], _ name: String) throws(InstanceNormError) -> [Int] {
        guard dimensions.count >= 2 else {
            throw .invalidShape("\(name) norm needs at least (N, C), got \(dimensions.count) dimension(s) \(dimensions)")
        }
        return dimensions
    }

    /// The instance-norm shape of the same dimensions (instance, group and
    /// batch norm; (N, C) reads as (N, C, 1)).
    public var channelShape: InstanceNormShape? {
        switch normalization {
        case .instance, .group, .batch: try? Self.channelShape(dimensions)
        case .layer: nil
        }
    }

    private static func channelShape(_ dimensions: [Int]) throws(InstanceNormError) -> InstanceNormShape {
        try InstanceNormShape(dimensions: dimensions.count == 2 ? dimensions + [1] : dimensions)
    }

    /// N.
    public var batch: Int { dimensions[0] }

    /// The number of trailing dimensions a row spans (layer norm's K; the
    /// spatial dimensions, and for groups some channels, otherwise).
    private var normalizedDimensions: Int {
        if case .layer(let normalized) = normalization { return normalized }
        return max(dimensions.count - 2, 0)
    }

    /// Rows per sample: C (instance), G (group), the product of the
    /// dimensions between N and the normalized ones (layer).
    public var rowsPerSample: Int {
        switch normalization {
        case .instance, .batch: dimensions[1]
        case .group(let groups): groups
        case .layer: dimensions.dropFirst().dropLast(normalizedDimensions).reduce(1, *)
        }
    }

    /// L, the values of one row: M, C/G·M, D.
    public var rowLength: Int {
        switch normalization {
        case .instance, .batch: spatialCount
        case .group(let groups): dimensions[1] / groups * spatialCount
        case .layer: dimensions.suffix(normalizedDimensions).reduce(1, *)
        }
    }

    /// M: values per channel (instance and group norm).
    public var spatialCount: Int { dimensions.dropFirst(2).reduce(1, *) }

    /// N·rowsPerSample: how many rows the batch has (for BatchNorm: its
    /// instances, the pieces of each channel's statistics).
    public var rowCount: Int { batch * rowsPerSample }

    /// How many saved statistics (mean, invstd) the batch has: one per row,
    /// or for BatchNorm one per channel, the same on every rank.
    public var statisticsCount: Int { normalization == .batch ? dimensions[1] : rowCount }
    /// The values of the batch.
    public var elementCount: Int { dimensions.reduce(1, *) }
    /// Values of one sample.
    public var sampleElementCount: Int { rowsPerSample * rowLength }

    /// The shape of γ, β, dγ, dβ: (C,) or the normalized dimensions.
    public var parameterDimensions: [Int] {
        switch normalization {
        case .instance, .group, .batch: [dimensions[1]]
        case .layer: Array(dimensions.suffix(normalizedDimensions))
        }
    }

    /// How many entries γ has: C, or D.
    public var parameterCount: Int { parameterDimensions.reduce(1, *) }

    /// The shape of the saved mean and invstd: (N, C), (N, G), x.shape[:-K].
    public var statisticsDimensions: [Int] {
        switch normalization {
        case .instance: [batch, dimensions[1]]
        case .group(let groups): [batch, groups]
        case .batch: [dimensions[1]]
        case .layer: Array(dimensions.dropLast(normalizedDimensions))
        }
    }

    /// The dimensions as a tensor in `layout` stores them: channels last
    /// moves C after the spatial dimensions ((N, C) stays as it is); layer
    /// norm has its one layout, its own.
    public func dimensions(in layout: TensorLayout) -> [Int] {
        if case .layer = normalization { return dimensions }
        guard layout == .channelsLast, dimensions.count > 2 else { return dimensions }
        return [dimensions[0]] + dimensions.dropFirst(2) + [dimensions[1]]
    }

    /// The same shape with another batch size: one rank's slice.
    public func withBatch(_ batch: Int) -> NormShape {
        precondition(batch >= 0 && batch <= self.batch, "a slice cannot be larger than the batch")
        return try! NormShape(normalization, dimensions: [batch] + dimensions.dropFirst())
    }

    public var description: String {
        "\(normalization) norm of (" + dimensions.map(String.init).joined(separator: ", ") + ")"
    }
}
