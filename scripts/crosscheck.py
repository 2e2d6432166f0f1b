#!/usr/bin/env python3
"""Cross-check `instnorm apply` against independent InstanceNorm, GroupNorm
and LayerNorm.

The reference is PyTorch's torch.nn.functional.instance_norm, group_norm
and layer_norm (forward, autograd backward, running statistics) when torch
is importable, and otherwise float64 numpy implementations written here
from the textbook formulas. Inputs are random .npy files of 1, 2 and 3
spatial dimensions in float16, float32 and float64, channels first and
(--layout nhwc) channels last; the tool runs under mpirun at every rank
count given.

Checks, for every case and rank count:
  * every output matches the reference: normwise relative error
    max|out - ref| / max|ref| within 1e-3 (float16: one half ulp, twice the
    rounding of the output), 1e-5 (float32) or 1e-12 (float64);
  * float16 outputs are the reference rounded to half or its neighbour
    (at most one half ulp from it), except values within 16 float32 ulps of
    the scale of the reference, where the float32 arithmetic may decide;
  * dx of instances of two values (x̂ = ±1, dx only ε's share of its terms)
    is judged against the size of those terms, γ·r·dy, not against itself;
  * every output, dgamma and dbeta included, is byte-identical to the
    single-rank output.
Exit status 0 when every check passed, 1 otherwise.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

TOLERANCE = {np.float16: 1e-3, np.float32: 1e-5, np.float64: 1e-12}
CASES = [  # (shape, dtype, affine, grad, running, eval)
    ((7, 3, 5, 4), np.float16, True, True, True, False),
    ((3, 5, 9, 7), np.float16, True, False, True, True),
    ((7, 3, 5, 4), np.float32, True, True, True, False),
    ((7, 3, 5, 4), np.float64, True, True, True, False),
    ((2, 4, 33), np.float64, False, True, False, False),
    ((5, 2, 3, 4, 5), np.float32, True, True, False, False),
    ((3, 5, 9, 7), np.float64, True, False, True, True),
    ((6, 3, 1), np.float32, True, True, False, False),
    ((5, 3, 6), np.float64, "weight", True, True, False),
    ((4, 2, 3, 3), np.float32, "bias", True, False, False),
]
# Run with --layout nhwc: the files hold x and dy as (N, S..., C); y and dx
# come back in that layout and are compared with the reference transposed.
CHANNELS_LAST_CASES = [
    ((5, 3, 4, 6), np.float16, True, True, True, False),
    ((5, 3, 4, 6), np.float32, True, True, True, False),
    ((3, 19, 17), np.float64, True, True, False, False),
    ((4, 6, 5, 7), np.float64, True, False, True, True),
]
# Small instances (M <= 100 take the blocked kernels, one instance per vector
# lane): the sizes below a vector, odd ones, one and several groups of 8, in
# every dtype and both layouts; N*C = 35 is no multiple of the lanes (8, 16),
# so the last block of each rank is short. At P = 1 and 3 only (see main).
SMALL_SPATIAL = [(1,), (2,), (3,), (2, 2), (5,), (7,), (4, 4), (7, 7), (8, 8)]
SMALL_CASES = [((5, 7) + spatial, dtype, True, True, False, False, layout)
               for spatial in SMALL_SPATIAL for dtype in (np.float16, np.float32, np.float64)
               for layout in ("nchw", "nhwc")]


# GroupNorm, LayerNorm and BatchNorm: (norm flags, shape, dtype, affine,
# grad, layout[, running, eval]). Groups of 1, 2 and C channels (C:
# InstanceNorm's bits), a batch smaller than the largest rank count; layer
# norm over one, two and all trailing dimensions, transformer-like (N, L, D);
# batch norm synchronized across ranks, (N, C) and (N, C, S...), both
# layouts, with running statistics and in evaluation mode.
FAMILY_CASES = [
    (["--norm", "group", "--groups", "2"], (7, 4, 5, 3), np.float32, True, True, "nchw"),
    (["--norm", "group", "--groups", "1"], (3, 6, 11), np.float64, True, True, "nchw"),
    (["--norm", "group", "--groups", "3"], (5, 6, 4, 5), np.float16, True, True, "nchw"),
    (["--norm", "group", "--groups", "4"], (5, 4, 3, 3), np.float64, False, True, "nchw"),
    (["--norm", "group", "--groups", "2"], (5, 4, 6, 3), np.float32, True, True, "nhwc"),
    # Channels last with samples that fill register tiles and leave edges
    # (8 x 8 float, 4 x 4 double): 25 and 27 positions, 24 and 16 channels.
    (["--norm", "group", "--groups", "4"], (3, 24, 5, 5), np.float32, True, True, "nhwc"),
    (["--norm", "group", "--groups", "8"], (3, 16, 9, 3), np.float64, True, True, "nhwc"),
    # (N, C), as in PyTorch's own GroupNorm tests (GroupNorm_1d_affine_GN, _1d_no_affine_LN).
    (["--norm", "group", "--groups", "3"], (4, 12), np.float32, True, True, "nchw"),
    (["--norm", "group", "--groups", "1"], (4, 10), np.float64, False, True, "nchw"),
    (["--norm", "layer", "--normalized-dims", "1"], (6, 5, 37), np.float32, True, True, "nchw"),
    (["--norm", "layer", "--normalized-dims", "2"], (3, 4, 6, 5), np.float64, True, True, "nchw"),
    (["--norm", "layer"], (7, 3, 5, 2), np.float16, True, True, "nchw"),
    (["--norm", "layer", "--normalized-dims", "1"], (2, 9, 64), np.float64, False, True, "nchw"),
    # One parameter alone: LayerNorm(bias=False) as GPT-style models have it, beta alone.
    (["--norm", "layer", "--normalized-dims", "1"], (4, 3, 24), np.float32, "weight", True, "nchw"),
    (["--norm", "group", "--groups", "2"], (5, 4, 6), np.float64, "bias", True, "nchw"),
    (["--norm", "batch"], (5, 3, 7), np.float32, "weight", True, "nchw", True, False),
    (["--norm", "batch"], (7, 3, 5, 4), np.float32, True, True, "nchw", True, False),
    (["--norm", "batch"], (3, 6), np.float64, True, True, "nchw", False, False),
    (["--norm", "batch"], (5, 3, 4, 6), np.float16, True, True, "nhwc", True, False),
    (["--norm", "batch"], (3, 32, 6, 7), np.float32, True, True, "nhwc", True, False),
    (["--norm", "batch"], (2, 80, 40), np.float64, True, True, "nhwc", False, False),
    (["--norm", "batch"], (5, 4, 9), np.float64, True, False, "nchw", True, True),
]


def family_rows(flags, shape):
    """(rows, statistics shape, parameter index per element) of GroupNorm
    (flags --groups G) or LayerNorm (--normalized-dims K, default all but N);
    BatchNorm is `batch_numpy_reference`'s."""
    n = shape[0]
    if flags[1] == "group":
        groups, m = int(flags[3]), int(np.prod(shape[2:]))
        channel = np.repeat(np.arange(shape[1]), m)  # per element of a sample
        return (n, groups, -1), (n, groups), np.tile(channel, n)
    k = int(flags[3]) if len(flags) > 2 else len(shape) - 1
    d = int(np.prod(shape[-k:]))
    return (-1, d), shape[:-k], np.tile(np.arange(d), int(np.prod(shape)) // d)


def family_numpy_reference(flags, x, dy, gamma, beta, eps):
    """Textbook GroupNorm or LayerNorm in float64: rows of x normalized on
    their own, gamma and beta per channel (group) or per position (layer)."""
    rows_shape, stats_shape, parameter = family_rows(flags, x.shape)
    rows = x.astype(np.float64).reshape(rows_shape)
    g = np.ones(x.size) if gamma is None else gamma.astype(np.float64).reshape(-1)[parameter]
    b = np.zeros(x.size) if beta is None else beta.astype(np.float64).reshape(-1)[parameter]
    g, b = g.reshape(rows_shape), b.reshape(rows_shape)
    mean = rows.mean(axis=-1, keepdims=True)
    var = ((rows - mean) ** 2).mean(axis=-1, keepdims=True)
    invstd = 1 / np.sqrt(var + eps)
    xhat = (rows - mean) * invstd
    out = {"y": (g * xhat + b).reshape(x.shape),
           "mean": mean.reshape(stats_shape), "invstd": invstd.reshape(stats_shape)}
    if dy is not None:
        d = dy.astype(np.float64).reshape(rows_shape)
        weighted = g * d
        dx = invstd * (weighted - weighted.mean(axis=-1, keepdims=True)
                       - xhat * (weighted * xhat).mean(axis=-1, keepdims=True))
        out["dx"] = dx.reshape(x.shape)
        if gamma is not None:
            out["dgamma"] = np.bincount(parameter, (d * xhat).reshape(-1), gamma.size).reshape(gamma.shape)
        if beta is not None:
            out["dbeta"] = np.bincount(parameter, d.reshape(-1), beta.size).reshape(beta.shape)
    return out


def batch_numpy_reference(x, dy, gamma, beta, eps, running, momentum, evaluate):
    """Textbook BatchNorm in float64: statistics per channel over (N, S...)."""
    n, c = x.shape[:2]
    x3 = x.astype(np.float64).reshape(n, c, -1)
    g = np.ones(c) if gamma is None else gamma.astype(np.float64)
    b = np.zeros(c) if beta is None else beta.astype(np.float64)
    if evaluate:
        rm, rv = (r.astype(np.float64) for r in running)
        mean, var = rm, rv
    else:
        mean, var = x3.mean(axis=(0, 2)), x3.var(axis=(0, 2))
    invstd = 1 / np.sqrt(var + eps)
    xhat = (x3 - mean[None, :, None]) * invstd[None, :, None]
    out = {"y": (g[None, :, None] * xhat + b[None, :, None]).reshape(x.shape)}
    if evaluate:
        return out
    out["mean"], out["invstd"] = mean, invstd
    count = x3.shape[0] * x3.shape[2]
    if dy is not None:
        d3 = dy.astype(np.float64).reshape(x3.shape)
        s1, s2 = d3.sum(axis=(0, 2)), (d3 * xhat).sum(axis=(0, 2))
        out["dx"] = (g * invstd)[None, :, None] * (d3 - s1[None, :, None] / count - xhat * s2[None, :, None] / count)
        out["dx"] = out["dx"].reshape(x.shape)
        if gamma is not None:
            out["dgamma"] = s2
        if beta is not None:
            out["dbeta"] = s1
    if running is not None:
        rm, rv = (r.astype(np.float64) for r in running)
        out["running_mean"] = (1 - momentum) * rm + momentum * mean
        out["running_var"] = (1 - momentum) * rv + momentum * var * count / (count - 1)
    return out


def batch_torch_reference(torch, x, dy, gamma, beta, eps, running, momentum, evaluate):
    """PyTorch's CPU batch_norm in float64 (autograd for the backward)."""
    t = lambda a: None if a is None else torch.tensor(a.astype(np.float64))
    xt = t(x).requires_grad_(dy is not None)
    g, b = t(gamma), t(beta)
    for parameter in (g, b):
        if parameter is not None and dy is not None:
            parameter.requires_grad_(True)
    rm, rv = (t(running[0]), t(running[1])) if running is not None else (None, None)
    y = torch.nn.functional.batch_norm(xt, rm, rv, g, b, training=not evaluate, momentum=momentum, eps=eps)
    out = {"y": y.detach().numpy()}
    if evaluate:
        return out
    dims = [0] + list(range(2, x.ndim))
    var = xt.detach().var(dim=dims, unbiased=False)
    out["mean"] = xt.detach().mean(dim=dims).numpy()
    out["invstd"] = (1 / torch.sqrt(var + eps)).numpy()
    if dy is not None:
        y.backward(t(dy))
        out["dx"] = xt.grad.numpy()
        if g is not None:
            out["dgamma"] = g.grad.numpy()
        if b is not None:
            out["dbeta"] = b.grad.numpy()
    if rm is not None:
        out["running_mean"], out["running_var"] = rm.numpy(), rv.numpy()
    return out


def family_torch_reference(torch, flags, x, dy, gamma, beta, eps):
    """PyTorch's CPU group_norm or layer_norm in float64, with autograd."""
    t = lambda a: None if a is None else torch.tensor(a.astype(np.float64))
    xt = t(x).requires_grad_(True)
    g, b = t(gamma), t(beta)
    for parameter in (g, b):
        if parameter is not None:
            parameter.requires_grad_(True)
    if flags[1] == "group":
        groups = int(flags[3])
        y = torch.nn.functional.group_norm(xt, groups, g, b, eps)
        rows = xt.detach().reshape(x.shape[0], groups, -1)
        stats = (x.shape[0], groups)
    else:
        k = int(flags[3]) if len(flags) > 2 else x.ndim - 1
        y = torch.nn.functional.layer_norm(xt, x.shape[-k:], g, b, eps)
        rows = xt.detach().reshape(*x.shape[:-k], -1)
        stats = x.shape[:-k]
    out = {"y": y.detach().numpy(), "mean": rows.mean(dim=-1).reshape(stats).numpy(),
           "invstd": (1 / torch.sqrt(rows.var(dim=-1, unbiased=False) + eps)).reshape(stats).numpy()}
    if dy is not None:
        y.backward(t(dy))
        out["dx"] = xt.grad.numpy()
        if g is not None:
            out["dgamma"] = g.grad.numpy()
        if b is not None:
            out["dbeta"] = b.grad.numpy()
    return out


def to_last(a):
    return np.ascontiguousarray(np.moveaxis(a, 1, -1))


def to_first(a):
    return np.ascontiguousarray(np.moveaxis(a, -1, 1))


def child_environment():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_", "OPAL_"))}
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", SWIFT_BACKTRACE="enable=no")
    return env


def numpy_reference(x, dy, gamma, beta, eps, running, momentum, evaluate):
    """Textbook InstanceNorm in float64 over (N, C, M)."""
    n, c = x.shape[:2]
    x3 = x.astype(np.float64).reshape(n, c, -1)
    m = x3.shape[2]
    g = np.ones(c) if gamma is None else gamma.astype(np.float64)
    b = np.zeros(c) if beta is None else beta.astype(np.float64)
    out = {}
    if evaluate:
        rm, rv = (r.astype(np.float64) for r in running)
        xhat = (x3 - rm[None, :, None]) / np.sqrt(rv[None, :, None] + eps)
        out["y"] = (g[None, :, None] * xhat + b[None, :, None]).reshape(x.shape)
        return out
    mean = x3.mean(axis=2)
    var = ((x3 - mean[..., None]) ** 2).mean(axis=2)
    invstd = 1 / np.sqrt(var + eps)
    xhat = (x3 - mean[..., None]) * invstd[..., None]
    out["y"] = (g[None, :, None] * xhat + b[None, :, None]).reshape(x.shape)
    out["mean"], out["invstd"] = mean, invstd
    if dy is not None:
        d3 = dy.astype(np.float64).reshape(n, c, m)
        s1 = d3.sum(axis=2)
        s2 = (d3 * xhat).sum(axis=2)
        dx = g[None, :, None] * invstd[..., None] * (d3 - s1[..., None] / m - xhat * s2[..., None] / m)
        out["dx"] = dx.reshape(x.shape)
        if gamma is not None:
            out["dgamma"] = s2.sum(axis=0)
        if beta is not None:
            out["dbeta"] = s1.sum(axis=0)
    if running is not None:
        rm, rv = (r.astype(np.float64) for r in running)
        out["running_mean"] = (1 - momentum) * rm + momentum * mean.mean(axis=0)
        out["running_var"] = (1 - momentum) * rv + momentum * (var * m / (m - 1)).mean(axis=0)
    return out


def torch_reference(torch, x, dy, gamma, beta, eps, running, momentum, evaluate):
    """PyTorch's CPU instance_norm in float64 (autograd for the backward)."""
    t = lambda a: None if a is None else torch.tensor(a.astype(np.float64))
    xt = t(x).requires_grad_(dy is not None)
    g, b = t(gamma), t(beta)
    for parameter in (g, b):
        if parameter is not None and dy is not None:
            parameter.requires_grad_(True)
    rm, rv = (t(running[0]), t(running[1])) if running is not None else (None, None)
    y = torch.nn.functional.instance_norm(
        xt, running_mean=rm, running_var=rv, weight=g, bias=b,
        use_input_stats=not evaluate, momentum=momentum, eps=eps)
    out = {"y": y.detach().numpy()}
    if evaluate:
        return out
    x3 = xt.detach().reshape(x.shape[0], x.shape[1], -1)
    var = x3.var(dim=2, unbiased=False)
    out["mean"] = x3.mean(dim=2).numpy()
    out["invstd"] = (1 / torch.sqrt(var + eps)).numpy()
    if dy is not None:
        y.backward(t(dy))
        out["dx"] = xt.grad.numpy()
        if g is not None:
            out["dgamma"] = g.grad.numpy()
        if b is not None:
            out["dbeta"] = b.grad.numpy()
    if rm is not None:
        out["running_mean"], out["running_var"] = rm.numpy(), rv.numpy()
    return out


def half_ulps_off(got, expected):
    """Per value: how many halves lie between `got` and `expected` rounded to
    half, or 0 where |got - expected| is within 16 float32 ulps of the scale."""
    def ordered(values):
        bits = values.astype(np.float16).view(np.int16).astype(np.int32)
        return np.where(bits < 0, -(bits & 0x7FFF), bits)
    expected = expected.reshape(got.shape)
    distance = np.abs(ordered(got) - ordered(expected.astype(np.float16)))
    slack = 16 * np.finfo(np.float32).eps * max(np.abs(expected).max(), 1.0)
    return np.where(np.abs(got.astype(np.float64) - expected) <= slack, 0, distance)


def run_tool(tool, ranks, files, outdir, case_flags):
    command = ["mpirun", "--oversubscribe", "-np", str(ranks), tool, "apply",
               "--input", files["x"], "--output", outdir] + case_flags
    result = subprocess.run(command, env=child_environment(), capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {result.returncode}:\n{result.stderr}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tool", required=True, help="path of the built instnorm")
    parser.add_argument("--ranks", default="1,2,3,4", help="comma-separated rank counts")
    parser.add_argument("--reference", choices=["auto", "torch", "numpy"], default="auto")
    args = parser.parse_args()
    ranks = [int(r) for r in args.ranks.split(",")]

    torch = None
    if args.reference in ("auto", "torch"):
        try:
            import torch as torch_module
            torch = torch_module
        except ImportError:
            if args.reference == "torch":
                sys.exit("error: --reference torch but torch is not importable")
    print(f"reference: {'PyTorch ' + torch.__version__ if torch else 'numpy float64 (textbook formulas)'}")

    rng = np.random.default_rng(2024)
    failures = 0
    work = tempfile.mkdtemp(prefix="instnorm-crosscheck-")
    try:
        cases = ([(["--norm", "instance"],) + case + ("nchw",) for case in CASES]
                 + [(["--norm", "instance"],) + case + ("nhwc",) for case in CHANNELS_LAST_CASES]
                 + [(["--norm", "instance"],) + case for case in SMALL_CASES]
                 + [(case[0], case[1], case[2], case[3], case[4], *(case[6:] if len(case) > 6 else (False, False)), case[5])
                    for case in FAMILY_CASES])
        for index, (norm, shape, dtype, affine, grad, running, evaluate, layout) in enumerate(cases):
            family = norm[1] != "instance"
            stored = to_last if layout == "nhwc" else (lambda a: a)
            loaded = to_first if layout == "nhwc" else (lambda a: a)
            eps, momentum = 1e-5, 0.1
            c = shape[1]
            x = (rng.standard_normal(shape) * rng.uniform(0.5, 3, size=(1, c) + (1,) * (len(shape) - 2))
                 + rng.uniform(-2, 2, size=(1, c) + (1,) * (len(shape) - 2))).astype(dtype)
            dy = rng.standard_normal(shape).astype(dtype) if grad else None
            if norm[1] == "layer":
                k = int(norm[3]) if len(norm) > 2 else len(shape) - 1
                parameter_shape = shape[-k:]
            else:
                parameter_shape = (c,)
            # affine: True for both, "weight" for gamma alone (PyTorch's bias=False), "bias" for beta alone.
            gamma = rng.uniform(0.5, 1.5, parameter_shape).astype(dtype) if affine in (True, "weight") else None
            beta = rng.uniform(-0.5, 0.5, parameter_shape).astype(dtype) if affine in (True, "bias") else None
            run_stats = (rng.uniform(-1, 1, c).astype(dtype), rng.uniform(0.5, 2, c).astype(dtype)) if running else None
            files = {"x": f"{work}/x{index}.npy"}
            np.save(files["x"], stored(x))
            flags = ["--eps", repr(eps), "--layout", layout] + norm
            for name, value in (("grad", dy), ("weight", gamma), ("bias", beta)):
                if value is not None:
                    files[name] = f"{work}/{name}{index}.npy"
                    np.save(files[name], stored(value) if name == "grad" else value)
                    flags += [f"--{name}", files[name]]
            if run_stats is not None:
                for name, value in zip(("running-mean", "running-var"), run_stats):
                    files[name] = f"{work}/{name}{index}.npy"
                    np.save(files[name], value)
                    flags += [f"--{name}", files[name]]
                flags += ["--momentum", repr(momentum)]
            if evaluate:
                flags.append("--eval")
            # PyTorch refuses spatial size 1 in training even without running
            # statistics ("Expected more than 1 spatial element"); instnorm
            # accepts it (y = beta, dx = 0), so that case uses numpy.
            spatial_one = int(np.prod(shape[2:])) == 1 and not evaluate
            if norm[1] == "batch":
                reference = (batch_torch_reference(torch, x, dy, gamma, beta, eps, run_stats, momentum, evaluate)
                             if torch is not None
                             else batch_numpy_reference(x, dy, gamma, beta, eps, run_stats, momentum, evaluate))
            elif family:
                reference = (family_torch_reference(torch, norm, x, dy, gamma, beta, eps) if torch is not None
                             else family_numpy_reference(norm, x, dy, gamma, beta, eps))
            elif torch is not None and not spatial_one:
                reference = torch_reference(torch, x, dy, gamma, beta, eps, run_stats, momentum, evaluate)
            else:
                if torch is not None:
                    print(f"case {index}: spatial size 1, which PyTorch refuses in training: numpy reference")
                reference = numpy_reference(x, dy, gamma, beta, eps, run_stats, momentum, evaluate)
            tolerance = TOLERANCE[dtype]
            single = None
            # The small cases at one rank and at three (uneven shares of the
            # batch): the swift tests cover the other counts, and 54 cases at
            # four counts would double the script's time.
            small = len(CASES) + len(CHANNELS_LAST_CASES) <= index < len(CASES) + len(CHANNELS_LAST_CASES) + len(SMALL_CASES)
            for p in ([r for r in ranks if r in (1, 3)] or ranks[:1]) if small else ranks:
                outdir = f"{work}/out{index}-p{p}"
                run_tool(args.tool, p, files, outdir, flags)
                outputs = {name: np.load(f"{outdir}/{name}.npy") for name in reference}
                for name in ("y", "dx"):
                    if name in outputs:
                        outputs[name] = loaded(outputs[name])
                produced = sorted(f[:-4] for f in os.listdir(outdir))
                label = f"case {index} {' '.join(norm[1:])} {shape} {np.dtype(dtype).name} {layout} P={p}"
                if produced != sorted(reference):
                    print(f"FAIL {label}: files {produced}, expected {sorted(reference)}")
                    failures += 1
                for name, expected in reference.items():
                    got = outputs[name]
                    scale = max(np.abs(expected).max(), 1e-30)
                    if name == "dx" and not family and int(np.prod(shape[2:])) == 2 and "invstd" in reference:
                        # Two values per instance: x̂ = ±1 whatever the data, so
                        # dx = γ·r·(dy − s1/M − x̂·s2/M) cancels to ε's share of it
                        # (exactly 0 as ε → 0); judge it against its terms, γ·r·dy.
                        g = np.ones(c) if gamma is None else gamma.astype(np.float64)
                        r = reference["invstd"].astype(np.float64).reshape(shape[0], c, 1)
                        terms = np.abs(dy.astype(np.float64).reshape(shape[0], c, -1) * g[None, :, None] * r)
                        scale = max(scale, terms.max())
                    error = np.abs(got.astype(np.float64) - expected.reshape(got.shape)).max() / scale
                    ok = got.dtype == dtype and error <= tolerance
                    if dtype == np.float16:
                        ok = ok and half_ulps_off(got, expected).max() <= 1
                    if single is not None:
                        ok = ok and got.tobytes() == single[name].tobytes()
                    if not ok:
                        failures += 1
                    print(f"{'ok  ' if ok else 'FAIL'} {label} {name:13s} rel.error {error:.2e} (tolerance {tolerance:.0e})")
                if single is None:
                    single = outputs
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"crosscheck: {failures} failure(s)")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
