import MPI
import MPITestSupport
import Testing

/// Collectives on the singleton world (size 1), where every reduction,
/// gather and broadcast must hand back exactly the values it was given.
/// Serialized: collectives on one communicator must not overlap.
@Suite(.serialized)
struct CommunicatorTests {
    @Test func worldIsASingleton() throws {
        let world = try SingletonMPI.world()
        #expect(world.rank == 0)
        #expect(world.size == 1)
        #expect(MPI.isInitialized)
        #expect(!MPI.isFinalized)
        #expect(try MPI.threadLevel == .multiple)
        #expect(MPI.libraryVersion.hasPrefix("Open MPI v"))
        #expect(!MPI.libraryVersion.contains("\n"))
    }

    @Test(arguments: [ReductionOperation.sum, .max, .min])
    func allreduceOfArraysKeepsTheInputAtSizeOne(_ op: ReductionOperation) throws {
        let world = try SingletonMPI.world()
        try expectAllreduceKeeps([Float(1.5), -2, 3e7, .leastNonzeroMagnitude], op, on: world)
        try expectAllreduceKeeps([Double(1.5), -2, 3e300, .pi], op, on: world)
        try expectAllreduceKeeps([Int32(7), -8, .max, .min], op, on: world)
        try expectAllreduceKeeps([Int64(7), -8, .max, .min], op, on: world)
        try expectAllreduceKeeps([UInt8(0), 1, 255], op, on: world)
        try expectAllreduceKeeps([Int(-3), 1 << 40], op, on: world)
    }

    @Test func allreduceOfOneValueAndOfNothing() throws {
        let world = try SingletonMPI.world()
        #expect(try world.allreduce(Double(2.25), .sum) == 2.25)
        #expect(try world.allreduce(Int32(5), .logicalAnd) != 0)
        #expect(try world.allreduce(Int32(0), .logicalAnd) == 0)
        #expect(try world.allreduce([Float](), .sum) == [])
        #expect(try world.isTrueOnEveryRank(true))
        #expect(try !world.isTrueOnEveryRank(false))
    }

    @Test func iallreduceLeavesTheValuesOnceTestReportsCompletion() throws {
        let world = try SingletonMPI.world()
        let values: [Float] = [1, -2, 3.5]
        let buffer = UnsafeMutableBufferPointer<Float>.allocate(capacity: values.count)
        defer { buffer.deallocate() }
        _ = buffer.initialize(from: values)

        let request = try world.iallreduce(buffer, .sum)
        var polls = 0
        while try !request.test() {
            polls += 1
            try #require(polls < 1_000_000, "MPI_Test never reported completion")
        }
        #expect(!request.isActive)
        try request.wait()  // completed: returns at once
        #expect(Array(buffer) == values)
    }

    @Test func iallreduceThenWait() throws {
        let world = try SingletonMPI.world()
        let values: [Double] = [4, 5, 6]
        let buffer = UnsafeMutableBufferPointer<Double>.allocate(capacity: values.count)
        defer { buffer.deallocate() }
        _ = buffer.initialize(from: values)

        let request = try world.iallreduce(buffer, .max)
        try request.wait()
        #expect(!request.isActive)
        #expect(try request.test())
        #expect(Array(buffer) == values)
    }

    @Test func aDroppedRequestIsWaitedFor() throws {
        let world = try SingletonMPI.world()
        let buffer = UnsafeMutableBufferPointer<Int32>.allocate(capacity: 2)
        defer { buffer.deallocate() }
        _ = buffer.initialize(from: [9, -9])
        do {
            _ = try world.iallreduce(buffer, .min)  // deinit waits
        }
        #expect(Array(buffer) == [9, -9])
    }

    @Test(arguments: [0, 1, 5])
    func allgathervWithOneRankCopies(_ count: Int) throws {
        let world = try SingletonMPI.world()
        let send = (0..<count).map { Double($0) * 1.5 - 2 }
        var receive = [Double](repeating: .nan, count: count)
        try send.withUnsafeBufferPointer { send in
            try receive.withUnsafeMutableBufferPointer { receive in
                try world.allgatherv(send, into: receive, counts: [count])
            }
        }
        #expect(receive == send)
    }

    /// The non-blocking gather copies once it completes, and keeps its own
    /// copy of the counts: the caller's array is gone before the wait.
    @Test(arguments: [0, 1, 5])
    func iallgathervWithOneRankCopies(_ count: Int) throws {
        let world = try SingletonMPI.world()
        let send = UnsafeMutableBufferPointer<Double>.allocate(capacity: count)
        let receive = UnsafeMutableBufferPointer<Double>.allocate(capacity: count)
        defer { send.deallocate(); receive.deallocate() }
        for index in 0..<count { send[index] = Double(index) * 1.5 - 2 }
        receive.initialize(repeating: .nan)
        let request = try world.iallgatherv(UnsafeBufferPointer(send), into: receive, counts: [count])
        while try !request.test() {}
        #expect(Array(receive) == Array(send))
    }

    @Test func iallgathervRefusesCountsThatDoNotFit() throws {
        let world = try SingletonMPI.world()
        let send = UnsafeMutableBufferPointer<Float>.allocate(capacity: 2)
        let receive = UnsafeMutableBufferPointer<Float>.allocate(capacity: 3)
        defer { send.deallocate(); receive.deallocate() }
        let refused = #expect(throws: MPIError.self) {
            _ = try world.iallgatherv(UnsafeBufferPointer(send), into: receive, counts: [2])
        }
        #expect(refused?.call == "MPI_Iallgatherv")
        #expect(refused?.message.contains("receive holds 3") == true)
    }

    @Test func allgathervRefusesCountsThatDoNotFit() throws {
        let world = try SingletonMPI.world()
        let send: [Float] = [1, 2]
        var receive = [Float](repeating: 0, count: 3)
        send.withUnsafeBufferPointer { send in
            receive.withUnsafeMutableBufferPointer { receive in
                let wrongRankCount = #expect(throws: MPIError.self) {
                    try world.allgatherv(send, into: receive, counts: [2, 1])
                }
                #expect(wrongRankCount?.call == "MPI_Allgatherv")
                let wrongSendCount = #expect(throws: MPIError.self) {
                    try world.allgatherv(send, into: receive, counts: [3])
                }
                #expect(wrongSendCount?.message.contains("counts[0] is 3") == true)
                let wrongReceiveCount = #expect(throws: MPIError.self) {
                    try world.allgatherv(send, into: receive, counts: [2])
                }
                #expect(wrongReceiveCount?.message.contains("receive holds 3") == true)
            }
        }
    }

    @Test func broadcastFromRootZeroKeepsTheValues() throws {
        let world = try SingletonMPI.world()
        let values: [UInt8] = [0, 7, 255]
        var buffer = values
        try buffer.withUnsafeMutableBufferPointer { try world.broadcast($0, root: 0) }
        #expect(buffer == values)
    }

    /// Proves `MPI_ERRORS_RETURN` is set on the world: with MPI's default
    /// handler this call would abort the test process instead of throwing.
    @Test(arguments: [5, -1, Int.max])
    func anInvalidRootIsAThrownMPIError(_ root: Int) throws {
        let world = try SingletonMPI.world()
        var buffer: [Float] = [1, 2]
        let error = #expect(throws: MPIError.self) {
            try buffer.withUnsafeMutableBufferPointer { try world.broadcast($0, root: root) }
        }
        #expect(error?.call == "MPI_Bcast")
        #expect(error?.message.contains("MPI_ERR_ROOT") == true)
        #expect(error?.description.hasPrefix("MPI_Bcast failed: MPI_ERR_ROOT") == true)
        #expect(error?.description.hasSuffix("(code \(error?.code ?? -1))") == true)
        try world.barrier()  // the communicator still works
    }

    /// MPI counts are `Int32`; a larger count is refused before MPI sees it.
    /// The buffers claim more elements than they hold: nothing may touch them.
    @Test func countsBeyondInt32AreRefused() throws {
        let world = try SingletonMPI.world()
        let tooMany = Int(Int32.max) + 1
        let storage = UnsafeMutablePointer<Float>.allocate(capacity: 1)
        defer { storage.deallocate() }
        let huge = UnsafeMutableBufferPointer(start: storage, count: tooMany)

        let calls: [(name: String, run: () throws -> Void)] = [
            ("MPI_Allreduce", { try world.allreduce(huge, .sum) }),
            ("MPI_Iallreduce", { _ = try world.iallreduce(huge, .sum) }),
            ("MPI_Bcast", { try world.broadcast(huge, root: 0) }),
            ("MPI_Allgatherv", {
                try world.allgatherv(UnsafeBufferPointer(huge), into: huge, counts: [tooMany])
            }),
        ]
        for call in calls {
            let error = #expect(throws: MPIError.self, "\(call.name)") { try call.run() }
            #expect(error?.call == call.name)
            #expect(error?.message.contains("MPI_ERR_COUNT") == true)
            #expect(error?.message.contains("\(tooMany)") == true)
        }
    }

    /// Each value must come back unchanged from an allreduce over one rank.
    private func expectAllreduceKeeps<T: MPIDatatypeConvertible & Equatable>(
        _ values: [T], _ op: ReductionOperation, on world: Communicator,
        sourceLocation: SourceLocation = #_sourceLocation
    ) throws {
        #expect(try world.allreduce(values, op) == values, sourceLocation: sourceLocation)
        var inPlace = values
        try inPlace.withUnsafeMutableBufferPointer { try world.allreduce($0, op) }
        #expect(inPlace == values, sourceLocation: sourceLocation)
        #expect(try world.allreduce(values[0], op) == values[0], sourceLocation: sourceLocation)
    }
}
