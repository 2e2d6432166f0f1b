#!/usr/bin/env python3
"""Time PyTorch's CPU instance_norm, group_norm, layer_norm or batch_norm
(training mode) forward + backward (affine), the way `instnorm bench` times
its own: warm-up, then the median over iterations. Prints one JSON object: forward_ms, backward_ms,
step_ms (medians)."""
import argparse
import json
import statistics
import time

import torch

parser = argparse.ArgumentParser()
parser.add_argument("--shape", required=True)
parser.add_argument("--threads", type=int, default=1)
parser.add_argument("--dtype", default="float32", choices=["float16", "float32", "float64"])
parser.add_argument("--iterations", type=int, default=20)
parser.add_argument("--warmup", type=int, default=3)
parser.add_argument("--norm", default="instance", choices=["instance", "group", "layer", "batch"])
parser.add_argument("--groups", type=int)
parser.add_argument("--normalized-dims", type=int)
args = parser.parse_args()

torch.set_num_threads(args.threads)
shape = [int(s) for s in args.shape.split(",")]
dtype = getattr(torch, args.dtype)
x = torch.randn(shape, dtype=dtype, requires_grad=True)
dy = torch.randn(shape, dtype=dtype)
normalized = shape[-(args.normalized_dims or len(shape) - 1):]
parameters = normalized if args.norm == "layer" else [shape[1]]
gamma = torch.ones(parameters, dtype=dtype, requires_grad=True)
beta = torch.zeros(parameters, dtype=dtype, requires_grad=True)
F = torch.nn.functional
norm = {
    "instance": lambda: F.instance_norm(x, weight=gamma, bias=beta, eps=1e-5),
    "group": lambda: F.group_norm(x, args.groups, gamma, beta, 1e-5),
    "layer": lambda: F.layer_norm(x, normalized, gamma, beta, 1e-5),
    "batch": lambda: F.batch_norm(x, None, None, gamma, beta, training=True, eps=1e-5),
}[args.norm]

forward, backward = [], []
for iteration in range(args.warmup + args.iterations):
    x.grad = gamma.grad = beta.grad = None
    start = time.perf_counter()
    y = norm()
    middle = time.perf_counter()
    y.backward(dy)
    end = time.perf_counter()
    if iteration >= args.warmup:
        forward.append(middle - start)
        backward.append(end - middle)
step = [f + b for f, b in zip(forward, backward)]
print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                  "forward_ms": 1e3 * statistics.median(forward),
                  "backward_ms": 1e3 * statistics.median(backward),
                  "step_ms": 1e3 * statistics.median(step)}))
