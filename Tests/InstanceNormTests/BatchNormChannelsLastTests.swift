import InstanceNorm
import TestSupport
import Testing

/// BatchNorm channels last runs in the tensor's own order: each channel is
/// a lane of a row's vectors (`ChannelRows`), summed over the rows in bands
/// of 32, in blocks of up to four vectors per row; y and dx are written
/// row after row with per-channel constants. The sums are other bits than
/// channels first, so they are checked here on their own.
@Suite struct BatchNormChannelsLast {
    /// (N, C, S…): rows of 1, 2, 4 and 5 float vectors (C = 16, 32, 64, 80:
    /// one block, or a block of four and one of one), C not a multiple of
    /// the vector width (3, 20, 5: the last vector reads into the next row,
    /// and the tensor's last band is copied and padded), M past a band and
    /// not a multiple of it, one sample, one position.
    static let cases: [[Int]] = [
        [3, 16, 5], [2, 32, 7, 11], [2, 64, 40], [2, 80, 33], [3, 3, 70], [2, 20, 9], [1, 64, 100], [4, 5, 1],
    ]

    @Test(arguments: 0..<cases.count)
    func againstTheReference(_ index: Int) {
        let dimensions = Self.cases[index], seed = UInt64(index)
        for affine in [true, false] {
            checkFamily(FamilyInputs<Float16>(.batch, dimensions, affine: affine, seed: 120 + seed, layout: .channelsLast))
            checkFamily(FamilyInputs<Float>(.batch, dimensions, affine: affine, seed: 140 + seed, layout: .channelsLast))
            checkFamily(FamilyInputs<Double>(.batch, dimensions, affine: affine, seed: 160 + seed, layout: .channelsLast))
        }
    }

    /// Every thread count gives the same bits: the workers share (sample,
    /// block) units, narrower blocks when there are fewer samples than
    /// workers, and runs of lines of y and dx.
    @Test(arguments: 0..<cases.count)
    func sameBitsForEveryThreadCount(_ index: Int) {
        let inputs = FamilyInputs<Float>(.batch, Self.cases[index], seed: 180 + UInt64(index), layout: .channelsLast)
        let single = inputs.run(threads: 1)
        for threads in [2, 3, 5, 8] {
            #expect(inputs.run(threads: threads) == single, "threads \(threads)")
            #expect(inputs.run(threads: threads, stores: .streaming) == single, "streaming, threads \(threads)")
        }
    }

    /// One position per instance (x of (N, C), BatchNorm1d's input) is the
    /// same memory in both layouts, and channels first runs the
    /// channels-last kernels there (the per-instance kernels took a call per
    /// value): the same bits in both layouts, at every thread count, and the
    /// reference's results. (With the per-instance kernels the two layouts
    /// gave other bits.)
    @Test(arguments: [[37, 20, 1], [5, 64, 1], [9, 3, 1]])
    func onePositionRunsTheChannelsLastKernels(_ dimensions: [Int]) {
        let first = FamilyInputs<Float>(.batch, dimensions, seed: 9)
        let last = FamilyInputs<Float>(.batch, dimensions, seed: 9, layout: .channelsLast)
        for threads in [1, 3] {
            #expect(first.run(threads: threads) == last.run(threads: 1), "threads \(threads)")
        }
        checkFamily(first)
        checkFamily(FamilyInputs<Float16>(.batch, dimensions, seed: 10))
        checkFamily(FamilyInputs<Double>(.batch, dimensions, seed: 11))
    }

    /// Mean 1e4, spread 1e-3: the sums about the shift keep the digits.
    @Test func largeMeanTinySpread() {
        checkFamily(FamilyInputs<Float>(.batch, [3, 32, 40], seed: 5, mean: 1e4, deviation: 1e-3, layout: .channelsLast),
                    eps: 1e-12, extraTolerance: 16 * Double.ulpOfOne * 1e7)
        checkFamily(FamilyInputs<Float16>(.batch, [3, 20, 40], seed: 6, mean: 1e3, deviation: 1, layout: .channelsLast),
                    eps: 1e-12, extraTolerance: 16 * Double.ulpOfOne * 1e3)
    }

    /// What makes every rank count agree: a sample's sums are a function of
    /// that sample alone. The batch's sums equal those of each sample run
    /// as a batch of one (where every sample's last band is the tensor's,
    /// copied and padded, and in the batch only the last one is).
    @Test(arguments: [[3, 20, 45], [3, 64, 33], [4, 3, 7]])
    func sampleSumsDependOnTheSampleAlone(_ dimensions: [Int]) {
        let shape = try! InstanceNormShape(dimensions: dimensions)
        let inputs = FamilyInputs<Float>(.batch, dimensions, seed: 7)
        let x = channelsLast(inputs.x, channels: shape.channels, positions: shape.spatialCount)
        let dy = channelsLast(inputs.dy, channels: shape.channels, positions: shape.spatialCount)
        let shifts = (0..<shape.channels).map { x[$0] }
        let statistics = (0..<shape.channels).map { InstanceStatistics(mean: Double(x[$0]) + 0.25, variance: 2, eps: 1e-5) }
        let whole = partialSums(x: x, dy: dy, shifts: shifts, statistics: statistics, shape: shape)
        let sampleLength = shape.channels * shape.spatialCount
        let one = try! InstanceNormShape(dimensions: [1] + dimensions.dropFirst())
        for sample in 0..<shape.batch {
            let slice = sample * sampleLength..<(sample + 1) * sampleLength
            let alone = partialSums(x: Array(x[slice]), dy: Array(dy[slice]), shifts: shifts, statistics: statistics, shape: one)
            let instances = 2 * sample * shape.channels..<2 * (sample + 1) * shape.channels
            #expect(bitPatterns(alone.moments) == bitPatterns(Array(whole.moments[instances])), "sample \(sample)")
            #expect(bitPatterns(alone.gradients) == bitPatterns(Array(whole.gradients[instances])), "sample \(sample)")
        }
    }

    /// y and dx are elementwise: given the same statistics and sums, channels
    /// last writes the channels-first bits, streamed or not, into an
    /// aligned output or one a value off (where streaming stores cannot go).
    @Test(arguments: [StorePolicy.cached, .streaming], [0, 1])
    func elementwisePassesGiveChannelsFirstBits(stores: StorePolicy, offset: Int) {
        checkElementwise(Float.self, [3, 20, 33], stores: stores, offset: offset)
        checkElementwise(Float16.self, [2, 64, 9], stores: stores, offset: offset)
        checkElementwise(Double.self, [2, 5, 17], stores: stores, offset: offset)
    }

    func checkElementwise<T: InstanceNormScalar>(_: T.Type, _ dimensions: [Int], stores: StorePolicy, offset: Int) {
        let shape = try! InstanceNormShape(dimensions: dimensions)
        let (channels, positions) = (shape.channels, shape.spatialCount)
        let inputs = FamilyInputs<T>(.batch, dimensions, seed: 11)
        let statistics = (0..<channels).map { InstanceStatistics(mean: 0.1 * Double($0), variance: 1.5, eps: 1e-5) }
        let sums = (0..<2 * channels).map { 0.3 * Double($0) - 1 }
        func outputs(_ x: [T], _ dy: [T], _ layout: TensorLayout) -> (y: [T], dx: [T]) {
            let output = TensorBuffer<T>(repeating: .nan, count: x.count + offset)
            let (xBuffer, dyBuffer) = (TensorBuffer(x), TensorBuffer(dy))
            let shifted = UnsafeMutableBufferPointer(rebasing: output.elements[offset...])
            let gamma = inputs.gamma.map { TensorBuffer($0) }, beta = inputs.beta.map { TensorBuffer($0) }
            statistics.withUnsafeBufferPointer { saved in
                BatchNormKernel.normalize(y: shifted, x: xBuffer.readOnly, statistics: saved, gamma: gamma?.readOnly,
                                          beta: beta?.readOnly, shape: shape, threads: 2, stores: stores, layout: layout)
            }
            let y = Array(shifted)
            statistics.withUnsafeBufferPointer { saved in
                sums.withUnsafeBufferPointer { sums in
                    BatchNormKernel.inputGradient(
                        dx: shifted, dy: dyBuffer.readOnly, x: xBuffer.readOnly, statistics: saved, gamma: gamma?.readOnly,
                        channelSums: sums, count: shape.batch * positions, shape: shape, threads: 2, stores: stores, layout: layout)
                }
            }
            return (y, Array(shifted))
        }
        let first = outputs(inputs.x, inputs.dy, .channelsFirst)
        let last = outputs(channelsLast(inputs.x, channels: channels, positions: positions),
                           channelsLast(inputs.dy, channels: channels, positions: positions), .channelsLast)
        #expect(bitPatterns(channelsLast(first.y, channels: channels, positions: positions)) == bitPatterns(last.y), "\(T.self) y")
        #expect(bitPatterns(channelsLast(first.dx, channels: channels, positions: positions)) == bitPatterns(last.dx), "\(T.self) dx")
        #expect(!last.dx.contains { $0.isNaN }, "\(T.self): every value written")
    }

    /// The channels-last moments about `shifts` and gradient sums about
    /// `statistics` of a batch, (N, C, 2) each.
    func partialSums(x: [Float], dy: [Float], shifts: [Float], statistics: [InstanceStatistics], shape: InstanceNormShape)
        -> (moments: [Double], gradients: [Double]) {
        let moments = TensorBuffer<Double>(repeating: .nan, count: 2 * shape.instanceCount)
        let gradients = TensorBuffer<Double>(repeating: .nan, count: 2 * shape.instanceCount)
        let (xBuffer, dyBuffer) = (TensorBuffer(x), TensorBuffer(dy))
        shifts.withUnsafeBufferPointer { shifts in
            BatchNormKernel.partialMoments(into: moments.elements, x: xBuffer.readOnly, shifts: shifts, shape: shape,
                                           threads: 2, layout: .channelsLast)
        }
        statistics.withUnsafeBufferPointer { saved in
            BatchNormKernel.partialGradientSums(into: gradients.elements, dy: dyBuffer.readOnly, x: xBuffer.readOnly,
                                                statistics: saved, shape: shape, threads: 2, layout: .channelsLast)
        }
        return (moments.array, gradients.array)
    }
}
