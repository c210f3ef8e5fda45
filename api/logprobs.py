"""Logprobs in the two OpenAI shapes: legacy completions (`tokens`/`token_logprobs`/...) and chat (`content`)."""
from engine.outputs import Logprob

LOGPROB_FLOOR = -9999.0   # -inf is not valid JSON


def clamp(value: float) -> float:
    return value if value > LOGPROB_FLOOR else LOGPROB_FLOOR


def _top(entry: dict[int, Logprob], k: int) -> list[tuple[int, Logprob]]:
    return sorted(entry.items(), key=lambda kv: kv[1].rank)[:k]


def _text(token_id: int, lp: Logprob) -> str:
    return lp.decoded_token if lp.decoded_token is not None else f"<{token_id}>"


def completion_logprobs(token_ids: list[int], entries: list[dict[int, Logprob]], k: int,
                        text_offset: int = 0) -> dict:
    """Legacy shape for generated tokens; `text_offset` counts from the start of the returned text."""
    out = {"text_offset": [], "token_logprobs": [], "tokens": [], "top_logprobs": []}
    for token_id, entry in zip(token_ids, entries):
        chosen = entry[token_id]
        text = _text(token_id, chosen)
        out["tokens"].append(text)
        out["token_logprobs"].append(clamp(chosen.logprob))
        out["text_offset"].append(text_offset)
        text_offset += len(text)
        top = {}
        for tid, lp in _top(entry, k):
            top.setdefault(_text(tid, lp), clamp(lp.logprob))
        out["top_logprobs"].append(top if k else None)
    return out


def prompt_completion_logprobs(token_ids: list[int], entries: list, k: int, first_text: str) -> dict:
    """Legacy shape for an echoed prompt (`entries` from RequestOutput.prompt_logprobs). Its first token, whose
    text is `first_text`, has no logprob: nothing predicts it, so its `token_logprobs` and `top_logprobs` are
    null."""
    rest = completion_logprobs(token_ids[1:], entries[1:], k, len(first_text))
    return {"text_offset": [0] + rest["text_offset"], "token_logprobs": [None] + rest["token_logprobs"],
            "tokens": [first_text] + rest["tokens"], "top_logprobs": [None] + rest["top_logprobs"]}


def joined(*parts: dict) -> dict:
    """Legacy logprobs of consecutive texts (an echoed prompt, then the completion) as one."""
    return {key: [v for part in parts for v in part[key]] for key in parts[0]}


def chat_logprobs(token_ids: list[int], entries: list[dict[int, Logprob]], k: int) -> dict:
    def item(tid: int, lp: Logprob) -> dict:
        text = _text(tid, lp)
        return {"token": text, "logprob": clamp(lp.logprob), "bytes": list(text.encode("utf-8"))}
    return {"content": [{**item(t, e[t]), "top_logprobs": [item(tid, lp) for tid, lp in _top(e, k)]}
                        for t, e in zip(token_ids, entries)]}


def prompt_logprobs_json(entries: list | None) -> list | None:
    """vLLM's `prompt_logprobs` field: per prompt token None (the first) or {token id: {logprob, rank,
    decoded_token}} with the prompt's token and the top alternatives."""
    if entries is None:
        return None
    return [None if e is None else {str(t): {"logprob": clamp(lp.logprob), "rank": lp.rank,
                                             "decoded_token": lp.decoded_token} for t, lp in e.items()}
            for e in entries]
