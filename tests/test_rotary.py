"""Relative rotations of cached vectors (the KV retrieval's position moves) compose with RoPE exactly."""
import pytest
import torch

from engine.layers.rotary import RotaryEmbedding, apply_rotary, rotate_by
from engine.models.model_config import ModelConfig


def _config(rope_scaling) -> ModelConfig:
    return ModelConfig.from_dict({"architectures": ["LlamaForCausalLM"], "vocab_size": 8, "hidden_size": 64,
                                  "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 4,
                                  "max_position_embeddings": 1024, "rope_scaling": rope_scaling})


SCALINGS = pytest.mark.parametrize("rope_scaling", [None, {"rope_type": "yarn", "factor": 4.0,
                                                           "original_max_position_embeddings": 256}])


@SCALINGS
def test_rotate_by_moves_a_rotated_vector_to_another_position(rope_scaling):
    rotary = RotaryEmbedding(_config(rope_scaling), 1024)
    torch.manual_seed(0)
    x = torch.randn(5, 4, 16)
    positions, delta = torch.tensor([0, 3, 50, 300, 700]), torch.tensor([7, -3, 200, -250, 100])
    moved = rotate_by(apply_rotary(x, rotary(positions)), delta, rotary)
    assert (moved - apply_rotary(x, rotary(positions + delta))).abs().max() < 1e-4


@SCALINGS
def test_unrotate_returns_cached_vectors_to_position_zero(rope_scaling):
    from engine.layers.rotary import unrotate, unrotate_range
    rotary = RotaryEmbedding(_config(rope_scaling), 256)
    torch.manual_seed(0)
    x = torch.randn(6, 4, 16)
    at_zero = apply_rotary(x, rotary(torch.zeros(6, dtype=torch.long)))
    scattered = torch.tensor([0, 3, 50, 300, 700, 2000])   # past the table's end: it grows
    assert (unrotate(apply_rotary(x, rotary(scattered)), scattered, rotary) - at_zero).abs().max() < 1e-4
    consecutive = torch.arange(1500, 1506)
    assert (unrotate_range(apply_rotary(x, rotary(consecutive)), 1500, rotary) - at_zero).abs().max() < 1e-4


@SCALINGS
def test_unrotation_matrix_moves_vectors_back_like_unrotate_range(rope_scaling):
    from engine.layers.rotary import unrotate_range, unrotation_matrix
    rotary = RotaryEmbedding(_config(rope_scaling), 256)
    torch.manual_seed(0)
    x = torch.randn(1, 4, 16)
    for position in (0, 1, 37, 1500):
        matrix = unrotation_matrix(position, rotary, x.device, x.dtype)
        assert (x @ matrix - unrotate_range(x, position, rotary)).abs().max() < 1e-6
    assert (x @ unrotation_matrix(37, rotary, x.device, x.dtype) - x).abs().max() > 0.1


@SCALINGS
def test_unrotate_blocks_equals_unrotate_of_their_positions(rope_scaling):
    from engine.layers.rotary import unrotate, unrotate_blocks
    rotary = RotaryEmbedding(_config(rope_scaling), 100)   # not a multiple of the block size; it grows too
    torch.manual_seed(0)
    blocks = torch.tensor([[0, 2, 9], [1, 3, 40]])                               # [heads, n] of 4-position blocks
    positions = (blocks[:, :, None] * 4 + torch.arange(4)).flatten(1)            # [heads, 12]
    x = torch.randn(2, 12, 16)
    with torch.inference_mode():
        got = unrotate_blocks(x, blocks, 4, rotary, int(positions.max()))
        assert torch.allclose(got, unrotate(x, positions, rotary), atol=1e-6)


def test_rotation_with_and_without_autograd_agree():
    rotary = RotaryEmbedding(_config(None), 64)
    x, positions = torch.randn(5, 4, 16, requires_grad=True), torch.arange(5)
    trained = apply_rotary(x, rotary(positions))
    with torch.no_grad():
        served = apply_rotary(x, rotary(positions))
        assert (trained - served).abs().max() < 1e-6
        assert (apply_rotary(served, rotary(positions), inverse=True) - x).abs().max() < 1e-5
    trained.sum().backward()
    assert x.grad is not None
    with torch.no_grad():   # angles that broadcast beyond the vectors: one vector rotated four ways
        cos, sin = rotary.lookup(torch.arange(20).view(5, 4))
        wide = apply_rotary(x[:, :1], (cos, sin))
        assert wide.shape == (5, 4, 16)
        assert (wide - apply_rotary(x[:, :1].expand(-1, 4, -1), (cos, sin))).abs().max() < 1e-6
