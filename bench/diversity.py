"""Prints within-class variety of a generator next to its synthetic training data.

    python bench/diversity.py --network demo-out/runs --data datasets/synthetic-64.zip

Per class: the standard deviation over N samples of the mean foreground colour (averaged
over RGB) and of the silhouette area fraction, for generated samples (random cameras on the
sphere, foreground = opacity > 0.5) and for N real images (foreground = the stored mask).
A class collapsed to one instance has a fake colour std near 0.

Also, for the fakes, how solid the geometry is: the fraction of the neural render's covered
rays (opacity > 0.05) that are opaque (opacity > 0.9). The data's objects are opaque, so a
good model is near 1 (minus anti-aliased edges); a low value means semi-transparent shells
whose colour the super-resolution paints in (the depth maps and meshes show them).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from training.dataset import ImageDataset  # noqa: E402
from training.snapshot import find_snapshot, load_network  # noqa: E402
from training.synthetic import load_ground_truth  # noqa: E402


def fake_stats(G, k: int, n: int) -> tuple[np.ndarray, np.ndarray, float]:
    z = torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(k))
    torch.manual_seed(k)
    with torch.no_grad():
        out = G(z, torch.eye(G.c_dim)[[k] * n], noise_mode="const")
    img = (out["image"].clamp(-1, 1) + 1) / 2
    fg = F.interpolate(out["opacity"], size=img.shape[-1], mode="nearest")[:, 0] > 0.5
    colours = np.array([img[i][:, fg[i]].mean(1).numpy() if fg[i].any() else np.zeros(3) for i in range(n)])
    covered = out["opacity"] > 0.05
    solidity = ((out["opacity"] > 0.9) & covered).sum().item() / max(covered.sum().item(), 1)
    return colours, fg.float().mean([1, 2]).numpy(), solidity


def real_stats(ds: ImageDataset, gt, k: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    idx = [i for i in range(len(ds)) if ds.get_label(i) == k][:n]
    colours, areas = [], []
    for i in idx:
        image = ds[i][0].float() / 255
        mask = torch.as_tensor(gt.mask(ds.get_fname(i)))
        colours.append(image[:, mask].mean(1).numpy())
        areas.append(mask.float().mean().item())
    return np.array(colours), np.array(areas)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--network", required=True, help="snapshot file or run directory")
    parser.add_argument("--data", required=True, help="the synthetic data set the model was trained on")
    parser.add_argument("--samples", type=int, default=24)
    args = parser.parse_args()
    snapshot = find_snapshot(args.network)
    G, meta = load_network(snapshot)
    ds, gt = ImageDataset(args.data), load_ground_truth(args.data)
    print(f"snapshot {snapshot}, {args.samples} samples per class")
    for k in range(G.c_dim):
        fc, fa, solid = fake_stats(G, k, args.samples)
        rc, ra = real_stats(ds, gt, k, args.samples)
        print(f"class {k} {meta['classes'][k]['name']:>12}: colour std fake {fc.std(0).mean():.3f} real "
              f"{rc.std(0).mean():.3f} | area std fake {fa.std():.3f} real {ra.std():.3f} | "
              f"opaque fraction of covered rays {solid:.2f}")


if __name__ == "__main__":
    main()
