#if canImport(Glibc)
import Glibc
#endif

/// The output directory of `apply`, written as a unit: every output is first
/// written under a hidden temporary name, and renamed into place only after
/// every rank has reported success. A failed run removes its temporary files
/// and leaves whatever the directory held before untouched.
struct OutputDirectory {
    let path: String
    let names: [String]

    init(path: String, names: [String]) throws {
        if let kind = FileKind(path: path), kind != .directory {
            throw ToolError.usage("--output \(path) exists and is not a directory")
        }
        self.path = path
        self.names = names
    }

    func finalPath(_ name: String) -> String { path + "/" + name }

    /// The hidden name an output is written under until the job commits;
    /// `tag` (rank 0's process id) keeps two jobs on one directory apart.
    func partialPath(_ name: String, tag: Int64) -> String { path + "/.\(name).partial-\(tag)" }

    /// Refuses to run when an output would replace one of the inputs (the
    /// same file, also through a symbolic or hard link), or when an output's
    /// name is taken by something that a file cannot replace (a directory),
    /// which would otherwise fail only at the final rename.
    func refuseOverlap(with inputs: [String]) throws {
        for name in names {
            if FileKind(path: finalPath(name)) == .directory {
                throw ToolError.usage("output \(finalPath(name)) exists and is a directory; remove it or choose another --output")
            }
            guard let output = FileIdentity(path: finalPath(name)) else { continue }
            if let input = inputs.first(where: { FileIdentity(path: $0) == output }) {
                throw ToolError.usage(
                    "output \(finalPath(name)) is the input file \(input); choose another --output directory")
            }
        }
    }

    /// mkdir -p.
    func createDirectory() throws {
        var prefix = path.hasPrefix("/") ? "/" : ""
        for component in path.split(separator: "/") {
            prefix += component + "/"
            if mkdir(prefix, 0o777) != 0 && errno != EEXIST {
                throw ToolError.io("cannot create the output directory \(path): \(errnoText())")
            }
        }
        guard FileKind(path: path) == .directory else {
            throw ToolError.io("cannot create the output directory \(path): a file of that name is in the way")
        }
    }

    /// Renames every temporary file into place.
    func commit(tag: Int64) throws {
        for name in names where rename(partialPath(name, tag: tag), finalPath(name)) != 0 {
            throw ToolError.io("cannot rename \(partialPath(name, tag: tag)) to \(finalPath(name)): \(errnoText())")
        }
    }

    /// Removes the temporary files of a failed run (best effort: a file that
    /// was never made is not an error).
    func removePartials(tag: Int64) {
        for name in names { unlink(partialPath(name, tag: tag)) }
    }
}

/// What a path names, following symbolic links; nil when nothing is there.
enum FileKind {
    case directory, other

    init?(path: String) {
        var status = stat()
        guard stat(path, &status) == 0 else { return nil }
        self = (status.st_mode & S_IFMT) == S_IFDIR ? .directory : .other
    }
}

/// A file's device and inode: equal for two paths that reach the same file.
struct FileIdentity: Equatable {
    let device: UInt64
    let inode: UInt64

    init?(path: String) {
        var status = stat()
        guard stat(path, &status) == 0 else { return nil }
        device = UInt64(status.st_dev)
        inode = UInt64(status.st_ino)
    }
}
