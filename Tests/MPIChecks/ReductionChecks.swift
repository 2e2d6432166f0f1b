import MPI

/// A datatype the checks reduce, with values made from integers so that
/// every expected result is a closed form of the rank numbers, exact in
/// the type.
protocol CheckedValue: MPIDatatypeConvertible, Equatable, CustomStringConvertible {
    static var name: String { get }
    /// Whether the type holds negative values (the checks then use some).
    static var isSigned: Bool { get }
    /// A large offset the type holds exactly, to catch a 64-bit type moved
    /// as a 32-bit one (0 where the type cannot take one).
    static var wideOffset: Int { get }
    /// `integer`, plus `quarters`/4 for floating-point types (so that a
    /// float moved as an integer shows).
    static func make(_ integer: Int, quarters: Int) -> Self
}

extension Float: CheckedValue {
    static let name = "Float", isSigned = true, wideOffset = 0
    static func make(_ integer: Int, quarters: Int) -> Float { Float(integer) + Float(quarters) / 4 }
}

extension Double: CheckedValue {
    static let name = "Double", isSigned = true, wideOffset = 1 << 40
    static func make(_ integer: Int, quarters: Int) -> Double { Double(integer) + Double(quarters) / 4 }
}

extension Int32: CheckedValue {
    static let name = "Int32", isSigned = true, wideOffset = 0
    static func make(_ integer: Int, quarters: Int) -> Int32 { Int32(integer) }
}

extension Int64: CheckedValue {
    static let name = "Int64", isSigned = true, wideOffset = 1 << 40
    static func make(_ integer: Int, quarters: Int) -> Int64 { Int64(integer) }
}

extension UInt8: CheckedValue {
    static let name = "UInt8", isSigned = false, wideOffset = 0
    static func make(_ integer: Int, quarters: Int) -> UInt8 { UInt8(integer) }
}

extension Int: CheckedValue {
    static let name = "Int", isSigned = true, wideOffset = 1 << 40
    static func make(_ integer: Int, quarters: Int) -> Int { integer }
}

/// Element k of rank r's buffer, and the sum, max and min over the ranks in
/// closed form. base = (r + 2k) mod P runs over 0…P−1 as r does, in an order
/// that differs per k, so no operation's result is simply one rank's value:
///
///     v(r, k) = s_k·(base + 3k) + w_k      s_k = −1 for odd k in signed types, else 1
///     Σ_r v = s_k·(P(P−1)/2 + 3kP) + P·w_k
///     max_r v = s_k = 1: P − 1 + 3k + w_k;  s_k = −1: −3k + w_k
///     min_r v = s_k = 1: 3k + w_k;          s_k = −1: −(P − 1 + 3k) + w_k
///
/// w_k is the type's wide offset on the last element only.
struct ReductionPattern<Value: CheckedValue> {
    let size: Int
    static var count: Int { 4 }

    private func sign(_ k: Int) -> Int { Value.isSigned && k % 2 == 1 ? -1 : 1 }
    private func offset(_ k: Int) -> Int { k == Self.count - 1 ? Value.wideOffset : 0 }

    func values(of rank: Int) -> [Value] {
        (0..<Self.count).map { k in
            Value.make(sign(k) * ((rank + 2 * k) % size + 3 * k) + offset(k), quarters: 1)
        }
    }

    func expected(_ operation: ReductionOperation) -> [Value] {
        (0..<Self.count).map { k in
            let (top, bottom) = (size - 1 + 3 * k, 3 * k)
            switch operation {
            case .sum:
                return Value.make(sign(k) * (size * (size - 1) / 2 + 3 * k * size) + size * offset(k), quarters: size)
            case .max:
                return Value.make((sign(k) == 1 ? top : -bottom) + offset(k), quarters: 1)
            case .min:
                return Value.make((sign(k) == 1 ? bottom : -top) + offset(k), quarters: 1)
            case .logicalAnd:
                preconditionFailure("logicalAnd has checks of its own")
            }
        }
    }
}

/// sum, max and min of every datatype, through the array, in-place and
/// single-value forms of `allreduce`.
func checkReductions(_ world: Communicator, _ checker: Checker) {
    checkReductions(Float.self, world, checker)
    checkReductions(Double.self, world, checker)
    checkReductions(Int32.self, world, checker)
    checkReductions(Int64.self, world, checker)
    checkReductions(UInt8.self, world, checker)
    checkReductions(Int.self, world, checker)
}

private func checkReductions<Value: CheckedValue>(_: Value.Type, _ world: Communicator, _ checker: Checker) {
    let pattern = ReductionPattern<Value>(size: world.size)
    let mine = pattern.values(of: world.rank)
    for (operation, label) in [(ReductionOperation.sum, "sum"), (.max, "max"), (.min, "min")] {
        let name = "allreduce \(label) \(Value.name)"
        let expected = pattern.expected(operation)
        checker.run(name) {
            checker.expect(name, try world.allreduce(mine, operation), expected)
            var inPlace = mine
            try inPlace.withUnsafeMutableBufferPointer { try world.allreduce($0, operation) }
            checker.expect("\(name) in place", inPlace, expected)
            checker.expect("\(name) of one value", try world.allreduce(mine[1], operation), expected[1])
        }
    }
}

/// logicalAnd (integer types) and `isTrueOnEveryRank`: true only when every
/// rank's value is, whichever rank holds the false one.
func checkLogicalAnd(_ world: Communicator, _ checker: Checker) {
    let (rank, last) = (world.rank, world.size - 1)
    // Every rank nonzero, with different nonzero values: the result is nonzero.
    checker.run("logicalAnd all true") {
        checker.expect("logicalAnd Int32 all true", try world.allreduce(Int32(rank + 1), .logicalAnd) != 0, true)
        checker.expect("logicalAnd UInt8 all true", try world.allreduce(UInt8(rank + 1), .logicalAnd) != 0, true)
        checker.expect("isTrueOnEveryRank all true", try world.isTrueOnEveryRank(true), true)
    }
    for falseRank in Set([0, last]).sorted() {
        checker.run("logicalAnd false on rank \(falseRank)") {
            let value = rank == falseRank ? 0 : rank + 1
            checker.expect("logicalAnd Int32 false on rank \(falseRank)",
                           try world.allreduce(Int32(value), .logicalAnd), 0)
            checker.expect("logicalAnd UInt8 false on rank \(falseRank)",
                           try world.allreduce(UInt8(value), .logicalAnd), 0)
            checker.expect("isTrueOnEveryRank false on rank \(falseRank)",
                           try world.isTrueOnEveryRank(rank != falseRank), false)
        }
    }
}
