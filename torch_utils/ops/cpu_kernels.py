"""The one C++ library of CPU kernels (torch operators in the `triplane3d_cpu` namespace).

bias_act_cpu.cpp, modulate_cpu.cpp, plane_sample_cpu.cpp, mlp_cpu.cpp, winograd_cpu.cpp and torgb_cpu.cpp are
built together on first use
(`CpuPlugin`, a few seconds with ninja) and cached; `plugin.get()` is `torch.ops.triplane3d_cpu`,
or None (one warning) where no compiler is available, and the ops then use their PyTorch paths.
"""

from __future__ import annotations

from typing import ContextManager

from torch_utils import misc
from torch_utils.custom_ops import CpuPlugin

__all__ = ["plugin", "kernels_enabled"]

plugin = CpuPlugin("triplane3d_cpu_ops", sources=["bias_act_cpu.cpp", "modulate_cpu.cpp", "plane_sample_cpu.cpp",
                                                    "mlp_cpu.cpp", "winograd_cpu.cpp", "torgb_cpu.cpp"],
                   namespace="triplane3d_cpu", headers=["cpu_elements.h"])


def kernels_enabled(enabled: bool) -> ContextManager[None]:
    """Within the block, the CPU ops use (True) or skip (False) the compiled kernels."""
    return misc.attribute_set(plugin, "enabled", bool(enabled))
