"""Request fields -> `SamplingParams`, with OpenAI's defaults for what the client left out."""
from api.errors import APIError
from api.protocol import SamplingFields
from engine.sampling_params import SamplingParams


def _logit_bias(bias: dict[str, float] | None) -> dict[int, float] | None:
    if not bias:
        return None
    try:
        return {int(k): float(v) for k, v in bias.items()}
    except ValueError:
        raise APIError(400, "logit_bias keys must be token ids (integers as strings).", "logit_bias") from None


def _or(value, default):
    return default if value is None else value


def to_sampling_params(req: SamplingFields, max_tokens: int | None, logprobs: int | None,
                       prompt_logprobs: int | None = None) -> SamplingParams:
    """Build and validate; raises `SamplingParamsError` (-> 400 naming the parameter). `prompt_logprobs`: what
    the endpoint needs besides the request's own `prompt_logprobs` (the larger is used)."""
    if req.prompt_logprobs is not None:
        if req.stream:
            raise APIError(400, "prompt_logprobs is not available with stream=true.", "prompt_logprobs")
        if not 0 <= req.prompt_logprobs <= 20:
            raise APIError(400, f"prompt_logprobs must be in [0, 20], got {req.prompt_logprobs}.", "prompt_logprobs")
        prompt_logprobs = max(req.prompt_logprobs, prompt_logprobs or 0)
    return SamplingParams(
        n=req.n, temperature=_or(req.temperature, 1.0), top_p=_or(req.top_p, 1.0), top_k=_or(req.top_k, 0),
        min_p=_or(req.min_p, 0.0), seed=req.seed, presence_penalty=_or(req.presence_penalty, 0.0),
        frequency_penalty=_or(req.frequency_penalty, 0.0), repetition_penalty=_or(req.repetition_penalty, 1.0),
        logit_bias=_logit_bias(req.logit_bias), max_tokens=max_tokens, min_tokens=req.min_tokens,
        stop=_or(req.stop, []), stop_token_ids=_or(req.stop_token_ids, []),
        include_stop_str_in_output=req.include_stop_str_in_output, ignore_eos=req.ignore_eos, logprobs=logprobs,
        prompt_logprobs=prompt_logprobs, skip_special_tokens=req.skip_special_tokens)


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
