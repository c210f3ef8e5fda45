"""Triton masked GEMV kernels for sparse-MLP decoding on CUDA (batch 1–4, one union of active indices).

The CUDA counterparts of the CPU kernels in `sparse_mlp.py`, with the same contracts:
- `gather_rows_sum(idx, weight_t, weights)`: y[b] = Σ_j weights[b, j] · weight_t[idx[j]] (input sparsity over an
  input-major copy Wᵀ: each active input channel is one contiguous row);
- `gather_rows_dot(idx, weight, x)`: y[b, j] = weight[idx[j]] · x[b] (output sparsity: only active rows of W).
Each program reads only selected weight rows: for the sum, a tile of outputs over a slice of the active rows (partial
sums added atomically in fp32); for the dot, a tile of active rows. Used when the tensors
are on CUDA and Triton is installed; the tests run them on the CPU under Triton's interpreter (TRITON_INTERPRET=1
before Triton is imported, and FORCE_INTERPRETER).
"""
import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the CPU kernels are used
    triton = None


FORCE_INTERPRETER = False  # tests: serve CPU tensors too (Triton must have been imported with TRITON_INTERPRET=1)


def available(t: torch.Tensor) -> bool:
    """Whether these kernels serve tensor `t`: on CUDA with Triton installed (or forced, for the tests)."""
    return triton is not None and (t.is_cuda or FORCE_INTERPRETER)


if triton is not None:
    @triton.jit
    def _rows_sum_kernel(idx_ptr, w_ptr, xs_ptr, out_ptr, K, N, K_PER_SPLIT, stride_w, stride_xs, stride_out,
                         BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
        # program (column tile, slice of the active rows, batch row): partial sums added into an fp32 output
        cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        k_start = tl.program_id(1) * K_PER_SPLIT
        row = tl.program_id(2)
        acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for k0 in range(0, K_PER_SPLIT, BLOCK_K):
            ks = k_start + k0 + tl.arange(0, BLOCK_K)
            live = ks < K
            channels = tl.load(idx_ptr + ks, mask=live, other=0)
            xs = tl.load(xs_ptr + row * stride_xs + ks, mask=live, other=0.0).to(tl.float32)
            w = tl.load(w_ptr + channels[:, None] * stride_w + cols[None, :],
                        mask=live[:, None] & (cols[None, :] < N), other=0.0).to(tl.float32)
            acc += tl.sum(xs[:, None] * w, axis=0)
        tl.atomic_add(out_ptr + row * stride_out + cols, acc, mask=cols < N)

    @triton.jit
    def _rows_dot_kernel(idx_ptr, w_ptr, x_ptr, out_ptr, K, D, stride_w, stride_x, stride_out,
                         BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
        ks = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
        row = tl.program_id(1)
        live = ks < K
        rows = tl.load(idx_ptr + ks, mask=live, other=0)
        acc = tl.zeros((BLOCK_K,), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            ds = d0 + tl.arange(0, BLOCK_D)
            x = tl.load(x_ptr + row * stride_x + ds, mask=ds < D, other=0.0).to(tl.float32)
            w = tl.load(w_ptr + rows[:, None] * stride_w + ds[None, :],
                        mask=live[:, None] & (ds[None, :] < D), other=0.0).to(tl.float32)
            acc += tl.sum(w * x[None, :], axis=1)
        tl.store(out_ptr + row * stride_out + ks, acc.to(out_ptr.dtype.element_ty), mask=live)


def gather_rows_sum(idx: torch.Tensor, weight_t: torch.Tensor, weights: torch.Tensor,
                    block_k: int = 32, block_n: int = 128, programs: int = 512) -> torch.Tensor:
    """y [B, N] = Σ_j weights[b, j] · weight_t[idx[j]] for idx [K], weight_t [in, N], weights [B, K]. The active
    rows are split among programs (about `programs` in all) so that a GEMV with few column tiles fills the GPU."""
    rows, k = weights.shape
    n = weight_t.shape[1]
    if k == 0:
        return torch.zeros(rows, n, dtype=weights.dtype, device=weights.device)
    weights = weights.contiguous()
    col_tiles, k_tiles = triton.cdiv(n, block_n), triton.cdiv(k, block_k)
    splits = max(1, min(k_tiles, programs // (col_tiles * rows)))
    k_per_split = triton.cdiv(k_tiles, splits) * block_k
    out = torch.zeros(rows, n, dtype=torch.float32, device=weights.device)
    grid = (col_tiles, triton.cdiv(k, k_per_split), rows)
    _rows_sum_kernel[grid](idx, weight_t, weights, out, k, n, k_per_split, weight_t.stride(0), weights.stride(0),
                           out.stride(0), BLOCK_K=block_k, BLOCK_N=block_n)
    return out.to(weights.dtype)


def gather_rows_dot(idx: torch.Tensor, weight: torch.Tensor, x: torch.Tensor,
                    block_k: int = 32, block_d: int = 128) -> torch.Tensor:
    """y [B, K] = weight[idx[j]] · x[b] for idx [K], weight [out, D], x [B, D]."""
    rows, d = x.shape
    k = idx.numel()
    x = x.contiguous()
    out = torch.empty(rows, k, dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(k, block_k), rows)
    _rows_dot_kernel[grid](idx, weight, x, out, k, d, weight.stride(0), x.stride(0), out.stride(0),
                           BLOCK_K=block_k, BLOCK_D=block_d)
    return out
