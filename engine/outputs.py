"""What the engine hands back for each request (vLLM's names)."""
from dataclasses import dataclass, field


@dataclass
class Logprob:
    logprob: float
    rank: int                      # 1 = the most likely token
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None   # per generated token: the sampled token and the top alternatives
    finish_reason: str | None = None            # "stop" | "length" | "abort"
    stop_reason: int | str | None = None        # the stop string or stop token id that ended it

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    metrics: dict = field(default_factory=dict)
    num_cached_tokens: int = 0       # prompt tokens whose KV came from the prefix cache (when first scheduled)
    prompt_logprobs: list[dict[int, Logprob] | None] | None = None   # with SamplingParams.prompt_logprobs
