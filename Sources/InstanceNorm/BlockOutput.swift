/// An output of a block of instances computed in the tensor's order: the
/// vector of values index..<index + L of the block, each computed with the
/// constants of one instance (`writeInOrder` keeps the lanes that belong
/// to it). `constants(of:)` reads an instance's constants once for the
/// vectors it fills.
@usableFromInline
protocol BlockOutput {
    associatedtype Scalar: InstanceNormScalar
    associatedtype Constants
    func constants(of instance: Int) -> Constants
    func vector(at index: Int, _ constants: Constants) -> Scalar.Vector
}

/// Writes the first `count` instances of a block's output to `out`, a
/// vector at a time in the tensor's order, as `writeElementwise` writes one
/// instance: the vectors inside one instance take that instance's
/// constants; a vector that crosses into the next instances takes, from
/// each crossing lane on, the next instance's result (the same expression
/// with the next constants). For M ≥ L a vector crosses at most once, and
/// the block's vectors need no transposition back.
///
/// With `streaming`, full vectors go out with non-temporal stores when
/// `out` is aligned for them (every block starts so in an aligned tensor:
/// a block is M whole vectors), cached stores otherwise; the part of a
/// last vector past `count` instances is stored lane by lane.
@inlinable @inline(__always)
func writeInOrder<Output: BlockOutput>(
    _ output: Output, count: Int, spatialCount: Int, to out: UnsafeMutablePointer<Output.Scalar>, streaming: Bool
) {
    typealias T = Output.Scalar
    if spatialCount >= T.Vector.scalarCount {
        writeLongInstancesInOrder(output, count: count, spatialCount: spatialCount, to: out, streaming: streaming)
        return
    }
    let lanes = T.Vector.scalarCount, total = count &* spatialCount
    let stores = VectorStores(out, streaming: streaming)
    var start = 0, instance = 0
    while instance < count {
        let constants = output.constants(of: instance), end = (instance &+ 1) &* spatialCount
        while start &+ lanes <= end {
            stores.store(output.vector(at: start, constants), at: start)
            start &+= lanes
        }
        guard start < end else {
            instance &+= 1
            continue
        }
        // A vector that crosses into the next instances.
        var vector = output.vector(at: start, constants), next = instance &+ 1
        let vectorEnd = min(start &+ lanes, total)
        while next &* spatialCount < vectorEnd {
            vector = T.Compute.blend(vector, output.vector(at: start, output.constants(of: next)), from: next &* spatialCount &- start)
            next &+= 1
        }
        if vectorEnd &- start < lanes {
            stores.store(vector, at: start, count: vectorEnd &- start)
        } else {
            stores.store(vector, at: start)
        }
        start &+= lanes
        // The instance the vector ended in goes on from the next vector.
        instance = next &- 1
        if (instance &+ 1) &* spatialCount <= start { instance &+= 1 }
    }
}

/// `writeInOrder` for instances of L values or more, the kind of stores
/// decided once, outside the loops (`VectorStores` with a constant
/// `streams`).
@inlinable @inline(__always)
func writeLongInstancesInOrder<Output: BlockOutput>(
    _ output: Output, count: Int, spatialCount: Int, to out: UnsafeMutablePointer<Output.Scalar>, streaming: Bool
) {
    let write = { (stores: VectorStores<Output.Scalar>) in
        if spatialCount == Output.Scalar.Vector.scalarCount {
            writeVectorInstances(output, count: count, stores: stores)
        } else {
            writeLongInstances(output, count: count, spatialCount: spatialCount, stores: stores)
        }
    }
    // One inlined body per kind of store, each with `streams` a constant.
    if VectorStores(out, streaming: streaming).streams {
        write(VectorStores(out, streams: true))
    } else {
        write(VectorStores(out, streams: false))
    }
}

/// `writeInOrder` for instances of one vector each.
@inlinable @inline(__always)
func writeVectorInstances<Output: BlockOutput>(_ output: Output, count: Int, stores: VectorStores<Output.Scalar>) {
    let lanes = Output.Scalar.Vector.scalarCount
    var start = 0
    for instance in 0..<count {
        stores.store(output.vector(at: start, output.constants(of: instance)), at: start)
        start &+= lanes
    }
}

/// `writeInOrder` for instances of more than L values, where a vector
/// crosses at most one boundary, and past the block's last value only in
/// its last instance: each instance's constants are read once and carried
/// from the vector that crosses into it to its own vectors.
@inlinable @inline(__always)
func writeLongInstances<Output: BlockOutput>(
    _ output: Output, count: Int, spatialCount: Int, stores: VectorStores<Output.Scalar>
) {
    typealias T = Output.Scalar
    let lanes = T.Vector.scalarCount, total = count &* spatialCount
    var constants = output.constants(of: 0), start = 0, end = spatialCount, instance = 1
    while true {
        while start &+ lanes <= end {
            stores.store(output.vector(at: start, constants), at: start)
            start &+= lanes
        }
        guard instance < count else { break }
        let next = output.constants(of: instance)
        if start < end {
            let crossing = T.Compute.blend(
                output.vector(at: start, constants), output.vector(at: start, next), from: end &- start)
            stores.store(crossing, at: start)
            start &+= lanes
        }
        constants = next
        end &+= spatialCount
        instance &+= 1
    }
    // The last instance's values past its last whole vector.
    if start < total { stores.store(output.vector(at: start, constants), at: start, count: total &- start) }
}

/// Writes the first `count` instances of a block of four-value instances
/// whose output is held as four columns of B lanes at `columns`, in the
/// tensor's order: the columns turned back in registers
/// (`untransposeQuads`, into `rows`, 4·B values) and stored a vector at a
/// time, streamed as `writeInOrder` streams. Where a vector would cross
/// from one instance into the next, the columns compute each lane with its
/// own instance's constants and no blends are needed.
@inlinable @inline(__always)
func writeQuads<T: InstanceNormScalar>(
    _ columns: UnsafePointer<T.Compute>, rows: UnsafeMutablePointer<T.Compute>, count: Int,
    to out: UnsafeMutablePointer<T>, streaming: Bool
) {
    let lanes = T.Vector.scalarCount, total = 4 &* count
    T.Compute.untransposeQuads(columns, into: rows)
    let stores = VectorStores(out, streaming: streaming)
    var start = 0
    while start &+ lanes <= total {
        stores.store(loadVector(UnsafePointer(rows), start), at: start)
        start &+= lanes
    }
    if start < total { stores.store(loadVector(UnsafePointer(rows), start), at: start, count: total &- start) }
}

/// Vector stores to an output: non-temporal when asked to stream and the
/// output is aligned for them (a whole vector then covers whole lines or
/// aligned halves of one), cached otherwise.
@usableFromInline
struct VectorStores<T: InstanceNormScalar> {
    @usableFromInline let out: UnsafeMutablePointer<T>
    @usableFromInline let streams: Bool

    @inlinable @inline(__always)
    init(_ out: UnsafeMutablePointer<T>, streaming: Bool) {
        let alignment = min(64, T.Vector.scalarCount &* MemoryLayout<T>.stride)
        self.init(out, streams: streaming && Int(bitPattern: out) % alignment == 0)
    }

    /// Stores of the kind `streams` says, whatever `out`'s alignment: a
    /// constant here lets a loop of stores drop its test per store.
    @inlinable @inline(__always)
    init(_ out: UnsafeMutablePointer<T>, streams: Bool) {
        self.out = out
        self.streams = streams
    }

    /// A whole vector at out + start.
    @inlinable @inline(__always)
    func store(_ vector: T.Vector, at start: Int) {
        if streams { T.streamStore(vector, to: out + start) } else { T.storeVector(vector, to: out + start) }
    }

    /// The first `count` lanes of `vector` at out + start, lane by lane.
    @inlinable @inline(__always)
    func store(_ vector: T.Vector, at start: Int, count: Int) {
        for lane in 0..<count { out[start &+ lane] = T(rounding: vector[lane]) }
    }
}

/// y = (x − μ_hi)·a + b with instance b's constants at lane b of the
/// three constant vectors (see `InstanceKernel.normalize`).
@usableFromInline
struct NormalizeBlock<Scalar: InstanceNormScalar>: BlockOutput {
    @usableFromInline let x: UnsafePointer<Scalar>
    @usableFromInline let meanHigh, scale, offset: UnsafePointer<Scalar.Compute>

    @inlinable init(x: UnsafePointer<Scalar>, meanHigh: UnsafePointer<Scalar.Compute>,
                    scale: UnsafePointer<Scalar.Compute>, offset: UnsafePointer<Scalar.Compute>) {
        self.x = x
        self.meanHigh = meanHigh
        self.scale = scale
        self.offset = offset
    }

    @inlinable @inline(__always)
    func constants(of instance: Int) -> (meanHigh: Scalar.Vector, scale: Scalar.Vector, offset: Scalar.Vector) {
        (Scalar.Vector(repeating: meanHigh[instance]), Scalar.Vector(repeating: scale[instance]),
         Scalar.Vector(repeating: offset[instance]))
    }

    @inlinable @inline(__always)
    func vector(at index: Int, _ constants: (meanHigh: Scalar.Vector, scale: Scalar.Vector, offset: Scalar.Vector)) -> Scalar.Vector {
        constants.offset.addingProduct(loadVector(x, index) - constants.meanHigh, constants.scale)
    }
}

/// dx = k·(dy − m̄) + p·(x − μ_hi) + q with instance b's constants at
/// lane b of the five constant vectors (see `InstanceKernel.inputGradient`).
@usableFromInline
struct InputGradientBlock<Scalar: InstanceNormScalar>: BlockOutput {
    @usableFromInline let dy, x: UnsafePointer<Scalar>
    /// μ_hi, m̄, k, p, q: five vectors of B lanes, one after the other.
    @usableFromInline let constants: UnsafePointer<Scalar.Compute>

    @inlinable init(dy: UnsafePointer<Scalar>, x: UnsafePointer<Scalar>, constants: UnsafePointer<Scalar.Compute>) {
        self.dy = dy
        self.x = x
        self.constants = constants
    }

    /// μ_hi, m̄, k, p, q of one instance, each in every lane.
    @usableFromInline typealias Constants = (Scalar.Vector, Scalar.Vector, Scalar.Vector, Scalar.Vector, Scalar.Vector)

    @inlinable @inline(__always)
    func constants(of instance: Int) -> Constants {
        let lanes = Scalar.Vector.scalarCount
        return (Scalar.Vector(repeating: constants[instance]), Scalar.Vector(repeating: constants[lanes &+ instance]),
                Scalar.Vector(repeating: constants[2 &* lanes &+ instance]),
                Scalar.Vector(repeating: constants[3 &* lanes &+ instance]),
                Scalar.Vector(repeating: constants[4 &* lanes &+ instance]))
    }

    @inlinable @inline(__always)
    func vector(at index: Int, _ constants: Constants) -> Scalar.Vector {
        let (meanHigh, meanDy, gradientScale, centeredScale, offset) = constants
        return offset
            .addingProduct(centeredScale, loadVector(x, index) - meanHigh)
            .addingProduct(gradientScale, loadVector(dy, index) - meanDy)
    }
}
