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


# ----- value rules: every number and every fixed-choice string of the run config is checked when it is loaded ----

from dataclasses import fields, is_dataclass  # noqa: E402
from typing import get_type_hints  # noqa: E402

from dynapose4d.core.structured import Bound, check_rules  # noqa: E402
from dynapose4d.export import ExportConfig  # noqa: E402

# String fields that take any text (paths, model ids, names); every other string field lists its choices in RULES.
# trainer.strategy is checked against Lightning's strategy registry by load_config.
FREE_TEXT = {"u2net", "zero123.model", "zero123.path", "cape.checkpoint", "dynamic.svd.model", "dynamic.puppet.root",
             "trainer.strategy", "wandb.project", "wandb.entity", "wandb.group"}


def _leaves(schema: type = RunConfig, prefix: str = ""):
    """(dotted key, field type, its class's rule or None, default) of every non-dataclass field under `schema`."""
    hints, default = get_type_hints(schema), schema()
    for f in fields(schema):
        t, key = hints[f.name], prefix + f.name
        if is_dataclass(t):
            yield from _leaves(t, key + ".")
        else:
            yield key, t, getattr(schema, "RULES", {}).get(f.name), getattr(default, f.name), schema


LEAVES = list(_leaves())
NUMERIC = [(k, r, d) for k, t, r, d, _ in LEAVES if isinstance(r, Bound)]
CHOICES = [(k, r) for k, _, r, _, _ in LEAVES if isinstance(r, tuple)]


def test_every_number_and_word_of_the_run_config_has_a_rule():
    """A new field must say what it accepts: a Bound for numbers, its words for a fixed-choice string (the export
    section has its own check, `export_settings_problem`)."""
    missing = [k for k, t, r, _, cls in LEAVES
               if t in (int, float, list[int], list[float]) and not isinstance(r, Bound) and cls is not ExportConfig]
    words = [k for k, t, r, _, _ in LEAVES
             if t in (str, str | None) and k not in FREE_TEXT and not isinstance(r, tuple)]
    assert not missing, f"numeric fields without a Bound in their class's RULES: {missing}"
    assert not words, f"string fields without choices in RULES (or add them to FREE_TEXT): {words}"
    assert len(NUMERIC) > 100 and len(CHOICES) >= 12


def _outside(bound: Bound, default):
    """Values just outside `bound`, of the field's type."""
    as_int = isinstance(default, int) or (isinstance(default, list) and default and isinstance(default[0], int))
    out = []
    if bound.low is not None:
        out.append(bound.low if bound.above else bound.low - (1 if as_int else 0.01))
    if bound.high is not None:
        out.append(bound.high if bound.below else bound.high + (1 if as_int else 0.01))
    if not as_int:
        out.append("nan")
    return out


@pytest.mark.parametrize("key, bound, default", NUMERIC, ids=[k for k, _, _ in NUMERIC])
def test_a_number_outside_its_bound_stops_the_load_naming_the_key(key, bound, default):
    for v in _outside(bound, default):
        value = f"[{v},{','.join(map(str, default[1:]))}]" if isinstance(default, list) else v
        with pytest.raises(ConfigError, match=rf"--set {key}=.*config key '{key}': must be"):
            load_config(None, [f"{key}={value}"])


@pytest.mark.parametrize("key, words", CHOICES, ids=[k for k, _ in CHOICES])
def test_a_word_outside_its_choices_stops_the_load_and_each_choice_loads(key, words):
    with pytest.raises(ConfigError, match=rf"config key '{key}': 'bogus' is not one of"):
        load_config(None, [f"{key}=bogus"])
    for w in words:
        assert str(_get(load_config(None, [f"{key}={w}"]), key)) == w


def _get(cfg, key: str):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def test_bound_messages_and_edges():
    assert Bound(0, above=True).problem(0.0) == "must be > 0" and Bound(0, above=True).problem(1e-9) is None
    assert Bound(0, 1, above=True, below=True).problem(1.0) == "must be in (0, 1)"
    assert Bound(0, 1).problem(1.0) is None and Bound(0, 1).problem(1.5) == "must be in [0, 1]"
    assert Bound(1).problem(0) == "must be >= 1" and Bound(high=2.5, below=True).problem(2.5) == "must be < 2.5"
    assert Bound(0, 2**32 - 1).problem(-1) == "must be in [0, 4294967295]"
    assert Bound().problem(float("inf")) == "must be a finite number" and Bound().problem(-1e30) is None


def test_rules_name_the_file_that_broke_them_and_are_checked_by_the_stages_too(tmp_path):
    from dynapose4d.stages.dynamic.config import DynamicConfig
    from dynapose4d.stages.static.config import StaticConfig, check_config

    p = tmp_path / "mine.yaml"
    p.write_text("defaults: [base.yaml]\ncape:\n  lr: -1\n")
    (tmp_path / "base.yaml").write_text("dynamic:\n  video_fps: 0\n")
    with pytest.raises(ConfigError, match=r"base\.yaml: config key 'dynamic\.video_fps': must be >= 1, got 0"):
        load_config(p)
    (tmp_path / "base.yaml").write_text("seed: 3\n")
    with pytest.raises(ConfigError, match=r"mine\.yaml: config key 'cape\.lr': must be >= 0"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"dynamic\.sds_chunk': must be >= 0"):  # built in code, not loaded
        DynamicConfig(sds_chunk=-1).validate()
    with pytest.raises(ConfigError, match=r"dynamic\.puppet\.blend': must be in \(0, 1\]"):
        load_config(None, ["dynamic.puppet.blend=0"])
    with pytest.raises(ConfigError, match=r"static\.sds\.t_min/t_max"):
        check_config(StaticConfig(sds=type(StaticConfig().sds)(t_min=0.9, t_max=0.5)))
    with pytest.raises(ConfigError, match=r"hexplane\.resolution': expected \[x, y, z, t\]"):
        load_config(None, ["dynamic.hexplane.resolution=[8,8,8]"])
    from dynapose4d.stages.base import check_strategy

    check_strategy(load_config(None, ["trainer.strategy=ddp_spawn"]).trainer)
    with pytest.raises(ConfigError, match=r"trainer\.strategy': 'dpp' is not one of \['auto', 'ddp'"):
        check_strategy(load_config(None, ["trainer.strategy=dpp"]).trainer)
    check_rules(RunConfig())  # the defaults keep their own rules


def test_precision_choices_are_what_lightning_takes():
    from typing import get_args

    from lightning.fabric.connector import _PRECISION_INPUT

    from dynapose4d.core.precision import AUTO, PRECISIONS

    accepted = {str(a) for group in get_args(_PRECISION_INPUT) for a in get_args(group)}
    assert set(PRECISIONS) - {AUTO} <= accepted


def test_an_edited_run_config_breaking_a_rule_is_one_line_naming_it(tmp_path):
    from dynapose4d.pipeline.config import load_run_config, save_config

    save_config(load_config("smoke"), tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert "  video_fps: 8\n" in text
    (tmp_path / "config.yaml").write_text(text.replace("  video_fps: 8\n", "  video_fps: -8\n", 1))
    with pytest.raises(ConfigError, match=r"config\.yaml: config key 'dynamic\.video_fps': must be >= 1"):
        load_run_config(tmp_path)


def test_train_cape_settings_have_rules_too():
    """`train-cape`'s settings: every number has a Bound, every fixed-choice word its choices, and a value outside
    them stops the load naming the key (all of them tried)."""
    from dynapose4d.stages.train_cape import CapeTrainConfig, load_train_config

    leaves = list(_leaves(CapeTrainConfig))
    free = {"init", "mp100.root", "trainer.strategy"}
    missing = [k for k, t, r, _, _ in leaves if t in (int, float, list[int], list[float]) and not isinstance(r, Bound)]
    words = [k for k, t, r, _, _ in leaves if t in (str, list[str]) and k not in free and not isinstance(r, tuple)]
    assert not missing and not words, (missing, words)
    tried = 0
    for key, _, rule, default, _ in leaves:
        if isinstance(rule, Bound):
            for v in _outside(rule, default):
                value = f"[{v},{','.join(map(str, default[1:]))}]" if isinstance(default, list) else v
                with pytest.raises(ConfigError, match=rf"config key '{key}': must be"):
                    load_train_config(None, [f"{key}={value}"])
                tried += 1
        elif isinstance(rule, tuple):
            with pytest.raises(ConfigError, match=rf"config key '{key}': 'bogus' is not one of"):
                load_train_config(None, [f"{key}={'[bogus]' if isinstance(default, list) else 'bogus'}"])
            tried += 1
    assert tried > 60
    with pytest.raises(ConfigError, match=r"data\.templates': 'dragon' is not one of"):
        load_train_config(None, ["data.templates=[humanoid,dragon]"])
