"""Training options: named YAML configs, CLI overrides, validation, and kimg parsing."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import yaml

from dnnlib import EasyDict

__all__ = ["CONFIG_DIR", "available_configs", "load_config", "apply_overrides", "parse_kimg", "validate_options",
           "to_plain", "OVERRIDE_KEYS"]

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"

# CLI flag name -> dotted key in the option tree.
OVERRIDE_KEYS = {
    "data": "data", "batch": "batch", "batch_gpu": "batch_gpu", "kimg": "kimg", "multiview_at": "multiview_at",
    "views": "views", "gamma": "loss.r1_gamma", "glr": "glr", "dlr": "dlr", "extra_blocks": "G.extra_blocks",
    "decoder_layers": "G.decoder_layers", "neural_res": "G.neural_res", "triplane_res": "G.triplane_res",
    "aug": "aug", "mirror": "mirror", "snap": "snap", "tick": "tick", "metrics": "metrics", "seed": "seed",
    "workers": "workers", "reuse_fakes": "loss.reuse_fakes", "cpu_bf16": "cpu_bf16",
}

REQUIRED = ("data", "batch", "kimg", "views", "glr", "dlr", "G", "D", "loss")


def available_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def _to_easydict(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return EasyDict({k: _to_easydict(v) for k, v in obj.items()})
    if isinstance(obj, list):
        return [_to_easydict(v) for v in obj]
    return obj


def to_plain(obj: Any) -> Any:
    """EasyDicts and tuples -> plain dicts and lists (for YAML/JSON)."""
    if isinstance(obj, Mapping):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def load_config(name_or_path: Union[str, Path]) -> EasyDict:
    """A config by name (`configs/<name>.yaml`) or by path; the error lists the named configs."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"--cfg: no config '{name_or_path}' (not a file, and not one of the named configs: "
                                f"{', '.join(available_configs())})")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"--cfg: '{path}' is not valid YAML: {exc}") from exc
    if not isinstance(raw, Mapping):
        raise ValueError(f"--cfg: '{path}' must hold a mapping of options at the top level")
    opts = _to_easydict(raw)
    opts.cfg = str(name_or_path)
    return opts


def parse_kimg(value: Union[str, int, float, None], flag: str = "--multiview-at") -> Optional[float]:
    """'8000kimg', '8000', 8000 -> 8000.0; 'none'/'never'/None -> None; '1.5Mimg' -> 1500.0."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "never", "off")):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(kimg|mimg|k)?\s*", value, flags=re.IGNORECASE)
    if not match:
        raise ValueError(f"{flag}: cannot read '{value}' as a training length (examples: 8000kimg, 8000, 1.5Mimg)")
    number, unit = float(match.group(1)), (match.group(2) or "kimg").lower()
    return number * 1000 if unit == "mimg" else number


def _set_dotted(tree: EasyDict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for key in parents:
        node = node.setdefault(key, EasyDict())
    node[leaf] = value


def apply_overrides(opts: EasyDict, overrides: Mapping[str, Any]) -> EasyDict:
    """A copy of `opts` with every non-None CLI value written to its key (see OVERRIDE_KEYS)."""
    opts = copy.deepcopy(opts)
    for flag, value in overrides.items():
        if value is None:
            continue
        if flag not in OVERRIDE_KEYS:
            raise KeyError(f"unknown override '{flag}'")
        _set_dotted(opts, OVERRIDE_KEYS[flag], value)
    if overrides.get("neural_res") is not None:
        # A resolution given on the command line is meant to hold: the config's fade would
        # otherwise render at other sizes and resize them to it.
        opts.neural_res_fade = None
    opts.multiview_at = parse_kimg(opts.get("multiview_at"))
    return opts


def validate_options(opts: EasyDict, num_gpus: int) -> EasyDict:
    """Check the merged options, fill batch_gpu, and return them; errors name the flag."""
    missing = [k for k in REQUIRED if k not in opts]
    if missing:
        raise ValueError(f"config '{opts.get('cfg')}' lacks the options: {', '.join(missing)}")
    if opts.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {opts.batch}")
    if opts.batch % num_gpus != 0:
        raise ValueError(f"--batch {opts.batch} must be divisible by the number of GPUs ({num_gpus})")
    per_gpu = opts.batch // num_gpus
    # batch_gpu caps the images per GPU per round (gradients accumulate over rounds); it never exceeds per_gpu.
    opts.batch_gpu = min(opts.batch_gpu or per_gpu, per_gpu)
    if per_gpu % opts.batch_gpu != 0:
        raise ValueError(f"--batch-gpu {opts.batch_gpu} must divide batch per GPU ({per_gpu})")
    if opts.views < 1:
        raise ValueError(f"--views must be >= 1, got {opts.views}")
    if opts.kimg <= 0:
        raise ValueError(f"--kimg must be > 0, got {opts.kimg}")
    if opts.aug not in ("ada", "fixed", "noaug"):
        raise ValueError(f"--aug must be one of ada, fixed, noaug; got '{opts.aug}'")
    for key in ("tick", "snap"):
        if opts.get(key, 1) <= 0:
            raise ValueError(f"--{key} must be > 0, got {opts[key]}")
    return opts
