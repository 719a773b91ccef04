"""Evaluation of a CAPE model on the held-out procedural protocol, beside the trivial baseline.

Protocol (`dynapose4d.cape.data.EvalSetConfig`): objects from seeds never trained on (>= 10^6), the support is
frame 0 seen from a random azimuth, the queries are every frame seen from views 30-90 degrees of azimuth
away (the support's own view excluded). PCK@t counts the query keypoints that are visible (inside the image
and not hidden) whose error is below t x max(w, h) of the query keypoints' bounding box (as MP-100, whose
box is the object's); the trivial baseline copies the support keypoints unchanged.
"""

from __future__ import annotations

from typing import Any

import torch

from dynapose4d.cape import letterbox, predict_prepared, prepare_support
from dynapose4d.cape.model import CAPEModel
from dynapose4d.cape.render_sets import RenderSet
from dynapose4d.core.cameras import load_cameras, project, read_json
from dynapose4d.core.images import over_background
from dynapose4d.core.io import read_image
from dynapose4d.evaluation.gt import scale_gt_frames
from dynapose4d.evaluation.metrics import bbox_size, pck

THRESHOLDS = (0.1, 0.2)


@torch.no_grad()
def predict_render_set(model: CAPEModel, rs: RenderSet, batch: int = 64) -> torch.Tensor:
    """Predictions [O, V-1, K, 2] (pixels) of every query view (views 1..) from each object's view 0."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    S = model.cfg.input_size
    O, V, K = rs.keypoints.shape[:3]
    preds = torch.zeros(O, V - 1, K, 2)
    for o in range(O):
        n = int(rs.num_keypoints[o])
        imgs = rs.images[o].float().permute(0, 3, 1, 2)[:, :3] / 255.0  # [V, 3, s, s]
        imgs, scale, _ = letterbox(imgs, S)
        sup = imgs[:1].to(dev)
        kp = (rs.keypoints[o, 0, :n] * scale / S)[None].to(dev)
        mask = rs.inside[o, 0, :n][None].to(dev)
        if not mask.any():
            mask = torch.ones_like(mask)
        adj = rs.adjacency[o, :n, :n][None].float().to(dev)
        tokens = model.support_tokens(sup, kp, mask)
        for i in range(1, V, batch):
            q = imgs[i:i + batch].to(dev)
            out = model.forward_tokens(tokens, mask, adj, q)
            preds[o, i - 1:i - 1 + q.shape[0], :n] = (out["points"][-1] * S / scale).float().cpu()
    model.train(was_training)
    return preds


def score(preds: torch.Tensor, rs: RenderSet) -> dict[str, Any]:
    """PCK@0.1/0.2 of predictions [O, V-1, K, 2] and of the trivial baseline, overall and per |azimuth offset|."""
    gt = rs.keypoints[:, 1:]  # [O, Q, K, 2]
    vis = rs.visible[:, 1:] & rs.inside[:, :1]  # visible in the query, inside the support image
    norm = bbox_size(gt, rs.inside[:, 1:]).clamp(min=1.0)  # [O, Q]
    trivial = rs.keypoints[:, :1].expand_as(gt)
    offsets = rs.meta[:, 1:, 2].abs().round()  # [O, Q]
    groups: dict[str, torch.Tensor] = {"all": torch.ones_like(offsets, dtype=torch.bool)}
    for off in sorted(set(offsets.flatten().tolist())):
        groups[f"{off:g}"] = offsets == off
    res: dict[str, Any] = {}
    for name, sel in groups.items():
        v = vis & sel[..., None]
        row = {}
        for t in THRESHOLDS:
            row[f"pck@{t:g}"] = pck(preds, gt, norm, t, v)
            row[f"trivial_pck@{t:g}"] = pck(trivial, gt, norm, t, v)
        row["keypoints"] = int(v.sum())
        res[name] = row
    return res


def evaluate(model: CAPEModel, rs: RenderSet, batch: int = 64) -> dict[str, Any]:
    """`score(predict_render_set(model, rs), rs)`: {"all": {...}, "30": {...}, ...}."""
    return score(predict_render_set(model, rs, batch), rs)


def format_table(res: dict[str, Any], title: str = "") -> str:
    """A text table: rows = azimuth offset groups, columns = PCK@0.1/0.2 of the trivial baseline and the model."""
    lines = [title] if title else []
    lines.append(f"{'az offset':>10} {'keypoints':>9} {'trivial@0.1':>11} {'model@0.1':>9} {'trivial@0.2':>11} "
                 f"{'model@0.2':>9}")
    for name, r in res.items():
        lines.append(f"{name:>10} {r['keypoints']:>9d} {r['trivial_pck@0.1']:>11.3f} {r['pck@0.1']:>9.3f} "
                     f"{r['trivial_pck@0.2']:>11.3f} {r['pck@0.2']:>9.3f}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ scene gt


def scene_gt_queries(scene: Any) -> list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per gt camera: (name, RGB frames over white [T, 3, H, W], gt keypoints [T, N, 2] px (gt/keypoints3d.json
    projected with gt/cameras.json), visible [T, N] (gt/keypoints2d.json's flags when present, else inside the
    image), inside [T, N]). Frames longer than the scene's `gt_max_size` are scaled down to it (the support image's
    scale, so the trivial baseline's copied keypoints are in the same pixels)."""
    gt = scene.gt_dir
    cams = load_cameras(gt / "cameras.json")
    kp3 = torch.tensor(read_json(gt / "keypoints3d.json")["frames"], dtype=torch.float64)  # [T, N, 3]
    kp2d_path = gt / "keypoints2d.json"
    kp2d = read_json(kp2d_path) if kp2d_path.is_file() else {}
    out = []
    for cam in cams:
        files = sorted((gt / cam.name).glob("*.png"))[: kp3.shape[0]]
        if not files:
            continue
        frames = torch.stack([read_image(f) for f in files])  # [T, H, W, C]
        if frames.shape[-1] == 3:
            frames = torch.cat([frames, torch.ones_like(frames[..., :1])], -1)
        frames = scale_gt_frames(frames, getattr(scene, "gt_max_size", 0))  # at the run's size, as the support
        T, H, W = frames.shape[:3]
        px, depth = project(kp3[:T], cam.viewmat(torch.float64), cam.K(W, H, torch.float64))  # [T, N, 2]
        inside = (px[..., 0] >= 0) & (px[..., 0] < W) & (px[..., 1] >= 0) & (px[..., 1] < H) & (depth > 0)
        vis = inside
        if cam.name in kp2d and "visible" in kp2d[cam.name]:
            vis = inside & torch.tensor(kp2d[cam.name]["visible"], dtype=torch.bool)[:T]
        out.append((cam.name, over_background(frames, 1.0).permute(0, 3, 1, 2).contiguous(), px.float(), vis, inside))
    return out


@torch.no_grad()
def evaluate_scene_gt(scene: Any, models: dict[str, CAPEModel]) -> dict[str, Any]:
    """PCK@0.1/0.2 on a scene's gt cameras over all frames, support = the scene image and keypoints, for each
    model and the trivial baseline (support keypoints copied). {"all": {...}, <camera>: {...}}; keys
    "<model>_pck@t", "trivial_pck@t", "keypoints"."""
    support = over_background(scene.image, 1.0).permute(2, 0, 1)
    prepared = {name: prepare_support(support, scene.keypoints, scene.skeleton, checkpoint=model.eval())
                for name, model in models.items()}
    rows: dict[str, dict[str, Any]] = {}
    acc: dict[str, list[torch.Tensor]] = {"gt": [], "vis": [], "norm": [], "trivial": []}
    for name in models:
        acc[name] = []
    for cam, imgs, gt, vis, inside in scene_gt_queries(scene):
        norm = bbox_size(gt, inside).clamp(min=1.0)
        preds = {}
        for mname, sup in prepared.items():
            preds[mname] = torch.cat([predict_prepared(sup, imgs[i:i + 16])[0].cpu()
                                      for i in range(0, imgs.shape[0], 16)])
        preds["trivial"] = scene.keypoints.float()[None].expand_as(gt)
        row: dict[str, Any] = {"keypoints": int(vis.sum())}
        for mname, p in preds.items():
            for t in THRESHOLDS:
                row[f"{mname}_pck@{t:g}"] = pck(p, gt, norm, t, vis)
            acc[mname].append(p)
        rows[cam] = row
        acc["gt"].append(gt)
        acc["vis"].append(vis)
        acc["norm"].append(norm)
    if not acc["gt"]:
        return {}
    gt, vis, norm = torch.cat(acc["gt"]), torch.cat(acc["vis"]), torch.cat(acc["norm"])
    allrow: dict[str, Any] = {"keypoints": int(vis.sum())}
    for mname in ["trivial", *models]:
        p = torch.cat(acc[mname])
        for t in THRESHOLDS:
            allrow[f"{mname}_pck@{t:g}"] = pck(p, gt, norm, t, vis)
    return {"all": allrow, **rows}


def format_scene_table(res: dict[str, Any]) -> str:
    """Rows = gt cameras (+ all); columns = PCK@0.1 and PCK@0.2 of the trivial baseline and each model."""
    if not res:
        return "(no gt)"
    found = dict.fromkeys(k.rsplit("_pck@", 1)[0] for k in res["all"] if "_pck@" in k)  # in the results' order
    names = sorted(found, key=lambda n: n != "trivial")  # (a set here gave a column order that changed per run)
    cols = [f"{n}@{t:g}" for t in THRESHOLDS for n in names]
    lines = [f"{'camera':>12} {'kps':>5} " + " ".join(f"{c:>14}" for c in cols)]
    for cam, r in res.items():
        vals = [r[f"{n}_pck@{t:g}"] for t in THRESHOLDS for n in names]
        lines.append(f"{cam:>12} {r['keypoints']:>5d} " + " ".join(f"{v:>14.3f}" for v in vals))
    return "\n".join(lines)
