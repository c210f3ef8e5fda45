"""Long-context accuracy (and speed) on the synthetic tasks, per context length and needle depth.

    python -m bench.longctx --lengths 512,1024,2048 --tasks passkey,multikey --samples 50 --json bench/results/longctx.json

Fresh random instances (seeded by --seed, disjoint from the training seed), greedy decoding through the engine,
accuracy per task and length with a breakdown by depth bucket (0-20%, ..., 80-100%). With --timing it also measures
batch-1 prefill seconds and decode ms/token on one extra instance per (task, length).
"""
import argparse
import random
import time
from collections import defaultdict

from tqdm import tqdm

from bench.common import machine, write_json
from engine import LLM, SamplingParams
from engine.demo.tasks import GENERATORS, score

BUCKETS = 5


def make_samples(tokenizer, task: str, length: int, n: int, seed: int):
    rng = random.Random(f"{seed}-{task}-{length}")
    count = lambda text: len(tokenizer.encode(text, add_special_tokens=False))  # noqa: E731
    # depths spread evenly over the buckets, so every bucket gets n / BUCKETS samples
    return [GENERATORS[task](rng, length, (i % BUCKETS + rng.random()) / BUCKETS, count) for i in range(n)]


def evaluate(llm: LLM, samples, batch: int) -> list[float]:
    scores = []
    for start in range(0, len(samples), batch):
        chunk = samples[start:start + batch]
        params = [SamplingParams(temperature=0, max_tokens=s.max_tokens) for s in chunk]
        outs = llm.generate([s.prompt for s in chunk], params)
        scores += [score(s, o.outputs[0].text) for s, o in zip(chunk, outs)]
    return scores


def timing(llm: LLM, sample) -> tuple[float, float]:
    """Batch-1 prefill seconds and decode ms/token for one prompt."""
    def run(n):
        start = time.perf_counter()
        llm.generate([sample.prompt], SamplingParams(temperature=0, max_tokens=n, ignore_eos=True))
        return time.perf_counter() - start
    prefill = run(1)
    decode = (run(17) - prefill) / 16
    return prefill, decode * 1e3


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model directory (default: the bundled demo model)")
    parser.add_argument("--tasks", default="passkey,multikey,kv_retrieval")
    parser.add_argument("--lengths", default="512,1024,2048")
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--batch", type=int, default=8, help="requests submitted together")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--timing", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    tasks, lengths = args.tasks.split(","), [int(x) for x in args.lengths.split(",")]
    llm = LLM(args.model, max_model_len=max(lengths) + 256, max_num_batched_tokens=2048)
    tok = llm.get_tokenizer()
    rows = []
    with tqdm(total=len(tasks) * len(lengths) * args.samples, desc="longctx") as bar:
        for task in tasks:
            for length in lengths:
                samples = make_samples(tok, task, length, args.samples, args.seed)
                scores = []
                for start in range(0, len(samples), args.batch):
                    scores += evaluate(llm, samples[start:start + args.batch], args.batch)
                    bar.update(min(args.batch, len(samples) - start))
                by_bucket = defaultdict(list)
                for s, sc in zip(samples, scores):
                    by_bucket[min(BUCKETS - 1, int(s.depth * BUCKETS))].append(sc)
                row = {"task": task, "context_len": length, "policy": "full", "n": len(scores),
                       "accuracy": sum(scores) / len(scores),
                       "by_depth": [sum(v) / len(v) if v else None for _, v in sorted(by_bucket.items())]}
                if args.timing:
                    row["prefill_s"], row["decode_ms_per_token"] = timing(llm, samples[0])
                rows.append(row)
    print("| task | context | n | accuracy | by depth (0-20% … 80-100%) |")
    print("|---|---|---|---|---|")
    for r in rows:
        depths = ", ".join("–" if d is None else f"{d:.2f}" for d in r["by_depth"])
        print(f"| {r['task']} | {r['context_len']} | {r['n']} | {r['accuracy']:.3f} | {depths} |")
    write_json(args.json, {"machine": machine(), "args": vars(args), "results": rows})


if __name__ == "__main__":
    main()
