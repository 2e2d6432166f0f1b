import DataParallel
import InstanceNorm

/// `layer`'s forward on `x` (β = nil), then its backward `steps` times:
/// the statistics, dx, dγ and dβ of the last step.
func forwardThenBackward<T: InstanceNormScalar>(
    _ layer: DataParallelNorm<T>, x: [T], dy: [T], gamma: [T], steps: Int = 1
) throws -> (statistics: [InstanceStatistics], dx: [T], dgamma: [T], dbeta: [T]) {
    var y = [T](repeating: 0, count: x.count), dx = y
    var dgamma = [T](repeating: 0, count: gamma.count), dbeta = dgamma
    var statistics = [InstanceStatistics](
        repeating: InstanceStatistics(mean: 0, variance: 1, eps: 1e-5), count: layer.localShape.statisticsCount)
    try x.withUnsafeBufferPointer { x in
        try gamma.withUnsafeBufferPointer { gamma in
            try y.withUnsafeMutableBufferPointer { y in
                try statistics.withUnsafeMutableBufferPointer { statistics in
                    try layer.forward(y: y, statistics: statistics, x: x, gamma: gamma, beta: nil)
                }
            }
            try dy.withUnsafeBufferPointer { dy in
                try statistics.withUnsafeBufferPointer { statistics in
                    try dx.withUnsafeMutableBufferPointer { dx in
                        try dgamma.withUnsafeMutableBufferPointer { dgamma in
                            try dbeta.withUnsafeMutableBufferPointer { dbeta in
                                for _ in 0..<steps {
                                    _ = try layer.backward(
                                        dx: dx, dgamma: dgamma, dbeta: dbeta, dy: dy, x: x, statistics: statistics, gamma: gamma)
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    return (statistics, dx, dgamma, dbeta)
}
