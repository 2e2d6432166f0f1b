/// An owned, 64-byte aligned buffer of `count` elements, allocated once and
/// reused: a freshly mapped tensor-sized buffer page-faults on every 4 KiB
/// page, which costs as much as the kernel itself, so hot loops must never
/// allocate.
public final class TensorBuffer<Element>: @unchecked Sendable {
    /// The elements; valid while the buffer lives.
    public let elements: UnsafeMutableBufferPointer<Element>
    @usableFromInline let allocation: UnsafeMutableRawPointer

    @usableFromInline init(uninitializedCount count: Int) {
        precondition(count >= 0)
        allocation = .allocate(byteCount: max(count, 1) * MemoryLayout<Element>.stride, alignment: 64)
        elements = UnsafeMutableBufferPointer(
            start: allocation.bindMemory(to: Element.self, capacity: count), count: count)
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
