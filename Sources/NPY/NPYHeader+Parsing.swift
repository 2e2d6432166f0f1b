extension NPYHeader {
    /// The longest header accepted. A float array's header is at most a few
    /// hundred bytes (64 dimensions of 20 digits); the cap bounds the memory
    /// and time a hostile file can make the parser spend.
    public static let maximumHeaderLength = 1 << 20

    /// Bytes to read before the header length is known: magic, version and
    /// the widest (2.0) length field.
    public static let longestPreamble = 12

    /// The header's total length, which is also `dataOffset`, from the first
    /// bytes of a file (`longestPreamble` of them, or the whole file if shorter).
    ///
    /// Refuses a file that is not `.npy`, an unsupported version, and a header
    /// longer than `maximumHeaderLength` or than the file.
    public static func dataOffset(preamble: [UInt8], fileSize: Int, path: String) throws(NPYError) -> Int {
        try readPreamble(preamble, fileSize: fileSize, path: path).dataOffset
    }

    /// Parses the header at the start of a file.
    ///
    /// - Parameters:
    ///   - prefix: the file's first bytes, at least the whole header
    ///     (`dataOffset(preamble:fileSize:path:)` says how many).
    ///   - fileSize: the file's size, so that a file whose data is shorter or
    ///     longer than the header describes is refused.
    ///   - path: named in every error.
    public static func parse(_ prefix: [UInt8], fileSize: Int, path: String) throws(NPYError) -> NPYHeader {
        let (version, dataOffset) = try readPreamble(prefix, fileSize: fileSize, path: path)
        try requireBytes(dataOffset, given: prefix.count, fileSize: fileSize, path: path)
        let dictionary = Array(prefix[version.preambleLength..<dataOffset])
        let header = try HeaderDictionary(text: dictionary, path: path).header(dataOffset: dataOffset)
        try header.checkFileSize(fileSize, path: path)
        return header
    }

    /// `parse` over raw memory, such as a mapped file.
    public static func parse(_ prefix: UnsafeRawBufferPointer, fileSize: Int, path: String) throws(NPYError) -> NPYHeader {
        try parse(Array(prefix), fileSize: fileSize, path: path)
    }

    private static func readPreamble(
        _ bytes: [UInt8], fileSize: Int, path: String
    ) throws(NPYError) -> (version: NPYFormatVersion, dataOffset: Int) {
        func refusal(_ problem: String) -> NPYError { NPYError(path: path, problem: problem) }
        guard fileSize > 0 else { throw refusal("file is empty; it is not a .npy file, or it was truncated") }

        try requireBytes(magic.count, given: bytes.count, fileSize: fileSize, path: path)
        guard bytes.starts(with: magic) else {
            throw refusal(
                "not a .npy file: it starts with '\(printable(latin1(bytes.prefix(magic.count))))' instead of the magic string \\x93NUMPY")
        }
        try requireBytes(magic.count + 2, given: bytes.count, fileSize: fileSize, path: path)
        let (major, minor) = (bytes[magic.count], bytes[magic.count + 1])
        guard let version = NPYFormatVersion(major: major, minor: minor) else {
            let supported = NPYFormatVersion.allCases.map(\.description).joined(separator: ", ")
            throw refusal("unsupported .npy format version \(major).\(minor); supported: \(supported)")
        }
        try requireBytes(version.preambleLength, given: bytes.count, fileSize: fileSize, path: path)

        let lengthField = bytes[(magic.count + 2)..<version.preambleLength]
        let headerLength = lengthField.reversed().reduce(0) { $0 << 8 | Int($1) }  // little-endian
        guard headerLength <= maximumHeaderLength else {
            throw refusal(
                "header length \(headerLength) bytes exceeds the limit of \(maximumHeaderLength) bytes; numpy writes far shorter headers for float arrays")
        }
        let dataOffset = version.preambleLength + headerLength
        guard dataOffset <= fileSize else {
            throw refusal("file is \(fileSize) bytes but its header alone claims \(dataOffset) bytes; the file is truncated")
        }
        return (version, dataOffset)
    }

    /// Refuses when fewer than `needed` bytes are at hand: the file is too
    /// short, or the caller passed too short a prefix.
    private static func requireBytes(_ needed: Int, given: Int, fileSize: Int, path: String) throws(NPYError) {
        guard fileSize >= needed else {
            throw NPYError(path: path, problem: "file is \(fileSize) bytes, too short to hold a .npy header; it is not a .npy file or it is truncated")
        }
        guard given >= needed else {
            throw NPYError(path: path, problem: "the header parser was given the first \(given) bytes, but the header needs \(needed)")
        }
    }

    /// Refuses a file whose size differs from the header's: missing data means
    /// a truncated copy, extra data a header that does not describe the file.
    func checkFileSize(_ fileSize: Int, path: String) throws(NPYError) {
        guard fileSize != fileByteCount else { return }
        let described = "file is \(fileSize) bytes but its header describes \(dataByteCount) bytes of data at offset \(dataOffset)"
        let verdict =
            fileSize < fileByteCount
            ? "the file is truncated"
            : "\(fileSize - fileByteCount) trailing bytes follow the data; the header does not describe the whole file"
        throw NPYError(path: path, problem: "\(described); \(verdict)")
    }
}

/// The header dictionary's text and the rules that turn its three entries
/// into an `NPYHeader`, each refusal naming the key and the value at fault.
private struct HeaderDictionary {
    static let keys = ["descr", "fortran_order", "shape"]

    let text: [UInt8]
    let path: String

    func header(dataOffset: Int) throws(NPYError) -> NPYHeader {
        let values = try valuesByKey()
        let dtype = try dtype(values["descr"]!)
        try requireCOrder(values["fortran_order"]!)
        let header = NPYHeader(dtype: dtype, shape: try shape(values["shape"]!), dataOffset: dataOffset)
        if let problem = header.sizeProblem() { throw refusal(problem) }
        return header
    }

    /// Exactly the three keys, each once.
    private func valuesByKey() throws(NPYError) -> [String: PythonLiteral] {
        let entries: [PythonLiteralParser.Entry]
        do throws(PythonLiteralParser.SyntaxError) {
            entries = try PythonLiteralParser.parseDictionary(text)
        } catch {
            let near = printable(latin1(text[error.offset...]), limit: 24)
            throw refusal("header dictionary is malformed at byte \(error.offset): \(error.problem) (near \"\(near)\")")
        }
        let expected = Self.keys.map { "'\($0)'" }.joined(separator: ", ")
        var values: [String: PythonLiteral] = [:]
        for entry in entries {
            guard Self.keys.contains(entry.key) else {
                throw refusal("header has an unknown key '\(printable(entry.key))'; expected exactly \(expected)")
            }
            guard values.updateValue(entry.value, forKey: entry.key) == nil else {
                throw refusal("header has the key '\(entry.key)' more than once")
            }
        }
        if let missing = Self.keys.first(where: { values[$0] == nil }) {
            throw refusal("header is missing the key '\(missing)'; expected exactly \(expected)")
        }
        return values
    }

    private func dtype(_ descr: PythonLiteral) throws(NPYError) -> NPYDType {
        let supported = "supported: \(NPYDType.supportedList)"
        switch descr.value {
        case .string(let typeString):
            if let dtype = NPYDType(descr: typeString) { return dtype }
            let what = NPYDType.describe(typeString: typeString).map { " (\($0))" } ?? ""
            throw refusal(
                "dtype '\(printable(typeString))'\(what) is not supported; \(supported); convert it first, e.g. arr.astype('<f4')")
        case .list:
            throw refusal("structured dtype \(source(descr)) is not supported; \(supported)")
        default:
            throw refusal("'descr' must be a dtype string such as '<f4', not \(source(descr))")
        }
    }

    private func requireCOrder(_ fortranOrder: PythonLiteral) throws(NPYError) {
        switch fortranOrder.value {
        case .boolean(false): return
        case .boolean(true): throw refusal("Fortran order is not supported; save with C order (np.ascontiguousarray)")
        default: throw refusal("'fortran_order' must be True or False, not \(source(fortranOrder))")
        }
    }

    /// The dimensions as integers; their signs and product are for
    /// `NPYHeader.sizeProblem` to judge.
    private func shape(_ shape: PythonLiteral) throws(NPYError) -> [Int] {
        guard case .tuple(let elements) = shape.value else {
            throw refusal("'shape' must be a tuple of non-negative integers such as (2, 3), not \(source(shape))")
        }
        guard elements.count <= NPYHeader.maximumDimensions else {
            throw refusal("'shape' has \(elements.count) dimensions; numpy supports at most \(NPYHeader.maximumDimensions)")
        }
        var dimensions: [Int] = []
        for element in elements {
            switch element.value {
            case .integer(let dimension?): dimensions.append(dimension)
            case .integer(nil): throw refusal("'shape' dimension \(source(element)) is too large for Int")
            default: throw refusal("'shape' dimension \(source(element)) is not an integer")
            }
        }
        return dimensions
    }

    private func source(_ literal: PythonLiteral) -> String {
        printable(latin1(text[literal.source]))
    }

    private func refusal(_ problem: String) -> NPYError {
        NPYError(path: path, problem: problem)
    }
}
