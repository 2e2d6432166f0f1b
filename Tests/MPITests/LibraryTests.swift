import MPI
import MPITestSupport
import Testing

@Suite(.serialized)
struct LibraryTests {
    @Test func aSecondInitializeIsAClearError() throws {
        _ = try SingletonMPI.world()
        let error = #expect(throws: MPIError.self) { try MPI.initialize() }
        #expect(error?.call == "MPI_Init_thread")
        #expect(error?.message.contains("already initialised") == true)
    }

    @Test func wallTimeMovesForward() throws {
        _ = try SingletonMPI.world()
        let start = MPI.wallTime()
        var later = start
        while later == start { later = MPI.wallTime() }
        #expect(later > start)
    }

    @Test func threadLevelsAreOrderedAsMPIOrdersThem() {
        #expect(ThreadLevel.single < .funneled)
        #expect(ThreadLevel.funneled < .serialized)
        #expect(ThreadLevel.serialized < .multiple)
        #expect(ThreadLevel.allCases.sorted() == ThreadLevel.allCases)
    }

    @Test func errorDescriptionNamesTheCallTheTextAndTheCode() {
        let error = MPIError(call: "MPI_Allreduce", code: 2, message: "MPI_ERR_COUNT: invalid count argument")
        #expect(error.description == "MPI_Allreduce failed: MPI_ERR_COUNT: invalid count argument (code 2)")
    }
}
