import _Differentiation
import DataParallel

/// A tensor as a value: its dimensions and its elements in C order, held in
/// an array (copied on write). On a rank of a data-parallel job it holds
/// either this rank's slice of a batch, (local N, C, S…), or a parameter
/// that every rank holds a copy of, such as γ, (C).
///
/// A tensor is its own tangent vector: the gradient with respect to a tensor
/// is a tensor of the same shape. The one exception is ``zero``, the zero of
/// every shape, which automatic differentiation uses before it knows one:
/// adding it to a tensor gives that tensor back.
///
/// `Scalar` is `Float`, `Double` or `Float16`, the layer's storage
/// precisions: the functions compute in it (`Float` for `Float16`) and
/// finish every sum in `Double`.
public struct Tensor<Scalar: DataParallelScalar>: Differentiable, AdditiveArithmetic, Sendable {
    /// A tensor is its own tangent vector.
    public typealias TangentVector = Tensor

    /// The dimensions, outermost first; empty only for ``zero``.
    public private(set) var shape: [Int]
    /// The elements in C order (the last dimension varies fastest).
    public private(set) var scalars: [Scalar]

    /// A tensor of `shape` holding `scalars`, whose count must be the
    /// product of the dimensions.
    public init(shape: [Int], scalars: [Scalar]) {
        precondition(!shape.isEmpty, "a tensor has at least one dimension")
        precondition(shape.allSatisfy { $0 >= 0 }, "negative dimension in \(shape)")
        precondition(shape.reduce(1, *) == scalars.count, "\(scalars.count) scalars for shape \(shape)")
        self.shape = shape
        self.scalars = scalars
    }

    /// A tensor of `shape` whose every element is `value`.
    public init(repeating value: Scalar, shape: [Int]) {
        self.init(shape: shape, scalars: Array(repeating: value, count: shape.reduce(1, *)))
    }

    private init(zeroOfEveryShape: ()) {
        shape = []
        scalars = []
    }

    /// The zero of every shape: `t + .zero == t` for any tensor `t`.
    public static var zero: Tensor { Tensor(zeroOfEveryShape: ()) }

    /// True for ``zero``, whose shape is not known.
    public var isZeroOfEveryShape: Bool { shape.isEmpty }

    /// `self`, or zeros of `shape` when `self` is ``zero``: what a pullback
    /// uses when no gradient reached its output.
    func materialized(shape: [Int]) -> Tensor {
        isZeroOfEveryShape ? Tensor(repeating: 0, shape: shape) : self
    }

    /// The element-wise sum; both tensors have the same shape, unless one is ``zero``.
    @differentiable(reverse)
    public static func + (lhs: Tensor, rhs: Tensor) -> Tensor {
        combined(lhs, rhs, +)
    }

    /// The element-wise difference; both tensors have the same shape, unless one is ``zero``.
    @differentiable(reverse)
    public static func - (lhs: Tensor, rhs: Tensor) -> Tensor {
        combined(lhs, rhs.negated, +)
    }

    /// Every element multiplied by `scale`, as an SGD step needs:
    /// `weights -= learningRate * gradient`.
    @differentiable(reverse, wrt: tensor)
    public static func * (scale: Scalar, tensor: Tensor) -> Tensor {
        tensor.mapScalars { scale * $0 }
    }

    /// Adds `offset`: the step along a tangent vector.
    public mutating func move(by offset: Tensor) {
        self = self + offset
    }

    private var negated: Tensor { mapScalars { -$0 } }

    private func mapScalars(_ transform: (Scalar) -> Scalar) -> Tensor {
        isZeroOfEveryShape ? self : Tensor(shape: shape, scalars: scalars.map(transform))
    }

    private static func combined(_ lhs: Tensor, _ rhs: Tensor, _ operation: (Scalar, Scalar) -> Scalar) -> Tensor {
        if lhs.isZeroOfEveryShape { return rhs }
        if rhs.isZeroOfEveryShape { return lhs }
        precondition(lhs.shape == rhs.shape, "shapes \(lhs.shape) and \(rhs.shape) differ")
        return Tensor(shape: lhs.shape, scalars: zip(lhs.scalars, rhs.scalars).map(operation))
    }
}

// The derivatives of the arithmetic: written out, because the compiler
// cannot differentiate through the array operations inside.
extension Tensor {
    @usableFromInline
    @derivative(of: +)
    static func sumVJP(lhs: Tensor, rhs: Tensor) -> (value: Tensor, pullback: (Tensor) -> (Tensor, Tensor)) {
        (lhs + rhs, { ($0, $0) })
    }

    @usableFromInline
    @derivative(of: -)
    static func differenceVJP(lhs: Tensor, rhs: Tensor) -> (value: Tensor, pullback: (Tensor) -> (Tensor, Tensor)) {
        (lhs - rhs, { ($0, $0.negated) })
    }

    @usableFromInline
    @derivative(of: *, wrt: tensor)
    static func scaledVJP(scale: Scalar, tensor: Tensor) -> (value: Tensor, pullback: (Tensor) -> Tensor) {
        (scale * tensor, { scale * $0 })
    }
}
