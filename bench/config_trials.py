"""Trains variants of a config side by side and puts their samples and statistics next to each other.

    python bench/config_trials.py --cfg demo --trials trials.txt --data datasets/synthetic-64.zip \\
        --device cuda --parallel 8 --outdir trials/

The trials file has one trial per line: a name, then dotted overrides of the config as
KEY=VALUE (values read as YAML); '#' starts a comment. For example:

    base
    mv4      multiview_at=4
    gamma02  loss.r1_gamma=0.2 seed=1

Each trial is a `train.py` run (`--cfg OUTDIR/NAME.yaml --device D --data DATA --outdir
OUTDIR/NAME`, its log in OUTDIR/NAME.log), up to --parallel at a time; a small model keeps a
GPU waiting on kernel launches, so several share one well (the demo: eight on one H100, each
at about 70 images/s against 111 alone). Then, for every trial that wrote a snapshot:
OUTDIR/grid_NAME.png (rows: classes x --seeds seeds; columns: 4 views at yaw 0/90/180/270,
pitch 15) and, with a synthetic data set, the within-class statistics of bench/diversity.py.
A summary table ends the output. Judge shapes on the grids; the statistics say how varied and
how solid the samples are, and "shape" is bench/diversity.py's silhouette margin (own class
minus other classes, next to the data's in the first line): a class whose margin is at or
below zero, such as boxes rendered as blobs, has lost its shape. --every-snapshot prints a line
for each snapshot the trial kept (override keep_snapshots, e.g. `long kimg=24
keep_snapshots=10`), to follow how the statistics move with training length.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from diversity import data_shape_match, fake_stats, real_silhouettes, real_stats, shape_match  # noqa: E402
from training import gen_utils  # noqa: E402
from training.options import load_config, to_plain  # noqa: E402
from training.snapshot import find_snapshot, list_snapshots, load_network  # noqa: E402
from training.visualize import to_uint8  # noqa: E402

VIEW_ANGLES = [(0, 15), (90, 15), (180, 15), (270, 15)]


def read_trials(path: Path) -> List[Tuple[str, Dict[str, object]]]:
    """(name, {dotted key: value}) per non-empty line of the trials file."""
    trials, names = [], set()
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        name, overrides = words[0], {}
        if "=" in name or name in names:
            raise ValueError(f"{path}:{lineno}: each trial starts with a new name, got {name!r}")
        for word in words[1:]:
            key, sep, value = word.partition("=")
            if not sep or not key:
                raise ValueError(f"{path}:{lineno}: expected KEY=VALUE, got {word!r}")
            overrides[key] = yaml.safe_load(value)
        names.add(name)
        trials.append((name, overrides))
    if not trials:
        raise ValueError(f"{path}: no trials")
    return trials


def write_config(base: dict, overrides: Dict[str, object], path: Path) -> None:
    """The base config with the dotted overrides applied; unknown keys are errors (typos)."""
    cfg = to_plain(base)
    for dotted, value in overrides.items():
        node = cfg
        *parents, leaf = dotted.split(".")
        for key in parents:
            if not isinstance(node.get(key), dict):
                raise KeyError(f"{path.stem}: no section {key!r} for override {dotted!r}")
            node = node[key]
        if leaf not in node:
            raise KeyError(f"{path.stem}: override {dotted!r} names no key of the config")
        node[leaf] = value
    cfg.pop("cfg", None)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def run_trials(args, trials) -> None:
    """train.py for every trial, at most args.parallel at a time."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED="1")
    pending, running = list(trials), []
    while pending or running:
        while pending and len(running) < args.parallel:
            name, _ = pending.pop(0)
            cmd = [sys.executable, str(ROOT / "train.py"), "--cfg", str(args.outdir / f"{name}.yaml"),
                   "--device", args.device, "--data", args.data, "--outdir", str(args.outdir / name)]
            log = open(args.outdir / f"{name}.log", "w")
            running.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log))
            print(f"started {name}", flush=True)
        for item in list(running):
            name, proc, log = item
            if proc.poll() is not None:
                log.close()
                running.remove(item)
                print(f"finished {name} (exit {proc.returncode})", flush=True)
        time.sleep(1)


def eval_grid(G, meta, seeds: int, path: Path) -> None:
    """Rows: class x seed; columns: the four views of VIEW_ANGLES."""
    cameras = gen_utils.view_cameras(G, VIEW_ANGLES)
    rows = []
    for entry in gen_utils.model_classes(meta, G.c_dim):
        for seed in range(seeds):
            ws = gen_utils.compute_ws(G, [seed], entry, truncation_psi=1.0)
            rows.append(np.concatenate(list(to_uint8(gen_utils.render_views(G, ws, cameras)["image"])), axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


def trial_snapshots(run_root: Path, every: bool) -> List[Path]:
    """The newest snapshot of a trial's run, or with ``every`` all its kept snapshots, oldest first."""
    snapshots = list_snapshots(find_snapshot(run_root).parent)  # ordered by kimg, not file time
    return snapshots if every else snapshots[-1:]


def snapshot_line(G, meta, samples: int, reals: Optional[Dict[int, torch.Tensor]]) -> str:
    """Per class: colour std, opaque fraction and (with real silhouettes) the shape margin."""
    cells = []
    for k in range(G.c_dim):
        colours, _, solid, fakes = fake_stats(G, k, samples)
        cell = f"{meta['classes'][k]['name'][:8]}: colour std {colours.std(0).mean():.3f} opaque {solid:.2f}"
        if reals is not None and k in reals:
            own, other = shape_match(fakes, k, reals)
            cell += f" shape {own - other:+.3f}"
        cells.append(cell)
    return " | ".join(cells)


def evaluate(args, name: str, reals: Optional[Dict[int, torch.Tensor]]) -> str:
    """The grid (newest snapshot) and a summary line per evaluated snapshot of a finished trial.

    With real silhouettes of the data the lines carry shape margins too; with
    ``args.every_snapshot`` there is a line for each kept snapshot, to follow a run's trajectory.
    """
    try:
        snapshots = trial_snapshots(args.outdir / name, args.every_snapshot)
    except (FileNotFoundError, ValueError) as exc:
        return f"{name:12s} no snapshot ({exc}); see {args.outdir / name}.log"
    lines = []
    for snapshot in snapshots:
        G, meta = load_network(snapshot)
        lines.append(f"{name:12s} {snapshot.name}  " + snapshot_line(G, meta, args.samples, reals))
    eval_grid(G, meta, args.seeds, args.outdir / f"grid_{name}.png")
    return "\n".join(lines)


def load_data(args):
    """(data set, ground truth, real silhouettes per class) of a synthetic --data, else Nones."""
    from training.dataset import ImageDataset
    from training.synthetic import load_ground_truth

    try:
        ds, gt = ImageDataset(args.data), load_ground_truth(args.data)
    except (FileNotFoundError, KeyError, ValueError):
        return None, None, None
    return ds, gt, real_silhouettes(ds, 400)


def real_line(args, ds, gt, reals) -> str:
    """The same statistics of the data, when it is a synthetic set (ground-truth masks)."""
    if ds is None:
        return "data: not a synthetic set (no ground truth), no real statistics"
    cells = []
    for k in sorted(reals):
        own, other = data_shape_match(k, reals, args.samples)
        cells.append(f"class {k}: colour std {real_stats(ds, gt, k, args.samples)[0].std(0).mean():.3f} "
                     f"shape {own - other:+.3f}")
    return "data         " + " | ".join(cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", default="demo", help="base config (name or path)")
    parser.add_argument("--trials", type=Path, required=True, help="trials file (see above)")
    parser.add_argument("--data", required=True, help="data set for every trial")
    parser.add_argument("--outdir", type=Path, default=Path("trials"))
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--parallel", type=int, default=1, help="trials trained at the same time")
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of each trial")
    parser.add_argument("--seeds", type=int, default=6, help="seeds per class in each grid")
    parser.add_argument("--samples", type=int, default=24, help="samples per class for the statistics")
    parser.add_argument("--eval-only", action="store_true", help="skip training; evaluate what OUTDIR holds")
    parser.add_argument("--every-snapshot", action="store_true",
                        help="statistics at every kept snapshot (set keep_snapshots), not only the newest")
    args = parser.parse_args()
    if args.parallel < 1 or args.threads < 1:
        parser.error("--parallel and --threads must be >= 1")
    if not Path(args.data).exists():
        parser.error(f"--data: {args.data} does not exist")
    trials = read_trials(args.trials)
    args.outdir.mkdir(parents=True, exist_ok=True)
    base = load_config(args.cfg)
    for name, overrides in trials:
        write_config(base, overrides, args.outdir / f"{name}.yaml")
    if not args.eval_only:
        run_trials(args, trials)
    torch.set_num_threads(max(1, args.threads))
    ds, gt, reals = load_data(args)
    lines = [evaluate(args, name, reals) for name, _ in trials]
    print("\n".join([real_line(args, ds, gt, reals)] + lines))


if __name__ == "__main__":
    main()
