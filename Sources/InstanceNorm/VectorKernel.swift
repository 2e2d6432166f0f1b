/// Elements per `Double` partial sum. Inside a chunk the kernels sum in
/// vector lanes of the compute type (`InstanceNormScalar.Compute`); each chunk's lanes are widened and
/// added to the instance's `Double` total, chunk after chunk. The chunk
/// boundaries sit at fixed offsets from the instance's start, so the order
/// of every addition is fixed by the data's shape alone: threads that split
/// an instance at chunk boundaries reproduce the single-thread bits.
public let reductionChunk = 1024

/// The vector of compute values at base[index…], widened from storage.
@inlinable @inline(__always)
func loadVector<T: InstanceNormScalar>(_ base: UnsafePointer<T>, _ index: Int) -> T.Vector {
    T.loadVector(from: base + index)
}

/// Stores a vector of compute values at base[index…], rounded to storage.
@inlinable @inline(__always)
func storeVector<T: InstanceNormScalar>(_ value: T.Vector, _ base: UnsafeMutablePointer<T>, _ index: Int) {
    T.storeVector(value, to: base + index)
}

/// Σ (x − shift) and Σ (x − shift)² over one chunk.
@inlinable
func shiftedChunkSums<T: InstanceNormScalar>(
    _ x: UnsafePointer<T>, _ range: Range<Int>, shift: T.Compute
) -> (sum: Double, sumSquares: Double) {
    var none = NoCompanion()
    return shiftedChunkSums(x, range, shift: shift, alongside: &none)
}

/// Σ (x − shift) and Σ (x − shift)² over one chunk, with `companion`
/// stepping along (the fused forward streams another run's y there).
@inlinable @inline(__always)
func shiftedChunkSums<T: InstanceNormScalar, Companion: SumsCompanion>(
    _ x: UnsafePointer<T>, _ range: Range<Int>, shift: T.Compute, alongside companion: inout Companion
) -> (sum: Double, sumSquares: Double) {
    let lanes = T.Vector.scalarCount
    let shiftVector = T.Vector(repeating: shift)
    var sum0 = T.Vector(), sum1 = T.Vector(), squares0 = T.Vector(), squares1 = T.Vector()
    var index = range.lowerBound
    while index + 2 * lanes <= range.upperBound {
        companion.step(at: index)
        let deviation0 = loadVector(x, index) - shiftVector
        let deviation1 = loadVector(x, index + lanes) - shiftVector
        sum0 += deviation0
        sum1 += deviation1
        squares0.addProduct(deviation0, deviation0)
        squares1.addProduct(deviation1, deviation1)
        index += 2 * lanes
    }
    var sum = T.Compute.widenedSum(sum0) + T.Compute.widenedSum(sum1)
    var sumSquares = T.Compute.widenedSum(squares0) + T.Compute.widenedSum(squares1)
    while index < range.upperBound {
        let deviation = (x[index].computed - shift).widened
        sum += deviation
        sumSquares += deviation * deviation
        index += 1
    }
    return (sum, sumSquares)
}

/// Work done in the loop of `gradientChunkSums` or `shiftedChunkSums`, one
/// step of two vectors at a time: the fused backward writes another
/// instance's dx there (`BackwardBatch.sumsWritingDx`), the fused forward
/// another run's y (`fusedForward`), so that reads and streaming stores
/// interleave. A companion must not touch the dy and x being summed; the
/// sums are the same bits with or without it.
@usableFromInline
protocol SumsCompanion {
    /// Called before the step that reads values index ..< index + 2·lanes.
    mutating func step(at index: Int)
}

@usableFromInline
struct NoCompanion: SumsCompanion {
    // Not empty: all empty values share one address, and the `inout`
    // accesses of two threads to it read as a race to the thread sanitizer.
    @usableFromInline var unused: UInt8 = 0
    @inlinable init() {}
    @inlinable @inline(__always) mutating func step(at index: Int) {}
}

/// Σ dy and Σ dy·(x − center) over one chunk.
@inlinable
func gradientChunkSums<T: InstanceNormScalar>(
    _ dy: UnsafePointer<T>, _ x: UnsafePointer<T>, _ range: Range<Int>, center: T.Compute
) -> (sumDy: Double, sumDyCentered: Double) {
    var none = NoCompanion()
    return gradientChunkSums(dy, x, range, center: center, alongside: &none)
}

/// Σ dy and Σ dy·(x − center) over one chunk, with `companion` stepping along.
@inlinable @inline(__always)
func gradientChunkSums<T: InstanceNormScalar, Companion: SumsCompanion>(
    _ dy: UnsafePointer<T>, _ x: UnsafePointer<T>, _ range: Range<Int>, center: T.Compute,
    alongside companion: inout Companion
) -> (sumDy: Double, sumDyCentered: Double) {
    let lanes = T.Vector.scalarCount
    let centerVector = T.Vector(repeating: center)
    var dySum0 = T.Vector(), dySum1 = T.Vector(), product0 = T.Vector(), product1 = T.Vector()
    var index = range.lowerBound
    while index + 2 * lanes <= range.upperBound {
        companion.step(at: index)
        let gradient0 = loadVector(dy, index), gradient1 = loadVector(dy, index + lanes)
        dySum0 += gradient0
        dySum1 += gradient1
        product0.addProduct(gradient0, loadVector(x, index) - centerVector)
        product1.addProduct(gradient1, loadVector(x, index + lanes) - centerVector)
        index += 2 * lanes
    }
    var sumDy = T.Compute.widenedSum(dySum0) + T.Compute.widenedSum(dySum1)
    var sumDyCentered = T.Compute.widenedSum(product0) + T.Compute.widenedSum(product1)
    while index < range.upperBound {
        let gradient = dy[index].widened
        sumDy += gradient
        sumDyCentered += gradient * (x[index].computed - center).widened
        index += 1
    }
    return (sumDy, sumDyCentered)
}

/// One value of an elementwise output, as a vector or as a scalar, in the
/// compute precision (`writeElementwise` rounds it to storage): the two must
/// compute the same expression, so the bits do not depend on where the
/// vector loop starts or ends. (The channels-last outputs, whose constants
/// vary by channel, are `TiledOperation`s.)
@usableFromInline
protocol ElementwiseOperation {
    associatedtype Scalar: InstanceNormScalar
    func vector(at index: Int) -> Scalar.Vector
    func scalar(at index: Int) -> Scalar.Compute
}

/// The first index of `range` at which out + index sits on a 64-byte
/// boundary, or its end: where streaming stores start (a value of T never
/// straddles the boundary, since T's stride divides 64).
@inlinable @inline(__always)
func streamingStart<T>(_ out: UnsafeMutablePointer<T>, _ range: Range<Int>) -> Int {
    let bytesBefore = (64 - Int(bitPattern: out + range.lowerBound) & 63) & 63
    return min(range.lowerBound + bytesBefore / MemoryLayout<T>.stride, range.upperBound)
}

/// out[i] = operation(i) for i in range, in vectors; with `streaming` the
/// vectors are written with non-temporal stores from the first 64-byte
/// boundary on, so the output's cache lines are never read.
@inlinable @inline(__always)
func writeElementwise<Operation: ElementwiseOperation>(
    _ out: UnsafeMutablePointer<Operation.Scalar>, _ range: Range<Int>, streaming: Bool, _ operation: Operation
) {
    typealias T = Operation.Scalar
    let lanes = T.Vector.scalarCount
    var index = range.lowerBound
    if streaming {
        let vectorsStart = streamingStart(out, range)
        while index < vectorsStart {
            out[index] = T(rounding: operation.scalar(at: index))
            index += 1
        }
        while index + lanes <= range.upperBound {
            T.streamStore(operation.vector(at: index), to: out + index)
            index += lanes
        }
    } else {
        while index + lanes <= range.upperBound {
            storeVector(operation.vector(at: index), out, index)
            index += lanes
        }
    }
    while index < range.upperBound {
        out[index] = T(rounding: operation.scalar(at: index))
        index += 1
    }
}

/// y = (x − μ_hi)·a + b (see `InstanceKernel.normalize`).
@usableFromInline
struct NormalizeOperation<Scalar: InstanceNormScalar>: ElementwiseOperation {
    @usableFromInline let x: UnsafePointer<Scalar>
    @usableFromInline let meanHigh, scale, offset: Scalar.Compute
    @usableFromInline let meanVector, scaleVector, offsetVector: Scalar.Vector

    @inlinable
    init(x: UnsafePointer<Scalar>, meanHigh: Scalar.Compute, scale: Scalar.Compute, offset: Scalar.Compute) {
        self.x = x
        self.meanHigh = meanHigh
        self.scale = scale
        self.offset = offset
        meanVector = Scalar.Vector(repeating: meanHigh)
        scaleVector = Scalar.Vector(repeating: scale)
        offsetVector = Scalar.Vector(repeating: offset)
    }

    @inlinable @inline(__always)
    func vector(at index: Int) -> Scalar.Vector {
        offsetVector.addingProduct(loadVector(x, index) - meanVector, scaleVector)
    }

    @inlinable @inline(__always)
    func scalar(at index: Int) -> Scalar.Compute {
        offset.addingProduct(x[index].computed - meanHigh, scale)
    }
}

/// dx = k·(dy − m̄) + p·(x − μ_hi) + q (see `InstanceKernel.inputGradient`).
@usableFromInline
struct InputGradientOperation<Scalar: InstanceNormScalar>: ElementwiseOperation {
    @usableFromInline let dy, x: UnsafePointer<Scalar>
    @usableFromInline let meanHigh, meanDy, gradientScale, centeredScale, offset: Scalar.Compute
    @usableFromInline let meanVector, meanDyVector, gradientScaleVector, centeredScaleVector, offsetVector: Scalar.Vector

    @inlinable
    init(dy: UnsafePointer<Scalar>, x: UnsafePointer<Scalar>, meanHigh: Scalar.Compute, meanDy: Scalar.Compute,
         gradientScale: Scalar.Compute, centeredScale: Scalar.Compute, offset: Scalar.Compute) {
        self.dy = dy
        self.x = x
        self.meanHigh = meanHigh
        self.meanDy = meanDy
        self.gradientScale = gradientScale
        self.centeredScale = centeredScale
        self.offset = offset
        meanVector = Scalar.Vector(repeating: meanHigh)
        meanDyVector = Scalar.Vector(repeating: meanDy)
        gradientScaleVector = Scalar.Vector(repeating: gradientScale)
        centeredScaleVector = Scalar.Vector(repeating: centeredScale)
        offsetVector = Scalar.Vector(repeating: offset)
    }

    @inlinable @inline(__always)
    func vector(at index: Int) -> Scalar.Vector {
        offsetVector.addingProduct(centeredScaleVector, loadVector(x, index) - meanVector)
            .addingProduct(gradientScaleVector, loadVector(dy, index) - meanDyVector)
    }

    @inlinable @inline(__always)
    func scalar(at index: Int) -> Scalar.Compute {
        offset.addingProduct(centeredScale, x[index].computed - meanHigh)
            .addingProduct(gradientScale, dy[index].computed - meanDy)
    }
}
