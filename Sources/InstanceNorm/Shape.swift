/// The shape of an InstanceNorm input, (N, C, S1, …, Sk) in C order.
///
/// Every (n, c) pair is one *instance*: M = S1·…·Sk contiguous values that are
/// normalized on their own. Instances are numbered n·C + c, so instance i
/// starts at element i·M.
public struct InstanceNormShape: Hashable, Sendable, CustomStringConvertible {
    /// N: the number of samples.
    public let batch: Int
    /// C: the number of channels; γ and β have one entry per channel.
    public let channels: Int
    /// S1…Sk, k ≥ 1.
    public let spatial: [Int]

    /// Checks the dimensions: N ≥ 0 (a rank may hold no samples), C ≥ 1,
    /// at least one spatial dimension, every spatial size ≥ 1, and an element
    /// count that fits in `Int`.
    public init(batch: Int, channels: Int, spatial: [Int]) throws(InstanceNormError) {
        guard batch >= 0 else { throw .invalidShape("the batch size N must be >= 0, got \(batch)") }
        guard channels >= 1 else { throw .invalidShape("the channel count C must be >= 1, got \(channels)") }
        guard !spatial.isEmpty else {
            throw .invalidShape("the input needs at least one spatial dimension after (N, C)")
        }
        if let bad = spatial.firstIndex(where: { $0 < 1 }) {
            throw .invalidShape("spatial dimension \(bad + 1) must be >= 1, got \(spatial[bad])")
        }
        self.batch = batch
        self.channels = channels
        self.spatial = spatial
        guard Self.checkedProduct(dimensions) != nil else {
            throw .invalidShape("the element count of \(self) does not fit in a 64-bit integer")
        }
    }

    /// Reads (N, C, S1…Sk) from a full shape as stored in a file.
    public init(dimensions: [Int]) throws(InstanceNormError) {
        guard dimensions.count >= 3 else {
            throw .invalidShape(
                "expected (N, C, S1, ...) with at least one spatial dimension, got \(dimensions.count) dimension(s) \(dimensions)")
        }
        try self.init(batch: dimensions[0], channels: dimensions[1], spatial: Array(dimensions.dropFirst(2)))
    }

    /// M: values per instance.
    public var spatialCount: Int { spatial.reduce(1, *) }
    /// N·C.
    public var instanceCount: Int { batch * channels }
    /// N·C·M.
    public var elementCount: Int { instanceCount * spatialCount }
    /// (N, C, S1…Sk).
    public var dimensions: [Int] { [batch, channels] + spatial }

    /// The same shape with another batch size: one rank's slice of the batch.
    public func withBatch(_ batch: Int) -> InstanceNormShape {
        // Safe: a smaller or equal batch cannot overflow where the original did not.
        precondition(batch >= 0 && batch <= self.batch, "a slice cannot be larger than the batch")
        return try! InstanceNormShape(batch: batch, channels: channels, spatial: spatial)
    }

    /// `"(N, C, S1, …)"`, for example `"(32, 64, 56, 56)"`.
    public var description: String { "(" + dimensions.map(String.init).joined(separator: ", ") + ")" }

    static func checkedProduct(_ values: [Int]) -> Int? {
        var product = 1
        for value in values {
            let (next, overflow) = product.multipliedReportingOverflow(by: value)
            if overflow { return nil }
            product = next
        }
        return product
    }
}

/// A problem with the arguments of a kernel call, worded for the user.
public enum InstanceNormError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The dimensions cannot describe an InstanceNorm input; the message says why.
    case invalidShape(String)
    /// Another argument is out of range; the message says which and why.
    case invalidArgument(String)

    /// The message alone.
    public var description: String {
        switch self {
        case .invalidShape(let message), .invalidArgument(let message): message
        }
    }
}

extension InstanceNormShape {
    /// Reads the shape from dimensions as stored in `layout`: (N, C, S1…Sk)
    /// channels first, (N, S1…Sk, C) channels last.
    public init(dimensions: [Int], layout: TensorLayout) throws(InstanceNormError) {
        switch layout {
        case .channelsFirst:
            try self.init(dimensions: dimensions)
        case .channelsLast:
            guard dimensions.count >= 3 else {
                throw .invalidShape(
                    "expected (N, S1, ..., C) with at least one spatial dimension, got \(dimensions.count) dimension(s) \(dimensions)")
            }
            try self.init(batch: dimensions[0], channels: dimensions[dimensions.count - 1],
                          spatial: Array(dimensions[1..<dimensions.count - 1]))
        }
    }

    /// The dimensions as a tensor in `layout` stores them.
    public func dimensions(in layout: TensorLayout) -> [Int] {
        switch layout {
        case .channelsFirst: dimensions
        case .channelsLast: [batch] + spatial + [channels]
        }
    }

    /// Where value `position` (0..<M) of instance (sample, channel) sits in
    /// a tensor of this shape stored in `layout`.
    @inlinable
    public func offset(sample: Int, channel: Int, position: Int, in layout: TensorLayout) -> Int {
        switch layout {
        case .channelsFirst: (sample * channels + channel) * spatialCount + position
        case .channelsLast: (sample * spatialCount + position) * channels + channel
        }
    }

    /// The instance (n·C + c) and position of the value at `offset` in a
    /// tensor of this shape stored in `layout`: the inverse of `offset`.
    @inlinable
    public func instanceAndPosition(ofOffset offset: Int, in layout: TensorLayout) -> (instance: Int, position: Int) {
        let spatialCount = spatialCount
        switch layout {
        case .channelsFirst:
            return (offset / spatialCount, offset % spatialCount)
        case .channelsLast:
            let sample = offset / (spatialCount * channels), row = offset / channels
            return (sample * channels + offset % channels, row % spatialCount)
        }
    }
}
