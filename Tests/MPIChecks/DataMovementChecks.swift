import MPI

/// Counts of an uneven gather: rank 1 sends nothing, rank r ≠ 1 sends r + 1
/// values, value j of rank r being 1000·r + j (+ a quarter in floating point).
private func gatherCounts(_ size: Int) -> [Int] { (0..<size).map { $0 == 1 ? 0 : $0 + 1 } }

private func gatherValues<Value: CheckedValue>(of rank: Int, count: Int) -> [Value] {
    (0..<count).map { Value.make(1000 * rank + $0, quarters: 1) }
}

/// What every rank must receive: the ranks' values one after the other, in rank order.
private func gathered<Value: CheckedValue>(_ counts: [Int]) -> [Value] {
    counts.indices.flatMap { gatherValues(of: $0, count: counts[$0]) }
}

/// allgatherv, and iallgatherv completed by `test()` and by `wait()`, with
/// uneven counts and a rank that sends nothing.
func checkGathers(_ world: Communicator, _ checker: Checker) {
    checkGathers(Double.self, world, checker)
    checkGathers(Int32.self, world, checker)
}

private func checkGathers<Value: CheckedValue>(_: Value.Type, _ world: Communicator, _ checker: Checker) {
    let counts = gatherCounts(world.size)
    let send: [Value] = gatherValues(of: world.rank, count: counts[world.rank])
    let expected: [Value] = gathered(counts)
    checker.run("allgatherv \(Value.name)") {
        var receive = [Value](repeating: Value.make(-1, quarters: 0), count: expected.count)
        try send.withUnsafeBufferPointer { send in
            try receive.withUnsafeMutableBufferPointer { receive in
                try world.allgatherv(send, into: receive, counts: counts)
            }
        }
        checker.expect("allgatherv \(Value.name)", receive, expected)
    }
    for completion in [Completion.test, .wait] {
        let name = "iallgatherv \(Value.name) completed by \(completion)"
        checker.run(name) {
            let sendBuffer = UnsafeMutableBufferPointer<Value>.allocate(capacity: send.count)
            let receive = UnsafeMutableBufferPointer<Value>.allocate(capacity: expected.count)
            defer { sendBuffer.deallocate(); receive.deallocate() }
            _ = sendBuffer.initialize(from: send)
            receive.initialize(repeating: Value.make(-1, quarters: 0))
            // The counts array goes out of scope before completion: the request keeps its own copy.
            let request = try { try world.iallgatherv(UnsafeBufferPointer(sendBuffer), into: receive, counts: gatherCounts(world.size)) }()
            try complete(request, by: completion, name, checker)
            checker.expect(name, Array(receive), expected)
        }
    }
}

/// How a non-blocking request is finished.
enum Completion: CustomStringConvertible {
    case test, wait
    var description: String { self == .test ? "test()" : "wait()" }
}

/// Polls with `test()` until it reports completion, or waits; then the
/// request must be inactive and `test()` must report it complete.
func complete(_ request: Request, by completion: Completion, _ name: String, _ checker: Checker) throws {
    switch completion {
    case .test:
        var polls = 0
        while try !request.test() {
            polls += 1
            guard polls < 100_000_000 else {
                checker.expect("\(name): test() completes", false, "still incomplete after \(polls) polls")
                return
            }
        }
    case .wait:
        try request.wait()
    }
    checker.expect("\(name): inactive once complete", request.isActive, false)
    checker.expect("\(name): test() after completion", try request.test(), true)
}

/// iallreduce (sum and max) completed by `test()` and by `wait()`, and one
/// dropped unfinished, whose `deinit` waits for it.
func checkNonBlockingReductions(_ world: Communicator, _ checker: Checker) {
    let pattern = ReductionPattern<Double>(size: world.size)
    for (operation, label) in [(ReductionOperation.sum, "sum"), (.max, "max")] {
        for completion in [Completion.test, .wait] {
            let name = "iallreduce \(label) Double completed by \(completion)"
            checker.run(name) {
                let buffer = UnsafeMutableBufferPointer<Double>.allocate(capacity: ReductionPattern<Double>.count)
                defer { buffer.deallocate() }
                _ = buffer.initialize(from: pattern.values(of: world.rank))
                let request = try world.iallreduce(buffer, operation)
                try complete(request, by: completion, name, checker)
                checker.expect(name, Array(buffer), pattern.expected(operation))
            }
        }
    }
    let name = "iallreduce min Int64 dropped unfinished"
    checker.run(name) {
        let integers = ReductionPattern<Int64>(size: world.size)
        let buffer = UnsafeMutableBufferPointer<Int64>.allocate(capacity: ReductionPattern<Int64>.count)
        defer { buffer.deallocate() }
        _ = buffer.initialize(from: integers.values(of: world.rank))
        do { _ = try world.iallreduce(buffer, .min) }  // deinit waits
        checker.expect(name, Array(buffer), integers.expected(.min))
    }
}

/// broadcast from the last rank and from rank 1: every rank ends with the
/// root's values.
func checkBroadcasts(_ world: Communicator, _ checker: Checker) {
    for root in Set([world.size - 1, 1]).sorted() {
        checkBroadcast(Float.self, root: root, world, checker)
        checkBroadcast(Int64.self, root: root, world, checker)
        checkBroadcast(UInt8.self, root: root, world, checker)
    }
}

private func checkBroadcast<Value: CheckedValue>(_: Value.Type, root: Int, _ world: Communicator, _ checker: Checker) {
    let name = "broadcast \(Value.name) from rank \(root)"
    let rootValues = (0..<5).map { Value.make(7 * root + $0, quarters: 1) }
    var buffer = world.rank == root ? rootValues : (0..<5).map { _ in Value.make(world.rank, quarters: 2) }
    checker.run(name) {
        try buffer.withUnsafeMutableBufferPointer { try world.broadcast($0, root: root) }
        checker.expect(name, buffer, rootValues)
    }
}
