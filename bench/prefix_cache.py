"""Time to first token of follow-up questions on one long document, with and without prefix caching, side by side.

    python -m bench.prefix_cache --length 8192 --questions 6 --json bench/results/prefix_cache.json

Two engines on the same model, one with `enable_prefix_caching` and one without. Each first reads the document
with a first question (its time is reported apart: nothing is cached yet). Then, question after question, each
engine in turn answers the document followed by a new question: the cached engine finds the document's full
blocks and prefills only the rest. Reported: the median time to first token per engine and their ratio, and the
cached engine's prompt tokens found in the cache. Prompts are synthetic token ids; greedy, 4 tokens per answer.
"""
import argparse
import statistics
import time

from tqdm import tqdm

from bench.common import machine, write_json
from engine import LLM, SamplingParams


def time_to_first_token(llm: LLM, prompt: list[int]) -> tuple[float, int]:
    """(seconds from submission to the first sampled token, prompt tokens found in the prefix cache)."""
    engine = llm.engine
    request = engine.add_request(f"q{time.monotonic_ns()}", prompt,
                                 SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
    start = time.perf_counter()
    while request.seqs[0].num_output_tokens < 1:
        engine.step()
    seconds = time.perf_counter() - start
    while engine.has_unfinished_requests():
        engine.step()
    return seconds, request.num_cached_tokens or 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model directory (default: the bundled demo model)")
    ap.add_argument("--length", type=int, default=8192, help="document tokens")
    ap.add_argument("--questions", type=int, default=6, help="follow-up questions per engine")
    ap.add_argument("--question-tokens", type=int, default=24)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    from engine.demo import bundled_model_dir
    model = args.model or bundled_model_dir()
    engines = {name: LLM(model, max_model_len=args.length + args.question_tokens + 64, enable_prefix_caching=on)
               for name, on in (("cached", True), ("plain", False))}
    vocab = engines["cached"].engine.vocab_size
    document = [5 + (i * 7919) % (vocab - 5) for i in range(args.length)]

    def question(i: int) -> list[int]:
        return [5 + (i * 104729 + j * 31) % (vocab - 5) for j in range(args.question_tokens)]

    first = {name: time_to_first_token(llm, document + question(0))[0] for name, llm in engines.items()}
    times, found = {name: [] for name in engines}, []
    for i in tqdm(range(1, args.questions + 1), desc="questions"):
        for name, llm in engines.items():
            seconds, cached = time_to_first_token(llm, document + question(i))
            times[name].append(seconds)
            if name == "cached":
                found.append(cached)
    medians = {name: statistics.median(t) for name, t in times.items()}
    row = {"context_len": args.length, "question_tokens": args.question_tokens, "questions": args.questions,
           "first_ttft_s": first, "ttft_s": medians, "speedup": medians["plain"] / medians["cached"],
           "cached_tokens": statistics.median(found)}
    print(f"document {args.length} tokens + {args.question_tokens}-token questions: first read "
          f"{first['cached']:.3f} s cached engine / {first['plain']:.3f} s plain; follow-ups: "
          f"{medians['cached']:.3f} s vs {medians['plain']:.3f} s, {row['speedup']:.1f}x faster to the first token; "
          f"{row['cached_tokens']:.0f} prompt tokens found in the cache")
    write_json(args.json, {"machine": machine(), "model": model, "rows": [row]})
    return row


if __name__ == "__main__":
    main()
