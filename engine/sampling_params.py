"""Per-request sampling parameters (vLLM's names and defaults) and their validation."""
from dataclasses import dataclass, field

_INT64_MAX = 2**63 - 1


class SamplingParamsError(ValueError):
    """An invalid sampling parameter; `param` names it."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0                      # 0 or -1: disabled
    min_p: float = 0.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] | None = None
    max_tokens: int | None = 16         # None: the rest of the context
    min_tokens: int = 0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    logprobs: int | None = None         # number of top alternatives per generated token (0: the sampled one only)
    prompt_logprobs: int | None = None  # the same for each prompt token after the first (no prefix-cache hits)
    skip_special_tokens: bool = True

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        if self.logit_bias:
            self.logit_bias = {int(k): float(v) for k, v in self.logit_bias.items()}
        if self.top_k == -1:
            self.top_k = 0
        self.validate()

    @property
    def greedy(self) -> bool:
        return self.temperature < 1e-5

    def validate(self, vocab_size: int | None = None):
        """Raise `SamplingParamsError` naming the first invalid parameter."""
        def check(ok: bool, param: str, message: str):
            if not ok:
                raise SamplingParamsError(param, message)

        check(isinstance(self.n, int) and self.n >= 1, "n", f"n must be at least 1, got {self.n}.")
        check(self.temperature >= 0, "temperature", f"temperature must be non-negative, got {self.temperature}.")
        check(0 < self.top_p <= 1, "top_p", f"top_p must be in (0, 1], got {self.top_p}.")
        check(isinstance(self.top_k, int) and self.top_k >= 0, "top_k",
              f"top_k must be -1 (disable), or at least 1, got {self.top_k}.")
        check(0 <= self.min_p <= 1, "min_p", f"min_p must be in [0, 1], got {self.min_p}.")
        check(self.seed is None or -_INT64_MAX - 1 <= self.seed <= _INT64_MAX, "seed",
              "seed must fit in a signed 64-bit integer.")
        check(-2 <= self.presence_penalty <= 2, "presence_penalty",
              f"presence_penalty must be in [-2, 2], got {self.presence_penalty}.")
        check(-2 <= self.frequency_penalty <= 2, "frequency_penalty",
              f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}.")
        check(0 < self.repetition_penalty <= 2, "repetition_penalty",
              f"repetition_penalty must be in (0, 2], got {self.repetition_penalty}.")
        check(self.max_tokens is None or (isinstance(self.max_tokens, int) and self.max_tokens >= 0),
              "max_tokens", f"max_tokens must be at least 0, got {self.max_tokens}.")
        check(isinstance(self.min_tokens, int) and 0 <= self.min_tokens
              and (self.max_tokens is None or self.min_tokens <= self.max_tokens), "min_tokens",
              f"min_tokens must be in [0, max_tokens], got {self.min_tokens}.")
        check(all(isinstance(s, str) and s for s in self.stop), "stop", "stop strings must be non-empty strings.")
        check(self.logprobs is None or (isinstance(self.logprobs, int) and 0 <= self.logprobs <= 20), "logprobs",
              f"logprobs must be in [0, 20], got {self.logprobs}.")
        check(self.prompt_logprobs is None or (isinstance(self.prompt_logprobs, int)
                                               and 0 <= self.prompt_logprobs <= 20), "prompt_logprobs",
              f"prompt_logprobs must be in [0, 20], got {self.prompt_logprobs}.")
        if self.logit_bias:
            check(all(-100 <= b <= 100 for b in self.logit_bias.values()), "logit_bias",
                  "logit_bias values must be in [-100, 100].")
        if vocab_size is not None:
            check(all(0 <= t < vocab_size for t in self.stop_token_ids), "stop_token_ids",
                  f"stop_token_ids must be in [0, {vocab_size}).")
            check(all(0 <= t < vocab_size for t in (self.logit_bias or {})), "logit_bias",
                  f"logit_bias token ids must be in [0, {vocab_size}).")
