"""Shared pieces of the benchmarks: random checkpoints by shape, bandwidth, timing, result files."""
import json
import os
import platform
import time

import torch

from engine.models.random_checkpoint import TINY, TINYLLAMA, make_random_checkpoint

SHAPES = {"tiny": dict(TINY, hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
                       num_key_value_heads=4, vocab_size=4096, max_position_embeddings=4096),
          "tinyllama": TINYLLAMA}
CACHE = os.environ.get("ACTSERVE_BENCH_CACHE", "/tmp/actserve-bench")


def checkpoint(shape: str) -> str:
    """A random-weight Llama checkpoint of `shape`, made once and cached on disk."""
    path = os.path.join(CACHE, shape)
    if not os.path.isfile(os.path.join(path, "model.safetensors")):
        make_random_checkpoint(path, arch="llama", init_std=0.02, **SHAPES[shape])
    return path


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes a batch-1 decode step reads: every parameter except the embedding table (only one row is read)."""
    total = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "embed_tokens" not in n)
    if getattr(model.config, "tie_word_embeddings", False):
        total += model.lm_head.weight.numel() * model.lm_head.weight.element_size()
    return total


def read_bandwidth(gib: float = 1.0, repeats: int = 3) -> float:
    """Main-memory read bandwidth in bytes/s: matrix-vector products over distinct matrices that overflow the
    caches (the access pattern of a batch-1 decode), best of `repeats`."""
    rows, cols = 4096, 4096
    mats = [torch.randn(rows, cols) for _ in range(max(1, int(gib * 2**30 / (rows * cols * 4))))]
    x = torch.randn(1, cols)
    best = 0.0
    for _ in range(repeats + 1):
        start = time.perf_counter()
        for m in mats:
            torch.nn.functional.linear(x, m)
        best = max(best, len(mats) * rows * cols * 4 / (time.perf_counter() - start))
    return best


def machine() -> dict:
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def write_json(path: str | None, payload):
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(payload, f, indent=2)
