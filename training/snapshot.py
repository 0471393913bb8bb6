"""Network snapshots (safetensors + constructor JSON + class table) and finding the newest one.

A snapshot file `network-snapshot-<kimg>.safetensors` holds G, D and G_ema weights under those
prefixes; its metadata names each network's class and constructor arguments, the data set's
class table and the training progress. Loading rebuilds the networks from that JSON and never
executes code from the file. The optimiser/RNG side of a run lives in the matching
`training-state-<kimg>.pt` (see training_loop.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch

from torch_utils.checkpoint import CheckpointError, load_modules, read_metadata, save_modules

__all__ = ["FORMAT", "save_snapshot", "load_snapshot", "load_network", "find_snapshot",
           "snapshot_name", "state_name", "list_snapshots"]

FORMAT = "triplane3d-snapshot"
VERSION = 1
_SNAPSHOT_RE = re.compile(r"^network-snapshot-(\d+)\.safetensors$")


def _network_classes() -> Dict[str, type]:
    # Imported lazily: loading a snapshot should not import every network module up front.
    from training.discriminator import Discriminator
    from training.triplane import TriPlaneGenerator

    return {"TriPlaneGenerator": TriPlaneGenerator, "Discriminator": Discriminator}


def snapshot_name(cur_nimg: int) -> str:
    return f"network-snapshot-{cur_nimg // 1000:06d}.safetensors"


def state_name(cur_nimg: int) -> str:
    return f"training-state-{cur_nimg // 1000:06d}.pt"


def save_snapshot(path: Union[str, Path], networks: Mapping[str, torch.nn.Module], classes: list,
                  extra: Optional[Mapping[str, Any]] = None) -> None:
    """Write `networks` ({'G': ..., 'D': ..., 'G_ema': ...}) with their constructor args and class table."""
    meta_nets = {}
    for key, net in networks.items():
        kwargs = getattr(net, "init_kwargs", None)
        if kwargs is None:
            raise TypeError(f"network '{key}' ({type(net).__name__}) has no init_kwargs to rebuild it from")
        meta_nets[key] = {"class": type(net).__name__, "kwargs": kwargs}
    metadata = {"format": FORMAT, "version": VERSION, "networks": meta_nets, "classes": list(classes),
                **dict(extra or {})}
    save_modules(path, networks, metadata)


def _check_format(path: Path, metadata: Dict[str, Any]) -> None:
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"'{path}' is not a network snapshot of this project (format={metadata.get('format')!r})")
    if int(metadata.get("version", 0)) > VERSION:
        raise CheckpointError(f"'{path}' was written by a newer version (snapshot format {metadata['version']})")


def load_snapshot(path: Union[str, Path], keys: Optional[tuple] = None,
                  device: Union[str, torch.device] = "cpu") -> tuple[Dict[str, torch.nn.Module], Dict[str, Any]]:
    """Rebuild the networks of a snapshot: ({'G': ..., 'D': ..., 'G_ema': ...}, metadata)."""
    path = Path(path)
    states, metadata = load_modules(path, device="cpu")
    _check_format(path, metadata)
    classes = _network_classes()
    networks = {}
    for key, spec in metadata["networks"].items():
        if keys is not None and key not in keys:
            continue
        if spec["class"] not in classes:
            raise CheckpointError(f"'{path}': unknown network class '{spec['class']}' for '{key}'")
        net = classes[spec["class"]](**spec["kwargs"])
        try:
            net.load_state_dict(states.get(key, {}), strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"'{path}': weights of '{key}' do not match its constructor arguments ({exc})") from exc
        networks[key] = net.eval().requires_grad_(False).to(device)
    return networks, metadata


def load_network(path: Union[str, Path], key: str = "G_ema", device: Union[str, torch.device] = "cpu"):
    """One network of a snapshot and the snapshot's metadata (class table etc.)."""
    networks, metadata = load_snapshot(path, keys=(key,), device=device)
    if key not in networks:
        raise CheckpointError(f"'{path}' has no network '{key}' (has: {', '.join(metadata['networks'])})")
    return networks[key], metadata


def list_snapshots(run_dir: Union[str, Path]) -> list[Path]:
    """Snapshots in a run directory, oldest first."""
    run_dir = Path(run_dir)
    found = [(int(m.group(1)), p) for p in run_dir.glob("network-snapshot-*.safetensors")
             if (m := _SNAPSHOT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def find_snapshot(path: Optional[Union[str, Path]] = None, search_root: Union[str, Path] = "training-runs") -> Path:
    """A snapshot file from a file, a run directory (its newest), or None (newest under `search_root`)."""
    if path is not None:
        path = Path(path)
        if path.is_file():
            read_metadata(path)  # fails clearly if it is not a checkpoint
            return path
        if path.is_dir():
            snaps = list_snapshots(path)
            if snaps:
                return snaps[-1]
            runs = [p for p in path.iterdir() if p.is_dir() and list_snapshots(p)]
            if runs:
                return find_snapshot(None, path)
            raise FileNotFoundError(f"No network-snapshot-*.safetensors in '{path}'")
        raise FileNotFoundError(f"No such snapshot file or run directory: '{path}'")
    root = Path(search_root)
    candidates = [s for run in (root.iterdir() if root.is_dir() else []) if run.is_dir() for s in list_snapshots(run)]
    if not candidates:
        raise FileNotFoundError(f"No snapshot found under '{root}/'. Train one first (python train.py ...) "
                                "or pass --network PATH (a .safetensors snapshot or a run directory).")
    return max(candidates, key=lambda p: (p.stat().st_mtime, p.name))
