// The kernels' order switches that machines decide and the environment
// overrides (INSTNORM_LAYER_ROW_PAIRS, INSTNORM_LAYER_COLUMNS_IN_LOOP,
// INSTNORM_FUSED_FORWARD): each order must give the same bits.
import Foundation
import Testing

extension InstnormCLI {
    /// LayerNorm's fused backward takes rows two at a time on some machines
    /// and one at a time on others (`LayerRowPairs`), and adds its column
    /// sums in its loops or in a pass of their own (`LayerColumnsInLoop`):
    /// choices that must not change a bit. `INSTNORM_LAYER_ROW_PAIRS` and
    /// `INSTNORM_LAYER_COLUMNS_IN_LOOP` make them, so all four orders run
    /// here whatever this machine would choose.
    @Suite struct LayerRowPairsOrders {
        /// Rows of 1056 values start on lines in every precision, and nine
        /// rows per sample leave one row after the pairs and one after the
        /// block of 8 rows whose column sums add up before they are widened;
        /// outputs stream, as the fused order needs, and no dx waits for an
        /// overlapped reduction (on a batch this small, every row would).
        /// Each run passes `--verify` (the reference), reports the orders it
        /// took, and gives the same checksum of y, dx, dγ and dβ in every
        /// order, at one and two ranks and threads.
        @Test(arguments: ["float16", "float32", "float64"])
        func everyOrderGivesTheSameBits(dtype: String) async throws {
            var checksums: [String: String] = [:]
            for (pairs, columnsInLoop) in [("0", "0"), ("0", "1"), ("1", "0"), ("1", "1")] {
                for (ranks, threads) in [(1, 1), (2, 2)] {
                    let run = "pairs \(pairs), columns in loop \(columnsInLoop), np \(ranks), threads \(threads)"
                    let report = try await Launcher.benchReport(ranks: ranks, [
                        "--shape", "3,9,1056", "--norm", "layer", "--normalized-dims", "1", "--dtype", dtype,
                        "--stores", "streaming", "--threads", String(threads), "--iterations", "1", "--warmup", "0",
                        "--no-overlap", "--verify", "--checksum",
                    ], extraEnvironment: ["INSTNORM_LAYER_ROW_PAIRS": pairs, "INSTNORM_LAYER_COLUMNS_IN_LOOP": columnsInLoop])
                    #expect(report["layer_row_pairs"] as? Bool == (pairs == "1"), "\(run)")
                    #expect(report["layer_columns_in_loop"] as? Bool == (columnsInLoop == "1"), "\(run)")
                    #expect(report["verified"] as? Bool == true, "\(run)")
                    checksums[run] = try #require(report["checksum"] as? String, "\(run): \(report)")
                }
            }
            #expect(Set(checksums.values).count == 1, "\(checksums)")
        }
    }
}

extension InstnormCLI {
    /// The forwards take the fused order for streamed runs of 4-128 KiB
    /// (`FusedForward`); `INSTNORM_FUSED_FORWARD` forces either way, so both
    /// run here for each norm that has it: each verified, each reporting its
    /// setting, the same checksum.
    @Suite struct FusedForwardSettings {
        @Test(arguments: [["--shape", "3,4,1100"], ["--norm", "group", "--groups", "2", "--shape", "3,4,1100"],
                          ["--norm", "layer", "--normalized-dims", "1", "--shape", "3,4,2048"]])
        func bothSettingsGiveTheSameBits(flags: [String]) async throws {
            var checksums: [String: String] = [:]
            for fused in ["0", "1"] {
                let report = try await Launcher.benchReport(ranks: 2, [
                    "--stores", "streaming", "--iterations", "1", "--warmup", "0", "--verify", "--checksum",
                ] + flags, extraEnvironment: ["INSTNORM_FUSED_FORWARD": fused])
                #expect(report["fused_forward"] as? Bool == (fused == "1"))
                #expect(report["verified"] as? Bool == true)
                checksums[fused] = try #require(report["checksum"] as? String, "\(report)")
            }
            #expect(Set(checksums.values).count == 1, "\(checksums)")
        }
    }
}
