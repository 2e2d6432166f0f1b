import InstanceNorm
import TestSupport
import Testing

extension KernelArithmetic {
    /// The arithmetic of the kernels for storage T (as `bench --verify` builds it).
    init<T: InstanceNormScalar>(for _: T.Type) {
        self.init(storage: T.self, compute: T.Compute.self, lanes: T.Vector.scalarCount, chunk: reductionChunk)
    }
}

/// The largest |computed − exact| / bound per output of one kernel run
/// (`InstanceCheck`, `ParameterGradientCheck`): ≤ 1 everywhere, or the
/// kernels are off by more than their rounding allows. y and dx are judged
/// against the exact result of the kernel's own statistics, the statistics
/// against the exact ones; dγ and dβ (which the kernels return in `Double`)
/// as the data-parallel layer stores them, rounded to T.
func errorBoundRatios<T: InstanceNormScalar>(_ inputs: Inputs<T>, _ run: KernelRun<T>, eps: Double) -> [String: Double] {
    var arithmetic = KernelArithmetic(for: T.self)
    arithmetic.blockedLimit = SmallInstances.limit
    arithmetic.blockedBackwardLimit = SmallInstances.backwardLimit
    let (channels, count) = (inputs.shape.channels, inputs.shape.spatialCount)
    let x = inputs.wideX, dy = inputs.wideDy
    var ratios: [String: Double] = [:]
    func worsen(_ name: String, _ ratio: Double) {
        ratios[name] = ratio.isNaN ? .infinity : max(ratios[name] ?? 0, ratio)
    }
    var terms = (dbeta: [[ParameterGradientCheck.Term]](repeating: [], count: channels), dgamma: [[ParameterGradientCheck.Term]](repeating: [], count: channels))
    for instance in 0..<inputs.shape.instanceCount {
        let channel = instance % channels, values = instance * count..<(instance + 1) * count
        let statistics = run.statistics[instance]
        let check = InstanceCheck(
            arithmetic: arithmetic, x: Array(x[values]), dy: Array(dy[values]),
            gamma: inputs.wideGamma?[channel] ?? 1, beta: inputs.wideBeta?[channel] ?? 0, eps: eps,
            mean: statistics.mean, variance: statistics.variance, invstd: statistics.invstd)
        let moments = check.statisticsErrors()
        worsen("mean", moments.mean)
        worsen("variance", moments.variance)
        worsen("invstd", moments.invstd)
        for (position, index) in values.enumerated() {
            let y = check.normalized(at: position), dx = check.inputGradient(at: position)
            worsen("y", errorRatio(abs(run.y[index].widened - y.value), y.bound))
            worsen("dx", errorRatio(abs(run.dx[index].widened - dx.value), dx.bound))
        }
        let (dbeta, dgamma) = check.parameterTerms
        terms.dbeta[channel].append(dbeta)
        terms.dgamma[channel].append(dgamma)
    }
    for channel in 0..<channels {
        let dbeta = ParameterGradientCheck.check([terms.dbeta[channel]], order: .sampleOrder, arithmetic: arithmetic)
        let dgamma = ParameterGradientCheck.check([terms.dgamma[channel]], order: .sampleOrder, arithmetic: arithmetic)
        worsen("dbeta", errorRatio(abs(T(run.dbeta[channel]).widened - dbeta.value), dbeta.bound))
        worsen("dgamma", errorRatio(abs(T(run.dgamma[channel]).widened - dgamma.value), dgamma.bound))
    }
    return ratios
}

/// Expects every output within its derived bound.
func expectWithinErrorBounds<T: InstanceNormScalar>(
    _ inputs: Inputs<T>, _ run: KernelRun<T>, eps: Double, _ comment: String,
    sourceLocation: SourceLocation = #_sourceLocation
) {
    let ratios = errorBoundRatios(inputs, run, eps: eps)
    for (name, ratio) in ratios.sorted(by: { $0.key < $1.key }) {
        #expect(ratio <= 1, "\(comment) \(name): error/bound \(ratio)", sourceLocation: sourceLocation)
    }
}
