"""The Triton masked GEMVs for CUDA, run on the CPU by Triton's interpreter: against the CPU kernels and the masked
dense computation, alone and inside the sparse MLP."""
import os

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from engine.layers import sparse_gemv_triton  # noqa: E402
from engine.layers.sparse_mlp import SparsePlan  # noqa: E402
from tests.test_sparse_mlp import make_mlp, run  # noqa: E402


@pytest.fixture
def kernels(monkeypatch):
    """The kernels, serving CPU tensors under Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton was imported without TRITON_INTERPRET=1")
    monkeypatch.setattr(sparse_gemv_triton, "FORCE_INTERPRETER", True)
    return sparse_gemv_triton


@pytest.mark.parametrize("batch", [1, 2, 4])
def test_gather_rows_sum_equals_masked_dense(kernels, batch):
    torch.manual_seed(batch)
    x, w = torch.randn(batch, 150), torch.randn(200, 150)          # N=200 and K below are not multiples of blocks
    idx = torch.randperm(150)[:70].sort().values
    got = kernels.gather_rows_sum(idx, w.t().contiguous(), x[:, idx].contiguous())
    mask = torch.zeros(150, dtype=torch.bool)
    mask[idx] = True
    assert (got - F.linear(x * mask, w)).abs().max() <= 1e-5


@pytest.mark.parametrize("batch", [1, 3])
def test_gather_rows_dot_reads_only_selected_rows(kernels, batch):
    torch.manual_seed(batch)
    x, w = torch.randn(batch, 130), torch.randn(90, 130)
    idx = torch.randperm(90)[:41]
    got = kernels.gather_rows_dot(idx, w, x)
    assert (got - x @ w[idx].T).abs().max() <= 1e-5


def test_sparse_mlp_through_triton_equals_dense_and_masked_dense(kernels):
    assert kernels.available(torch.zeros(1))
    relu = make_mlp("relu")
    x = torch.randn(3, 48)
    assert (run(relu, x, SparsePlan("relu", max_density=1.0)) - run(relu, x, None)).abs().max() <= 1e-5
    silu = make_mlp("silu")
    t_in, t_down = 0.6, 0.05
    xm = x * (x.abs() > t_in)
    h = F.silu(F.linear(xm, silu.gate_proj.weight)) * F.linear(xm, silu.up_proj.weight)
    expected = F.linear(h * (h.abs() > t_down), silu.down_proj.weight)
    assert (run(silu, x, SparsePlan("teal", [(t_in, t_down)], 1.0)) - expected).abs().max() <= 1e-5
