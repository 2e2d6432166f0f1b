// swift-tools-version:6.0
import PackageDescription
import Foundation

// The kernels need FMA and wide vectors: the x86-64 baseline has neither, and
// `SIMD.addProduct` then becomes a call to `fmaf` per lane (10-16x slower).
// haswell (AVX2 + FMA) runs on any cluster node of the last decade; set
// INSTNORM_TARGET_CPU (for example `native` or `znver4`) to tune for one host.
let targetCPU = ProcessInfo.processInfo.environment["INSTNORM_TARGET_CPU"] ?? "haswell"
// `-Xcc -march` builds the C shims' header for the same CPU when Swift imports
// it; without it the streaming-store shim is not inlined into the kernels.
#if arch(x86_64)
let kernelSettings: [SwiftSetting] = [.unsafeFlags(["-target-cpu", targetCPU, "-Xcc", "-march=\(targetCPU)"])]
let shimSettings: [CSetting] = [.unsafeFlags(["-march=\(targetCPU)"])]
#else
let kernelSettings: [SwiftSetting] = []
let shimSettings: [CSetting] = []
#endif

let package = Package(
    name: "InstanceNormMPI",
    products: [
        // MARK: - Public API
        /// Single-process InstanceNorm kernels; no MPI dependency.
        .library(name: "InstanceNorm", targets: ["InstanceNorm"]),
        /// `.npy` reading and writing, including one rank's slice of the batch.
        .library(name: "NPY", targets: ["NPY"]),
        /// A thin Swift face over Open MPI, with the reproducible allreduce.
        .library(name: "MPI", targets: ["MPI"]),
        /// Sums of doubles that give the same bits in any order: exact
        /// integer bins, rounded once (no MPI; the MPI module sends them).
        .library(name: "ReproducibleSum", targets: ["ReproducibleSum"]),
        /// InstanceNorm data-parallel over MPI ranks.
        .library(name: "DataParallel", targets: ["DataParallel"]),
        /// A plain double-precision InstanceNorm, written for clarity: the
        /// yardstick for tests and for `instnorm bench --verify`.
        .library(name: "InstanceNormReference", targets: ["InstanceNormReference"]),
        /// A tensor value type and differentiable data-parallel functions
        /// (InstanceNorm, channel mixing, a global loss) for Swift's
        /// `_Differentiation`.
        .library(name: "DifferentiableDataParallel", targets: ["DifferentiableDataParallel"]),
        .executable(name: "instnorm", targets: ["instnorm"]),
        /// A small model trained data-parallel: `mpirun -np P training-example`.
        .executable(name: "training-example", targets: ["training-example"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        // `swift package generate-documentation` (scripts/docs): a plugin, built
        // only when the documentation is; nothing links it.
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
    ],
    targets: [
        // MARK: - Public API
        .target(name: "InstanceNorm", dependencies: ["_InstanceNormShims"], swiftSettings: kernelSettings),
        .target(name: "InstanceNormReference"),
        .target(name: "NPY"),
        .target(name: "ReproducibleSum", dependencies: ["_InstanceNormShims"], swiftSettings: kernelSettings),
        .target(name: "MPI", dependencies: ["CMPI", "ReproducibleSum"]),
        .target(
            name: "DataParallel",
            dependencies: ["InstanceNorm", "MPI", "NPY", "ReproducibleSum"],
            swiftSettings: kernelSettings),
        .target(
            name: "DifferentiableDataParallel",
            dependencies: ["DataParallel", "InstanceNorm", "MPI", "ReproducibleSum"]),
        .executableTarget(
            name: "training-example",
            dependencies: ["DifferentiableDataParallel", "DataParallel", "InstanceNorm", "MPI"]),
        .executableTarget(
            name: "instnorm",
            dependencies: [
                "DataParallel", "InstanceNorm", "InstanceNormReference", "MPI", "NPY", "ReproducibleSum",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: kernelSettings),
        /// The .npy header parser under libFuzzer (scripts/fuzz), or a replay of saved inputs.
        .executableTarget(name: "NPYFuzz", dependencies: ["NPY", "_FuzzShims"]),

        // MARK: - Implementation details
        /// Streaming stores and a store fence, as static inline C.
        .target(name: "_InstanceNormShims", cSettings: shimSettings),
        .systemLibrary(
            name: "CMPI",
            pkgConfig: "ompi-c",
            providers: [.apt(["libopenmpi-dev", "openmpi-bin"])]),
        /// libFuzzer's driver and memfd_create, declared for NPYFuzz.
        .systemLibrary(name: "_FuzzShims"),

        // MARK: - Unit test bundles
        /// Seeded inputs and error measures shared by the test bundles.
        .target(name: "TestSupport", dependencies: ["InstanceNormReference"], path: "Tests/TestSupport"),
        .testTarget(
            name: "InstanceNormTests",
            dependencies: ["InstanceNorm", "TestSupport"],
            swiftSettings: kernelSettings),
        .testTarget(name: "NPYTests", dependencies: ["NPY"]),
        /// MPI started once for every test bundle of the process.
        .target(name: "MPITestSupport", dependencies: ["MPI"], path: "Tests/MPITestSupport"),
        .testTarget(name: "MPITests", dependencies: ["MPI", "MPITestSupport"]),
        .testTarget(
            name: "DifferentiableDataParallelTests",
            dependencies: ["DifferentiableDataParallel", "MPITestSupport", "TestSupport"]),
        .testTarget(name: "ReproducibleSumTests", dependencies: ["ReproducibleSum", "TestSupport"]),
        .testTarget(
            name: "InstnormTests",
            dependencies: ["instnorm", "mpi-checks", "DifferentiableDataParallel", "MPITestSupport", "NPY", "TestSupport"]),
        /// The MPI face and `Communicator.agree` checked at P = 2, 3, 4 under
        /// mpirun (launched by Tests/InstnormTests/MPIFaceTests.swift); a
        /// test program, not a product.
        .executableTarget(name: "mpi-checks", dependencies: ["MPI", "DataParallel", "ReproducibleSum"], path: "Tests/MPIChecks"),
    ]
)
