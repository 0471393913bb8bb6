"""EasyDict, a cached `open_url` for pretrained weights, and numbered run directories."""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, BinaryIO, Optional, Union

CACHE_ENV = "TRIPLANE3D_CACHE_DIR"


class EasyDict(dict):
    """A dict whose keys are also attributes: `opts.batch` for `opts['batch']`."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(name) from None


def cache_root() -> Path:
    """Root of the project's caches: $TRIPLANE3D_CACHE_DIR, else ~/.cache/triplane3d."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "triplane3d"


def _is_url(path_or_url: str) -> bool:
    return re.match(r"^[a-z][a-z0-9+.-]*://", path_or_url) is not None and not path_or_url.startswith("file://")


def url_cache_path(url: str, cache_dir: Optional[Union[str, Path]] = None) -> Path:
    """Where `open_url` keeps its copy of `url`: <cache>/downloads/<sha1 of url>_<basename>."""
    cache_dir = Path(cache_dir) if cache_dir is not None else cache_root() / "downloads"
    name = os.path.basename(urllib.parse.urlparse(url).path) or "file"
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    return cache_dir / f"{hashlib.sha1(url.encode()).hexdigest()[:16]}_{name}"


def open_url(
    url: str,
    cache: bool = True,
    cache_dir: Optional[Union[str, Path]] = None,
    timeout: float = 30.0,
    return_filename: bool = False,
) -> Union[BinaryIO, str]:
    """Open a URL or a local path as a binary file object, downloading through a cache.

    Local paths (and file:// URLs) are opened directly. A URL is looked up in the cache
    first; a download is written to a temporary file and renamed only when complete, so an
    interrupted download never leaves a truncated cache entry. With `return_filename`, the
    path of the local copy is returned instead of an open file.

    Offline, or when the server fails, the error names the URL, the cache path it would have
    used, and how to supply the file by hand.
    """
    if not _is_url(url):
        path = urllib.parse.urlparse(url).path if url.startswith("file://") else url
        path = os.path.expanduser(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No such file: '{path}'")
        return path if return_filename else open(path, "rb")

    target = url_cache_path(url, cache_dir)
    if cache and target.is_file():
        return str(target) if return_filename else open(target, "rb")

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            data = response.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise RuntimeError(
            f"Could not download '{url}' ({exc}). If this machine is offline, download the file "
            f"elsewhere and either pass its local path instead of the URL, or place it at '{target}' "
            f"(cache root: ${CACHE_ENV}, default ~/.cache/triplane3d)."
        ) from exc

    if not cache:
        if return_filename:
            raise ValueError("return_filename=True needs cache=True")
        return io.BytesIO(data)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=target.name)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, target)
    return str(target) if return_filename else open(target, "rb")


_RUN_ID = re.compile(r"^(\d+)-")


def next_run_id(outdir: Union[str, Path]) -> int:
    """The next free run number in `outdir` (one more than the largest `NNNNN-...` there)."""
    outdir = Path(outdir)
    ids = [int(m.group(1)) for p in outdir.iterdir() if (m := _RUN_ID.match(p.name))] if outdir.is_dir() else []
    return max(ids, default=-1) + 1


def make_run_dir(outdir: Union[str, Path], desc: str, create: bool = True) -> Path:
    """Create `outdir/00000-<desc>` with the next free number; the description is made filename-safe."""
    desc = re.sub(r"[^A-Za-z0-9._-]+", "-", desc).strip("-") or "run"
    outdir = Path(outdir)
    while True:
        run_dir = outdir / f"{next_run_id(outdir):05d}-{desc}"
        if not create:
            return run_dir
        try:
            run_dir.mkdir(parents=True, exist_ok=False)
            return run_dir
        except FileExistsError:  # another process took this number: try the next one
            continue


def copy_to_cache(path: Union[str, Path], url: str, cache_dir: Optional[Union[str, Path]] = None) -> Path:
    """Place a local file in the cache under `url`, so later `open_url(url)` calls find it offline."""
    target = url_cache_path(url, cache_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, target)
    return target
