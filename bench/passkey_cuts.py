"""Does the model find the pass key by its content or by its distance? Full attention, greedy, on passkey prompts
from which `c` tokens of noise between the needle and the question were cut out.

    python -m bench.passkey_cuts --length 2048 --samples 50 --cuts 0,1,25,32,125,128 --json FILE

The noise of the InfiniteBench format is one line repeated (25 tokens with the demo tokenizer), so the distance
from the needle to the question is a whole number of lines plus a constant. A model that copies the key by content
(the tokens after "The pass key is") answers every row alike; one that learned to find the digits at that distance
answers only the cuts of whole lines. Retrieval with `bounded` or `compressed` positions moves blocks of 32 tokens,
which cuts the distance by anything: such a model cannot answer through it.
"""
import argparse

from tqdm import tqdm

from bench.common import machine, write_json
from bench.longctx import make_samples
from engine import LLM, SamplingParams
from engine.demo.tasks import score


def cut_noise(ids: list[int], line: list[int], after: int, cut: int) -> list[int]:
    """`ids` without the `cut` tokens that start at the first full noise line beginning at or after `after`."""
    start = next(i for i in range(after, len(ids) - len(line)) if ids[i:i + len(line)] == line)
    return ids[:start] + ids[start + cut:]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model directory (default: the bundled demo model)")
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--cuts", default="0,1,25,32,125,128", help="tokens cut from the noise, comma-separated")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    llm = LLM(args.model, max_model_len=args.length + 64, enable_prefix_caching=False)
    tok = llm.get_tokenizer()
    samples = [s for s in make_samples(tok, "passkey", args.length, args.samples, args.seed) if s.depth < 0.6]
    line = tok.encode("\n" + "The grass is green.", add_special_tokens=False)   # a noise line's first tokens
    encoded = [tok.encode(s.prompt) for s in samples]
    cuts = [int(c) for c in args.cuts.split(",")]
    rows = []
    with tqdm(total=len(cuts) * len(samples), desc="cuts") as bar:
        for cut in cuts:
            prompts = [cut_noise(ids, line, int(0.7 * len(ids)), cut) for ids in encoded]
            outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)
            scores = [score(s, o.outputs[0].text) for s, o in zip(samples, outs)]
            bar.update(len(samples))
            rows.append({"cut": cut, "accuracy": sum(scores) / len(scores), "n": len(scores),
                         "answers": [o.outputs[0].text for o in outs]})
    print("| tokens cut | accuracy |\n|---|---|")
    for row in rows:
        print(f"| {row['cut']} | {row['accuracy']:.2f} |")
    if args.json:
        write_json(args.json, {"machine": machine(), "args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
