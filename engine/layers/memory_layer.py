"""UltraMemV2-style memory layer: product keys with a Tucker core, top-m value rows, PEER-style gating.

Per token x (the same normed input the FFN sees), for each memory head:
  row/column queries  q_r, q_c = LN_q(W_q x)                      (each of width k)
  sub-key scores      S_r = q_r · LN_k(K_r) ∈ R^{n×r},  S_c likewise
  pre-selection       I_r = top-m(S_r u),  I_c = top-m(S_c t)     ((u, t): rank-1 approximation of Σ_c C_c)
  grid scores         G_c = S_r[I_r] C_c S_c[I_c]^T  (m×m, one per core c)
  selection           top-m of Σ_c G_c over the m×m grid -> value rows idx, scores s_c = G_c[sel]
  gate                g = <W_pre x, PV[idx]>
  output              W_o Σ_idx [s_1 g V[idx][:v/2] ; s_2 g V[idx][v/2:]]
There is no softmax. Decode reads only the H·m selected rows of V and PV (embedding / embedding_bag).
Value tables may be shared across layers: a layer reads row (idx + offset) mod table_rows.
"""
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F


class Derived(NamedTuple):
    """MemoryLayer._derived's tensors (see there)."""
    keys: torch.Tensor
    stacked: torch.Tensor | None
    table_rows: int
    core_offsets: torch.Tensor | None


@dataclass
class MemoryConfig:
    heads: int = 1
    num_keys: int = 32          # n sub-keys per side: n² addressable value rows per layer
    key_dim: int = 64           # k
    value_dim: int = 64         # v (split into two halves, one per Tucker core)
    pre_value_dim: int = 64     # p
    topk: int = 8               # m
    tucker_rank: int = 2        # r
    num_cores: int = 2          # C (the value is split into C parts)

    @classmethod
    def from_dict(cls, raw: dict) -> "MemoryConfig":
        keys = {"heads", "num_keys", "key_dim", "value_dim", "pre_value_dim", "topk", "tucker_rank", "num_cores"}
        return cls(**{k: raw[f"memory_{k}"] for k in keys if f"memory_{k}" in raw})


class ValueTables(torch.nn.Module):
    """The value rows V [rows, v] and pre-value rows PV [rows, p]; one instance may serve several layers."""

    def __init__(self, rows: int, value_dim: int, pre_value_dim: int):
        super().__init__()
        self.values = torch.nn.Parameter(torch.randn(rows, value_dim) * 0.02)
        self.pre_values = torch.nn.Parameter(torch.randn(rows, pre_value_dim) * 0.02)


class MemoryLayer(torch.nn.Module):
    def __init__(self, hidden: int, cfg: MemoryConfig, tables: ValueTables | None = None, row_offset: int = 0):
        super().__init__()
        assert cfg.value_dim % cfg.num_cores == 0, "value_dim must split evenly across the cores"
        self.cfg = cfg
        n, k, r, h = cfg.num_keys, cfg.key_dim, cfg.tucker_rank, cfg.heads
        self.query_proj = torch.nn.Linear(hidden, h * 2 * k, bias=False)
        self.query_norm = torch.nn.LayerNorm(k)
        self.keys = torch.nn.Parameter(torch.randn(h, 2, n, k, r) / k ** 0.5)
        self.key_norm = torch.nn.LayerNorm(k)
        self.tucker_core = torch.nn.Parameter(torch.rand(cfg.num_cores, r, r))
        self.pre_proj = torch.nn.Linear(hidden, cfg.pre_value_dim, bias=False)
        self.out_proj = torch.nn.Linear(cfg.value_dim, hidden, bias=False)
        if tables is None:
            self.tables = ValueTables(n * n, cfg.value_dim, cfg.pre_value_dim)
        else:  # shared: the owner (the model) registers it, so its parameters have one name
            self.__dict__["tables"] = tables
        self.row_offset = row_offset
        self._cached_version, self._cached = None, None   # see _derived
        self._frozen: Derived | None = None   # see freeze
        self._rows_read = [0]   # a list: incrementing an int attribute would go through Module.__setattr__
        with torch.no_grad():
            for norm in (self.query_norm, self.key_norm):
                norm.weight.fill_(1.0 / k ** 0.4)
            torch.nn.init.normal_(self.query_proj.weight, std=1.0 / k ** 0.5)
            torch.nn.init.normal_(self.pre_proj.weight, std=1.0 / hidden ** 0.5)
            torch.nn.init.normal_(self.out_proj.weight, std=1.0 / cfg.value_dim ** 0.5)

    def select(self, x: torch.Tensor):
        """Value rows and per-core scores for tokens x [T, D]: idx [T, H, m], scores [T, H, m, C]."""
        derived = self._derived()
        return self._select(self.query_proj(x), derived.keys, derived.table_rows)

    def _select(self, queries: torch.Tensor, keys: torch.Tensor, table_rows: int):
        """`select` from the tokens' query projections [T, H·2·k], `_derived`'s keys and the value tables' rows."""
        cfg = self.cfg
        T, H, n, m, r, C = queries.shape[0], cfg.heads, cfg.num_keys, cfg.topk, cfg.tucker_rank, cfg.num_cores
        norm = self.query_norm
        q = F.layer_norm(queries.view(T, H * 2, cfg.key_dim), norm.normalized_shape, norm.weight, norm.bias,
                         norm.eps).transpose(0, 1)                                 # [H·2, T, k]
        both = torch.bmm(q, keys)                       # [H·2, T, n·C·r + n]: sub-key scores, then pre-selection's
        pre_idx = both[..., n * C * r:].topk(m, dim=-1).indices                    # [H·2, T, m]
        picked = both[..., :n * C * r].view(H * 2, T, n, C * r).gather(2, pre_idx[..., None].expand(-1, -1, -1, C * r))
        picked = picked.view(H, 2, T * m, C * r)
        # grid[i, j, c] = rows_i · (core_c cols_j); the column keys come with the cores applied (see _derived)
        rows, cols_by_core = picked[:, 0, :, :r], picked[:, 1].reshape(H * T, m * C, r)   # row j·C + c: core_c cols_j
        grid = torch.bmm(rows.reshape(H * T, m, r), cols_by_core.transpose(1, 2)).view(H * T, m * m, C)
        sel = grid.sum(-1).topk(m, dim=-1).indices                                # [H·T, m]: cell i·m + j
        chosen_scores = grid.gather(1, sel[..., None].expand(-1, -1, C))          # [H·T, m, C]
        pre_idx = pre_idx.view(H, 2, T, m)
        cells = (pre_idx[:, 0, :, :, None] * n + pre_idx[:, 1, :, None, :]).view(H, T, m * m)   # value row of i·m + j
        idx = cells.gather(2, sel.view(H, T, m))
        if self.row_offset or table_rows < n * n:
            idx = (idx + self.row_offset) % table_rows
        return idx.transpose(0, 1), chosen_scores.view(H, T, m, C).transpose(0, 1)

    def _derived(self):
        """Tensors derived from the weights: the normed sub-keys, with each core applied to the column sub-keys,
        and after them the sub-keys contracted with the rank-1 pre-selection vectors of the Tucker core (u for rows,
        t for columns): [H·2, k, n·C·r + n]. Sub-key i's C·r columns hold, for rows, its r scores then zeros, and for
        columns core_c applied to its scores for each c. Then the query and pre-value projections stacked (decode: one
        product) and the offsets 0..C-1 (both None with autograd, where nothing reads them), and the value tables' row
        count. Without autograd they depend on the weights only, so they are cached until a weight changes in place."""
        weights = (self.keys, self.key_norm.weight, self.key_norm.bias, self.tucker_core, self.query_proj.weight,
                   self.pre_proj.weight, self.tables.values)
        version = tuple((w.data_ptr(), w._version, w.dtype, w.device) for w in weights)   # moves and casts too
        if not torch.is_grad_enabled() and self._cached_version == version:
            return self._cached
        cfg = self.cfg
        H, n, k, r, C = cfg.heads, cfg.num_keys, cfg.key_dim, cfg.tucker_rank, cfg.num_cores
        normed = self.key_norm(self.keys.transpose(-1, -2))                      # [H, 2, n, r, k]
        rows = torch.cat([normed[:, 0], normed.new_zeros(H, n, (C - 1) * r, k)], dim=2)        # [H, n, C·r, k]
        cols = torch.einsum("cab,hnbk->hncak", self.tucker_core, normed[:, 1]).reshape(H, n, C * r, k)
        keys = torch.stack([rows, cols], 1).reshape(H * 2, n * C * r, k).transpose(1, 2)
        with torch.no_grad():
            u_mat, _, vh = torch.linalg.svd(self.tucker_core.sum(0))
            sign = torch.where(u_mat[:, 0].sum() >= 0, 1.0, -1.0)  # SVD's sign is arbitrary; keep u positive
            u, t = sign * u_mat[:, 0], sign * vh[0]
            preselect = torch.stack([normed[:, 0].transpose(-1, -2) @ u, normed[:, 1].transpose(-1, -2) @ t], 1)
            preselect = preselect.reshape(H * 2, n, k).transpose(1, 2)
        keys, table_rows = torch.cat([keys, preselect], dim=2), self.tables.values.shape[0]
        if torch.is_grad_enabled():
            return Derived(keys, None, table_rows, None)
        stacked = torch.cat([self.query_proj.weight, self.pre_proj.weight])
        offsets = torch.arange(C, device=keys.device)
        self._cached_version, self._cached = version, Derived(keys.contiguous(), stacked, table_rows, offsets)
        return self._cached

    @torch.no_grad()
    def freeze(self):
        """Inference with fixed weights (the engine): `_derived` computed once, not checked against the weights at
        every call."""
        self._frozen = self._derived()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Training path (autograd through gathered rows). x [T, D] -> [T, D]."""
        cfg = self.cfg
        idx, scores = self.select(x)
        values, pre_values = self.tables.values, self.tables.pre_values
        gate = (pre_values[idx] @ self.pre_proj(x)[:, None, :, None]).squeeze(-1)    # [T, H, m]
        parts = values[idx].view(*idx.shape, cfg.num_cores, -1)                      # [T, H, m, C, v/C]
        out = (parts * (scores * gate[..., None])[..., None]).sum(dim=(1, 2)).flatten(1)   # [T, v]
        return self.out_proj(out)

    @torch.no_grad()
    def forward_decode(self, x: torch.Tensor) -> torch.Tensor:
        """Inference path: reads only the selected rows (embedding / embedding_bag). Same result as `forward`.
        Module calls and attribute writes are avoided: at one token their overhead is a sizeable part of the time."""
        cfg = self.cfg
        T, rows, C = x.shape[0], cfg.heads * cfg.topk, cfg.num_cores
        split = cfg.heads * 2 * cfg.key_dim
        derived = self._frozen or self._derived()
        projected = F.linear(x, derived.stacked)                                 # [T, H·2·k + p]: queries, pre-gate
        idx, scores = self._select(projected[:, :split], derived.keys, derived.table_rows)
        tables = self.tables
        gate = torch.bmm(F.embedding(idx.reshape(T, rows), tables.pre_values), projected[:, split:, None])
        weights = scores.reshape(T, rows, C) * gate                                 # [T, H·m, C]
        # V viewed as [rows*C, v/C]: row i's part c is row i*C + c, so each part is one contiguous row
        parts = tables.values.view(-1, cfg.value_dim // C)
        part_idx = idx.reshape(T, rows, 1) * C + derived.core_offsets             # [T, H·m, C]
        out = F.embedding_bag(part_idx.transpose(1, 2).reshape(T * C, rows), parts,
                              per_sample_weights=weights.transpose(1, 2).reshape(T * C, rows), mode="sum")
        self._rows_read[0] += idx.numel()
        return F.linear(out.view(T, cfg.value_dim), self.out_proj.weight)

    @property
    def rows_read(self) -> int:
        """Value rows gathered by the decode path since creation (a counter for metrics and tests)."""
        return self._rows_read[0]
