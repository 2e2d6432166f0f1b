#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// What a rank does when it is told to stop (SIGTERM, SIGINT, SIGHUP) while
/// `apply` has hidden temporary files in the output directory.
///
/// When one rank dies (a crash, SIGKILL, the OOM killer), mpirun ends the
/// others with SIGTERM, and SIGKILL a moment later; the user's Ctrl-C reaches
/// them the same way. Without a handler those signals leave the temporary
/// `.NAME.partial-TAG` files behind. With one, every rank removes the
/// registered temporary files (every rank knows their names, so they go even
/// when rank 0 is the one that died) and then dies of the same signal, so
/// mpirun still sees a rank killed by a signal.
///
/// Rank 0's renames into place must not be cut in half: inside
/// `deferringTermination` a signal is only noted; the body checks
/// `isTerminationPending` at its end (to roll back rather than commit), and
/// the signal takes effect when the body returns.
///
/// The handler is async-signal-safe: atomics, unlink, rmdir, signal and
/// raise, over C strings built before it was installed; nothing it touches
/// is allocated or freed while it may run.
enum Termination {
    /// 0: signals act at once; 1: deferring; 2: deferring, and one arrived.
    fileprivate static let state = Atomic<Int>(0)
    fileprivate static let pendingSignal = Atomic<Int32>(0)
    /// The address of a NULL-terminated array of C strings: the files to
    /// unlink, then the directories to rmdir (after a NULL separator), or 0.
    /// A list once published is never freed (the handler may be reading it
    /// on another thread); `published` keeps them reachable.
    fileprivate static let registered = Atomic<Int>(0)
    nonisolated(unsafe) private static var published: [UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>] = []
    private static let installed = Atomic<Bool>(false)

    static let signals = [SIGTERM, SIGINT, SIGHUP]

    /// From now on, a termination signal removes `files` (and then
    /// `directories`, if empty) before the rank dies. Replaces an earlier list.
    static func removeOnTermination(files: [String], directories: [String] = []) {
        install()
        let list = UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>.allocate(capacity: files.count + directories.count + 2)
        var index = 0
        for path in files { list[index] = strdup(path); index += 1 }
        list[index] = nil; index += 1
        for path in directories { list[index] = strdup(path); index += 1 }
        list[index] = nil
        published.append(list)
        registered.store(Int(bitPattern: UInt(bitPattern: list)), ordering: .sequentiallyConsistent)
    }

    /// Nothing to remove any more (the files were renamed or removed).
    static func forget() {
        registered.store(0, ordering: .sequentiallyConsistent)
    }

    /// Removes the registered files and directories now, as a termination
    /// signal would: before this rank aborts the job.
    static func removeRegisteredFiles() {
        removeRegistered()
        forget()
    }

    /// Runs `body` with termination signals held back until it returns.
    static func deferringTermination<R>(_ body: () throws -> R) rethrows -> R {
        install()
        state.store(1, ordering: .sequentiallyConsistent)
        defer {
            if state.exchange(0, ordering: .sequentiallyConsistent) == 2 {
                terminate(pendingSignal.load(ordering: .sequentiallyConsistent))
            }
        }
        return try body()
    }

    /// True inside `deferringTermination` once a termination signal arrived.
    static var isTerminationPending: Bool { state.load(ordering: .sequentiallyConsistent) == 2 }

    private static func install() {
        guard !installed.exchange(true, ordering: .sequentiallyConsistent) else { return }
        // Touch every global the handler uses, so none is first initialised inside it.
        _ = state.load(ordering: .relaxed)
        _ = pendingSignal.load(ordering: .relaxed)
        _ = registered.load(ordering: .relaxed)
        for number in signals { signal(number, terminationHandler) }
    }
}

/// The signal handler; see `Termination`.
private let terminationHandler: @convention(c) (Int32) -> Void = { number in
    Termination.pendingSignal.store(number, ordering: .sequentiallyConsistent)
    var current = Termination.state.load(ordering: .sequentiallyConsistent)
    while current != 0 {
        if current == 2 { return }
        let (exchanged, original) = Termination.state.compareExchange(
            expected: 1, desired: 2, ordering: .sequentiallyConsistent)
        if exchanged { return }
        current = original
    }
    terminate(number)
}

/// Removes the registered files and directories, then dies of `number`.
private func terminate(_ number: Int32) -> Never {
    removeRegistered()
    signal(number, SIG_DFL)
    // Inside the handler the signal is blocked until the handler returns, which it does not.
    var unblock = sigset_t()
    sigemptyset(&unblock)
    sigaddset(&unblock, number)
    pthread_sigmask(SIG_UNBLOCK, &unblock, nil)
    raise(number)
    _exit(128 + number)  // not reached: the default action of these signals ends the process
}

/// Unlinks the registered files, then removes the registered directories
/// (rmdir: only when empty).
private func removeRegistered() {
    let address = Termination.registered.load(ordering: .sequentiallyConsistent)
    guard let list = UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>(bitPattern: address) else { return }
    var index = 0
    while let path = list[index] { unlink(path); index += 1 }
    index += 1
    while let path = list[index] { rmdir(path); index += 1 }
}
