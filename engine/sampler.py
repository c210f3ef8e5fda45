"""Turns a step's logits into next tokens: logit bias, penalties, temperature, top-k/top-p/min-p, seeded draws.

Rows are processed with vectorised tensor ops; each draw uses the sequence's own generator, so a seeded request
gives the same tokens whatever else shares its batch.
"""
import torch

from engine.outputs import Logprob
from engine.sequence import Sequence


class Sampler:
    def __init__(self, vocab_size: int, eos_token_ids: list[int], decode_token):
        self.vocab_size = vocab_size
        self.eos_token_ids = eos_token_ids
        self.decode_token = decode_token

    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
        """Sample one token per row of `logits` [B, V] and record logprobs on the sequences that asked."""
        logits = logits[:, :self.vocab_size].float()
        raw_logprobs = torch.log_softmax(logits, dim=-1) if any(s.logprobs is not None for s in seqs) else None
        logits = self._apply_bias_and_penalties(logits.clone(), seqs)
        tokens = self._draw(logits, seqs)
        if raw_logprobs is not None:
            self._record_logprobs(raw_logprobs, tokens, seqs)
        return tokens

    def _apply_bias_and_penalties(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        for i, seq in enumerate(seqs):
            p = seq.params
            row = logits[i]
            if p.logit_bias:
                ids = torch.tensor(list(p.logit_bias.keys()), dtype=torch.long, device=row.device)
                row.index_add_(0, ids, torch.tensor(list(p.logit_bias.values()), dtype=row.dtype, device=row.device))
            if seq.num_output_tokens < p.min_tokens:
                stops = [t for t in (*p.stop_token_ids, *([] if p.ignore_eos else self.eos_token_ids))
                         if t < self.vocab_size]
                row[stops] = float("-inf")
            if p.repetition_penalty != 1.0:
                seen = torch.tensor(sorted(set(seq.token_ids)), dtype=torch.long, device=row.device)
                vals = row[seen]
                row[seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
            if (p.presence_penalty or p.frequency_penalty) and seq.num_output_tokens:
                out = torch.tensor(seq.output_token_ids, dtype=torch.long, device=row.device)
                counts = torch.bincount(out, minlength=row.shape[0])[:row.shape[0]].to(row.dtype)
                row -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(row.dtype)
        return logits

    def _draw(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
        greedy = logits.argmax(dim=-1).tolist()
        tokens = []
        for i, seq in enumerate(seqs):
            p = seq.params
            if p.greedy:
                tokens.append(greedy[i])
                continue
            probs = filtered_probs(logits[i], p.temperature, p.top_k, p.top_p, p.min_p)
            tokens.append(int(torch.multinomial(probs, 1, generator=seq.generator)))
        return tokens

    def _record_logprobs(self, logprobs: torch.Tensor, tokens: list[int], seqs: list[Sequence]):
        for i, seq in enumerate(seqs):
            if seq.logprobs is None:
                continue
            entry = self._entry(logprobs[i], tokens[i], seq.params.logprobs)
            seq.logprobs.append(entry)
            seq.cumulative_logprob += entry[tokens[i]].logprob

    def record_prompt_logprobs(self, logits: torch.Tensor, seq: Sequence, first: int):
        """Logprobs of the prompt tokens at first + 1 .. first + len(logits) (row j predicts first + 1 + j), with
        the top `prompt_logprobs` alternatives; rows already recorded (a preempted sequence computes its prompt
        again) are skipped."""
        logprobs = torch.log_softmax(logits[:, :self.vocab_size].float(), dim=-1)
        k = seq.params.prompt_logprobs
        for j in range(max(0, len(seq.prompt_logprobs) - first - 1), logprobs.shape[0]):
            seq.prompt_logprobs.append(self._entry(logprobs[j], seq.token_ids[first + 1 + j], k))

    def _entry(self, row: torch.Tensor, chosen: int, k: int) -> dict[int, Logprob]:
        """The chosen token's logprob and rank, and the top `k` alternatives."""
        entry = {chosen: Logprob(float(row[chosen]), int((row > row[chosen]).sum()) + 1, self.decode_token(chosen))}
        if k:
            top_vals, top_ids = row.topk(k)
            for rank, (tid, val) in enumerate(zip(top_ids.tolist(), top_vals.tolist()), start=1):
                entry.setdefault(tid, Logprob(val, rank, self.decode_token(tid)))
        return entry


def filtered_probs(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, min_p: float) -> torch.Tensor:
    """Probabilities of one row after temperature and the top-k, top-p and min-p filters (renormalised)."""
    logits = logits / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        mass_before = sorted_probs.cumsum(-1) - sorted_probs
        drop = mass_before >= top_p
        drop[0] = False
        probs = probs.scatter(0, order, sorted_probs.masked_fill(drop, 0.0))
    if min_p > 0.0:
        probs = probs.masked_fill(probs < min_p * probs.max(), 0.0)
    return probs / probs.sum()
