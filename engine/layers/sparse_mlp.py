"""Sparse-MLP decoding: skip the weight rows whose activations are zero (ReLU) or below a calibrated threshold.

Modes (per step, chosen by the model runner; prefill and large batches stay dense):
- `relu`: exact. Rows i with relu(gate_i(x)) = 0 contribute nothing: `up` is computed only for active rows and
  `down` reads only their columns.
- `cats`: like relu on |silu(gate)| > t (CATS), with a calibrated per-layer t.
- `teal`: inputs of gate/up and of down below calibrated per-layer thresholds are zeroed (TEAL); only the weight
  rows of the surviving input channels are read.

Kernels (CPU): a sum over input channels is `F.embedding_bag` over an input-major copy Wᵀ (one contiguous row per
channel, never copied per step); output-side sparsity gathers contiguous rows with `F.embedding`. A batch of a few
rows uses the union of their masks, each row keeping its own values, so results equal the masked dense computation.
When the union is too dense to pay off, the same masked computation runs with dense kernels.
On CUDA with Triton installed, the two gathers are Triton masked GEMVs (`sparse_gemv_triton.py`).
"""
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from engine.layers import sparse_gemv_triton

MODES = ("dense", "relu", "teal", "cats")


@dataclass(frozen=True)
class SparsePlan:
    """What the MLPs of one step do: the mode and, for teal/cats, per-layer thresholds."""
    mode: str
    thresholds: list | None = None     # teal: [(t_in, t_down)] per layer; cats: [t] per layer
    max_density: float = 0.6           # a union denser than this runs on dense kernels


@dataclass
class SparsityContext:
    """Shared by every MLP of a model: the current step's plan and what the MLPs measured."""
    plan: SparsePlan | None = None
    zeros: dict = field(default_factory=dict)      # layer -> skipped activations
    totals: dict = field(default_factory=dict)     # layer -> activations seen

    def record(self, layer: int, skipped: int, total: int):
        self.zeros[layer] = self.zeros.get(layer, 0) + skipped
        self.totals[layer] = self.totals.get(layer, 0) + total

    def achieved(self) -> list[float]:
        return [self.zeros[k] / self.totals[k] for k in sorted(self.totals)]


def parse_sparsity(spec: str | None) -> tuple[str, float | None]:
    """"teal:0.5" -> ("teal", 0.5); "relu" -> ("relu", None); None or "" -> ("dense", None)."""
    if not spec:
        return "dense", None
    mode, _, target = str(spec).partition(":")
    if mode not in MODES:
        raise ValueError(f"mlp_sparsity mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode in ("teal", "cats"):
        if not target:
            raise ValueError(f"mlp_sparsity {mode} needs a target, e.g. {mode}:0.5")
        return mode, float(target)
    return mode, None


def bag_sum(idx: torch.Tensor, weight_t: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """y[b] = Σ_j weights[b, j] · weight_t[idx[j]]: rows read once per batch row, never copied.

    `embedding_bag` runs one bag per thread, so each row's indices are split into as many bags as threads and the
    partial sums added (a single bag leaves all but one core idle).
    """
    if sparse_gemv_triton.available(weights):
        return sparse_gemv_triton.gather_rows_sum(idx, weight_t, weights)
    rows, k = weights.shape
    parts = max(1, min(torch.get_num_threads(), k))
    size = -(-k // parts)
    starts = torch.arange(0, k, size, device=idx.device)
    offsets = (starts[None, :] + torch.arange(rows, device=idx.device)[:, None] * k).flatten()
    out = F.embedding_bag(idx.repeat(rows), weight_t, offsets, mode="sum", per_sample_weights=weights.flatten())
    return out.view(rows, starts.numel(), -1).sum(1)


def rows_dot(idx: torch.Tensor, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """y[b, j] = weight[idx[j]] · x[b]: only the selected output rows of W [out, in] are read."""
    if sparse_gemv_triton.available(x):
        return sparse_gemv_triton.gather_rows_dot(idx, weight, x)
    return x @ F.embedding(idx, weight).T


def active_union(mask: torch.Tensor, max_density: float) -> torch.Tensor | None:
    """The columns of mask [B, n] non-zero in any row, when at most `max_density`·n (and some): the sparse
    kernels' indices; None where the dense kernels are to run."""
    if max_density <= 0:
        return None
    idx = mask.any(0).nonzero().squeeze(1)
    return idx if 0 < idx.numel() <= max_density * mask.shape[1] else None


def _linear_over(x_masked: torch.Tensor, weight: torch.Tensor, weight_t: torch.Tensor, idx: torch.Tensor | None):
    """F.linear of the masked rows, reading only the input columns `idx` of Wᵀ (all of W when None)."""
    return F.linear(x_masked, weight) if idx is None else bag_sum(idx, weight_t, x_masked[:, idx])


def input_sparse_linear(x: torch.Tensor, weight: torch.Tensor, weight_t: torch.Tensor, mask: torch.Tensor,
                        max_density: float):
    """y[b] = Σ_{i: mask[b, i]} x[b, i] · W[:, i]  for x [B, in], W [out, in] and its input-major copy Wᵀ.
    A dense union runs `F.linear` on the masked input (the same kernel and layout as the dense model)."""
    return _linear_over(x * mask, weight, weight_t, active_union(mask, max_density))


def sparse_forward(mlp, x: torch.Tensor, plan: SparsePlan, layer: int, ctx: SparsityContext) -> torch.Tensor:
    """The MLP of rows x [B, hidden] under `plan` (equal to the dense MLP on the masked activations)."""
    if plan.mode == "teal":
        t_in, t_down = plan.thresholds[layer]
        mask_in = x.abs() > t_in
        x_in, idx_in = x * mask_in, active_union(mask_in, plan.max_density)   # shared by gate and up
        gate = _linear_over(x_in, mlp.gate_proj.weight, mlp.input_major("gate_proj"), idx_in)
        up = _linear_over(x_in, mlp.up_proj.weight, mlp.input_major("up_proj"), idx_in)
        h = mlp.act(gate) * up
        mask_h = h.abs() > t_down
        ctx.record(layer, int((~mask_in).sum() + (~mask_h).sum()), mask_in.numel() + mask_h.numel())
        return input_sparse_linear(h, mlp.down_proj.weight, mlp.input_major("down_proj"), mask_h, plan.max_density)
    gate = mlp.act(F.linear(x, mlp.gate_proj.weight))
    if plan.mode == "cats":
        gate = gate * (gate.abs() > plan.thresholds[layer])    # relu: its zeros are already there
    active = int(torch.count_nonzero(gate))
    ctx.record(layer, gate.numel() - active, gate.numel())
    idx = active_union(gate, plan.max_density)
    if idx is not None:
        up = rows_dot(idx, mlp.up_proj.weight, x)                    # [B, k]: only the active rows of W_up
        return bag_sum(idx, mlp.input_major("down_proj"), gate[:, idx] * up)
    return F.linear(gate * F.linear(x, mlp.up_proj.weight), mlp.down_proj.weight)   # what the dense MLP computes
