"""torch_utils.precision: bf16 reduced-precision blocks on a CPU, against the same networks in fp32."""

from __future__ import annotations

import pytest
import torch

from dnnlib import EasyDict
from torch_utils import precision
from training import distributed as tdist
from training.discriminator import Discriminator
from training.networks_stylegan2 import SynthesisBlock
from training.training_loop import training_loop
from training_fixtures import TINY_D, TINY_G, tiny_options

CPU = tdist.DistInfo()


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().double(), want.detach().double()
    return float((got - want).norm() / want.norm())


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0))


def test_half_dtype_per_device_and_policy():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert precision.half_dtype(cpu) == torch.float32 and precision.half_dtype(cuda) == torch.float16
    with precision.cpu_bf16(True):
        assert precision.half_dtype(cpu) == torch.bfloat16 and precision.half_dtype(cuda) == torch.float16
        with precision.cpu_bf16(False):
            assert precision.half_dtype(cpu) == torch.float32
        assert precision.half_dtype(cpu) == torch.bfloat16
    assert precision.half_dtype(cpu) == torch.float32


def _block_outputs(block: SynthesisBlock, x, img, ws, grad_x, grad_img, **kwargs):
    params = list(block.parameters())
    x_out, img_out = block(x, img, ws, noise_mode="const", **kwargs)
    grads = torch.autograd.grad([x_out, img_out], params, [grad_x.to(x_out.dtype), grad_img])
    return x_out, img_out, grads


def test_synthesis_block_in_bf16_follows_fp32():
    torch.manual_seed(0)
    block = SynthesisBlock(32, 32, w_dim=16, resolution=32, img_channels=24, use_fp16=True, conv_clamp=256)
    x, img = torch.randn(2, 32, 16, 16), torch.randn(2, 24, 16, 16)
    ws = torch.randn(2, block.num_conv + block.num_torgb, 16)
    gx, gimg = torch.randn(2, 32, 32, 32), torch.randn(2, 24, 32, 32)
    seen = []
    hook = block.conv1.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    want = _block_outputs(block, x, img, ws, gx, gimg, force_fp32=True)
    plain = _block_outputs(block, x, img, ws, gx, gimg)  # the policy is off: fp32, the same numbers
    with precision.cpu_bf16(True):
        got = _block_outputs(block, x, img, ws, gx, gimg)
    hook.remove()
    assert seen == [torch.float32, torch.float32, torch.bfloat16]
    assert torch.equal(plain[0], want[0]) and torch.equal(plain[1], want[1])
    x_out, img_out, grads = got
    assert x_out.dtype == torch.bfloat16 and img_out.dtype == torch.float32  # the skip image stays fp32
    assert _relative_error(x_out, want[0]) < 0.02 and _relative_error(img_out, want[1]) < 0.02
    names = [name for name, _ in block.named_parameters()]
    for name, g, w in zip(names, grads, want[2]):
        assert g.dtype == torch.float32
        if name.endswith("noise_strength"):
            # A sum over every pixel that mostly cancels (fp32: 5 from terms the size of the bias
            # gradient, ~350), so bf16's rounding moves it by a share of that scale, not of itself.
            bias_grad = want[2][names.index(name.replace("noise_strength", "bias"))]
            assert abs(float(g) - float(w)) < 0.1 * float(bias_grad.norm())
        else:
            assert _cosine(g, w) > 0.99, name


def test_discriminator_in_bf16_follows_fp32():
    torch.manual_seed(0)
    D = Discriminator(**dict(TINY_D, num_fp16_res=2), c_dim=3, img_resolution=16)
    img = {"image": torch.randn(4, 3, 16, 16), "image_raw": torch.randn(4, 3, 8, 8)}
    c = torch.eye(3)[[0, 1, 2, 0]]
    want = D(img, c)
    with precision.cpu_bf16(True):
        got = D(img, c)
        grads = torch.autograd.grad(got.sum(), list(D.parameters()))
    want_grads = torch.autograd.grad(want.sum(), list(D.parameters()))
    assert got.dtype == torch.float32 and _relative_error(got, want) < 0.03
    assert min(_cosine(g, w) for g, w in zip(grads, want_grads)) > 0.99


def test_training_with_cpu_bf16_runs_and_says_so(tiny_dataset, tmp_path):
    fp16 = dict(backbone_kwargs=dict(TINY_G["backbone_kwargs"], num_fp16_res=2),
                sr_kwargs=dict(TINY_G["sr_kwargs"], num_fp16_res=1))
    opts = tiny_options(tiny_dataset, kimg=0.008, cpu_bf16=True, G=EasyDict(TINY_G, **fp16),
                        D=EasyDict(TINY_D, num_fp16_res=2))
    trainer = training_loop(opts, tmp_path, CPU)
    assert precision.precision_policy.cpu_bf16 is False  # the loop leaves the process's policy as it was
    log = (tmp_path / "log.txt").read_text()
    reduced = [sum(bool(getattr(m, "use_fp16", False)) for m in net.modules()) for net in (trainer.G, trainer.D)]
    assert reduced[0] > 0 and reduced[1] > 0
    assert f"CPU bf16: {reduced[0]} blocks of G and {reduced[1]} of D (their num_fp16_res) compute in bfloat16" in log
    assert trainer.nonfinite_total == 0
    assert all(torch.isfinite(p).all() for p in trainer.G.parameters())
    assert all(p.dtype == torch.float32 for p in trainer.G.parameters())


def test_cpu_bf16_without_reduced_blocks_is_pointed_out(tiny_dataset, tmp_path):
    training_loop(tiny_options(tiny_dataset, kimg=0.004, cpu_bf16=True), tmp_path, CPU)
    assert "every num_fp16_res is 0" in (tmp_path / "log.txt").read_text()


@pytest.mark.parametrize("flag,value", [("--cpu-bf16", True), ("--no-cpu-bf16", False)])
def test_train_cli_flag(flag, value, tiny_dataset):
    from click.testing import CliRunner

    import train

    result = CliRunner().invoke(train.main, ["--cfg", "demo", "--data", str(tiny_dataset), "--device", "cpu",
                                             flag, "--dry-run"])
    assert result.exit_code == 0, result.output
    assert f"cpu_bf16: {str(value).lower()}" in result.output
