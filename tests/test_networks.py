"""Tests for the StyleGAN2 building blocks (training/networks_stylegan2.py) and super-resolution."""

import inspect
import math

import pytest
import torch
import torch.nn.functional as F

from torch_utils import misc
from training.networks_stylegan2 import (
    Conv2dLayer,
    FullyConnectedLayer,
    MappingNetwork,
    SynthesisNetwork,
    modulated_conv2d,
)
from training.superresolution import SuperResolution

TINY = dict(channel_base=256, channel_max=32, num_fp16_res=2, conv_clamp=256)


def test_fc_layer_equalised_lr_matches_naive_formula():
    torch.manual_seed(0)
    layer = FullyConnectedLayer(5, 3, lr_multiplier=0.1, bias_init=0.7)
    x = torch.randn(4, 5)
    gain = 0.1 / math.sqrt(5)
    ref = x @ (layer.weight * gain).t() + layer.bias * 0.1
    assert torch.allclose(layer(x), ref, atol=1e-6)
    # The effective initial bias is bias_init, whatever the lr multiplier.
    assert torch.allclose(layer.bias * layer.bias_gain, torch.full([3], 0.7))
    act = FullyConnectedLayer(5, 3, activation="lrelu")
    y = x @ (act.weight / math.sqrt(5)).t() + act.bias
    assert torch.allclose(act(x), F.leaky_relu(y, 0.2) * math.sqrt(2), atol=1e-6)


def test_fc_layer_on_3d_input():
    layer = FullyConnectedLayer(4, 6, activation="lrelu")
    x = torch.randn(2, 7, 4)
    assert torch.allclose(layer(x).reshape(14, 6), layer(x.reshape(14, 4)), atol=1e-6)


def test_conv2d_layer_matches_plain_conv():
    torch.manual_seed(1)
    layer = Conv2dLayer(3, 5, kernel_size=3, activation="lrelu")
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(2, 3, 8, 8)
    ref = F.conv2d(x, layer.weight / math.sqrt(27), layer.bias, padding=1)
    assert torch.allclose(layer(x), F.leaky_relu(ref, 0.2) * math.sqrt(2), atol=1e-5)
    down = Conv2dLayer(3, 5, kernel_size=3, down=2)
    assert down(x).shape == (2, 5, 4, 4)


def _naive_modconv(x, weight, styles, demodulate):
    """Per-sample loop: scale the kernel by the styles, normalise each output kernel, plain conv."""
    outs = []
    for i in range(x.shape[0]):
        w = weight * styles[i].reshape(1, -1, 1, 1)
        if demodulate:
            w = w / w.square().sum(dim=[1, 2, 3], keepdim=True).add(1e-8).sqrt()
        outs.append(F.conv2d(x[i:i + 1], w, padding=weight.shape[-1] // 2))
    return torch.cat(outs)


@pytest.mark.parametrize("demodulate", [True, False])
@pytest.mark.parametrize("fused", [True, False])
def test_modulated_conv_matches_naive_loop(demodulate, fused):
    torch.manual_seed(2)
    x = torch.randn(3, 4, 6, 6, dtype=torch.float64)
    weight = torch.randn(5, 4, 3, 3, dtype=torch.float64)
    styles = torch.randn(3, 4, dtype=torch.float64)
    out = modulated_conv2d(x, weight, styles, padding=1, demodulate=demodulate, fused_modconv=fused)
    assert torch.allclose(out, _naive_modconv(x, weight, styles, demodulate), atol=1e-9)


def test_modulated_conv_upsampling_paths_agree():
    torch.manual_seed(3)
    from torch_utils.ops import upfirdn2d
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    weight = torch.randn(3, 4, 3, 3, dtype=torch.float64)
    styles = torch.randn(2, 4, dtype=torch.float64)
    kw = dict(up=2, padding=1, resample_filter=f.double(), flip_weight=False)
    a = modulated_conv2d(x, weight, styles, fused_modconv=True, **kw)
    b = modulated_conv2d(x, weight, styles, fused_modconv=False, **kw)
    assert a.shape == (2, 3, 10, 10)
    assert torch.allclose(a, b, atol=1e-9)


def test_mapping_per_class_w_avg_and_truncation():
    torch.manual_seed(4)
    c_dim, beta = 3, 0.9
    mapping = MappingNetwork(z_dim=8, c_dim=c_dim, w_dim=6, num_ws=4, num_layers=2, w_avg_beta=beta)
    expected = torch.zeros(c_dim, 6)
    for step in range(3):
        z = torch.randn(5, 8)
        labels = torch.tensor([0, 0, 1, 0, 1])  # class 2 never appears
        c = F.one_hot(labels, c_dim).float()
        ws = mapping(z, c, update_emas=True)
        w = ws[:, 0]
        for k in range(2):
            expected[k] = w[labels == k].mean(0) + beta * (expected[k] - w[labels == k].mean(0))
    assert torch.allclose(mapping.w_avg, expected, atol=1e-5)
    assert torch.all(mapping.w_avg[2] == 0)  # untouched: never seen
    assert not torch.allclose(mapping.w_avg[0], mapping.w_avg[1])

    z = torch.randn(2, 8)
    c = F.one_hot(torch.tensor([0, 1]), c_dim).float()
    ws = mapping(z, c, truncation_psi=0)
    assert ws.shape == (2, 4, 6)
    assert torch.allclose(ws[0], mapping.w_avg[0].expand(4, -1), atol=1e-6)
    assert torch.allclose(ws[1], mapping.w_avg[1].expand(4, -1), atol=1e-6)
    # Cut-off: only the first 2 ws are truncated; psi=0.5 is half way to the class mean.
    free = mapping(z, c)
    half = mapping(z, c, truncation_psi=0.5, truncation_cutoff=2)
    centre = mapping.w_avg[[0, 1]].unsqueeze(1)
    assert torch.allclose(half[:, :2], 0.5 * (free[:, :2] + centre), atol=1e-6)
    assert torch.allclose(half[:, 2:], free[:, 2:])


def test_mapping_has_no_camera_input_and_embeds_the_class():
    params = set(inspect.signature(MappingNetwork.forward).parameters)
    assert params == {"self", "z", "c", "truncation_psi", "truncation_cutoff", "update_emas"}
    mapping = MappingNetwork(z_dim=8, c_dim=4, w_dim=8, num_ws=None, num_layers=3)
    assert [getattr(mapping, f"fc{i}").in_features for i in range(3)] == [16, 8, 8]
    z = torch.randn(1, 8)
    a = mapping(z, F.one_hot(torch.tensor([0]), 4).float())
    b = mapping(z, F.one_hot(torch.tensor([3]), 4).float())
    assert a.shape == (1, 8) and not torch.allclose(a, b)


def _expected_num_ws(res, extra):
    n_blocks = int(math.log2(res)) - 1
    convs = 1 + 2 * (n_blocks - 1) + (2 * n_blocks if extra else 0)
    return convs + 1  # + the last ToRGB


@pytest.mark.parametrize("res", [16, 32])
def test_extra_blocks_num_ws_and_parameter_ratio(res):
    plain = SynthesisNetwork(w_dim=16, img_resolution=res, img_channels=12, extra_blocks=False, **TINY)
    deep = SynthesisNetwork(w_dim=16, img_resolution=res, img_channels=12, extra_blocks=True, **TINY)
    assert plain.num_ws == _expected_num_ws(res, False)
    assert deep.num_ws == _expected_num_ws(res, True)
    assert len(deep.block_names) == 2 * len(plain.block_names)
    ratio = misc.count_parameters(deep) / misc.count_parameters(plain)
    assert 1.8 <= ratio <= 2.2, ratio
    # Extra blocks keep the resolution: each one's up is 1 and its resolution equals its predecessor's.
    for name in deep.block_names:
        if name.endswith("_extra"):
            assert getattr(deep, name).up == 1
            assert getattr(deep, name).resolution == getattr(deep, name[:-len("_extra")]).resolution


def test_paper_size_backbone_doubles():
    # The real sizes, built only (no forward): 256x256 tri-planes with 96 channels.
    plain = SynthesisNetwork(w_dim=512, img_resolution=256, img_channels=96, extra_blocks=False)
    deep = SynthesisNetwork(w_dim=512, img_resolution=256, img_channels=96, extra_blocks=True)
    assert plain.num_ws == 14 and deep.num_ws == 28
    ratio = misc.count_parameters(deep) / misc.count_parameters(plain)
    assert 1.8 <= ratio <= 2.2, ratio


@pytest.mark.parametrize("extra", [False, True])
def test_synthesis_forward_shapes_and_noise_modes(extra):
    torch.manual_seed(5)
    net = SynthesisNetwork(w_dim=16, img_resolution=16, img_channels=12, extra_blocks=extra, **TINY)
    ws = torch.randn(2, net.num_ws, 16)
    img = net(ws, noise_mode="const")
    assert img.shape == (2, 12, 16, 16) and img.dtype == torch.float32  # fp32 on CPU despite num_fp16_res
    assert torch.isfinite(img).all()
    assert torch.allclose(img, net(ws, noise_mode="const"))
    # Every w takes part: perturbing any single one changes the output.
    for idx in range(net.num_ws):
        ws2 = ws.clone()
        ws2[:, idx] += 1.0
        assert not torch.allclose(net(ws2, noise_mode="const"), img), idx
    with pytest.raises(AssertionError):
        net(torch.randn(2, net.num_ws + 1, 16))
    with pytest.raises(ValueError, match="noise_mode"):
        net(ws, noise_mode="bogus")


def test_synthesis_fused_and_separate_modconv_agree():
    torch.manual_seed(6)
    net = SynthesisNetwork(w_dim=8, img_resolution=16, img_channels=6, **TINY)  # computes in fp32
    ws = torch.randn(2, net.num_ws, 8)
    a = net(ws, noise_mode="const", fused_modconv=True)
    b = net(ws, noise_mode="const", fused_modconv=False)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)


def test_synthesis_inference_on_a_cpu_takes_the_separate_modconv_path():
    """On a CPU the default for inference is the separate path (channels-last, the compiled
    kernels), not grouped convs: eval mode gives bitwise what fused_modconv=False gives, and
    not what the grouped convs give."""
    torch.manual_seed(7)
    net = SynthesisNetwork(w_dim=8, img_resolution=16, img_channels=48, **TINY).eval()
    ws = torch.randn(2, net.num_ws, 8)
    with torch.no_grad():
        default = net(ws, noise_mode="const")
        separate = net(ws, noise_mode="const", fused_modconv=False)
        grouped = net(ws, noise_mode="const", fused_modconv=True)
    assert torch.equal(default, separate)
    assert not torch.equal(default, grouped)
    assert torch.allclose(default, grouped, rtol=1e-4, atol=1e-4)


def test_synthesis_rejects_bad_resolution():
    with pytest.raises(ValueError, match="img_resolution"):
        SynthesisNetwork(w_dim=8, img_resolution=24, img_channels=6)


@pytest.mark.parametrize("neural_res,img_res", [(8, 8), (8, 16), (16, 32), (8, 32), (32, 128)])
def test_superresolution_sizes(neural_res, img_res):
    torch.manual_seed(7)
    sr = SuperResolution(in_channels=6, neural_res=neural_res, img_res=img_res, w_dim=8,
                         channel_base=128, channel_max=8)
    x = torch.randn(2, 6, neural_res, neural_res)
    ws = torch.randn(2, 3, 8)
    out = sr(x, ws)
    assert out.shape == (2, 3, img_res, img_res)
    assert torch.isfinite(out).all()
    n_up = int(math.log2(img_res // neural_res))
    assert len(sr.block_names) == n_up + 1  # one block per doubling + one refine block
    # Only the last w is used.
    ws2 = ws.clone()
    ws2[:, :-1] = torch.randn(2, 2, 8)
    assert torch.allclose(sr(x, ws2), out)


def test_superresolution_is_residual_on_upsampled_rgb():
    sr = SuperResolution(in_channels=4, neural_res=8, img_res=16, w_dim=8, channel_base=64, channel_max=8)
    # Zero ToRGB weights and biases: the output is exactly the bilinearly upsampled RGB.
    with torch.no_grad():
        for name in sr.block_names:
            getattr(sr, name).torgb.weight.zero_()
    x = torch.randn(1, 4, 8, 8)
    ref = F.interpolate(x[:, :3], size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.allclose(sr(x, torch.randn(1, 1, 8)), ref, atol=1e-6)


def test_superresolution_rejects_shrinking():
    with pytest.raises(ValueError, match="img_res"):
        SuperResolution(in_channels=4, neural_res=32, img_res=16, w_dim=8)


def test_unconditional_mapping_tracks_global_mean():
    mapping = MappingNetwork(z_dim=8, c_dim=0, w_dim=4, num_ws=2, w_avg_beta=0.5)
    ws = mapping(torch.randn(6, 8), None, update_emas=True)
    assert torch.allclose(mapping.w_avg[0], 0.5 * ws[:, 0].mean(0), atol=1e-6)
    assert torch.allclose(mapping(torch.randn(3, 8), None, truncation_psi=0), mapping.w_avg[0].expand(3, 2, 4))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU for the fp16 path")
def test_synthesis_fp16_on_cuda_matches_fp32():
    torch.manual_seed(8)
    net = SynthesisNetwork(w_dim=16, img_resolution=32, img_channels=12, channel_base=1024, channel_max=64,
                           num_fp16_res=2, conv_clamp=256).cuda()
    ws = torch.randn(4, net.num_ws, 16, device="cuda")
    for fused in (True, False):
        half = net(ws, noise_mode="const", fused_modconv=fused)
        full = net(ws, noise_mode="const", fused_modconv=fused, force_fp32=True)
        assert half.dtype == torch.float32 and torch.isfinite(half).all()
        assert (half - full).norm() / full.norm() < 0.02
