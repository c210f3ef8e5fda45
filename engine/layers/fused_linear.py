"""Linear layers that read the same input, fused into one product for inference."""
import torch


def fuse_linears(*linears: torch.nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weight and bias (or None) of one linear map computing `linears`' outputs side by side. Each of `linears`
    keeps its parameters as views of these, so that the fused copy takes no extra memory and the modules still
    compute what they did."""
    weight = torch.cat([m.weight.detach() for m in linears])
    bias = None if linears[0].bias is None else torch.cat([m.bias.detach() for m in linears])
    start = 0
    for m in linears:
        rows = slice(start, start + m.weight.shape[0])
        m.weight = torch.nn.Parameter(weight[rows], requires_grad=False)
        if bias is not None:
            m.bias = torch.nn.Parameter(bias[rows], requires_grad=False)
        start = rows.stop
    return weight, bias
