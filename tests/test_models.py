"""Our model implementations against `transformers` on the same random weights."""
import json
import os
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from engine import LLM, SamplingParams
from engine.config import EngineConfig
from engine.model_runner import ModelRunner
from engine.models.model_config import ModelConfig, ModelLoadError
from engine.scheduler import ScheduledSeq
from engine.sequence import Request, Sequence

VARIANTS = ["llama", "mistral", "qwen2", "llama3-rope", "linear-rope", "yarn-rope", "mistral-window"]


def reference(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def our_logits(path, ids, chunk=None, block_table=None):
    """Logits for every position of `ids`, prefilled in chunks of `chunk` tokens through the paged cache (blocks of
    8 tokens; by default in descending block order, so that no two blocks are consecutive)."""
    cfg = EngineConfig(model=path, num_kv_blocks=32, block_size=8)
    runner = ModelRunner(cfg, ModelConfig.from_dir(path))
    seq = Sequence(0, Request("r", None, ids, SamplingParams()), 0, torch.Generator(), None)
    seq.block_table = (block_table or list(range(runner.num_blocks - 1, -1, -1)))[: -(-len(ids) // 8)]
    out, chunk = [], chunk or len(ids)
    while seq.num_computed_tokens < len(ids):
        n = min(chunk, len(ids) - seq.num_computed_tokens)
        out.append(runner.execute([ScheduledSeq(seq, n)], all_rows=True))
        seq.num_computed_tokens += n
    return torch.cat(out)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("chunk", [None, 7, 1])
def test_logits_match_transformers(checkpoint, variant, chunk):
    path = checkpoint(variant)
    ids = torch.randint(3, 384, (1, 45), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(path)(ids).logits[0]
    got = our_logits(path, ids[0].tolist(), chunk)
    assert (got - expected).abs().max().item() <= 1e-4


def hf_greedy(model, prompt, n):
    out = model.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                         attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
    return out[0, len(prompt):].tolist()


PROMPTS = [[5 + (7 * i) % 300 for i in range(n)] for n in (3, 29, 64, 101)]


@pytest.mark.parametrize("variant", ["llama", "mistral", "qwen2", "mistral-window"])
@pytest.mark.parametrize("engine_opts", [
    dict(num_kv_blocks=64, max_num_batched_tokens=512),          # whole prompts in one step
    dict(num_kv_blocks=64, max_num_batched_tokens=24),           # chunked prefill interleaved with decodes
    dict(num_kv_blocks=22, max_num_batched_tokens=64),           # a pool so small that preemption happens
], ids=["plain", "chunked", "preempt"])
def test_greedy_batch_matches_transformers(checkpoint, variant, engine_opts):
    path = checkpoint(variant)
    hf = reference(path)
    llm = LLM(path, max_model_len=160, block_size=8, **engine_opts)
    outs = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=24, ignore_eos=True))
    for prompt, out in zip(PROMPTS, outs):
        assert out.outputs[0].token_ids == hf_greedy(hf, prompt, 24)
        assert out.outputs[0].finish_reason == "length"
    if engine_opts["num_kv_blocks"] == 22:
        assert llm.engine.scheduler.num_preemptions > 0
    assert llm.engine.block_manager.num_free_blocks == engine_opts["num_kv_blocks"]


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        LLM(str(tmp_path / "nope"))


def test_unsupported_architecture(checkpoint, tmp_path):
    path = shutil.copytree(checkpoint("llama"), tmp_path / "m")
    cfg = json.loads((path / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="unsupported architecture"):
        LLM(str(path))


def test_config_that_does_not_match_weights(checkpoint, tmp_path):
    path = shutil.copytree(checkpoint("llama"), tmp_path / "m")
    cfg = json.loads((path / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="does not match the weights"):
        LLM(str(path), max_model_len=128)
    cfg["intermediate_size"], cfg["num_hidden_layers"] = 128, 3
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="missing"):
        LLM(str(path), max_model_len=128)


def test_missing_weights(checkpoint, tmp_path):
    path = shutil.copytree(checkpoint("llama"), tmp_path / "m")
    os.remove(path / "model.safetensors")
    with pytest.raises(ModelLoadError, match="safetensors"):
        LLM(str(path), max_model_len=128)


def test_tied_embeddings_share_storage(checkpoint):
    llm = LLM(checkpoint("qwen2"), max_model_len=128)
    model = llm.engine.runner.model
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
