import DataParallel
import InstanceNorm
import MPITestSupport
import TestSupport
import Testing

/// With `.reproducible`, the backward may take a rank's samples in runs,
/// one kernel call each, and deposit each run's shares of dγ, dβ before
/// the next (`DataParallelNorm.depositRunSamples`). Whatever the runs,
/// dx, dγ and dβ must be the bits of one call: for every norm whose
/// statistics stay on the rank, both layouts, the blocked small-instance
/// kernels and the per-instance ones, one and two threads.
@Suite struct DepositRuns {
    static let cases: [(Normalization, [Int], TensorLayout, threads: Int)] = [
        (.instance, [9, 5, 2, 2], .channelsFirst, 1),  // blocks of small instances
        (.instance, [9, 5, 2, 2], .channelsLast, 2),
        (.instance, [5, 3, 11, 13], .channelsFirst, 2),  // one instance at a time
        (.group(groups: 2), [6, 4, 3, 5], .channelsFirst, 1),
        (.group(groups: 2), [6, 4, 3, 5], .channelsLast, 2),
        (.layer(normalizedDimensions: 1), [5, 3, 40], .channelsFirst, 2),
    ]

    @Test(arguments: cases.indices)
    func runsGiveTheBitsOfOneCall(index: Int) throws {
        let inputs = try Inputs(Self.cases[index], seed: UInt64(60 + index))
        let whole = try backward(inputs, runs: nil)
        for runs in [1, 2, 3] {
            expectSameBits(try backward(inputs, runs: runs), whole, "runs of \(runs), \(inputs.shape) \(inputs.layout)")
        }
        // Not a vacuous comparison: the parameter gradients are there.
        #expect(whole.dgamma.contains { $0 != 0 } && whole.dbeta.contains { $0 != 0 })
    }

    /// `.allreduce` at one rank adds the samples' shares in sample order
    /// whatever the thread count; with several threads the kernels write
    /// them to the layer's table (kept across calls) and add them up after:
    /// the bits of one thread, for every norm and layout.
    @Test(arguments: cases.indices)
    func plainSumsAtTwoThreadsGiveTheBitsOfOne(index: Int) throws {
        let inputs = try Inputs(Self.cases[index], seed: UInt64(80 + index))
        let one = try backward(inputs, threads: 1, runs: nil, reduction: .allreduce)
        for steps in [1, 2] {  // a second step reuses the table the first wrote
            let two = try backward(inputs, threads: 2, runs: nil, reduction: .allreduce, steps: steps)
            expectSameBits(two, one, "\(steps) steps at two threads, \(inputs.shape) \(inputs.layout)")
        }
        #expect(one.dgamma.contains { $0 != 0 } && one.dbeta.contains { $0 != 0 })
    }

    /// A case's shape and layout, and random x, dy, γ for it.
    private struct Inputs {
        let shape: NormShape
        let layout: TensorLayout
        let threads: Int
        let x, dy, gamma: [Float]

        init(_ testCase: (Normalization, [Int], TensorLayout, threads: Int), seed: UInt64) throws {
            shape = try NormShape(testCase.0, dimensions: testCase.1)
            (layout, threads) = (testCase.2, testCase.threads)
            var generator = SeededGenerator(seed: seed)
            x = generator.normals(shape.elementCount, mean: 3, deviation: 2).map { Float($0) }
            dy = generator.normals(shape.elementCount).map { Float($0) }
            gamma = generator.normals(shape.parameterCount, mean: 1, deviation: 0.5).map { Float($0) }
        }
    }

    private typealias Gradients = (dx: [Float], dgamma: [Float], dbeta: [Float])

    private func expectSameBits(_ result: Gradients, _ expected: Gradients, _ label: String) {
        #expect(result.dx.map(\.bitPattern) == expected.dx.map(\.bitPattern), "dx, \(label)")
        #expect(result.dgamma.map(\.bitPattern) == expected.dgamma.map(\.bitPattern), "dgamma, \(label)")
        #expect(result.dbeta.map(\.bitPattern) == expected.dbeta.map(\.bitPattern), "dbeta, \(label)")
    }

    /// The layer's forward, then its backward with `runs` samples per
    /// kernel call (nil: the layer decides, here one call), `steps` times.
    private func backward(
        _ inputs: Inputs, threads: Int? = nil, runs: Int?, reduction: ParameterGradientReduction = .reproducible, steps: Int = 1
    ) throws -> Gradients {
        let (shape, layout, x, dy, gamma) = (inputs.shape, inputs.layout, inputs.x, inputs.dy, inputs.gamma)
        let threads = threads ?? inputs.threads
        var result: Gradients = ([], [], [])
        try SingletonMPI.withWorld { world in
            let layer = DataParallelNorm<Float>(
                communicator: world, globalShape: shape, eps: 1e-5, threads: threads, reduction: reduction, layout: layout)
            layer.depositRunSamples = runs
            let step = try forwardThenBackward(layer, x: x, dy: dy, gamma: gamma, steps: steps)
            result = (step.dx, step.dgamma, step.dbeta)
        }
        return result
    }
}
