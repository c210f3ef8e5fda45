"""Projections fused for inference: the same outputs, and no second copy of the weights."""
import torch
import torch.nn.functional as F

from engine.layers.fused_linear import fuse_linears


def test_fused_linears_compute_each_output_and_keep_their_weights_as_views():
    torch.manual_seed(0)
    linears = [torch.nn.Linear(16, out, bias=True) for out in (8, 4, 4)]
    x = torch.randn(3, 16)
    expected = [m(x) for m in linears]
    weight, bias = fuse_linears(*linears)
    assert weight.shape == (16, 16) and bias.shape == (16,)
    fused = F.linear(x, weight, bias)
    assert torch.allclose(torch.cat(expected, -1), fused, atol=1e-6)
    assert all(torch.allclose(m(x), e, atol=1e-6) for m, e in zip(linears, expected))
    assert all(m.weight.untyped_storage().data_ptr() == weight.untyped_storage().data_ptr() for m in linears)
    assert fuse_linears(torch.nn.Linear(4, 2, bias=False), torch.nn.Linear(4, 3, bias=False))[1] is None
