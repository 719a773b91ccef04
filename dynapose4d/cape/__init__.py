"""Category-agnostic pose estimation (CAPE): a PoseAnything-style graph model, its checkpoints and inference; the
official PoseAnything models (`dynapose4d.cape.poseanything`) behind the same API.

  - `predict(support_image, support_keypoints, skeleton, query_images, checkpoint=None) -> (points, confidence)`;
    `prepare_support` + `predict_prepared` split it, for one support against many query batches. `checkpoint`
    may be one of our CAPE checkpoints, an official PoseAnything file (1-shot Tiny / Small), a pointer to one
    (`save_poseanything_pointer`), or a loaded model
  - `load_cape(path) -> CAPEModel` (eval mode), `save_cape(path, model, ...)`, `SHIPPED_CHECKPOINT`;
    `load_keypoint_model(path) -> CAPEModel | PoseAnything` reads any of the files above
  - model: `dynapose4d.cape.model`; procedural data: `.data`; MP-100: `.mp100`; evaluation: `.evaluation`;
    training (`dynapose4d train-cape`): `.train`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from dynapose4d.cape import poseanything as pa
from dynapose4d.cape.model import CAPEModel, CAPEModelConfig, skeleton_adjacency
from dynapose4d.cape.poseanything import PoseAnythingSupport
from dynapose4d.cape.poseanything_model import PoseAnything
from dynapose4d.core.errors import InputError, MissingWeightsError
from dynapose4d.core.io import save_checkpoint

SHIPPED_CHECKPOINT = Path(__file__).resolve().parents[1] / "assets" / "cape_small.ckpt"
CHECKPOINT_FORMAT = "dynapose4d-cape"
MAX_SUPPORT_KEYPOINTS = 100  # the most support keypoints `predict` takes (a scene's keypoints file is held to it)
POSEANYTHING_ARCH = "poseanything"  # "arch" of a pointer checkpoint (our format) naming an official file
KeypointModel = CAPEModel | PoseAnything
_cache: dict[tuple[str, float], KeypointModel] = {}

__all__ = ["CAPEModel", "CAPEModelConfig", "SHIPPED_CHECKPOINT", "load_cape", "save_cape", "predict",
           "prepare_support", "predict_prepared", "PreparedSupport", "read_checkpoint_info", "letterbox",
           "PoseAnything", "load_keypoint_model", "save_poseanything_pointer"]


# ------------------------------------------------------------------------------------------------ checkpoints


def save_cape(path: str | Path, model: CAPEModel, extra: dict[str, Any] | None = None) -> Path:
    """Write a CAPE checkpoint atomically: {"format", "model_config", "state_dict", **extra} (e.g. "config",
    "metrics"). Float32 weights; the small preset is ~8 MB."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": CHECKPOINT_FORMAT, "version": 1, "model_config": asdict(model.cfg),
            "state_dict": {k: v.detach().float().cpu().clone() for k, v in model.state_dict().items()},
            **(extra or {})}
    return save_checkpoint(path, data)


def save_poseanything_pointer(path: str | Path, checkpoint: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write a small CAPE checkpoint that names an official PoseAnything file instead of holding weights:
    {"format", "version", "arch": "poseanything", "checkpoint": absolute path, **extra}; `load_keypoint_model`
    follows it."""
    data = {"format": CHECKPOINT_FORMAT, "version": 1, "arch": POSEANYTHING_ARCH,
            "checkpoint": str(Path(checkpoint).resolve()), **(extra or {})}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(path, data)


def _missing(path: Path) -> MissingWeightsError:
    if path.resolve() == SHIPPED_CHECKPOINT:
        return MissingWeightsError(f"{path}: the shipped CAPE checkpoint is missing; train it with "
                                   f"`make train-cape` (or `dynapose4d train-cape --out {path}`)")
    return MissingWeightsError(f"{path}: CAPE checkpoint not found")


def _read_any(path: str | Path) -> Any:
    """A checkpoint file's content, loaded with weights_only=True (numpy values allow-listed)."""
    path = Path(path)
    if not path.is_file():
        raise _missing(path)
    return pa.read_checkpoint_file(path)


def _read(path: str | Path) -> dict[str, Any]:
    data = _read_any(path)
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path}: not a dynapose4d CAPE checkpoint")
    return data


def read_checkpoint_info(path: str | Path) -> dict[str, Any]:
    """Everything in a checkpoint except the weights (model_config, config, metrics, ...)."""
    return {k: v for k, v in _read(path).items() if k != "state_dict"}


def load_cape(path: str | Path | None = None) -> CAPEModel:
    """A CAPEModel from a checkpoint (None = the shipped one), in eval mode on CPU.

    Raises MissingWeightsError when the file is absent, InputError when it is not a CAPE checkpoint."""
    path = Path(path) if path is not None else SHIPPED_CHECKPOINT
    return _cape_from(_read(path), path)


def _cape_from(data: dict[str, Any], path: Path) -> CAPEModel:
    if data.get("arch") == POSEANYTHING_ARCH:
        raise InputError(f"{path}: points to the PoseAnything checkpoint {data.get('checkpoint')}; load it with "
                         "dynapose4d.cape.load_keypoint_model")
    try:
        model = CAPEModel(CAPEModelConfig(**data["model_config"]))
        model.load_state_dict(data["state_dict"])
    except (KeyError, TypeError, RuntimeError, ValueError) as e:
        raise InputError(f"{path}: CAPE checkpoint does not match the model ({str(e).splitlines()[0][:120]})") from None
    return model.eval()


def load_keypoint_model(path: str | Path | None = None) -> KeypointModel:
    """The keypoint model of a checkpoint file (None = the shipped one), in eval mode on CPU: our CAPE checkpoint
    -> CAPEModel; an official PoseAnything file (mmcv format), or our pointer to one -> PoseAnything.

    Raises MissingWeightsError when a file is absent, InputError when it is neither."""
    path = Path(path) if path is not None else SHIPPED_CHECKPOINT
    data = _read_any(path)
    if pa.is_poseanything_state(data):
        return pa.poseanything_from_checkpoint(data, path)
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path}: neither a dynapose4d CAPE checkpoint nor an official PoseAnything checkpoint")
    if data.get("arch") == POSEANYTHING_ARCH:
        return pa.load_poseanything(data["checkpoint"])
    return _cape_from(data, path)


def _model_for(checkpoint: str | Path | KeypointModel | None) -> KeypointModel:
    if isinstance(checkpoint, (CAPEModel, PoseAnything)):
        return checkpoint
    path = Path(checkpoint) if checkpoint is not None else SHIPPED_CHECKPOINT
    key = (str(path.resolve()), path.stat().st_mtime if path.is_file() else 0.0)
    if key not in _cache:
        _cache.clear()
        _cache[key] = load_keypoint_model(path)
    return _cache[key]


# ------------------------------------------------------------------------------------------------ inference


def letterbox(images: torch.Tensor, size: int) -> tuple[torch.Tensor, float, tuple[float, float]]:
    """Pad images [B, 3, H, W] to a centred square with white, then resize to size x size (differentiable).

    Returns (images [B, 3, size, size], scale, (ox, oy)): a pixel point p of the input maps to
    (p + (ox, oy)) * scale in the output."""
    H, W = images.shape[-2:]
    L = max(H, W)
    ox, oy = (L - W) // 2, (L - H) // 2
    if L != W or L != H:
        images = F.pad(images, (ox, L - W - ox, oy, L - H - oy), value=1.0)
    if L != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=L > size)
    return images, size / L, (float(ox), float(oy))


@dataclass
class PreparedSupport:
    """A support image's keypoint tokens for one CAPE model: the first half of `predict`, which does not depend on
    the queries (compute it once when the same support meets many query batches)."""

    model: CAPEModel
    tokens: torch.Tensor  # [1, N, d] support keypoint tokens
    mask: torch.Tensor  # [1, N] bool, keypoints present in the support
    adjacency: torch.Tensor  # [1, N, N] 0/1 skeleton


def prepare_support(support_image: torch.Tensor, support_keypoints: torch.Tensor,
                    skeleton: list[tuple[int, int]] | list, checkpoint: str | Path | KeypointModel | None = None,
                    support_mask: torch.Tensor | None = None, support_box: Any = None
                    ) -> PreparedSupport | PoseAnythingSupport:
    """Validate a support and compute its keypoint tokens (arguments as `predict`'s), on the model's device."""
    if support_image.ndim != 3 or support_image.shape[0] != 3:
        raise InputError(f"cape.predict: support_image must be [3, H, W], got {tuple(support_image.shape)}")
    kps = torch.as_tensor(support_keypoints, dtype=torch.float32)
    if kps.ndim != 2 or kps.shape[-1] != 2 or not 1 <= kps.shape[0] <= MAX_SUPPORT_KEYPOINTS:
        raise InputError(f"cape.predict: support_keypoints must be [N, 2] with 1 <= N <= {MAX_SUPPORT_KEYPOINTS}, "
                         f"got {tuple(kps.shape)}")
    model = _model_for(checkpoint)
    if isinstance(model, PoseAnything):
        try:
            return pa.prepare_support(model, support_image, kps, skeleton, support_mask, support_box)
        except ValueError as e:
            raise InputError(f"cape.predict: {e}") from None
    param = next(model.parameters())
    dev, dt = param.device, param.dtype
    N = kps.shape[0]
    try:
        adj = skeleton_adjacency([tuple(e) for e in skeleton], N)
    except ValueError as e:
        raise InputError(f"cape.predict: {e}") from None
    s_img, s_scale, s_off = letterbox(support_image[None].to(dev, dt), model.cfg.input_size)
    k = ((kps.to(dev, dt) + torch.tensor(s_off, device=dev, dtype=dt)) * s_scale / model.cfg.input_size)  # [N, 2]
    mask = torch.ones(1, N, dtype=torch.bool, device=dev) if support_mask is None else \
        torch.as_tensor(support_mask, dtype=torch.bool, device=dev)[None]
    return PreparedSupport(model, model.support_tokens(s_img, k[None], mask), mask, adj[None].to(dev, dt))


def predict_prepared(support: PreparedSupport | PoseAnythingSupport, query_images: torch.Tensor,
                     query_boxes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`predict` with a `prepare_support` result: query_images [B, 3, H, W] -> (points [B, N, 2] px, confidence
    [B, N]); differentiable with respect to the query images."""
    if query_images.ndim != 4 or query_images.shape[1] != 3:
        raise InputError(f"cape.predict: query_images must be [B, 3, H, W], got {tuple(query_images.shape)}")
    if isinstance(support, PoseAnythingSupport):
        return pa.predict_prepared(support, query_images, query_boxes)
    model = support.model
    param = next(model.parameters())
    dev, dt = param.device, param.dtype
    S = model.cfg.input_size
    q_img, q_scale, q_off = letterbox(query_images.to(dev, dt), S)
    out = model.forward_tokens(support.tokens, support.mask, support.adjacency, q_img)
    pts = out["points"][-1] * S / q_scale - torch.tensor(q_off, device=dev, dtype=dt)  # [B, N, 2] px
    return pts, out["confidence"]


def predict(support_image: torch.Tensor, support_keypoints: torch.Tensor, skeleton: list[tuple[int, int]] | list,
            query_images: torch.Tensor, checkpoint: str | Path | KeypointModel | None = None,
            support_mask: torch.Tensor | None = None, support_box: Any = None,
            query_boxes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Find the support's keypoints on query images.

    support_image [3, H, W] and query_images [B, 3, H', W'] float in [0, 1], RGB over a white background, any
    size; support_keypoints [N, 2] pixels (centres at +0.5); skeleton 0-based index pairs; checkpoint: a path
    (see `load_keypoint_model`), a loaded CAPEModel or PoseAnything, or None for the shipped checkpoint;
    support_mask [N] bool (default all present).
    Returns points [B, N, 2] in query pixels and confidence [B, N] in [0, 1]. Runs in the model's current mode
    on its device and is differentiable with respect to the query images (no torch.no_grad inside).

    With PoseAnything each image is cropped around its object as in PoseAnything's MP-100 test pipeline: a square
    of 1.25x the longer side of the box of its non-white pixels (or support_box / query_boxes, (x, y, w, h) px),
    warped to 256x256 (bilinear, black outside the image); the box is not differentiated. PoseAnything outputs no
    confidence: it is 1 for every keypoint.
    """
    if query_images.ndim != 4 or query_images.shape[1] != 3:  # before the support's backbone pass
        raise InputError(f"cape.predict: query_images must be [B, 3, H, W], got {tuple(query_images.shape)}")
    return predict_prepared(prepare_support(support_image, support_keypoints, skeleton, checkpoint, support_mask,
                                            support_box), query_images, query_boxes)
