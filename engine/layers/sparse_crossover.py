"""Where the sparse MLP kernels pay: the union density of active rows below which they beat the dense kernels,
measured once per model and mode on its own MLP shape and device.

A fixed crossover cannot fit every shape or device: on the 1.1B shape `teal` at density 0.5 runs the MLP 1.4x
faster than dense, while on the demo model (an MLP of 0.4 M weights, a few tens of µs of kernel launches) the
sparse path is slower at any density, and on an H200 the Triton gathers were 1.6-3x slower than a dense GEMV at
density 0.5 (bench/RESULTS.md). So the model runner times a pass through the layers' MLPs at batch 1 (as a decode
step makes it: one layer repeated would run from the caches and flatter the dense kernels), dense against the
sparse path at a few densities, and takes the density where the speedup crosses 1, interpolated between the last
density where the sparse path was faster and the first where it was not. 0 means that the dense kernels always
run; the masks, and so the outputs and the achieved-sparsity statistics, stay the same.
"""
import time
import timeit

import torch
import torch.nn.functional as F

from engine.layers.sparse_mlp import SparsePlan, SparsityContext, sparse_forward

DENSITIES = (0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.8)


def _best_time(fn, repeats: int) -> float:
    fn()   # warm-up: the input-major weight copies, allocator
    return min(timeit.repeat(fn, number=1, repeat=repeats))


def _plan_at(mlp, x: torch.Tensor, mode: str, density: float) -> tuple[SparsePlan, float]:
    """A one-layer plan of `mode` whose masks keep about `density` of the rows of x (max_density 1: sparse
    kernels whatever the density), and the fraction its activation mask keeps (a ReLU MLP's zeros cap it)."""
    def threshold(values: torch.Tensor) -> float:
        return float(values.abs().flatten().float().quantile(1.0 - density))
    gate = mlp.act(F.linear(x, mlp.gate_proj.weight))
    if mode == "teal":
        h = gate * F.linear(x, mlp.up_proj.weight)
        t_down = threshold(h)
        return SparsePlan("teal", [(threshold(x), t_down)], 1.0), float((h.abs() > t_down).float().mean())
    t = threshold(gate)   # relu's kernels, with a mask of the wanted density
    return SparsePlan("cats", [t], 1.0), float((gate.abs() > t).float().mean())


@torch.inference_mode()
def measure_crossover(mlps: list, mode: str) -> float:
    """The density at which `mode`'s sparse path (batch 1) stops beating the dense MLPs: 0.0 if it never does, the
    highest density tried if it always does. `mlps`: the model's GatedMLPs, of which the first 8 are timed (on the
    1.1B shape 1.1 GB of weights, beyond any cache): ~2 s there."""
    mlps = mlps[:8]
    first = mlps[0]
    weight = first.gate_proj.weight
    x = torch.randn(1, weight.shape[1], dtype=weight.dtype, device=weight.device)
    scratch = SparsityContext()
    finish = torch.cuda.synchronize if weight.is_cuda else (lambda: None)   # time the kernels, not their launch

    def dense():
        for mlp in mlps:
            mlp.dense(x)
        finish()
    start = time.perf_counter()
    dense()
    repeats = max(3, min(30, int(0.02 / max(time.perf_counter() - start, 1e-6))))   # ~20 ms of each per density
    last, last_speedup = 0.0, None
    for density in DENSITIES:
        plan, kept = _plan_at(first, x, mode, density)   # every layer takes the first's thresholds: similar rows
        if kept < 0.9 * density:   # a ReLU MLP's unions are never this dense: nothing more to learn
            break

        def sparse():
            for mlp in mlps:
                sparse_forward(mlp, x, plan, 0, scratch)
            finish()
        sparse_s = _best_time(sparse, repeats)
        speedup = _best_time(dense, repeats) / sparse_s   # dense timed after, so both see the same machine state
        if speedup <= 1.0:
            if last_speedup is None:
                return 0.0
            return last + (density - last) * (last_speedup - 1.0) / (last_speedup - speedup)
        last, last_speedup = density, speedup
    return last
