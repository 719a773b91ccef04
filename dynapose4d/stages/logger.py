"""Media and metrics of a stage: into the run folder, and to W&B (one run per stage) when enabled.

Stages never call `wandb` directly: they get a `RunLogger` from `build_trainer` (it is `self.logger` in
their LightningModule) and call the helpers below. Everything is written on rank zero only.

Files, per stage (always written, W&B or not):
  RUN/<stage>/logs/metrics.jsonl   every scalar Lightning logs, one JSON object per line ({"step": .., key: ..})
  RUN/<stage>/media/<key>/<step>_<i>.png   images given to `log_images`
  RUN/<stage>/summary.json         final metrics given to `log_summary`
W&B: project/entity/mode from the config's `wandb:` section (where WANDB_MODE, WANDB_PROJECT and WANDB_ENTITY
from the environment override the preset: `config.load_config`), group = run folder name (or `wandb.group`),
job_type = stage, name = "<run>-<stage>", the resolved config as the W&B config; offline by default, the
offline run lands in RUN/wandb/offline-run-*/ (upload later with `wandb sync RUN/wandb/offline-run-*`); an
online run prints its URL. After the dynamic stage, RUN/export/ goes to W&B as an Artifact of type "model" from a
run of its own in the same group (job_type "export": `log_export`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import netrc
import os
import re
import shutil
import socket
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch
from lightning.pytorch.loggers.logger import Logger, rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

from dynapose4d.core.images import to_uint8
from dynapose4d.core.io import write_image, write_json
from dynapose4d.stages.settings import WandbConfig

_ACTIVE: dict[tuple[str, str], RunLogger] = {}  # (run_dir, stage) -> the stage's logger in this process
_SWEEP_ENV = ("WANDB_SWEEP_ID", "WANDB_RUN_ID", "WANDB_SWEEP_PARAM_PATH")


def _scalar(v: Any) -> Any:
    if torch.is_tensor(v):
        return v.detach().float().item() if v.numel() == 1 else v.detach().float().cpu().tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


def _safe(key: str) -> str:
    """A metric key as a relative folder path ('static/render grid' -> 'static/render_grid')."""
    parts = [re.sub(r"[^A-Za-z0-9_.=+-]+", "_", p).strip("._") or "_" for p in key.split("/")]
    return "/".join(parts)


class RunLogger(Logger):
    """The Lightning logger of one stage: the run-folder files above, plus a `WandbLogger` when enabled."""

    def __init__(self, run_dir: str | Path, stage: str, wandb_logger: Any = None) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.stage = stage
        self.wandb = wandb_logger  # lightning WandbLogger or None
        self.last_step = 0

    # Lightning's Logger interface ---------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.stage

    @property
    def version(self) -> str:
        return str(self.wandb.version) if self.wandb is not None else "local"

    @property
    def save_dir(self) -> str:
        return str(self.run_dir / self.stage)

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The stage's W&B run (None when W&B is off)."""
        return self.wandb.experiment if self.wandb is not None else None

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        if self.wandb is not None:
            self.wandb.log_hyperparams(params)

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        metrics = {k: _scalar(v) for k, v in metrics.items()}
        if step is not None:
            self.last_step = int(step)
        path = self.run_dir / self.stage / "logs" / "metrics.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps({"step": self.last_step, **metrics}, default=str) + "\n")
        if self.wandb is not None:
            self.wandb.log_metrics(metrics, step=step)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self.wandb is not None:
            self.wandb.finalize(status)

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        if self.wandb is not None:
            self.wandb.after_save_checkpoint(checkpoint_callback)


def make_logger(run_dir: Path, stage: str, wandb: WandbConfig | None = None, config: dict[str, Any] | None = None,
                is_last: bool = True) -> RunLogger:
    """The stage's logger (one per stage and process; the same object for every Trainer of the stage).

    With `wandb.enabled` and a mode other than "disabled" it carries a WandbLogger (group = run name,
    job_type = stage) whose run starts here on rank zero with the resolved run `config`; `is_last`: the last
    stage of this invocation (under `wandb agent` only it reports into the sweep's run)."""
    run_dir = Path(run_dir)
    key = (str(run_dir.resolve()), stage)
    if key in _ACTIVE:
        return _ACTIVE[key]
    wl = None
    if wandb is not None and wandb.enabled and wandb.mode != "disabled":
        wl = _make_wandb_logger(run_dir, stage, wandb, config or {}, is_last)
    logger = RunLogger(run_dir, stage, wl)
    _ACTIVE[key] = logger
    return logger


ONLINE_TIMEOUT = 5.0  # seconds to reach the W&B server before a run asked to log online logs offline instead


def wandb_mode(wc: WandbConfig, where: Path) -> str:
    """The W&B mode a run started under `where` uses: `wc.mode`, except that "online" becomes "offline", with a
    warning, when no API key is set up or the server cannot be reached (`online_problem`): W&B would stop the
    stage with a traceback (no key) or block for 90 s and then stop it (no network)."""
    if wc.mode != "online":
        return wc.mode
    problem = online_problem(os.environ.get("WANDB_BASE_URL") or _default_base_url(), bool(
        os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE")))
    if problem is None:
        return "online"
    if (problem, str(where)) not in _WARNED:  # once per run folder, not once per stage
        _WARNED.add((problem, str(where)))
        warnings.warn(f"W&B online mode: {problem}; logging offline under {where}/wandb instead (`wandb sync "
                      f"{where}/wandb/offline-run-*` uploads it later)", stacklevel=2)
    return "offline"


_WARNED: set[tuple[str, str]] = set()


@functools.cache
def online_problem(base_url: str, key_in_env: bool) -> str | None:
    """Why W&B cannot log online to `base_url` from here: no API key for it (`key_in_env` False and none in the
    netrc file `wandb login` writes), or its host not reachable within `ONLINE_TIMEOUT` s; None when it can. Asked
    once per process."""
    url = urlparse(base_url)
    host, port = url.hostname or "", url.port or (80 if url.scheme == "http" else 443)
    if not key_in_env:
        try:
            found = netrc.netrc(os.environ.get("NETRC")).authenticators(host)
        except (OSError, netrc.NetrcParseError):
            found = None
        if not found:
            return f"no API key for {host} (`wandb login`, or WANDB_API_KEY)"
    try:
        socket.create_connection((host, port), timeout=ONLINE_TIMEOUT).close()
    except OSError as e:
        return f"cannot reach {host}:{port} ({e.strerror or e})"
    return None


def _default_base_url() -> str:
    import wandb

    return str(wandb.Settings().base_url)


def _make_wandb_logger(run_dir: Path, stage: str, wc: WandbConfig, cfg: dict[str, Any], is_last: bool) -> Any:
    from lightning.pytorch.loggers import WandbLogger

    mode = wandb_mode(wc, run_dir)
    wl = WandbLogger(
        project=wc.project, entity=wc.entity, group=wc.group or run_dir.name, job_type=stage,
        name=f"{run_dir.name}-{stage}", save_dir=str(run_dir), mode=mode, tags=list(wc.tags),
    )
    # Lightning always passes anonymous=None, which wandb >= 0.19 answers with a deprecation warning per run
    getattr(wl, "_wandb_init", {}).pop("anonymous", None)
    if rank_zero_only.rank == 0:
        # Under `wandb agent` only the last stage reports into the sweep's run; the others get runs of their own.
        with _sweep_env(keep=is_last):
            exp = wl.experiment  # start the run now, with the resolved config
        url = getattr(exp, "url", None) if mode == "online" else None
        if url:  # the CLI keeps wandb itself quiet (WANDB_SILENT), so say where the live run is
            print(f"[{stage}] W&B run: {url}", flush=True)
        if cfg and exp is not None:
            exp.config.update({**cfg, "stage": stage, "run_dir": str(run_dir)}, allow_val_change=True)
    return wl


@contextlib.contextmanager
def _sweep_env(keep: bool):
    saved = {k: os.environ[k] for k in _SWEEP_ENV if k in os.environ}
    if not keep:
        for k in saved:
            del os.environ[k]
    try:
        yield
    finally:
        os.environ.update(saved)


def finish_stage(run_dir: str | Path, stage: str) -> None:
    """End the stage's W&B run (so the next stage starts its own) and forget its logger. Rank zero."""
    logger = _ACTIVE.pop((str(Path(run_dir).resolve()), stage), None)
    if logger is None or logger.wandb is None or rank_zero_only.rank != 0:
        return
    exp = getattr(logger.wandb, "_experiment", None)
    if exp is not None:
        exp.finish()


def _parts(logger: Any) -> tuple[RunLogger | None, Any]:
    """(RunLogger or None, WandbLogger or None) behind whatever a stage passes as `logger`."""
    from lightning.pytorch.loggers import WandbLogger

    if isinstance(logger, RunLogger):
        return logger, logger.wandb
    if isinstance(logger, WandbLogger):
        return None, logger
    return None, None


@rank_zero_only
def log_images(logger: Any, key: str, images: list[torch.Tensor | np.ndarray], step: int | None = None,
               captions: list[str] | None = None) -> None:
    """Log float [H, W, 3|4] images in [0, 1]: PNGs under RUN/<stage>/media/<key>/, and to W&B."""
    rl, wl = _parts(logger)
    if rl is not None:
        s = rl.last_step if step is None else int(step)
        for i, img in enumerate(images):
            write_image(Path(rl.save_dir) / "media" / _safe(key) / f"{s:06d}_{i}.png", img)
    if wl is not None:
        kw = {"caption": captions} if captions is not None else {}
        wl.log_image(key=key, images=[to_uint8(i) for i in images], step=step, **kw)


@rank_zero_only
def log_videos(logger: Any, key: str, paths: list[str | Path], step: int | None = None) -> None:
    """Log video files (mp4 or gif). Files outside the run folder are copied to RUN/<stage>/media/<key>/."""
    rl, wl = _parts(logger)
    if rl is not None:
        root = rl.run_dir.resolve()
        for p in paths:
            p = Path(p).resolve()
            if root not in p.parents:
                dst = Path(rl.save_dir) / "media" / _safe(key) / p.name
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(p, dst)
    if wl is not None:
        import wandb

        # through log_metrics, as WandbLogger.log_image does: the step goes in "trainer/global_step", since
        # wandb's own step counts log calls and would drop a smaller explicit step
        wl.log_metrics({key: [wandb.Video(str(p)) for p in paths]},
                       step=step if step is not None else (rl.last_step if rl is not None else None))


@rank_zero_only
def log_summary(logger: Any, metrics: dict[str, float]) -> None:
    """Final metrics: merged into RUN/<stage>/summary.json and the W&B run summary."""
    rl, wl = _parts(logger)
    metrics = {k: _scalar(v) for k, v in metrics.items()}
    if rl is not None:
        path = Path(rl.save_dir) / "summary.json"
        old = json.loads(path.read_text()) if path.is_file() else {}
        write_json(path, {**old, **metrics})
    if wl is not None:
        for k, v in metrics.items():
            wl.experiment.summary[k] = v


def read_stage_logs(run_dir: str | Path, stage: str) -> tuple[dict[str, float], dict[str, Any]]:
    """(last value of every logged scalar, summary.json) of a stage from its run-folder files."""
    d = Path(run_dir) / stage
    last: dict[str, float] = {}
    path = d / "logs" / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill
                continue
            last.update({k: v for k, v in rec.items() if isinstance(v, (int, float)) and k not in ("step", "epoch")})
    summary = json.loads((d / "summary.json").read_text()) if (d / "summary.json").is_file() else {}
    return last, summary


def log_export(run_dir: str | Path, wandb_cfg: Any, export_dir: str | Path, files: list[str],
               metadata: dict[str, Any] | None = None) -> str | None:
    """Log a run's exported files as one W&B Artifact (type "model", name "<run>-export") with the videos among
    them as media, from a W&B run of its own in the pipeline run's group (job_type "export", name
    "<run>-export"; under `wandb agent` it never takes over the sweep's run). Nothing when W&B is off.
    Returns the artifact name, or None."""
    wc = wandb_cfg
    if wc is None or not wc.enabled or wc.mode == "disabled" or rank_zero_only.rank != 0:
        return None
    import wandb

    run_dir, export_dir = Path(run_dir), Path(export_dir)
    with _sweep_env(keep=False):
        run = wandb.init(project=wc.project, entity=wc.entity, group=wc.group or run_dir.name, job_type="export",
                         name=f"{run_dir.name}-export", dir=str(run_dir), mode=wandb_mode(wc, run_dir),
                         tags=list(wc.tags),
                         config={"run_dir": str(run_dir)}, reinit="create_new")
    try:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{run_dir.name}-export")
        art = wandb.Artifact(name=name, type="model", metadata=metadata or {})
        for f in files:
            art.add_file(str(export_dir / f), name=f)
        run.log_artifact(art)
        videos = [f for f in files if f.endswith(".mp4")]
        if videos:
            run.log({f"export/{Path(f).stem}": wandb.Video(str(export_dir / f)) for f in videos})
        return name
    finally:
        run.finish()
