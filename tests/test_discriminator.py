"""Tests for the pose-unaware, class-conditional discriminator (training/discriminator.py)."""

import inspect
import json
import math

import pytest
import torch
import torch.nn.functional as F

from torch_utils import misc
from training.discriminator import Discriminator, MinibatchStdLayer

C_DIM = 4


def tiny_discriminator(**overrides) -> Discriminator:
    kwargs = dict(c_dim=C_DIM, img_resolution=16, channel_base=128, channel_max=16, mapping_layers=2,
                  mbstd_group_size=2)
    kwargs.update(overrides)
    return Discriminator(**kwargs)


def one_hot(labels):
    return F.one_hot(torch.as_tensor(labels), C_DIM).float()


def test_output_shape_and_no_camera_argument():
    D = tiny_discriminator()
    out = D({"image": torch.randn(3, 3, 16, 16), "image_raw": torch.randn(3, 3, 8, 8)}, one_hot([0, 1, 2]))
    assert out.shape == (3, 1) and torch.isfinite(out).all()
    assert list(inspect.signature(D.forward).parameters) == ["img", "c", "update_emas", "force_fp32"]


def test_dual_input_has_six_channels_and_resizes_raw():
    torch.manual_seed(0)
    D = tiny_discriminator()
    assert D.in_channels == 6 and getattr(D, D.block_names[0]).fromrgb.weight.shape[1] == 6
    image, raw, c = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 8, 8), one_hot([1, 3])
    up = F.interpolate(raw, size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.allclose(D({"image": image, "image_raw": raw}, c), D(torch.cat([image, up], 1), c), atol=1e-6)
    # A raw render larger than the image is shrunk with antialiasing.
    big = torch.randn(2, 3, 32, 32)
    small = F.interpolate(big, size=(16, 16), mode="bilinear", align_corners=False, antialias=True)
    assert torch.allclose(D({"image": image, "image_raw": big}, c), D(torch.cat([image, small], 1), c), atol=1e-6)
    with pytest.raises(KeyError, match="image_raw"):
        D({"image": image}, c)
    with pytest.raises(ValueError, match="6 channels"):
        D(image, c)
    single = tiny_discriminator(dual_input=False)
    assert single.in_channels == 3 and single(image, c).shape == (2, 1)


def test_class_projection():
    torch.manual_seed(1)
    D = tiny_discriminator()
    x = torch.randn(2, 6, 16, 16)
    seen = {}

    def remember_output(module, inputs, output):
        seen["h"] = output

    D.epilogue.out.register_forward_hook(remember_output)
    c = one_hot([0, 2])
    out = D(x, c)
    cmap = D.mapping(None, c)
    assert cmap.shape == (2, D.cmap_dim) and D.cmap_dim == 16  # default: the 4x4 channel count
    assert torch.allclose(out, (seen["h"] * cmap).sum(1, keepdim=True) / math.sqrt(D.cmap_dim), atol=1e-6)
    # Same image, another class: another score.
    assert not torch.allclose(out, D(x, one_hot([1, 3])))
    # Unconditional D: the head outputs a single score directly.
    plain = tiny_discriminator(c_dim=0)
    assert plain.cmap_dim == 0 and plain(x, None).shape == (2, 1)


def _naive_mbstd(x, group_size):
    n = x.shape[0]
    per_group = n // group_size
    stds = torch.zeros(n, dtype=x.dtype)
    for j in range(per_group):
        members = [j + g * per_group for g in range(group_size)]  # sample i sits in group i % per_group
        std = (x[members].var(dim=0, unbiased=False) + 1e-8).sqrt()  # the layer's epsilon
        stds[members] = std.mean()
    return stds


@pytest.mark.parametrize("batch,group", [(4, 2), (6, 4), (5, 4), (3, 8)])
def test_minibatch_std_matches_naive(batch, group):
    torch.manual_seed(2)
    x = torch.randn(batch, 5, 3, 3, dtype=torch.float64)
    out = MinibatchStdLayer(group)(x)
    assert out.shape == (batch, 6, 3, 3)
    assert torch.equal(out[:, :5], x)
    used = max(g for g in range(1, min(group, batch) + 1) if batch % g == 0)
    ref = _naive_mbstd(x, used).to(x.dtype)
    assert torch.allclose(out[:, 5], ref[:, None, None].expand(batch, 3, 3), atol=1e-6)


def test_r1_double_backward():
    torch.manual_seed(3)
    D = tiny_discriminator()
    image = torch.randn(2, 3, 16, 16, requires_grad=True)
    raw = torch.randn(2, 3, 8, 8, requires_grad=True)
    scores = D({"image": image, "image_raw": raw}, one_hot([0, 1]))
    grads = torch.autograd.grad(scores.sum(), [image, raw], create_graph=True)
    assert all(g.abs().sum() > 0 for g in grads)
    penalty = sum(g.square().sum() for g in grads)
    penalty.backward()
    with_grad = [name for name, p in D.named_parameters() if p.grad is not None and torch.any(p.grad != 0)]
    assert any(name.startswith("b16.") for name in with_grad) and any("epilogue" in n for n in with_grad)


def test_input_gradient_matches_finite_difference():
    torch.manual_seed(4)
    D = tiny_discriminator(img_resolution=8, channel_base=32, channel_max=4)
    x = torch.randn(2, 6, 8, 8, requires_grad=True)
    c = one_hot([0, 1])
    (grad,) = torch.autograd.grad(D(x, c).sum(), x)
    v = torch.randn_like(x)
    eps = 1e-2
    with torch.no_grad():
        numeric = (D(x + eps * v, c).sum() - D(x - eps * v, c).sum()) / (2 * eps)
    analytic = (grad * v).sum()
    assert torch.allclose(analytic, numeric, rtol=0.03, atol=1e-4), (analytic, numeric)


def test_fp32_on_cpu_even_with_fp16_resolutions():
    D = tiny_discriminator(num_fp16_res=4)
    assert any(getattr(D, name).use_fp16 for name in D.block_names)
    assert D(torch.randn(2, 6, 16, 16), one_hot([0, 1])).dtype == torch.float32


def test_init_kwargs_and_summary(capsys):
    D = tiny_discriminator()
    D2 = Discriminator(**json.loads(json.dumps(D.init_kwargs)))
    D2.load_state_dict(D.state_dict())
    x, c = torch.randn(2, 6, 16, 16), one_hot([0, 1])
    assert torch.allclose(D(x, c), D2(x, c))
    misc.print_module_summary(D, [x, c])
    assert "Total" in capsys.readouterr().out
    with pytest.raises(ValueError, match="img_resolution"):
        tiny_discriminator(img_resolution=12)


def test_low_res_head_scores_the_downsampled_input():
    torch.manual_seed(2)
    D = tiny_discriminator(low_res_head=8)
    x, c = torch.randn(2, 6, 16, 16), one_hot([0, 3])
    out = D(x, c)
    assert out.shape == (2, 2)
    # Column 0 is the full-resolution D alone: the same weights without the head.
    plain = tiny_discriminator()
    plain.load_state_dict({k: v for k, v in D.state_dict().items() if not k.startswith("low.")})
    assert torch.allclose(out[:, :1], plain(x, c), atol=1e-6)
    # Column 1 is an 8x8 D with the head's weights on the antialiased 8x8 copy of the input.
    low = tiny_discriminator(img_resolution=8)
    low.load_state_dict(D.low.state_dict())
    small = F.interpolate(x, size=(8, 8), mode="bilinear", align_corners=False, antialias=True)
    assert torch.allclose(out[:, 1:], low(small, c), atol=1e-6)
    # A dict input goes through the same assembly as without the head.
    image, raw = x[:, :3], torch.randn(2, 3, 8, 8)
    assert torch.allclose(D({"image": image, "image_raw": raw}, c),
                          D(torch.cat([image, F.interpolate(raw, size=(16, 16), mode="bilinear")], 1), c),
                          atol=1e-6)
    # Rebuilt from its constructor arguments (as snapshots are), it has the head.
    assert Discriminator(**json.loads(json.dumps(D.init_kwargs)))(x, c).shape == (2, 2)
    for bad in (16, 12, 4):
        with pytest.raises(ValueError, match="low_res_head"):
            tiny_discriminator(low_res_head=bad)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU for the fp16 path")
def test_fp16_on_cuda_matches_fp32():
    torch.manual_seed(5)
    D = tiny_discriminator(img_resolution=32, channel_base=512, channel_max=32, num_fp16_res=2).cuda()
    x, c = torch.randn(4, 6, 32, 32, device="cuda"), one_hot([0, 1, 2, 3]).cuda()
    half, full = D(x, c), D(x, c, force_fp32=True)
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    assert (half - full).abs().max() < 0.02 * full.abs().max() + 1e-3
