#if canImport(Glibc)
import Glibc
#endif

/// Memory a rank is about to allocate, checked before it is allocated.
///
/// Swift stops the process when an allocation fails, and the other ranks
/// would then wait in the next collective until mpirun noticed. So each
/// step that allocates tensor-sized buffers first asks the kernel for the
/// whole amount at once inside an agreed step: a request the system refuses
/// (beyond `ulimit -v`, or more than the machine could ever provide) becomes
/// an error every rank agrees on (exit 71). The mapping is released at once
/// and never touched, so the check costs no memory. Memory that is merely
/// short is another matter: Linux grants it and the OOM killer ends the rank
/// later, which ends the job like any killed rank.
enum Memory {
    /// Requests below this need no check.
    static let checkedSize = 1 << 20

    /// Throws a resources error (exit 71) unless `byteCount` bytes can be mapped now.
    static func reserve(_ byteCount: Int, for what: String) throws {
        guard byteCount >= checkedSize else { return }
        let address = mmap(nil, byteCount, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        guard let address, address != UnsafeMutableRawPointer(bitPattern: -1) else {
            throw ToolError.resources("cannot allocate \(describeBytes(byteCount)) for \(what): \(errnoText())")
        }
        munmap(address, byteCount)
    }

    /// Σ count·size over the terms, saturating at Int.max instead of
    /// overflowing (a hostile header can describe any size).
    static func bytes(_ terms: (count: Int, size: Int)...) -> Int {
        var total = 0
        for term in terms {
            let (product, overflow) = term.count.multipliedReportingOverflow(by: term.size)
            let (sum, carry) = total.addingReportingOverflow(product)
            if overflow || carry { return .max }
            total = sum
        }
        return total
    }
}

/// `1.5 GiB`, `12.0 MiB`, `640 bytes`.
func describeBytes(_ count: Int) -> String {
    let units = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
    guard count >= 1024 else { return "\(count) bytes" }
    var value = Double(count) / 1024, unit = 0
    while value >= 1024 && unit < units.count - 1 {
        value /= 1024
        unit += 1
    }
    return fixed(value, 1) + " " + units[unit]
}
