import _InstanceNormShims

/// BatchNorm's pieces over a batch (N, C, S…) held by one process: the
/// statistics are per channel, over all N·M values of the channel, so they
/// are finished elsewhere (in one process by `forward`, across ranks by the
/// data-parallel layer) from per-instance partial sums, and applied by the
/// instance kernels with every instance (n, c) given its channel's
/// statistics and sums:
///
///     μ_c = K_c + S_c/L      σ²_c = Q_c/L − (S_c/L)²       L = N·M (the global count)
///       S_c = Σ_n Σ_m (x − K_c),  Q_c = Σ_n Σ_m (x − K_c)², K_c a shift shared by all
///     y = γ_c·(x − μ_c)·r_c + β_c
///     dβ_c = Σ_n s1(n,c)    dγ_c = Σ_n s2(n,c)    (s1, s2 of each instance, x̂ from the channel's statistics)
///     dx = γ_c·r_c·(dy − dβ_c/L − x̂·dγ_c/L)
///
/// Per instance everything is the instance kernels' arithmetic, in a fixed
/// order, so the partial sums of a sample do not depend on who computes
/// them; both layouts give the same bits (channels last in the channels-first
/// lane order, see `ChannelsLast`). The shift K_c keeps the one-pass sums
/// small (no E[x²] − E[x]²); when it lies far from the mean
/// ((S/L)² > 4σ², `needsSecondPass`), a second pass about μ_c does what the
/// instance kernel's second pass does.
public enum BatchNormKernel {
    /// Per instance (n, c), S = Σ (x − shift_c) and Q = Σ (x − shift_c)²
    /// into `sums` (N, C, 2).
    ///
    /// - Parameters:
    ///   - sums: 2·N·C outputs.
    ///   - x: the batch in `layout`.
    ///   - shifts: C values, each channel's K (or, for a second pass, its μ_hi).
    ///   - shape: (N, C, S…).
    ///   - threads: worker threads, ≥ 1.
    ///   - layout: channels first or last.
    @inlinable
    @_specialize(where T == Float16)
    @_specialize(where T == Float)
    @_specialize(where T == Double)
    public static func partialMoments<T: InstanceNormScalar>(
        into sums: UnsafeMutableBufferPointer<Double>, x: UnsafeBufferPointer<T>, shifts: UnsafeBufferPointer<T.Compute>,
        shape: InstanceNormShape, threads: Int = 1, layout: TensorLayout = .channelsFirst
    ) {
        precondition(sums.count == 2 * shape.instanceCount && x.count == shape.elementCount && shifts.count == shape.channels)
        let input = SharedBuffer(x), centers = SharedBuffer(shifts)
        if kernelLayout(layout, shape) == .channelsLast {
            return ChannelRows<T>(shape: shape).sums(into: sums, threads: threads, constant: { shifts[$0] }) { start, table in
                ShiftedTerms(x: UnsafePointer(input.base + start), shift: table)
            }
        }
        if shape.spatialCount < 2 * T.Vector.scalarCount {
            return laneInstanceSums(into: sums, shape: shape, threads: threads, x: x, dy: nil, centers: shifts)
        }
        instanceSums(into: sums, shape: shape, threads: threads) { instance, range in
            shiftedChunkSums(input.base + instance * shape.spatialCount, range, shift: centers.base[instance % shape.channels])
        }
    }

    /// Per instance (n, c), s1 = Σ dy and s2 = Σ dy·x̂ with x̂ from channel
    /// c's `statistics` (as `InstanceKernel.gradientSums`), into `sums` (N, C, 2).
    ///
    /// - Parameters:
    ///   - sums: 2·N·C outputs.
    ///   - dy: the gradient, in `layout`.
    ///   - x: the forward's input, in `layout`.
    ///   - statistics: C channel statistics.
    ///   - shape: (N, C, S…).
    ///   - threads: worker threads, ≥ 1.
    ///   - layout: channels first or last.
    @inlinable
    @_specialize(where T == Float16)
    @_specialize(where T == Float)
    @_specialize(where T == Double)
    public static func partialGradientSums<T: InstanceNormScalar>(
        into sums: UnsafeMutableBufferPointer<Double>, dy: UnsafeBufferPointer<T>, x: UnsafeBufferPointer<T>,
        statistics: UnsafeBufferPointer<InstanceStatistics>, shape: InstanceNormShape, threads: Int = 1,
        layout: TensorLayout = .channelsFirst
    ) {
        precondition(sums.count == 2 * shape.instanceCount && statistics.count == shape.channels)
        let centers = statistics.map { $0.splitMean(as: T.self).high }
        let gradients = SharedBuffer(dy), input = SharedBuffer(x), saved = SharedBuffer(statistics)
        if kernelLayout(layout, shape) == .channelsLast {
            ChannelRows<T>(shape: shape).sums(into: sums, threads: threads, constant: { centers[$0] }) { start, table in
                GradientTerms(dy: UnsafePointer(gradients.base + start), x: UnsafePointer(input.base + start), center: table)
            }
        } else if shape.spatialCount < 2 * T.Vector.scalarCount {
            centers.withUnsafeBufferPointer { centers in
                laneInstanceSums(into: sums, shape: shape, threads: threads, x: x, dy: dy, centers: centers)
            }
        } else {
            centers.withUnsafeBufferPointer { centers in
                let shared = SharedBuffer(centers)
                instanceSums(into: sums, shape: shape, threads: threads) { instance, range in
                    let start = instance * shape.spatialCount
                    return gradientChunkSums(
                        gradients.base + start, input.base + start, range, center: shared.base[instance % shape.channels])
                }
            }
        }
        // Σ dy·(x − μ_hi) → s2 = r·(Σ dy·(x − μ_hi) − μ_lo·s1), as
        // `InstanceKernel.gradientSums` forms it, with each channel's r and
        // μ_lo taken once (per instance, the split of μ and a division for
        // the channel cost more than the sums at one value an instance).
        let lows = statistics.map { $0.splitMean(as: T.self).low }
        var instance = 0
        for _ in 0..<shape.batch {
            for channel in 0..<shape.channels {
                let sumDy = sums[2 * instance], sumDyCentered = sums[2 * instance + 1]
                sums[2 * instance + 1] = saved.base[channel].invstd * (sumDyCentered - lows[channel] * sumDy)
                instance += 1
            }
        }
    }

    /// y = γ_c·(x − μ_c)·r_c + β_c with each channel's statistics.
    ///
    /// - Parameters:
    ///   - y: output, in `layout`.
    ///   - x: input, in `layout`.
    ///   - statistics: C channel statistics.
    ///   - gamma: C entries, or nil for γ = 1.
    ///   - beta: C entries, or nil for β = 0.
    ///   - shape: (N, C, S…).
    ///   - threads: worker threads, ≥ 1.
    ///   - stores: how y is written.
    ///   - layout: channels first or last.
    @inlinable
    public static func normalize<T: InstanceNormScalar>(
        y: UnsafeMutableBufferPointer<T>, x: UnsafeBufferPointer<T>, statistics: UnsafeBufferPointer<InstanceStatistics>,
        gamma: UnsafeBufferPointer<T>?, beta: UnsafeBufferPointer<T>?, shape: InstanceNormShape, threads: Int = 1,
        stores: StorePolicy = .automatic, layout: TensorLayout = .channelsFirst
    ) {
        BatchKernel.normalize(
            y: y, x: x, channelStatistics: statistics, gamma: gamma, beta: beta, shape: shape, threads: threads,
            stores: stores, layout: kernelLayout(layout, shape))
    }

    /// The layout whose kernels run `shape`: `layout`, but for instances of
    /// one value (x of (N, C), BatchNorm1d's usual input), whose memory is
    /// the same in both layouts. The channels-last kernels take a sample's
    /// C values as one row, where the channels-first ones would run N·C
    /// instances of one value each, a call per instance (65536×256, one
    /// thread: 530 ms forward and 442 ms backward, 1-3% of the floor).
    @inlinable
    static func kernelLayout(_ layout: TensorLayout, _ shape: InstanceNormShape) -> TensorLayout {
        shape.spatialCount == 1 ? .channelsLast : layout
    }

    /// dx = γ_c·r_c·(dy − dβ_c/L − x̂·dγ_c/L), L = `count`, with each
    /// channel's statistics and its sums over the whole batch (`channelSums`, (C, 2): dβ_c, dγ_c).
    ///
    /// - Parameters:
    ///   - dx: output, in `layout`.
    ///   - dy: the gradient, in `layout`.
    ///   - x: the forward's input, in `layout`.
    ///   - statistics: C channel statistics.
    ///   - gamma: C entries, or nil for γ = 1.
    ///   - channelSums: (C, 2): Σ dy and Σ dy·x̂ of every channel over the batch.
    ///   - count: L, the values of a channel in the whole batch (N·M, N global).
    ///   - shape: (N, C, S…) of this batch.
    ///   - threads: worker threads, ≥ 1.
    ///   - stores: how dx is written.
    ///   - layout: channels first or last.
    @inlinable
    @_specialize(where T == Float16)
    @_specialize(where T == Float)
    @_specialize(where T == Double)
    public static func inputGradient<T: InstanceNormScalar>(
        dx: UnsafeMutableBufferPointer<T>, dy: UnsafeBufferPointer<T>, x: UnsafeBufferPointer<T>,
        statistics: UnsafeBufferPointer<InstanceStatistics>, gamma: UnsafeBufferPointer<T>?,
        channelSums: UnsafeBufferPointer<Double>, count: Int, shape: InstanceNormShape, threads: Int = 1,
        stores: StorePolicy = .automatic, layout: TensorLayout = .channelsFirst
    ) {
        precondition(statistics.count == shape.channels && channelSums.count == 2 * shape.channels)
        guard shape.instanceCount > 0 else { return }
        let layout = kernelLayout(layout, shape)
        // Channels last writes whole samples; channels first, instances.
        let run = layout == .channelsLast ? shape.channels * shape.spatialCount : shape.spatialCount
        let streaming = stores.streams(dx, tensors: 3, runsOf: run)
        if let tiling = ChannelTiling.of(shape, layout, T.self) {
            // Channels first as tiled channels writes the whole tensor in order, not runs of an instance.
            return inputGradientTiled(
                dx: dx, dy: dy, x: x, statistics: statistics, gamma: gamma, channelSums: channelSums, count: count,
                shape: shape, threads: threads, streaming: layout == .channelsLast ? streaming : stores.streams(dx, tensors: 3),
                tiling: tiling)
        }
        let (output, gradients, input) = (SharedBuffer(dx), SharedBuffer(dy), SharedBuffer(x))
        let (saved, sums, weights) = (SharedBuffer(statistics), SharedBuffer(channelSums), gamma.map { SharedBuffer($0) })
        let split = WorkSplit(shape: shape, threads: threads)
        split.run { worker in
            split.forEachPiece(of: worker) { instance, range in
                let channel = instance % shape.channels, start = instance * shape.spatialCount
                let operation = InstanceKernel.inputGradientOperation(
                    dy: gradients.base + start, x: input.base + start, statistics: saved.base[channel],
                    gamma: weights.map { $0.base[channel].widened } ?? 1,
                    sumDy: sums.base[2 * channel], sumDyXHat: sums.base[2 * channel + 1], spatialCount: count)
                writeElementwise(output.base + start, range, streaming: streaming, operation)
            }
        }
        if streaming { instnorm_store_fence() }
    }

    /// The channels' statistics from the sums of their instances (C, 2),
    /// `count` values each: μ = K + S/L, σ² = Q/L − (S/L)², or nil for the
    /// channels where the shift K was too far from the mean for that to
    /// keep its digits ((S/L)² > 4σ²: run a second `partialMoments` about
    /// `secondPassCenter` and finish them with `momentsFromCenteredSums`).
    public static func moments<T: InstanceNormScalar>(
        channelSums: UnsafeBufferPointer<Double>, count: Int, shifts: UnsafeBufferPointer<T.Compute>, as _: T.Type
    ) -> [(mean: Double, variance: Double)?] {
        (0..<shifts.count).map { channel in
            InstanceKernel.momentsFromShiftedSums(
                channelSums[2 * channel], channelSums[2 * channel + 1], count: count, shift: shifts[channel])
        }
    }

    // MARK: - Implementation

    /// Two sums per instance into `sums` (N, C, 2), channels first, in the
    /// fixed order of the instance kernels: `chunkSums(instance, range)` over
    /// chunks (whole instances per worker, or chunks shared and combined in
    /// chunk order).
    @inlinable
    static func instanceSums(
        into sums: UnsafeMutableBufferPointer<Double>, shape: InstanceNormShape, threads: Int,
        chunkSums: @escaping @Sendable (Int, Range<Int>) -> (Double, Double)
    ) {
        guard shape.instanceCount > 0 else { return }
        let output = SharedBuffer(sums)
        let split = WorkSplit(shape: shape, threads: threads)
        if split.splitsInstances {
            for (instance, total) in split.sumsInChunkOrder(chunkSums).enumerated() {
                (output.base[2 * instance], output.base[2 * instance + 1]) = total
            }
        } else {
            split.run { worker in
                for instance in split.instances(of: worker) {
                    (output.base[2 * instance], output.base[2 * instance + 1]) =
                        chunkedSums(shape.spatialCount) { chunkSums(instance, $0) }
                }
            }
        }
    }

    /// The instance sums of channels first where an instance holds fewer
    /// than 2·B values, B instances at a time, one per vector lane
    /// (`BlockScratch` turns a block into M columns): per instance (n, c),
    /// with K = `centers[c]`,
    ///
    ///     without dy:  Σ (x − K),  Σ (x − K)²        (`shiftedChunkSums`)
    ///     with dy:     Σ dy,       Σ dy·(x − K)      (`gradientChunkSums`)
    ///
    /// every term widened to `Double` and added in position order, which is
    /// all those functions do for an instance too short for their vector
    /// loop: the same bits, without a call and a scalar loop per instance.
    /// With y and dx tiled (`ChannelTiling`), (8192,256,2,2) float32 at
    /// one thread went from 54 / 69 ms to 11 / 16 ms forward / backward.
    @inlinable
    static func laneInstanceSums<T: InstanceNormScalar>(
        into sums: UnsafeMutableBufferPointer<Double>, shape: InstanceNormShape, threads: Int,
        x: UnsafeBufferPointer<T>, dy: UnsafeBufferPointer<T>?, centers: UnsafeBufferPointer<T.Compute>
    ) {
        typealias C = T.Compute
        let lanes = T.Vector.scalarCount, spatialCount = shape.spatialCount, instanceCount = shape.instanceCount
        guard instanceCount > 0, let values = x.baseAddress else { return }
        // K of instances first ..< first + B at centers[first mod C ...]: one vector.
        let tiled = SharedBuffer(UnsafeMutableBufferPointer<C>.allocate(capacity: shape.channels + lanes))
        defer { tiled.base.deallocate() }
        for index in 0..<shape.channels + lanes { tiled.base[index] = centers[index % shape.channels] }
        let (input, gradients, output) = (SharedBuffer(start: UnsafeMutablePointer(mutating: values)),
                                          dy.map { SharedBuffer(start: UnsafeMutablePointer(mutating: $0.baseAddress!)) },
                                          SharedBuffer(sums))
        let blocks = SmallInstances.blocks(instanceCount, lanes: lanes)
        let split = WorkSplit(units: blocks.count, length: 1, threads: threads)
        split.run { worker in
            let scratch = BlockScratch<T>(spatialCount: spatialCount)
            for index in split.instances(of: worker) {
                let block = blocks[index], start = block.lowerBound * spatialCount
                let available = (instanceCount - block.lowerBound) * spatialCount
                _ = scratch.load(input.base + start, count: block.count, available: available, set: 0, kind: 0)
                if let gradients {
                    _ = scratch.load(gradients.base + start, count: block.count, available: available, set: 0, kind: 1)
                }
                let center: C.Lanes = loadVector(UnsafePointer(tiled.base + block.lowerBound % shape.channels), 0)
                var first = C.WideLanes(), second = C.WideLanes()
                for position in 0..<spatialCount {
                    let deviation = C.widen(scratch.column(scratch.columns(0, 0), position) - center)
                    if gradients != nil {
                        let gradient = C.widen(scratch.column(scratch.columns(0, 1), position))
                        first = first + gradient
                        second = second + gradient * deviation
                    } else {
                        first = first + deviation
                        second = second + deviation * deviation
                    }
                }
                // Ordinary stores: the channels' totals read these sums back at once.
                ParameterSums.storePairs(first, second, to: output.base + 2 * block.lowerBound, count: block.count,
                                         staging: scratch.staging, streaming: false)
            }
        }
    }

    /// dx in the tensor's order with each channel's constants, as `tiling`
    /// lays them out (`writeChannelwise`): the same bits as channels first,
    /// value by value.
    @inlinable
    static func inputGradientTiled<T: InstanceNormScalar>(
        dx: UnsafeMutableBufferPointer<T>, dy: UnsafeBufferPointer<T>, x: UnsafeBufferPointer<T>,
        statistics: UnsafeBufferPointer<InstanceStatistics>, gamma: UnsafeBufferPointer<T>?,
        channelSums: UnsafeBufferPointer<Double>, count: Int, shape: InstanceNormShape, threads: Int, streaming: Bool,
        tiling: ChannelTiling
    ) {
        guard let dyBase = dy.baseAddress, let xBase = x.baseAddress else { return }
        writeChannelwise(dx, channels: tiling.channels, threads: threads, streaming: streaming, prefetching: true) { scratch in
            for channel in 0..<shape.channels {
                let operation = InstanceKernel.inputGradientOperation(
                    dy: dyBase, x: xBase, statistics: statistics[channel], gamma: gamma.map { $0[channel].widened } ?? 1,
                    sumDy: channelSums[2 * channel], sumDyXHat: channelSums[2 * channel + 1], spatialCount: count)
                for position in 0..<tiling.positions {
                    scratch.setInputGradient(operation, channel: channel * tiling.positions + position)
                }
            }
            for slot in 0..<5 { scratch.replicate(slot) }
        } operation: { scratch in
            TiledInputGradientOperation(dy: dyBase, x: xBase, scratch: scratch)
        }
    }
}

// MARK: - Forward and backward

extension BatchNormKernel {
    /// Training-mode forward: the channels' statistics from this batch's
    /// instance sums, finished by `channelTotals` ((N, C, 2) sums → (C, 2)
    /// totals: in sample order for one process, across ranks for the
    /// data-parallel layer), then y.
    ///
    /// - Parameters:
    ///   - y: output, in `layout`.
    ///   - statistics: C outputs, each channel's mean, biased variance, invstd.
    ///   - x: input, in `layout`.
    ///   - gamma: C entries, or nil for γ = 1.
    ///   - beta: C entries, or nil for β = 0.
    ///   - shape: (N, C, S…) of this batch.
    ///   - count: L, a channel's values in the whole batch (N·M, N global), ≥ 1.
    ///   - shifts: each channel's K, the same wherever the batch is split (a value of the batch's first sample).
    ///   - eps: ε > 0.
    ///   - threads: worker threads, ≥ 1.
    ///   - stores: how y is written.
    ///   - layout: channels first or last.
    ///   - channelTotals: sums the instances' sums of each channel over the whole batch.
    ///   - instanceSums: room for the 2·N·C instance sums, or nil to
    ///     allocate it here (a caller that steps many times keeps one: at
    ///     one value per instance it is four times a float32 tensor, whose
    ///     pages a fresh allocation faults in on every call).
    @inlinable
    public static func forward<T: InstanceNormScalar>(
        y: UnsafeMutableBufferPointer<T>, statistics: UnsafeMutableBufferPointer<InstanceStatistics>,
        x: UnsafeBufferPointer<T>, gamma: UnsafeBufferPointer<T>?, beta: UnsafeBufferPointer<T>?,
        shape: InstanceNormShape, count: Int, shifts: [T.Compute], eps: Double, threads: Int = 1,
        stores: StorePolicy = .automatic, layout: TensorLayout = .channelsFirst,
        instanceSums: UnsafeMutableBufferPointer<Double>? = nil,
        channelTotals: (UnsafeBufferPointer<Double>) throws -> [Double]
    ) rethrows {
        precondition(statistics.count == shape.channels && count >= 1)
        precondition(instanceSums.map { $0.count == 2 * shape.instanceCount } ?? true, "instanceSums holds 2·N·C values")
        let owned = instanceSums == nil ? TensorBuffer<Double>(repeating: 0, count: 2 * shape.instanceCount) : nil
        let sums = instanceSums ?? owned!.elements
        let totals = try shifts.withUnsafeBufferPointer { shifts in
            partialMoments(into: sums, x: x, shifts: shifts, shape: shape, threads: threads, layout: layout)
            return try withExtendedLifetime(owned) { try channelTotals(UnsafeBufferPointer(sums)) }
        }
        var channelMoments = totals.withUnsafeBufferPointer { totals in
            shifts.withUnsafeBufferPointer { Self.moments(channelSums: totals, count: count, shifts: $0, as: T.self) }
        }
        if channelMoments.contains(where: { $0 == nil }) {
            // Every rank runs the second pass for the same channels (the totals are the same everywhere).
            let centers = (0..<shape.channels).map { channel in
                channelMoments[channel] == nil
                    ? InstanceKernel.secondPassCenter(totals[2 * channel], count: count, shift: shifts[channel]) : shifts[channel]
            }
            let second = try centers.withUnsafeBufferPointer { centers in
                partialMoments(into: sums, x: x, shifts: centers, shape: shape, threads: threads, layout: layout)
                return try withExtendedLifetime(owned) { try channelTotals(UnsafeBufferPointer(sums)) }
            }
            for channel in 0..<shape.channels where channelMoments[channel] == nil {
                channelMoments[channel] = InstanceKernel.momentsFromCenteredSums(
                    second[2 * channel], second[2 * channel + 1], count: count, center: centers[channel])
            }
        }
        for channel in 0..<shape.channels {
            statistics[channel] = InstanceStatistics(mean: channelMoments[channel]!.mean, variance: channelMoments[channel]!.variance, eps: eps)
        }
        normalize(y: y, x: x, statistics: UnsafeBufferPointer(statistics), gamma: gamma, beta: beta, shape: shape,
                  threads: threads, stores: stores, layout: layout)
    }

    /// Backward of `forward`: every instance's (s1, s2) into `parameterSums`
    /// (N, C, 2), their totals over the whole batch by `channelTotals` into
    /// dβ, dγ, then dx.
    ///
    /// - Parameters:
    ///   - dx: output, in `layout`.
    ///   - dgamma: C outputs, Σ dy·x̂ over the batch.
    ///   - dbeta: C outputs, Σ dy over the batch.
    ///   - dy: the gradient, in `layout`.
    ///   - x: the forward's input.
    ///   - statistics: the forward's C channel statistics.
    ///   - gamma: C entries, or nil for γ = 1.
    ///   - parameterSums: 2·N·C outputs.
    ///   - shape: (N, C, S…) of this batch.
    ///   - count: L, a channel's values in the whole batch.
    ///   - threads: worker threads, ≥ 1.
    ///   - stores: how dx is written.
    ///   - layout: channels first or last.
    ///   - channelTotals: sums the instances' sums of each channel over the whole batch.
    @inlinable
    public static func backward<T: InstanceNormScalar>(
        dx: UnsafeMutableBufferPointer<T>, dgamma: UnsafeMutableBufferPointer<Double>, dbeta: UnsafeMutableBufferPointer<Double>,
        dy: UnsafeBufferPointer<T>, x: UnsafeBufferPointer<T>, statistics: UnsafeBufferPointer<InstanceStatistics>,
        gamma: UnsafeBufferPointer<T>?, parameterSums: UnsafeMutableBufferPointer<Double>,
        shape: InstanceNormShape, count: Int, threads: Int = 1, stores: StorePolicy = .automatic,
        layout: TensorLayout = .channelsFirst,
        channelTotals: (UnsafeBufferPointer<Double>) throws -> [Double]
    ) rethrows {
        partialGradientSums(into: parameterSums, dy: dy, x: x, statistics: statistics, shape: shape, threads: threads, layout: layout)
        let totals = try channelTotals(UnsafeBufferPointer(parameterSums))
        for channel in 0..<shape.channels {
            dbeta[channel] = totals[2 * channel]
            dgamma[channel] = totals[2 * channel + 1]
        }
        totals.withUnsafeBufferPointer { totals in
            inputGradient(dx: dx, dy: dy, x: x, statistics: statistics, gamma: gamma, channelSums: totals, count: count,
                          shape: shape, threads: threads, stores: stores, layout: layout)
        }
    }

    /// Each channel's K: the first value of the channel in sample 0
    /// (nothing when the batch is empty).
    @inlinable
    public static func shifts<T: InstanceNormScalar>(
        of x: UnsafeBufferPointer<T>, shape: InstanceNormShape, layout: TensorLayout
    ) -> [T.Compute] {
        guard shape.batch > 0 else { return [] }
        return (0..<shape.channels).map { x[shape.offset(sample: 0, channel: $0, position: 0, in: layout)].computed }
    }

    /// Σ over n of (N, C, 2) instance sums, per channel, in sample order: the
    /// totals of one process.
    @inlinable
    public static func sampleOrderTotals(_ sums: UnsafeBufferPointer<Double>, channels: Int) -> [Double] {
        var dbeta = [Double](repeating: 0, count: channels), dgamma = dbeta
        if let start = sums.baseAddress {
            addInSampleOrder(start, samples: sums.count / (2 * channels), channels: channels, dgamma: &dgamma,
                             dbeta: &dbeta, threads: 1)
        }
        var totals = [Double](repeating: 0, count: 2 * channels)
        for channel in 0..<channels {
            totals[2 * channel] = dbeta[channel]
            totals[2 * channel + 1] = dgamma[channel]
        }
        return totals
    }
}
