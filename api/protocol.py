"""Request bodies of the OpenAI-compatible API (OpenAI's fields and defaults, then vLLM's extras).

Unknown fields are accepted and ignored, as vLLM does (`extra="allow"`); non-finite floats are rejected.
"""
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_N = 128


class OpenAIModel(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


class StreamOptions(OpenAIModel):
    include_usage: bool | None = True
    continuous_usage_stats: bool | None = False


class ContentPart(OpenAIModel):
    type: str
    text: str | None = None


class ChatMessage(OpenAIModel):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None


class SamplingFields(OpenAIModel):
    """Fields shared by completions and chat completions."""
    model: str | None = None
    frequency_penalty: float | None = 0.0
    presence_penalty: float | None = 0.0
    logit_bias: dict[str, float] | None = None
    n: int = Field(1, ge=1, le=MAX_N)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    user: str | None = None
    # vLLM extras
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    min_tokens: int = 0
    skip_special_tokens: bool = True
    prompt_logprobs: int | None = None   # logprobs of each prompt token (not with stream)
    # actserve extras: this request's KV retrieval (defaults: the server's --kv-* flags)
    kv_policy: Literal["full", "streaming", "infllm", "quest", "actqkv"] | None = None
    kv_budget: int | None = Field(None, ge=1)
    kv_positions: Literal["original", "bounded", "compressed"] | None = None
    kv_question: str | None = Field(None, max_length=4096)   # ActQKV's question term: what the prompt is asked
    mlp_sparsity: str | None = Field(None, pattern=r"^(dense|relu|(teal|cats):[0-9.]+)$")

    def kv_overrides(self) -> dict:
        return {"policy": self.kv_policy, "budget": self.kv_budget, "positions": self.kv_positions,
                "question": self.kv_question}

    @model_validator(mode="after")
    def _stream_options_need_stream(self):
        if self.stream_options is not None and not self.stream:
            raise ValueError("Stream options can only be defined when `stream=True`.")
        return self


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool | None = False
    logprobs: int | None = None
    max_tokens: int | None = 16
    suffix: str | None = None
    add_special_tokens: bool = True


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool | None = False
    top_logprobs: int | None = None
    max_tokens: int | None = Field(None, description="deprecated alias of max_completion_tokens")
    max_completion_tokens: int | None = None
    echo: bool = False
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False
    chat_template_kwargs: dict[str, Any] | None = None


class TokenizeRequest(OpenAIModel):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool | None = None
    add_generation_prompt: bool = True

    @model_validator(mode="after")
    def _one_input(self):
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("Give exactly one of `prompt` and `messages`.")
        return self


class DetokenizeRequest(OpenAIModel):
    model: str | None = None
    tokens: list[int]

