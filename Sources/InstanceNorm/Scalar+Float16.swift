import _InstanceNormShims

/// Half-precision storage, computed in `Float`.
///
/// Half holds 11 significant bits and values up to 65504: too few bits to
/// compute in (every addition to a growing lane sum would round at 2⁻¹¹ of
/// the sum), but enough to store the inputs and outputs of a layer, at half
/// the bytes of `Float`, which a memory-bound kernel turns into time. Every
/// `Float16` is a `Float`, so a load is exact; a store rounds once, to
/// nearest even.
///
/// A vector is 16 halves (32 bytes) widened to `SIMD16<Float>`. The
/// conversions go through the C shims, which with F16C (in the `haswell`
/// target the package builds for) are one `vcvtph2ps` or `vcvtps2ph` per 8
/// values, inlined: Swift's generic `SIMD16<Float>(SIMD16<Float16>)` is the
/// same instructions in a function of its own, which the kernels called per
/// vector, at 2-3x the time of the whole float32 kernel.
extension Float16: InstanceNormScalar {
    public typealias Compute = Float

    @inlinable @inline(__always) public var widened: Double { Double(self) }

    @inlinable @inline(__always) public var computed: Float { Float(self) }

    @inlinable @inline(__always) public init(rounding value: Float) { self.init(value) }

    @inlinable @inline(__always)
    public static func loadVector(from address: UnsafePointer<Float16>) -> SIMD16<Float> {
        SIMD16(lowHalf: instnorm_load_half8(address), highHalf: instnorm_load_half8(address + 8))
    }

    @inlinable @inline(__always)
    public static func storeVector(_ vector: SIMD16<Float>, to address: UnsafeMutablePointer<Float16>) {
        instnorm_store_half8(address, vector.lowHalf)
        instnorm_store_half8(address + 8, vector.highHalf)
    }

    @inlinable @inline(__always)
    public static func streamStore(_ vector: SIMD16<Float>, to address: UnsafeMutablePointer<Float16>) {
        instnorm_stream_store_half16(address, vector.lowHalf, vector.highHalf)
    }

    @inlinable @inline(__always)
    public static func transposeTile(
        _ rows: UnsafePointer<Float16>, rowStride: Int, into columns: UnsafeMutablePointer<Float>, columnStride: Int
    ) {
        instnorm_transpose_half8x8(rows, rowStride, columns, columnStride)
    }

    @inlinable @inline(__always)
    public static func transposeQuads(_ rows: UnsafePointer<Float16>, into columns: UnsafeMutablePointer<Float>) {
        instnorm_transpose_quads_half(rows, columns)
    }
}
