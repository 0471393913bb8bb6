"""bench/step.py: the FLOP count behind --flops, against analytic convolution FLOPs."""

import sys
from pathlib import Path

import pytest
import torch

# Appended, not prepended: bench/train.py must not shadow the top-level train.py for later tests.
sys.path.append(str(Path(__file__).resolve().parents[1] / "bench"))

from step import step_flops  # noqa: E402

from torch_utils.ops import conv2d_resample  # noqa: E402


def _forward_backward(x, w, **kwargs):
    def run():
        y = conv2d_resample.conv2d_resample(x, w, **kwargs)
        y.square().sum().backward()
    return run


@pytest.mark.parametrize("input_grad, passes", [(True, 3), (False, 2)])
def test_stride_one_conv_counts_forward_and_the_gradients_needed(input_grad, passes):
    # 2 FLOPs per multiply-add; forward, input gradient and weight gradient each cost the same,
    # and an input that needs no gradient skips its pass.
    n, cin, cout, res, k = 2, 5, 7, 9, 3
    x = torch.randn(n, cin, res, res, requires_grad=input_grad)
    w = torch.randn(cout, cin, k, k, requires_grad=True)
    forward = 2 * n * cout * res * res * cin * k * k
    assert sum(step_flops(_forward_backward(x, w, padding=1)).values()) == passes * forward


def test_upsampling_conv_counts_the_transposed_convolution_on_the_small_input():
    # up=2 runs a stride-2 transposed conv: each input pixel meets every tap once; the FIR filter
    # after it is a depthwise convolution, counted too (4x4 taps per output pixel and channel).
    n, cin, cout, res, k = 1, 3, 4, 6, 3
    x = torch.randn(n, cin, res, res)
    w = torch.randn(cout, cin, k, k)
    f = torch.ones(4) / 4
    flops = step_flops(lambda: conv2d_resample.conv2d_resample(x, w, f=f, up=2, padding=1))
    transposed = 2 * n * cin * res * res * cout * k * k
    assert flops["convolution"] >= transposed
    assert flops["convolution"] - transposed == 2 * n * cout * (2 * res) ** 2 * 16


def test_fp16_res_override_reaches_backbone_super_resolution_and_d():
    from step import build_networks

    G, D, _ = build_networks("demo", classes=2, device=torch.device("cpu"), resolution=64, fp16_res=2)
    flagged = {name for name, m in list(G.named_modules()) + [("D." + n, m) for n, m in D.named_modules()]
               if getattr(m, "use_fp16", False)}
    assert any(n.startswith("backbone.") for n in flagged) and any(n.startswith("superresolution.") for n in flagged)
    assert any(n.startswith("D.") for n in flagged)
    G0, D0, _ = build_networks("demo", classes=2, device=torch.device("cpu"), resolution=64)
    assert not [m for m in list(G0.modules()) + list(D0.modules()) if getattr(m, "use_fp16", False)]
