"""A request, and the sequences (one per `n`) that generate its completions."""
import time
from enum import Enum, auto

import torch

from engine.detokenizer import IncrementalDetokenizer
from engine.outputs import CompletionOutput, Logprob, RequestOutput
from engine.sampling_params import SamplingParams


class SequenceStatus(Enum):
    WAITING = auto()
    RUNNING = auto()
    FINISHED = auto()


class Sequence:
    """One completion being generated: its tokens, how many are in the KV cache, and its block table."""

    def __init__(self, seq_id: int, request: "Request", index: int, generator: torch.Generator,
                 detokenizer: IncrementalDetokenizer | None):
        self.seq_id = seq_id
        self.request = request
        self.index = index
        self.params = request.params
        self.token_ids = list(request.prompt_token_ids)
        self.num_prompt_tokens = len(self.token_ids)
        self.num_computed_tokens = 0
        self.block_table: list[int] = []
        self.block_keys: list[bytes] = []   # prefix-cache keys of its first full token blocks, hashed so far
        self.num_registered = 0             # of its blocks, those registered in the prefix cache (engine.block_manager)
        self.status = SequenceStatus.WAITING
        self.generator = generator
        self.detokenizer = detokenizer
        self.output_text = ""
        self.logprobs: list[dict[int, Logprob]] | None = [] if self.params.logprobs is not None else None
        # per prompt token (None for the first, which nothing predicts), if asked for
        # (the first sequence of a request only: the others have the same prompt)
        self.prompt_logprobs: list[dict[int, Logprob] | None] | None = (
            [None] if self.params.prompt_logprobs is not None and index == 0 else None)
        self.cumulative_logprob = 0.0
        self.finish_reason: str | None = None
        self.stop_reason: int | str | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def prefill_granularity(self) -> int:
        """Partial prefill chunks must be multiples of this: a retrieval policy's window, so that its windows (and
        so its outputs) do not depend on what else shares the step."""
        kv = self.request.kv_config
        return 1 if kv is None or kv.policy == "full" else kv.window

    @property
    def cacheable(self) -> bool:
        """Whether its KV is what any request with these tokens would compute, so blocks may be shared: full
        attention (a selection policy's windowed prefill changes the later layers' keys), and an exact MLP."""
        kv = self.request.kv_config
        return (kv is None or kv.policy == "full") and self.request.mlp_sparsity[0] in ("dense", "relu")

    @property
    def is_finished(self) -> bool:
        return self.status == SequenceStatus.FINISHED

    def finish(self, reason: str, stop_reason: int | str | None = None):
        self.status = SequenceStatus.FINISHED
        self.finish_reason = reason
        self.stop_reason = stop_reason

    def visible_text(self) -> str:
        """Output text minus a tail that might still grow into a stop string (never leak a partial stop)."""
        if self.is_finished or not self.params.stop:
            return self.output_text
        hold = max(len(s) for s in self.params.stop) - 1
        return self.output_text[:max(0, len(self.output_text) - hold)]

    def to_output(self) -> CompletionOutput:
        return CompletionOutput(
            index=self.index, text=self.visible_text(), token_ids=self.output_token_ids,
            cumulative_logprob=self.cumulative_logprob if self.logprobs is not None else None,
            logprobs=None if self.logprobs is None else list(self.logprobs), finish_reason=self.finish_reason, stop_reason=self.stop_reason)


class Request:
    """What a client asked for: a prompt, sampling parameters and `n` sequences."""

    def __init__(self, request_id: str, prompt: str | None, prompt_token_ids: list[int], params: SamplingParams,
                 arrival_time: float | None = None, kv_config=None, mlp_sparsity: tuple = ("dense", None)):
        self.request_id = request_id
        self.kv_config = kv_config  # engine.kv.KVConfig; None means plain full attention
        self.mlp_sparsity = mlp_sparsity  # (mode, target) for this request's decode steps
        self.prompt = prompt
        self.prompt_token_ids = prompt_token_ids
        self.params = params
        self.seqs: list[Sequence] = []
        self.arrival_time = arrival_time or time.monotonic()
        self.scheduled_time: float | None = None
        self.num_cached_tokens: int | None = None   # prompt tokens found in the prefix cache when first scheduled
        self.first_token_time: float | None = None
        self.last_token_time: float | None = None
        self.finished_time: float | None = None

    @property
    def finished(self) -> bool:
        return all(s.is_finished for s in self.seqs)

    def to_output(self) -> RequestOutput:
        return RequestOutput(
            request_id=self.request_id, prompt=self.prompt, prompt_token_ids=self.prompt_token_ids,
            outputs=[s.to_output() for s in self.seqs], finished=self.finished,
            prompt_logprobs=self.seqs[0].prompt_logprobs if self.seqs else None,
            metrics={"arrival_time": self.arrival_time, "scheduled_time": self.scheduled_time,
                     "first_token_time": self.first_token_time, "last_token_time": self.last_token_time,
                     "finished_time": self.finished_time}, num_cached_tokens=self.num_cached_tokens or 0)
