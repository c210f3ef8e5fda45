"""Intra-op threads per phase: batch-1 decode, batch-16 decode and a 512-token prefill at 1..N threads.

    python -m bench.threads --shapes tiny,tinyllama --json bench/results/threads.json

Each figure is the best of a few repeats, all measured in one run on the same engine.
"""
import argparse
import os
import time

import torch
from tqdm import tqdm

from bench.common import checkpoint, machine, write_json
from engine import LLM, SamplingParams


def timed(fn, repeats=3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure(llm: LLM, threads: int) -> dict:
    runner = llm.engine.runner
    runner.decode_threads = runner.prefill_threads = threads
    gen = torch.Generator().manual_seed(threads)
    prompts = [torch.randint(10, 4000, (32,), generator=gen).tolist() for _ in range(16)]
    long_prompt = torch.randint(10, 4000, (512,), generator=gen).tolist()

    def run(batch, n):
        llm.generate(batch, SamplingParams(temperature=0, max_tokens=n, ignore_eos=True))
    decode1 = (timed(lambda: run(prompts[:1], 17)) - timed(lambda: run(prompts[:1], 1))) / 16
    decode16 = (timed(lambda: run(prompts, 9)) - timed(lambda: run(prompts, 1))) / 8
    prefill = timed(lambda: run([long_prompt], 1))
    return {"threads": threads, "decode_b1_ms": decode1 * 1e3, "decode_b16_ms": decode16 * 1e3,
            "prefill_512_ms": prefill * 1e3}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="tiny,tinyllama")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    counts = list(range(1, (os.cpu_count() or 1) + 1))
    results = []
    with tqdm(total=len(counts) * len(args.shapes.split(","))) as bar:
        for shape in args.shapes.split(","):
            llm = LLM(checkpoint(shape), max_model_len=1024, kv_cache_memory="1GiB", max_num_batched_tokens=1024,
                      enable_prefix_caching=False)   # the same prompts are timed again and again
            run = lambda: llm.generate([[5] * 8], SamplingParams(max_tokens=2))  # noqa: E731  (warm-up)
            run()
            for n in counts:
                results.append({"shape": shape, **measure(llm, n)})
                bar.update(1)
    print("| shape | threads | decode b=1 ms/step | decode b=16 ms/step | prefill 512 tokens ms |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['shape']} | {r['threads']} | {r['decode_b1_ms']:.1f} | {r['decode_b16_ms']:.1f} | "
              f"{r['prefill_512_ms']:.0f} |")
    write_json(args.json, {"machine": machine(), "results": results})


if __name__ == "__main__":
    main()
