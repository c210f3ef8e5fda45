"""Sparse-MLP calibration: activation samples on calibration text -> per-layer thresholds for a target sparsity.

    actserve calibrate --model DIR --target 0.5 [--data FILE] [--tokens 20000]

TEAL: for each layer, t_in = the `target` quantile of |x| over the MLP inputs and t_down = the `target` quantile of
|act(gate)·up| over the down-projection inputs (TEAL's F⁻¹(0.5 + s/2) of the signed distribution, for a
distribution symmetric about 0). CATS: t = the `target` quantile of |act(gate)|. Thresholds are written to
`sparsity.json` next to the model and loaded by the engine.
"""
import json
import os
import random

import torch

CALIBRATION_FILE = "sparsity.json"
_SAMPLES_PER_TENSOR = 1_000_000


def calibration_text(tokens: int, seed: int, count_tokens) -> list[str]:
    """Generated task prompts and filler (no download), about `tokens` tokens in all."""
    from engine.demo.tasks import GENERATORS, filler_text
    rng = random.Random(seed)
    texts, total = [], 0
    while total < tokens:
        name = rng.choice(list(GENERATORS))
        text = GENERATORS[name](rng, 512, rng.random(), count_tokens).prompt + " " + filler_text(rng, 256, count_tokens)
        texts.append(text)
        total += count_tokens(text)
    return texts


def collect(model, tokenizer, texts: list[str], max_len: int = 1024) -> dict[str, list[torch.Tensor]]:
    """Absolute activations per layer: MLP inputs, down inputs and |act(gate)| (subsampled)."""
    mlps = [layer.mlp for layer in model.model.layers]
    seen = {"in": [[] for _ in mlps], "down": [[] for _ in mlps], "gate": [[] for _ in mlps]}
    hooks = []
    for i, mlp in enumerate(mlps):
        hooks.append(mlp.register_forward_pre_hook(lambda m, a, i=i: seen["in"][i].append(a[0].abs().flatten())))
        hooks.append(mlp.down_proj.register_forward_pre_hook(
            lambda m, a, i=i: seen["down"][i].append(a[0].abs().flatten())))
        hooks.append(mlp.gate_proj.register_forward_hook(
            lambda m, a, out, i=i, mlp=mlp: seen["gate"][i].append(mlp.act(out).abs().flatten())))
    try:
        with torch.inference_mode():
            for text in texts:
                ids = tokenizer.encode(text)[:max_len]
                model.forward_dense(torch.tensor([ids], device=model.lm_head.weight.device))
    finally:
        for h in hooks:
            h.remove()
    return {k: [_subsample(torch.cat(v)) for v in per_layer] for k, per_layer in seen.items()}


def _subsample(values: torch.Tensor) -> torch.Tensor:
    if values.numel() <= _SAMPLES_PER_TENSOR:
        return values.float()
    gen = torch.Generator(device=values.device).manual_seed(0)
    return values[torch.randint(0, values.numel(), (_SAMPLES_PER_TENSOR,), generator=gen,
                                device=values.device)].float()


def thresholds(samples: dict[str, list[torch.Tensor]], target: float) -> dict:
    q = lambda v: float(torch.quantile(v, target))  # noqa: E731
    return {"teal": [[q(a), q(b)] for a, b in zip(samples["in"], samples["down"])],
            "cats": [q(g) for g in samples["gate"]]}


def save(model_dir: str, target: float, found: dict):
    path = os.path.join(model_dir, CALIBRATION_FILE)
    data = load(model_dir)
    for mode, values in found.items():
        data.setdefault(mode, {})[f"{target:g}"] = values
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
    return path


def load(model_dir: str) -> dict:
    """{"teal": {"0.5": [[t_in, t_down], ...]}, "cats": {"0.5": [t, ...]}} or {} when not calibrated."""
    path = os.path.join(model_dir, CALIBRATION_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def calibrate(model_dir: str, target: float, tokens: int = 20000, data: str | None = None, seed: int = 0) -> str:
    """Compute teal and cats thresholds for `target` on the model in `model_dir`; return the file written."""
    from engine.models.loader import load_model
    from engine.tokenizer import load_tokenizer
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, torch.float32, torch.device("cpu"))
    count = lambda text: len(tokenizer.encode(text, add_special_tokens=False))  # noqa: E731
    if data:
        with open(data) as f:
            texts = [t for t in f.read().split("\n\n") if t.strip()]
    else:
        texts = calibration_text(tokens, seed, count)
    return save(model_dir, target, thresholds(collect(model, tokenizer, texts), target))
