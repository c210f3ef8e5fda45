"""The question term of ActQKV's block score (Q-LLM): `+ λ·cosine(question, representative)` during prefill.

The question (given per request, e.g. the `kv_question` field of the API) is run once through the model on its
own, before the request's prefill; per layer, the question vector is the mean of its tokens' queries at the one
angle that retrieved keys are scored at, so that it compares with the blocks' pre-RoPE representative keys.
"""
import torch

from engine.layers.rotary import rotate_by


@torch.no_grad()
def question_vectors(model: torch.nn.Module, question_ids: list[int], local: int,
                     bos_token_id: int | None = None) -> list[torch.Tensor]:
    """Per layer, the question's mean query [H, D], rotated to position `local`. With a BOS token, the question
    runs after it (as in a prompt, where the first token is an attention sink) and BOS is left out of the mean."""
    skip = 0 if bos_token_id is None else 1
    question_ids = [bos_token_id] * skip + list(question_ids)
    layers = model.model.layers
    captured: dict[int, torch.Tensor] = {}
    hooks = [layer.self_attn.q_proj.register_forward_hook(
        lambda module, args, out, i=i: captured.__setitem__(i, out)) for i, layer in enumerate(layers)]
    ids = torch.tensor([question_ids], dtype=torch.long, device=model.lm_head.weight.device)
    try:
        model.model(ids, torch.arange(ids.shape[1], device=ids.device), None, [None] * len(layers))
    finally:
        for hook in hooks:
            hook.remove()
    attn = layers[0].self_attn
    angle = torch.tensor([local], device=ids.device)
    return [rotate_by(captured[i][0, skip:].float().mean(0).view(1, attn.heads, attn.head_dim), angle,
                      model.model.rotary_emb)[0] for i in range(len(layers))]
