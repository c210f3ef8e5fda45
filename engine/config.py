"""Engine configuration: one dataclass that flags, env vars and `LLM(**kwargs)` all fill."""
import re
from dataclasses import dataclass, fields

_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6, "mib": 2**20,
          "g": 2**30, "gb": 10**9, "gib": 2**30}


def parse_bytes(value: int | str) -> int:
    """`"2GiB"`, `"512MB"`, `"1g"` or a plain integer -> bytes."""
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"cannot read a size from {value!r} (examples: 2GiB, 512MB, 1073741824)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


@dataclass
class EngineConfig:
    model: str | None = None                  # a Hugging Face-style directory
    tokenizer: str | None = None              # defaults to the model directory
    dtype: str = "auto"                       # auto: float32 on CPU, bfloat16 on CUDA
    device: str = "auto"                      # auto: cuda if available, else cpu
    max_model_len: int | None = None          # defaults to the model's max_position_embeddings
    block_size: int = 32                      # tokens per KV block
    enable_prefix_caching: bool = True        # reuse the KV blocks of earlier prompts with the same start
    kv_cache_memory: int | str = "2GiB"       # memory for the KV block pool
    num_kv_blocks: int | None = None          # overrides kv_cache_memory when set
    max_num_seqs: int = 64                    # sequences running at once
    max_num_batched_tokens: int = 512         # tokens per engine step (prefill chunk budget)
    decode_threads: int | None = None         # intra-op threads for decode-only steps (None: all cores)
    prefill_threads: int | None = None        # intra-op threads for steps that prefill
    seed: int = 0                             # seeds the generators of requests that give no seed
    kv_policy: str = "full"                   # full | streaming | infllm | quest | actqkv
    kv_budget: int = 2048                     # KV tokens attended per layer per step under a selection policy
    kv_sink: int = 64                         # first tokens always attended
    kv_local: int = 512                       # most recent tokens always attended
    kv_positions: str = "original"            # original | bounded | compressed (engine.kv.retrieval_attention)
    kv_window: int = 256                      # prefill query tokens per retrieval
    kv_repr_topk: int = 8                     # keys averaged into a block representative (measured: RESULTS.md)
    kv_repr_count: int = 8                    # representatives per block (one per run of tokens; measured)
    kv_per_head: bool = False                 # actqkv: select blocks per KV head (measured: bench/RESULTS.md)
    kv_tau: float = 0.1                       # actqkv: temperature of the density entropy
    kv_cutoff: str = "entropy"                # actqkv: entropy | top_p
    kv_top_p: float = 0.9                     # actqkv: mass kept by the top_p cut-off
    kv_warmup: int = 256                      # actqkv: query tokens before the activation bias weights the probe
    kv_question_weight: float = 4.0           # actqkv: weight of the question term (requests with a kv question)
    kv_reselect_every: int = 1                # decode: choose blocks every N steps (1: every step; measured)
    kv_offload: bool = False                  # KV pool in host memory, attended blocks in a device LRU cache
    kv_device_cache_blocks: int | None = None # with kv_offload: device cache blocks per layer (None: 512, or what
                                              # the default KV settings need for one window and one step, if more)
    mlp_sparsity: str = "dense"               # dense | relu | teal:TARGET | cats:TARGET (calibrated)
    mlp_sparse_max_batch: int = 4             # decode steps with more sequences run the MLPs dense
    mlp_sparse_max_density: float | None = None   # a denser union of active rows uses dense kernels (None: measured)

    def __post_init__(self):
        if self.block_size < 1 or self.max_num_seqs < 1 or self.max_num_batched_tokens < 1:
            raise ValueError("block_size, max_num_seqs and max_num_batched_tokens must be positive")
        self.kv_cache_memory = parse_bytes(self.kv_cache_memory)

    def kv_config(self, **overrides):
        """The default KV retrieval settings, with per-request `overrides` (field names without `kv_`)."""
        from engine.kv.config import KVConfig
        names = {f.name for f in fields(KVConfig)}
        values = {n: getattr(self, "kv_" + n) for n in names if hasattr(self, "kv_" + n)}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return KVConfig(**values)

    @classmethod
    def from_kwargs(cls, **kwargs) -> "EngineConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"unknown engine option(s): {', '.join(unknown)}")
        return cls(**kwargs)
