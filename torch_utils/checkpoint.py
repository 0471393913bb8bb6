"""Safe, atomic checkpoint files: safetensors weights with JSON metadata, and weights-only state files.

Nothing here unpickles code. Weights of several modules go into one safetensors file under
name prefixes (`G_ema.mapping.fc0.weight`); constructor arguments and anything else the
caller wants to keep travel as JSON in the file's metadata. Optimiser states and RNG states,
which are nested dicts of tensors and numbers, go through `torch.save` and are read back with
`torch.load(weights_only=True)`. Every write goes to a temporary file in the destination
directory and is renamed into place, so a crash leaves either the old file or the new one.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Union

import torch

__all__ = [
    "CheckpointError",
    "atomic_write",
    "save_modules",
    "load_modules",
    "read_metadata",
    "save_state",
    "load_state",
]

PathLike = Union[str, os.PathLike]
_META_KEY = "triplane3d"


class CheckpointError(RuntimeError):
    """A file is not a valid checkpoint of the expected kind; the message names the file."""


@contextmanager
def atomic_write(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:  # make the bytes durable before the rename publishes them
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_modules(path: PathLike, modules: Mapping[str, torch.nn.Module], metadata: Mapping[str, Any]) -> None:
    """Write the state dicts of `modules` (prefixed by their key) and JSON `metadata` to a safetensors file."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    seen_storages: set[int] = set()
    for prefix, module in modules.items():
        for name, value in module.state_dict().items():
            value = value.detach().to("cpu").contiguous()
            # safetensors refuses tensors that share storage; state dicts can contain such aliases.
            storage = value.untyped_storage().data_ptr()
            if value.numel() and storage in seen_storages:
                value = value.clone()
            seen_storages.add(value.untyped_storage().data_ptr())
            tensors[f"{prefix}.{name}"] = value
    header = {_META_KEY: json.dumps(dict(metadata), sort_keys=True)}
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)


def read_metadata(path: PathLike) -> dict[str, Any]:
    """The JSON metadata of a file written by `save_modules`, without reading the weights."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint '{path}' does not exist.")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(_META_KEY)
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"'{path}' is not a valid safetensors checkpoint ({exc}).") from exc
    if raw is None:
        raise CheckpointError(f"'{path}' is a safetensors file but not a checkpoint of this project (no '{_META_KEY}' metadata).")
    return json.loads(raw)


def load_modules(path: PathLike, device: Union[str, torch.device] = "cpu") -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """Read a file written by `save_modules`: ({prefix: state_dict}, metadata)."""
    from safetensors.torch import load_file

    metadata = read_metadata(path)
    try:
        flat = load_file(str(path), device=str(device))
    except Exception as exc:
        raise CheckpointError(f"Could not read the weights in '{path}' ({exc}).") from exc
    states: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        prefix, _, name = key.partition(".")
        states.setdefault(prefix, {})[name] = value
    return states, metadata


def save_state(path: PathLike, state: Mapping[str, Any]) -> None:
    """Write nested dicts/lists of tensors, numbers and strings (no objects) atomically."""
    with atomic_write(path) as tmp:
        torch.save(dict(state), tmp)


def load_state(path: PathLike, device: Union[str, torch.device] = "cpu") -> dict[str, Any]:
    """Read a file written by `save_state`; executes no code from the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"State file '{path}' does not exist.")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"'{path}' is not a valid training-state file ({type(exc).__name__}: {exc}).") from exc
