/// A value in the part of Python's literal syntax that `.npy` headers use:
/// numpy writes the header with `repr` and reads it with `ast.literal_eval`.
struct PythonLiteral: Equatable, Sendable {
    enum Value: Equatable, Sendable {
        /// The characters between the quotes; escapes are kept as written.
        case string(String)
        /// An integer; nil when it does not fit in `Int`.
        case integer(Int?)
        /// Any other number: `2.5`, `1e3`, `0x10`.
        case otherNumber
        case boolean(Bool)
        case none
        case tuple([PythonLiteral])
        case list([PythonLiteral])
    }

    var value: Value
    /// Where the literal was written in the header text, for messages.
    var source: Range<Int>
}

/// Reads a header dictionary such as
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`.
///
/// The input may be hostile, so: every byte is examined a bounded number of
/// times (parsing is linear), brackets may nest only `maximumNesting` deep
/// (the recursion cannot exhaust the stack), and nothing is allocated beyond
/// what the text itself holds.
struct PythonLiteralParser {
    /// The text is not a dictionary literal; `offset` counts bytes from its start.
    struct SyntaxError: Error, Equatable {
        var offset: Int
        var problem: String
    }

    struct Entry {
        var key: String
        var value: PythonLiteral
    }

    /// A shape tuple sits at depth 2 and a structured dtype's fields at 3;
    /// anything much deeper is not a header numpy wrote.
    static let maximumNesting = 8

    private let text: [UInt8]
    private var position = 0

    private init(text: [UInt8]) { self.text = text }

    /// The dictionary's entries in the order written. Only whitespace may
    /// follow the closing brace: numpy pads with spaces and a newline.
    static func parseDictionary(_ text: [UInt8]) throws(SyntaxError) -> [Entry] {
        var parser = PythonLiteralParser(text: text)
        let entries = try parser.dictionary()
        parser.skipWhitespace()
        guard parser.position == text.count else {
            throw SyntaxError(offset: parser.position, problem: "unexpected text after the dictionary")
        }
        return entries
    }

    private mutating func dictionary() throws(SyntaxError) -> [Entry] {
        skipWhitespace()
        try expect("{", "'{' opening the header dictionary")
        var entries: [Entry] = []
        while true {
            skipWhitespace()
            if take("}") { return entries }  // empty, or after a trailing comma
            let key = try value(depth: 1)
            guard case .string(let name) = key.value else {
                throw SyntaxError(offset: key.source.lowerBound, problem: "expected a quoted key")
            }
            skipWhitespace()
            try expect(":", "':' after the key '\(printable(name))'")
            entries.append(Entry(key: name, value: try value(depth: 1)))
            skipWhitespace()
            if take(",") { continue }
            try expect("}", "',' or '}' after the value of '\(printable(name))'")
            return entries
        }
    }

    private mutating func value(depth: Int) throws(SyntaxError) -> PythonLiteral {
        guard depth <= Self.maximumNesting else {
            throw SyntaxError(offset: position, problem: "brackets nested deeper than \(Self.maximumNesting) levels")
        }
        skipWhitespace()
        guard let next = peek() else { throw SyntaxError(offset: position, problem: "expected a value") }
        switch next {
        case "'", "\"": return try string()
        case "(": return try sequence(closedBy: ")", depth: depth)
        case "[": return try sequence(closedBy: "]", depth: depth)
        case _ where ("0"..."9").contains(next) || "+-.".unicodeScalars.contains(next): return number()
        case _ where Self.isNameCharacter(next): return try name()
        default: throw SyntaxError(offset: position, problem: "expected a value")
        }
    }

    /// A quoted string on one line; a backslash escapes the next character.
    private mutating func string() throws(SyntaxError) -> PythonLiteral {
        let start = position
        let quote = peek()
        position += 1
        while let scalar = peek(), scalar != "\n" {
            position += 1
            if scalar == quote {
                let content = latin1(text[(start + 1)..<(position - 1)])
                return PythonLiteral(value: .string(content), source: start..<position)
            }
            if scalar == "\\" { position += 1 }
        }
        throw SyntaxError(offset: start, problem: "unterminated string")
    }

    /// A tuple `(...)` or list `[...]`, with an optional trailing comma. As in
    /// Python, `(5)` is just `5`; the one-element tuple is `(5,)`.
    private mutating func sequence(closedBy closing: Unicode.Scalar, depth: Int) throws(SyntaxError) -> PythonLiteral {
        let start = position
        position += 1
        var elements: [PythonLiteral] = []
        var sawComma = false
        while true {
            skipWhitespace()
            if take(closing) { break }
            elements.append(try value(depth: depth + 1))
            skipWhitespace()
            if take(",") {
                sawComma = true
                continue
            }
            try expect(closing, "',' or '\(closing)'")
            break
        }
        let source = start..<position
        guard closing == ")" else { return PythonLiteral(value: .list(elements), source: source) }
        if elements.count == 1 && !sawComma { return PythonLiteral(value: elements[0].value, source: source) }
        return PythonLiteral(value: .tuple(elements), source: source)
    }

    /// A number token: sign, digits, letters, `_` and `.`, and a sign after
    /// an exponent `e`. Only plain decimal integers become `.integer`.
    private mutating func number() -> PythonLiteral {
        let start = position
        position += 1
        while let scalar = peek() {
            let afterExponent = text[position - 1] == UInt8(ascii: "e") || text[position - 1] == UInt8(ascii: "E")
            guard Self.isNameCharacter(scalar) || scalar == "." || (afterExponent && (scalar == "+" || scalar == "-"))
            else { break }
            position += 1
        }
        let value = Self.integer(text[start..<position]).map(PythonLiteral.Value.integer) ?? .otherNumber
        return PythonLiteral(value: value, source: start..<position)
    }

    /// The value of `[+-]digits`, `.some(nil)` when it overflows `Int`, nil
    /// when the token is not a decimal integer at all.
    private static func integer(_ token: ArraySlice<UInt8>) -> Int?? {
        var digits = token
        let negative = digits.first == UInt8(ascii: "-")
        if negative || digits.first == UInt8(ascii: "+") { digits = digits.dropFirst() }
        guard !digits.isEmpty, digits.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }) else {
            return nil
        }
        var magnitude = 0
        for digit in digits {
            let (shifted, overflow) = magnitude.multipliedReportingOverflow(by: 10)
            let (sum, carry) = shifted.addingReportingOverflow(Int(digit - UInt8(ascii: "0")))
            if overflow || carry { return .some(nil) }
            magnitude = sum
        }
        return negative ? -magnitude : magnitude
    }

    /// `True`, `False` or `None`; any other name is not a literal.
    private mutating func name() throws(SyntaxError) -> PythonLiteral {
        let start = position
        while let scalar = peek(), Self.isNameCharacter(scalar) { position += 1 }
        let word = latin1(text[start..<position])
        let value: PythonLiteral.Value
        switch word {
        case "True": value = .boolean(true)
        case "False": value = .boolean(false)
        case "None": value = .none
        default: throw SyntaxError(offset: start, problem: "unknown name '\(printable(word))'; expected True, False or None")
        }
        return PythonLiteral(value: value, source: start..<position)
    }

    // MARK: - Scanning

    private static func isNameCharacter(_ scalar: Unicode.Scalar) -> Bool {
        ("a"..."z").contains(scalar) || ("A"..."Z").contains(scalar) || ("0"..."9").contains(scalar) || scalar == "_"
    }

    private func peek() -> Unicode.Scalar? {
        position < text.count ? Unicode.Scalar(text[position]) : nil
    }

    private mutating func skipWhitespace() {
        while let scalar = peek(), [" ", "\t", "\n", "\r", "\u{0C}"].contains(scalar) { position += 1 }
    }

    /// Consumes `scalar` if it comes next.
    private mutating func take(_ scalar: Unicode.Scalar) -> Bool {
        guard peek() == scalar else { return false }
        position += 1
        return true
    }

    private mutating func expect(_ scalar: Unicode.Scalar, _ what: String) throws(SyntaxError) {
        guard take(scalar) else { throw SyntaxError(offset: position, problem: "expected \(what)") }
    }
}
