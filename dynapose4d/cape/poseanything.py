"""The official PoseAnything models (1-shot SwinV2-T "tiny" and SwinV2-S "small", ported in
`dynapose4d.cape.poseanything_model`) behind dynapose4d's CAPE API: reading their mmcv checkpoint files
(`load_poseanything`; numpy objects in their meta are allow-listed for weights_only loading) and the test-time
data path.

Test-time data path (`prepare_support` / `predict_prepared`, used by `dynapose4d.cape.predict` when the
checkpoint is an official PoseAnything file): crop a square of 1.25x the object box's longer side around the
box centre (box = the image's non-white pixels unless given), warp it to 256x256 bilinearly with a black border,
ImageNet-normalise, run, map the last layer back to image pixels. Differentiable with respect to the query images
(the box itself is not).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from dynapose4d.cape.poseanything_model import INPUT_SIZE, PoseAnything, full_precision, skeleton_adjacency
from dynapose4d.core.errors import InputError, MissingWeightsError
from dynapose4d.core.images import IMAGENET_MEAN, IMAGENET_STD

CROP_PADDING = 1.25  # the test-time crop is this x the object box's longer side
OFFICIAL_WEIGHTS_HINT = ("download the official 1-shot split-1 Tiny or Small checkpoint from the Google Drive links "
                         "in github.com/orhir/PoseAnything's README (configs/1shots/graph_split1_config.py = Tiny, "
                         "configs/1shot-swin/graph_split1_config.py = Small)")


# ------------------------------------------------------------------------------------------------ checkpoints


def _allowed_numpy_globals(names: Sequence[str]) -> list[Any] | None:
    """(object, name) pairs for numpy scalars / dtypes / arrays named in a checkpoint's pickle (mmcv's meta holds
    numpy values); None when any name is something else."""
    import importlib
    import warnings

    out = []
    for name in names:
        mod, _, attr = name.rpartition(".")
        if mod.split(".")[0] != "numpy" or not (attr in ("scalar", "dtype", "_reconstruct", "ndarray")
                                                or attr.endswith("DType")):
            return None
        obj = None
        for m in (mod, mod.replace("numpy.core", "numpy._core")):  # files written with numpy 1.x name numpy.core
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    obj = getattr(importlib.import_module(m), attr)
                break
            except (ImportError, AttributeError):
                continue
        if obj is None:
            return None
        out.append((obj, name))
    if any(name.endswith(".dtype") for name in names):  # a dtype unpickles as an instance of its DType class
        import numpy.dtypes

        out += [c for n in dir(numpy.dtypes) if n.endswith("DType") and isinstance(c := getattr(numpy.dtypes, n), type)]
    return out


def read_checkpoint_file(path: str | Path, trusted: bool = False) -> Any:
    """torch.load a checkpoint on CPU with weights_only=True; numpy scalars, dtypes and arrays in it (mmcv's meta)
    are allow-listed. Other objects raise a one-line InputError unless `trusted` (then full unpickling)."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass
    except Exception as e:  # noqa: BLE001 - any unreadable file is one line for the user
        msg = str(e).splitlines()[0][:120] if str(e) else ""
        raise InputError(f"{path}: unreadable checkpoint ({type(e).__name__}: {msg})") from None
    try:
        names = list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # noqa: BLE001 - e.g. the legacy (non-zip) format
        names = []
    allowed = _allowed_numpy_globals(names) if names else None
    if allowed is not None:
        with torch.serialization.safe_globals(allowed):
            try:
                return torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError:
                pass
    if trusted:
        return torch.load(path, map_location="cpu", weights_only=False)
    others = ", ".join(names[:4]) or "unknown objects"
    raise InputError(f"{path}: torch.load(weights_only=True) refuses objects in it ({others}); load it with "
                     "trusted=True only if you trust the file")


def is_poseanything_state(data: Any) -> bool:
    """Whether a loaded checkpoint holds an mmcv PoseAnything state dict (possibly under `module.`)."""
    sd = data.get("state_dict", data) if isinstance(data, dict) else None
    return isinstance(sd, dict) and any(str(k).removeprefix("module.") == "backbone.patch_embed.proj.weight"
                                        for k in sd)


def poseanything_from_checkpoint(data: Any, path: str | Path) -> PoseAnything:
    """A PoseAnything (eval mode) from a loaded official checkpoint: {"meta", "state_dict", ...} or a bare state
    dict; `module.` prefixes are stripped; the variant follows the depth of the third SwinV2 stage (6 = tiny,
    18 = small); strict loading (only the buffers the modules compute themselves may be absent)."""
    sd = data.get("state_dict", data) if isinstance(data, dict) else None
    if not isinstance(sd, dict):
        raise InputError(f"{path}: not a PoseAnything checkpoint (no state_dict)")
    sd = {str(k).removeprefix("module."): v for k, v in sd.items()}
    w = sd.get("backbone.patch_embed.proj.weight")
    if not isinstance(w, torch.Tensor):
        raise InputError(f"{path}: not a PoseAnything checkpoint (no backbone.patch_embed.proj.weight)")
    if w.shape[0] == 128:
        raise InputError(f"{path}: this is the older SwinV2-B PoseAnything checkpoint (before 2024-02-02, e.g. "
                         "demo_b.pth), which this port does not build; use the 1-shot split-1 Tiny "
                         "(configs/1shots/graph_split1_config.py) or Small (configs/1shot-swin/graph_split1_config.py) "
                         "file from github.com/orhir/PoseAnything's README")
    blocks = {int(k.split(".")[4]) for k in sd if k.startswith("backbone.layers.2.blocks.")}
    depth = max(blocks) + 1 if blocks else 0
    variant = {6: "tiny", 18: "small"}.get(depth)
    if w.shape[0] != 96 or variant is None:
        raise InputError(f"{path}: unknown PoseAnything backbone (embed {w.shape[0]}, stage-3 depth {depth}); "
                         "expected SwinV2-T (96, 6) or SwinV2-S (96, 18)")
    model = PoseAnything(variant)
    own = model.state_dict()
    computed = ("relative_coords_table", "relative_position_index", "attn_mask")
    for k in own:
        if k not in sd and k.rsplit(".", 1)[-1] in computed:
            sd[k] = own[k]
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        msg = " ".join(str(e).split())
        raise InputError(f"{path}: does not match PoseAnything-{variant} ({msg[:200]})") from None
    return model.eval()


def load_poseanything(path: str | Path, trusted: bool = False) -> PoseAnything:
    """An official PoseAnything checkpoint (1-shot Tiny or Small, mmcv format) as a PoseAnything in eval mode on CPU.

    MissingWeightsError when the file is absent; InputError when it is another model (e.g. the older SwinV2-B
    file) or unreadable with weights_only=True (numpy objects in its meta are allow-listed; `trusted` unpickles
    anything else)."""
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"{path}: PoseAnything checkpoint not found; {OFFICIAL_WEIGHTS_HINT}")
    return poseanything_from_checkpoint(read_checkpoint_file(path, trusted), path)


# ------------------------------------------------------------------------------------------------ test-time path


def object_boxes(images: torch.Tensor, threshold: float = 0.02) -> torch.Tensor:
    """Boxes [B, 4] (x, y, w, h; pixel centres at integers, w = last - first column + 1) of the pixels that are not
    white (any channel below 1 - threshold) in images [B, 3, H, W] in [0, 1]; the whole image when all white."""
    with torch.no_grad():
        fg = (images < 1.0 - threshold).any(1)  # [B, H, W]
        B, H, W = fg.shape
        out = torch.tensor([0.0, 0.0, W, H]).repeat(B, 1)
        for b in range(B):
            rows, cols = fg[b].any(1).nonzero().flatten(), fg[b].any(0).nonzero().flatten()
            if rows.numel():
                x0, x1, y0, y1 = int(cols[0]), int(cols[-1]), int(rows[0]), int(rows[-1])
                out[b] = torch.tensor([x0, y0, x1 - x0 + 1, y1 - y0 + 1], dtype=torch.float32)
    return out


@dataclass
class CropFrame:
    """The square window PoseAnything sees of each image: centre [B, 2] and side [B] in image pixels (pixel centres
    at integers); it maps to the 256 x 256 input with x_in = (x - cx) 256 / side + 128."""

    centre: torch.Tensor  # [B, 2]
    side: torch.Tensor  # [B]

    @staticmethod
    def from_boxes(boxes: torch.Tensor, width: int, height: int, padding: float = CROP_PADDING) -> CropFrame:
        """MP-100's test crop of boxes [B, 4] (x, y, w, h): the box clipped to the image (x2 = min(W - 1, x + w - 1)),
        centred, its shorter side enlarged to the longer, times `padding`."""
        b = torch.as_tensor(boxes, dtype=torch.float64).detach().cpu().reshape(-1, 4)
        x1, y1 = b[:, 0], b[:, 1]
        x2 = torch.minimum(torch.full_like(x1, width - 1.0), x1 + (b[:, 2] - 1).clamp(min=0))
        y2 = torch.minimum(torch.full_like(y1, height - 1.0), y1 + (b[:, 3] - 1).clamp(min=0))
        w, h = x2 - x1, y2 - y1
        side = (torch.maximum(w, h) * padding).clamp(min=1.0)
        return CropFrame(torch.stack([x1 + w / 2, y1 + h / 2], -1).float(), side.float())

    def to(self, device: torch.device) -> CropFrame:
        return CropFrame(self.centre.to(device), self.side.to(device))

    def to_input(self, points: torch.Tensor) -> torch.Tensor:
        """Image px [B, N, 2] -> 256-px input coordinates."""
        c, s = self.centre.to(points), self.side.to(points)
        return (points - c[:, None]) * (INPUT_SIZE / s)[:, None, None] + INPUT_SIZE / 2

    def from_input(self, points: torch.Tensor) -> torch.Tensor:
        """256-px input coordinates [B, N, 2] -> image px."""
        c, s = self.centre.to(points), self.side.to(points)
        return points * (s / INPUT_SIZE)[:, None, None] + c[:, None] - (s / 2)[:, None, None]

    def warp(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] in [0, 1] -> [B, 3, 256, 256]: bilinear, black (0) outside the image;
        differentiable with respect to the images."""
        B, _, H, W = images.shape
        u = torch.arange(INPUT_SIZE, device=images.device, dtype=images.dtype)
        grid_in = torch.stack(torch.meshgrid(u, u, indexing="xy"), -1).reshape(1, -1, 2).expand(B, -1, -1)
        src = self.from_input(grid_in)  # [B, S*S, 2] image px
        norm = torch.tensor([2.0 / max(W - 1, 1), 2.0 / max(H - 1, 1)], device=images.device, dtype=images.dtype)
        grid = (src * norm - 1).view(B, INPUT_SIZE, INPUT_SIZE, 2)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """ImageNet normalisation of RGB [B, 3, H, W] in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - mean) / std


@dataclass
class PoseAnythingSupport:
    """A support image's keypoint tokens for one PoseAnything model (the query-independent half of `predict`)."""

    model: PoseAnything
    tokens: torch.Tensor  # [1, N, 256] support keypoint tokens (after query_proj)
    valid: torch.Tensor  # [1, N] bool, visible in the support and on its heatmap
    adjacency: torch.Tensor  # [1, N, N] 0/1 skeleton


def prepare_support(model: PoseAnything, support_image: torch.Tensor, support_keypoints: torch.Tensor,
                    skeleton: Any, support_mask: torch.Tensor | None = None,
                    box: torch.Tensor | Sequence[float] | None = None) -> PoseAnythingSupport:
    """support_image [3, H, W] in [0, 1] over white, support_keypoints [N, 2] px (pixel centres at +0.5), skeleton
    0-based pairs, support_mask [N] bool (default all visible), box (x, y, w, h) px (default: the non-white
    pixels) -> the support's tokens, on the model's device."""
    p = next(model.parameters())
    dev, dt = p.device, p.dtype
    img = support_image[None].to(dev, dt)
    H, W = img.shape[-2:]
    N = support_keypoints.shape[0]
    bx = object_boxes(img) if box is None else torch.as_tensor(box, dtype=torch.float32).reshape(1, 4)
    frame = CropFrame.from_boxes(bx, W, H).to(dev)
    kp = frame.to_input(torch.as_tensor(support_keypoints, dtype=dt, device=dev)[None] - 0.5)  # [1, N, 2] input px
    vis = torch.ones(1, N, device=dev) if support_mask is None else \
        torch.as_tensor(support_mask, device=dev).reshape(1, N).to(dt)
    tokens, valid = model.support_tokens(normalize_images(frame.warp(img)), kp, vis)
    return PoseAnythingSupport(model, tokens, valid, skeleton_adjacency(skeleton, 1, N, dev))


def predict_prepared(support: PoseAnythingSupport, query_images: torch.Tensor,
                     boxes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """query_images [B, 3, H, W] in [0, 1] over white (boxes [B, 4] x, y, w, h px; default their non-white pixels)
    -> (points [B, N, 2] px, pixel centres at +0.5; confidence [B, N] = 1: PoseAnything outputs none).
    Differentiable with respect to the query images."""
    model = support.model
    p = next(model.parameters())
    q = query_images.to(p.device, p.dtype)
    B, _, H, W = q.shape
    bx = object_boxes(q) if boxes is None else torch.as_tensor(boxes, dtype=torch.float32).reshape(B, 4)
    frame = CropFrame.from_boxes(bx, W, H).to(p.device)
    out = model.forward_tokens(normalize_images(frame.warp(q)), support.tokens, support.valid, support.adjacency)
    pts = frame.from_input(full_precision(out[-1]) * INPUT_SIZE) + 0.5  # [B, N, 2] image px
    return pts, torch.ones(pts.shape[:2], device=pts.device, dtype=pts.dtype)
