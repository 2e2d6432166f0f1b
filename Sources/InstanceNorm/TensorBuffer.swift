import Synchronization

/// An owned, 64-byte aligned buffer of `count` elements, allocated once and
/// reused: a freshly mapped tensor-sized buffer page-faults on every 4 KiB
/// page, which costs as much as the kernel itself, so hot loops must never
/// allocate.
///
/// Buffers of 1 MiB or more start 0, 1, 2 or 3 KiB past a page boundary,
/// in turn. Allocated alike, tensors sit a multiple of 4 KiB apart, and a
/// kernel that stores one tensor's row while it loads the same index of
/// another's then finds its loads matching recent stores in their low 12
/// bits, which the core treats as a possible dependency (4K aliasing): with
/// LayerNorm rows of 4096 floats the backward's loads of dy and x met its
/// stores of dx at every step. Staggered, LayerNorm's (8,1024,4096)
/// backward took 0.88 and 0.96 of the time (Zen 3, one thread, medians of
/// alternating runs).
public final class TensorBuffer<Element>: @unchecked Sendable {
    /// The elements; valid while the buffer lives.
    public let elements: UnsafeMutableBufferPointer<Element>
    @usableFromInline let allocation: UnsafeMutableRawPointer

    @usableFromInline init(uninitializedCount count: Int) {
        precondition(count >= 0)
        let bytes = max(count, 1) * MemoryLayout<Element>.stride
        let offset = bytes >= staggeredBytes ? staggerSerial.wrappingAdd(1, ordering: .relaxed).oldValue % 4 * 1024 : 0
        allocation = .allocate(byteCount: bytes + offset, alignment: offset > 0 ? 4096 : 64)
        elements = UnsafeMutableBufferPointer(
            start: (allocation + offset).bindMemory(to: Element.self, capacity: count), count: count)
    }

    /// A buffer of `count` copies of `value`. Inlinable, so that the fill
    /// is specialized for the element type: unspecialized, it copied each
    /// element through the type's value witness (a call per element, about
    /// a tenth of a bench run's samples on 16 M values).
    @inlinable
    public convenience init(repeating value: Element, count: Int) {
        self.init(uninitializedCount: count)
        elements.initialize(repeating: value)
    }

    /// A buffer holding a copy of `values`.
    @inlinable
    public convenience init(_ values: [Element]) {
        self.init(uninitializedCount: values.count)
        _ = elements.initialize(from: values)
    }

    deinit {
        elements.deinitialize()
        allocation.deallocate()
    }

    /// The number of elements.
    public var count: Int { elements.count }
    /// The elements as a read-only buffer (for the kernels' inputs); valid while the buffer lives.
    public var readOnly: UnsafeBufferPointer<Element> { UnsafeBufferPointer(elements) }
    /// A copy of the elements.
    public var array: [Element] { Array(elements) }
}

/// The size from which `TensorBuffer`s are staggered.
private let staggeredBytes = 1 << 20

/// Counts the staggered `TensorBuffer`s, to place each in turn.
private let staggerSerial = Atomic<Int>(0)
