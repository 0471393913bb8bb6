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

And whether each class has its own shape, from silhouettes (pixels that are not near-white
background, in the final images, fakes and reals alike): for every sample, the best IoU with
a real silhouette of its own class and the best with one of another class, averaged. In the
data the own-class match is the better one (real boxes look more like other boxes than like
spheres or capsules); a fake class whose "own" does not beat "other" has lost its shape,
e.g. boxes rendered as rounded blobs. The margin own - other is printed next to the data's
(reals against the other reals, leaving each one out). Only meaningful on white backgrounds,
as in the demo's data.
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


def fake_stats(G, k: int, n: int) -> tuple[np.ndarray, np.ndarray, float, torch.Tensor]:
    """(mean foreground colours [n,3], silhouette areas [n], opaque fraction, silhouettes [n,H*W]) of n fakes."""
    z = torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(k))
    torch.manual_seed(k)
    with torch.no_grad():
        out = G(z, torch.eye(G.c_dim)[[k] * n], noise_mode="const")
    img = (out["image"].clamp(-1, 1) + 1) / 2
    fg = F.interpolate(out["opacity"], size=img.shape[-1], mode="nearest")[:, 0] > 0.5
    colours = np.array([img[i][:, fg[i]].mean(1).numpy() if fg[i].any() else np.zeros(3) for i in range(n)])
    covered = out["opacity"] > 0.05
    solidity = ((out["opacity"] > 0.9) & covered).sum().item() / max(covered.sum().item(), 1)
    return colours, fg.float().mean([1, 2]).numpy(), solidity, silhouettes(img)


def silhouettes(images: torch.Tensor, threshold: float = 0.85) -> torch.Tensor:
    """Images [N,3,H,W] in [0,1] on a white background -> float masks [N,H*W]: the pixels whose darkest
    channel is below ``threshold`` (the object, shading and texture included)."""
    return (images.min(dim=1).values < threshold).reshape(len(images), -1).float()


def nearest_iou(queries: torch.Tensor, refs: torch.Tensor, leave_one_out: bool = False) -> torch.Tensor:
    """For each query mask [Q,P], the highest IoU with any reference mask [R,P] (leave_one_out: refs
    start with the queries, and a query is not matched with itself)."""
    inter = queries @ refs.T
    union = queries.sum(1, keepdim=True) + refs.sum(1)[None] - inter
    iou = inter / union.clamp_min(1.0)
    if leave_one_out:
        iou[:, :len(queries)].fill_diagonal_(-1.0)
    return iou.max(dim=1).values


def real_silhouettes(ds: ImageDataset, n: int) -> dict[int, torch.Tensor]:
    """Class -> silhouettes of its first n real images."""
    by_class: dict[int, list] = {}
    for i in range(len(ds)):
        k = ds.get_label(i)
        if len(by_class.setdefault(k, [])) < n:
            by_class[k].append(torch.as_tensor(ds[i][0]).float() / 255)
    return {k: silhouettes(torch.stack(v)) for k, v in by_class.items()}


def shape_match(fakes: torch.Tensor, k: int, reals: dict[int, torch.Tensor]) -> tuple[float, float]:
    """(mean best IoU with real silhouettes of class k, the same with those of the other classes)."""
    others = torch.cat([v for j, v in reals.items() if j != k])
    return nearest_iou(fakes, reals[k]).mean().item(), nearest_iou(fakes, others).mean().item()


def data_shape_match(k: int, reals: dict[int, torch.Tensor], n: int) -> tuple[float, float]:
    """shape_match of n reals of class k against the rest of the reals (each one left out)."""
    own = nearest_iou(reals[k][:n], reals[k], leave_one_out=True).mean().item()
    return own, nearest_iou(reals[k][:n], torch.cat([v for j, v in reals.items() if j != k])).mean().item()


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
    parser.add_argument("--samples", type=int, default=48)
    parser.add_argument("--reals", type=int, default=400, help="real silhouettes per class to match against")
    args = parser.parse_args()
    snapshot = find_snapshot(args.network)
    G, meta = load_network(snapshot)
    ds, gt = ImageDataset(args.data), load_ground_truth(args.data)
    reals = real_silhouettes(ds, args.reals)
    print(f"snapshot {snapshot}, {args.samples} samples per class")
    for k in range(G.c_dim):
        fc, fa, solid, fs = fake_stats(G, k, args.samples)
        rc, ra = real_stats(ds, gt, k, args.samples)
        own, other = shape_match(fs, k, reals)
        data_own, data_other = data_shape_match(k, reals, args.samples)
        print(f"class {k} {meta['classes'][k]['name']:>12}: colour std fake {fc.std(0).mean():.3f} real "
              f"{rc.std(0).mean():.3f} | area std fake {fa.std():.3f} real {ra.std():.3f} | "
              f"opaque fraction of covered rays {solid:.2f} | silhouette IoU own/other fake "
              f"{own:.3f}/{other:.3f} (margin {own - other:+.3f}), data {data_own:.3f}/{data_other:.3f} "
              f"({data_own - data_other:+.3f})")


if __name__ == "__main__":
    main()
