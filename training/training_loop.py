"""The training loop: data, networks, phases, EMA, ADA, ticks, snapshots and exact resume.

`training_loop(opts, run_dir, dist_info)` runs in every process. It is organised as a small
`Trainer` class whose methods each do one thing (build, one step, one phase, tick report,
snapshot, resume); the loop itself is at the bottom and reads top to bottom.

Exact resume: a snapshot stores everything that decides the future of the run: weights of
G, D and G_ema, both optimisers, the augmentation probability and ADA's running statistic,
the image counter, the step counter (which lazy regularisers and ADA key on), the data
sampler's position and every RNG state (torch, CUDA, numpy, python). Side work at a
snapshot (sample grids) runs under `torch.random.fork_rng`, and the data loader draws its
seed from its own generator, so neither disturbs the training RNG stream. On a CPU,
N + M steps in one run and N steps, stop, resume, M steps give bitwise equal weights.
"""

from __future__ import annotations

import copy
import json
import random
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import psutil
import torch
import yaml

from dnnlib import EasyDict
from torch_utils import misc, precision, training_stats
from torch_utils.checkpoint import load_state, save_state
from training import distributed as tdist
from training.augment import AdaptiveP, build_augment_pipe
from training.dataset import GlobalBatchSampler, ImageDataset
from training.discriminator import Discriminator
from training.loss import MultiViewSchedule, TriPlaneGANLoss
from training.options import to_plain
from training.snapshot import list_snapshots, load_snapshot, save_snapshot, snapshot_name, state_name
from training.triplane import TriPlaneGenerator
from training.visualize import colorize_depth, save_grid, to_uint8
from training.volumetric_rendering import cameras_from_angles

__all__ = ["training_loop", "Trainer", "NonFiniteError"]


class NonFiniteError(RuntimeError):
    """Too many consecutive steps with non-finite gradients: the run stops without saving."""


class Logger:
    """Writes progress lines to stdout and to run_dir/log.txt (rank 0 only)."""

    def __init__(self, path: Optional[Path]) -> None:
        self.file = open(path, "a", encoding="utf-8") if path is not None else None

    def __call__(self, line: str) -> None:
        if self.file is None:
            return
        print(line, flush=True)
        self.file.write(line + "\n")
        self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def _capture_rng() -> Dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": json.dumps(_numpy_state()), "python": json.dumps(_py_state())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _numpy_state() -> list:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)]


def _py_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _restore_rng(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    kind, keys, pos, has_gauss, gauss = json.loads(state["numpy"])
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss = json.loads(state["python"])
    random.setstate((version, tuple(internal), gauss))


class Trainer:
    """One training process. See the module docstring; `run()` is the loop."""

    def __init__(self, opts: EasyDict, run_dir: Optional[Path], info: tdist.DistInfo) -> None:
        if info.is_main and run_dir is None:
            raise ValueError("rank 0 needs a run directory")
        self.opts, self.run_dir, self.info = opts, Path(run_dir) if run_dir is not None else None, info
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.device = info.device
        self.log = Logger(self.run_dir / "log.txt" if info.is_main else None)
        # Reduced-precision blocks in bf16 on a CPU (torch_utils/precision.py); fp16 on CUDA anyway.
        self.cpu_bf16 = bool(opts.get("cpu_bf16", False)) and self.device.type == "cpu"
        self.batch_per_gpu = opts.batch // info.world_size
        self.cur_nimg, self.batch_idx, self.cur_tick = 0, 0, 0
        self.nonfinite_total = 0
        self.nonfinite_streak: Dict[str, int] = {}  # per phase: consecutive skipped steps
        self.multiview_started_nimg: Optional[int] = None
        self._seed_everything()
        self._build_data()
        self._build_networks()
        self._build_training()
        if opts.get("resume"):
            self._resume(opts.resume)

    # -- set-up ------------------------------------------------------------------------------

    def _seed_everything(self) -> None:
        seed = int(self.opts.seed) * self.info.world_size + self.info.rank
        torch.manual_seed(seed)
        np.random.seed(seed % (1 << 32))
        random.seed(seed)
        torch.backends.cudnn.benchmark = bool(self.opts.get("cudnn_benchmark", True))
        torch.backends.cuda.matmul.allow_tf32 = False  # TF32 hurts GAN training stability
        torch.backends.cudnn.allow_tf32 = False

    def _build_data(self) -> None:
        opts = self.opts
        self.dataset = ImageDataset(opts.data, xflip=bool(opts.mirror), use_labels=True)
        if self.dataset.label_dim == 0:
            raise ValueError(f"--data '{opts.data}': the data set has no class labels; this model is class-conditional")
        self.sampler = GlobalBatchSampler(self.dataset, global_batch=opts.batch, rank=self.info.rank,
                                          num_replicas=self.info.world_size, seed=int(opts.seed))
        self._labels = torch.as_tensor(self.dataset.labels, dtype=torch.long)

    def _make_loader_iter(self):
        workers = int(self.opts.get("workers", 0))
        loader = torch.utils.data.DataLoader(
            self.dataset, sampler=self.sampler, batch_size=self.batch_per_gpu, num_workers=workers,
            pin_memory=self.device.type == "cuda", prefetch_factor=2 if workers > 0 else None,
            generator=torch.Generator().manual_seed(int(self.opts.seed)))  # keeps the global RNG untouched
        return iter(loader)

    def _build_networks(self) -> None:
        opts, ds = self.opts, self.dataset
        g_kwargs = dict(to_plain(opts.G), c_dim=ds.label_dim, img_res=ds.resolution)
        d_kwargs = dict(to_plain(opts.D), c_dim=ds.label_dim, img_resolution=ds.resolution)
        self.G = TriPlaneGenerator(**g_kwargs).train().requires_grad_(False).to(self.device)
        self.D = Discriminator(**d_kwargs).train().requires_grad_(False).to(self.device)
        self.G_ema = copy.deepcopy(self.G).eval()
        if self.info.world_size > 1:  # every rank starts from rank 0's weights
            for module in (self.G, self.D, self.G_ema):
                for tensor in list(module.parameters()) + list(module.buffers()):
                    torch.distributed.broadcast(tensor.data, src=0)

    def _build_training(self) -> None:
        opts, L = self.opts, self.opts.loss
        self.augment_pipe, self.ada = None, None
        if opts.aug != "noaug":
            self.augment_pipe = build_augment_pipe(opts.get("augpipe", "bgc")).train().requires_grad_(False)
            self.augment_pipe.to(self.device).p.fill_(float(opts.get("aug_p", 0.0)))
            if opts.aug == "ada":
                self.ada = AdaptiveP(target=opts.get("ada_target", 0.6), speed_kimg=opts.get("ada_kimg", 500))
        self.schedule = MultiViewSchedule(views=int(opts.views), start_kimg=opts.get("multiview_at"))
        self.loss = TriPlaneGANLoss(
            self.G, self.D, augment_pipe=self.augment_pipe, r1_gamma=L.r1_gamma, density_reg=L.density_reg,
            density_reg_p_dist=L.density_reg_p_dist, opacity_reg=float(L.get("opacity_reg", 0.0)),
            style_mixing_prob=L.style_mixing_prob,
            blur_init_sigma=L.blur_init_sigma, blur_fade_kimg=L.blur_fade_kimg, schedule=self.schedule,
            dual_discrimination=L.dual_discrimination, real_raw_filter=str(L.get("real_raw_filter", "antialias")),
            real_logits_hook=self.ada.accumulate if self.ada is not None else None,
            reuse_fakes=bool(L.get("reuse_fakes", False)))
        g_reg = int(L.density_reg_every) if L.density_reg > 0 else 0
        self.phases = self._make_phases("G", self.G, opts.glr, g_reg) + \
            self._make_phases("D", self.D, opts.dlr, int(L.r1_every) if L.r1_gamma > 0 else 0)

    def _make_phases(self, name: str, module: torch.nn.Module, lr: float, reg_interval: int) -> List[EasyDict]:
        """Adam with lazy-regularisation correction: main every step, reg every `reg_interval` steps."""
        if reg_interval <= 1:  # regulariser with every step (or none at all)
            opt = torch.optim.Adam(module.parameters(), lr=lr, betas=(0.0, 0.99), eps=1e-8)
            return [EasyDict(name=f"{name}_both", module=module, opt=opt, interval=1)]
        ratio = reg_interval / (reg_interval + 1)
        opt = torch.optim.Adam(module.parameters(), lr=lr * ratio, betas=(0.0, 0.99 ** ratio), eps=1e-8)
        return [EasyDict(name=f"{name}_main", module=module, opt=opt, interval=1),
                EasyDict(name=f"{name}_reg", module=module, opt=opt, interval=reg_interval)]

    # -- one step ----------------------------------------------------------------------------

    def _fetch_reals(self, data_iter) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = next(data_iter)
        images = images.to(self.device).to(torch.float32) / 127.5 - 1
        return images, self.dataset.one_hot(labels).to(self.device)

    def _sample_latents(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.randn([n, self.G.z_dim], device=self.device)
        idx = torch.randint(len(self._labels), [n])
        return z, self.dataset.one_hot(self._labels[idx]).to(self.device)

    def _seed_round(self, phase_idx: int, global_round: int) -> None:
        """Seed every random draw of one round from (seed, step, phase, global round index).

        Latents, cameras, noise, augmentation and regulariser points then depend only on where
        the round sits in the global batch, not on which process runs it: W processes with
        batch B give the same training as one process with batch B and the same batch_gpu.
        """
        key = [int(self.opts.seed), self.batch_idx, phase_idx, global_round]
        torch.manual_seed(int(np.random.SeedSequence(key).generate_state(1, dtype=np.uint64)[0] >> 1))

    def _run_phase(self, phase_idx: int, phase: EasyDict, real_img: torch.Tensor, real_c: torch.Tensor) -> None:
        phase.opt.zero_grad(set_to_none=True)
        phase.module.requires_grad_(True)
        batch_gpu = int(self.opts.batch_gpu)
        rounds = list(zip(real_img.split(batch_gpu), real_c.split(batch_gpu)))
        # Each round's loss is a mean over its images; averaging over all rounds of all processes
        # (1/rounds here, the mean over processes in the all-reduce) makes the gradient the mean
        # over the global batch, whatever the split.
        gain = phase.interval / len(rounds)
        for k, (real_round, c_round) in enumerate(rounds):
            self._seed_round(phase_idx, self.info.rank * len(rounds) + k)
            gen_z, gen_c = self._sample_latents(real_round.shape[0])
            self.loss.accumulate_gradients(phase.name, real_round, c_round, gen_z, gen_c, gain=gain,
                                           cur_nimg=self.cur_nimg)
        phase.module.requires_grad_(False)
        flat = tdist.all_reduce_grads(phase.module.parameters(), self.info.world_size)
        if flat is None:
            return
        if not torch.isfinite(flat).all():
            self._skip_nonfinite(phase.name)
            return
        self.nonfinite_streak[phase.name] = 0
        phase.opt.step()
        if phase.name in ("D_main", "D_both") and self.ada is not None:
            reduce = torch.distributed.all_reduce if self.info.world_size > 1 else None
            self.ada.tick(self.augment_pipe, self.opts.batch, all_reduce=reduce)

    def _skip_nonfinite(self, phase_name: str) -> None:
        self.nonfinite_total += 1
        streak = self.nonfinite_streak[phase_name] = self.nonfinite_streak.get(phase_name, 0) + 1
        training_stats.report("Progress/nonfinite_skips", 1.0)
        limit = int(self.opts.get("max_nonfinite_steps", 20))
        if streak >= limit:
            raise NonFiniteError(
                f"{streak} consecutive {phase_name} steps had non-finite gradients ("
                f"at {self.cur_nimg / 1000:.1f} kimg). Stopping without writing a snapshot; the last good one is "
                f"kept in {self.run_dir}. Try a lower --glr/--dlr or a higher --gamma, then --resume latest.")

    def _update_ema(self) -> None:
        ema_nimg = self.opts.ema_kimg * 1000
        if self.opts.get("ema_rampup"):
            ema_nimg = min(ema_nimg, self.cur_nimg * self.opts.ema_rampup)
        beta = 0.5 ** (self.opts.batch / max(ema_nimg, 1e-8))
        with torch.no_grad():
            for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
                p_ema.copy_(p.lerp(p_ema, beta))
            for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
                b_ema.copy_(b)

    def step(self, data_iter) -> None:
        """One optimisation step of every phase that is due, then EMA and counters."""
        views = self.schedule.views_at(self.cur_nimg)
        if views > 1 and self.multiview_started_nimg is None:
            self.multiview_started_nimg = self.cur_nimg
            self.log(f"Multi-view discrimination on: {views} views per tri-plane from {self.cur_nimg / 1000:.1f} kimg")
        real_img, real_c = self._fetch_reals(data_iter)
        self.loss.neural_res = self._neural_res_at(self.cur_nimg)
        self.loss.discard_fakes()  # nothing kept for D may outlive the step that made it
        with precision.cpu_bf16(self.cpu_bf16):
            for phase_idx, phase in enumerate(self.phases):
                if self.batch_idx % phase.interval == 0:
                    self._run_phase(phase_idx, phase, real_img, real_c)
        self._update_ema()
        self.cur_nimg += self.opts.batch
        self.batch_idx += 1

    # -- reporting and snapshots -------------------------------------------------------------

    def _neural_res_at(self, nimg: int) -> Optional[int]:
        """Neural-rendering resolution: `neural_res_fade` = {initial, final, start_kimg, fade_kimg}
        moves linearly (rounded to even sizes) from initial to final; None: the generator's own."""
        fade = self.opts.get("neural_res_fade")
        if not fade:
            return None
        t = min(max((nimg / 1000 - fade["start_kimg"]) / max(fade["fade_kimg"], 1e-8), 0.0), 1.0)
        return int(round((fade["initial"] + t * (fade["final"] - fade["initial"])) / 2)) * 2

    def _tick_report(self, tick_start: float, tick_start_nimg: int, collector: training_stats.Collector,
                     writer) -> None:
        elapsed = time.time() - tick_start
        kimg_done = (self.cur_nimg - tick_start_nimg) / 1000
        rss = psutil.Process().memory_info().rss / 2 ** 30
        training_stats.report0("Timing/sec_per_kimg", elapsed / max(kimg_done, 1e-8))
        training_stats.report0("Resources/cpu_mem_gb", rss)
        if self.device.type == "cuda":
            training_stats.report0("Resources/peak_gpu_mem_gb", torch.cuda.max_memory_allocated(self.device) / 2 ** 30)
            torch.cuda.reset_peak_memory_stats(self.device)
        if self.augment_pipe is not None:
            training_stats.report0("Progress/augment_p", float(self.augment_pipe.p))
        collector.update()
        fields = [f"tick {self.cur_tick:<5d}", f"kimg {self.cur_nimg / 1000:<8.1f}",
                  f"sec/kimg {elapsed / max(kimg_done, 1e-8):<7.1f}", f"img/s {kimg_done * 1000 / max(elapsed, 1e-8):<6.1f}",
                  f"views {self.schedule.views_at(self.cur_nimg)}"]
        for key, label in (("Loss/G/loss", "G"), ("Loss/D/loss_real", "D_real"), ("Loss/scores/fake", "D(fake)"),
                           ("Loss/r1_penalty", "R1"), ("Progress/augment_p", "aug_p")):
            if collector.num(key):
                fields.append(f"{label} {collector.mean(key):.3f}")
        fields.append(f"mem {rss:.2f}GB")
        if self.nonfinite_total:
            fields.append(f"skipped {self.nonfinite_total}")
        self.log("  ".join(fields))
        if writer is not None:
            writer.write(collector, step=self.cur_nimg // 1000)

    def save_grid(self, name: str, per_class: int = 2) -> None:
        """Fixed samples (up to 6 classes, `per_class` latents each) as V views plus depth each.

        Runs under `fork_rng` with its own seed, so it leaves the training RNG stream alone.
        """
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(123)
            num_classes = self.dataset.label_dim
            classes = sorted({int(round(i)) for i in np.linspace(0, num_classes - 1, min(num_classes, 6))})
            classes = [k for k in classes for _ in range(per_class)]
            z = torch.randn([len(classes), self.G.z_dim], device=self.device)
            c = self.dataset.one_hot(torch.tensor(classes)).to(self.device)
            views = max(self.opts.views, 3)
            cams = cameras_from_angles([360.0 * v / views for v in range(views)] * len(classes),
                                       [20.0] * views * len(classes), radius=self.G.camera_kwargs["radius"],
                                       fov_deg=self.G.camera_kwargs["fov_deg"], device=self.device)
            with torch.no_grad(), precision.cpu_bf16(self.cpu_bf16):
                out = self.G_ema(z, c, cameras=cams, noise_mode="const")
            images = to_uint8(out["image"])
            depth = colorize_depth(out["image_depth"], opacity=out["opacity"])
            rows = [[images[i * views + v] for v in range(views)] + [depth[i * views + v] for v in range(views)]
                    for i in range(len(classes))]
            save_grid(self.run_dir / name, rows)

    def _save_reals_grid(self) -> None:
        picks = np.linspace(0, len(self.dataset) - 1, 12).astype(int)
        images = [self.dataset[int(i)][0].permute(1, 2, 0).numpy() for i in picks]
        save_grid(self.run_dir / "reals.png", [images[:6], images[6:]])

    def training_state(self) -> Dict[str, Any]:
        rng = tdist.all_gather_objects(_capture_rng(), self.info.world_size)
        return {
            "cur_nimg": self.cur_nimg, "batch_idx": self.batch_idx, "cur_tick": self.cur_tick,
            "world_size": self.info.world_size, "rng": rng,
            "optimizers": {p.name: p.opt.state_dict() for p in self.phases if p.name.endswith(("_main", "_both"))},
            "augment_pipe": self.augment_pipe.state_dict() if self.augment_pipe is not None else None,
            "ada": json.dumps(self.ada.state_dict()) if self.ada is not None else None,
            "sampler_position": self.batch_idx * self.opts.batch,
            "multiview": {"views": self.schedule.views_at(self.cur_nimg), "at_kimg": self.schedule.start_kimg,
                          "started_nimg": self.multiview_started_nimg},
            "nonfinite_total": self.nonfinite_total,
        }

    def save_snapshot(self) -> Optional[Path]:
        """Write network + training state (rank 0), keep the last K, and a sample grid."""
        if self.info.world_size > 1:
            for module in (self.G, self.D, self.G_ema):
                misc.check_ddp_consistency(module, ignore_regex=r".*\.[^.]+_(avg|ema)$|.*noise_const$")
        state = self.training_state()  # collective: every rank takes part
        if not self.info.is_main:
            return None
        path = self.run_dir / snapshot_name(self.cur_nimg)
        extra = {"cur_nimg": self.cur_nimg, "kimg": self.cur_nimg / 1000,
                 "training_options": to_plain(self.opts)}
        save_snapshot(path, {"G": self.G, "D": self.D, "G_ema": self.G_ema}, self.dataset.classes, extra)
        save_state(self.run_dir / state_name(self.cur_nimg), state)
        self._prune_snapshots()
        self.save_grid(f"fakes{self.cur_nimg // 1000:06d}.png")
        self.log(f"Saved {path.name}")
        return path

    def _prune_snapshots(self) -> None:
        keep = int(self.opts.get("keep_snapshots", 0))
        if keep <= 0:
            return
        for old in list_snapshots(self.run_dir)[:-keep]:
            old.unlink()
            state = old.with_name(old.name.replace("network-snapshot-", "training-state-").replace(".safetensors", ".pt"))
            if state.exists():
                state.unlink()

    # -- resume ------------------------------------------------------------------------------

    def _resume(self, snapshot_path: str) -> None:
        snapshot_path = Path(snapshot_path)
        networks, meta = load_snapshot(snapshot_path)
        for key, module in (("G", self.G), ("D", self.D), ("G_ema", self.G_ema)):
            if key in networks:
                misc.copy_params_and_buffers(networks[key], module, require_all=True)
        state_path = snapshot_path.with_name(snapshot_path.name.replace("network-snapshot-", "training-state-")
                                             .replace(".safetensors", ".pt"))
        if not state_path.exists():
            self.log(f"Resumed weights from {snapshot_path} (no training state beside it: fresh optimisers, kimg 0)")
            return
        state = load_state(state_path)
        self.cur_nimg, self.batch_idx, self.cur_tick = state["cur_nimg"], state["batch_idx"], state["cur_tick"]
        for phase in self.phases:
            if phase.name in state["optimizers"]:
                phase.opt.load_state_dict(state["optimizers"][phase.name])
        if self.augment_pipe is not None and state["augment_pipe"] is not None:
            self.augment_pipe.load_state_dict(state["augment_pipe"])
        if self.ada is not None and state["ada"] is not None:
            self.ada.load_state_dict(json.loads(state["ada"]))
        self.multiview_started_nimg = state["multiview"]["started_nimg"]
        self.nonfinite_total = state["nonfinite_total"]
        self.sampler.set_position(self.batch_idx)
        if state["world_size"] == self.info.world_size:
            _restore_rng(state["rng"][self.info.rank])
        else:
            self.log(f"Resuming with {self.info.world_size} processes instead of {state['world_size']}: "
                     "RNG streams are re-seeded, so the continuation is not bitwise identical")
        self.log(f"Resumed from {snapshot_path} at {self.cur_nimg / 1000:.1f} kimg ({self.cur_nimg} images)")

    # -- the loop ----------------------------------------------------------------------------

    def _log_cpu_bf16(self) -> None:
        g_blocks, d_blocks = (sum(bool(getattr(m, "use_fp16", False)) for m in net.modules())
                              for net in (self.G, self.D))
        self.log(f"CPU bf16: {g_blocks} blocks of G and {d_blocks} of D (their num_fp16_res) compute in bfloat16")
        if g_blocks + d_blocks == 0:
            self.log("  note: every num_fp16_res is 0, so nothing runs in bfloat16; set them in the config")
        if not precision.cpu_has_fast_bf16():
            self.log("  note: this CPU has no native bf16 instructions (AVX512-BF16 or AMX); it will be slower")

    def run(self) -> None:
        opts = self.opts
        total_nimg = int(round(opts.kimg * 1000))
        collector = training_stats.Collector(regex=".*")
        writer = training_stats.StatsWriter(self.run_dir) if self.info.is_main else None
        if self.info.is_main and self.cur_nimg == 0:
            self._save_reals_grid()
            self.save_grid("fakes_init.png")
        data_iter = self._make_loader_iter()
        self.log(f"Training for {opts.kimg} kimg from {self.cur_nimg / 1000:.1f} kimg; "
                 f"batch {opts.batch} over {self.info.world_size} process(es) on {self.device}")
        if self.cpu_bf16:
            self._log_cpu_bf16()
        tick_start, tick_start_nimg = time.time(), self.cur_nimg
        try:
            while self.cur_nimg < total_nimg:
                self.step(data_iter)
                done = self.cur_nimg >= total_nimg
                if not done and self.cur_nimg < tick_start_nimg + opts.tick * 1000:
                    continue
                self._tick_report(tick_start, tick_start_nimg, collector, writer)
                self.cur_tick += 1
                if done or self.cur_tick % opts.snap == 0:
                    self.save_snapshot()
                tick_start, tick_start_nimg = time.time(), self.cur_nimg
        except KeyboardInterrupt:
            self.log("Interrupted: writing a final snapshot before exiting")
            self.save_snapshot()
            raise
        finally:
            if writer is not None:
                writer.close()
            self.log.close()


def write_options(opts: EasyDict, run_dir: Path) -> None:
    """The merged options, as the run will use them, in run_dir/training_options.yaml."""
    with open(run_dir / "training_options.yaml", "w") as f:
        yaml.safe_dump(to_plain(opts), f, sort_keys=False)


def training_loop(opts: EasyDict, run_dir: Optional[Path], info: tdist.DistInfo) -> Trainer:
    """Build and run the trainer in this process; returns it (tests inspect its networks)."""
    if info.device.type == "cuda":
        torch.cuda.set_device(info.device)
    elif opts.get("tune_cpu_allocator", True):
        misc.tune_cpu_allocator()  # far fewer page faults per step on a CPU (see torch_utils/misc.py)
    trainer = Trainer(opts, run_dir, info)
    trainer.run()
    return trainer
