import _InstanceNormShims

/// Half-precision storage, computed in `Float`.
///
/// Half holds 11 significant bits and values up to 65504: too few bits to
/// compute in (every addition to a growing lane sum would round at 2⁻¹¹ of
/// the sum), but enough to store the inputs and outputs of a layer, at half
/// the bytes of `Float`, which a memory-bound kernel turns into time. Every `Float16` is a
/// `Float`, so a load is exact; a store rounds once, to nearest even.
///
/// A vector is 16 halves (32 bytes) widened to `SIMD16<Float>`: with F16C
/// (in the `haswell` target the package builds for) the conversions are one
/// `vcvtph2ps` per 8 values on load and one `vcvtps2ph` on store. Swift's
/// generic SIMD conversion compiles to exactly those once inlined.
extension Float16: InstanceNormScalar {
    public typealias Compute = Float

    @inlinable @inline(__always) public var widened: Double { Double(self) }

    @inlinable @inline(__always) public var computed: Float { Float(self) }

    @inlinable @inline(__always) public init(rounding value: Float) { self.init(value) }

    @inlinable @inline(__always)
    public static func loadVector(from address: UnsafePointer<Float16>) -> SIMD16<Float> {
        SIMD16<Float>(UnsafeRawPointer(address).loadUnaligned(as: SIMD16<Float16>.self))
    }

    @inlinable @inline(__always)
    public static func storeVector(_ vector: SIMD16<Float>, to address: UnsafeMutablePointer<Float16>) {
        UnsafeMutableRawPointer(address).storeBytes(of: SIMD16<Float16>(vector), as: SIMD16<Float16>.self)
    }

    /// One 32-byte streaming store of the 16 rounded halves, passed to the
    /// shim as their bits (C's `_Float16` vectors have no stable Swift import).
    @inlinable @inline(__always)
    public static func streamStore(_ vector: SIMD16<Float>, to address: UnsafeMutablePointer<Float16>) {
        instnorm_stream_store_half16(address, unsafeBitCast(SIMD16<Float16>(vector), to: SIMD16<UInt16>.self))
    }
}
