import _InstanceNormShims

/// A storage precision of the tensors: `Float16`, `Float` or `Double`.
///
/// Storage and arithmetic are separate: tensors are read and written in
/// `Self`, every per-value operation runs in `Compute` (`Float` for `Float16`
/// and `Float`, `Double` for `Double`), and every sum is finished in `Double`.
///
///     load:   x ↦ Compute(x)              exact (Compute holds every value of Self)
///     store:  v ↦ Self(v)                 rounded to nearest, ties to even
///
/// so a result stored in `Float16` carries the rounding of its store plus
/// the small error of a `Float` computation, not that of a computation in
/// half precision. For `Float` and `Double` (`Compute == Self`) the load and
/// store are plain copies and the kernels run exactly as they did before
/// storage and compute were told apart.
public protocol InstanceNormScalar: BinaryFloatingPoint, Codable, Sendable {
    /// The precision of the per-value arithmetic and of the lane sums.
    associatedtype Compute: InstanceNormComputeScalar
    /// One cache line of compute values; a load fills one from `Vector.scalarCount` stored values.
    typealias Vector = Compute.Lanes
    /// The value widened exactly to `Double`.
    var widened: Double { get }
    /// The value widened exactly to `Compute`.
    var computed: Compute { get }
    /// `value` rounded to nearest (ties to even), as every output is stored.
    init(rounding value: Compute)
    /// `Vector.scalarCount` values from `address` (any alignment), widened.
    static func loadVector(from address: UnsafePointer<Self>) -> Vector
    /// Stores `vector` rounded to `Self` at `address` (any alignment).
    static func storeVector(_ vector: Vector, to address: UnsafeMutablePointer<Self>)
    /// Stores `vector` rounded to `Self` without reading the cache lines it
    /// writes first; `address` must be 64-byte aligned.
    static func streamStore(_ vector: Vector, to address: UnsafeMutablePointer<Self>)
}

/// A precision the kernels compute in: `Float` or `Double`. It is also a
/// storage precision, whose loads and stores are plain copies.
///
/// What it supplies beyond `BinaryFloatingPoint` is its 64-byte vector (one
/// cache line, the unit of a streaming store) and a lane sum in a fixed order.
public protocol InstanceNormComputeScalar: InstanceNormScalar, SIMDScalar where Compute == Self {
    /// One cache line of values.
    associatedtype Lanes: SIMD where Lanes.Scalar == Self
    /// Σ of the lanes, each widened to `Double` first, in the order of
    /// `widenedLaneSum`.
    static func widenedSum(_ vector: Lanes) -> Double
    /// sums[i] += lane i, widened exactly, for every lane (`sums` of any alignment).
    static func addWidened(_ vector: Lanes, to sums: UnsafeMutablePointer<Double>)
}

extension InstanceNormComputeScalar {
    /// The value itself: a compute type computes in its own precision.
    @inlinable @inline(__always) public var computed: Self { self }

    /// `value` itself: storing a compute type rounds nothing.
    @inlinable @inline(__always) public init(rounding value: Self) { self = value }

    /// `Lanes.scalarCount` values from `address` (any alignment), copied.
    @inlinable @inline(__always)
    public static func loadVector(from address: UnsafePointer<Self>) -> Lanes {
        UnsafeRawPointer(address).loadUnaligned(as: Lanes.self)
    }

    /// Stores `vector` at `address` (any alignment), copied.
    @inlinable @inline(__always)
    public static func storeVector(_ vector: Lanes, to address: UnsafeMutablePointer<Self>) {
        UnsafeMutableRawPointer(address).storeBytes(of: vector, as: Lanes.self)
    }
}

extension Float: InstanceNormComputeScalar {
    public typealias Compute = Float
    public typealias Lanes = SIMD16<Float>

    @inlinable @inline(__always) public var widened: Double { Double(self) }

    @inlinable @inline(__always)
    public static func widenedSum(_ vector: SIMD16<Float>) -> Double { widenedLaneSum(lanes: 16) { vector[$0] } }

    @inlinable @inline(__always)
    public static func addWidened(_ vector: SIMD16<Float>, to sums: UnsafeMutablePointer<Double>) {
        instnorm_add_widened_float8(sums, vector.lowHalf)
        instnorm_add_widened_float8(sums + 8, vector.highHalf)
    }

    @inlinable @inline(__always)
    public static func streamStore(_ vector: SIMD16<Float>, to address: UnsafeMutablePointer<Float>) {
        instnorm_stream_store_float8(address, vector.lowHalf)
        instnorm_stream_store_float8(address + 8, vector.highHalf)
    }
}

extension Double: InstanceNormComputeScalar {
    public typealias Compute = Double
    public typealias Lanes = SIMD8<Double>

    @inlinable @inline(__always) public var widened: Double { self }

    @inlinable @inline(__always)
    public static func widenedSum(_ vector: SIMD8<Double>) -> Double { widenedLaneSum(lanes: 8) { vector[$0] } }

    @inlinable @inline(__always)
    public static func addWidened(_ vector: SIMD8<Double>, to sums: UnsafeMutablePointer<Double>) {
        let raw = UnsafeMutableRawPointer(sums)
        raw.storeBytes(of: raw.loadUnaligned(as: SIMD8<Double>.self) + vector, as: SIMD8<Double>.self)
    }

    @inlinable @inline(__always)
    public static func streamStore(_ vector: SIMD8<Double>, to address: UnsafeMutablePointer<Double>) {
        instnorm_stream_store_double4(address, vector.lowHalf)
        instnorm_stream_store_double4(address + 4, vector.highHalf)
    }
}

/// Σ lane(i) for i in 0..<lanes, widened to `Double`, in one explicit order:
/// Σ_i (lane(i) + lane(i + lanes/2)) from i = 0 up. Spelled out, not left to
/// `SIMD.sum()`, because the channels-last kernels rebuild the same sum from
/// lanes held elsewhere and must add in the same order to give the same bits.
@inlinable @inline(__always)
public func widenedLaneSum<T: InstanceNormScalar>(lanes: Int, _ lane: (Int) -> T) -> Double {
    let half = lanes / 2
    var total = 0.0
    for index in 0..<half { total += lane(index).widened + lane(index + half).widened }
    return total
}
