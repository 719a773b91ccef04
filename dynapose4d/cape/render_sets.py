"""Rendering many synthetic objects into a `RenderSet` (O objects x V views, keypoints padded to K), the format of
CAPE's procedural data: the objects are built in DataLoader worker processes and rendered there on CPU, or here
on a CUDA device (gsplat). Which objects and views, and the cache: `dynapose4d.cape.data`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from dynapose4d.core.cameras import Camera, depth_visibility, stack_cameras
from dynapose4d.core.images import premultiplied_over
from dynapose4d.data.synthetic import make_object
from dynapose4d.render import rasterize


@dataclass
class RenderSet:
    """Renders of objects: O objects x V views, keypoints padded to K."""

    images: torch.Tensor  # [O, V, S, S, 4] uint8: RGB over white + alpha
    keypoints: torch.Tensor  # [O, V, K, 2] float32 pixels
    visible: torch.Tensor  # [O, V, K] bool: inside the image and not hidden
    inside: torch.Tensor  # [O, V, K] bool: inside the image
    num_keypoints: torch.Tensor  # [O] int64
    adjacency: torch.Tensor  # [O, K, K] bool skeleton (symmetric)
    meta: torch.Tensor  # [O, V, 3] float32: frame, elevation, azimuth offset (eval: offset from the support)
    templates: list[str]
    seeds: list[int]

    @property
    def size(self) -> int:
        return int(self.images.shape[2])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def render_object_views(obj: Any, frame: float, cameras: list[Camera], size: int, device: torch.device
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Render a synthetic object at `frame` into square cameras on `device`.

    Returns rgba [C, S, S, 4] (RGB over white, alpha) on CPU, keypoints [C, N, 2] px, visible [C, N] and inside
    [C, N] bool. Visibility follows `dynapose4d.data.synthetic.render_views` (depth test with the keypoint's
    own-surface bound)."""
    g = {k: v.to(device) for k, v in obj.gaussians(frame).items()}
    viewmats, Ks = stack_cameras(list(cameras), size, size)
    with torch.no_grad():
        render, alpha, _ = rasterize(g["means"], g["quats"], g["scales"], g["opacities"], g["colors"],
                                     viewmats.to(device), Ks.to(device), size, size, render_mode="RGB+ED")
    render, alpha = render.float().cpu(), alpha.float().cpu()
    prem, ed, a = render[..., :3], render[..., 3], alpha[..., 0]
    rgba = torch.cat([premultiplied_over(prem, a[..., None]).clamp(0, 1), a[..., None]], -1)
    kp3 = obj.keypoints3d(frame).double()  # [N, 3]
    tol = obj.keypoint_radii.double() * 1.1 + 0.02
    kps, vis, ins = depth_visibility(kp3, viewmats.double(), Ks.double(), ed, a, size, size, tol)
    return rgba, kps, vis, ins


def _to_u8(rgba: torch.Tensor) -> torch.Tensor:
    return (rgba.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8)


def _compact(views: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """A render's images as uint8 right away (a render set holds many)."""
    return (_to_u8(views[0]), *views[1:])


class _Objects(Dataset):
    """Builds (and on CPU renders) object i of a plan, in DataLoader worker processes."""

    def __init__(self, plan_fn: Any, cfg: Any, n: int, render: bool) -> None:
        self.plan_fn, self.cfg, self.n, self.render = plan_fn, cfg, n, render

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        torch.set_num_threads(1)
        template, seed, plan = self.plan_fn(self.cfg, i)
        obj = make_object(template, seed, self.cfg.num_frames)
        out: dict[str, Any] = {"template": template, "seed": seed, "obj": None, "plan": plan,
                               "skeleton": obj.skeleton, "n": obj.num_keypoints}
        if self.render:
            out["views"] = [_compact(render_object_views(obj, f, cams, self.cfg.size, torch.device("cpu")))
                            for f, cams in plan]
        else:
            out["obj"] = obj
        return out


def render_objects(plan_fn: Any, cfg: Any, n: int, eval_offsets: bool) -> RenderSet:
    """Render the `n` objects of a plan (`plan_fn(cfg, i) -> (template, seed, [(frame, cameras)])`) into a
    RenderSet: built in `cfg.workers` DataLoader processes, rendered there on CPU or here on `cfg.render_device`.
    `eval_offsets`: meta holds each camera's azimuth offset from the first (the support) instead of the azimuth."""
    device = _resolve_device(cfg.render_device)
    on_cpu = device.type == "cpu"
    loader = DataLoader(_Objects(plan_fn, cfg, n, render=on_cpu), batch_size=None, shuffle=False,
                        num_workers=cfg.workers, collate_fn=lambda x: x)
    items = []
    for item in loader:
        if not on_cpu:
            obj = item.pop("obj")
            item["views"] = [_compact(render_object_views(obj, f, cams, cfg.size, device)) for f, cams in item["plan"]]
        items.append(item)
    K = max(it["n"] for it in items)
    V = sum(len(cams) for _, cams in items[0]["plan"])
    S = cfg.size
    images = torch.zeros(n, V, S, S, 4, dtype=torch.uint8)
    kps = torch.zeros(n, V, K, 2)
    vis = torch.zeros(n, V, K, dtype=torch.bool)
    ins = torch.zeros(n, V, K, dtype=torch.bool)
    adj = torch.zeros(n, K, K, dtype=torch.bool)
    meta = torch.zeros(n, V, 3)
    for o, it in enumerate(items):
        N = it["n"]
        for i, j in it["skeleton"]:
            adj[o, i, j] = adj[o, j, i] = True
        v = 0
        base = it["plan"][0][1][0].azimuth
        for (frame, cams), (rgba, k, vi, ii) in zip(it["plan"], it["views"]):
            c = len(cams)
            images[o, v:v + c] = rgba
            kps[o, v:v + c, :N] = k
            vis[o, v:v + c, :N] = vi
            ins[o, v:v + c, :N] = ii
            for ci, cam in enumerate(cams):
                off = cam.azimuth - base if eval_offsets else cam.azimuth
                meta[o, v + ci] = torch.tensor([frame, cam.elevation, off])
            v += c
    return RenderSet(images, kps, vis, ins, torch.tensor([it["n"] for it in items]), adj, meta,
                     [it["template"] for it in items], [int(it["seed"]) for it in items])
