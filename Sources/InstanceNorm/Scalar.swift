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
    /// Σ of the lanes, each widened to `Double` first.
    static func widenedSum(_ vector: Vector) -> Double
    /// Writes one vector without reading its cache line first; `address`
    /// must be 64-byte aligned.
    static func streamStore(_ vector: Vector, to address: UnsafeMutablePointer<Self>)
}

extension Float: InstanceNormScalar {
    public typealias Vector = SIMD16<Float>

    @inlinable @inline(__always) public var widened: Double { Double(self) }

    @inlinable @inline(__always)
    public static func widenedSum(_ vector: SIMD16<Float>) -> Double {
        (SIMD8<Double>(vector.lowHalf) + SIMD8<Double>(vector.highHalf)).sum()
    }

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
    public static func widenedSum(_ vector: SIMD8<Double>) -> Double { vector.sum() }

    @inlinable @inline(__always)
    public static func streamStore(_ vector: SIMD8<Double>, to address: UnsafeMutablePointer<Double>) {
        instnorm_stream_store_double4(address, vector.lowHalf)
        instnorm_stream_store_double4(address + 4, vector.highHalf)
    }
}
