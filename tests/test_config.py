"""Configs: every preset in configs/ and every experiment file (with each variant's overrides) loads; unknown keys
and wrong types fail naming the key; the runner's hashes see exactly the sections they should."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynapose4d.core.errors import ConfigError
from dynapose4d.core.structured import config_hash
from dynapose4d.pipeline.config import RunConfig, load_config, to_yaml
from dynapose4d.pipeline.experiment_file import _safe_tag, load_experiment, make_jobs

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_preset_loads_and_round_trips(path, tmp_path):
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    (tmp_path / "resolved.yaml").write_text(to_yaml(cfg))  # the RUN/config.yaml a run writes ...
    again = load_config(tmp_path / "resolved.yaml")  # ... is itself a valid preset giving the same config
    assert to_yaml(again) == to_yaml(cfg)
    assert cfg.trainer.devices >= 1 and cfg.wandb.mode in ("offline", "online", "disabled")


def test_presets_differ_where_they_should():
    cpu, smoke = load_config(ROOT / "configs" / "cpu.yaml"), load_config(ROOT / "configs" / "smoke.yaml")
    assert cpu.trainer.accelerator == smoke.trainer.accelerator == "cpu"  # smoke chains cpu.yaml
    assert smoke.static.steps < cpu.static.steps and not smoke.wandb.enabled
    assert load_config(ROOT / "configs" / "default.yaml").trainer.accelerator == "gpu"


def test_low_vram_is_the_paper_preset_with_a_chunked_decode():
    """configs/low_vram.yaml changes only the SVD decode's chunk size (the measured largest GPU peak): a change in
    default.yaml reaches it, and nothing else about the method differs."""
    paper, low = load_config(ROOT / "configs" / "default.yaml"), load_config(ROOT / "configs" / "low_vram.yaml")
    assert low.dynamic.svd.decode_chunk_size == 2 and paper.dynamic.svd.decode_chunk_size == 0
    low.dynamic.svd.decode_chunk_size = 0
    assert to_yaml(low) == to_yaml(paper)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.name for p in EXPERIMENTS])
def test_every_experiment_file_and_variant_loads(path, tmp_path):
    exp = load_experiment(path)
    jobs = make_jobs(exp, tmp_path, [], path.parent)
    assert len(jobs) == len(exp.variants) * len(exp.scenes)
    for job in jobs:
        cfg = load_config(job.config, job.overrides)
        assert cfg.wandb.group == (exp.wandb.group or exp.name)
        assert _safe_tag(job.variant) in cfg.wandb.tags


def test_ablation_variants_switch_the_pose_terms():
    exp = load_experiment(ROOT / "experiments" / "ablation_pose.yaml")
    lam = {}
    for v, ovs in exp.variants.items():
        d = load_config(exp.config, ovs).dynamic
        lam[v] = (d.lambda_kml > 0, d.lambda_scl > 0)
    assert lam == {"full": (True, True), "no_kml": (False, True), "no_scl": (True, False), "no_pose": (False, False)}


@pytest.mark.parametrize("override, key", [
    ("static.no_such_key=1", "static.no_such_key"),
    ("trainer.devices=two", "trainer.devices"),
    ("wandb.enabled=maybe", "wandb.enabled"),
    ("nosection.x=1", "nosection"),
])
def test_bad_override_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_bad_yaml_key_names_file_and_key(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("trainer:\n  devcies: 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*trainer\.devcies"):
        load_config(p)
    p.write_text("wandb:\n  tags: 3\n")
    with pytest.raises(ConfigError, match=r"wandb\.tags"):
        load_config(p)
    with pytest.raises(ConfigError, match="stages"):
        load_config(None, ["stages=[static,dynamc]"])


def test_bad_experiment_file_names_the_key(tmp_path):
    p = tmp_path / "e.yaml"
    p.write_text("name: e\nscenes: [x]\nvariants: {a: []}\nvarients: {}\n")
    with pytest.raises(ConfigError, match="varients"):
        load_experiment(p)
    p.write_text("name: e\nscenes: [x]\nvariants: {}\n")
    with pytest.raises(ConfigError, match="variants"):
        load_experiment(p)


def test_stage_hash_sees_only_its_section():
    a, b = load_config(None, []), load_config(None, ["dynamic.steps=7"])
    assert config_hash(a.static) == config_hash(b.static)
    assert config_hash(a.dynamic) != config_hash(b.dynamic)
    assert config_hash(a.trainer) == config_hash(load_config(None, ["trainer.devices=1"]).trainer)


def test_a_run_config_written_by_an_earlier_version_is_read(tmp_path):
    """RUN/config.yaml with a key since renamed (static.zero123_model) and one dropped at the top: read with them
    left out and named in a warning; a wrong value is still a one-line error; no config: the defaults."""
    from dynapose4d.pipeline.config import RunConfig, load_run_config, save_config

    save_config(load_config("cpu"), tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    (tmp_path / "config.yaml").write_text(text.replace("static:\n", "static:\n  zero123_model: old/name\n", 1)
                                          + "old_top_level: 3\n")
    with pytest.warns(UserWarning, match=r"static\.zero123_model, old_top_level"):
        cfg = load_run_config(tmp_path)
    assert cfg.max_image_size == load_config("cpu").max_image_size == 256
    assert cfg.static == load_config("cpu").static
    (tmp_path / "config.yaml").write_text("max_image_size: lots\n")
    with pytest.raises(ConfigError, match="config.yaml"):
        load_run_config(tmp_path)
    assert load_run_config(tmp_path / "nowhere") == RunConfig()
