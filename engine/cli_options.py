"""Command-line flags for every `EngineConfig` field, each also readable from an `ACTSERVE_*` env var."""
import argparse
import os
import typing
from dataclasses import MISSING, fields

from engine.config import EngineConfig

_HELP = {
    "model": "model directory (Hugging Face layout); default: the bundled demo model",
    "tokenizer": "tokenizer directory (default: the model directory)",
    "dtype": "auto | float32 | bfloat16 | float16",
    "device": "auto | cpu | cuda",
    "max_model_len": "context length served (default: the model's max_position_embeddings)",
    "block_size": "tokens per KV cache block",
    "enable_prefix_caching": "reuse the KV blocks of earlier requests whose tokens start the same way (full attention, "
                             "dense or relu MLP) (true/false)",
    "kv_cache_memory": "memory for the KV cache, e.g. 2GiB",
    "num_kv_blocks": "number of KV blocks (overrides --kv-cache-memory)",
    "max_num_seqs": "sequences running at once",
    "max_num_batched_tokens": "tokens per engine step; longer prompts are prefilled in chunks",
    "decode_threads": "intra-op threads for decode-only steps (default: all cores)",
    "prefill_threads": "intra-op threads for steps that prefill (default: all cores)",
    "seed": "seed for requests that give none",
    "kv_policy": "KV selection policy: full | streaming | infllm | quest | actqkv",
    "kv_budget": "KV tokens attended per layer per step (sink + local + retrieved blocks)",
    "kv_sink": "first tokens always attended",
    "kv_local": "most recent tokens always attended",
    "kv_positions": "original | bounded (retrieved blocks attended just past the local window) | compressed "
                    "(side by side in order, just before the local window)",
    "kv_window": "prefill query tokens per retrieval",
    "kv_repr_topk": "most-attended keys averaged into a block representative",
    "kv_repr_count": "representatives per block, each the mean of the most-attended keys of one run of tokens; "
                     "a block scores as its best (the gcd of this and the block size)",
    "kv_per_head": "actqkv: select blocks per KV head (true/false; default false: per head finds more needle "
                   "blocks but the demo model answered fewer passkeys, 0.54 vs 0.62)",
    "kv_tau": "actqkv: softmax temperature of the information-density entropy",
    "kv_cutoff": "actqkv: entropy | top_p",
    "kv_top_p": "actqkv: softmax mass kept by the top_p cut-off",
    "kv_warmup": "actqkv: query tokens of uniform probe weights before the activation bias",
    "kv_reselect_every": "decode: score and choose the retrieved blocks every N steps and reuse the choice in "
                         "between (and whenever a block leaves the local window); 1: every step",
    "kv_offload": "keep the KV pool in host memory (pinned on CUDA) and the blocks a step attends in a device LRU "
                  "cache; retrieval policies only (true/false)",
    "kv_device_cache_blocks": "with --kv-offload: blocks per layer in the device cache (bounds device-resident KV; "
                              "default: 512, or more if the default KV settings need more)",
    "mlp_sparsity": "dense | relu | teal:TARGET | cats:TARGET (thresholds from `actserve calibrate`)",
    "mlp_sparse_max_batch": "decode steps with more sequences than this run the MLPs dense",
    "mlp_sparse_max_density": "union density of active rows above which dense kernels are used (default: "
                              "measured on the model's MLP shape and device at first use)",
}


def _parse_bool(text) -> bool:
    if isinstance(text, bool):
        return text
    if str(text).lower() in ("1", "true", "yes", "on"):
        return True
    if str(text).lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _type_of(annotation):
    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    kind = str if str in args else args[0]
    return _parse_bool if kind is bool else kind


def add_engine_arguments(parser: argparse.ArgumentParser, env: dict | None = None):
    """Add `--flag` for each engine option; an `ACTSERVE_FLAG` variable in `env` supplies its default."""
    env = os.environ if env is None else env
    hints = typing.get_type_hints(EngineConfig)
    for f in fields(EngineConfig):
        flag = "--" + f.name.replace("_", "-")
        default = env.get("ACTSERVE_" + f.name.upper(), None if f.default is MISSING else f.default)
        parser.add_argument(flag, dest=f.name, type=_type_of(hints[f.name]), default=default,
                            help=f"{_HELP.get(f.name, '')} [env ACTSERVE_{f.name.upper()}]")


def engine_config_from_args(args: argparse.Namespace) -> EngineConfig:
    return EngineConfig(**{f.name: getattr(args, f.name) for f in fields(EngineConfig)})
