"""Adversarial loss over V views per tri-plane, lazy R1, and the density regulariser.

Phases follow StyleGAN practice: `G_main` / `D_main` for the adversarial terms, `G_reg` /
`D_reg` for the lazily applied regularisers, or `G_both` / `D_both` when a regulariser runs
at every step. `accumulate_gradients` adds the gradients of one phase for one minibatch; the
training loop owns optimisers and steps.

Multi-view discrimination (the paper's section 3.3): before `multiview_at_kimg` every
tri-plane is rendered from one camera; from then on from V cameras spread apart on the
sphere. The discriminator scores every view, and both the generator loss and the
discriminator's fake loss are means over all B*V views (the mean over items of the mean over
views, since every item has V views). Views go to D in view-major order so that D's
minibatch-stddev groups mix different objects rather than views of the same object, which
would otherwise let D spot multi-view fakes by their low within-group variance.

With `reuse_fakes` the discriminator's fake phase scores the images the generator phase of the
same step just made (detached) instead of running G again: one G forward fewer per step
(1.2x the images/s of the demo's G+D step on a CPU), at the price of D seeing fakes from G one optimiser
step old, as in the classic alternating GAN update. Off by default, as in EG3D.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

import torch
import torch.nn.functional as F

from torch_utils import training_stats
from torch_utils.ops import conv2d_gradfix, upfirdn2d
from training.networks_common import resize_image

__all__ = ["MultiViewSchedule", "TriPlaneGANLoss", "PHASES", "REAL_RAW_FILTERS"]

PHASES = ("G_main", "G_reg", "G_both", "D_main", "D_reg", "D_both")


@dataclass
class MultiViewSchedule:
    """How many views each tri-plane gets: 1 before `start_kimg`, `views` from then on (None: never)."""

    views: int = 3
    start_kimg: Optional[float] = None

    def views_at(self, cur_nimg: int) -> int:
        if self.start_kimg is None or cur_nimg < self.start_kimg * 1000:
            return 1
        return self.views


def _item_to_view_major(x: torch.Tensor, views: int) -> torch.Tensor:
    """[B*V, ...] item-major (item0 view0, item0 view1, ...) -> view-major (view0 of all items, ...)."""
    if views == 1:
        return x
    return x.reshape(-1, views, *x.shape[1:]).transpose(0, 1).reshape(x.shape)


def _blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of D's inputs early in training (fades out; sigma in pixels)."""
    radius = int(math.ceil(2 * sigma))
    if sigma <= 0 or radius == 0:
        return img
    taps = torch.arange(-radius, radius + 1, device=img.device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    return upfirdn2d.filter2d(img, kernel / kernel.sum())


REAL_RAW_FILTERS = ("antialias", "point")


class TriPlaneGANLoss:
    """Non-saturating logistic GAN loss with multi-view fakes, lazy R1 and density regularisation.

    Args:
        G, D: the generator (TriPlaneGenerator-like: `mapping`, `synthesis`, `planes`,
            `sample_density`, `neural_res`, `box_size`) and discriminator (`D(dict(image, image_raw), c)`).
        augment_pipe: optional ADA pipeline applied to every image D sees (real and fake).
        r1_gamma: R1 weight on real images (and on the raw image with a dual discriminator).
        density_reg: weight of the L1 between densities at random points and perturbed copies.
        density_reg_p_dist: size of the perturbation, in world units.
        opacity_reg: weight of mean(a * (1 - a)) over the accumulated opacity a of the fakes'
            neural renders, added to G's loss: it pushes every ray to be either fully covered or
            empty. Not in the paper, off by default: a prior for data of opaque objects on a
            plain background (the synthetic sets), where a small model otherwise learns
            semi-transparent shells that the super-resolution paints over.
        style_mixing_prob: probability of mixing the ws of two latents at a random cut.
        blur_init_sigma, blur_fade_kimg: blur of D's inputs, fading linearly to zero; sigma in
            pixels of the final image (the raw render's blur is scaled to its resolution).
        schedule: when to switch to multi-view discrimination and with how many views.
        dual_discrimination: feed D the raw neural render beside the image (fakes) and a
            resized copy of the real image in its place (reals).
        real_raw_filter: how that copy is made. "antialias" (EG3D's filtered resizing, the
            default) averages each neural pixel's whole footprint. "point" reads the real
            image bilinearly at the neural pixel centres, the way the renderer samples the
            scene: one ray per pixel centre, no averaging over the pixel. On data with sharp
            silhouettes (the synthetic sets) the two differ at every edge pixel, and with
            "antialias" D can tell a crisp render from a real by its edges alone, which pushes
            G toward fuzzy, semi-transparent borders; see ``configs/demo.yaml``.
        real_logits_hook: called with D's logits on reals in every main D phase (ADA's statistic).
        reuse_fakes: D's fake phase reuses the G phase's fakes of the same step (see the module
            docstring); G's running averages (w_avg) are then updated in the G phase.
    """

    def __init__(self, G: torch.nn.Module, D: torch.nn.Module, augment_pipe: Optional[torch.nn.Module] = None,
                 r1_gamma: float = 1.0, density_reg: float = 0.25, density_reg_p_dist: float = 0.004,
                 density_reg_points: int = 1000, opacity_reg: float = 0.0, style_mixing_prob: float = 0.0,
                 blur_init_sigma: float = 0.0, blur_fade_kimg: float = 0.0,
                 schedule: Optional[MultiViewSchedule] = None, dual_discrimination: bool = True,
                 real_raw_filter: str = "antialias", real_logits_hook: Optional[Callable[[torch.Tensor], None]] = None,
                 reuse_fakes: bool = False) -> None:
        self.G, self.D, self.augment_pipe = G, D, augment_pipe
        self.r1_gamma = r1_gamma
        self.density_reg, self.density_reg_p_dist = density_reg, density_reg_p_dist
        self.density_reg_points = density_reg_points
        self.opacity_reg = opacity_reg
        self.style_mixing_prob = style_mixing_prob
        self.blur_init_sigma, self.blur_fade_kimg = blur_init_sigma, blur_fade_kimg
        self.schedule = schedule or MultiViewSchedule()
        self.dual_discrimination = dual_discrimination
        if real_raw_filter not in REAL_RAW_FILTERS:
            raise ValueError(f"loss.real_raw_filter must be one of {REAL_RAW_FILTERS}, got {real_raw_filter!r}")
        self.real_raw_filter = real_raw_filter
        self.real_logits_hook = real_logits_hook
        self.neural_res: Optional[int] = None  # set by the loop's resolution schedule; None: G's own
        self.reuse_fakes = reuse_fakes
        # With reuse_fakes: the G phase's fakes, one entry per round, first in first out.
        self._fakes_for_d: collections.deque = collections.deque()

    # -- pieces ------------------------------------------------------------------------------

    def blur_sigma(self, cur_nimg: int) -> float:
        if self.blur_fade_kimg <= 0:
            return 0.0
        return max(1 - cur_nimg / (self.blur_fade_kimg * 1e3), 0) * self.blur_init_sigma

    def map(self, z: torch.Tensor, c: torch.Tensor, update_emas: bool = False) -> torch.Tensor:
        ws = self.G.mapping(z, c, update_emas=update_emas)
        if self.style_mixing_prob > 0:
            cutoff = torch.randint(1, ws.shape[1], (), device=ws.device)
            cutoff = torch.where(torch.rand((), device=ws.device) < self.style_mixing_prob, cutoff, ws.shape[1])
            ws_mix = self.G.mapping(torch.randn_like(z), c, update_emas=False)
            keep = torch.arange(ws.shape[1], device=ws.device)[None, :, None] < cutoff
            ws = torch.where(keep, ws, ws_mix)
        return ws

    def generate(self, z: torch.Tensor, c: torch.Tensor, views: int, update_emas: bool = False) -> Dict[str, Any]:
        """Fakes for D: one tri-plane per latent, `views` renders each, returned view-major."""
        out = self.G.synthesis(self.map(z, c, update_emas=update_emas), views=views, update_emas=update_emas,
                               neural_res=self.neural_res)
        return dict(image=_item_to_view_major(out["image"], views),
                    image_raw=_item_to_view_major(out["image_raw"], views), ws=out["ws"], planes=out["planes"],
                    opacity=out.get("opacity"))

    def real_inputs(self, real_img: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Reals as D sees them: the image and, for a dual D, its copy at neural-render resolution."""
        if not self.dual_discrimination:
            return dict(image=real_img, image_raw=real_img)
        res = self.neural_res or self.G.neural_res
        raw = resize_image(real_img, res, antialias=self.real_raw_filter == "antialias")
        return dict(image=real_img, image_raw=raw)

    def discriminate(self, img: Dict[str, torch.Tensor], c: torch.Tensor, blur_sigma: float,
                     update_emas: bool = False) -> torch.Tensor:
        # sigma is in pixels of the final image; the raw render gets the same blur in scene terms.
        full_res = img["image"].shape[-1]
        images = {k: _blur(v, blur_sigma * v.shape[-1] / full_res) for k, v in img.items()
                  if k in ("image", "image_raw")}
        if self.augment_pipe is not None:
            images = self._augment(images)
        return self.D(images, c, update_emas=update_emas)

    def _augment(self, images: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Augment image and raw image with the same random transform (stacked as 6 channels).

        The raw image is brought to the image's size for that and handed on at that size: the
        dual discriminator resizes it to the image resolution anyway.
        """
        image, raw = images["image"], images["image_raw"]
        augmented = self.augment_pipe(torch.cat([image, resize_image(raw, image.shape[-1])], dim=1))
        return dict(image=augmented[:, :3], image_raw=augmented[:, 3:])

    def density_regularizer(self, planes: torch.Tensor) -> torch.Tensor:
        """L1 between densities at uniform random points in the box and at slightly perturbed copies."""
        batch = planes.shape[0]
        half = self.G.box_size / 2
        points = (torch.rand(batch, self.density_reg_points, 3, device=planes.device) * 2 - 1) * half
        perturbed = points + torch.randn_like(points) * self.density_reg_p_dist
        sigma, _ = self.G.sample_density(planes, torch.cat([points, perturbed], dim=1))
        initial, moved = sigma.split(self.density_reg_points, dim=1)
        return (initial - moved).abs().mean()

    def discard_fakes(self) -> None:
        """Forget fakes kept for D (reuse_fakes) that no D phase has taken."""
        self._fakes_for_d.clear()

    # -- phases ------------------------------------------------------------------------------

    def accumulate_gradients(self, phase: str, real_img: torch.Tensor, real_c: torch.Tensor, gen_z: torch.Tensor,
                             gen_c: torch.Tensor, gain: float, cur_nimg: int) -> None:
        """Add the gradients of `phase` for one minibatch, scaled by `gain` (the lazy-reg interval)."""
        if phase not in PHASES:
            raise ValueError(f"Unknown phase '{phase}'; expected one of {PHASES}")
        blur_sigma = self.blur_sigma(cur_nimg)
        views = self.schedule.views_at(cur_nimg)
        if phase in ("G_main", "G_both"):
            self._generator_adversarial(gen_z, gen_c, views, blur_sigma, gain, with_reg=phase == "G_both")
        elif phase == "G_reg" and self.density_reg > 0:
            planes = self.G.planes(self.map(gen_z, gen_c))
            loss = self.density_regularizer(planes)
            training_stats.report("Loss/G/density_reg", loss)
            (loss * self.density_reg * gain).backward()
        if phase in ("D_main", "D_both"):
            self._discriminator_fake(gen_z, gen_c, views, blur_sigma, gain)
        if phase in ("D_main", "D_reg", "D_both"):
            self._discriminator_real(phase, real_img, real_c, blur_sigma, gain)

    def _generator_adversarial(self, gen_z, gen_c, views, blur_sigma, gain, with_reg) -> None:
        fake = self.generate(gen_z, gen_c, views, update_emas=self.reuse_fakes)
        if self.reuse_fakes:
            kept = {k: fake[k].detach() for k in ("image", "image_raw")}
            self._fakes_for_d.append((kept, gen_c, views))
        logits = self.discriminate(fake, gen_c.repeat(views, 1), blur_sigma)  # labels view-major, like the fakes
        loss = F.softplus(-logits).mean()  # -log(sigmoid(D(fake))), the mean over all views
        training_stats.report("Loss/scores/fake", logits)
        training_stats.report("Loss/G/loss", loss)
        training_stats.report("Progress/views", torch.tensor(float(views)))
        if self.opacity_reg > 0:
            opacity = fake["opacity"]
            binary = (opacity * (1 - opacity)).mean()  # 0 when every ray is empty or opaque
            training_stats.report("Loss/G/opacity_reg", binary)
            loss = loss + binary * self.opacity_reg
        if with_reg and self.density_reg > 0:
            reg = self.density_regularizer(fake["planes"])
            training_stats.report("Loss/G/density_reg", reg)
            loss = loss + reg * self.density_reg
        (loss * gain).backward()

    def _discriminator_fake(self, gen_z, gen_c, views, blur_sigma, gain) -> None:
        if self._fakes_for_d:
            fake, gen_c, views = self._fakes_for_d.popleft()
        else:
            with torch.no_grad():
                fake = self.generate(gen_z, gen_c, views, update_emas=True)
        logits = self.discriminate(fake, gen_c.repeat(views, 1), blur_sigma, update_emas=True)
        training_stats.report("Loss/scores/fake", logits)
        training_stats.report("Loss/signs/fake", logits.sign())
        (F.softplus(logits).mean() * gain).backward()  # -log(1 - sigmoid(D(fake))), mean over B*V views

    def _discriminator_real(self, phase: str, real_img: torch.Tensor, real_c: torch.Tensor, blur_sigma: float,
                            gain: float) -> None:
        """Real-image loss (main phases) and R1 (reg phases) from one forward pass of D."""
        with_r1 = phase in ("D_reg", "D_both") and self.r1_gamma > 0
        with_main = phase in ("D_main", "D_both")
        if not (with_r1 or with_main):
            return
        real = {k: v.detach().requires_grad_(with_r1) for k, v in self.real_inputs(real_img).items()}
        logits = self.discriminate(real, real_c, blur_sigma)
        loss = torch.zeros((), device=real_img.device)
        if with_main:
            training_stats.report("Loss/scores/real", logits)
            training_stats.report("Loss/signs/real", logits.sign())
            if self.real_logits_hook is not None:
                self.real_logits_hook(logits.detach())
            loss_real = F.softplus(-logits).mean()  # -log(sigmoid(D(real)))
            training_stats.report("Loss/D/loss_real", loss_real)
            loss = loss + loss_real
        if with_r1:
            inputs = [real["image"], real["image_raw"]] if self.dual_discrimination else [real["image"]]
            with conv2d_gradfix.no_weight_gradients():
                grads = torch.autograd.grad(logits.sum(), inputs, create_graph=True, only_inputs=True)
            penalty = sum(g.square().sum(dim=[1, 2, 3]) for g in grads)
            training_stats.report("Loss/r1_penalty", penalty)
            loss = loss + (penalty * (self.r1_gamma / 2)).mean()
        (loss * gain).backward()
