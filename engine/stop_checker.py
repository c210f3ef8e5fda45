"""Decides after each new token whether a sequence is done: stop token, EOS, stop string, or length."""
from engine.sequence import Sequence


def append_and_check_stop(seq: Sequence, new_text: str, eos_token_ids: list[int], max_model_len: int):
    """Append the newest token's `new_text` to `seq`'s output and apply the stop rules.

    A stop token or EOS adds no text; a stop string is cut off together with anything after it (unless
    `include_stop_str_in_output`), also when it began in text appended by earlier tokens.
    """
    p = seq.params
    token = seq.token_ids[-1]
    may_stop = seq.num_output_tokens > p.min_tokens
    if may_stop and token in p.stop_token_ids:
        return seq.finish("stop", token)
    if may_stop and not p.ignore_eos and token in eos_token_ids:
        return seq.finish("stop")
    before = len(seq.output_text)
    seq.output_text += new_text
    if p.stop and new_text:
        search_from = max(0, before - max(len(s) for s in p.stop) + 1)
        hits = [(seq.output_text.find(s, search_from), s) for s in p.stop]
        hits = [(at, s) for at, s in hits if at >= 0]
        if hits:
            at, stop = min(hits)
            seq.output_text = seq.output_text[:at + len(stop) if p.include_stop_str_in_output else at]
            return seq.finish("stop", stop)
    if (p.max_tokens is not None and seq.num_output_tokens >= p.max_tokens) or seq.num_tokens >= max_model_len:
        seq.finish("length")
