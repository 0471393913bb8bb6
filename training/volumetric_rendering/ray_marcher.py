"""Ray marcher: density activation and alpha compositing of samples along rays."""

from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F

from .sampling import interval_edges

__all__ = ["DENSITY_ACTIVATIONS", "activate_density", "ray_weights", "composite"]

DENSITY_ACTIVATIONS = ("softplus", "relu", "exp", "none")


def activate_density(raw: torch.Tensor, activation: str = "softplus") -> torch.Tensor:
    """Non-negative density sigma from the field's raw output.

    'softplus': softplus(raw - 1), the tri-plane GAN's choice: smooth, and a freshly
    initialised decoder (raw ~ 0) starts nearly transparent (sigma ~ 0.31). 'relu' and 'exp'
    are the usual alternatives; 'none' takes ``raw`` as the density itself (clamped at 0),
    which analytic scenes use.
    """
    if activation == "softplus":
        return F.softplus(raw - 1.0)
    if activation == "relu":
        return F.relu(raw)
    if activation == "exp":
        return torch.exp(raw)
    if activation == "none":
        return raw.clamp_min(0.0)
    raise ValueError(f"density_activation must be one of {DENSITY_ACTIVATIONS}, got {activation!r}")


def ray_weights(depths: torch.Tensor, densities: torch.Tensor, near: torch.Tensor, far: torch.Tensor,
                density_activation: str = "softplus", density_noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The compositing weights [...,S] of sorted samples (see `composite`; arguments as there, with
    any leading dimensions). Alone, it is what importance sampling needs from the coarse pass.
    """
    raw = densities if density_noise is None else densities + density_noise
    sigma = activate_density(raw, density_activation)[..., 0]
    edges = interval_edges(depths, near, far)
    deltas = (edges[..., 1:] - edges[..., :-1]).clamp_min(0.0)
    tau = sigma * deltas
    # Transmittance from an exclusive cumulative sum of optical depth: stabler than cumprod(1-alpha).
    before = torch.cumsum(tau, dim=-1) - tau
    return (1.0 - torch.exp(-tau)) * torch.exp(-before)


def composite(
    depths: torch.Tensor,
    densities: torch.Tensor,
    features: torch.Tensor,
    near: torch.Tensor,
    far: torch.Tensor,
    density_activation: str = "softplus",
    density_noise: Optional[torch.Tensor] = None,
    white_back: bool = False,
) -> Dict[str, torch.Tensor]:
    """Alpha-composite sorted samples along rays.

    Args:
        depths: [R,S] sorted sample depths; densities: [R,S,1] raw field output;
        features: [R,S,C]; near, far: [R,1]; density_noise: [R,S,1] added to the raw density.
    Integration (midpoint rule): sample k stands for the interval between the midpoints to
    its neighbours, with near/far closing the ends, so the intervals partition [near, far]
    and a constant medium integrates exactly. alpha_k = 1 - exp(-sigma_k * delta_k),
    weight_k = alpha_k * exp(-sum_{j<k} sigma_j delta_j).
    Returns dict: features [R,C], depth [R,1], opacity [R,1], weights [R,S].
    Depth is sum(w t) / sum(w) (the expected termination depth given that the ray stops),
    smoothed toward ``far`` for empty rays and clamped to [near, far].
    With ``white_back`` every feature channel gets + (1 - opacity): white is +1 for images
    in [-1, 1], the GAN's range.
    """
    weights = ray_weights(depths, densities, near, far, density_activation, density_noise)
    opacity = weights.sum(-1, keepdim=True)
    feat = (weights[..., None] * features).sum(-2)
    eps = 1e-10
    depth = ((weights * depths).sum(-1, keepdim=True) + eps * far) / (opacity + eps)
    depth = torch.minimum(torch.maximum(depth, near), far)
    if white_back:
        feat = feat + (1.0 - opacity)
    return {"features": feat, "depth": depth, "opacity": opacity, "weights": weights}
