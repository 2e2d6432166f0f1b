#if canImport(Glibc)
import Glibc
#endif

/// The output directory of `apply`, written as a unit: every output is first
/// written under a hidden temporary name, and renamed into place only after
/// every rank has reported success, all or nothing. A failed run removes its
/// temporary files (and the directories it created) and leaves whatever the
/// directory held before untouched.
final class OutputDirectory {
    let path: String
    let names: [String]
    /// The directories `createDirectory` made, outermost first.
    private(set) var createdDirectories: [String] = []
    /// The directories of the path that did not exist when the run began,
    /// outermost first: what rank 0 will create, as every rank sees it, so
    /// that every rank's signal handler can remove them (see `Termination`).
    let missingDirectories: [String]

    init(path: String, names: [String]) throws {
        if let kind = FileKind(path: path), kind != .directory {
            throw ToolError.usage("--output \(path) exists and is not a directory")
        }
        self.path = path
        self.names = names
        var prefix = path.hasPrefix("/") ? "/" : "", missing: [String] = []
        for component in path.split(separator: "/") {
            prefix += component + "/"
            if FileKind(path: prefix) == nil { missing.append(String(prefix.dropLast())) }
        }
        missingDirectories = missing
    }

    func finalPath(_ name: String) -> String { path + "/" + name }

    /// The hidden name an output is written under until the job commits;
    /// `tag` (rank 0's process id) keeps two jobs on one directory apart.
    func partialPath(_ name: String, tag: Int64) -> String { path + "/.\(name).partial-\(tag)" }

    /// The hidden second name the previous file of `name` holds while the
    /// commit runs, so that a failed commit can put it back.
    func backupPath(_ name: String, tag: Int64) -> String { path + "/.\(name).backup-\(tag)" }

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

    /// mkdir -p, remembering what it made.
    func createDirectory() throws {
        var prefix = path.hasPrefix("/") ? "/" : ""
        for component in path.split(separator: "/") {
            prefix += component + "/"
            if mkdir(prefix, 0o777) == 0 {
                createdDirectories.append(String(prefix.dropLast()))
            } else if errno != EEXIST {
                throw ToolError.io("cannot create the output directory \(path): \(errnoText())")
            }
        }
        guard FileKind(path: path) == .directory else {
            throw ToolError.io("cannot create the output directory \(path): a file of that name is in the way")
        }
    }

    /// Renames every temporary file into place, all or nothing.
    ///
    /// For each output in turn: the file its name holds now, if any, gets a
    /// second, hidden name (`backupPath`; a hard link, so the name never
    /// stops naming a complete file, or a rename where the file system has
    /// no hard links); then the temporary file is renamed over the name,
    /// which replaces the old file atomically. When a step fails, or a
    /// termination signal arrived meanwhile (see `Termination`), every step
    /// done is undone in reverse order: a replaced name gets its previous
    /// file back (one rename, atomic), a new name is removed. After success
    /// the backups are removed and the directory is synced.
    ///
    /// - Parameter beforeRename: runs before the rename of output `index`;
    ///   the `renaming` failpoint throws from it.
    func commit(tag: Int64, beforeRename: (_ index: Int, _ from: String, _ to: String) throws -> Void = { _, _, _ in }) throws {
        var steps: [CommitStep] = []
        do {
            for (index, name) in names.enumerated() {
                steps.append(CommitStep(name: name, backup: try backUp(name, tag: tag)))
                let from = partialPath(name, tag: tag), to = finalPath(name)
                try beforeRename(index, from, to)
                guard rename(from, to) == 0 else {
                    throw ToolError.io("cannot rename \(from) to \(to): \(errnoText())")
                }
                steps[steps.count - 1].renamed = true
            }
            if Termination.isTerminationPending {
                throw ToolError.io("terminated by a signal while renaming the outputs into place")
            }
        } catch {
            let problems = rollBack(steps, tag: tag)
            guard problems.isEmpty else {
                throw ToolError.io(
                    "\(error); undoing the renames done also failed: \(problems.joined(separator: "; ")); "
                        + "the previous files are kept under their hidden .NAME.backup-\(tag) names in \(path)")
            }
            throw error
        }
        for step in steps where step.backup != .none { unlink(backupPath(step.name, tag: tag)) }
        syncDirectory()
    }

    /// Removes the temporary files of a failed run and the directories it
    /// created, if they are empty (best effort: a file never made is no error).
    func abandon(tag: Int64) {
        for name in names { unlink(partialPath(name, tag: tag)) }
        for directory in createdDirectories.reversed() { rmdir(directory) }
    }

    // MARK: - Private

    private enum Backup { case none, linked, moved }

    private struct CommitStep {
        let name: String
        let backup: Backup
        var renamed = false
    }

    /// Gives the file `name` holds now a second, hidden name.
    private func backUp(_ name: String, tag: Int64) throws -> Backup {
        let current = finalPath(name), backup = backupPath(name, tag: tag)
        var status = stat()
        if lstat(current, &status) != 0 {
            guard errno == ENOENT else { throw ToolError.io("cannot examine \(current): \(errnoText())") }
            return .none
        }
        if link(current, backup) == 0 { return .linked }
        // Some file systems have no hard links; a rename frees the name for
        // a moment but can be undone all the same.
        guard [EPERM, EOPNOTSUPP, EMLINK, ENOSYS].contains(errno) else {
            throw ToolError.io("cannot keep \(current) as \(backup) until the commit ends: \(errnoText())")
        }
        guard rename(current, backup) == 0 else {
            throw ToolError.io("cannot keep \(current) as \(backup) until the commit ends: \(errnoText())")
        }
        return .moved
    }

    /// Undoes `steps` in reverse; returns what could not be undone.
    private func rollBack(_ steps: [CommitStep], tag: Int64) -> [String] {
        var problems: [String] = []
        for step in steps.reversed() {
            let current = finalPath(step.name), backup = backupPath(step.name, tag: tag)
            switch (step.backup, step.renamed) {
            case (.none, false):
                continue
            case (.none, true):
                if unlink(current) != 0 { problems.append("cannot remove \(current): \(errnoText())") }
            case (.linked, false):
                unlink(backup)
            case (.linked, true), (.moved, _):
                if rename(backup, current) != 0 { problems.append("cannot rename \(backup) back to \(current): \(errnoText())") }
            }
        }
        return problems
    }

    /// Makes the renames durable (best effort: not every file system syncs directories).
    private func syncDirectory() {
        let descriptor = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard descriptor >= 0 else { return }
        _ = fsync(descriptor)
        close(descriptor)
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
