"""engine.demo.grow: a deepened MemoryLlama computes what its source computed, and its new blocks can learn."""
import json
import os

import pytest
import torch

from engine.demo.grow import main as grow_main
from engine.models.loader import load_model
from tests.test_memory_layer import write_memory_llama


def load(path):
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    return load_model(path, torch.float32, torch.device("cpu")), cfg


def test_grown_model_has_the_same_logits_and_new_blocks_that_learn(tmp_path):
    write_memory_llama(str(tmp_path / "src"), shared_rows=100)
    grow_main(["--src", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--after", "0,2"])
    source, _ = load(str(tmp_path / "src"))
    grown, cfg = load(str(tmp_path / "out"))
    assert cfg["num_hidden_layers"] == 5 and cfg["memory_layers"] == [0, 3]   # source blocks 0 and 2 keep theirs
    assert os.path.isfile(tmp_path / "out" / "tokenizer.json")
    ids = torch.tensor([[1, 40, 50, 60, 70, 80, 90, 100]])
    with torch.no_grad():
        assert torch.allclose(grown.forward_dense(ids), source.forward_dense(ids), atol=1e-5)
    new = grown.model.layers[1]
    assert new.memory is None and new.self_attn.o_proj.weight.abs().sum() == 0
    assert torch.equal(new.self_attn.q_proj.weight, source.model.layers[0].self_attn.q_proj.weight)
    grown.train().requires_grad_(True)
    grown.forward_dense(ids).pow(2).mean().backward()
    assert new.self_attn.o_proj.weight.grad.abs().sum() > 0 and new.mlp.down_proj.weight.grad.abs().sum() > 0


def test_grow_rejects_blocks_it_does_not_have(tmp_path):
    write_memory_llama(str(tmp_path / "src"))
    with pytest.raises(SystemExit):
        grow_main(["--src", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--after", "3"])
