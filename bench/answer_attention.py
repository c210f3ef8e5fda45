"""Where the heads look while a model writes a multikey answer (teacher-forced, full attention).

    python -m bench.answer_attention --model bench/models/copy_digits --length 512 --samples 20

For each answer digit and each layer and head: where that head's strongest attention falls at the position that
predicts the digit, counted over the prompts. `T-3` is the target needle's token 3 before its final '.', so its
7 digits are T-7 … T-1; `N-3` is the same place in another needle; `question` is anything after the last needle
(the question and the answer written so far); `other` is the task line. A head that copies digit k from the
right needle shows `T` there; one that follows a digit to a needle that merely shares it shows `N`. Then, per
layer, the target's share of the attention that falls on needles: at the question's last "mentioned" (the token
after the key asked for) and at each answer digit (with n needles, 1/n is no preference).
"""
import argparse
from collections import Counter, defaultdict
from contextlib import contextmanager

import torch

from bench.longctx import make_samples
from engine.layers.attention import Attention
from engine.models.loader import load_model
from engine.tokenizer import load_tokenizer


@contextmanager
def captured_attention(probs: list):
    """Dense causal attention with the probabilities kept: probs gets one [heads, T, T] per layer per forward."""
    plain = Attention._attend

    def attend(self, q, k, v, mask):
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        group = self.heads // self.kv_heads
        k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        scores = (q @ k.transpose(-1, -2)) * self.scale
        future = torch.ones(scores.shape[-2:], dtype=torch.bool).triu(1)
        p = scores.masked_fill(future, float("-inf")).softmax(-1)
        probs.append(p[0])
        return (p @ v).transpose(1, 2)

    Attention._attend = attend
    try:
        yield
    finally:
        Attention._attend = plain


def needle_spans(tokens: list[str]) -> list[tuple[int, int, str]]:
    """(first token, final '.', digits) of each needle sentence."""
    spans = []
    for start in (i for i, t in enumerate(tokens) if t == "One"):
        end = tokens.index(".", start)
        spans.append((start, end, "".join(t for t in tokens[start:end] if t.isdigit())))
    return spans


def where(j: int, spans, target) -> str:
    span = next((s for s in spans if s[0] <= j <= s[1]), None)
    if span is None:
        return "question" if j > spans[-1][1] else "other"
    return ("T" if span is target else "N") + str(j - span[1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--digits", type=int, default=5, help="answer digits to report")
    args = parser.parse_args(argv)
    model, tok = load_model(args.model, torch.float32, torch.device("cpu")), load_tokenizer(args.model)
    counts: dict[tuple[int, int, int], Counter] = defaultdict(Counter)   # (digit, layer, head) -> places
    mass = 0   # [the question's key, then each digit; layer]: on the target ÷ on all needles, summed
    probs: list[torch.Tensor] = []
    for sample in make_samples(tok, "multikey", args.length, args.samples, args.seed):
        prompt = tok.encode(sample.prompt)
        ids = prompt + tok.encode(sample.answer, add_special_tokens=False)
        tokens = tok.convert_ids_to_tokens(ids)
        spans = needle_spans(tokens)
        target = next(s for s in spans if s[2] == sample.references[0])
        probs.clear()
        with torch.no_grad(), captured_attention(probs):
            model.forward_dense(torch.tensor([ids]))
        in_target = torch.zeros(len(ids), dtype=torch.bool)
        in_target[target[0]:target[1] + 1] = True
        in_needles = torch.zeros(len(ids), dtype=torch.bool)
        in_needles[spans[0][0]:spans[-1][1] + 1] = True
        mentioned = max(i for i, t in enumerate(tokens[:len(prompt)]) if t == "Ġmentioned")   # after the asked key
        at = [mentioned] + list(range(len(prompt), len(prompt) + args.digits))
        rows = torch.stack([p[:, at].sum(0) for p in probs], 1)   # [1 + digits, L, T]
        share = rows[..., in_target].sum(-1) / rows[..., in_needles].sum(-1)
        mass = mass + share
        for digit in range(args.digits):   # the answer's first token (' ') predicts digit 1
            for layer, p in enumerate(probs):
                for head, row in enumerate(p[:, len(prompt) + digit]):
                    counts[(digit, layer, head)][where(row.argmax().item(), spans, target)] += 1
    layers, heads = len(probs), probs[0].shape[0]
    print(f"{args.model}, multikey at {args.length} tokens, {args.samples} prompts: each head's strongest "
          "attention (the two commonest places: count)")
    for digit in range(args.digits):
        print(f"\npredicting digit {digit + 1}")
        for layer in range(layers):
            cells = [",".join(f"{k}:{v}" for k, v in counts[(digit, layer, h)].most_common(2)) for h in range(heads)]
            print(f"  layer {layer}: " + " | ".join(cells))
    print("\nthe target's share of the attention on needles (all heads), per layer: at the question's "
          "'mentioned' (after the key it asks for), and at the positions predicting each answer digit")
    for i, row in enumerate(mass / args.samples):
        print(f"  {'mentioned' if i == 0 else f'digit {i}':>9}: " + "  ".join(f"{v:.2f}" for v in row.tolist()))


if __name__ == "__main__":
    main()
