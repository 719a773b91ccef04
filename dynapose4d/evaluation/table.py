"""Presenting a score: the markdown metrics table of `dynapose4d eval` / `dynapose4d experiment`, and the flat
{"group/metric": value} dict the dynamic stage logs.

Owns the rows of the table (`TABLE_ROWS`: which metric sits beside which baseline) and their formatting; the
numbers come from `dynapose4d.evaluation.score.score_4d` (its {"mean", "novel", "per_view"}) plus the header
fields `dynapose4d.pipeline.evaluate.evaluate_run` adds (run, gt, stage, protocol, cameras, frames, lpips,
keypoints). Nothing here renders or reads files.
"""

from __future__ import annotations

from typing import Any

#: (row label, metric key, baseline key, higher is better)
TABLE_ROWS: tuple[tuple[str, str, str, bool], ...] = (
    ("PSNR (dB)", "psnr", "psnr_no_motion", True),
    ("SSIM", "ssim", "ssim_no_motion", True),
    ("LPIPS", "lpips", "lpips_no_motion", False),
    ("PSNR moving pixels (dB)", "psnr_moving", "psnr_moving_no_motion", True),
    ("PSNR (dB) vs the run's frame 0 held still", "psnr", "psnr_held", True),
    ("PSNR moving pixels (dB) vs the run's frame 0 held still", "psnr_moving", "psnr_moving_held", True),
    ("PCK@0.2 (projected tracks)", "pck", "pck_no_motion", True),
    ("3D keypoint error", "kp_error_3d", "kp_error_3d_no_motion", False),
    ("jitter (baseline: gt tracks)", "jitter", "jitter_gt", False),
)


def _fmt(v: Any) -> str:
    return "–" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))


def metrics_table(result: dict[str, Any]) -> str:
    """Markdown table: metric | run | no-motion baseline | difference, over all views and over novel views, of an
    `evaluate_run` result (the score's "mean" and "novel" plus its header fields)."""
    lines = [f"Metrics of {result['run']} ({result['stage']} stage) against {result['gt']}, protocol "
             f"{result['protocol']}: {len(result['cameras'])} views x {result['frames']} frames, white background.",
             "Baseline: gt frame 0 held still (no motion), unless the row names another.",
             "", "| metric | run | baseline | run - baseline |", "|---|---|---|---|"]
    for label, key, base, higher in TABLE_ROWS:
        label = f"{label} {'↑' if higher else '↓'}"
        for scope, title in (("mean", "all views"), ("novel", "novel views")):
            d = result[scope]
            if scope == "novel" and (key not in d or key.startswith(("kp_", "jitter"))):
                continue
            if key == "lpips" and key not in d:
                if scope == "mean":
                    lines.append(f"| {label} | unavailable | unavailable | – |")
                continue
            if key not in d:
                if scope == "mean":
                    lines.append(f"| {label} | unavailable | – | – |")
                continue
            a, b = d.get(key), d.get(base)
            diff = a - b if isinstance(a, float) and isinstance(b, float) else None
            name = label if key.startswith(("kp_", "jitter")) else f"{label}, {title}"
            lines.append(f"| {name} | {_fmt(a)} | {_fmt(b)} | {_fmt(diff)} |")
    if result["lpips"] != "available":
        lines.append("\nLPIPS: " + result["lpips"] + ".")
    if result["keypoints"] != "available":
        lines.append("Keypoint metrics: " + result["keypoints"] + ".")
    return "\n".join(lines) + "\n"


def flat_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """{"mean/psnr": …, "novel/psnr": …, "az090/psnr": …} of a score's {"mean", "novel", "per_view"} (for logs
    and tables); None values are left out, and so is each camera's "novel" flag."""
    out = {f"{g}/{k}": v for g in ("mean", "novel") for k, v in metrics.get(g, {}).items() if v is not None}
    for cam, v in metrics.get("per_view", {}).items():
        out.update({f"{cam}/{k}": x for k, x in v.items() if x is not None and k != "novel"})
    return out
