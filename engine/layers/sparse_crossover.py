"""Where the sparse MLP kernels pay: the union density of active rows below which they beat the dense kernels,
measured once per model and mode on its own MLP shape.

A fixed crossover cannot fit every shape: on the 1.1B shape `teal` at density 0.5 runs the MLP 1.4x faster than
dense, while on the demo model (an MLP of 0.4 M weights, a few tens of µs of kernel launches) the sparse path is
slower at any density (bench/RESULTS.md). So the model runner times one layer's MLP at batch 1, dense against the
sparse path at a few densities, and takes the largest density up to which the sparse path stayed faster; 0 means
that the dense kernels always run (the masks, and so the outputs and the achieved-sparsity statistics, stay the
same: only the kernels change).
"""
import time

import torch
import torch.nn.functional as F

from engine.layers.sparse_mlp import SparsePlan, SparsityContext, sparse_forward

DENSITIES = (0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.8)


def _best_time(fn, repeats: int) -> float:
    fn()   # warm-up: the input-major weight copies, allocator
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


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
def measure_crossover(mlp, mode: str, repeats: int = 30) -> float:
    """The largest of DENSITIES up to which `mode`'s sparse path (batch 1) beat the dense MLP in every trial, or
    0.0. `mlp` is one of the model's GatedMLPs; the measurement takes well under a second on the shapes we serve."""
    weight = mlp.gate_proj.weight
    x = torch.randn(1, weight.shape[1], dtype=weight.dtype, device=weight.device)
    scratch = SparsityContext()
    dense = lambda: mlp.down_proj(mlp.act(mlp.gate_proj(x)) * mlp.up_proj(x))  # noqa: E731
    crossover = 0.0
    for density in DENSITIES:
        plan, kept = _plan_at(mlp, x, mode, density)
        if kept < 0.9 * density:   # a ReLU MLP's unions are never this dense: nothing more to learn
            break
        sparse_s = _best_time(lambda: sparse_forward(mlp, x, plan, 0, scratch), repeats)
        if sparse_s >= _best_time(dense, repeats):   # timed after, so both see the same machine state
            break
        crossover = density
    return crossover
