"""Tests of training/augment.py: exact properties of each ADA transform, 6-channel alignment, gradients, AdaptiveP."""

from __future__ import annotations

import json
import math

import pytest
import torch

from training.augment import (AUGMENT_PRESETS, AdaptiveP, AugmentPipe, build_augment_pipe, translate2d,
                              warp_images)

N, H, W = 16, 16, 16
SQRT3 = math.sqrt(3.0)


def _images(n: int = N, c: int = 3, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, c, H, W, generator=g, dtype=dtype) * 2 - 1)


def _pipe(p: float = 1.0, **kwargs) -> AugmentPipe:
    pipe = AugmentPipe(**kwargs)
    pipe.p.fill_(p)
    return pipe


def _luma_chroma(x: torch.Tensor):
    """Projection on the grey axis (scalar per pixel) and the orthogonal chroma vector [N,3,H,W]."""
    luma = x.sum(dim=1, keepdim=True) / SQRT3
    return luma, x - luma / SQRT3


# ---------------------------------------------------------------------------- identity and geometry

@pytest.mark.parametrize("preset", ["bgc", "bg", "c"])
def test_p_zero_is_exact_identity(preset):
    x = _images()
    assert torch.equal(build_augment_pipe(preset)(x), x)


def test_xflip_gives_identity_or_mirror_and_both_occur():
    x = _images(n=32)
    torch.manual_seed(1)
    y = _pipe(xflip=1)(x)
    same = [torch.equal(y[i], x[i]) for i in range(len(x))]
    mirrored = [torch.equal(y[i], x[i].flip(-1)) for i in range(len(x))]
    assert all(s or m for s, m in zip(same, mirrored))
    assert any(same) and any(mirrored)


def test_rotate90_gives_one_of_four_exact_rotations():
    x = _images(n=32)
    torch.manual_seed(2)
    y = _pipe(rotate90=1)(x)
    seen = set()
    for i in range(len(x)):
        matches = [k for k in range(4) if torch.equal(y[i], torch.rot90(x[i], k, dims=(1, 2)))]
        assert len(matches) == 1, f"image {i} is not an exact quarter turn of its input"
        seen.add(matches[0])
    assert seen == {0, 1, 2, 3}


def test_translation_matrix_moves_content_by_whole_pixels():
    x = _images(n=2)
    # Forward translation by (+3, -2) pixels; warp_images takes the output->input map (its inverse).
    tx, ty = torch.tensor([3.0, -1.0]), torch.tensor([-2.0, 4.0])
    y = warp_images(x, translate2d(-tx, -ty))
    for i in range(2):
        dx, dy = int(tx[i]), int(ty[i])
        # Interior output pixels whose source lies inside the image: y[r, c] = x[r - dy, c - dx].
        rows = range(max(dy, 0), H + min(dy, 0))
        cols = range(max(dx, 0), W + min(dx, 0))
        expected = x[i][:, [r - dy for r in rows]][:, :, [c - dx for c in cols]]
        assert torch.equal(y[i][:, list(rows)][:, :, list(cols)], expected)
    # Uncovered border: reflection about the image edge (source column -1 -> 0, -2 -> 1, -3 -> 2).
    assert torch.equal(y[0][:, :H - 2, :3], x[0][:, 2:, [2, 1, 0]])


def test_each_transform_is_applied_with_probability_p_times_multiplier():
    x = torch.rand(4000, 3, 2, 2) * 2 - 1
    torch.manual_seed(16)
    changed = (_pipe(p=0.6, brightness=0.5)(x) != x).flatten(1).any(1).float().mean()
    assert abs(float(changed) - 0.3) < 0.03  # binomial std is about 0.007


def test_xint_shifts_each_image_by_a_whole_number_of_pixels():
    x = _images(n=24)
    torch.manual_seed(3)
    y = _pipe(xint=1, xint_max=0.125)(x)
    shifts = set()
    for i in range(len(x)):
        found = []
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                core_out = y[i, :, 2 + dy:H - 2 + dy, 2 + dx:W - 2 + dx]
                if torch.equal(core_out, x[i, :, 2:H - 2, 2:W - 2]):
                    found.append((dx, dy))
        assert len(found) == 1, f"image {i}: no unique integer shift within +-2 pixels"
        shifts.add(found[0])
    assert len(shifts) > 3


def test_arbitrary_rotation_about_centre_keeps_a_radial_image_radial():
    # A function of the distance to the centre is invariant under rotation about the centre
    # (up to bilinear error); checks that rotations use the image centre as origin.
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5 - H / 2, torch.arange(W) + 0.5 - W / 2, indexing="ij")
    radial = torch.cos(torch.sqrt(xs ** 2 + ys ** 2) / 3.0).expand(8, 3, H, W).contiguous()
    torch.manual_seed(4)
    y = _pipe(rotate=1)(radial)
    centre = (slice(None), slice(None), slice(4, 12), slice(4, 12))
    assert (y[centre] - radial[centre]).abs().max() < 0.08
    # ...whereas a non-radial image is changed by the same rotations.
    x = _images(n=8)
    torch.manual_seed(4)
    assert (_pipe(rotate=1)(x) - x).abs().max() > 0.3


# ---------------------------------------------------------------------------- colour

def test_brightness_adds_one_constant_per_image():
    x = _images()
    torch.manual_seed(5)
    d = _pipe(brightness=1)(x) - x
    per_image = d.flatten(1)
    assert torch.allclose(per_image, per_image[:, :1].expand_as(per_image), atol=1e-6)
    assert per_image[:, 0].abs().max() > 0.05


def test_contrast_scales_about_zero_by_one_positive_factor_per_image():
    x = _images()
    torch.manual_seed(6)
    y = _pipe(contrast=1)(x)
    c = (y.flatten(1) * x.flatten(1)).sum(1) / x.flatten(1).square().sum(1)  # least-squares factor
    assert (c > 0).all() and (c - 1).abs().max() > 0.05
    assert torch.allclose(y, c[:, None, None, None] * x, atol=1e-5)
    # Hence deviations from the mean are scaled by the same factor.
    dev_in, dev_out = x - x.mean(dim=(1, 2, 3), keepdim=True), y - y.mean(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(dev_out, c[:, None, None, None] * dev_in, atol=1e-5)


def test_lumaflip_keeps_luma_magnitude_and_chroma():
    x = _images(n=32)
    torch.manual_seed(7)
    y = _pipe(lumaflip=1)(x)
    (lx, cx), (ly, cy) = _luma_chroma(x), _luma_chroma(y)
    assert torch.allclose(ly.abs(), lx.abs(), atol=1e-5)
    assert torch.allclose(cy, cx, atol=1e-5)
    flipped = [not torch.allclose(ly[i], lx[i], atol=1e-4) for i in range(len(x))]
    assert any(flipped) and not all(flipped)


def test_hue_rotation_keeps_luma_and_chroma_norm():
    x = _images()
    torch.manual_seed(8)
    y = _pipe(hue=1)(x)
    (lx, cx), (ly, cy) = _luma_chroma(x), _luma_chroma(y)
    assert torch.allclose(ly, lx, atol=1e-5)
    assert torch.allclose(cy.norm(dim=1), cx.norm(dim=1), atol=1e-5)
    assert (cy - cx).abs().max() > 0.1  # the chroma did turn


def test_saturation_keeps_luma_and_scales_chroma_by_one_factor_per_image():
    x = _images()
    torch.manual_seed(9)
    y = _pipe(saturation=1)(x)
    (lx, cx), (ly, cy) = _luma_chroma(x), _luma_chroma(y)
    assert torch.allclose(ly, lx, atol=1e-5)
    s = (cy * cx).flatten(1).sum(1) / cx.flatten(1).square().sum(1)
    assert (s > 0).all() and (s - 1).abs().max() > 0.05
    assert torch.allclose(cy, s[:, None, None, None] * cx, atol=1e-5)


def test_colour_matrix_agrees_with_naive_per_pixel_loop():
    # Independent reference: apply each image's 4x4 matrix to every pixel with a Python loop.
    pipe = _pipe(**AUGMENT_PRESETS["c"])
    x = _images(n=3)
    torch.manual_seed(10)
    m = pipe._colour_matrices(3, pipe.p.float())
    torch.manual_seed(10)
    y = pipe(x)
    for i in range(3):
        for r, c in [(0, 0), (5, 7), (15, 15)]:
            rgb1 = torch.cat([x[i, :, r, c].double(), torch.ones(1, dtype=torch.float64)])
            assert torch.allclose(y[i, :, r, c].double(), (m[i].double() @ rgb1)[:3], atol=1e-5)


# ---------------------------------------------------------------------------- channels, determinism, gradients

def test_six_channels_identical_triplets_stay_identical():
    x = _images()
    torch.manual_seed(11)
    y = build_augment_pipe("bgc").requires_grad_(False)
    y.p.fill_(1.0)
    out = y(torch.cat([x, x], dim=1))
    assert torch.equal(out[:, :3], out[:, 3:])


def test_six_channels_use_the_same_parameters_as_each_triplet_alone():
    a, b = _images(seed=1), _images(seed=2)
    pipe = build_augment_pipe("bgc")
    pipe.p.fill_(0.8)
    torch.manual_seed(12)
    both = pipe(torch.cat([a, b], dim=1))
    torch.manual_seed(12)
    out_a = pipe(a)
    torch.manual_seed(12)
    out_b = pipe(b)
    assert torch.allclose(both, torch.cat([out_a, out_b], dim=1), atol=1e-6)
    assert (out_a - a).abs().max() > 0.1


def test_single_channel_images_are_supported():
    pipe = build_augment_pipe("bgc")
    pipe.p.fill_(1.0)
    y = pipe(_images(c=1))
    assert y.shape == (N, 1, H, W) and torch.isfinite(y).all()


def test_unsupported_channel_count_is_rejected_by_colour_transforms():
    with pytest.raises(ValueError, match="channels"):
        _pipe(brightness=1)(_images(c=4))


def test_same_rng_state_same_output_and_different_state_different_output():
    pipe = build_augment_pipe("bgc")
    pipe.p.fill_(0.5)
    x = _images()
    torch.manual_seed(13)
    y1 = pipe(x)
    torch.manual_seed(13)
    y2 = pipe(x)
    torch.manual_seed(14)
    y3 = pipe(x)
    assert torch.equal(y1, y2) and not torch.equal(y1, y3)


def test_gradients_match_finite_differences_and_differentiate_twice():
    pipe = build_augment_pipe("bgc")
    pipe.p.fill_(0.9)
    x = torch.rand(2, 6, 8, 8, dtype=torch.float64).mul(2).sub(1).requires_grad_(True)

    def fn(inp):
        torch.manual_seed(15)  # the same random transform on every call
        return pipe(inp)

    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-5, fast_mode=True)
    # An R1-style penalty on the un-augmented input needs a second derivative through the pipe.
    assert torch.autograd.gradgradcheck(lambda inp: fn(inp).square(), (x,), eps=1e-6, atol=1e-4,
                                         fast_mode=True)


def test_gradient_flows_to_input():
    x = _images().requires_grad_(True)
    pipe = build_augment_pipe("bgc")
    pipe.p.fill_(1.0)
    pipe(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


# ---------------------------------------------------------------------------- presets and validation

def test_presets_and_unknown_preset_error():
    assert set(AUGMENT_PRESETS) >= {"bgc", "bg", "c", "noaug"}
    assert build_augment_pipe("bg").brightness == 0 and build_augment_pipe("bg").xflip == 1
    assert build_augment_pipe("c").xflip == 0 and build_augment_pipe("c").hue == 1
    with pytest.raises(ValueError, match="bgc"):
        build_augment_pipe("bogus")
    with pytest.raises(ValueError, match="scale_std"):
        AugmentPipe(scale_std=-1)


def test_p_is_saved_in_state_dict():
    pipe = build_augment_pipe("bgc")
    pipe.p.fill_(0.25)
    other = build_augment_pipe("bgc")
    other.load_state_dict(pipe.state_dict())
    assert float(other.p) == 0.25


# ---------------------------------------------------------------------------- AdaptiveP

def test_adaptive_p_moves_up_and_down_by_the_stated_step_and_clamps():
    pipe = build_augment_pipe("bgc")
    ada = AdaptiveP(target=0.6, speed_kimg=1, interval=4)   # step = 32 * 4 / 1000
    step = 32 * 4 / 1000
    assert ada.update(pipe, 0.9, batch_size=32) == pytest.approx(step)
    assert ada.update(pipe, 0.8, batch_size=32) == pytest.approx(2 * step)
    assert ada.update(pipe, 0.1, batch_size=32) == pytest.approx(step)
    for _ in range(3):
        ada.update(pipe, -1.0, batch_size=32)
    assert float(pipe.p) == 0.0
    for _ in range(20):
        ada.update(pipe, 1.0, batch_size=32)
    assert 0.99 < float(pipe.p) < 1.0


def test_adaptive_p_tick_uses_accumulated_signs_every_interval():
    pipe = build_augment_pipe("bgc")
    ada = AdaptiveP(target=0.6, speed_kimg=500, interval=2)
    logits_high = torch.tensor([1.0, 2.0, 3.0, -1.0, 0.5])   # signs sum to 3
    logits_pos = torch.ones(5)
    ada.accumulate(logits_high)
    assert ada.tick(pipe, batch_size=5) is None and float(pipe.p) == 0.0
    ada.accumulate(logits_pos)
    rt = ada.tick(pipe, batch_size=5)
    assert rt == pytest.approx((3 + 5) / 10)
    assert float(pipe.p) == pytest.approx(5 * 2 / 500_000)
    ada.accumulate(-logits_pos)
    ada.tick(pipe, batch_size=5)
    ada.accumulate(-logits_pos)
    assert ada.tick(pipe, batch_size=5) == pytest.approx(-1.0)
    assert float(pipe.p) == 0.0


def test_adaptive_p_state_round_trips_through_json_for_exact_resume():
    pipe_a, pipe_b = build_augment_pipe("bgc"), build_augment_pipe("bgc")
    a = AdaptiveP(target=0.2, speed_kimg=2, interval=3)
    a.update(pipe_a, 0.9, batch_size=8)
    a.accumulate(torch.tensor([1.0, -1.0, 2.0]))
    a.tick(pipe_a, batch_size=8)
    b = AdaptiveP()
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    pipe_b.load_state_dict(pipe_a.state_dict())
    assert b.state_dict() == a.state_dict()
    # Both continue identically.
    for ada, pipe in ((a, pipe_a), (b, pipe_b)):
        for _ in range(2):
            ada.accumulate(torch.tensor([1.0, 1.0, -3.0]))
            ada.tick(pipe, batch_size=8)
    assert float(pipe_a.p) == float(pipe_b.p) > 0
    assert a.state_dict() == b.state_dict()
