"""Scalar training statistics: report values anywhere, collect global mean/std across processes, write jsonl + TensorBoard.

Usage:

    collector = Collector(regex="Loss/.*")
    ...
    report("Loss/G/loss", loss)          # a scalar or a tensor of values; returns `value`
    ...
    collector.update()                   # all-reduces across ranks when torch.distributed is up
    collector.mean("Loss/G/loss")

`report` keeps, per name and device, running float64 moments (count, sum, sum of squares)
of every reported element. It does nothing (not even a device sync) for names that no
collector's regex matches. All state lives in a `StatsRegistry` object (`default_registry`).
In a multi-process run every rank must call `Collector.update()` at the same point, because
it is a collective operation.
"""

from __future__ import annotations

import json
import re
import time
import warnings
import weakref
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np
import torch

__all__ = ["report", "report0", "Collector", "StatsRegistry", "StatsWriter", "default_registry"]

_NUM_MOMENTS = 3  # count, sum, sum of squares.
_MOMENT_DTYPE = torch.float64


def _dist_initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class StatsRegistry:
    """Cumulative moments of every reported name, and the collectors that decide which names are kept."""

    def __init__(self) -> None:
        self.moments: dict[str, dict[torch.device, torch.Tensor]] = {}
        self._collectors: "weakref.WeakSet[Collector]" = weakref.WeakSet()
        self._wanted: dict[str, bool] = {}  # Per-name answer of wants(), cleared when collectors change.

    def add_collector(self, collector: "Collector") -> None:
        self._collectors.add(collector)
        self._wanted.clear()

    def wants(self, name: str) -> bool:
        wanted = self._wanted.get(name)
        if wanted is None:
            wanted = any(c.matches(name) for c in self._collectors)
            self._wanted[name] = wanted
        return wanted

    def add(self, name: str, value: Any) -> None:
        """Accumulate the elements of `value` under `name` (always creates the entry, even for no elements)."""
        elems = torch.as_tensor(value).detach().flatten().to(_MOMENT_DTYPE)
        delta = torch.stack([torch.ones_like(elems).sum(), elems.sum(), elems.square().sum()])
        per_device = self.moments.setdefault(name, {})
        if elems.device not in per_device:
            per_device[elems.device] = torch.zeros(_NUM_MOMENTS, dtype=_MOMENT_DTYPE, device=elems.device)
        per_device[elems.device].add_(delta)

    def cumulative(self, names: list[str], device: torch.device) -> torch.Tensor:
        """[len(names), 3] cumulative moments of this process, summed over devices, on `device`."""
        out = torch.zeros(len(names), _NUM_MOMENTS, dtype=_MOMENT_DTYPE, device=device)
        for i, name in enumerate(names):
            for moments in self.moments.get(name, {}).values():
                out[i] += moments.to(device)
        return out


default_registry = StatsRegistry()


def _rank() -> int:
    return torch.distributed.get_rank() if _dist_initialized() else 0


def report(name: str, value: Any, registry: Optional[StatsRegistry] = None) -> Any:
    """Record a scalar or every element of a tensor under `name`; returns `value` unchanged."""
    registry = registry if registry is not None else default_registry
    if registry.wants(name):
        registry.add(name, value)
    return value


def report0(name: str, value: Any, registry: Optional[StatsRegistry] = None) -> Any:
    """Like report(), but only rank 0's values count (other ranks record an empty entry)."""
    registry = registry if registry is not None else default_registry
    if registry.wants(name):
        registry.add(name, value if _rank() == 0 else [])
    return value


class Collector:
    """Reads the registry's moments for names matching `regex` and turns each interval into num/mean/std.

    `update()` takes the moments reported since the previous update (summed over all ranks
    when torch.distributed is initialised). With keep_previous=True, a name that received
    nothing in the interval keeps its previous statistics; otherwise it disappears.
    """

    def __init__(self, regex: str = ".*", keep_previous: bool = True, registry: Optional[StatsRegistry] = None):
        self.regex = re.compile(regex)
        self.keep_previous = keep_previous
        self.registry = registry if registry is not None else default_registry
        self._last_cumulative: dict[str, torch.Tensor] = {}
        self._stats: dict[str, np.ndarray] = {}  # name -> float64 moments of the last interval.
        # Values reported before this collector existed (e.g. by an earlier run in the same
        # process) are not its business: remember this process's totals and subtract them.
        existing = [n for n in self.registry.moments if self.matches(n)]
        self._baseline = dict(zip(existing, self.registry.cumulative(existing, torch.device("cpu"))))
        self.registry.add_collector(self)

    def matches(self, name: str) -> bool:
        return self.regex.fullmatch(name) is not None

    def _sync_device(self) -> torch.device:
        if _dist_initialized() and torch.distributed.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def _global_names(self) -> list[str]:
        names = {n for n in self.registry.moments if self.matches(n)}
        if _dist_initialized():  # Ranks may have seen different names; reduce over the union.
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, sorted(names))
            names = set().union(*gathered)
        return sorted(names)

    def update(self) -> None:
        """Fetch the moments of the interval since the last update (a collective call when distributed)."""
        names = self._global_names()
        cumulative = self.registry.cumulative(names, self._sync_device())
        for i, name in enumerate(names):
            if name in self._baseline:
                cumulative[i] -= self._baseline[name].to(cumulative.device)
        if _dist_initialized():
            torch.distributed.all_reduce(cumulative)
        cumulative = cumulative.cpu()
        if not self.keep_previous:
            self._stats.clear()
        for name, moments in zip(names, cumulative):
            delta = moments - self._last_cumulative.get(name, torch.zeros_like(moments))
            self._last_cumulative[name] = moments
            if delta[0] > 0:
                self._stats[name] = delta.numpy()

    def names(self) -> list[str]:
        """Names with statistics after the last update()."""
        return sorted(self._stats)

    def num(self, name: str) -> int:
        moments = self._stats.get(name)
        return 0 if moments is None else int(moments[0])

    def mean(self, name: str) -> float:
        moments = self._stats.get(name)
        return float("nan") if moments is None else float(moments[1] / moments[0])

    def std(self, name: str) -> float:
        """Population standard deviation (ddof=0) of the interval's values."""
        moments = self._stats.get(name)
        if moments is None:
            return float("nan")
        mean = moments[1] / moments[0]
        return float(np.sqrt(max(moments[2] / moments[0] - mean * mean, 0.0)))

    def as_dict(self) -> dict[str, dict[str, float]]:
        """{name: {'num', 'mean', 'std'}} for every name, e.g. for StatsWriter.write()."""
        return {name: {"num": self.num(name), "mean": self.mean(name), "std": self.std(name)}
                for name in self.names()}

    def __getitem__(self, name: str) -> float:
        return self.mean(name)


class StatsWriter:
    """Appends one JSON line per tick to run_dir/stats.jsonl and logs the same means to TensorBoard."""

    _tensorboard_warned = False  # One warning per process when TensorBoard is missing.

    def __init__(self, run_dir: Union[str, Path], tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.run_dir / "stats.jsonl"
        self._jsonl = open(self.jsonl_path, "at", encoding="utf-8")
        self._tb = self._open_tensorboard() if tensorboard else None

    def _open_tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            if not StatsWriter._tensorboard_warned:
                warnings.warn(f"TensorBoard is not available ({err}); writing stats.jsonl only")
                StatsWriter._tensorboard_warned = True
            return None
        return SummaryWriter(str(self.run_dir))

    def write(self, stats: Union["Collector", Mapping[str, Any]], step: int,
              timestamp: Optional[float] = None) -> None:
        """Write one tick: stats maps names to floats or {'num','mean','std'} dicts (or is a Collector)."""
        if isinstance(stats, Collector):
            stats = stats.as_dict()
        timestamp = time.time() if timestamp is None else float(timestamp)
        record = {"timestamp": timestamp, "step": int(step), "stats": dict(stats)}
        self._jsonl.write(json.dumps(record, allow_nan=True) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for name, value in stats.items():
                scalar = value["mean"] if isinstance(value, Mapping) else value
                self._tb.add_scalar(name, float(scalar), global_step=int(step), walltime=timestamp)
            self._tb.flush()

    def close(self) -> None:
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> "StatsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
