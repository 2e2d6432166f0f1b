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
    /// A tile of `Compute.tileSize` rows of as many values (row r at
    /// `rows + r·rowStride`, any alignment), widened and transposed:
    /// columns[c·columnStride + r] = rows[r·rowStride + c].
    static func transposeTile(
        _ rows: UnsafePointer<Self>, rowStride: Int, into columns: UnsafeMutablePointer<Compute>, columnStride: Int)
    /// B = `Vector.scalarCount` instances of four values (4·B values at
    /// `rows`, any alignment), widened, as four columns of B lanes:
    /// columns[m·B + b] = rows[4·b + m].
    static func transposeQuads(_ rows: UnsafePointer<Self>, into columns: UnsafeMutablePointer<Compute>)
    /// Whether `gradientGroupSums` is available: tiles of one register of
    /// compute values that span half a block of B instances (float and
    /// half storage; float64's blocks take their transposed columns).
    static var sumsGroupsInRegisters: Bool { get }
    /// Per lane b of a block of B instances held in natural order (instance
    /// b's values at `dy + b·rowStride`, `x + b·rowStride`), Σ dy and
    /// Σ dy·(x − center_b) over its first `count` (1 ... 8) values, one running
    /// sum per lane from zero, as `laneSums` adds a group of the block's
    /// transposed columns: the same bits, the transposes left in registers.
    static func gradientGroupSums(
        dy: UnsafePointer<Self>, x: UnsafePointer<Self>, rowStride: Int, center: Vector, count: Int
    ) -> (sumDy: Vector, sumDyCentered: Vector)
    /// The same for the statistics: Σ (x − shift_b) and Σ (x − shift_b)²
    /// over instance b's first `count` (1 ... 8) values, as `laneSums` adds
    /// `ShiftedColumns`.
    static func shiftedGroupSums(x: UnsafePointer<Self>, rowStride: Int, shift: Vector, count: Int) -> (sum: Vector, sumSquares: Vector)
    /// Every lane's instance's first value, x[b·rowStride], widened: column 0 of the block.
    static func firstValues(_ x: UnsafePointer<Self>, rowStride: Int) -> Vector
}

extension InstanceNormScalar {
    @inlinable @inline(__always) public static var sumsGroupsInRegisters: Bool { false }

    @inlinable
    public static func gradientGroupSums(
        dy: UnsafePointer<Self>, x: UnsafePointer<Self>, rowStride: Int, center: Vector, count: Int
    ) -> (sumDy: Vector, sumDyCentered: Vector) {
        preconditionFailure("\(Self.self) sums its blocks from transposed columns")
    }

    @inlinable
    public static func shiftedGroupSums(x: UnsafePointer<Self>, rowStride: Int, shift: Vector, count: Int)
        -> (sum: Vector, sumSquares: Vector) {
        preconditionFailure("\(Self.self) sums its blocks from transposed columns")
    }

    @inlinable
    public static func firstValues(_ x: UnsafePointer<Self>, rowStride: Int) -> Vector {
        preconditionFailure("\(Self.self) sums its blocks from transposed columns")
    }
}

/// Two 8-lane halves of 16 float lanes, each filled by `fill` from its
/// pointer to 16 floats (C hands vectors back through memory), as the
/// first and second of a pair: (low.first ∥ high.first, low.second ∥ high.second).
@inlinable @inline(__always)
func halvesOf16(_ fill: (_ half: Int, _ out: UnsafeMutablePointer<Float>) -> Void) -> (SIMD16<Float>, SIMD16<Float>) {
    var low = SIMD16<Float>(), high = SIMD16<Float>()
    withUnsafeMutablePointer(to: &low) { $0.withMemoryRebound(to: Float.self, capacity: 16) { fill(0, $0) } }
    withUnsafeMutablePointer(to: &high) { $0.withMemoryRebound(to: Float.self, capacity: 16) { fill(1, $0) } }
    return (SIMD16(lowHalf: low.lowHalf, highHalf: high.lowHalf), SIMD16(lowHalf: low.highHalf, highHalf: high.highHalf))
}

/// Float and half storage: 16 float lanes, each group's two 8x8 tiles
/// (lanes 0-7, 8-15) turned in registers by the C shims, which widen halves.
extension InstanceNormScalar where Compute == Float {
    @inlinable @inline(__always) public static var sumsGroupsInRegisters: Bool { true }

    /// 1 for half storage, 0 for float: the shims' `halves` flag.
    @inlinable @inline(__always) static var storesHalves: Int32 { MemoryLayout<Self>.size == 2 ? 1 : 0 }

    /// Where lane 8's instance starts, in bytes past lane 0's.
    @inlinable @inline(__always)
    static func highHalfOffset(rowStride: Int) -> Int { 8 * rowStride * MemoryLayout<Self>.stride }

    /// Per lane b of 16 instances in natural order, Σ dy and Σ dy·(x − center_b)
    /// over the first `count` (1 ... 8) values: `gradientGroupSums` of the
    /// protocol, from two 8×8 tiles turned in registers.
    @inlinable @inline(__always)
    public static func gradientGroupSums(
        dy: UnsafePointer<Self>, x: UnsafePointer<Self>, rowStride: Int, center: SIMD16<Float>, count: Int
    ) -> (sumDy: SIMD16<Float>, sumDyCentered: SIMD16<Float>) {
        let (dy, x) = (UnsafeRawPointer(dy), UnsafeRawPointer(x))
        return halvesOf16 { half, out in
            let offset = half * highHalfOffset(rowStride: rowStride)
            instnorm_tile_gradient_sums(
                dy + offset, x + offset, rowStride, storesHalves, half == 0 ? center.lowHalf : center.highHalf, count, out)
        }
    }

    /// Per lane b of 16 instances in natural order, Σ (x − shift_b) and
    /// Σ (x − shift_b)² over the first `count` (1 ... 8) values:
    /// `shiftedGroupSums` of the protocol, from two 8×8 tiles turned in registers.
    @inlinable @inline(__always)
    public static func shiftedGroupSums(x: UnsafePointer<Self>, rowStride: Int, shift: SIMD16<Float>, count: Int)
        -> (sum: SIMD16<Float>, sumSquares: SIMD16<Float>) {
        let x = UnsafeRawPointer(x)
        return halvesOf16 { half, out in
            instnorm_tile_shifted_sums(
                x + half * highHalfOffset(rowStride: rowStride), rowStride, storesHalves,
                half == 0 ? shift.lowHalf : shift.highHalf, count, out)
        }
    }

    /// The first value of each of 16 instances, x[b·rowStride], widened:
    /// `firstValues` of the protocol.
    @inlinable @inline(__always)
    public static func firstValues(_ x: UnsafePointer<Self>, rowStride: Int) -> SIMD16<Float> {
        var values = SIMD16<Float>()
        withUnsafeMutablePointer(to: &values) {
            $0.withMemoryRebound(to: Float.self, capacity: 16) {
                instnorm_first_values8(x, rowStride, storesHalves, $0)
                instnorm_first_values8(UnsafeRawPointer(x) + highHalfOffset(rowStride: rowStride), rowStride, storesHalves, $0 + 8)
            }
        }
        return values
    }
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
    /// As many `Double` lanes as `Lanes` has: the per-instance arithmetic
    /// of a block of instances, one instance per lane (`SmallInstances`).
    associatedtype WideLanes: SIMD where WideLanes.Scalar == Double
    /// Every lane widened exactly to `Double`.
    static func widen(_ lanes: Lanes) -> WideLanes
    /// Every lane rounded to `Self`, to nearest even: `Self(lane)` lane by lane.
    static func narrow(_ lanes: WideLanes) -> Lanes
    /// The side of the square tiles `transposeTile` turns: one register of
    /// values (8 floats, 4 doubles); it divides `Lanes.scalarCount`.
    static var tileSize: Int { get }
    /// The correctly rounded square root of every lane.
    static func squareRoot(_ lanes: WideLanes) -> WideLanes
    /// Whether a ≤ b in every lane (false where either is NaN).
    static func allAtMost(_ a: WideLanes, _ b: WideLanes) -> Bool
    /// Per lane, a ≤ b ? ifAtMost : otherwise (otherwise where either is NaN).
    static func select(_ a: WideLanes, atMost b: WideLanes, _ ifAtMost: WideLanes, else otherwise: WideLanes) -> WideLanes
    /// Lanes 0..<first of a, the others of b (0 ≤ first ≤ `Lanes.scalarCount`).
    static func blend(_ a: Lanes, _ b: Lanes, from first: Int) -> Lanes
    /// The inverse of `transposeQuads`: rows[4·b + m] = columns[m·B + b]
    /// (any alignment; the two do not overlap).
    static func untransposeQuads(_ columns: UnsafePointer<Self>, into rows: UnsafeMutablePointer<Self>)
}

// Swift's SIMD comparisons, masks and `squareRoot()` go one lane at a time
// through memory; the per-lane statistics of `SmallInstances` use these,
// one instruction per register of 4 doubles.
extension SIMD8<Double> {
    @inlinable @inline(__always)
    static func squareRoot(_ lanes: Self) -> Self {
        Self(lowHalf: instnorm_sqrt_double4(lanes.lowHalf), highHalf: instnorm_sqrt_double4(lanes.highHalf))
    }

    @inlinable @inline(__always)
    static func allAtMost(_ a: Self, _ b: Self) -> Bool {
        instnorm_all_at_most_double4(a.lowHalf, b.lowHalf) & instnorm_all_at_most_double4(a.highHalf, b.highHalf) != 0
    }

    @inlinable @inline(__always)
    static func select(_ a: Self, atMost b: Self, _ ifAtMost: Self, else otherwise: Self) -> Self {
        Self(lowHalf: instnorm_select_at_most_double4(a.lowHalf, b.lowHalf, ifAtMost.lowHalf, otherwise.lowHalf),
             highHalf: instnorm_select_at_most_double4(a.highHalf, b.highHalf, ifAtMost.highHalf, otherwise.highHalf))
    }
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

    @inlinable @inline(__always) public static var tileSize: Int { 8 }

    @inlinable @inline(__always)
    public static func transposeTile(
        _ rows: UnsafePointer<Float>, rowStride: Int, into columns: UnsafeMutablePointer<Float>, columnStride: Int
    ) {
        instnorm_transpose_float8x8(rows, rowStride, columns, columnStride)
    }

    @inlinable @inline(__always)
    public static func transposeQuads(_ rows: UnsafePointer<Float>, into columns: UnsafeMutablePointer<Float>) {
        instnorm_transpose_quads_float(rows, columns)
    }

    @inlinable @inline(__always)
    public static func untransposeQuads(_ columns: UnsafePointer<Float>, into rows: UnsafeMutablePointer<Float>) {
        instnorm_untranspose_quads_float(columns, rows)
    }

    @inlinable @inline(__always)
    public static func widen(_ lanes: SIMD16<Float>) -> SIMD16<Double> {
        SIMD16(lowHalf: SIMD8(lowHalf: instnorm_widen_float4(lanes.lowHalf.lowHalf),
                              highHalf: instnorm_widen_float4(lanes.lowHalf.highHalf)),
               highHalf: SIMD8(lowHalf: instnorm_widen_float4(lanes.highHalf.lowHalf),
                               highHalf: instnorm_widen_float4(lanes.highHalf.highHalf)))
    }

    @inlinable @inline(__always)
    public static func squareRoot(_ lanes: SIMD16<Double>) -> SIMD16<Double> {
        SIMD16(lowHalf: .squareRoot(lanes.lowHalf), highHalf: .squareRoot(lanes.highHalf))
    }

    @inlinable @inline(__always)
    public static func allAtMost(_ a: SIMD16<Double>, _ b: SIMD16<Double>) -> Bool {
        SIMD8.allAtMost(a.lowHalf, b.lowHalf) && SIMD8.allAtMost(a.highHalf, b.highHalf)
    }

    @inlinable @inline(__always)
    public static func select(
        _ a: SIMD16<Double>, atMost b: SIMD16<Double>, _ ifAtMost: SIMD16<Double>, else otherwise: SIMD16<Double>
    ) -> SIMD16<Double> {
        SIMD16(lowHalf: .select(a.lowHalf, atMost: b.lowHalf, ifAtMost.lowHalf, else: otherwise.lowHalf),
               highHalf: .select(a.highHalf, atMost: b.highHalf, ifAtMost.highHalf, else: otherwise.highHalf))
    }

    @inlinable @inline(__always)
    public static func blend(_ a: SIMD16<Float>, _ b: SIMD16<Float>, from first: Int) -> SIMD16<Float> {
        SIMD16(lowHalf: instnorm_blend_float8(a.lowHalf, b.lowHalf, first, 0),
               highHalf: instnorm_blend_float8(a.highHalf, b.highHalf, first, 8))
    }

    @inlinable @inline(__always)
    public static func narrow(_ lanes: SIMD16<Double>) -> SIMD16<Float> {
        SIMD16(lowHalf: SIMD8(lowHalf: instnorm_narrow_double4(lanes.lowHalf.lowHalf),
                              highHalf: instnorm_narrow_double4(lanes.lowHalf.highHalf)),
               highHalf: SIMD8(lowHalf: instnorm_narrow_double4(lanes.highHalf.lowHalf),
                               highHalf: instnorm_narrow_double4(lanes.highHalf.highHalf)))
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

    @inlinable @inline(__always) public static var tileSize: Int { 4 }

    @inlinable @inline(__always)
    public static func transposeTile(
        _ rows: UnsafePointer<Double>, rowStride: Int, into columns: UnsafeMutablePointer<Double>, columnStride: Int
    ) {
        instnorm_transpose_double4x4(rows, rowStride, columns, columnStride)
    }

    /// Two 4x4 tiles: four instances of four values each.
    @inlinable @inline(__always)
    public static func transposeQuads(_ rows: UnsafePointer<Double>, into columns: UnsafeMutablePointer<Double>) {
        instnorm_transpose_double4x4(rows, 4, columns, 8)
        instnorm_transpose_double4x4(rows + 16, 4, columns + 4, 8)
    }

    @inlinable @inline(__always)
    public static func untransposeQuads(_ columns: UnsafePointer<Double>, into rows: UnsafeMutablePointer<Double>) {
        instnorm_transpose_double4x4(columns, 8, rows, 4)
        instnorm_transpose_double4x4(columns + 4, 8, rows + 16, 4)
    }

    @inlinable @inline(__always) public static func widen(_ lanes: SIMD8<Double>) -> SIMD8<Double> { lanes }

    @inlinable @inline(__always) public static func narrow(_ lanes: SIMD8<Double>) -> SIMD8<Double> { lanes }

    @inlinable @inline(__always)
    public static func squareRoot(_ lanes: SIMD8<Double>) -> SIMD8<Double> { .squareRoot(lanes) }

    @inlinable @inline(__always)
    public static func blend(_ a: SIMD8<Double>, _ b: SIMD8<Double>, from first: Int) -> SIMD8<Double> {
        SIMD8(lowHalf: instnorm_blend_double4(a.lowHalf, b.lowHalf, first, 0),
              highHalf: instnorm_blend_double4(a.highHalf, b.highHalf, first, 4))
    }

    @inlinable @inline(__always)
    public static func allAtMost(_ a: SIMD8<Double>, _ b: SIMD8<Double>) -> Bool { SIMD8.allAtMost(a, b) }

    @inlinable @inline(__always)
    public static func select(
        _ a: SIMD8<Double>, atMost b: SIMD8<Double>, _ ifAtMost: SIMD8<Double>, else otherwise: SIMD8<Double>
    ) -> SIMD8<Double> {
        SIMD8.select(a, atMost: b, ifAtMost, else: otherwise)
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
