"""The gated feed-forward block of Llama-family models."""
import torch
import torch.nn.functional as F

from engine.layers.fused_linear import fuse_linears

ACTIVATIONS = {"silu": F.silu, "relu": F.relu, "gelu": F.gelu, "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh")}


class GatedMLP(torch.nn.Module):
    """down(act(gate(x)) * up(x)); under a sparse plan (set on the shared `sparsity` context by the model runner)
    decode rows go through `engine.layers.sparse_mlp`."""

    def __init__(self, hidden: int, intermediate: int, act: str, bias: bool = False):
        super().__init__()
        self.gate_proj = torch.nn.Linear(hidden, intermediate, bias=bias)
        self.up_proj = torch.nn.Linear(hidden, intermediate, bias=bias)
        self.down_proj = torch.nn.Linear(intermediate, hidden, bias=bias)
        self.act = ACTIVATIONS[act]
        self.sparsity = None       # a SparsityContext shared by the model's MLPs
        self.layer_idx = 0
        self._input_major: dict[str, torch.Tensor] = {}
        self.gate_up: tuple[torch.Tensor, torch.Tensor | None] | None = None   # see fuse_projections

    def fuse_projections(self):
        """Compute gate and up as one product (weight, bias); gate_proj and up_proj keep their weights as views of
        it. Made by the engine once the model is loaded."""
        self.gate_up = fuse_linears(self.gate_proj, self.up_proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plan = self.sparsity.plan if self.sparsity is not None else None
        if plan is not None and plan.mode != "dense" and x.dim() == 2 and self.gate_proj.bias is None:
            from engine.layers.sparse_mlp import sparse_forward
            return sparse_forward(self, x, plan, self.layer_idx, self.sparsity)
        return self.dense(x)

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        """The MLP without skipping (gate and up by one product where fused)."""
        if self.gate_up is not None:
            gate, up = F.linear(x, *self.gate_up).chunk(2, dim=-1)
            return self.down_proj(self.act(gate) * up)
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))

    def input_major(self, name: str) -> torch.Tensor:
        """Wᵀ of projection `name` (one contiguous row per input channel) for the sparse kernels, made on first
        use: relu/cats need only down's, teal also gate's and up's."""
        if name not in self._input_major:
            self._input_major[name] = getattr(self, name).weight.t().contiguous()
        return self._input_major[name]
