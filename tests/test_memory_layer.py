"""The memory layer's decode path against its training path, and MemoryLlama served by the engine."""
import json
import os

import pytest
import torch
from safetensors.torch import save_file

from engine import LLM, SamplingParams
from engine.layers.memory_layer import MemoryConfig, MemoryLayer, ValueTables
from engine.models.model_config import ModelConfig
from engine.models.memory_llama import MemoryLlamaForCausalLM
from engine.models.random_checkpoint import build_tokenizer

CFG = MemoryConfig(heads=2, num_keys=16, key_dim=16, value_dim=24, pre_value_dim=12, topk=4)


@pytest.mark.parametrize("shared", [False, True])
def test_decode_path_equals_training_path(shared):
    torch.manual_seed(0)
    tables = ValueTables(200, CFG.value_dim, CFG.pre_value_dim) if shared else None
    layer = MemoryLayer(32, CFG, tables, row_offset=77 if shared else 0)
    with torch.no_grad():
        layer.tables.values.normal_()
        layer.tables.pre_values.normal_()
    x = torch.randn(9, 32)
    with torch.no_grad():
        train = layer(x)
    decode = layer.forward_decode(x)
    assert (train - decode).abs().max().item() <= 1e-5
    assert train.abs().max() > 0


def test_decode_reads_heads_times_topk_rows_per_token():
    layer = MemoryLayer(32, CFG)
    layer.forward_decode(torch.randn(5, 32))
    assert layer.rows_read == 5 * CFG.heads * CFG.topk
    idx, _ = layer.select(torch.randn(3, 32))
    assert idx.shape == (3, CFG.heads, CFG.topk)
    assert int(idx.max()) < CFG.num_keys ** 2


def test_selection_picks_the_best_grid_cells_among_preselected():
    torch.manual_seed(1)
    layer = MemoryLayer(32, MemoryConfig(heads=1, num_keys=8, key_dim=8, value_dim=8, pre_value_dim=8, topk=8))
    x = torch.randn(1, 32)
    idx, scores = layer.select(x)
    assert len(set(idx[0, 0].tolist())) == 8
    total = scores.sum(-1)[0, 0]
    assert torch.all(total[:-1] >= total[1:])  # top-m comes out sorted by the summed core scores


def test_training_gradients_reach_values_and_keys():
    layer = MemoryLayer(32, CFG)
    layer(torch.randn(4, 32)).pow(2).sum().backward()
    for p in (layer.tables.values, layer.keys, layer.tucker_core, layer.query_proj.weight, layer.pre_proj.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


def write_memory_llama(path, shared_rows=None):
    cfg = {"architectures": ["MemoryLlamaForCausalLM"], "model_type": "memory_llama", "vocab_size": 384,
           "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4,
           "num_key_value_heads": 2, "max_position_embeddings": 512, "rms_norm_eps": 1e-6, "hidden_act": "relu",
           "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2, "memory_layers": [0, 2],
           "memory_heads": 2, "memory_num_keys": 8, "memory_key_dim": 16, "memory_value_dim": 16,
           "memory_pre_value_dim": 16, "memory_topk": 4, "memory_value_rows": shared_rows}
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    torch.manual_seed(0)
    model = MemoryLlamaForCausalLM(ModelConfig.from_dict(cfg))
    state = {n: p.detach().clone() for n, p in model.named_parameters() if n != "lm_head.weight"}
    save_file(state, os.path.join(path, "model.safetensors"))
    build_tokenizer(384).save_pretrained(path)
    return model


@pytest.mark.parametrize("shared_rows", [None, 100])
def test_memory_llama_served_by_engine_matches_dense_forward(tmp_path, shared_rows):
    model = write_memory_llama(str(tmp_path), shared_rows).eval()
    prompt = [1, 40, 50, 60, 70, 80, 90, 100]
    with torch.no_grad():
        expected = model.forward_dense(torch.tensor([prompt]))[0, -1].argmax().item()
    llm = LLM(str(tmp_path), max_model_len=128, num_kv_blocks=16, block_size=8)
    out = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))[0].outputs[0]
    assert out.token_ids[0] == expected
    ids = prompt + out.token_ids[:-1]
    with torch.no_grad():
        greedy = model.forward_dense(torch.tensor([ids]))[0, len(prompt) - 1:].argmax(-1).tolist()
    assert out.token_ids == greedy
    mems = llm.engine.runner.model.memory_layers()
    assert len(mems) == 2 and all(m.rows_read > 0 for m in mems)
