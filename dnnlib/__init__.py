"""Small generic helpers with no knowledge of GANs or 3D: EasyDict, cached URL opening, run dirs."""

from .util import EasyDict, cache_root, make_run_dir, open_url, next_run_id

__all__ = ["EasyDict", "cache_root", "make_run_dir", "open_url", "next_run_id"]
