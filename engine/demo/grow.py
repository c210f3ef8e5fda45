"""Deepen a trained MemoryLlama without changing what it computes (block expansion, as in LLaMA Pro).

    python -m engine.demo.grow --src bench/models/copy_digits --out /tmp/grown --after 1,2

A copy of block i (attention and MLP, no memory layer) is inserted after each listed block i, with its output
projections (o_proj, down_proj) zeroed: the new block adds nothing to the residual stream, so the grown model's
logits equal the source's, and training then finds a use for it. The memory layers keep their blocks (their
`memory_layers` indices move) and their value rows. Then resume training from `--out` (engine.demo.train --resume).
"""
import argparse
import json
import os
import shutil

import torch
from safetensors.torch import save_file

from engine.models.loader import read_safetensors

NOT_COPIED = ("model.safetensors", "config.json", "train_state.pt")   # rewritten, or of the source's shape


def grow(weights: dict[str, torch.Tensor], config: dict, after: list[int]) -> tuple[dict, dict]:
    """The weights and config of the model with a zero-output copy of each block in `after` inserted after it."""
    layers = config["num_hidden_layers"]
    if not after or not all(0 <= i < layers for i in after) or len(set(after)) != len(after):
        raise ValueError(f"--after: distinct block indices in 0..{layers - 1}, got {after}")
    memory_at = set(config.get("memory_layers") or range(layers))
    order = []   # (source block, is a new copy) in the grown model's order
    for i in range(layers):
        order += [(i, False)] + ([(i, True)] if i in after else [])
    grown = {k: v for k, v in weights.items() if not k.startswith("model.layers.")}
    for new, (old, is_copy) in enumerate(order):
        prefix = f"model.layers.{old}."
        for name, tensor in weights.items():
            if not name.startswith(prefix) or (is_copy and ".memory." in name):
                continue
            tensor = tensor.clone()
            if is_copy and name.endswith(("o_proj.weight", "down_proj.weight")):
                tensor.zero_()
            grown[f"model.layers.{new}." + name[len(prefix):]] = tensor
    config = {**config, "num_hidden_layers": len(order),
              "memory_layers": [new for new, (old, is_copy) in enumerate(order) if old in memory_at and not is_copy]}
    return grown, config


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, help="a MemoryLlama checkpoint directory")
    parser.add_argument("--out", required=True)
    parser.add_argument("--after", required=True, help="comma-separated source block indices, e.g. 1,2")
    args = parser.parse_args(argv)
    with open(os.path.join(args.src, "config.json")) as f:
        config = json.load(f)
    try:
        weights, config = grow(read_safetensors(args.src), config, [int(i) for i in args.after.split(",")])
    except ValueError as error:
        parser.error(str(error))
    os.makedirs(args.out, exist_ok=True)
    for name in os.listdir(args.src):
        if name not in NOT_COPIED and os.path.isfile(os.path.join(args.src, name)):
            shutil.copy(os.path.join(args.src, name), args.out)
    save_file({k: v.contiguous() for k, v in weights.items()}, os.path.join(args.out, "model.safetensors"))
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    print(f"wrote {args.out}: {config['num_hidden_layers']} blocks, memory layers at {config['memory_layers']}")


if __name__ == "__main__":
    main()
