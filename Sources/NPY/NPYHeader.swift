/// The `.npy` format versions this module reads; it writes 1.0 unless the
/// header does not fit 1.0's 2-byte length.
///
/// Version 3.0 differs from 2.0 only in encoding the header in UTF-8 rather
/// than Latin-1, for the field names of structured dtypes; a float array's
/// header is ASCII either way, so 3.0 reads like 2.0 (as `numpy.load` reads
/// it: `np.save(..., version=(3, 0))` writes it on request).
public enum NPYFormatVersion: Sendable, Equatable, CaseIterable, CustomStringConvertible {
    /// 1.0 stores the header length in 2 bytes (headers up to 65535 bytes),
    /// 2.0 and 3.0 in 4 bytes.
    case v1_0, v2_0, v3_0

    /// The version whose bytes in the file are `major`.0, or nil.
    init?(major: UInt8, minor: UInt8) {
        guard let match = Self.allCases.first(where: { $0.major == major && minor == 0 }) else { return nil }
        self = match
    }

    var major: UInt8 {
        switch self {
        case .v1_0: 1
        case .v2_0: 2
        case .v3_0: 3
        }
    }

    /// Width of the little-endian header-length field after the version bytes.
    var lengthFieldSize: Int {
        switch self {
        case .v1_0: 2
        case .v2_0, .v3_0: 4
        }
    }

    /// Magic string, two version bytes and the length field.
    var preambleLength: Int { NPYHeader.magic.count + 2 + lengthFieldSize }

    /// The largest header length (dictionary, padding, newline) the length field holds.
    var maximumHeaderLength: Int { (1 << (8 * lengthFieldSize)) - 1 }

    /// `"1.0"`.
    public var description: String { "\(major).0" }
}

/// What a `.npy` file holds (dtype and C-order shape) and where its data starts.
///
/// The layout, from numpy's format specification:
///
///     "\x93NUMPY"  major minor  header length (LE u16 for 1.0, u32 for 2.0)
///     "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"  spaces  "\n"
///     data: the elements in C order, little-endian
///
/// The spaces pad the header so the data starts at a multiple of 64 bytes,
/// which keeps every element aligned when the file is mapped or read in place.
public struct NPYHeader: Sendable, Equatable, CustomStringConvertible {
    /// The element type.
    public var dtype: NPYDType
    /// Dimensions in C order; `[]` is a scalar (one element).
    public var shape: [Int]
    /// Byte offset of the first element in the file, which is the length of
    /// the encoded header.
    public var dataOffset: Int

    /// A header for writing; `dataOffset` is the length of `encoded()`.
    public init(dtype: NPYDType, shape: [Int]) {
        self.init(dtype: dtype, shape: shape, dataOffset: 0)
        dataOffset = encoded().count
    }

    init(dtype: NPYDType, shape: [Int], dataOffset: Int) {
        self.dtype = dtype
        self.shape = shape
        self.dataOffset = dataOffset
    }

    /// The product of the dimensions: 1 for a scalar, 0 when any dimension is 0.
    ///
    /// - Precondition: the shape is valid, as it is in every parsed header and
    ///   every header `NPYWriter` accepted; otherwise this may trap on overflow.
    public var elementCount: Int { shape.contains(0) ? 0 : shape.reduce(1, *) }

    /// `elementCount` × the dtype's size; same precondition.
    public var dataByteCount: Int { elementCount * dtype.byteSize }

    /// `dataOffset + dataByteCount`: the size of a complete file.
    public var fileByteCount: Int { dataOffset + dataByteCount }

    /// `"float32 (2, 3), data at byte 128"`.
    public var description: String { "\(dtype.name) \(shapeText), data at byte \(dataOffset)" }

    /// The shape as Python writes a tuple: `()`, `(5,)`, `(2, 3)`.
    var shapeText: String {
        shape.count == 1 ? "(\(shape[0]),)" : "(" + shape.map(String.init).joined(separator: ", ") + ")"
    }

    // MARK: - Encoding

    static let magic: [UInt8] = [0x93] + Array("NUMPY".utf8)

    /// Data starts at a multiple of this, as numpy aligns it.
    static let alignment = 64

    /// The header bytes numpy's layout gives: version 1.0 when the header fits
    /// its 2-byte length, else 2.0. The length is a multiple of 64 and the
    /// dictionary is padded with spaces and ends with "\n".
    public func encoded() -> [UInt8] {
        // Version 2.0 can hold any dictionary this process can build.
        encoded(version: .v1_0) ?? encoded(version: .v2_0)!
    }

    /// The header bytes in a chosen format version, or nil when the header
    /// does not fit that version's length field. A header laid out in a
    /// version `encoded()` would not choose is longer or shorter than
    /// `dataOffset`; it is for making test files, not for `NPYWriter`.
    public func encoded(version: NPYFormatVersion) -> [UInt8]? {
        let dictionary = Array(dictionaryText.utf8)
        let unpadded = version.preambleLength + dictionary.count + 1  // + "\n"
        let total = (unpadded + Self.alignment - 1) / Self.alignment * Self.alignment
        let headerLength = total - version.preambleLength
        guard headerLength <= version.maximumHeaderLength else { return nil }

        var bytes = Self.magic + [version.major, 0]
        bytes += (0..<version.lengthFieldSize).map { UInt8(truncatingIfNeeded: headerLength >> (8 * $0)) }
        bytes += dictionary
        bytes += repeatElement(UInt8(ascii: " "), count: total - unpadded)
        bytes.append(UInt8(ascii: "\n"))
        return bytes
    }

    /// The dictionary as numpy writes it: keys sorted, each entry followed by ", ".
    var dictionaryText: String {
        "{'descr': '\(dtype.descr)', 'fortran_order': False, 'shape': \(shapeText), }"
    }

    // MARK: - Validation

    /// numpy's `NPY_MAXDIMS`: numpy cannot load an array with more dimensions.
    static let maximumDimensions = 64

    /// Why this header cannot describe a file numpy could load and this
    /// process could address, or nil when it can. After nil, `elementCount`,
    /// `dataByteCount` and `fileByteCount` are safe to compute.
    func sizeProblem() -> String? {
        guard shape.count <= Self.maximumDimensions else {
            return "'shape' has \(shape.count) dimensions; numpy supports at most \(Self.maximumDimensions)"
        }
        if let negative = shape.first(where: { $0 < 0 }) {
            return "'shape' \(shapeText) has a negative dimension \(negative)"
        }
        guard !shape.contains(0) else { return nil }  // no data, whatever the other dimensions
        var elements = 1
        for dimension in shape {
            let (product, overflow) = elements.multipliedReportingOverflow(by: dimension)
            guard !overflow else { return "'shape' \(shapeText) has more elements than Int can count" }
            elements = product
        }
        let (bytes, bytesOverflow) = elements.multipliedReportingOverflow(by: dtype.byteSize)
        guard !bytesOverflow, !bytes.addingReportingOverflow(dataOffset).overflow else {
            return "'shape' \(shapeText) of \(dtype.name) describes more bytes than a file offset can hold"
        }
        return nil
    }

    /// Refuses element ranges that would leave the array or reinterpret its
    /// bytes as another type; `action` is "read" or "write".
    func checkAccess<T: NPYElement>(
        to type: T.Type, elementOffset: Int, count: Int, action: String, path: String
    ) throws(NPYError) {
        guard T.npyDType == dtype else {
            throw NPYError(path: path, problem: "cannot \(action) \(T.npyDType.name) elements: the array holds \(dtype.name)")
        }
        guard elementOffset >= 0, count >= 0, elementOffset <= elementCount, count <= elementCount - elementOffset else {
            throw NPYError(
                path: path,
                problem: "cannot \(action) \(count) elements at element \(elementOffset): outside the array's \(elementCount) elements")
        }
    }
}
