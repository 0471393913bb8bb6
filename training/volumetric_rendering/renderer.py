"""VolumeRenderer: renders any radiance field (density + features) from a batch of cameras."""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple, Union

import torch
from torch import nn

from .bounds import ray_bounds
from .cameras import Cameras, _resolution, generate_rays
from .ray_marcher import DENSITY_ACTIVATIONS, composite, ray_weights
from .sampling import importance_depths, stratified_depths

__all__ = ["Field", "VolumeRenderer"]

# field(points [N,M,3], unit dirs [N,M,3]) -> (raw density [N,M,1], features [N,M,C])
Field = Callable[[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]


def _draw(shape, generator: Optional[torch.Generator], device, normal: bool = False) -> torch.Tensor:
    gdev = generator.device if generator is not None else device
    fn = torch.randn if normal else torch.rand
    return fn(shape, generator=generator, device=gdev).to(device)


class VolumeRenderer(nn.Module):
    """Coarse + importance-sampled fine volume rendering with a fixed number of samples per ray.

    Args:
        num_coarse, num_fine: samples per ray (stratified / importance); num_fine may be 0.
        ray_start, ray_end: fixed depth bounds, or ray_start='auto' for the box intersection.
        box_size: edge of the scene box [-box_size/2, box_size/2]^3 used by 'auto'.
        density_activation: see ``ray_marcher.activate_density`` ('softplus', 'relu', 'exp', 'none').
        density_noise: std of Gaussian noise added to the raw density while training.
        white_back: composite onto +1 (white for features in [-1, 1]).
        chunk: at most this many rays (over all cameras) per field call; None = all at once.
        sample_mult: multiplies num_coarse and num_fine when not training (finer renders).
        perturb: jitter sample positions while training (off: deterministic midpoints always).
        pdf_floor, pdf_blur: regularisation of the importance-sampling PDF (see ``sampling``).
    """

    def __init__(
        self,
        num_coarse: int = 48,
        num_fine: int = 48,
        ray_start: Union[float, str] = "auto",
        ray_end: Optional[float] = None,
        box_size: float = 2.0,
        density_activation: str = "softplus",
        density_noise: float = 0.0,
        white_back: bool = False,
        chunk: Optional[int] = None,
        sample_mult: float = 1.0,
        perturb: bool = True,
        pdf_floor: float = 0.01,
        pdf_blur: bool = True,
    ) -> None:
        super().__init__()
        if num_coarse < 1 or num_fine < 0:
            raise ValueError(f"need num_coarse >= 1 and num_fine >= 0, got {num_coarse}, {num_fine}")
        if density_activation not in DENSITY_ACTIVATIONS:
            raise ValueError(f"density_activation must be one of {DENSITY_ACTIVATIONS}, got {density_activation!r}")
        if chunk is not None and chunk < 1:
            raise ValueError(f"chunk must be positive or None, got {chunk}")
        if sample_mult <= 0:
            raise ValueError(f"sample_mult must be positive, got {sample_mult}")
        if ray_start != "auto":
            ray_bounds(torch.zeros(1, 3), torch.ones(1, 3), ray_start, ray_end, box_size)  # validates
        self.num_coarse, self.num_fine = int(num_coarse), int(num_fine)
        self.ray_start, self.ray_end, self.box_size = ray_start, ray_end, float(box_size)
        self.density_activation, self.density_noise = density_activation, float(density_noise)
        self.white_back, self.chunk, self.sample_mult = bool(white_back), chunk, float(sample_mult)
        self.perturb, self.pdf_floor, self.pdf_blur = bool(perturb), float(pdf_floor), bool(pdf_blur)

    def extra_repr(self) -> str:
        return (f"num_coarse={self.num_coarse}, num_fine={self.num_fine}, ray_start={self.ray_start!r}, "
                f"ray_end={self.ray_end}, box_size={self.box_size}, white_back={self.white_back}")

    def sample_counts(self, training: bool, sample_mult: Optional[float] = None) -> Tuple[int, int]:
        """(num_coarse, num_fine) used for a render; ``sample_mult`` applies only when not training."""
        mult = 1.0 if training else (self.sample_mult if sample_mult is None else float(sample_mult))
        nf = int(round(self.num_fine * mult)) if self.num_fine > 0 else 0
        return max(1, int(round(self.num_coarse * mult))), nf

    def forward(self, field: Field, cameras: Cameras, resolution, **kwargs) -> Dict[str, torch.Tensor]:
        return self.render(field, cameras, resolution, **kwargs)

    def render(
        self,
        field: Field,
        cameras: Cameras,
        resolution: Union[int, Tuple[int, int]],
        *,
        training: Optional[bool] = None,
        sample_mult: Optional[float] = None,
        generator: Optional[torch.Generator] = None,
        return_samples: bool = False,
    ) -> Dict[str, torch.Tensor]:
        """Images of ``field`` from each camera: features [N,C,H,W], depth, opacity, hit [N,1,H,W].

        ``field`` is called with item n's points in row n, so a batched field (one tri-plane per
        camera) lines up with ``cameras``. With ``return_samples`` the per-ray sample depths,
        weights, coarse and fine depths ([N,H*W,*]) are returned as well.
        """
        h, w = _resolution(resolution)
        origins, dirs = generate_rays(cameras, (h, w))
        out = self.render_rays(field, origins, dirs, training=training, sample_mult=sample_mult,
                               generator=generator, return_samples=return_samples)
        n = len(cameras)
        for key in ("features", "depth", "opacity", "hit"):
            v = out[key].reshape(n, h, w, -1) if key != "hit" else out[key].reshape(n, h, w, 1)
            out[key] = v.permute(0, 3, 1, 2)
        return out

    def render_rays(
        self,
        field: Field,
        origins: torch.Tensor,
        dirs: torch.Tensor,
        *,
        training: Optional[bool] = None,
        sample_mult: Optional[float] = None,
        generator: Optional[torch.Generator] = None,
        return_samples: bool = False,
    ) -> Dict[str, torch.Tensor]:
        """Renders rays [N,R,3] (unit ``dirs``); returns features [N,R,C], depth/opacity [N,R,1], hit [N,R]."""
        if origins.ndim != 3 or origins.shape != dirs.shape or origins.shape[-1] != 3:
            raise ValueError(f"origins and dirs must both be [N,R,3], got {tuple(origins.shape)}, {tuple(dirs.shape)}")
        training = self.training if training is None else bool(training)
        nc, nf = self.sample_counts(training, sample_mult)
        near, far, hit = ray_bounds(origins, dirs, self.ray_start, self.ray_end, self.box_size)
        rnd = self._draw_randomness(origins.shape[:2], nc, nf, training, generator, origins.device)
        n, r = origins.shape[:2]
        step = r if self.chunk is None else max(1, self.chunk // n)
        parts = []
        for s in range(0, r, step):
            sl = slice(s, s + step)
            parts.append(self._render_chunk(field, origins[:, sl], dirs[:, sl], near[:, sl], far[:, sl],
                                            {k: v[:, sl] for k, v in rnd.items()}, nc, nf))
        out = {k: torch.cat([p[k] for p in parts], dim=1) for k in parts[0]}
        out["hit"] = hit
        if not return_samples:
            for k in ("weights", "depths", "coarse_depths", "fine_depths"):
                out.pop(k, None)
        return out

    def _draw_randomness(self, nr, nc, nf, training, generator, device) -> Dict[str, torch.Tensor]:
        """All random numbers of a render, drawn up front so that chunking cannot change them."""
        rnd: Dict[str, torch.Tensor] = {}
        if training and self.perturb:
            rnd["coarse_jitter"] = _draw((*nr, nc), generator, device)
            if nf > 0:
                rnd["fine_jitter"] = _draw((*nr, nf), generator, device)
        if training and self.density_noise > 0:
            rnd["noise"] = _draw((*nr, nc + nf, 1), generator, device, normal=True) * self.density_noise
        return rnd

    def _query(self, field: Field, origins, dirs, depths) -> Tuple[torch.Tensor, torch.Tensor]:
        """Field at points origins + depths * dirs; depths [N,r,S] -> ([N,r,S,1], [N,r,S,C])."""
        n, r, s = depths.shape
        pts = origins[:, :, None, :] + depths[..., None] * dirs[:, :, None, :]
        d = dirs[:, :, None, :].expand(n, r, s, 3)
        sigma, feat = field(pts.reshape(n, r * s, 3), d.reshape(n, r * s, 3))
        if sigma.shape != (n, r * s, 1) or feat.ndim != 3 or feat.shape[:2] != (n, r * s):
            raise ValueError(f"field must return density [N,M,1] and features [N,M,C] for M={r * s} points, "
                             f"got {tuple(sigma.shape)} and {tuple(feat.shape)}")
        return sigma.reshape(n, r, s, 1), feat.reshape(n, r, s, -1)

    def _composite(self, depths, sigma, feat, near, far, noise):
        n, r, s = depths.shape
        out = composite(depths.reshape(n * r, s), sigma.reshape(n * r, s, 1), feat.reshape(n * r, s, -1),
                        near.reshape(n * r, 1), far.reshape(n * r, 1), self.density_activation,
                        None if noise is None else noise.reshape(n * r, s, 1), self.white_back)
        return {k: v.reshape(n, r, *v.shape[1:]) for k, v in out.items()}

    def _render_chunk(self, field, origins, dirs, near, far, rnd, nc, nf) -> Dict[str, torch.Tensor]:
        noise = rnd.get("noise")
        coarse = stratified_depths(near, far, nc, rnd.get("coarse_jitter"))
        if nf == 0:
            sigma_c, feat_c = self._query(field, origins, dirs, coarse)
            out = self._composite(coarse, sigma_c, feat_c, near, far, noise)
            out.update(depths=coarse, coarse_depths=coarse)
            return out
        with torch.no_grad():  # the coarse pass only places the fine samples when grads are on
            sigma_c, feat_c = self._query(field, origins, dirs, coarse)
        noise_c = None if noise is None else noise[:, :, :nc]
        weights_c = ray_weights(coarse, sigma_c, near, far, self.density_activation, noise_c)
        fine = importance_depths(coarse, weights_c.detach(), near, far, nf, rnd.get("fine_jitter"),
                                 self.pdf_floor, self.pdf_blur)
        depths, order = torch.sort(torch.cat([coarse, fine], dim=-1), dim=-1, stable=True)
        if torch.is_grad_enabled():
            # One differentiable query of all samples, already in depth order: the field's backward
            # (e.g. a scatter into large feature planes) then runs once instead of twice, and no
            # gather of features is needed. The coarse query above (no_grad) only placed the fine
            # samples; the values are the same function of the same points.
            sigma, feats = self._query(field, origins, dirs, depths)
        else:
            sigma_f, feat_f = self._query(field, origins, dirs, fine)
            sigma = torch.gather(torch.cat([sigma_c, sigma_f], dim=2), 2, order[..., None])
            feats = torch.cat([feat_c, feat_f], dim=2)
            feats = torch.gather(feats, 2, order[..., None].expand(-1, -1, -1, feats.shape[-1]))
        if noise is not None:
            noise = torch.gather(noise, 2, order[..., None])
        out = self._composite(depths, sigma, feats, near, far, noise)
        out.update(depths=depths, coarse_depths=coarse, fine_depths=fine)
        return out
