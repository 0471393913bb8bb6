"""A small MLP with softplus between its layers (the tri-plane decoder), with a CPU kernel.

    h_0 = x,  z_l = h_l W_l^T + b_l,  h_{l+1} = softplus(z_l) for l < L-1,  output z_{L-1}

and with `squash=(start, scale, shift)` the output's columns from `start` on are
sigmoid(z_{L-1}) * scale - shift (the tri-plane decoder's colour and features), computed in
the kernel's tile instead of in separate passes.

`softplus_mlp(x, weights, biases)` takes x [..., in] and the effective (already scaled)
weights [out, in] and biases [out]. On a CPU, with float32 tensors and layers at most 64 wide,
it runs `mlp_cpu.cpp`: each tile of 64 points goes through every layer in cache, and the
backward recomputes the tile's forward instead of keeping the hidden activations. Forward and
backward together, `python bench/ops.py` on 2 cores: x2.3 over the PyTorch ops at the demo's
decoder size, x1.9 at eg3d-small's (x1.4 and x1.2 with the tuned allocator of the training
loop, where big PyTorch temporaries cost less); about 5% of a whole training step.
Otherwise, or with `impl='ref'`, it is plain PyTorch. Gradients of second order (a backward
with `create_graph=True`) go through the PyTorch ops, recomputed from the saved inputs.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from torch_utils.ops import cpu_kernels

__all__ = ["softplus_mlp", "softplus_mlp_ref", "MAX_KERNEL_WIDTH", "Squash"]

Squash = Tuple[int, float, float]  # (first squashed output column, scale, shift)

MAX_KERNEL_WIDTH = 64  # widest layer (in or out) the CPU kernel takes; keep in sync with kMaxWidth


def softplus_mlp_ref(x: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor],
                     squash: Optional[Squash] = None) -> torch.Tensor:
    """The MLP with PyTorch ops (differentiable to any order)."""
    for i, (w, b) in enumerate(zip(weights, biases)):
        x = F.linear(x, w, b)
        if i < len(weights) - 1:
            x = F.softplus(x)
    if squash is None:
        return x
    start, scale, shift = squash
    # The sigmoid over whole rows, then the slice: on a CPU a sigmoid of a strided slice runs a
    # scalar loop, several times slower than the vectorised one.
    return torch.cat([x[..., :start], torch.sigmoid(x)[..., start:] * scale - shift], dim=-1)


def softplus_mlp(x: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor],
                 impl: Optional[str] = None, squash: Optional[Squash] = None) -> torch.Tensor:
    """x [..., in] -> [..., out of the last layer]; `impl`: None (the CPU kernel where it
    applies) or 'ref' (PyTorch ops); `squash`: see the module docstring."""
    if impl not in (None, "ref"):
        raise ValueError(f"softplus_mlp: impl must be None or 'ref', got {impl!r}")
    if len(weights) == 0 or len(weights) != len(biases):
        raise ValueError(f"softplus_mlp: need one bias per weight and at least one layer, got "
                         f"{len(weights)} weights and {len(biases)} biases")
    if squash is not None and not 0 <= squash[0] <= weights[-1].shape[0]:
        raise ValueError(f"softplus_mlp: squash must start at an output column in [0, {weights[-1].shape[0]}], "
                         f"got {squash[0]}")
    module = _kernel_module(x, weights, biases) if impl is None else None
    if module is None:
        return softplus_mlp_ref(x, weights, biases, squash)
    lead = x.shape[:-1]
    flat = x.reshape(-1, x.shape[-1]).contiguous()
    out = _SoftplusMlpCpu.apply(flat, module, squash, len(weights), *weights, *biases)
    return out.reshape(*lead, out.shape[-1])


def _kernel_module(x: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor]):
    tensors = [x, *weights, *biases]
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors) or x.numel() == 0:
        return None
    widths = [x.shape[-1]] + [w.shape[0] for w in weights]
    if max(widths) > MAX_KERNEL_WIDTH:
        return None
    return cpu_kernels.plugin.get()


class _SoftplusMlpCpu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, module, squash: Optional[Squash], num_layers: int,  # type: ignore[override]
                *params: torch.Tensor) -> torch.Tensor:
        ctx.module, ctx.squash, ctx.num_layers = module, squash, num_layers
        ctx.save_for_backward(x, *params)
        return module.mlp_softplus_forward(x, list(params[:num_layers]), list(params[num_layers:]),
                                           *_squash_args(squash))

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        x, *params = ctx.saved_tensors
        n = ctx.num_layers
        weights, biases = params[:n], params[n:]
        if torch.is_grad_enabled():  # create_graph: differentiate the PyTorch ops instead
            grads = _ref_grads(ctx, grad_out, x, weights, biases)
            return (grads[0], None, None, None, *grads[1:])
        res = ctx.module.mlp_softplus_backward(grad_out.contiguous(), x, list(weights), list(biases),
                                               bool(ctx.needs_input_grad[0]), *_squash_args(ctx.squash))
        dx = res[0] if ctx.needs_input_grad[0] else None
        return (dx, None, None, None, *res[1:])


def _squash_args(squash: Optional[Squash]) -> tuple:
    """The kernel's (from, scale, shift); from -1 is no squash."""
    return (-1, 1.0, 0.0) if squash is None else (int(squash[0]), float(squash[1]), float(squash[2]))


def _ref_grads(ctx, grad_out: torch.Tensor, x: torch.Tensor, weights: List[torch.Tensor],
               biases: List[torch.Tensor]) -> tuple:
    """(dx, dW..., db...) of the PyTorch ops, with a graph for higher derivatives."""
    inputs = [x, *weights, *biases]
    wanted = [i for i, t in enumerate(inputs) if ctx.needs_input_grad[0 if i == 0 else i + 3]]
    out = softplus_mlp_ref(x, weights, biases, ctx.squash)
    grads = torch.autograd.grad(out, [inputs[i] for i in wanted], grad_out, create_graph=True, allow_unused=True)
    result: List[Optional[torch.Tensor]] = [None] * len(inputs)
    for i, g in zip(wanted, grads):
        result[i] = g
    return tuple(result)
