"""Decode ms/token of KV policies, side by side: the ratio to `full` (and across lengths) that noise cannot fake.

    python -m bench.decode_ratio --model engine/demo/model --length 32768 --policies full,streaming,actqkv \
        --rounds 8 --steps 16 --json bench/results/decode_ratio_demo.json

One engine per policy (and per length, with `--length 8192,32768`) holds one request (or `--batch` requests
decoding together), prefilled once. Then, round after round, each engine decodes `--steps` tokens in turn, so that
a slow spell of a shared machine hits every policy and length alike. Reported per policy and length: the median
over rounds of the round's mean ms per generated token (step time divided by the batch), the spread (min-max of
the round means), the ratio of medians to `full` at that length, and the growth over the same policy at the first
length; and the time inside the attention layers (their q/k/v/o projections included), where the policies differ
(the rest of a step is the same work for all). Prompts are synthetic token ids (speed does not depend on the
text); greedy, EOS ignored. A policy may carry knobs after a colon, e.g. `actqkv:per_head=false;cutoff=top_p`
(bench/actqkv_knobs.py's syntax); `tiles=false` reads the retrieved blocks from the pool every step instead of
through the TileCache (engine/kv/tile_cache.py).
"""
import argparse
import statistics
import time
from contextlib import contextmanager

import torch
from tqdm import tqdm

from bench.actqkv_knobs import parse_knobs
from bench.common import machine, write_json
from engine import LLM, SamplingParams
from engine.kv import retrieval_attention
from engine.layers.attention import Attention

CHUNK = 2048   # prefill tokens per step


def prefilled_engine(model: str, length: int, kv: dict, max_tokens: int, kv_cache_memory: str | None = None,
                     batch: int = 1):
    """An engine holding `batch` requests of `length` prompt tokens each, decoded to their first token."""
    # the first requests decode while the others prefill: room for those tokens too, so that none finishes early
    max_tokens += batch * (length // CHUNK + 1)
    extra = {"kv_cache_memory": kv_cache_memory} if kv_cache_memory else {}
    llm = LLM(model, max_model_len=length + max_tokens + 64, max_num_batched_tokens=CHUNK,
              enable_prefix_caching=False, **extra)
    engine = llm.engine
    vocab = llm.engine.runner.model_config.vocab_size
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    requests = [engine.add_request(f"decode-{b}", [5 + (i * 7919 + b * 104729) % (vocab - 5) for i in range(length)],
                                   params, kv=kv) for b in range(batch)]
    start = time.perf_counter()
    while any(r.seqs[0].num_output_tokens < 1 for r in requests):
        engine.step()
    return engine, time.perf_counter() - start


class AttentionTimer:
    """Wall time spent inside the model's attention layers, by forward hooks (CPU: there a layer's work is done
    when its forward returns)."""

    def __init__(self, engine):
        self.seconds, self._start = 0.0, 0.0
        for module in engine.runner.model.modules():
            if isinstance(module, Attention):
                module.register_forward_pre_hook(self._enter)
                module.register_forward_hook(self._leave)

    def _enter(self, *_):
        self._start = time.perf_counter()

    def _leave(self, *_):
        self.seconds += time.perf_counter() - self._start


@contextmanager
def tile_cache(enabled: bool):
    """Run with the retrieval path's TileCache on or off (the engine's default: on)."""
    before = retrieval_attention.TILE_CACHE
    retrieval_attention.TILE_CACHE = enabled
    try:
        yield
    finally:
        retrieval_attention.TILE_CACHE = before


def decode_round(engine, steps: int, batch: int = 1, timer: AttentionTimer | None = None) -> tuple[float, float]:
    """(ms per generated token, of which in attention layers) over `steps` decode steps of `batch` sequences."""
    attention_before = timer.seconds if timer else 0.0
    start = time.perf_counter()
    for _ in range(steps):
        engine.step()
    per_token = 1e3 / (steps * batch)
    attention = (timer.seconds - attention_before) * per_token if timer else None
    return (time.perf_counter() - start) * per_token, attention


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model directory (default: the bundled demo model)")
    ap.add_argument("--length", default="32768",
                    help="context length; comma-separated lengths are decoded side by side too (flatness)")
    ap.add_argument("--policies", default="full,actqkv", help="comma-separated; knobs after a colon")
    ap.add_argument("--budget", type=int, default=2048)
    ap.add_argument("--positions", default="bounded")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=16, help="decode steps per engine per round")
    ap.add_argument("--batch", type=int, default=1, help="requests decoding together (ms per token = step / batch)")
    ap.add_argument("--kv-cache-memory", default=None, help="per engine, e.g. 4GiB (default: the engine's)")
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from engine.demo import bundled_model_dir
    model = args.model or bundled_model_dir()
    lengths = [int(n) for n in args.length.split(",")]
    runs = [(n, p) for n in lengths for p in args.policies.split(",")]
    max_tokens = args.rounds * args.steps + 8   # +warm-up
    engines, prefill_s, timers, tiles = {}, {}, {}, {}
    for run in tqdm(runs, desc="prefill"):
        length, policy = run
        name, _, knobs = policy.partition(":")
        kv = {"policy": name, "budget": args.budget, "positions": args.positions, **dict(parse_knobs(knobs))}
        tiles[run] = kv.pop("tiles", True)
        with tile_cache(tiles[run]):
            engines[run], prefill_s[run] = prefilled_engine(model, length, kv, max_tokens, args.kv_cache_memory,
                                                            args.batch)
            timers[run] = AttentionTimer(engines[run]) if engines[run].runner.device.type == "cpu" else None
            decode_round(engines[run], 4)   # warm-up
    rounds, attention = {r: [] for r in runs}, {r: [] for r in runs}
    for _ in tqdm(range(args.rounds), desc="rounds"):
        for run in runs:
            with tile_cache(tiles[run]):
                total, in_attention = decode_round(engines[run], args.steps, args.batch, timers[run])
            rounds[run].append(total)
            attention[run].append(in_attention)
    medians = {r: statistics.median(v) for r, v in rounds.items()}
    attention = {r: statistics.median(v) if timers[r] else None for r, v in attention.items()}

    def ratio(numerator, denominator):
        return numerator / denominator if numerator and denominator else None

    rows = [{"policy": p, "context_len": n, "batch": args.batch, "budget": args.budget,
             "positions": args.positions, "prefill_s": prefill_s[n, p], "decode_ms_per_token": medians[n, p],
             "round_min_ms": min(rounds[n, p]), "round_max_ms": max(rounds[n, p]),
             "speedup_vs_full": ratio(medians.get((n, "full")), medians[n, p]),
             "attention_ms_per_token": attention[n, p],
             "attention_speedup_vs_full": ratio(attention.get((n, "full")), attention[n, p]),
             "growth_vs_shortest": medians[n, p] / medians[lengths[0], p]}
            for n, p in runs]
    print(f"{'length':>7} {'policy':>10} {'prefill s':>9} {'decode ms':>9} {'rounds min-max':>15} {'vs full':>7} "
          f"{'attention ms':>12} {'vs full':>7} {'vs ' + str(lengths[0]):>9}")
    for r in rows:
        shown = [f"{x:.2f}x" if x else "-" for x in (r["speedup_vs_full"], r["attention_speedup_vs_full"])]
        print(f"{r['context_len']:>7} {r['policy']:>10} {r['prefill_s']:9.2f} {r['decode_ms_per_token']:9.2f} "
              f"{r['round_min_ms']:7.2f}-{r['round_max_ms']:<7.2f} {shown[0]:>7} "
              f"{r['attention_ms_per_token'] or 0:12.2f} {shown[1]:>7} {r['growth_vs_shortest']:8.2f}x")
    write_json(args.json, {"machine": machine(), "model": model, "rounds": args.rounds, "steps": args.steps,
                           "threads": torch.get_num_threads(), "rows": rows})
    return rows


if __name__ == "__main__":
    main()
