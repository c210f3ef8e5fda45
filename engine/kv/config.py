"""Per-request KV retrieval settings: the policy, its token budget and the ActQKV knobs."""
import math
from dataclasses import dataclass

from engine.sampling_params import SamplingParamsError

POLICIES = ("full", "streaming", "infllm", "quest", "actqkv")
POSITIONS = ("original", "bounded", "compressed")
REPRESENTATIVE_POLICIES = ("infllm", "actqkv")   # the policies that score blocks by representative keys


@dataclass(frozen=True)
class KVConfig:
    policy: str = "full"
    budget: int = 2048            # tokens per layer per step: sink + local + selected blocks (mean over layers)
    sink: int = 64                # first tokens, always attended
    local: int = 512              # most recent tokens, always attended (causal inside a prefill window)
    positions: str = "original"   # original: true positions; bounded: sinks and retrieved blocks sit just past local;
    #                               compressed: they sit side by side, in order, just before local
    window: int = 256             # prefill query tokens per retrieval
    repr_topk: int = 8            # keys averaged into a block's representative (most attended in the local window)
    repr_count: int = 8           # representatives per block, one per run of tokens (gcd with the block size)
    per_head: bool = False        # actqkv: select per KV head (finds more needles, answers fewer: bench/RESULTS.md)
    tau: float = 0.1              # actqkv: softmax temperature of the information-density entropy
    cutoff: str = "entropy"       # actqkv: entropy | top_p
    top_p: float = 0.9            # actqkv with cutoff=top_p: softmax mass to keep
    warmup: int = 256             # actqkv: query tokens of uniform probe weights before the activation bias acts
    question_weight: float = 4.0  # actqkv: λ of the question term while prefilling (requests with a question)
    question_ids: tuple[int, ...] = ()   # actqkv: the request's question, tokenized (from its `question` text)
    reselect_every: int = 1       # decode: score and choose blocks every N steps, reuse the choice in between
    trace: bool = False           # record which blocks each layer's last query attended (benchmarks: recall)

    def validate(self, block_size: int):
        def check(ok, param, message):
            if not ok:
                raise SamplingParamsError(param, message)
        check(self.policy in POLICIES, "kv_policy", f"kv_policy must be one of {', '.join(POLICIES)}.")
        check(self.positions in POSITIONS, "kv_positions", f"kv_positions must be one of {', '.join(POSITIONS)}.")
        check(self.sink >= 0 and self.local >= block_size, "kv_local",
              f"kv_local must be at least the block size ({block_size}) and kv_sink non-negative.")
        check(self.budget >= self.sink_tokens(block_size) + self.local + block_size, "kv_budget",
              f"kv_budget must leave room for one block beyond sink and local "
              f"(at least {self.sink_tokens(block_size) + self.local + block_size}).")
        check(self.repr_topk >= 1 and self.repr_count >= 1, "kv_repr_count",
              "kv_repr_topk and kv_repr_count must be positive.")
        check(1 <= self.window <= self.local, "kv_window",
              "kv_window must be positive and at most kv_local (a window's own keys are local).")
        check(not self.question_ids or self.policy == "actqkv", "kv_question",
              "kv_question applies only to kv_policy=actqkv (the other policies have no question term).")
        check(self.question_weight >= 0, "kv_question_weight", "kv_question_weight must be non-negative.")
        check(self.reselect_every >= 1, "kv_reselect_every", "kv_reselect_every must be at least 1.")
        check(self.cutoff in ("entropy", "top_p") and self.tau > 0 and 0 < self.top_p <= 1, "kv_cutoff",
              "kv_cutoff must be entropy or top_p, with tau > 0 and top_p in (0, 1].")

    def representatives(self, block_size: int) -> int:
        """Representatives per block: the gcd of repr_count and the block size (repr_count when it divides it)."""
        return math.gcd(self.repr_count, block_size)

    def needs_received(self, block_size: int) -> bool:
        """Whether the representatives depend on the attention the keys received: not where each run of tokens is
        no longer than `repr_topk` (the defaults: runs of 4), whose keys are then all averaged."""
        runs = self.representatives(block_size)
        return self.policy in REPRESENTATIVE_POLICIES and self.repr_topk < block_size // runs

    def sink_tokens(self, block_size: int) -> int:
        """Sink tokens rounded up to whole blocks."""
        return -(-self.sink // block_size) * block_size

    def blocks_per_layer(self, block_size: int) -> int:
        """Retrieved blocks per layer so that sink + local (+ its partial block) + blocks ≤ budget."""
        if self.policy == "streaming":
            return 0
        return max(1, (self.budget - self.sink_tokens(block_size) - self.local) // block_size - 1)
