"""Tests for train.py and training/options.py: configs, overrides, flag parsing, errors, a short run, resume."""

from __future__ import annotations

import copy
import pytest
import yaml
from click.testing import CliRunner

import train
from training.options import apply_overrides, available_configs, load_config, parse_kimg, to_plain, validate_options
from training.snapshot import list_snapshots
from training_fixtures import tiny_options


def test_parse_kimg_forms():
    assert parse_kimg("8000kimg") == parse_kimg("8000") == parse_kimg(8000) == 8000.0
    assert parse_kimg("1.5Mimg") == 1500.0
    assert parse_kimg("never") is None and parse_kimg(None) is None
    with pytest.raises(ValueError, match="--multiview-at"):
        parse_kimg("soon")


def test_named_configs_load_and_have_the_paper_settings():
    assert {"imagenet100", "shapenet55", "demo"} <= set(available_configs())
    cfg = load_config("imagenet100")
    assert cfg.G.extra_blocks is True and cfg.G.decoder_layers == 4 and cfg.views == 3
    assert cfg.G.triplane_res == 256 and cfg.G.triplane_channels == 32
    assert "c_dim" not in cfg.D and "camera" not in str(to_plain(cfg.D))


def test_overrides_land_in_the_tree():
    opts = apply_overrides(load_config("imagenet100"), dict(gamma=0.3, extra_blocks=False, decoder_layers=2,
                                                            multiview_at="8000kimg", batch=None))
    assert opts.loss.r1_gamma == 0.3 and opts.G.extra_blocks is False and opts.G.decoder_layers == 2
    assert opts.multiview_at == 8000.0 and opts.batch == 64
    assert opts.neural_res_fade.final == 128  # untouched without --neural-res


def test_batch_gpu_caps_the_per_gpu_batch():
    opts = load_config("imagenet100")
    assert validate_options(copy.deepcopy(opts), 8).batch_gpu == 4   # 64 / 8 GPUs = 8 per GPU, 2 rounds of 4
    assert validate_options(copy.deepcopy(opts), 32).batch_gpu == 2  # 2 per GPU: one round, not an error


def test_neural_res_flag_replaces_the_fade():
    opts = apply_overrides(load_config("imagenet100"), dict(neural_res=64))
    assert opts.G.neural_res == 64 and opts.neural_res_fade is None


def _dry_run(*args):
    return CliRunner().invoke(train.main, ["--dry-run", *args], catch_exceptions=False)


def test_dry_run_prints_merged_options(tiny_dataset):
    result = _dry_run("--cfg", "imagenet100", "--data", str(tiny_dataset), "--multiview-at", "8000kimg",
                      "--no-extra-blocks", "--gamma", "0.5", "--batch", "32", "--reuse-fakes")
    assert result.exit_code == 0, result.output
    opts = yaml.safe_load(result.output)
    assert opts["multiview_at"] == 8000.0 and opts["G"]["extra_blocks"] is False
    assert opts["loss"]["reuse_fakes"] is True  # off in the config, on from the flag
    assert opts["loss"]["r1_gamma"] == 0.5 and opts["batch"] == 32 and opts["num_gpus"] == 1


@pytest.mark.parametrize("args, needle", [
    (["--cfg", "no-such-config"], "imagenet100"),
    (["--cfg", "demo", "--data", "missing.zip"], "missing.zip"),
    (["--cfg", "demo", "--multiview-at", "later"], "--multiview-at"),
    (["--cfg", "demo", "--batch", "6", "--batch-gpu", "4"], "--batch-gpu"),
])
def test_bad_flags_get_clear_errors(args, needle, tiny_dataset):
    if "--data" not in args:
        args = [*args, "--data", str(tiny_dataset)]
    result = CliRunner().invoke(train.main, ["--dry-run", *args])
    assert result.exit_code != 0 and needle in result.output


def test_short_run_then_resume_latest(tiny_dataset, tmp_path):
    cfg = tmp_path / "tiny.yaml"
    opts = tiny_options(tiny_dataset, kimg=0.008)
    opts.pop("resume")
    cfg.write_text(yaml.safe_dump(to_plain(opts)))
    outdir = tmp_path / "runs"
    result = CliRunner().invoke(train.main, ["--cfg", str(cfg), "--outdir", str(outdir), "--device", "cpu"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    first_run = next(outdir.iterdir())
    assert (first_run / "training_options.yaml").exists() and list_snapshots(first_run)
    result = CliRunner().invoke(train.main, ["--cfg", str(cfg), "--outdir", str(outdir), "--kimg", "0.016",
                                             "--resume", "latest", "--device", "cpu"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    second_run = sorted(outdir.iterdir())[-1]
    assert second_run != first_run
    log = (second_run / "log.txt").read_text()
    assert "Resumed from" in log and "(8 images)" in log
    assert yaml.safe_load((second_run / "training_options.yaml").read_text())["resume"].endswith(".safetensors")
