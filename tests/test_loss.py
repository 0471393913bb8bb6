"""Tests for training/loss.py: multi-view averaging, view order, R1, density regulariser, schedule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from torch_utils import training_stats
from training.loss import MultiViewSchedule, TriPlaneGANLoss


class StubG(torch.nn.Module):
    """Renders item b, view v as a constant image of value (b + 10 v) / 100: order is checkable."""

    neural_res, z_dim, box_size = 4, 3, 1.0

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def mapping(self, z, c, update_emas=False):
        return z[:, None, :].repeat(1, 2, 1)

    def planes(self, ws):
        return ws

    def synthesis(self, ws, views=1, update_emas=False, neural_res=None):
        b = ws.shape[0]
        value = torch.tensor([(i + 10 * v) / 100 for i in range(b) for v in range(views)])  # item-major
        image = (value * self.scale)[:, None, None, None].expand(b * views, 3, 8, 8)
        opacity = (0.3 * self.scale).expand(b * views, 1, 4, 4)
        return dict(image=image, image_raw=image[:, :, :4, :4], ws=ws, planes=ws, opacity=opacity)

    def sample_density(self, planes, points):
        return (points.sum(-1, keepdim=True) * self.scale), None


class MeanD(torch.nn.Module):
    """D(x) = mean of the image; records what it saw."""

    def forward(self, img, c, update_emas=False):
        self.seen = img["image"].detach().clone()
        return img["image"].mean(dim=[1, 2, 3])[:, None]


class LinearD(torch.nn.Module):
    """D(x) = <w, image> + <u, raw>: its R1 penalty is |w|^2 + |u|^2 for every sample."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(3, 8, 8))
        self.u = torch.nn.Parameter(torch.randn(3, 4, 4))

    def forward(self, img, c, update_emas=False):
        return ((img["image"] * self.w).sum(dim=[1, 2, 3]) + (img["image_raw"] * self.u).sum(dim=[1, 2, 3]))[:, None]


def _collect(fn):
    collector = training_stats.Collector(regex="Loss/.*")
    fn()
    collector.update()
    return collector


def test_schedule_switches_at_kimg():
    schedule = MultiViewSchedule(views=3, start_kimg=8000)
    assert schedule.views_at(7_999_999) == 1 and schedule.views_at(8_000_000) == 3
    assert MultiViewSchedule(views=3, start_kimg=None).views_at(10 ** 9) == 1


def test_generator_loss_is_the_mean_over_views_and_d_sees_view_major():
    G, D = StubG(), MeanD()
    loss = TriPlaneGANLoss(G, D, schedule=MultiViewSchedule(views=3, start_kimg=0), density_reg=0)
    B = 2
    z, c = torch.zeros(B, 3), torch.eye(2)
    stats = _collect(lambda: loss.accumulate_gradients("G_main", None, None, z, c, gain=1, cur_nimg=0))
    values = torch.tensor([(b + 10 * v) / 100 for b in range(B) for v in range(3)])
    assert abs(stats.mean("Loss/G/loss") - F.softplus(-values).mean().item()) < 1e-6
    seen = D.seen[:, 0, 0, 0]
    expected_view_major = torch.tensor([(b + 10 * v) / 100 for v in range(3) for b in range(B)])
    assert torch.allclose(seen, expected_view_major)
    assert G.scale.grad is not None and G.scale.grad.abs() > 0


def test_single_view_before_the_switch():
    G, D = StubG(), MeanD()
    loss = TriPlaneGANLoss(G, D, schedule=MultiViewSchedule(views=3, start_kimg=1), density_reg=0)
    loss.accumulate_gradients("G_main", None, None, torch.zeros(2, 3), torch.eye(2), gain=1, cur_nimg=999)
    assert D.seen.shape[0] == 2


def test_r1_penalty_matches_the_analytic_value():
    torch.manual_seed(0)
    G, D = StubG(), LinearD()
    loss = TriPlaneGANLoss(G, D, r1_gamma=2.0, density_reg=0)
    real = torch.randn(4, 3, 8, 8)
    stats = _collect(lambda: loss.accumulate_gradients("D_reg", real, torch.eye(2)[[0, 1, 0, 1]], None, None,
                                                       gain=1, cur_nimg=0))
    expected = (D.w.square().sum() + D.u.square().sum()).item()
    assert abs(stats.mean("Loss/r1_penalty") - expected) / expected < 1e-5
    # d/dw of gamma/2 * |w|^2 = gamma * w.
    assert torch.allclose(D.w.grad, 2.0 * D.w.detach(), rtol=1e-4, atol=1e-5)


def test_density_regulariser_is_zero_for_constant_density_and_positive_otherwise():
    G = StubG()
    loss = TriPlaneGANLoss(G, MeanD(), density_reg_p_dist=0.01)
    planes = torch.zeros(2, 1)
    assert loss.density_regularizer(planes) > 0  # density = x + y + z changes under perturbation
    G.sample_density = lambda planes, points: (torch.ones_like(points[..., :1]), None)
    assert loss.density_regularizer(planes) == 0


def test_discriminator_steps_reduce_its_loss(tiny_dataset):
    """A few D steps on fixed reals and fakes must lower the D loss: the loss moves the right way."""
    from training.dataset import ImageDataset
    from training.discriminator import Discriminator
    from training.triplane import TriPlaneGenerator
    from training_fixtures import TINY_D, TINY_G

    torch.manual_seed(0)
    ds = ImageDataset(tiny_dataset)
    G = TriPlaneGenerator(c_dim=2, img_res=16, **TINY_G).requires_grad_(False)
    D = Discriminator(c_dim=2, img_resolution=16, **TINY_D)
    loss = TriPlaneGANLoss(G, D, r1_gamma=0, density_reg=0)
    real = torch.stack([ds[i][0] for i in range(4)]).float() / 127.5 - 1
    c = ds.one_hot([ds[i][1] for i in range(4)])
    z = torch.randn(4, G.z_dim)
    opt = torch.optim.Adam(D.parameters(), lr=2e-3, betas=(0.0, 0.99))

    def d_loss():
        with torch.no_grad():
            fake = loss.generate(z, c, views=1)
            torch.manual_seed(1)
            return (F.softplus(loss.discriminate(fake, c, 0)).mean()
                    + F.softplus(-loss.discriminate(loss.real_inputs(real), c, 0)).mean()).item()

    before = d_loss()
    for _ in range(8):
        opt.zero_grad()
        torch.manual_seed(1)  # same fakes every step
        loss.accumulate_gradients("D_main", real, c, z, c, gain=1, cur_nimg=0)
        opt.step()
    assert d_loss() < before - 0.05


def test_opacity_regulariser_adds_a_times_one_minus_a_and_pushes_opacity_away_from_one_half():
    grads = {}
    for weight in (0.0, 1.0):
        G = StubG()
        loss = TriPlaneGANLoss(G, MeanD(), density_reg=0, opacity_reg=weight)
        stats = _collect(lambda: loss.accumulate_gradients("G_main", None, None, torch.zeros(2, 3), torch.eye(2),
                                                           gain=1, cur_nimg=0))
        grads[weight] = G.scale.grad.item()
    assert abs(stats.mean("Loss/G/opacity_reg") - 0.3 * 0.7) < 1e-6
    # d/ds of a(1-a) with a = 0.3 s at s = 1: 0.3 (1 - 2a) = 0.12 > 0, so descent lowers a < 1/2 toward 0.
    assert abs((grads[1.0] - grads[0.0]) - 0.12) < 1e-6


class CountingG(StubG):
    """StubG that counts synthesis calls and records update_emas."""

    def __init__(self):
        super().__init__()
        self.calls, self.ema_updates = 0, 0

    def synthesis(self, ws, views=1, update_emas=False, neural_res=None):
        self.calls += 1
        self.ema_updates += int(update_emas)
        return super().synthesis(ws, views=views, update_emas=update_emas, neural_res=neural_res)


class RecordingD(torch.nn.Module):
    """D(x) = s * mean(x) with a learnable s; keeps every image it saw, in call order."""

    def __init__(self):
        super().__init__()
        self.s = torch.nn.Parameter(torch.ones(()))
        self.seen = []

    def forward(self, img, c, update_emas=False):
        self.seen.append(img["image"].detach().clone())
        return self.s * img["image"].mean(dim=[1, 2, 3])[:, None]


def _g_step_then_d_step(loss, G):
    """A G_main round, G's update (its scale doubles), then a D_main round."""
    z, c, real = torch.zeros(2, 3), torch.eye(2), torch.zeros(2, 3, 8, 8)
    loss.accumulate_gradients("G_main", real, c, z, c, gain=1, cur_nimg=0)
    G.scale.data.fill_(2.0)
    loss.accumulate_gradients("D_main", real, c, z, c, gain=1, cur_nimg=0)


def test_reuse_fakes_scores_the_g_phase_images_without_running_g_again():
    G, D = CountingG(), RecordingD()
    loss = TriPlaneGANLoss(G, D, schedule=MultiViewSchedule(views=3, start_kimg=0), density_reg=0, r1_gamma=0,
                           reuse_fakes=True)
    _g_step_then_d_step(loss, G)
    g_fakes, d_fakes, _reals = D.seen
    assert G.calls == 1 and G.ema_updates == 1  # running averages still move once per step
    assert d_fakes.shape[0] == 6 and torch.equal(d_fakes, g_fakes)  # all 3 views, from before G's update
    assert D.s.grad is not None and not loss._fakes_for_d  # D learnt from them; nothing kept


def test_without_reuse_d_generates_fresh_fakes():
    G, D = CountingG(), RecordingD()
    loss = TriPlaneGANLoss(G, D, density_reg=0, r1_gamma=0)
    _g_step_then_d_step(loss, G)
    g_fakes, d_fakes, _reals = D.seen
    assert G.calls == 2 and G.ema_updates == 1
    assert torch.allclose(d_fakes, g_fakes * 2.0)  # rendered again, by the updated G


def test_discard_fakes_drops_what_no_d_phase_took():
    G, D = CountingG(), RecordingD()
    loss = TriPlaneGANLoss(G, D, density_reg=0, r1_gamma=0, reuse_fakes=True)
    loss.accumulate_gradients("G_main", None, None, torch.zeros(2, 3), torch.eye(2), gain=1, cur_nimg=0)
    loss.discard_fakes()
    loss.accumulate_gradients("D_main", torch.zeros(2, 3, 8, 8), torch.eye(2), torch.zeros(2, 3), torch.eye(2),
                              gain=1, cur_nimg=0)
    assert G.calls == 2  # nothing was kept, so D generated its own


class InputsD(torch.nn.Module):
    """Scores the mean; keeps copies of every input it saw."""

    def forward(self, img, c, update_emas=False):
        self.seen = {k: v.detach().clone() for k, v in img.items()}
        return img["image"].mean(dim=[1, 2, 3])[:, None]


def _truncated_gaussian_variance(sigma: float) -> float:
    """Variance along one axis of the blur kernel: a Gaussian cut at 2 sigma, sampled at integers."""
    radius = int(torch.tensor(2 * sigma).ceil())
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return float((t.square() * k).sum() / k.sum())


def _spread(img: torch.Tensor) -> float:
    """Variance along x of an image taken as a distribution of mass over pixel columns."""
    mass = img[0, 0].sum(0).double()
    x = torch.arange(mass.numel(), dtype=torch.float64)
    mean = (x * mass).sum() / mass.sum()
    return float(((x - mean).square() * mass).sum() / mass.sum())


def test_blur_sigma_is_in_final_image_pixels_and_scaled_for_the_raw_render():
    # An impulse at both resolutions: the image is blurred by sigma, the 4x smaller raw render
    # by sigma / 4, i.e. the same blur in scene units.
    loss = TriPlaneGANLoss(StubG(), InputsD(), density_reg=0)
    image, raw = torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 8, 8)
    image[..., 16, 16], raw[..., 4, 4] = 1, 1
    loss.discriminate(dict(image=image, image_raw=raw), torch.zeros(1, 2), blur_sigma=4.0)
    seen = loss.D.seen
    assert abs(_spread(seen["image"]) - _truncated_gaussian_variance(4.0)) < 1e-4
    assert abs(_spread(seen["image_raw"]) - _truncated_gaussian_variance(1.0)) < 1e-4
    assert abs(seen["image"].sum() - 3) < 1e-4 and abs(seen["image_raw"].sum() - 3) < 1e-4


def test_point_real_raw_reads_the_real_image_at_the_neural_pixel_centres():
    # Neural pixel (i, j) of a 4x smaller grid is centred on real pixel coordinate 4i + 1.5:
    # "point" is the mean of real pixels 4i+1..4i+2 (bilinear there), "antialias" averages wider.
    loss = TriPlaneGANLoss(StubG(), InputsD(), density_reg=0, real_raw_filter="point")
    real = torch.randn(2, 3, 16, 16)
    raw = loss.real_inputs(real)["image_raw"]
    expected = real[:, :, 1::4, :][:, :, :, 1::4] + real[:, :, 2::4, :][:, :, :, 1::4] + \
        real[:, :, 1::4, :][:, :, :, 2::4] + real[:, :, 2::4, :][:, :, :, 2::4]
    torch.testing.assert_close(raw, expected / 4)
    smooth = TriPlaneGANLoss(StubG(), InputsD(), density_reg=0).real_inputs(real)["image_raw"]
    assert smooth.shape == raw.shape and not torch.allclose(smooth, raw)


def test_point_real_raw_keeps_a_crisp_edge_crisp():
    # A vertical step edge: the point copy has at most one column of blended values, as a
    # renderer's one ray per pixel gives; the antialiased copy smears it over several.
    real = -torch.ones(1, 3, 64, 64)
    real[..., 29:] = 1.0
    counts = {}
    for name in ("point", "antialias"):
        raw = TriPlaneGANLoss(StubG(), InputsD(), density_reg=0, real_raw_filter=name).real_inputs(real)["image_raw"]
        blended = (raw.abs() < 0.99).any(dim=2)[0, 0]
        counts[name] = int(blended.sum())
    assert counts["point"] <= 1 < counts["antialias"]


def test_unknown_real_raw_filter_is_named():
    with pytest.raises(ValueError, match="real_raw_filter"):
        TriPlaneGANLoss(StubG(), InputsD(), density_reg=0, real_raw_filter="nearest")


def test_point_real_raw_is_closer_to_a_render_at_neural_resolution():
    # The reason for "point": the synthetic data is rendered with one ray per pixel, like G's
    # neural render. Shrinking a 64x64 render by "point" must come closer to rendering the same
    # scene at 16x16 directly than EG3D's antialiased shrink does (measured on the demo's data:
    # mean error 0.031 against 0.083).
    from training.synthetic.raycast import render_batch
    from training.synthetic.shapes import sample_instance
    from training.volumetric_rendering import sample_sphere_cameras

    rng = np.random.default_rng(0)
    instances = [sample_instance(k % 4, rng) for k in range(8)]
    cameras = sample_sphere_cameras(8, radius=2.7, fov_deg=30.0, generator=torch.Generator().manual_seed(0))
    to_tensor = lambda rgb: torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 127.5 - 1  # noqa: E731
    low, high = (to_tensor(render_batch(instances, cameras, res)[0]) for res in (16, 64))
    errors = {}
    for name in ("point", "antialias"):
        loss = TriPlaneGANLoss(StubG(), InputsD(), density_reg=0, real_raw_filter=name)
        loss.neural_res = 16
        errors[name] = float((loss.real_inputs(high)["image_raw"] - low).abs().mean())
    assert errors["point"] < 0.6 * errors["antialias"], errors
