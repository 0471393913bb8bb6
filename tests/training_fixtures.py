"""Tiny data sets and training options shared by the training and loss tests, and a spy for compiled kernels."""

from __future__ import annotations

from pathlib import Path

from dnnlib import EasyDict
from training.options import load_config

TINY_G = dict(z_dim=16, w_dim=32, triplane_res=16, triplane_channels=8, neural_res=8, decoder_layers=4,
              decoder_hidden=16, decoder_out=8, extra_blocks=True, mapping_layers=2,
              backbone_kwargs=dict(channel_base=256, channel_max=32, num_fp16_res=0, conv_clamp=256),
              rendering_kwargs=dict(num_coarse=6, num_fine=4, box_size=1.0, radius=2.7, fov_deg=18.837,
                                    perturb_pos=0.02, perturb_lookat=0.01, white_back=True),
              sr_kwargs=dict(channel_base=128, channel_max=16, num_fp16_res=0, conv_clamp=256))
TINY_D = dict(channel_base=256, channel_max=32, num_fp16_res=0, conv_clamp=256, mbstd_group_size=2, dual_input=True)


def build_tiny_dataset(dest: Path, classes: int = 2, per_class: int = 6, resolution: int = 16) -> Path:
    from training.synthetic import build_synthetic_dataset

    build_synthetic_dataset(dest, num_classes=classes, images_per_class=per_class, resolution=resolution, seed=0,
                            workers=1, progress=False)
    return dest


def tiny_options(data: Path, **overrides) -> EasyDict:
    """The demo config shrunk to seconds per run; `overrides` replace top-level keys."""
    opts = load_config("demo")
    opts.update(data=str(data), batch=4, batch_gpu=None, kimg=0.012, tick=0.004, snap=1000, views=2,
                multiview_at=None, workers=0, keep_snapshots=0, G=EasyDict(TINY_G), D=EasyDict(TINY_D),
                aug="ada", ada_kimg=0.1, resume=None)
    opts.loss = EasyDict(opts.loss, r1_every=2, density_reg_every=2, density_reg=0.25)
    opts.update(overrides)
    opts.batch_gpu = opts.batch_gpu or opts.batch
    return opts


class KernelSpy:
    """Wraps a compiled module and records the names of the functions called on it (proves that
    a kernel, not a fallback, ran)."""

    def __init__(self, module):
        self.module, self.calls = module, []

    def __getattr__(self, name):
        fn = getattr(self.module, name)

        def wrapped(*args):
            self.calls.append(name)
            return fn(*args)
        return wrapped
