import MPI
import ReproducibleSum

/// The reproducible allreduce at P ranks: its words equal those of one
/// process holding every addend (so its results are the same at every rank
/// count), its roundings are the exact sum's, and NaN, infinities and ranks
/// without addends behave as documented.
func checkReproducibleSums(_ world: Communicator, _ checker: Checker) {
    let rank = world.rank, size = world.size
    // 48 global addends per sum spanning 200 binades, some cancelling; rank
    // r holds those with index ≡ r (mod P), so the last rank may hold none.
    // In the order of the indices the magnitudes climb by 40 binades from
    // rank to rank, so ranks' sums have different top bins and their merges
    // must align them.
    let addends = (0..<48).map { index -> Double in
        let binade = ((index * 37) % 20 - 10) + 40 * (index % size) - 60
        let magnitude = Double(sign: .plus, exponent: binade, significand: 1 + Double(index) / 64)
        return index % 3 == 2 ? -magnitude : magnitude
    }
    let sums = ReproducibleSums(count: 3), whole = ReproducibleSums(count: 3)
    for (index, addend) in addends.enumerated() {
        for sum in 0..<3 {
            let value = sum == 1 ? addend * Double(index + 1) : addend
            whole.add(value, to: sum)
            if index % size == rank && !(rank == size - 1 && size > 2) { sums.add(value, to: sum) }
        }
    }
    // The last rank (P > 2) contributes nothing: its addends go to rank 0.
    if rank == 0 && size > 2 {
        for (index, addend) in addends.enumerated() where index % size == size - 1 {
            for sum in 0..<3 { sums.add(sum == 1 ? addend * Double(index + 1) : addend, to: sum) }
        }
    }
    checker.run("reproducible allreduce: the words of one process holding every addend") {
        try world.allreduce(sums)
        checker.expect("reproducible allreduce words", Array(sums.words), Array(whole.words))
        checker.expect("reproducible allreduce addend count", sums.addendCount(at: 2), addends.count)
    }
    checkCorrectRounding(world, checker)
    checkNonBlocking(world, checker)
    checkPieces(world, checker)
    checkNonFinite(world, checker)
}

/// More sums than one `MPI_Iallreduce` piece carries (two whole pieces and
/// a partial one, tops far apart from sum to sum and rank to rank): the
/// words of the blocking allreduce, sum by sum, by `test()` and `wait()`.
private func checkPieces(_ world: Communicator, _ checker: Checker) {
    let count = 2 * Communicator.iallreducePieceSums + 37
    for completion in ["test", "wait"] {
        checker.run("reproducible iallreduce in pieces, completed by \(completion)") {
            let pieces = ReproducibleSums(count: count), blocking = ReproducibleSums(count: count)
            for sum in 0..<count {
                let value = Double(sign: sum % 2 == 0 ? .plus : .minus, exponent: (sum * 13 + world.rank * 70) % 600 - 300,
                                   significand: 1 + Double(sum % 97) / 97)
                pieces.add(value, to: sum)
                blocking.add(value, to: sum)
            }
            let request = try world.iallreduce(pieces)
            if completion == "test" {
                while try !request.test() {}
            } else {
                try request.wait()
            }
            try world.allreduce(blocking)
            checker.expect("iallreduce in pieces (\(completion)): the blocking words", Array(pieces.words), Array(blocking.words))
        }
    }
}

/// 1 on rank 0 and 2⁻⁵³ (half an ulp of 1) on each other rank: the exact
/// sum 1 + (P − 1)·2⁻⁵³ rounds to nearest, ties to even, which no order of
/// plain additions gives for every P.
private func checkCorrectRounding(_ world: Communicator, _ checker: Checker) {
    let halves = world.size - 1
    let expectedUlps = halves / 2 + (halves % 2 == 1 && (halves / 2) % 2 == 1 ? 1 : 0)
    let expected = 1 + Double(expectedUlps) * Double.ulpOfOne
    checker.run("reproducibleSum of [1, 2^-53, ...]") {
        let result = try world.reproducibleSum([world.rank == 0 ? 1 : 0x1p-53])
        checker.expect("reproducibleSum rounds 1 + \(halves)·2^-53 to nearest even", result, [expected])
    }
}

/// iallreduce completed by polling `test()` and by `wait()`.
private func checkNonBlocking(_ world: Communicator, _ checker: Checker) {
    let expected = Double(world.size * (world.size + 1) / 2)
    for completion in ["test", "wait"] {
        checker.run("reproducible iallreduce completed by \(completion)") {
            let sums = ReproducibleSums(count: 2)
            sums.add(Double(world.rank + 1), to: 0)
            sums.add(-Double(world.rank + 1) * 0x1p-80, to: 1)
            let request = try world.iallreduce(sums)
            if completion == "test" {
                var polls = 0
                while try !request.test() { polls += 1 }
                checker.expect("test reports completion", polls >= 0, "")
            } else {
                try request.wait()
            }
            checker.expect("iallreduce (\(completion)) sums", sums.sums(), [expected, -expected * 0x1p-80])
        }
    }
}

/// NaN on one rank, or +∞ and −∞ on two, make the sum NaN; one +∞ gives +∞.
private func checkNonFinite(_ world: Communicator, _ checker: Checker) {
    checker.run("reproducible allreduce with NaN and infinities") {
        let last = world.size - 1
        let values: [Double] = [
            world.rank == last ? .nan : 1,
            world.rank == 0 ? .infinity : world.rank == last ? -.infinity : 2,
            world.rank == last ? .infinity : -1,
        ]
        let result = try world.reproducibleSum(values)
        checker.expect("NaN on the last rank gives NaN", result[0].isNaN, "\(result[0])")
        checker.expect("+inf and -inf give NaN", result[1].isNaN, "\(result[1])")
        checker.expect("+inf on one rank gives +inf", result[2], .infinity)
    }
}
