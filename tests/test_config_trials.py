"""bench/config_trials.py: the trials file, the configs it writes, and the per-snapshot summaries."""

import sys
from argparse import Namespace
from pathlib import Path

import pytest
import yaml

# Appended, not prepended: bench/train.py must not shadow the top-level train.py for later tests.
sys.path.append(str(Path(__file__).resolve().parents[1] / "bench"))

from config_trials import evaluate, read_trials, write_config  # noqa: E402
from test_gen_samples import write_tiny_snapshot  # noqa: E402

from training.options import load_config  # noqa: E402


def test_trials_file_and_written_configs(tmp_path):
    trials = tmp_path / "trials.txt"
    trials.write_text("# sweep\nbase\n\nmv4  multiview_at=4 loss.r1_gamma=0.2   # earlier views\n"
                      "big G.triplane_channels=32 aug=ada\n")
    parsed = read_trials(trials)
    assert parsed == [("base", {}), ("mv4", {"multiview_at": 4, "loss.r1_gamma": 0.2}),
                      ("big", {"G.triplane_channels": 32, "aug": "ada"})]
    base = load_config("demo")
    for name, overrides in parsed:
        write_config(base, overrides, tmp_path / f"{name}.yaml")
    mv4 = yaml.safe_load((tmp_path / "mv4.yaml").read_text())
    assert mv4["multiview_at"] == 4 and mv4["loss"]["r1_gamma"] == 0.2
    assert mv4["G"] == yaml.safe_load((tmp_path / "base.yaml").read_text())["G"]  # the rest untouched
    assert load_config(tmp_path / "big.yaml").G.triplane_channels == 32  # train.py can read it


@pytest.mark.parametrize("text, match", [
    ("a x\n", "KEY=VALUE"),
    ("a\na\n", "new name"),
    ("k=1\n", "new name"),
    ("# nothing\n", "no trials"),
])
def test_bad_trials_files_are_named(tmp_path, text, match):
    path = tmp_path / "t.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        read_trials(path)


@pytest.mark.parametrize("override", ["loss.r1_gama", "nosection.key", "G.triplane_channels.x"])
def test_overrides_of_unknown_keys_are_errors(tmp_path, override):
    with pytest.raises(KeyError, match="override|section"):
        write_config(load_config("demo"), {override: 1}, tmp_path / "t.yaml")


def test_every_snapshot_gives_a_line_per_kept_snapshot_oldest_first(tmp_path):
    run = tmp_path / "long" / "00000-long-data-gpus1-batch4"
    for kimg in (8, 4):  # written newest first: the order must come from the names
        write_tiny_snapshot(run / f"network-snapshot-{kimg:06d}.safetensors", seed=kimg)
    args = Namespace(outdir=tmp_path, seeds=1, samples=2, every_snapshot=True)
    lines = evaluate(args, "long", reals=None).splitlines()
    assert [line.split()[1] for line in lines] == ["network-snapshot-000004.safetensors",
                                                   "network-snapshot-000008.safetensors"]
    assert lines[0] != lines[1]  # different weights, different statistics
    assert (tmp_path / "grid_long.png").is_file()
    args.every_snapshot = False
    newest_only = evaluate(args, "long", reals=None).splitlines()
    assert newest_only == [lines[1]]


def test_trial_without_snapshot_is_reported(tmp_path):
    (tmp_path / "empty").mkdir()
    line = evaluate(Namespace(outdir=tmp_path, seeds=1, samples=2, every_snapshot=True), "empty", reals=None)
    assert line.startswith("empty") and "no snapshot" in line
