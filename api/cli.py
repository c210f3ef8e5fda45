"""The `actserve` command: `generate` (one completion) and `serve` (the HTTP server)."""
import argparse
import logging
import sys

from api.serve import add_server_arguments, cmd_serve
from engine.cli_options import add_engine_arguments, engine_config_from_args
from engine.models.model_config import ModelLoadError
from engine.sampling_params import SamplingParams, SamplingParamsError


def cmd_generate(args) -> int:
    from engine.llm import LLM
    llm = LLM(config=engine_config_from_args(args))
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                            top_k=args.top_k, seed=args.sampling_seed, stop=args.stop or [])
    out = llm.generate(args.prompt, params)[0].outputs[0]
    print(out.text)
    return 0


def cmd_calibrate(args) -> int:
    from engine.calibrate import calibrate
    path = calibrate(args.model, args.target, tokens=args.tokens, data=args.data, seed=args.seed)
    print(f"wrote teal and cats thresholds for target {args.target:g} to {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="actserve", description="A long-context LLM serving engine.")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="print one completion of a prompt")
    add_engine_arguments(gen)
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--max-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--sampling-seed", type=int, default=None)
    gen.add_argument("--stop", action="append")
    gen.set_defaults(func=cmd_generate)
    cal = sub.add_parser("calibrate", help="sparse-MLP thresholds (teal, cats) for a target sparsity")
    cal.add_argument("--model", required=True)
    cal.add_argument("--target", type=float, required=True, help="fraction of activations to skip, e.g. 0.5")
    cal.add_argument("--tokens", type=int, default=20000, help="calibration tokens (generated task text)")
    cal.add_argument("--data", help="a text file of calibration passages separated by blank lines")
    cal.add_argument("--seed", type=int, default=0)
    cal.set_defaults(func=cmd_calibrate)
    serve = sub.add_parser("serve", help="run the OpenAI-compatible HTTP server")
    add_server_arguments(serve)
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ModelLoadError, SamplingParamsError, ValueError) as exc:
        print(f"actserve: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
