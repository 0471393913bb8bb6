"""Tests for torch_utils.checkpoint: round trips, atomic writes, and clear errors for bad files."""

import pytest
import torch

from torch_utils.checkpoint import (CheckpointError, atomic_write, load_modules, load_state, read_metadata,
                                    save_modules, save_state)


def _net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    net[1].running_mean.normal_()
    return net


def test_modules_round_trip_with_metadata(tmp_path):
    g, d = _net(0), _net(1)
    path = tmp_path / "snap.safetensors"
    meta = {"G_kwargs": {"z_dim": 4}, "classes": [{"index": 0, "name": "mushroom"}], "kimg": 1.5}
    save_modules(path, {"G": g, "D": d}, meta)
    states, read_meta = load_modules(path)
    assert read_meta == meta and read_metadata(path) == meta
    for prefix, net in (("G", g), ("D", d)):
        restored = _net(7)
        restored.load_state_dict(states[prefix])
        for a, b in zip(net.state_dict().values(), restored.state_dict().values()):
            assert torch.equal(a, b)


def test_shared_storage_is_saved(tmp_path):
    net = _net(0)
    alias = torch.nn.Module()
    alias.weight = net[0].weight  # same Parameter in two modules
    save_modules(tmp_path / "s.safetensors", {"a": net, "b": alias}, {})
    states, _ = load_modules(tmp_path / "s.safetensors")
    assert torch.equal(states["a"]["0.weight"], states["b"]["weight"])


def test_state_round_trip_and_no_code_execution(tmp_path):
    state = {"step": 3, "opt": torch.optim.Adam(_net(0).parameters()).state_dict(), "rng": torch.get_rng_state()}
    save_state(tmp_path / "state.pt", state)
    back = load_state(tmp_path / "state.pt")
    assert back["step"] == 3 and torch.equal(back["rng"], state["rng"])

    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_state(tmp_path / "evil.pt")


def test_invalid_files_get_clear_errors(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        load_modules(junk)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_metadata(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="not a checkpoint of this project"):
        read_metadata(tmp_path / "foreign.safetensors")


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "snap.safetensors"
    save_modules(target, {"G": _net(0)}, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_write(target) as tmp:
            tmp.write_bytes(b"half written")
            raise RuntimeError("killed mid-write")
    assert read_metadata(target) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["snap.safetensors"]
