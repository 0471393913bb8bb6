"""Tests for the training loop: exact resume, multi-view switch, non-finite safety, Ctrl-C, distributed."""

from __future__ import annotations

import json

import pytest
import torch

from dnnlib import EasyDict
from torch_utils.checkpoint import load_state
from training import distributed as tdist
from training.snapshot import list_snapshots, load_snapshot
from training.training_loop import NonFiniteError, Trainer, training_loop
from training_fixtures import tiny_options

CPU = tdist.DistInfo()


def _weights(trainer: Trainer) -> dict:
    return {f"{name}.{k}": v.detach().clone()
            for name, net in (("G", trainer.G), ("D", trainer.D), ("G_ema", trainer.G_ema))
            for k, v in net.state_dict().items()}


@pytest.mark.parametrize("reuse_fakes", [True, False])
def test_resume_is_bitwise_exact(tiny_dataset, tmp_path, reuse_fakes):
    """N+M steps in one run equal N steps, stop, resume, M steps (every weight bitwise equal)."""
    torch.use_deterministic_algorithms(True)
    try:
        # 5 steps of batch 4; 3-view discrimination from step 2 on, lazy regularisers every 2 steps, ADA on;
        # D scoring G's fakes (the demo's setting) or fresh ones (EG3D's).
        loss = EasyDict(tiny_options(tiny_dataset).loss, reuse_fakes=reuse_fakes)
        common = dict(multiview_at=0.008, aug_p=0.2, loss=loss)
        full = training_loop(tiny_options(tiny_dataset, kimg=0.020, **common), tmp_path / "full", CPU)
        first = training_loop(tiny_options(tiny_dataset, kimg=0.012, **common), tmp_path / "split", CPU)
        snapshot = list_snapshots(tmp_path / "split")[-1]
        second = training_loop(tiny_options(tiny_dataset, kimg=0.020, resume=str(snapshot), **common),
                               tmp_path / "split", CPU)
    finally:
        torch.use_deterministic_algorithms(False)
    assert first.cur_nimg == 12 and second.cur_nimg == full.cur_nimg == 20
    a, b = _weights(full), _weights(second)
    assert a.keys() == b.keys()
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, f"{len(differing)} tensors differ after resume, e.g. {differing[:3]}"
    assert float(full.augment_pipe.p) == float(second.augment_pipe.p)
    # The last two steps really changed the weights (so the equality above is not vacuous).
    after_three = _weights(first)
    assert any(not torch.equal(a[k], after_three[k]) for k in a if k.startswith("G."))


def test_multiview_switch_is_logged_and_stored(tiny_dataset, tmp_path):
    trainer = training_loop(tiny_options(tiny_dataset, kimg=0.012, multiview_at=0.004, views=3), tmp_path, CPU)
    assert trainer.multiview_started_nimg == 4
    log = (tmp_path / "log.txt").read_text()
    assert "Multi-view discrimination on: 3 views" in log
    state = load_state(next(tmp_path.glob("training-state-*.pt")))
    assert state["multiview"] == {"views": 3, "at_kimg": 0.004, "started_nimg": 4}
    lines = [json.loads(line) for line in (tmp_path / "stats.jsonl").read_text().splitlines()]
    views = [line["stats"]["Progress/views"]["mean"] for line in lines if "Progress/views" in line["stats"]]
    assert views[0] == 1 and views[-1] == 3


def test_run_directory_outputs(tiny_dataset, tmp_path):
    training_loop(tiny_options(tiny_dataset, kimg=0.008, keep_snapshots=1), tmp_path, CPU)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"log.txt", "stats.jsonl", "reals.png", "fakes_init.png"} <= names
    assert any(n.startswith("events.out.tfevents") for n in names)
    snaps = list_snapshots(tmp_path)
    assert len(snaps) == 1
    networks, meta = load_snapshot(snaps[0])
    assert set(networks) == {"G", "D", "G_ema"}
    assert [c["name"] for c in meta["classes"]] == ["sphere", "box"]
    assert meta["cur_nimg"] == 8


def test_low_resolution_head_of_d_trains_and_is_saved(tiny_dataset, tmp_path):
    """D.low_res_head: both heads' weights move in training, and a snapshot rebuilds D with the head."""
    opts = tiny_options(tiny_dataset, kimg=0.008, keep_snapshots=1, multiview_at=0.0)
    opts.D = EasyDict(opts.D, low_res_head=8)
    trainer = Trainer(opts, tmp_path, CPU)
    before = {k: v.detach().clone() for k, v in trainer.D.state_dict().items()}
    data = trainer._make_loader_iter()
    for _ in range(2):
        trainer.step(data)
    after = trainer.D.state_dict()
    for head in ("low.", "b16."):
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(head)), head
    trainer.save_snapshot()
    networks, _ = load_snapshot(list_snapshots(tmp_path)[-1])
    assert networks["D"].low_res_head == 8
    assert all(torch.equal(v, after[k]) for k, v in networks["D"].state_dict().items())


def test_nonfinite_steps_are_skipped_then_stop_without_snapshot(tiny_dataset, tmp_path, monkeypatch):
    opts = tiny_options(tiny_dataset, kimg=0.040, max_nonfinite_steps=3)
    trainer = Trainer(opts, tmp_path, CPU)
    before = {k: v.clone() for k, v in trainer.G.state_dict().items()}
    original = trainer.loss.accumulate_gradients

    def poisoned(phase, *args, **kwargs):
        original(phase, *args, **kwargs)
        for p in trainer.G.parameters():
            if p.grad is not None:
                p.grad.fill_(float("nan"))

    monkeypatch.setattr(trainer.loss, "accumulate_gradients", poisoned)
    with pytest.raises(NonFiniteError, match="non-finite"):
        trainer.run()
    assert trainer.nonfinite_total >= 3
    for k, v in trainer.G.state_dict().items():
        if "w_avg" not in k:
            assert torch.equal(v, before[k]), f"G.{k} changed by a skipped step"
    assert not list_snapshots(tmp_path)


def test_ctrl_c_writes_a_final_snapshot(tiny_dataset, tmp_path, monkeypatch):
    trainer = Trainer(tiny_options(tiny_dataset, kimg=1.0), tmp_path, CPU)
    original, calls = trainer.step, []

    def step_then_interrupt(data_iter):
        original(data_iter)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "step", step_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    snaps = list_snapshots(tmp_path)
    assert len(snaps) == 1
    _, meta = load_snapshot(snaps[0])
    assert meta["cur_nimg"] == 8


def _params(trainer: Trainer) -> dict:
    return {f"{net}.{k}": v.detach().clone() for net, module in (("G", trainer.G), ("D", trainer.D))
            for k, v in module.named_parameters()}


def _two_process_worker(info: tdist.DistInfo, opts, run_dir, reference_path) -> None:
    trainer = training_loop(opts, run_dir if info.is_main else None, info)
    mine = _params(trainer)
    gathered = tdist.all_gather_objects({k: v.sum().item() for k, v in mine.items()}, info.world_size)
    differing = [k for k in gathered[0] if gathered[0][k] != gathered[1][k]]
    assert not differing, f"ranks diverged in {differing[:5]}"
    reference = torch.load(reference_path, weights_only=True)
    worst = max((mine[k] - reference[k]).abs().max().item() for k in reference)
    assert worst < 1e-4, f"2-process run differs from the 1-process run by {worst}"


def test_two_processes_match_one_process_with_the_same_total_batch(tiny_dataset, tmp_path):
    """Two gloo processes (batch 4 each) train exactly like one process with batch 8 in rounds of 4."""
    import functools

    opts = tiny_options(tiny_dataset, kimg=0.016, batch=8, aug="noaug")
    opts.batch_gpu = 4
    single = training_loop(opts, tmp_path / "single", CPU)
    torch.save(_params(single), tmp_path / "single.pt")
    tdist.launch(functools.partial(_two_process_worker, opts=opts, run_dir=tmp_path / "two",
                                   reference_path=str(tmp_path / "single.pt")), num_procs=2, use_cuda=False)
    assert list_snapshots(tmp_path / "two")
    assert "over 2 process(es)" in (tmp_path / "two" / "log.txt").read_text()


def test_cpu_processes_share_the_cores_unless_omp_num_threads_is_set(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(tdist.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert [tdist.cpu_threads_per_process(n) for n in (1, 2, 3, 16)] == [8, 4, 2, 1]
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert tdist.cpu_threads_per_process(2) == torch.get_num_threads()


@pytest.mark.parametrize("name", ["point", "antialias"])
def test_real_raw_filter_reaches_the_loss_from_the_config(tiny_dataset, tmp_path, name):
    opts = tiny_options(tiny_dataset)
    opts.loss = EasyDict(opts.loss, real_raw_filter=name)
    trainer = Trainer(opts, tmp_path, CPU)
    assert trainer.loss.real_raw_filter == name
    real = torch.randn(2, 3, 16, 16)
    raw = trainer.loss.real_inputs(real)["image_raw"]
    shrunk = torch.nn.functional.interpolate(real, size=raw.shape[-2:], mode="bilinear", align_corners=False,
                                             antialias=name == "antialias")
    assert raw.shape[-1] == trainer.G.neural_res < real.shape[-1]
    torch.testing.assert_close(raw, shrunk)


def test_unknown_real_raw_filter_in_the_config_is_named(tiny_dataset, tmp_path):
    opts = tiny_options(tiny_dataset)
    opts.loss = EasyDict(opts.loss, real_raw_filter="box")
    with pytest.raises(ValueError, match="loss.real_raw_filter"):
        Trainer(opts, tmp_path, CPU)
