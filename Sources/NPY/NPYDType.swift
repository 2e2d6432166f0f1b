#if !_endian(little)
#error("NPY copies element bytes between memory and file unchanged; that is only right on little-endian hosts")
#endif

/// The element types a `.npy` file may hold here: little-endian IEEE-754
/// floats, the layout numpy writes on every common machine.
///
/// Only these three are accepted because InstanceNormMPI stores tensors in
/// them; every other numpy dtype is refused by name rather than converted
/// silently.
public enum NPYDType: Sendable, Equatable, CaseIterable {
    /// IEEE binary16, binary32, binary64: `'<f2'`, `'<f4'`, `'<f8'` in the
    /// header, 2, 4 and 8 bytes per element.
    case float16, float32, float64

    /// Bytes per element.
    public var byteSize: Int {
        switch self {
        case .float16: 2
        case .float32: 4
        case .float64: 8
        }
    }

    /// numpy's type string (`dtype.str`), as stored under `'descr'`.
    public var descr: String {
        switch self {
        case .float16: "<f2"
        case .float32: "<f4"
        case .float64: "<f8"
        }
    }

    /// numpy's dtype name, for messages.
    public var name: String {
        switch self {
        case .float16: "float16"
        case .float32: "float32"
        case .float64: "float64"
        }
    }

    /// The dtype whose type string is exactly `descr`, or nil.
    public init?(descr: String) {
        guard let match = Self.allCases.first(where: { $0.descr == descr }) else { return nil }
        self = match
    }

    /// `'<f2' (float16), '<f4' (float32), '<f8' (float64)`: what a refusal offers instead.
    static var supportedList: String {
        allCases.map { "'\($0.descr)' (\($0.name))" }.joined(separator: ", ")
    }

    /// Names a numpy type string well enough for a refusal to say what the
    /// file holds: `'>f4'` is "big-endian float32", `'|u1'` is "uint8".
    /// Returns nil when `descr` is not a type string numpy writes.
    static func describe(typeString descr: String) -> String? {
        var rest = Substring(descr)
        var order = ""
        switch rest.first {
        case "<", "|": rest.removeFirst()  // the usual order, or none: not worth saying
        case ">": order = "big-endian "; rest.removeFirst()
        case "=": order = "native-order "; rest.removeFirst()
        default: break
        }
        guard let kind = rest.popFirst() else { return nil }
        let size = Int(rest.prefix(while: { ("0"..."9").contains($0) }))
        let bits = size.flatMap { $0 > 0 && $0 <= 64 ? 8 * $0 : nil }
        let name: String? =
            switch kind {
            case "f": bits.map { "float\($0)" }
            case "i": bits.map { "int\($0)" }
            case "u": bits.map { "uint\($0)" }
            case "c": bits.map { "complex\($0)" }
            case "b": "bool"
            case "S", "a": "bytes"
            case "U": "str"
            case "V": "void (raw bytes)"
            case "O": "Python object"
            case "M": "datetime64"
            case "m": "timedelta64"
            default: nil
            }
        return name.map { order + $0 }
    }
}

/// A Swift type whose values are stored as one `NPYDType`.
///
/// Reads and writes copy the element bytes unchanged, so a conforming type
/// must have exactly the in-memory layout of its dtype.
public protocol NPYElement: BinaryFloatingPoint, Sendable {
    /// The dtype a file of this type's elements declares.
    static var npyDType: NPYDType { get }
}

extension Float16: NPYElement {
    /// `.float16` (`'<f2'`).
    public static var npyDType: NPYDType { .float16 }
}

extension Float: NPYElement {
    /// `.float32` (`'<f4'`).
    public static var npyDType: NPYDType { .float32 }
}

extension Double: NPYElement {
    /// `.float64` (`'<f8'`).
    public static var npyDType: NPYDType { .float64 }
}
