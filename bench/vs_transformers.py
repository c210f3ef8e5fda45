"""The same weights through `transformers` generate and through actserve: batch-1 decode and 16 concurrent requests.

    python -m bench.vs_transformers --shapes tiny,tinyllama --json bench/results/vs_transformers.json

Single stream: decode tok/s = (N-1) / (time to generate N tokens - time to generate 1), greedy, fp32.
Concurrent: C requests through actserve's continuous batching against the same C requests run one after another
through `transformers`. The batch-1 roofline is weight bytes / memory read bandwidth, measured in the same run.
"""
import argparse
import gc
import time

import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM

from bench.common import checkpoint, machine, read_bandwidth, weight_bytes, write_json
from engine import LLM, SamplingParams


def hf_generate(model, prompt, n):
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                       do_sample=False)


def ours_generate(llm, prompts, n):
    llm.generate(prompts, SamplingParams(temperature=0, max_tokens=n, ignore_eos=True))


def timed(fn, *args, repeats=2) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - start)
    return best


def decode_rate(fn, target, prompt, n) -> float:
    fn(target, prompt, 2)  # warm-up
    return (n - 1) / (timed(fn, target, prompt, n) - timed(fn, target, prompt, 1))


def run_shape(shape: str, args, bar) -> dict:
    path = checkpoint(shape)
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(10, 4000, (args.prompt_len,), generator=gen).tolist()
    prompts = [torch.randint(10, 4000, (args.prompt_len,), generator=gen).tolist() for _ in range(args.concurrency)]
    result = {"shape": shape, "prompt_len": args.prompt_len, "decode_tokens": args.decode_tokens,
              "concurrency": args.concurrency, "concurrent_tokens": args.concurrent_tokens}

    bar.set_description(f"{shape}: bandwidth")
    result["read_bandwidth_gbs"] = read_bandwidth() / 1e9
    bar.update(1)

    bar.set_description(f"{shape}: transformers")
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    result["weight_bytes"] = weight_bytes(hf)
    result["hf_decode_tok_s"] = decode_rate(hf_generate, hf, prompt, args.decode_tokens)
    start = time.perf_counter()
    for p in prompts:
        hf_generate(hf, p, args.concurrent_tokens)
    result["hf_sequential_tok_s"] = args.concurrency * args.concurrent_tokens / (time.perf_counter() - start)
    del hf
    gc.collect()
    bar.update(1)

    bar.set_description(f"{shape}: actserve")
    llm = LLM(path, max_model_len=args.prompt_len + max(args.decode_tokens, args.concurrent_tokens) + 64,
              kv_cache_memory="2GiB", max_num_batched_tokens=args.prompt_len * 4,
              enable_prefix_caching=False)   # transformers computes every prompt: so do we here
    result["ours_decode_tok_s"] = decode_rate(lambda l, p, n: ours_generate(l, [p], n), llm, prompt,
                                              args.decode_tokens)
    ours_generate(llm, prompts[:2], 2)
    start = time.perf_counter()
    ours_generate(llm, prompts, args.concurrent_tokens)
    result["ours_concurrent_tok_s"] = args.concurrency * args.concurrent_tokens / (time.perf_counter() - start)
    del llm
    gc.collect()
    bar.update(1)

    roofline = result["read_bandwidth_gbs"] * 1e9 / result["weight_bytes"]
    result["roofline_tok_s"] = roofline
    result["hf_roofline_fraction"] = result["hf_decode_tok_s"] / roofline
    result["ours_roofline_fraction"] = result["ours_decode_tok_s"] / roofline
    result["single_stream_speedup"] = result["ours_decode_tok_s"] / result["hf_decode_tok_s"]
    result["concurrent_speedup"] = result["ours_concurrent_tok_s"] / result["hf_sequential_tok_s"]
    return result


def table(results: list[dict]) -> str:
    lines = ["| shape | weights | bandwidth | roofline | transformers b=1 | actserve b=1 | speedup | "
             f"transformers {results[0]['concurrency']}× sequential | actserve {results[0]['concurrency']} concurrent | "
             "speedup |", "|" + "---|" * 10]
    for r in results:
        lines.append(
            f"| {r['shape']} | {r['weight_bytes'] / 1e9:.2f} GB | {r['read_bandwidth_gbs']:.1f} GB/s | "
            f"{r['roofline_tok_s']:.1f} tok/s | {r['hf_decode_tok_s']:.1f} tok/s ({r['hf_roofline_fraction']:.0%}) | "
            f"{r['ours_decode_tok_s']:.1f} tok/s ({r['ours_roofline_fraction']:.0%}) | "
            f"{r['single_stream_speedup']:.2f}× | {r['hf_sequential_tok_s']:.1f} tok/s | "
            f"{r['ours_concurrent_tok_s']:.1f} tok/s | {r['concurrent_speedup']:.2f}× |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="tiny,tinyllama")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--concurrent-tokens", type=int, default=64)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    shapes = args.shapes.split(",")
    with tqdm(total=3 * len(shapes)) as bar:
        results = [run_shape(s, args, bar) for s in shapes]
    print(table(results))
    write_json(args.json, {"machine": machine(), "args": vars(args), "results": results})


if __name__ == "__main__":
    main()
