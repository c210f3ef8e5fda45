"""Training attention with bounded positions (engine.layers.bounded_dense) equals what the engine's retrieval
attention computes with `bounded` positions when every block is retrieved and each query is its own window."""
import random

import pytest
import torch

from engine import LLM, SamplingParams
from engine.layers.bounded_dense import near_boundaries

LOCAL, SINK, BLOCK = 64, 16, 16


def training_logprobs(llm: LLM, prompt: list[int], bounded: bool) -> torch.Tensor:
    """Log-probabilities of each next prompt token through the dense (training) forward: [len(prompt) - 1]."""
    model = llm.engine.runner.model
    for layer in model.model.layers:
        layer.self_attn.bounded = (LOCAL, BLOCK, SINK) if bounded else None
    try:
        ids = torch.tensor([prompt])
        with torch.no_grad():
            hidden = model.model(ids, torch.arange(len(prompt)), None, [None] * len(model.model.layers))
            logprobs = torch.log_softmax(model.lm_head(hidden[0]).float(), -1)
    finally:
        for layer in model.model.layers:
            layer.self_attn.bounded = None
    return logprobs[:-1].gather(1, ids[0, 1:, None])[:, 0]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_bounded_training_attention_equals_bounded_retrieval(checkpoint, arch):
    llm = LLM(checkpoint(arch), max_model_len=512, block_size=BLOCK, num_kv_blocks=64, dtype="float32")
    rng = random.Random(7)
    prompt = [rng.randrange(3, 200) for _ in range(300)]
    kv = {"policy": "quest", "budget": 100_000, "positions": "bounded", "window": 1, "local": LOCAL, "sink": SINK}
    out = llm.generate([prompt], SamplingParams(max_tokens=0, prompt_logprobs=0), kv=kv)[0]
    engine = torch.tensor([out.prompt_logprobs[i][prompt[i]].logprob for i in range(1, len(prompt))])
    bounded = training_logprobs(llm, prompt, bounded=True)
    assert (engine - bounded).abs().max() < 1e-4
    # the same positions kept true (plain causal attention) differ from the 81st token on: the test can fail
    plain = training_logprobs(llm, prompt, bounded=False)
    far = near_boundaries(len(prompt), LOCAL, BLOCK, SINK) > 0
    assert (engine - plain)[far[:-1]].abs().max() > 1e-2
    assert (engine - plain)[~far[:-1]].abs().max() < 1e-4
