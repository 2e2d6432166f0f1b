/// The normalization family in plain double precision: every norm is a set
/// of rows (lists of element indices) normalized on their own, with γ, β
/// indexed by a function of the element. Written for clarity, as the rest
/// of `Reference`.
extension Reference {
    /// Rows and parameter indices of one norm.
    public struct Rows {
        /// The element indices of every row, in order (rows in the order of
        /// the saved statistics).
        public var rows: [[Int]]
        /// The parameter (γ, β entry) of each element.
        public var parameter: (Int) -> Int
        /// How many γ (and β) entries there are.
        public var parameterCount: Int

        /// Rows with `parameterCount` parameters, `parameter(element)` each element's.
        public init(rows: [[Int]], parameterCount: Int, parameter: @escaping (Int) -> Int) {
            self.rows = rows
            self.parameterCount = parameterCount
            self.parameter = parameter
        }

        /// GroupNorm of x (N, C, M) in C order: row (n, g) holds channels
        /// g·C/G ..< (g + 1)·C/G; γ per channel. G = C is InstanceNorm.
        public static func group(batch: Int, channels: Int, spatialCount: Int, groups: Int) -> Rows {
            let length = channels / groups * spatialCount
            return Rows(
                rows: (0..<batch * groups).map { row in Array(row * length..<(row + 1) * length) },
                parameterCount: channels, parameter: { ($0 / spatialCount) % channels })
        }

        /// BatchNorm of x (N, C, M) in C order: one row per channel, its M
        /// values in every sample, sample after sample; γ per channel.
        public static func batch(batch: Int, channels: Int, spatialCount: Int) -> Rows {
            var rows: [[Int]] = []
            for channel in 0..<channels {
                var row: [Int] = []
                for sample in 0..<batch {
                    let start = (sample * channels + channel) * spatialCount
                    row += Array(start..<start + spatialCount)
                }
                rows.append(row)
            }
            return Rows(rows: rows, parameterCount: channels, parameter: { ($0 / spatialCount) % channels })
        }

        /// LayerNorm: `rowCount` rows of `rowLength` contiguous values; γ per position.
        public static func layer(rowCount: Int, rowLength: Int) -> Rows {
            Rows(
                rows: (0..<rowCount).map { row in Array(row * rowLength..<(row + 1) * rowLength) },
                parameterCount: rowLength, parameter: { $0 % rowLength })
        }
    }

    /// y = γ·x̂ + β per row, with each row's mean, biased variance and invstd.
    public static func forward(x: [Double], rows: Rows, gamma: [Double]?, beta: [Double]?, eps: Double) -> Forward {
        var result = Forward(y: x, mean: [], variance: [], invstd: [])
        for row in rows.rows {
            let values = row.map { x[$0] }
            let roughMean = values.reduce(0, +) / Double(values.count)
            let mean = roughMean + values.map { $0 - roughMean }.reduce(0, +) / Double(values.count)
            let variance = values.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(values.count)
            let invstd = 1 / (variance + eps).squareRoot()
            for index in row {
                let parameter = rows.parameter(index)
                result.y[index] = (gamma?[parameter] ?? 1) * (x[index] - mean) * invstd + (beta?[parameter] ?? 0)
            }
            result.mean.append(mean)
            result.variance.append(variance)
            result.invstd.append(invstd)
        }
        return result
    }

    /// Per row, with g = γ of each element and L its length:
    /// dx = r·(g·dy − mean(g·dy) − x̂·mean(g·dy·x̂)); dβ_p = Σ dy, dγ_p = Σ dy·x̂
    /// over the elements of parameter p.
    public static func backward(dy: [Double], x: [Double], rows: Rows, gamma: [Double]?, eps: Double) -> Backward {
        let saved = forward(x: x, rows: rows, gamma: nil, beta: nil, eps: eps)
        var result = Backward(
            dx: dy, dgamma: Array(repeating: 0, count: rows.parameterCount), dbeta: Array(repeating: 0, count: rows.parameterCount))
        for (rowIndex, row) in rows.rows.enumerated() {
            let invstd = saved.invstd[rowIndex], count = Double(row.count)
            let xHat = row.map { (x[$0] - saved.mean[rowIndex]) * invstd }
            let weighted = row.map { (gamma?[rows.parameter($0)] ?? 1) * dy[$0] }
            let meanWeighted = weighted.reduce(0, +) / count
            let meanWeightedXHat = zip(weighted, xHat).map { $0 * $1 }.reduce(0, +) / count
            for (position, index) in row.enumerated() {
                result.dx[index] = invstd * (weighted[position] - meanWeighted - xHat[position] * meanWeightedXHat)
                result.dbeta[rows.parameter(index)] += dy[index]
                result.dgamma[rows.parameter(index)] += dy[index] * xHat[position]
            }
        }
        return result
    }
}
