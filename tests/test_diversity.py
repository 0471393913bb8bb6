"""bench/diversity.py: the silhouette shape measure on analytic masks (squares against discs)."""

import sys
from pathlib import Path

import torch

# Appended, not prepended: bench/train.py must not shadow the top-level train.py for later tests.
sys.path.append(str(Path(__file__).resolve().parents[1] / "bench"))

from diversity import data_shape_match, nearest_iou, shape_match, silhouettes  # noqa: E402

SIZE = 32


def _image(kind: str, half: float) -> torch.Tensor:
    """A dark square or disc of half-width `half` pixels, centred, on white: [3,SIZE,SIZE] in [0,1]."""
    yy, xx = torch.meshgrid(torch.arange(SIZE) - SIZE / 2 + 0.5, torch.arange(SIZE) - SIZE / 2 + 0.5, indexing="ij")
    inside = (torch.maximum(xx.abs(), yy.abs()) <= half) if kind == "square" else (xx ** 2 + yy ** 2 <= half ** 2)
    return torch.where(inside, 0.3, 1.0).expand(3, SIZE, SIZE)


def _masks(kind: str, halves) -> torch.Tensor:
    return silhouettes(torch.stack([_image(kind, h) for h in halves]))


def test_silhouettes_are_the_dark_pixels():
    masks = _masks("square", [4])
    assert masks.shape == (1, SIZE * SIZE) and masks.sum().item() == 64  # an 8x8 square


def test_nearest_iou_is_the_best_match_and_leave_one_out_skips_itself():
    refs = _masks("square", [4, 6, 8])
    queries = _masks("square", [6])
    assert nearest_iou(queries, refs).item() == 1.0
    # Left out, the 6-square's best match is the 8-square: IoU 144 / 256 (the 4-square: 64 / 144).
    assert abs(nearest_iou(refs[1:2], refs[1:], leave_one_out=True).item() - 144 / 256) < 1e-6


def test_squares_match_their_own_class_and_discs_do_not():
    sizes = [4 + 0.5 * i for i in range(17)]  # many sizes, as in a data set: size alone does not decide
    reals = {0: _masks("square", sizes), 1: _masks("disc", sizes)}
    squares, discs = _masks("square", [6.25, 9.75]), _masks("disc", [6.25, 9.75])
    own, other = shape_match(squares, 0, reals)
    assert own > other  # a square looks more like a square than like a disc of any size
    own, other = shape_match(discs, 0, reals)  # discs passed off as class 0 (squares): no margin
    assert own < other
    data_own, data_other = data_shape_match(0, reals, len(sizes))
    assert data_own > data_other
