"""Tests for torch_utils.misc: shape checks, counts, module summary, constants, DDP helpers."""

import datetime
import os
import re

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from torch_utils import misc


class _Block(torch.nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = torch.nn.Conv2d(cin, cout, 3, padding=1)
        self.norm = torch.nn.BatchNorm2d(cout)

    def forward(self, x):
        return torch.relu(self.norm(self.conv(x)))


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.b1 = _Block(3, 4)
        self.b2 = _Block(4, 2)
        self.head = torch.nn.Linear(2, 5)
        self.frozen = torch.nn.Linear(5, 1)
        self.frozen.requires_grad_(False)
        self.register_buffer("scale", torch.ones(3))

    def forward(self, x):
        x = self.b2(self.b1(x)).mean(dim=(2, 3))
        return self.frozen(self.head(x)) * self.scale[0]


def test_assert_shape():
    t = torch.zeros(2, 3, 4)
    misc.assert_shape(t, [2, None, 4])
    with pytest.raises(AssertionError, match="dimension 2: got 4, expected 5"):
        misc.assert_shape(t, [2, 3, 5])
    with pytest.raises(AssertionError, match="number of dimensions: got 3.*expected 2"):
        misc.assert_shape(t, [2, 3])


def test_count_parameters():
    net = _Net()
    assert misc.count_parameters(net) == sum(p.numel() for p in net.parameters())
    frozen = sum(p.numel() for p in net.frozen.parameters())
    assert misc.count_parameters(net, trainable_only=True) == misc.count_parameters(net) - frozen


def _table(captured):
    return [re.split(r"\s{2,}", line.strip()) for line in captured.splitlines() if line.strip()]


def test_print_module_summary_counts(capsys):
    net = _Net().eval()
    x = torch.randn(2, 3, 6, 6)
    out = misc.print_module_summary(net, [x], max_nesting=2)
    torch.testing.assert_close(out, net(x))
    rows = {row[0].split(" ")[0]: row for row in _table(capsys.readouterr().out)}
    for name in ["b1.conv", "b1.norm", "b2.conv", "b2.norm", "head", "frozen"]:
        module = net.get_submodule(name)
        assert int(rows[name][1]) == sum(p.numel() for p in module.parameters()), name
        assert int(rows[name][2]) == sum(b.numel() for b in module.buffers()), name
    assert rows["b1.conv"][3] == "[2, 4, 6, 6]" and rows["head"][3] == "[2, 5]"
    assert rows["head"][4] == "float32"
    # The top level holds only its own buffer; the totals add up over the rows.
    assert int(rows["<top-level>"][1]) == 0 and int(rows["<top-level>"][2]) == 3
    assert int(rows["Total"][1]) == misc.count_parameters(net)
    assert int(rows["Total"][2]) == sum(b.numel() for b in net.buffers())


def test_print_module_summary_nesting_folds_children(capsys):
    net = _Net().eval()
    misc.print_module_summary(net, [torch.randn(1, 3, 4, 4)], max_nesting=1)
    rows = {row[0].split(" ")[0]: row for row in _table(capsys.readouterr().out)}
    assert "b1.conv" not in rows
    assert int(rows["b1"][1]) == sum(p.numel() for p in net.b1.parameters())


def test_constant_is_cached_and_bounded():
    a = misc.constant([1.0, 2.0], shape=[3, 2], dtype=torch.float32)
    assert a.shape == (3, 2) and torch.equal(a[2], torch.tensor([1.0, 2.0]))
    assert misc.constant([1.0, 2.0], shape=[3, 2], dtype=torch.float32) is a
    assert misc.constant([1.0, 2.0], shape=[3, 2], dtype=torch.float64) is not a
    cache = misc._ConstantCache(max_size=4)
    for i in range(10):
        cache.get(float(i), None, None, None)
    assert len(cache) == 4


def test_nan_to_num():
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 1.5])
    y = misc.nan_to_num(x, nan=0.0, posinf=7.0, neginf=-7.0)
    assert torch.equal(y, torch.tensor([0.0, 7.0, -7.0, 1.5]))
    assert misc.nan_to_num(x)[1] == torch.finfo(torch.float32).max


def test_copy_params_and_buffers():
    src, dst = _Net(), _Net()
    with torch.no_grad():
        for t in list(src.parameters()) + list(src.buffers()):
            t.add_(1)
    misc.copy_params_and_buffers(src, dst, require_all=True)
    for (name, a), (_, b) in zip(misc.named_params_and_buffers(src), misc.named_params_and_buffers(dst)):
        assert torch.equal(a, b), name
    with pytest.raises(KeyError, match="extra"):
        other = _Net()
        other.register_buffer("extra", torch.zeros(1))
        misc.copy_params_and_buffers(src, other, require_all=True)


def test_ddp_sync_without_ddp_is_transparent():
    net = torch.nn.Linear(2, 1)
    with misc.ddp_sync(net, sync=False):
        net(torch.ones(1, 2)).sum().backward()
    assert net.weight.grad is not None


def _init_gloo(store_path, rank, world_size):
    store = dist.FileStore(store_path, world_size)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=60))


def test_check_ddp_consistency_single_process(tmp_path):
    misc.check_ddp_consistency(_Net())  # Not initialised: a no-op.
    _init_gloo(str(tmp_path / "store"), 0, 1)
    try:
        misc.check_ddp_consistency(_Net())
    finally:
        dist.destroy_process_group()


def _consistency_worker(rank, store_path, result_dir):
    torch.manual_seed(0)
    net = _Net()
    if rank == 1:
        with torch.no_grad():
            net.head.weight[0, 0] += 1.0
    _init_gloo(store_path, rank, 2)
    try:
        messages = []
        for ignore in (None, r".*head\.weight"):
            try:
                misc.check_ddp_consistency(net, ignore_regex=ignore)
                messages.append("ok")
            except RuntimeError as err:
                messages.append(str(err))
        with open(os.path.join(result_dir, f"rank{rank}.txt"), "w") as f:
            f.write("\n".join(messages))
    finally:
        dist.destroy_process_group()


def test_check_ddp_consistency_detects_differing_rank(tmp_path):
    mp.spawn(_consistency_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    rank0 = (tmp_path / "rank0.txt").read_text().splitlines()
    rank1 = (tmp_path / "rank1.txt").read_text().splitlines()
    assert rank0 == ["ok", "ok"]
    assert "_Net.head.weight" in rank1[0] and "head.bias" not in rank1[0]
    assert rank1[1] == "ok"


def test_attribute_set_restores_the_previous_value_even_on_error():
    from types import SimpleNamespace

    obj = SimpleNamespace(flag=1)
    with misc.attribute_set(obj, "flag", 2):
        assert obj.flag == 2
        with pytest.raises(KeyError):
            with misc.attribute_set(obj, "flag", 3):
                raise KeyError("inside")
        assert obj.flag == 2
    assert obj.flag == 1
