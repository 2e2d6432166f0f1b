import CMPI

/// A Swift type whose values MPI moves as elements of one predefined datatype.
///
/// The requirement is spelled with the C typedef `MPI_Datatype` (an
/// `OpaquePointer`), so a conformance returns the C handle as it is
/// (`MPI_FLOAT`). The getters in CMPI's shim are marked non-null, so the
/// handle arrives non-optional and no code unwraps it. `BitwiseCopyable`
/// because MPI copies the values' bytes.
public protocol MPIDatatypeConvertible: BitwiseCopyable {
    /// The MPI datatype of one value of this type.
    static var mpiDatatype: MPI_Datatype { get }
}

extension Float: MPIDatatypeConvertible {
    public static var mpiDatatype: MPI_Datatype { MPI_FLOAT }
}

extension Double: MPIDatatypeConvertible {
    public static var mpiDatatype: MPI_Datatype { MPI_DOUBLE }
}

extension Int32: MPIDatatypeConvertible {
    public static var mpiDatatype: MPI_Datatype { MPI_INT32_T }
}

extension Int64: MPIDatatypeConvertible {
    public static var mpiDatatype: MPI_Datatype { MPI_INT64_T }
}

extension UInt8: MPIDatatypeConvertible {
    public static var mpiDatatype: MPI_Datatype { MPI_UINT8_T }
}

/// `Int` as the fixed-width integer of its size, so counts and offsets can be
/// reduced without conversion.
extension Int: MPIDatatypeConvertible {
    #if _pointerBitWidth(_64)
    public static var mpiDatatype: MPI_Datatype { MPI_INT64_T }
    #else
    public static var mpiDatatype: MPI_Datatype { MPI_INT32_T }
    #endif
}
