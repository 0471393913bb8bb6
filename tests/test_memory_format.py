"""CPU channels-last activations (torch_utils.misc.layout_policy): same values, NHWC inside."""

from __future__ import annotations

import torch

from torch_utils import misc
from training.discriminator import Discriminator
from training.triplane import TriPlaneGenerator
from training_fixtures import TINY_D, TINY_G


def _g_and_d_pass(G, D, z, c, layout_channels_last: bool):
    """G's image, D's score and every parameter's gradient of one G->D pass, under one layout."""
    with misc.cpu_channels_last(layout_channels_last):
        torch.manual_seed(3)  # same noise and cameras for both layouts
        out = G(z, c)
        score = D(dict(image=out["image"], image_raw=out["image_raw"]), c).sum()
        params = list(G.parameters()) + list(D.parameters())
        grads = torch.autograd.grad(score, params, allow_unused=True)
    return out["image"].detach(), score.detach(), grads


def test_channels_last_gives_the_same_values_and_gradients_as_nchw():
    torch.manual_seed(0)
    G = TriPlaneGenerator(c_dim=2, img_res=16, **TINY_G).train()
    D = Discriminator(c_dim=2, img_resolution=16, **TINY_D).train()
    z, c = torch.randn(4, G.z_dim), torch.eye(2)[[0, 1, 0, 1]]
    img_a, score_a, grads_a = _g_and_d_pass(G, D, z, c, False)
    img_b, score_b, grads_b = _g_and_d_pass(G, D, z, c, True)
    assert torch.allclose(img_a, img_b, atol=1e-5)
    assert torch.allclose(score_a, score_b, rtol=1e-5, atol=1e-5)
    for ga, gb in zip(grads_a, grads_b):
        assert (ga is None) == (gb is None)
        if ga is not None:
            assert torch.allclose(ga, gb, rtol=1e-3, atol=1e-5 * (1 + ga.abs().max().item()))


def test_conv_inputs_are_channels_last_only_when_the_policy_says_so():
    torch.manual_seed(0)
    G = TriPlaneGenerator(c_dim=2, img_res=16, **TINY_G).train()  # training: separate modconv
    conv = G.backbone.b8.conv1
    seen = []
    handle = conv.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous(
        memory_format=torch.channels_last) and not args[0].is_contiguous()))
    z, c = torch.randn(2, G.z_dim), torch.eye(2)
    with torch.no_grad():
        for enabled in (True, False):
            with misc.cpu_channels_last(enabled):
                G(z, c)
    handle.remove()
    assert seen == [True, False]
    assert misc.layout_policy.cpu_channels_last  # the context restored the default


def test_activation_memory_format_rules():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    with misc.cpu_channels_last(True):
        assert misc.activation_memory_format(cpu, torch.float32) == torch.channels_last
    with misc.cpu_channels_last(False):
        assert misc.activation_memory_format(cpu, torch.float32) == torch.contiguous_format
    assert misc.activation_memory_format(cuda, torch.float32, True) == torch.contiguous_format
    assert misc.activation_memory_format(cuda, torch.float16, True) == torch.channels_last
    assert misc.activation_memory_format(cuda, torch.float16, False) == torch.contiguous_format


def test_wide_skip_images_follow_the_activation_layout_and_rgb_ones_stay_nchw():
    """The tri-plane skip image (3 x C channels) is channels-last with the CPU policy, NCHW
    without it; the super-resolution's RGB skip image is NCHW either way."""
    from training.networks_stylegan2 import SynthesisBlock

    torch.manual_seed(0)
    G = TriPlaneGenerator(c_dim=2, img_res=16, **TINY_G).train()
    seen = []

    def record(module, args, output):
        img = output[1]
        seen.append((module.img_channels, img.is_contiguous(memory_format=torch.channels_last)
                     and not img.is_contiguous()))

    handles = [m.register_forward_hook(record) for m in G.modules() if isinstance(m, SynthesisBlock)]
    z, c = torch.randn(2, G.z_dim), torch.eye(2)
    layouts = {}
    with torch.no_grad():
        for enabled in (True, False):
            seen.clear()
            with misc.cpu_channels_last(enabled):
                G(z, c)
            layouts[enabled] = list(seen)
    for h in handles:
        h.remove()
    wide = 3 * TINY_G["triplane_channels"]
    assert {ch for ch, _ in layouts[True]} == {wide, 3}
    assert all(cl == (ch == wide) for ch, cl in layouts[True])
    assert not any(cl for _, cl in layouts[False])
