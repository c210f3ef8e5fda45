"""bench/copy_formation.py: the repeat rows, the two inits, and a short run's report."""
import json
import random

import torch

from bench import copy_formation
from engine.demo.train import SMOKE, init_weights, model_config
from engine.models.memory_llama import MemoryLlamaForCausalLM
from engine.models.model_config import ModelConfig


def test_repeat_rows_repeat_a_run_of_varying_length():
    ids, weights = copy_formation.repeat_batch(random.Random(0), 16, 50)
    lengths = set()
    for row, w in zip(ids.tolist(), weights):
        n = (len(row) - row.count(0) - 1) // 2
        lengths.add(n)
        assert row[0] == 1 and row[1:1 + n] == row[1 + n:1 + 2 * n] and 8 <= n <= 40
        assert all(10 <= t < 50 for t in row[1:1 + 2 * n])
        assert w.nonzero().flatten().tolist() == list(range(n + 2, 2 * n + 1))   # the repeat after its first token
    assert len(lengths) > 4


def test_scaled_init_shrinks_only_the_residual_projections():
    def stds(scaled):
        torch.manual_seed(0)
        model = MemoryLlamaForCausalLM(ModelConfig.from_dict(model_config(SMOKE, 128)))
        init_weights(model, scaled_residual=scaled)
        layer = model.model.layers[0]
        return [m.weight.std().item() for m in (layer.self_attn.q_proj, layer.self_attn.o_proj, layer.mlp.down_proj)]
    plain, scaled = stds(False), stds(True)
    assert all(abs(s - 0.02) < 0.003 for s in plain)
    assert abs(scaled[0] - 0.02) < 0.003 and all(abs(s - 0.01) < 0.0015 for s in scaled[1:])   # 0.02/sqrt(2*2)


def test_short_run_reports_each_init_and_seed(tmp_path):
    out = tmp_path / "copy.json"
    copy_formation.main(["--seeds", "0", "--max-steps", "3", "--rows", "8", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [(r["init"], r["seed"]) for r in rows] == [("llama", 0), ("scaled", 0)]
    assert all(r["steps_to_copy"] is None and 0.0 <= r["copy_accuracy"] < 0.5 for r in rows)   # 3 steps: no copy
