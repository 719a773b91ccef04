"""The conventions users bring: `--version`, `config show` (resolved YAML with each key's doc), `--set` that leaves
the positional argument alone, presets by name, WANDB_* environment variables over the preset, online runs that
print their URL, `train-cape` that never overwrites the shipped checkpoint by default, the licence, and help
texts that point at the docs shipped in docs/."""

from __future__ import annotations

import hashlib
import importlib.metadata
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from dynapose4d.cli import PACKAGE_DIR, build_parser, main, split_set_values
from dynapose4d.core import structured
from dynapose4d.core.errors import ConfigError
from dynapose4d.core.structured import field_docs, resolve_preset, to_commented_yaml, to_dict, undocumented_fields
from dynapose4d.pipeline.config import RunConfig, WandbConfig, load_config, wandb_env_overrides

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, vendored by pip
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_wandb_env(monkeypatch):
    for var in ("WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY"):
        monkeypatch.delenv(var, raising=False)


# ----------------------------------------------------------------------------------------------- --version

def test_version_is_the_package_metadata(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert capsys.readouterr().out.strip() == f"dynapose4d {pyproject}"
    assert importlib.metadata.version("dynapose4d") == pyproject
    import dynapose4d

    assert dynapose4d.__version__ == pyproject


# ------------------------------------------------------------------------------------------ field docs

@dataclass
class _Inner:
    """Inner settings, first line.

    More text that is not the doc."""

    a: int = 1  # the a


@dataclass
class _Documented:
    """A dataclass written the ways the project's configs are."""

    plain: int = 0  # an inline comment
    # a comment block above a field
    # of two lines
    above: str = "x"
    spread: list[int] = field(default_factory=lambda: [1, 2,
                                                       3])  # comment on the last line of the definition
    cont: float = 1.0  # an inline comment that goes on
    # on the next line
    own: int = 2  # the next field has its own comment, so the line above continues `cont`
    inner: _Inner = field(default_factory=_Inner)
    after: bool = True  # a field after the nested one
    # between a commented field and one without: the block belongs to the next field
    last: int = 3


def test_field_docs_read_each_way_of_writing_a_comment():
    docs = field_docs(_Documented)
    assert docs == {
        "plain": "an inline comment",
        "above": "a comment block above a field of two lines",
        "spread": "comment on the last line of the definition",
        "cont": "an inline comment that goes on on the next line",
        "own": "the next field has its own comment, so the line above continues `cont`",
        "inner": "Inner settings, first line.",
        "after": "a field after the nested one",
        "last": "between a commented field and one without: the block belongs to the next field",
    }
    # the ambiguous block: a comment-only line between two fields belongs to the next one when it has no comment
    assert field_docs(WandbConfig)["entity"] == "W&B entity (team/user); None = the default one"
    assert field_docs(WandbConfig)["mode"].startswith('"offline" (default;')


def test_every_config_field_is_documented():
    from dynapose4d.stages.train_cape import CapeTrainConfig

    assert undocumented_fields(RunConfig()) == []
    assert undocumented_fields(CapeTrainConfig()) == []


def _leaves(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and all(isinstance(x, str) for x in v):
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def test_config_show_prints_the_resolved_config_with_docs(capsys, no_wandb_env):
    assert main(["config", "show", "cpu", "--set", "static.steps=7", "dynamic.lambda_kml=0.25"]) == 0
    out = capsys.readouterr().out
    want = load_config(ROOT / "configs" / "cpu.yaml", ["static.steps=7", "dynamic.lambda_kml=0.25"])
    assert yaml.safe_load(out) == to_dict(want)  # an independent YAML reader sees the resolved config
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert all(re.search(r" # \S", ln) for ln in lines), [ln for ln in lines if " # " not in ln][:3]
    assert "  steps: 7  # optimisation steps" in out
    assert "seed: 0  # global seed (lightning.seed_everything) (allowed: in [0, 4294967295])\n" in out
    # one line per leaf key, one per section
    assert len(lines) >= len(_leaves(to_dict(want)))


def test_config_show_defaults_and_train_cape(capsys, no_wandb_env):
    from dynapose4d.stages.train_cape import load_train_config

    assert main(["config", "show"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == to_dict(RunConfig())
    assert main(["config", "show", "--train-cape", "cape/cpu"]) == 0
    out = capsys.readouterr().out
    assert yaml.safe_load(out) == to_dict(load_train_config(ROOT / "configs" / "cape" / "cpu.yaml"))
    assert 'init: ""' in out or "init: ''" in out
    assert "# warm start: a CAPE checkpoint" in out


def test_commented_yaml_quotes_what_yaml_would_misread():
    @dataclass
    class Tricky:
        colon: str = "a: b"  # a string with a colon
        hashy: str = "x # y"  # a string with a hash
        yes: str = "yes"  # a string YAML 1.1 reads as a bool
        none: str | None = None  # null
        nested: list[list[float]] = field(default_factory=lambda: [[1.0, 2.5], []])  # nested lists

    text = to_commented_yaml(Tricky())
    assert yaml.safe_load(text) == {"colon": "a: b", "hashy": "x # y", "yes": "yes", "none": None,
                                    "nested": [[1.0, 2.5], []]}


# ------------------------------------------------------------------------------------- --set and positionals

@pytest.mark.parametrize("argv, positional", [
    (["run", "--set", "static.steps=2", "SCENE", "--out", "R"], ("scene", "SCENE")),
    (["fit-static", "--set", "a=1", "b=2", "SCENE", "--out", "R"], ("scene", "SCENE")),
    (["fit-dynamic", "--out", "R", "--set", "a=1", "b=2", "SCENE"], ("scene", "SCENE")),
    (["experiment", "--set", "a=1", "b=2", "experiments/x.yaml"], ("file", "experiments/x.yaml")),
    (["config", "show", "--set", "a=1", "b=2", "cpu"], ("preset", "cpu")),
])
def test_set_leaves_the_positional_argument(argv, positional):
    args = build_parser().parse_args(argv)
    assert getattr(args, positional[0]) == positional[1]
    assert args.overrides == (["static.steps=2"] if argv[0] == "run" else ["a=1", "b=2"])


def test_set_keeps_several_values_and_repeats():
    args = build_parser().parse_args(["run", "S", "--out", "R", "--set", "a=1", "b=2", "--set", "c=3",
                                      "--set=d=4", "--resume"])
    assert args.overrides == ["a=1", "b=2", "c=3", "d=4"] and args.scene == "S" and args.resume
    args = build_parser().parse_args(["train-cape", "--set", "steps=2", "lr=0.1", "--config", "cape/cpu"])
    assert args.overrides == ["steps=2", "lr=0.1"] and args.config == "cape/cpu"
    # values may hold '=' and a leading minus after the key; words after `--` are left alone
    assert split_set_values(["--set", "a=-1", "b=x=y", "S", "--", "--set", "c"]) == [
        "--set=a=-1", "--set=b=x=y", "S", "--", "--set", "c"]


def test_set_without_equals_is_a_one_line_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["run", "--set", "SCENE", "--out", "R"])
    assert e.value.code == 2
    assert "--set: expected KEY=VALUE, got 'SCENE'" in capsys.readouterr().err


def test_run_through_main_gets_scene_after_set(monkeypatch):
    import dynapose4d.pipeline.runner

    seen = {}
    monkeypatch.setattr(dynapose4d.pipeline.runner, "run_cli", lambda args: seen.update(vars(args)) or 0)
    assert main(["run", "--set", "static.steps=2", "my_scene", "--out", "R"]) == 0
    assert seen["scene"] == "my_scene" and seen["overrides"] == ["static.steps=2"]


# ------------------------------------------------------------------------------------------------- presets

@pytest.fixture
def preset_dirs(tmp_path, monkeypatch):
    packaged, source = tmp_path / "pkg" / "configs", tmp_path / "repo" / "configs"
    (packaged / "cape").mkdir(parents=True)
    source.mkdir(parents=True)
    (packaged / "mine.yaml").write_text("seed: 11\n")
    (packaged / "child.yaml").write_text("defaults: [mine.yaml]\nstatic:\n  steps: 3\n")
    (packaged / "cape" / "tiny.yaml").write_text("steps: 5\n")
    (source / "mine.yaml").write_text("seed: 22\n")  # the packaged one wins
    (source / "only_here.yaml").write_text("seed: 33\n")
    monkeypatch.setattr(structured, "PACKAGED_PRESETS", packaged)
    monkeypatch.setattr(structured, "SOURCE_PRESETS", source)
    monkeypatch.chdir(tmp_path)
    return packaged, source


def test_preset_names_resolve_packaged_first(preset_dirs, no_wandb_env):
    packaged, source = preset_dirs
    assert resolve_preset("mine") == packaged / "mine.yaml"
    assert resolve_preset("mine.yaml") == packaged / "mine.yaml"
    assert resolve_preset("cape/tiny") == packaged / "cape" / "tiny.yaml"
    assert resolve_preset("only_here") == source / "only_here.yaml"
    assert load_config("mine").seed == 11 and load_config("only_here").seed == 33
    child = load_config("child")  # `defaults:` inside a packaged preset resolve beside it
    assert child.seed == 11 and child.static.steps == 3
    Path("mine.yaml").write_text("seed: 44\n")  # an existing path wins over a name
    assert load_config("mine.yaml").seed == 44 and load_config("mine").seed == 11
    assert load_config(str(Path("mine.yaml").resolve())).seed == 44


def test_unknown_preset_lists_the_presets(preset_dirs, capsys, no_wandb_env):
    with pytest.raises(ConfigError, match=r"nope: .*presets: .*cape/tiny.*child.*mine.*only_here"):
        resolve_preset("nope")
    assert main(["run", "S", "--out", "R", "--config", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "presets: " in err and "mine" in err
    assert not Path("R").exists()


def test_the_repository_presets_by_name(no_wandb_env):
    for name in ("cpu", "default", "dg4d", "smoke"):
        assert to_dict(load_config(name)) == to_dict(load_config(ROOT / "configs" / f"{name}.yaml"))


def test_package_data_ships_every_preset():
    """pyproject's package-data patterns cover every preset (once configs/ lives inside the package)."""
    import fnmatch

    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["dynapose4d"]
    presets = [p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").rglob("*.yaml")]
    assert presets
    for rel in presets:
        assert any(fnmatch.fnmatch(rel, pat) and rel.count("/") == pat.count("/") for pat in patterns), rel


# ------------------------------------------------------------------------------------------------------ W&B

def _preset(tmp_path, text: str) -> Path:
    p = tmp_path / "preset.yaml"
    p.write_text(text)
    return p


def test_wandb_environment_wins_over_the_preset_but_not_over_set(tmp_path, no_wandb_env):
    p = _preset(tmp_path, "wandb:\n  mode: offline\n  project: from_preset\n  entity: team_a\n")
    env = {"WANDB_MODE": "online", "WANDB_PROJECT": "from_env", "WANDB_ENTITY": "team_b"}
    wc = load_config(p, [], environ=env).wandb
    assert (wc.mode, wc.project, wc.entity) == ("online", "from_env", "team_b")
    wc = load_config(p, ["wandb.mode=disabled", "wandb.project=from_set"], environ=env).wandb
    assert (wc.mode, wc.project, wc.entity) == ("disabled", "from_set", "team_b")
    wc = load_config(p, [], environ={"WANDB_MODE": "", "WANDB_PROJECT": "  "}).wandb  # empty = not set
    assert (wc.mode, wc.project, wc.entity) == ("offline", "from_preset", "team_a")
    assert load_config(p, [], environ={"WANDB_MODE": "dryrun"}).wandb.mode == "offline"  # W&B's old spelling
    with pytest.raises(ConfigError, match="WANDB_MODE='sometimes'"):
        load_config(p, [], environ={"WANDB_MODE": "sometimes"})
    assert wandb_env_overrides({"WANDB_PROJECT": "a b"}) == ['wandb.project="a b"']


def test_cli_does_not_default_wandb_mode_over_the_preset(tmp_path, monkeypatch, capsys, no_wandb_env):
    """The CLI used to `setdefault("WANDB_MODE", "offline")`, which would now beat a preset saying online."""
    p = _preset(tmp_path, "wandb:\n  mode: online\n")
    assert main(["config", "show", str(p)]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["wandb"]["mode"] == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert main(["config", "show", str(p)]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["wandb"]["mode"] == "disabled"


def test_environment_reaches_the_offline_wandb_run(tmp_path, monkeypatch):
    """WANDB_PROJECT from the environment is the project of the stage's offline W&B run (read from its file)."""
    import _fakes
    from test_wandb import read_wandb_records

    from dynapose4d.pipeline.runner import StageRunner

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_PROJECT", "env_project")
    scene = _fakes.write_tiny_scene(tmp_path / "scene")
    ov = [o for o in _fakes.fake_overrides(2) if not o.startswith("wandb.")] + ["stages=[static]"]
    cfg = load_config(_preset(tmp_path, "wandb:\n  project: preset_project\n  mode: disabled\n"), ov)
    assert (cfg.wandb.project, cfg.wandb.mode) == ("env_project", "offline")
    StageRunner(scene, tmp_path / "run", cfg, stages=_fakes.FAKE_STAGES[:1], echo=lambda s: None).run()
    (run_dir,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    (wandb_file,) = run_dir.glob("run-*.wandb")
    projects = [r.run.project for r in read_wandb_records(wandb_file) if r.WhichOneof("record_type") == "run"]
    assert projects and set(projects) == {"env_project"}
    assert "env_project" in (tmp_path / "run" / "config.yaml").read_text()  # the resolved config says so


class _FakeExperiment:
    url = "https://wandb.ai/team/proj/runs/abc123"

    def __init__(self):
        self.config = SimpleNamespace(update=lambda *a, **k: None)


class _FakeWandbLogger:
    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self._wandb_init = {}
        self.experiment = _FakeExperiment()


@pytest.mark.parametrize("mode", ["online", "offline"])
def test_online_runs_print_their_url(mode, tmp_path, monkeypatch, capsys):
    import lightning.pytorch.loggers

    from dynapose4d.stages import logger as dlog
    monkeypatch.setattr(lightning.pytorch.loggers, "WandbLogger", _FakeWandbLogger)
    monkeypatch.setattr(dlog, "online_problem", lambda *a: None)  # a machine with a key and a network
    wl = dlog._make_wandb_logger(tmp_path / "run", "static", WandbConfig(mode=mode), {}, True)
    assert wl.kwargs["mode"] == mode
    out = capsys.readouterr().out
    if mode == "online":
        assert "[static] W&B run: https://wandb.ai/team/proj/runs/abc123" in out
    else:
        assert "wandb.ai" not in out


# ------------------------------------------------------------------------------------------------ train-cape

SHIPPED = ROOT / "dynapose4d" / "assets" / "cape_small.ckpt"


def test_train_cape_does_not_write_the_shipped_checkpoint_by_default(monkeypatch, tmp_path):
    from dynapose4d.stages import train_cape as train_mod

    written = []
    monkeypatch.setattr(train_mod, "train_cape", lambda cfg, out, log=print: written.append(Path(out)))
    monkeypatch.chdir(tmp_path)
    assert main(["train-cape", "--set", "steps=1"]) == 0
    assert written[-1] == Path("runs/cape/cape.ckpt")
    assert written[-1].resolve() != SHIPPED.resolve()
    # the Makefile's explicit --out still writes the shipped file
    assert main(["train-cape", "--out", "dynapose4d/assets/cape_small.ckpt", "--set", "steps=1"]) == 0
    assert written[-1] == Path("dynapose4d/assets/cape_small.ckpt")


# ------------------------------------------------------------------------------------------------- licence

def test_license_is_apache_2_and_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and "APPENDIX: How to apply the Apache License" in text
    reference = Path("/usr/share/common-licenses/Apache-2.0")  # Debian's copy of the standard text, when present
    if reference.is_file():
        assert hashlib.sha256(text.encode()).hexdigest() == hashlib.sha256(reference.read_bytes()).hexdigest()
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    assert any(re.fullmatch(r"setuptools>=(\d+)", r) and int(r.split(">=")[1]) >= 77 for r in requires)


# ------------------------------------------------------------------------------------------------ the docs

def test_help_and_docstrings_point_at_the_docs():
    """No help text or message cites the old design document; every docs/*.md the package names exists."""
    named = set()
    for path in list((ROOT / "dynapose4d").rglob("*.py")) + list((ROOT / "tests").glob("*.py")):
        text = path.read_text()
        if path.name != Path(__file__).name:
            assert "DESIGN §" not in text, path
        named |= set(re.findall(r"docs/[\w.-]+\.md", text))
    assert {"docs/scene-folder.md", "docs/run-folder.md", "docs/cameras.md"} <= named
    for doc in named:
        assert (ROOT / doc).is_file(), doc


def test_cameras_doc_states_the_code_conventions():
    """docs/cameras.md against the code: the reference camera and Consistent4D's evaluation cameras."""
    from dynapose4d.core.cameras import CONSISTENT4D_CAMERAS, REFERENCE_CAMERA

    text = (ROOT / "docs" / "cameras.md").read_text()
    ref = REFERENCE_CAMERA
    assert f"fov_y {ref.fov_y:g}" in text and f"radius {ref.radius:g}" in text
    assert ", ".join(f"{c.azimuth:g}" for c in CONSISTENT4D_CAMERAS) in text
    assert "orbit_camera(elevation, azimuth, radius)" in text


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


# Each of these was a traceback (from the optimiser, a ZeroDivisionError, Lightning's Trainer, the optimiser) after
# the run folder was made.
@pytest.mark.parametrize("override, message", [
    ("cape.lr=-1", "config key 'cape.lr': must be >= 0, got -1.0"),
    ("dynamic.video_fps=0", "config key 'dynamic.video_fps': must be >= 1, got 0"),
    ("trainer.precision=fp8", "config key 'trainer.precision': 'fp8' is not one of"),
    ("static.lr_means=nan", "config key 'static.lr_means': must be a finite number"),
])
def test_a_setting_out_of_range_is_one_line_before_anything_is_written(override, message, tmp_path, monkeypatch,
                                                                       capsys, no_wandb_env):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "synthetic:humanoid:0", "--out", "R", "--config", "smoke", "--set", override]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--set {override}: {message}" in err, err
    assert not Path("R").exists()


def test_the_packages_warnings_print_as_one_line_and_others_as_python_does():
    code = ("import warnings\n"
            "from dynapose4d.cli import PACKAGE_DIR, one_line_warnings\n"
            "with one_line_warnings():\n"
            "    warnings.warn_explicit('keypoints a and b coincide', UserWarning, PACKAGE_DIR + '/data/scene.py', 3)\n"
            "    warnings.warn_explicit('something else', UserWarning, '/elsewhere/lib.py', 4)\n"
            "warnings.warn_explicit('after', UserWarning, PACKAGE_DIR + '/data/scene.py', 5)\n")
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr
    assert err.splitlines()[:3] == ["dynapose4d: warning: keypoints a and b coincide",
                                "/elsewhere/lib.py:4: UserWarning: something else",
                                f"{PACKAGE_DIR}/data/scene.py:5: UserWarning: after"], err  # put back after


def test_lightnings_lines_that_say_nothing_are_dropped():
    import logging

    from dynapose4d.stages.base import quiet_lightning

    quiet_lightning()
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    handler, level = Keep(), log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        for msg in ("GPU available: False, used: False", "TPU available: False, using: 0 TPU cores",
                    "`Trainer.fit` stopped: `max_steps=4` reached.", "GPU available: True (cuda), used: False",
                    "Using bfloat16 Automatic Mixed Precision (AMP)"):
            log.info(msg)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    assert seen == ["GPU available: True (cuda), used: False", "Using bfloat16 Automatic Mixed Precision (AMP)"]


def test_a_full_disk_is_one_line_and_a_bug_keeps_its_traceback(tmp_path, monkeypatch, capsys, no_wandb_env):
    import errno
    import shutil
    from collections import namedtuple

    from dynapose4d import cli
    from dynapose4d.pipeline.runner import StageRunner

    monkeypatch.chdir(tmp_path)
    usage = namedtuple("usage", "total used free")
    raised: list[BaseException] = []
    monkeypatch.setattr(StageRunner, "run", lambda self: (_ for _ in ()).throw(raised[-1]))
    args = ["run", "S", "--out", "R", "--config", "smoke"]

    # torch.save on a full disk: "unexpected pos", no errno; the disk has 10 MB left
    raised.append(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"))
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**12, 10**12, 10 * 2**20))
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dynapose4d: error: R: the disk ran out of space (10 MB free now; "
                                                   "RuntimeError: [enforce fail"), err
    # ENOSPC inside another error, with space left again by the time it is reported
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**12, 0, 10**12))
    try:
        raise OSError(errno.ENOSPC, "No space left on device", "R/cape/model.ckpt")
    except OSError as e:
        wrapped = RuntimeError("checkpoint failed")
        wrapped.__cause__ = e
    raised.append(wrapped)
    assert cli.main(args) == 1 and "the disk ran out of space" in capsys.readouterr().err
    # anything else with space left is a bug: its traceback
    raised.append(RuntimeError("unexpected pos 704 vs 598"))
    with pytest.raises(RuntimeError, match="unexpected pos"):
        cli.main(args)
