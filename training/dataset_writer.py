"""Writing data sets: atomic zip/folder output, ordered parallel processing, and the problem report."""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import shutil
import uuid
import zipfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, TypeVar, Union

from tqdm import tqdm

from training.image_processing import ProcessOptions, load_and_encode

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class SourceItem:
    """One source file and the data-set class it belongs to."""

    path: str
    label: int


def report_path(dest: Union[str, Path]) -> Path:
    """Where the problem report of `dest` goes: `<dest>.report.json` beside it."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".report.json")


def check_destination(dest: Union[str, Path], force: bool) -> Path:
    """Refuse an existing destination unless `force` (checked before any work starts)."""
    dest = Path(dest)
    if dest.exists() and not force:
        raise FileExistsError(f"destination exists: {dest} (pass --force to replace it once the new one is complete)")
    if dest.exists() and dest.suffix.lower() == ".zip" and dest.is_dir():
        raise FileExistsError(f"destination {dest} is a folder but its name ends in .zip")
    return dest


class DatasetWriter:
    """Writes images + dataset.json to a temporary sibling of `dest`; `commit()` renames it into place.

    Until commit, nothing named `dest` is touched, so an interrupted run never leaves a
    complete-looking data set, and with force an old data set survives until the new one
    is complete. Used as a context manager, an exception removes the temporary output.
    """

    def __init__(self, dest: Union[str, Path], force: bool = False):
        self.dest = check_destination(dest, force)
        self.is_zip = self.dest.suffix.lower() == ".zip"
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        # Same directory as dest, so the final rename never crosses file systems.
        self.tmp = self.dest.with_name(f".{self.dest.name}.incomplete-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        self._zip: Optional[zipfile.ZipFile] = None
        if self.is_zip:
            # PNGs are already compressed; storing them keeps reads fast.
            self._zip = zipfile.ZipFile(self.tmp, "w", compression=zipfile.ZIP_STORED)
        else:
            self.tmp.mkdir()
        self._done = False

    def add(self, arcname: str, data: bytes) -> None:
        """Write one file (e.g. a PNG) under `arcname` (a relative '/'-separated path)."""
        if self._zip is not None:
            self._zip.writestr(arcname, data)
        else:
            path = self.tmp / arcname
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    def commit(self, dataset_json: Dict[str, Any]) -> Path:
        """Write dataset.json last, close, and move the finished data set to `dest`."""
        self.add("dataset.json", json.dumps(dataset_json, indent=None).encode("utf-8"))
        if self._zip is not None:
            self._zip.close()
            self._zip = None
            os.replace(self.tmp, self.dest)  # atomic; replaces an old zip only now
        else:
            old = None
            if self.dest.exists():
                old = self.dest.with_name(f".{self.dest.name}.old-{uuid.uuid4().hex[:8]}")
                os.replace(self.dest, old)
            os.replace(self.tmp, self.dest)
            if old is not None:
                _remove(old)
        self._done = True
        return self.dest

    def abort(self) -> None:
        """Remove the temporary output (dest itself is untouched)."""
        if self._zip is not None:
            self._zip.close()
            self._zip = None
        if not self._done and self.tmp.exists():
            _remove(self.tmp)

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._done:
            self.abort()


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def write_json_atomic(path: Union[str, Path], obj: Any) -> None:
    """JSON to a temporary sibling, then rename (readers never see half a file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(obj, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int = 1, window: Optional[int] = None) -> Iterator[R]:
    """`map(fn, items)` on a process pool, results in input order, at most `window` in flight.

    The bounded window keeps memory flat however many items there are (a plain
    Pool.imap would buffer results without limit when the consumer is slower).
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    window = window or 4 * workers
    with multiprocessing.get_context().Pool(workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.apply_async(fn, (item,)))
            if len(pending) >= window:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def _display(path: str, root: Optional[Path]) -> str:
    if root is None:
        return path
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return path


def convert_dataset(items: Sequence[SourceItem], classes: List[Dict[str, Any]], dest: Union[str, Path],
                    opts: ProcessOptions, workers: int = 1, force: bool = False,
                    source_root: Union[str, Path, None] = None, progress: bool = True) -> Dict[str, Any]:
    """Process `items` into a data set at `dest` (zip or folder) and write `<dest>.report.json`.

    Streams: each image is written as soon as it is processed. Returns the report dict.
    """
    root = Path(source_root) if source_root is not None else None
    fn = functools.partial(load_and_encode, opts=opts)
    labels: List[List[Any]] = []
    problems: List[Dict[str, str]] = []
    per_class = [0] * len(classes)
    with DatasetWriter(dest, force) as writer:
        results = ordered_map(fn, (it.path for it in items), workers)
        bar = tqdm(zip(items, results), total=len(items), unit="img", disable=not progress,
                   desc=f"writing {Path(dest).name}", smoothing=0.05)
        for item, (png, issues) in bar:
            for reason, action in issues:
                problems.append({"file": _display(item.path, root), "reason": reason, "action": action})
            if png is None:
                continue
            arcname = f"{item.label:05d}/img{len(labels):08d}.png"
            writer.add(arcname, png)
            labels.append([arcname, item.label])
            per_class[item.label] += 1
        if not labels:
            raise RuntimeError(f"no usable images among {len(items)} source files; nothing written to {dest}")
        writer.commit({"labels": labels, "classes": classes})
    report = _make_report(dest, root, opts, items, labels, per_class, classes, problems)
    write_json_atomic(report_path(dest), report)
    return report


def _make_report(dest: Union[str, Path], root: Optional[Path], opts: ProcessOptions, items: Sequence[SourceItem],
                 labels: List[List[Any]], per_class: List[int], classes: List[Dict[str, Any]],
                 problems: List[Dict[str, str]]) -> Dict[str, Any]:
    """The JSON report: counts, images per class, and every problem file with its reason and action."""
    skipped = sorted({p["file"] for p in problems if p["action"] == "skipped"})
    converted = sorted({p["file"] for p in problems if p["action"] != "skipped"} - set(skipped))
    empty = [c["name"] for c, n in zip(classes, per_class) if n == 0]
    return {
        "dest": str(dest), "source": None if root is None else str(root), "resolution": opts.resolution,
        "num_source_files": len(items), "num_images": len(labels), "num_skipped": len(skipped),
        "num_converted": len(converted), "images_per_class": per_class, "empty_classes": empty,
        "problems": problems,
    }


def summarise_report(report: Dict[str, Any]) -> str:
    """A few lines for the end of a run: counts and the most common problems."""
    counts: Dict[str, int] = {}
    for p in report["problems"]:
        key = f"{p['action']}: {p['reason'].split(':')[0].split('(')[0].strip()}"
        counts[key] = counts.get(key, 0) + 1
    lines = [f"wrote {report['num_images']} images from {report['num_source_files']} files to {report['dest']}; "
             f"{report['num_skipped']} skipped, {report['num_converted']} converted"]
    lines += [f"  {n:6d} x {k}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1])]
    if report["empty_classes"]:
        lines.append(f"  classes with no images: {', '.join(report['empty_classes'])}")
    lines.append(f"report: {report_path(report['dest'])}")
    return "\n".join(lines)
