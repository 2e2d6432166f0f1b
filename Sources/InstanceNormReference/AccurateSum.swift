/// A sum of `Double` terms and products as accurate as a sum in twice
/// `Double`'s precision, rounded once at the end: the yardstick against
/// which `ErrorBounds` measures sums the kernels round many times.
///
/// Every addition and product goes through an error-free transformation
/// (Knuth's TwoSum; TwoProduct by FMA), whose exact rounding error is
/// collected in `low` (Ogita, Rump and Oishi, "Accurate sum and dot
/// product", SIAM J. Sci. Comput. 26(6), 2005, algorithms Sum2 and Dot2).
/// Their error bound:
///
///     |value − exact| ≤ u·|exact| + γ²_{2n}·Σ|terms|,    γ_k = k·u/(1 − k·u)
///
/// with u = 2⁻⁵³ and n the number of terms; `errorBound` returns it. The
/// second part is below u·|exact| for any n < 10⁶ unless the sum cancels to
/// a millionth of its terms, so the reference adds about one rounding.
public struct AccurateSum: Sendable, Equatable {
    /// The running sum, rounded.
    public private(set) var high = 0.0
    /// The rounding errors of every addition and product so far.
    public private(set) var low = 0.0
    /// Σ|terms| and the number of operations, for `errorBound`.
    public private(set) var magnitude = 0.0
    /// How many additions the sum has taken (for its error bound).
    public private(set) var operations = 0

    /// An empty sum, 0.
    public init() {}

    /// The sum rounded once.
    public var value: Double { high + low }

    /// Adds `term` exactly into (high, low).
    public mutating func add(_ term: Double) {
        let (sum, error) = twoSum(high, term)
        high = sum
        low += error
        magnitude += abs(term)
        operations += 1
    }

    /// Adds a·b: the product's rounding error is kept too.
    public mutating func addProduct(_ a: Double, _ b: Double) {
        let product = a * b
        let productError = (-product).addingProduct(a, b)  // fma(a, b, −p): exact
        let (sum, error) = twoSum(high, product)
        high = sum
        low += error + productError
        magnitude += abs(product)
        operations += 2
    }

    /// Adds another accurate sum (both of its parts).
    public mutating func add(_ other: AccurateSum) {
        let magnitudeBefore = magnitude + other.magnitude, operationsBefore = operations + other.operations
        add(other.high)
        add(other.low)
        magnitude = magnitudeBefore
        operations = operationsBefore + 2
    }

    /// The Sum2/Dot2 bound on |value − exact sum of the terms|.
    public var errorBound: Double {
        let u = 0x1p-53, k = Double(2 * operations + 2)
        let gamma = k * u / (1 - k * u)
        return u * abs(value) + gamma * gamma * magnitude
    }
}

/// a + b as the rounded sum and its exact rounding error (Knuth's TwoSum:
/// six operations, no branch, valid for any order of magnitude).
@inline(__always)
func twoSum(_ a: Double, _ b: Double) -> (sum: Double, error: Double) {
    let sum = a + b
    let bVirtual = sum - a
    let aVirtual = sum - bVirtual
    return (sum, (a - aVirtual) + (b - bVirtual))
}
