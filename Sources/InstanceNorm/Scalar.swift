import _InstanceNormShims

/// A storage precision the kernels run in: `Float` or `Double`.
///
/// Every sum the kernels form is finished in `Double`. What a precision must
/// supply beyond `BinaryFloatingPoint` is its 64-byte vector (one cache line,
/// the unit of a streaming store) and the two operations on it that Swift's
/// generic SIMD cannot express cheaply.
public protocol InstanceNormScalar: BinaryFloatingPoint, SIMDScalar, Codable, Sendable {
    /// One cache line of values.
    associatedtype Vector: SIMD where Vector.Scalar == Self
    /// The value widened exactly to `Double`.
    var widened: Double { get }
    /// Σ of the lanes, each widened to `Double` first, in the order of
    /// `widenedLaneSum`.
    static func widenedSum(_ vector: Vector) -> Double
    /// Writes one vector without reading its cache line first; `address`
    /// must be 64-byte aligned.
    static func streamStore(_ vector: Vector, to address: UnsafeMutablePointer<Self>)
}

extension Float: InstanceNormScalar {
    public typealias Vector = SIMD16<Float>

    @inlinable @inline(__always) public var widened: Double { Double(self) }

    @inlinable @inline(__always)
    public static func widenedSum(_ vector: SIMD16<Float>) -> Double { widenedLaneSum(lanes: 16) { vector[$0] } }

    @inlinable @inline(__always)
    public static func streamStore(_ vector: SIMD16<Float>, to address: UnsafeMutablePointer<Float>) {
        instnorm_stream_store_float8(address, vector.lowHalf)
        instnorm_stream_store_float8(address + 8, vector.highHalf)
    }
}

extension Double: InstanceNormScalar {
    public typealias Vector = SIMD8<Double>

    @inlinable @inline(__always) public var widened: Double { self }

    @inlinable @inline(__always)
    public static func widenedSum(_ vector: SIMD8<Double>) -> Double { widenedLaneSum(lanes: 8) { vector[$0] } }

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
