"""Which dtype the reduced-precision blocks compute in, per device.

A block built with ``use_fp16=True`` (the ``num_fp16_res`` highest resolutions of the backbone,
super-resolution and discriminator) computes in:

* float16 on CUDA, as in StyleGAN2 and EG3D (with their clamping and pre-normalisation);
* bfloat16 on a CPU while ``cpu_bf16`` is on: oneDNN runs bf16 convolutions about twice as
  fast as fp32 on CPUs with AVX512-BF16 or AMX (``python bench/step.py --cpu-bf16``), and
  bf16 keeps fp32's exponent range, so nothing overflows and no loss scaling is needed;
* float32 otherwise (the default on a CPU: fp16 convolutions there are slow and lossy).

Parameters, optimiser state, the tri-plane features and every loss stay float32 in all cases;
only a block's activations and its conv weights' copies are reduced.
"""

from __future__ import annotations

from typing import ContextManager

import torch

from torch_utils import misc

__all__ = ["precision_policy", "half_dtype", "cpu_bf16", "cpu_has_fast_bf16"]


class _PrecisionPolicy:
    def __init__(self) -> None:
        self.cpu_bf16: bool = False


precision_policy = _PrecisionPolicy()


def half_dtype(device: torch.device) -> torch.dtype:
    """The dtype of a ``use_fp16`` block's activations on ``device`` (see the module docstring)."""
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and precision_policy.cpu_bf16:
        return torch.bfloat16
    return torch.float32


def cpu_bf16(enabled: bool) -> ContextManager[None]:
    """Within the block, ``use_fp16`` blocks on a CPU compute in bfloat16 iff ``enabled``."""
    return misc.attribute_set(precision_policy, "cpu_bf16", bool(enabled))


def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN has native bf16 instructions on this CPU (else bf16 is emulated, and slow)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
