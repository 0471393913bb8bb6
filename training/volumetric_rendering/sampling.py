"""Depth samples along rays: stratified (jittered) coarse samples and importance-sampled fine samples."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["stratified_depths", "interval_edges", "importance_depths", "pdf_from_weights", "sample_pdf"]


def stratified_depths(near: torch.Tensor, far: torch.Tensor, num: int, jitter: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``num`` depths per ray, one in each of ``num`` equal bins of [near, far] ([...,1] each).

    ``jitter`` [...,num] in [0,1) places each sample within its bin (training); ``None``
    puts every sample at its bin's midpoint (deterministic evaluation).
    """
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    k = torch.arange(num, device=near.device, dtype=near.dtype)
    offset = 0.5 if jitter is None else jitter
    return near + (far - near) * (k + offset) / num


def interval_edges(depths: torch.Tensor, near: torch.Tensor, far: torch.Tensor) -> torch.Tensor:
    """Edges [...,S+1] of the interval each sorted sample represents: midpoints to its neighbours,
    with near and far at the two ends (the midpoint-rule partition of [near, far])."""
    mids = 0.5 * (depths[..., 1:] + depths[..., :-1])
    return torch.cat([near, mids, far], dim=-1)


def pdf_from_weights(weights: torch.Tensor, edges: torch.Tensor, floor: float = 0.01, blur: bool = True) -> torch.Tensor:
    """Piecewise-constant PDF (bin probabilities [...,K]) from compositing weights [...,K].

    ``blur``: a 3-wide max filter spreads mass to the neighbouring bins, so a surface that
    falls near a bin edge is still covered. ``floor``: that fraction of the mass is spread
    uniformly in depth, so empty rays and zero weights still give a valid, non-degenerate PDF.
    """
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"floor must lie in [0, 1], got {floor}")
    w = weights.clamp_min(0.0)
    if blur and w.shape[-1] > 1:
        lead = w.shape[:-1]
        padded = F.pad(w.reshape(-1, 1, w.shape[-1]), (1, 1), mode="replicate")
        w = F.max_pool1d(padded, kernel_size=3, stride=1).reshape(*lead, -1)
    widths = (edges[..., 1:] - edges[..., :-1]).clamp_min(0.0)
    uniform = widths / widths.sum(-1, keepdim=True).clamp_min(1e-12)
    p = (1.0 - floor) * w / w.sum(-1, keepdim=True).clamp_min(1e-12) + floor * uniform
    # Renormalise: the first term vanishes for rays with all-zero weights.
    return p / p.sum(-1, keepdim=True).clamp_min(1e-12)


def sample_pdf(edges: torch.Tensor, probs: torch.Tensor, num: int, jitter: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Inverse-CDF samples [...,num] of the piecewise-constant PDF given by bin ``edges`` [...,K+1]
    and bin ``probs`` [...,K]. The uniforms are stratified: u_k = (k + jitter_k) / num (midpoints
    when ``jitter`` is None), which gives sorted, low-variance samples."""
    k = torch.arange(num, device=edges.device, dtype=edges.dtype)
    u = (k + (0.5 if jitter is None else jitter)) / num
    u = u.expand(*probs.shape[:-1], num).contiguous()
    cdf = torch.cat([torch.zeros_like(probs[..., :1]), torch.cumsum(probs, dim=-1)], dim=-1)
    cdf = cdf / cdf[..., -1:].clamp_min(1e-12)
    nbins = probs.shape[-1]
    idx = (torch.searchsorted(cdf.contiguous(), u, right=True) - 1).clamp(0, nbins - 1)
    c_lo = torch.gather(cdf, -1, idx)
    p = torch.gather(probs, -1, idx)
    e_lo = torch.gather(edges, -1, idx)
    e_hi = torch.gather(edges, -1, idx + 1)
    frac = ((u - c_lo) / p.clamp_min(1e-12)).clamp(0.0, 1.0)
    return e_lo + frac * (e_hi - e_lo)


@torch.no_grad()
def importance_depths(
    depths: torch.Tensor,
    weights: torch.Tensor,
    near: torch.Tensor,
    far: torch.Tensor,
    num: int,
    jitter: Optional[torch.Tensor] = None,
    floor: float = 0.01,
    blur: bool = True,
) -> torch.Tensor:
    """``num`` fine depths per ray drawn from the coarse samples' compositing weights.

    The PDF lives on the same intervals the ray marcher integrates over (``interval_edges``
    of the sorted coarse ``depths``). No gradient flows into the sample positions.
    """
    edges = interval_edges(depths, near, far)
    return sample_pdf(edges, pdf_from_weights(weights, edges, floor, blur), num, jitter)
