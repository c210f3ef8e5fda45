"""Serving load test with `vllm bench serve`'s definitions, against any OpenAI-compatible server.

    python -m bench.serving --base-url http://127.0.0.1:8000 --endpoint completions --num-prompts 100 \
        --input-len 128 --output-len 64 --max-concurrency 4 --ignore-eos --goodput ttft:500 tpot:50

Arrivals: `--request-rate inf` sends everything at t=0; otherwise gaps are gamma(shape=burstiness,
scale=1/(rate*burstiness)) (burstiness 1 = Poisson), capped by `--max-concurrency` in flight. Every request streams
with usage. TTFT = first content chunk; ITL = gaps between content chunks; TPOT = (E2EL - TTFT) / (output tokens - 1);
goodput = requests per second that meet every `--goodput` SLO (ms).
"""
import argparse
import asyncio
import json
import random
import string
import sys
import time
from dataclasses import asdict, dataclass, field

import httpx
import numpy as np
from tqdm import tqdm


@dataclass
class Prompt:
    text: str
    input_len: int                      # the server's count where it has /tokenize, else an estimate
    output_len: int
    references: list[str] = field(default_factory=list)


@dataclass
class Result:
    ok: bool = False
    error: str = ""
    start: float = 0.0
    ttft: float = 0.0
    e2el: float = 0.0
    itl: list[float] = field(default_factory=list)
    chunk_times: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    output_tokens: int = 0
    text: str = ""


class Tokens:
    """Token counts from the server's /tokenize and /detokenize (vLLM's extension); a word estimate without them."""

    def __init__(self, client: httpx.Client, model: str):
        self.client, self.model = client, model
        try:
            self.available = client.post("/tokenize", json={"model": model, "prompt": "probe"}).status_code == 200
        except httpx.HTTPError:
            self.available = False

    def ids(self, text: str) -> list[int]:
        return self.client.post("/tokenize", json={"model": self.model, "prompt": text,
                                                   "add_special_tokens": False}).json()["tokens"]

    def count(self, text: str) -> int:
        return len(self.ids(text)) if self.available else max(1, round(len(text.split()) * 1.3))

    def truncate(self, text: str, n: int) -> str:
        if not self.available:
            return " ".join(text.split()[:max(1, round(n / 1.3))])
        ids = self.ids(text)[:n]
        return self.client.post("/detokenize", json={"model": self.model, "tokens": ids}).json()["prompt"]


def random_prompts(tokens: Tokens, n: int, input_len: int, output_len: int, seed: int) -> list[Prompt]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = " ".join("".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 8)))
                         for _ in range(input_len * 2))
        text = tokens.truncate(words, input_len)
        out.append(Prompt(text, tokens.count(text), output_len))
    return out


def passkey_prompts(tokens: Tokens, n: int, input_len: int, seed: int) -> list[Prompt]:
    from engine.demo.tasks import passkey
    rng = random.Random(seed)
    out = []
    for i in range(n):
        sample = passkey(rng, input_len, (i + 0.5) / n, tokens.count)
        out.append(Prompt(sample.prompt, tokens.count(sample.prompt), sample.max_tokens, sample.references))
    return out


async def send(client: httpx.AsyncClient, args, prompt: Prompt) -> Result:
    body = {"model": args.model, "max_tokens": prompt.output_len, "temperature": 0.0, "stream": True,
            "stream_options": {"include_usage": True}}
    if args.ignore_eos:
        body["ignore_eos"] = True
    if args.endpoint == "chat":
        path = "/v1/chat/completions"
        body["messages"] = [{"role": "user", "content": prompt.text}]
    else:
        path = "/v1/completions"
        body["prompt"] = prompt.text
    res = Result(start=time.perf_counter())
    last = res.start
    try:
        async with client.stream("POST", path, json=body) as r:
            if r.status_code != 200:
                res.error = f"HTTP {r.status_code}: {(await r.aread()).decode()[:200]}"
                return res
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    res.error = chunk["error"].get("message", "error")
                    return res
                if chunk.get("usage"):
                    res.prompt_tokens = chunk["usage"]["prompt_tokens"]
                    res.output_tokens = chunk["usage"]["completion_tokens"]
                for choice in chunk.get("choices") or []:
                    piece = choice.get("text") if args.endpoint == "completions" else \
                        (choice.get("delta") or {}).get("content")
                    if not piece:
                        continue
                    now = time.perf_counter()
                    if not res.text:
                        res.ttft = now - res.start
                    else:
                        res.itl.append(now - last)
                    res.chunk_times.append(now)
                    last = now
                    res.text += piece
        res.e2el = time.perf_counter() - res.start
        res.output_tokens = res.output_tokens or len(res.chunk_times)
        res.prompt_tokens = res.prompt_tokens or prompt.input_len
        res.ok = res.output_tokens > 0
        if not res.ok:
            res.error = "no tokens"
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        res.error = f"{type(exc).__name__}: {exc}"
    return res


def arrival_gaps(n: int, rate: float, burstiness: float, seed: int) -> list[float]:
    if rate == float("inf"):
        return [0.0] * n
    gaps = np.random.default_rng(seed).gamma(burstiness, 1.0 / (rate * burstiness), n)
    return list(gaps * (n / rate) / gaps.sum())      # total span N/rate whatever the seed


async def run(args, prompts: list[Prompt]) -> tuple[list[Result], float]:
    limit = args.max_concurrency or len(prompts)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    async with httpx.AsyncClient(base_url=args.base_url, headers=headers, timeout=httpx.Timeout(6 * 3600),
                                 limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit)) as c:
        sem = asyncio.Semaphore(limit)
        bar = tqdm(total=len(prompts), desc="requests", disable=args.no_progress)

        async def one(p: Prompt) -> Result:
            async with sem:
                res = await send(c, args, p)
            bar.update(1)
            return res
        tasks = []
        start = time.perf_counter()
        for p, gap in zip(prompts, arrival_gaps(len(prompts), args.request_rate, args.burstiness, args.seed)):
            await asyncio.sleep(gap)
            tasks.append(asyncio.create_task(one(p)))
        results = await asyncio.gather(*tasks)
        bar.close()
        return results, time.perf_counter() - start


def parse_goodput(items: list[str] | None) -> dict[str, float]:
    slos = {}
    for item in items or []:
        key, _, value = item.partition(":")
        if key not in ("ttft", "tpot", "e2el") or not value:
            raise SystemExit(f"--goodput takes ttft:MS tpot:MS e2el:MS, got {item!r}")
        slos[key] = float(value)
    return slos


def summarize(args, prompts: list[Prompt], results: list[Result], duration: float) -> dict:
    ok = [r for r in results if r.ok]
    ms = 1000.0
    tpots = [(r.e2el - r.ttft) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]
    itls = [x for r in ok for x in r.itl]
    out_tokens = sum(r.output_tokens for r in ok)
    in_tokens = sum(r.prompt_tokens for r in ok)
    slos = parse_goodput(args.goodput)

    def good(r: Result) -> bool:
        tpot = (r.e2el - r.ttft) / (r.output_tokens - 1) if r.output_tokens > 1 else 0.0
        values = {"ttft": r.ttft * ms, "tpot": tpot * ms, "e2el": r.e2el * ms}
        return all(values[k] <= v for k, v in slos.items())

    def stats(name, xs):
        xs = [x * ms for x in xs] or [0.0]
        return {f"mean_{name}_ms": float(np.mean(xs)), f"median_{name}_ms": float(np.median(xs)),
                f"p99_{name}_ms": float(np.percentile(xs, 99))}
    times = [t for r in ok for t in r.chunk_times]
    t0 = min((r.start for r in results), default=0.0)
    per_second = np.bincount([int(t - t0) for t in times]) if times else np.zeros(1)
    events = sorted([(r.start, 1) for r in ok] + [(r.start + r.e2el, -1) for r in ok])
    level = peak = 0
    for _, delta in events:
        level += delta
        peak = max(peak, level)
    summary = {
        "successful_requests": len(ok), "failed_requests": len(results) - len(ok),
        "max_concurrency": args.max_concurrency, "request_rate": args.request_rate, "burstiness": args.burstiness,
        "duration_s": duration, "total_input_tokens": in_tokens, "total_output_tokens": out_tokens,
        "request_throughput": len(ok) / duration, "output_throughput": out_tokens / duration,
        "peak_output_throughput": float(per_second.max()), "peak_concurrent_requests": peak,
        "total_token_throughput": (in_tokens + out_tokens) / duration,
        **stats("ttft", [r.ttft for r in ok]), **stats("tpot", tpots), **stats("itl", itls),
        **stats("e2el", [r.e2el for r in ok]),
    }
    if slos:
        summary["request_goodput"] = sum(good(r) for r in ok) / duration
        summary["goodput_slos_ms"] = slos
    if args.dataset == "passkey":
        hits = [any(ref in r.text for ref in p.references) for p, r in zip(prompts, results) if r.ok]
        summary["passkey_accuracy"] = sum(hits) / max(1, len(hits))
    errors = [r.error for r in results if not r.ok]
    if errors:
        summary["first_errors"] = errors[:3]
    return summary


def print_block(s: dict):
    def row(label, value, fmt="{:<10.2f}"):
        print(f"{label:<40} " + (fmt.format(value) if isinstance(value, float) else str(value)))
    print("{s:{c}^50}".format(s=" Serving Benchmark Result ", c="="))
    row("Successful requests:", s["successful_requests"])
    row("Failed requests:", s["failed_requests"])
    if s["max_concurrency"]:
        row("Maximum request concurrency:", s["max_concurrency"])
    if s["request_rate"] != float("inf"):
        row("Request rate configured (RPS):", float(s["request_rate"]))
    row("Benchmark duration (s):", s["duration_s"])
    row("Total input tokens:", s["total_input_tokens"])
    row("Total generated tokens:", s["total_output_tokens"])
    row("Request throughput (req/s):", s["request_throughput"])
    if "request_goodput" in s:
        row("Request goodput (req/s):", s["request_goodput"])
    row("Output token throughput (tok/s):", s["output_throughput"])
    row("Peak output token throughput (tok/s):", s["peak_output_throughput"])
    row("Peak concurrent requests:", s["peak_concurrent_requests"])
    row("Total token throughput (tok/s):", s["total_token_throughput"])
    if "passkey_accuracy" in s:
        row("Passkey accuracy:", s["passkey_accuracy"])
    for key, title, label in (("ttft", "Time to First Token", "TTFT"),
                              ("tpot", "Time per Output Token (excl. 1st token)", "TPOT"),
                              ("itl", "Inter-token Latency", "ITL"), ("e2el", "End-to-end Latency", "E2EL")):
        print("{s:{c}^50}".format(s=title, c="-"))
        for stat in ("mean", "median", "p99"):
            row(f"{stat.capitalize() if stat != 'p99' else 'P99'} {label} (ms):", s[f"{stat}_{key}_ms"])
    print("=" * 50)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base-url", default="http://127.0.0.1:8000")
    p.add_argument("--endpoint", choices=["completions", "chat"], default="completions")
    p.add_argument("--model", default=None, help="default: the first model of GET /v1/models")
    p.add_argument("--api-key", default=None)
    p.add_argument("--dataset", choices=["random", "passkey"], default="random")
    p.add_argument("--num-prompts", type=int, default=100)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64, help="max_tokens (passkey: the task's own)")
    p.add_argument("--request-rate", type=float, default=float("inf"))
    p.add_argument("--burstiness", type=float, default=1.0)
    p.add_argument("--max-concurrency", type=int, default=None)
    p.add_argument("--ignore-eos", action="store_true", help="ask for exactly --output-len tokens (vLLM extension)")
    p.add_argument("--goodput", nargs="+", metavar="SLO:MS")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the summary and per-request results here")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    parse_goodput(args.goodput)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    with httpx.Client(base_url=args.base_url, headers=headers, timeout=120) as c:
        if args.model is None:
            args.model = c.get("/v1/models").raise_for_status().json()["data"][0]["id"]
        tokens = Tokens(c, args.model)
        prompts = (passkey_prompts(tokens, args.num_prompts, args.input_len, args.seed) if args.dataset == "passkey"
                   else random_prompts(tokens, args.num_prompts, args.input_len, args.output_len, args.seed))
    warm = asyncio.run(run(argparse.Namespace(**{**vars(args), "no_progress": True, "max_concurrency": 1,
                                                 "request_rate": float("inf")}), prompts[:1]))[0][0]
    if not warm.ok:
        print(f"test request failed: {warm.error}", file=sys.stderr)
        return 1
    results, duration = asyncio.run(run(args, prompts))
    summary = summarize(args, prompts, results, duration)
    print_block(summary)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": {k: v for k, v in vars(args).items() if k != "api_key"}, "summary": summary,
                       "requests": [asdict(r) | {"chunk_times": None} for r in results]}, f, indent=1)
    return 0 if summary["failed_requests"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
