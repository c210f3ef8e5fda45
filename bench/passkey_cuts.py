"""Does the model find the pass key by its content or by where it sits? Full attention, greedy, three probes:

    python -m bench.passkey_cuts --length 2048 --samples 50 --cuts 0,1,25,32,125,128 --json FILE
    python -m bench.passkey_cuts --length 256 --samples 60 --cuts 0,1,6,25 --styles exact,drop,cut,filler --copy

1. Cuts: passkey prompts from which `c` tokens of noise between the needle and the question were cut out. The noise
   of the InfiniteBench format is one line repeated (25 tokens with the demo tokenizer), so the distance from the
   needle to the question is a whole number of lines plus a constant. A model that copies the key by content (the
   tokens after "The pass key is") answers every row alike; one that learned to find the digits at that distance
   answers only the cuts of whole lines. Retrieval with `bounded` or `compressed` positions moves blocks of 32
   tokens, which cuts the distance by anything: such a model cannot answer through it.
2. `--styles`: fresh passkey prompts whose haystack has noise sentences left out (`drop`), spans cut mid-word
   (`cut`) or varied sentences instead of the repeated noise (`filler`): engine.demo.tasks.passkey's styles.
3. `--copy`: random numbers and words, then "Again:"; how much of the repeat (its first 16 tokens) the model
   copies before its first error. This is the in-context copy (induction) that content retrieval needs.
"""
import argparse
import random

from tqdm import tqdm

from bench.common import machine, write_json
from bench.longctx import make_samples
from engine import LLM, SamplingParams
from engine.demo.tasks import passkey, repeated_text, score


def cut_noise(ids: list[int], line: list[int], after: int, cut: int) -> list[int]:
    """`ids` without the `cut` tokens that start at the first full noise line beginning at or after `after`."""
    start = next(i for i in range(after, len(ids) - len(line)) if ids[i:i + len(line)] == line)
    return ids[:start] + ids[start + cut:]


def greedy(llm: LLM, prompts: list, max_tokens: int):
    return [o.outputs[0] for o in llm.generate(prompts, SamplingParams(temperature=0, max_tokens=max_tokens),
                                               use_tqdm=False)]


def cut_rows(llm: LLM, length: int, samples: int, seed: int, cuts: list[int], bar) -> list[dict]:
    tok = llm.get_tokenizer()
    chosen = [s for s in make_samples(tok, "passkey", length, samples, seed) if s.depth < 0.6]
    line = tok.encode("\n" + "The grass is green.", add_special_tokens=False)   # a noise line's first tokens
    encoded = [tok.encode(s.prompt) for s in chosen]
    rows = []
    for cut in cuts:
        outs = greedy(llm, [cut_noise(ids, line, int(0.7 * len(ids)), cut) for ids in encoded], 8)
        scores = [score(s, o.text) for s, o in zip(chosen, outs)]
        rows.append({"cut": cut, "accuracy": sum(scores) / len(scores), "n": len(scores),
                     "answers": [o.text for o in outs]})
        bar.update()
    return rows


def style_rows(llm: LLM, length: int, samples: int, seed: int, styles: list[str], bar) -> list[dict]:
    count = lambda text: len(llm.get_tokenizer().encode(text, add_special_tokens=False))  # noqa: E731
    rows = []
    for style in styles:
        rng = random.Random(f"{seed}-{style}-{length}")
        chosen = [passkey(rng, length, rng.random(), count, style=style) for _ in range(samples)]
        outs = greedy(llm, [s.prompt for s in chosen], 8)
        scores = [score(s, o.text) for s, o in zip(chosen, outs)]
        rows.append({"style": style, "accuracy": sum(scores) / len(scores), "n": len(scores),
                     "answers": [o.text for o in outs]})
        bar.update()
    return rows


def copied_before_error(want: list[int], got: list[int]) -> float:
    """The fraction of `want` that `got` reproduces before its first wrong token."""
    return next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got))) / len(want)


def copy_row(llm: LLM, length: int, samples: int, seed: int) -> dict:
    tok = llm.get_tokenizer()
    rng = random.Random(f"{seed}-repeat-{length}")
    count = lambda text: len(tok.encode(text, add_special_tokens=False))  # noqa: E731
    pairs = [repeated_text(rng, length, count) for _ in range(samples)]
    outs = greedy(llm, [first for first, _ in pairs], 16)
    copied = [copied_before_error(tok.encode(again, add_special_tokens=False)[:16], list(out.token_ids))
              for (_, again), out in zip(pairs, outs)]
    return {"copied_before_first_error": sum(copied) / len(copied), "n": len(copied), "length": length}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model directory (default: the bundled demo model)")
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--cuts", default="0,1,25,32,125,128", help="tokens cut from the noise, comma-separated")
    parser.add_argument("--styles", default="", help="haystack styles to answer, e.g. exact,drop,cut,filler")
    parser.add_argument("--copy", action="store_true", help="also the repeat-copy probe")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    llm = LLM(args.model, max_model_len=args.length + 64, enable_prefix_caching=False)
    cuts = [int(c) for c in args.cuts.split(",") if c]
    styles = [s for s in args.styles.split(",") if s]
    with tqdm(total=len(cuts) + len(styles) + args.copy, desc="probes") as bar:
        cut_table = cut_rows(llm, args.length, args.samples, args.seed, cuts, bar)
        style_table = style_rows(llm, args.length, args.samples, args.seed, styles, bar)
        copied = copy_row(llm, args.length, args.samples, args.seed) if args.copy else None
        bar.update(args.copy)
    print("| tokens cut | accuracy |\n|---|---|")
    for row in cut_table:
        print(f"| {row['cut']} | {row['accuracy']:.2f} |")
    if style_table:
        print("| haystack style | accuracy |\n|---|---|")
        for row in style_table:
            print(f"| {row['style']} | {row['accuracy']:.2f} |")
    if copied:
        print(f"repeat copy: {copied['copied_before_first_error']:.2f} of the first 16 tokens before the first error")
    if args.json:
        write_json(args.json, {"machine": machine(), "args": vars(args), "rows": cut_table, "styles": style_table,
                               "copy": copied})


if __name__ == "__main__":
    main()
