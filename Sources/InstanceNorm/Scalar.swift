/// A storage precision the kernels run in: `Float` or `Double`.
///
/// Every sum the kernels form is accumulated in `Double` whatever the storage
/// precision, so the only requirement beyond `BinaryFloatingPoint` is a cheap,
/// concrete widening (the generic `Double.init<Source>` is not always folded
/// away in generic code, and this sits in every hot loop).
public protocol InstanceNormScalar: BinaryFloatingPoint, SIMDScalar, Codable, Sendable {
    /// The value widened exactly to `Double`.
    var widened: Double { get }
}

extension Float: InstanceNormScalar {
    @inlinable @inline(__always) public var widened: Double { Double(self) }
}

extension Double: InstanceNormScalar {
    @inlinable @inline(__always) public var widened: Double { self }
}
