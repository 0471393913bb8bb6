"""Tests for the tri-plane generator (training/triplane.py): plane axes, decoder, views, truncation, gradients."""

import inspect
import json

import pytest
import torch
import torch.nn.functional as F

from torch_utils import misc
from training.triplane import TriPlaneDecoder, TriPlaneGenerator, project_onto_planes, sample_from_planes, \
    sample_mean_from_planes
from training.volumetric_rendering import cameras_from_angles

C_DIM = 3


def tiny_generator(**overrides) -> TriPlaneGenerator:
    kwargs = dict(
        z_dim=16, c_dim=C_DIM, w_dim=16, triplane_res=16, triplane_channels=8, neural_res=8, img_res=16,
        decoder_hidden=16, decoder_out=8, mapping_layers=2,
        backbone_kwargs=dict(channel_base=128, channel_max=16),
        rendering_kwargs=dict(num_coarse=6, num_fine=6, box_size=1.0, radius=2.7, fov_deg=18.837),
        sr_kwargs=dict(channel_base=64, channel_max=8),
    )
    kwargs.update(overrides)
    return TriPlaneGenerator(**kwargs)


def one_hot(labels):
    return F.one_hot(torch.as_tensor(labels), C_DIM).float()


# -- plane geometry -----------------------------------------------------------------------


def test_project_onto_planes_axes():
    pts = torch.tensor([[[0.1, -0.2, 0.3], [0.5, 0.25, -0.5]]])
    coords = project_onto_planes(pts, box_size=1.0)  # scale 2 / box_size = 2
    assert coords.shape == (1, 3, 2, 2)
    for p in range(2):
        x, y, z = (2 * pts[0, p]).tolist()
        assert torch.allclose(coords[0, 0, p], torch.tensor([x, y]))  # XY
        assert torch.allclose(coords[0, 1, p], torch.tensor([x, z]))  # XZ
        assert torch.allclose(coords[0, 2, p], torch.tensor([y, z]))  # YZ


def _texel_centre(index: int, res: int, box_size: float) -> float:
    """World coordinate of texel ``index``'s centre (align_corners=False)."""
    return ((2 * index + 1) / res - 1) * box_size / 2


@pytest.mark.parametrize("plane", [0, 1, 2])
def test_delta_texel_is_found_at_the_right_point(plane):
    res, box = 8, 1.6
    row, col = 2, 5  # height index (second plane coordinate), width index (first)
    planes = torch.zeros(1, 3, 2, res, res)
    planes[0, plane, 1, row, col] = 1.0
    axes = [(0, 1), (0, 2), (1, 2)][plane]
    point = torch.full([3], 0.123)
    point[axes[0]] = _texel_centre(col, res, box)
    point[axes[1]] = _texel_centre(row, res, box)
    feats = sample_from_planes(planes, point.reshape(1, 1, 3), box)  # [1,3,1,C]
    expected = torch.zeros(3, 2)
    expected[plane, 1] = 1.0
    assert torch.allclose(feats[0, :, 0], expected, atol=1e-6)
    # Half a texel away along the plane's width axis the bilinear weight is 1/2.
    point[axes[0]] += 0.5 * box / res
    assert torch.allclose(sample_from_planes(planes, point.reshape(1, 1, 3), box)[0, plane, 0, 1],
                          torch.tensor(0.5), atol=1e-6)


def test_points_outside_box_read_zero():
    planes = torch.ones(1, 3, 4, 8, 8)
    pts = torch.tensor([[[0.0, 0.0, 0.0], [2.0, 2.0, 2.0]]])
    feats = sample_from_planes(planes, pts, box_size=1.0)
    assert torch.allclose(feats[0, :, 0], torch.ones(3, 4))
    assert torch.allclose(feats[0, :, 1], torch.zeros(3, 4))


def test_mean_sampler_equals_the_mean_of_the_per_plane_samples_with_gradients():
    torch.manual_seed(0)
    planes = torch.randn(2, 3, 5, 8, 8, requires_grad=True)
    pts = torch.rand(2, 7, 3) * 1.2 - 0.6  # some points outside the box of size 1
    weights = torch.randn(2, 7, 5)
    mean = sample_mean_from_planes(planes, pts, box_size=1.0)
    reference = sample_from_planes(planes, pts, box_size=1.0).mean(dim=1)
    assert mean.shape == (2, 7, 5) and torch.allclose(mean, reference, atol=1e-6)
    (grad,) = torch.autograd.grad((mean * weights).sum(), planes)
    (grad_ref,) = torch.autograd.grad((reference * weights).sum(), planes)
    assert torch.allclose(grad, grad_ref, atol=1e-6)


def test_sample_density_aggregates_planes_by_mean():
    G = tiny_generator()
    planes = torch.zeros(1, 3, 8, 4, 4)
    for k, value in enumerate([1.0, 2.0, 6.0]):
        planes[0, k] = value
    seen = {}

    def remember_input(module, inputs):
        seen.setdefault("x", inputs[0])

    G.decoder.register_forward_pre_hook(remember_input)
    sigma, feats = G.sample_density(planes, torch.zeros(1, 5, 3))
    assert torch.allclose(seen["x"], torch.full([1, 5, 8], 3.0))  # (1 + 2 + 6) / 3, not the sum 9
    ref_sigma, ref_feats = G.decoder(torch.full([1, 5, 8], 3.0))
    assert torch.allclose(sigma, ref_sigma) and torch.allclose(feats, ref_feats)
    act, _ = G.sample_density(planes, torch.zeros(1, 5, 3), activate=True)
    assert torch.allclose(act, F.softplus(sigma - 1.0))


# -- decoder ------------------------------------------------------------------------------


def test_decoder_layer_counts():
    deep = TriPlaneDecoder(32, hidden=64, out_features=32, num_layers=4)
    sizes = [(layer.in_features, layer.out_features) for layer in deep.layers]
    assert sizes == [(32, 64), (64, 64), (64, 64), (64, 33)]
    eg3d = TriPlaneDecoder(32, hidden=64, out_features=32, num_layers=2)
    assert [(layer.in_features, layer.out_features) for layer in eg3d.layers] == [(32, 64), (64, 33)]
    assert sum(1 for m in deep.modules() if hasattr(m, "weight")) == 4
    assert tiny_generator(decoder_layers=2).decoder.num_layers == 2


def test_decoder_outputs_and_softplus_hidden():
    torch.manual_seed(0)
    dec = TriPlaneDecoder(4, hidden=8, out_features=5, num_layers=3)
    x = torch.randn(2, 7, 4) * 10
    sigma, feats = dec(x)
    assert sigma.shape == (2, 7, 1) and feats.shape == (2, 7, 5)
    assert feats.abs().max() <= 1.002 + 1e-6
    # Naive reference: FC, softplus, FC, softplus, FC.
    h = x
    for i, layer in enumerate(dec.layers):
        h = h @ (layer.weight * layer.weight_gain).t() + layer.bias * layer.bias_gain
        if i < 2:
            h = F.softplus(h)
    assert torch.allclose(sigma, h[..., :1], atol=1e-5)
    assert torch.allclose(feats, torch.sigmoid(h[..., 1:]) * 2.004 - 1.002, atol=1e-5)


# -- generator end to end -----------------------------------------------------------------


@pytest.mark.parametrize("views", [1, 3])
def test_generator_output_shapes_and_ranges(views):
    torch.manual_seed(1)
    G = tiny_generator().eval()
    out = G(torch.randn(2, 16), one_hot([0, 2]), views=views)
    n = 2 * views
    assert out["image"].shape == (n, 3, 16, 16)
    assert out["image_raw"].shape == (n, 3, 8, 8)
    assert out["image_depth"].shape == (n, 1, 8, 8)
    assert out["opacity"].shape == (n, 1, 8, 8)
    assert out["planes"].shape == (2, 3, 8, 16, 16)
    assert out["ws"].shape == (2, G.num_ws, 16)
    assert len(out["cameras"]) == n and out["views"] == views
    for key in ("image", "image_raw", "image_depth", "opacity"):
        assert torch.isfinite(out[key]).all(), key
    assert out["image_raw"].abs().max() <= 1.002 + 1e-5
    assert ((out["opacity"] >= 0) & (out["opacity"] <= 1 + 1e-5)).all()
    # Every ray meets the box [-0.5, 0.5]^3 from radius 2.7 and the depth lies inside it.
    half_diag = 0.5 * 3 ** 0.5
    assert (out["image_depth"] >= 2.7 - half_diag - 1e-4).all() and (out["image_depth"] <= 2.7 + half_diag + 1e-4).all()
    radii = out["cameras"].centers.norm(dim=-1)
    assert torch.allclose(radii, torch.full_like(radii, 2.7), atol=1e-4)


def test_views_are_item_major_and_share_the_planes():
    torch.manual_seed(2)
    G = tiny_generator().eval()
    z, c = torch.randn(2, 16), one_hot([0, 1])
    cams = cameras_from_angles([0.0, 120.0, 240.0, 30.0, 150.0, 270.0], [10.0, -20.0, 40.0, 0.0, 5.0, -5.0])
    out = G(z, c, cameras=cams, noise_mode="const")
    assert out["views"] == 3
    for item in range(2):
        single = G(z[item:item + 1], c[item:item + 1], cameras=cams[item * 3:(item + 1) * 3], noise_mode="const")
        assert torch.allclose(out["planes"][item], single["planes"][0], atol=1e-5)
        assert torch.allclose(out["image"][item * 3:(item + 1) * 3], single["image"], atol=1e-4)
        # The views of one item are different images of the same planes.
        imgs = out["image_raw"][item * 3:(item + 1) * 3]
        assert not torch.allclose(imgs[0], imgs[1]) and not torch.allclose(imgs[1], imgs[2])
    # Sampled view sets: the V cameras of one item lie 120 degrees apart in azimuth.
    sampled = G(z, c, views=3)["cameras"].centers.reshape(2, 3, 3)
    azim = torch.atan2(sampled[..., 0], sampled[..., 2])
    gaps = torch.remainder(azim[:, 1:] - azim[:, :1], 2 * torch.pi)
    assert torch.allclose(gaps, torch.tensor([[2.0944, 4.1888]]).expand(2, 2), atol=1e-3)


def test_camera_changes_images_but_not_planes_or_mapping():
    torch.manual_seed(3)
    G = tiny_generator().eval()
    ws = G.mapping(torch.randn(1, 16), one_hot([1]))
    a = G.synthesis(ws, cameras=cameras_from_angles(0.0, 0.0), noise_mode="const")
    b = G.synthesis(ws, cameras=cameras_from_angles(90.0, 30.0), noise_mode="const")
    assert torch.equal(a["planes"], b["planes"])
    assert not torch.allclose(a["image"], b["image"])
    assert torch.equal(G.planes(ws, noise_mode="const"), a["planes"])
    for fn in (G.mapping.forward, G.planes, G.backbone.forward):
        names = " ".join(inspect.signature(fn).parameters)
        assert not any(word in names for word in ("camera", "pose", "c2w", "cam")), fn


def test_truncation_psi_zero_gives_class_mean():
    torch.manual_seed(4)
    G = tiny_generator()
    for _ in range(3):
        G.mapping(torch.randn(6, 16), one_hot([0, 1, 2, 0, 1, 2]), update_emas=True)
    w_avg = G.mapping.w_avg
    assert w_avg.shape == (C_DIM, 16)
    assert not torch.allclose(w_avg[0], w_avg[1]) and not torch.allclose(w_avg[1], w_avg[2])
    out = G(torch.randn(3, 16), one_hot([2, 0, 1]), truncation_psi=0, noise_mode="const",
            cameras=cameras_from_angles([0.0, 0.0, 0.0], [0.0, 0.0, 0.0]))
    for i, k in enumerate([2, 0, 1]):
        assert torch.allclose(out["ws"][i], w_avg[k].expand(G.num_ws, -1), atol=1e-6)
    # Same class, psi=0: identical planes whatever z.
    p = G.planes(G.mapping(torch.randn(2, 16), one_hot([1, 1]), truncation_psi=0), noise_mode="const")
    assert torch.allclose(p[0], p[1], atol=1e-6)


def test_gradients_reach_every_parameter():
    torch.manual_seed(5)
    G = tiny_generator().train()
    out = G(torch.randn(2, 16), one_hot([0, 1]), views=2)
    (out["image"].square().mean() + out["image_raw"].mean()).backward()
    missing = [name for name, p in G.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, missing
    groups = {name.split(".")[0] for name, _ in G.named_parameters()}
    assert groups == {"mapping", "backbone", "decoder", "superresolution"}


def test_init_kwargs_roundtrip_and_summary(capsys):
    G = tiny_generator(decoder_layers=2, extra_blocks=False)
    text = json.dumps(G.init_kwargs)
    G2 = TriPlaneGenerator(**json.loads(text))
    G2.load_state_dict(G.state_dict())
    assert G2.num_ws == G.num_ws and G2.decoder.num_layers == 2
    with pytest.raises(ValueError, match="rendering_kwargs"):
        tiny_generator(rendering_kwargs=dict(bogus=1))
    misc.print_module_summary(G, [torch.randn(1, 16), one_hot([0])])
    assert "Total" in capsys.readouterr().out


def test_neural_res_override_and_density_query():
    torch.manual_seed(6)
    G = tiny_generator().eval()
    out = G(torch.randn(1, 16), one_hot([0]), neural_res=16)
    assert out["image_raw"].shape == (1, 3, 16, 16) and out["image"].shape == (1, 3, 16, 16)
    sigma, feats = G.sample_density(out["planes"], torch.rand(1, 10, 3) - 0.5)
    assert sigma.shape == (1, 10, 1) and feats.shape == (1, 10, 8)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_generator_on_cuda_with_fp16_backbone():
    torch.manual_seed(7)
    G = tiny_generator(backbone_kwargs=dict(channel_base=128, channel_max=16, num_fp16_res=2)).cuda().train()
    out = G(torch.randn(2, 16, device="cuda"), one_hot([0, 1]).cuda(), views=3)
    assert out["image"].shape == (6, 3, 16, 16) and out["image"].dtype == torch.float32
    assert torch.isfinite(out["image"]).all() and torch.isfinite(out["image_depth"]).all()
    out["image"].mean().backward()
    assert all(p.grad is not None for p in G.backbone.parameters())


def test_generator_is_deterministic_for_a_fixed_seed():
    G = tiny_generator().eval()
    z, c = torch.randn(2, 16, generator=torch.Generator().manual_seed(5)), one_hot([0, 1])
    outs = []
    for _ in range(2):
        torch.manual_seed(7)  # cameras, noise and ray jitter all come from this seed
        outs.append(G(z, c, views=2))
    for key in ("image", "image_raw", "image_depth"):
        assert torch.equal(outs[0][key], outs[1][key]), key
    torch.manual_seed(8)
    assert not torch.equal(G(z, c, views=2)["image"], outs[0]["image"])


def test_decoder_depth_changes_parameter_count_by_the_hidden_layers():
    counts = {n: misc.count_parameters(TriPlaneDecoder(32, hidden=64, out_features=32, num_layers=n)) for n in (2, 4)}
    assert counts[4] - counts[2] == 2 * (64 * 64 + 64)  # two more FC 64->64 layers with biases


def test_cpu_kernels_give_the_torch_ops_results(cpu_kernels_module):
    """The whole generator, forward and every parameter gradient, with the compiled CPU kernels
    (tri-plane sampler, modulation, bias_act) and with all of them switched off."""
    from torch_utils.ops.cpu_kernels import kernels_enabled

    torch.manual_seed(0)
    G = tiny_generator().train().to(memory_format=torch.channels_last)
    z, c = torch.randn(2, G.z_dim), one_hot([0, 2])
    results = []
    for kernels in (True, False):
        torch.manual_seed(1)
        with kernels_enabled(kernels):
            out = G(z, c)
        loss = (out["image"] * torch.linspace(-1, 1, out["image"].numel()).reshape(out["image"].shape)).sum()
        G.zero_grad(set_to_none=True)
        with kernels_enabled(kernels):
            loss.backward()
        results.append([out["image"], out["image_raw"]] + [p.grad.clone() for p in G.parameters()])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_decoder_checkpoint_gives_the_same_outputs_and_gradients():
    """decoder_checkpoint recomputes the decoder's hidden layers in the backward: same values,
    same gradient for every parameter (and it is stored in the constructor arguments)."""
    torch.manual_seed(0)
    G = tiny_generator().train()
    G_ckpt = tiny_generator(decoder_checkpoint=True).train()
    G_ckpt.load_state_dict(G.state_dict())
    assert G_ckpt.init_kwargs["decoder_checkpoint"] is True and G_ckpt.decoder.checkpoint
    G_ckpt.decoder.CHECKPOINT_POINTS = 100  # 2 views x 64 rays x 12 samples: 16 chunks per item
    z, c = torch.randn(2, G.z_dim), one_hot([0, 2])
    results = []
    for net in (G, G_ckpt):
        torch.manual_seed(1)
        out = net(z, c, views=2)
        (out["image"].square().mean() + out["image_raw"].mean()).backward()
        results.append([out["image"]] + [p.grad for p in net.parameters()])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
