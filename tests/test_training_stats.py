"""Tests for torch_utils.training_stats: moments vs numpy, regex filtering, jsonl/TensorBoard output, all-reduce."""

import datetime
import json
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from torch_utils import training_stats as ts


def test_mean_std_match_numpy_over_intervals():
    reg = ts.StatsRegistry()
    col = ts.Collector(regex="Loss/.*", registry=reg)
    rng = np.random.default_rng(0)
    for interval in range(2):
        values = []
        for _ in range(4):
            batch = rng.normal(size=5) * 3 + interval
            ts.report("Loss/G", torch.tensor(batch, dtype=torch.float32), registry=reg)
            values.extend(torch.tensor(batch, dtype=torch.float32).double().tolist())
        ts.report("Loss/G", 2.5, registry=reg)  # Plain Python scalars count as one element.
        values.append(2.5)
        col.update()
        assert col.num("Loss/G") == len(values)
        assert col.mean("Loss/G") == pytest.approx(np.mean(values), rel=1e-12)
        assert col.std("Loss/G") == pytest.approx(np.std(values), rel=1e-9)
        assert col["Loss/G"] == col.mean("Loss/G")


def test_regex_filtering_and_keep_previous():
    reg = ts.StatsRegistry()
    keep = ts.Collector(regex="Loss/.*", registry=reg)
    drop = ts.Collector(regex=".*", keep_previous=False, registry=reg)
    value = torch.tensor([1.0, 3.0])
    assert ts.report("Loss/D", value, registry=reg) is value
    ts.report("Timing/tick", 7.0, registry=reg)
    keep.update()
    drop.update()
    assert keep.names() == ["Loss/D"]
    assert drop.names() == ["Loss/D", "Timing/tick"]
    ts.report("Timing/tick", 9.0, registry=reg)
    keep.update()
    drop.update()
    assert keep.names() == ["Loss/D"] and keep.mean("Loss/D") == 2.0  # Kept from the previous interval.
    assert drop.names() == ["Timing/tick"] and drop.mean("Timing/tick") == 9.0
    assert drop.num("Loss/D") == 0 and np.isnan(drop.mean("Loss/D"))
    assert set(drop.as_dict()["Timing/tick"]) == {"num", "mean", "std"}


def test_unwanted_names_are_not_recorded():
    reg = ts.StatsRegistry()
    ts.report("Loss/G", 1.0, registry=reg)  # No collector yet.
    col = ts.Collector(regex="Loss/.*", registry=reg)
    ts.report("Other", 1.0, registry=reg)
    assert reg.moments == {}
    ts.report0("Loss/G", torch.ones(3), registry=reg)  # Rank 0 in a single process.
    col.update()
    assert col.num("Loss/G") == 3


def test_writer_jsonl_and_tensorboard(tmp_path):
    reg = ts.StatsRegistry()
    col = ts.Collector(registry=reg)
    with ts.StatsWriter(tmp_path) as writer:
        for step, values in enumerate([[1.0, 2.0], [4.0, 8.0]]):
            ts.report("Loss/G", torch.tensor(values), registry=reg)
            col.update()
            writer.write(col, step=step * 10, timestamp=1000.0 + step)
        writer.write({"Progress/kimg": 2.5}, step=20)
    lines = [json.loads(line) for line in (tmp_path / "stats.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 10, 20]
    assert lines[1]["timestamp"] == 1001.0
    assert lines[1]["stats"]["Loss/G"] == {"num": 2, "mean": 6.0, "std": 2.0}
    assert lines[2]["stats"]["Progress/kimg"] == 2.5

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    assert list(tmp_path.glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    events = acc.Scalars("Loss/G")
    assert [(e.step, e.value) for e in events] == [(0, 1.5), (10, 6.0)]
    assert acc.Scalars("Progress/kimg")[0].value == 2.5


def _allreduce_worker(rank, store_path, result_dir):
    store = dist.FileStore(store_path, 2)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60))
    try:
        reg = ts.StatsRegistry()
        col = ts.Collector(registry=reg)
        ts.report("Loss/G", torch.arange(3.0) + 10 * rank, registry=reg)  # Rank 0: 0,1,2; rank 1: 10,11,12.
        ts.report0("Only0", torch.tensor([float(rank + 5)]), registry=reg)
        if rank == 1:
            ts.report("Rank1Only", 4.0, registry=reg)
        col.update()
        result = {n: [col.num(n), col.mean(n), col.std(n)] for n in col.names()}
        with open(os.path.join(result_dir, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def test_all_reduce_across_two_processes(tmp_path):
    mp.spawn(_allreduce_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    values = [0.0, 1.0, 2.0, 10.0, 11.0, 12.0]
    for rank in range(2):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["Loss/G"][0] == 6
        assert result["Loss/G"][1] == pytest.approx(np.mean(values))
        assert result["Loss/G"][2] == pytest.approx(np.std(values))
        assert result["Only0"][:2] == [1, 5.0]
        assert result["Rank1Only"][:2] == [1, 4.0]


def test_new_collector_ignores_values_reported_before_it():
    registry = ts.StatsRegistry()
    first = ts.Collector(registry=registry)
    ts.report("Loss/x", torch.tensor([10.0, 10.0]), registry=registry)
    first.update()
    second = ts.Collector(registry=registry)
    ts.report("Loss/x", torch.tensor([1.0, 3.0]), registry=registry)
    second.update()
    assert second.num("Loss/x") == 2 and second.mean("Loss/x") == 2.0
