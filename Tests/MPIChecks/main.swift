#if canImport(Glibc)
import Glibc
#endif
import MPI

// mpi-checks: the MPI face (Sources/MPI) and `Communicator.agree` at the
// rank count mpirun gives, P >= 2 (at P = 1 every reduction and gather is
// the identity, so a swapped operator or a wrong displacement would pass).
// Every rank runs every check, each expected value a closed form of the
// rank numbers; a failed check prints one line "FAIL rank R of P: ...".
// Each rank exits 1 if any of its checks failed (mpirun then exits
// non-zero), else 0; rank 0 ends with a summary line.
//
//     mpirun -np 3 .build/debug/mpi-checks

do {
    try MPI.initialize(threadLevel: .serialized)
} catch {
    emit("FAIL: MPI cannot start: \(error)")
    exit(2)
}
let world = Communicator.world
let checker = Checker(rank: world.rank, size: world.size)
if world.size < 2 {
    emit("FAIL rank 0 of 1: mpi-checks needs at least 2 ranks (mpirun -np 2 or more)")
    try? MPI.finalize()
    exit(2)
}
checkReductions(world, checker)
checkLogicalAnd(world, checker)
checkGathers(world, checker)
checkNonBlockingReductions(world, checker)
checkBroadcasts(world, checker)
checkAgreement(world, checker)
checkReproducibleSums(world, checker)
// For the summary only: the verdict is each rank's own exit code.
let failures = (try? world.allreduce(checker.failures, .sum)) ?? -1
if world.rank == 0 {
    emit("mpi-checks: \(checker.checks) checks per rank on \(world.size) ranks, \(failures) failure(s) in all")
}
do {
    try MPI.finalize()
} catch {
    emit("FAIL rank \(world.rank) of \(world.size): MPI_Finalize: \(error)")
    exit(2)
}
exit(checker.failures == 0 ? 0 : 1)
