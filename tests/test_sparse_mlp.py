"""Sparse-MLP kernels and modes against the dense and masked-dense computations."""
import pytest
import torch
import torch.nn.functional as F

from engine.layers.mlp import GatedMLP
from engine.layers.sparse_mlp import SparsePlan, SparsityContext, input_sparse_linear, parse_sparsity


def make_mlp(act="relu", hidden=48, inter=96, seed=0):
    torch.manual_seed(seed)
    mlp = GatedMLP(hidden, inter, act).requires_grad_(False)
    mlp.sparsity = SparsityContext()
    return mlp


def run(mlp, x, plan):
    mlp.sparsity.plan = plan
    try:
        return mlp(x)
    finally:
        mlp.sparsity.plan = None


@pytest.mark.parametrize("batch", [1, 2, 4])
@pytest.mark.parametrize("max_density", [0.6, 1.0])
def test_input_sparse_linear_equals_masked_dense(batch, max_density):
    torch.manual_seed(batch)
    x, w_t = torch.randn(batch, 64), torch.randn(64, 40)
    mask = torch.rand(batch, 64) > 0.7
    got = input_sparse_linear(x, w_t, mask, max_density)
    assert (got - (x * mask) @ w_t).abs().max() <= 1e-5


@pytest.mark.parametrize("batch", [1, 3])
def test_relu_mode_is_exact(batch):
    mlp = make_mlp("relu")
    x = torch.randn(batch, 48)
    dense = run(mlp, x, None)
    sparse = run(mlp, x, SparsePlan("relu", max_density=1.0))
    assert (sparse - dense).abs().max() <= 1e-5
    assert mlp.sparsity.achieved()[0] > 0.3   # random ReLU gates: about half are zero


@pytest.mark.parametrize("mode,thresholds", [("teal", [(0.0, 0.0)]), ("cats", [0.0])])
def test_zero_thresholds_equal_dense(mode, thresholds):
    mlp = make_mlp("silu")
    x = torch.randn(2, 48)
    assert (run(mlp, x, SparsePlan(mode, thresholds, 1.0)) - run(mlp, x, None)).abs().max() <= 1e-5


def test_teal_equals_masked_dense_reference():
    mlp = make_mlp("silu")
    x = torch.randn(3, 48)
    t_in, t_down = 0.6, 0.05
    xm = x * (x.abs() > t_in)
    h = F.silu(F.linear(xm, mlp.gate_proj.weight)) * F.linear(xm, mlp.up_proj.weight)
    expected = F.linear(h * (h.abs() > t_down), mlp.down_proj.weight)
    for density in (0.6, 1.0):
        got = run(mlp, x, SparsePlan("teal", [(t_in, t_down)], density))
        assert (got - expected).abs().max() <= 1e-5


def test_cats_equals_masked_dense_reference():
    mlp = make_mlp("silu")
    x = torch.randn(2, 48)
    a = F.silu(F.linear(x, mlp.gate_proj.weight))
    expected = F.linear(a * (a.abs() > 0.1) * F.linear(x, mlp.up_proj.weight), mlp.down_proj.weight)
    assert (run(mlp, x, SparsePlan("cats", [0.1], 0.6)) - expected).abs().max() <= 1e-5


def test_parse_sparsity():
    assert parse_sparsity("teal:0.5") == ("teal", 0.5)
    assert parse_sparsity("relu") == ("relu", None)
    assert parse_sparsity(None) == ("dense", None)
    for bad in ("magic", "teal", "cats:"):
        with pytest.raises(ValueError):
            parse_sparsity(bad)
