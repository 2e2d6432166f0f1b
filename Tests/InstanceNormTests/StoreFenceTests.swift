import _InstanceNormShims
import InstanceNorm
import TestSupport
import Testing

/// Every call that writes with streaming stores ends with a store fence
/// (non-temporal stores are weakly ordered: without it another thread may
/// read the output before it lands). On x86 no result shows a missing
/// fence, so the shim counts the fences of each thread and this test
/// counts those of the calling thread, which issues them. Instances of 40
/// values take the small-instance kernels, of 300 the per-instance ones.
@Suite struct StoreFences {
    static let layouts: [TensorLayout] = [.channelsFirst, .channelsLast]

    @Test(arguments: layouts, [1, 3])
    func everyStreamingCallFences(layout: TensorLayout, threads: Int) {
        for positions in [40, 300] { checkFences(dimensions: [2, 3, positions], layout: layout, threads: threads) }
    }

    func checkFences(dimensions: [Int], layout: TensorLayout, threads: Int) {
        #expect(SmallInstances.limit < 300 && 40 <= SmallInstances.limit, "both kernels' paths")
        let shape = try! InstanceNormShape(dimensions: dimensions)
        let inputs = Inputs<Float>(dimensions, affine: true, seed: 5)
        let x = TensorBuffer(inputs.x), dy = TensorBuffer(inputs.dy)
        let gamma = TensorBuffer(inputs.gamma!), beta = TensorBuffer(inputs.beta!)
        let y = TensorBuffer<Float>(repeating: 0, count: x.count), dx = TensorBuffer<Float>(repeating: 0, count: x.count)
        let statistics = TensorBuffer(repeating: InstanceStatistics(mean: 0, variance: 0, invstd: 0), count: shape.instanceCount)
        let dgamma = TensorBuffer<Double>(repeating: 0, count: 3), dbeta = TensorBuffer<Double>(repeating: 0, count: 3)
        let running = (TensorBuffer<Float>([0, 1, -1]), TensorBuffer<Float>([1, 2, 0.5]))
        let calls: [(String, () -> Void)] = [
            ("forward", {
                BatchKernel.forward(
                    y: y.elements, statistics: statistics.elements, x: x.readOnly, gamma: gamma.readOnly,
                    beta: beta.readOnly, shape: shape, eps: 1e-5, threads: threads, stores: .streaming, layout: layout)
            }),
            ("backward", {
                BatchKernel.backward(
                    dx: dx.elements, dgamma: dgamma.elements, dbeta: dbeta.elements, dy: dy.readOnly, x: x.readOnly,
                    statistics: statistics.readOnly, gamma: gamma.readOnly, shape: shape, threads: threads,
                    stores: .streaming, layout: layout)
            }),
            ("forwardInference", {
                BatchKernel.forwardInference(
                    y: y.elements, x: x.readOnly, runningMean: running.0.readOnly, runningVar: running.1.readOnly,
                    gamma: gamma.readOnly, beta: beta.readOnly, shape: shape, eps: 1e-5, threads: threads,
                    stores: .streaming, layout: layout)
            }),
        ]
        for (name, call) in calls {
            let before = instnorm_store_fences_on_this_thread()
            call()
            #expect(instnorm_store_fences_on_this_thread() > before,
                    "\(name) \(dimensions) \(layout) threads \(threads) streamed without a fence")
        }
    }
}
