import _InstanceNormShims

/// dβ_c += Σ_n s1(n,c) and dγ_c += Σ_n s2(n,c) over `samples` rows of C
/// instance sums (s1, s2 side by side, the (N, C, 2) layout of the kernels'
/// per-instance sums), each channel's additions in sample order: the
/// totals of one process.
///
/// Row by row: a loop over the N·C instances that found each one's channel
/// as instance mod C paid a division per instance, and ran on one thread
/// after a multi-threaded backward (at M = 4, (8192,256,2,2), two threads,
/// it took 486 perf samples against 1430 for the whole kernel). Workers
/// take disjoint runs of channels; a channel's additions are the same
/// whoever makes them, so the bits do not depend on `threads`.
@inlinable
func addInSampleOrder(
    _ sums: UnsafePointer<Double>, samples: Int, channels: Int,
    dgamma: UnsafeMutablePointer<Double>, dbeta: UnsafeMutablePointer<Double>, threads: Int
) {
    let split = WorkSplit(units: channels, length: 1, threads: samples * channels >= parallelCombineInstances ? threads : 1)
    let shared = (sums: SharedBuffer(start: UnsafeMutablePointer(mutating: sums)),
                  dgamma: SharedBuffer(start: dgamma), dbeta: SharedBuffer(start: dbeta))
    split.run { worker in
        let run = split.instances(of: worker)
        for sample in 0..<samples {
            let row = shared.sums.base + 2 * channels * sample
            var channel = run.lowerBound
            // Four channels a step (each still one addition per sample).
            while channel + 4 <= run.upperBound {
                instnorm_add_pairs4(row + 2 * channel, shared.dbeta.base + channel, shared.dgamma.base + channel)
                channel += 4
            }
            while channel < run.upperBound {
                shared.dbeta.base[channel] += row[2 * channel]
                shared.dgamma.base[channel] += row[2 * channel + 1]
                channel += 1
            }
        }
    }
}

/// Instance count from which `addInSampleOrder` takes several workers.
@usableFromInline let parallelCombineInstances = 1 << 16
