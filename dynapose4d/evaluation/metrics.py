"""Evaluation metrics: images (PSNR, SSIM, LPIPS) and poses (PCK, 3D keypoint error, jitter).

Images are float tensors [B, H, W, 3] in [0, 1] (channels last, as everywhere in this project). Each image
metric is computed per image and averaged over the batch (the Consistent4D convention: average over frames,
then views, then objects; the caller does the outer averages).

LPIPS needs pretrained backbone weights (AlexNet/VGG/SqueezeNet from torchvision) that cannot be downloaded
here: `lpips()` returns None ("unavailable") unless torchvision is installed and its weight file is already in
the torch hub cache (`torch.hub.get_dir()/checkpoints/`). It never downloads and never fakes a number.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch

from dynapose4d.core.images import over_background

PSNR_MSE_FLOOR = 1e-12  # identical images: MSE is floored here, so PSNR is at most 120 dB (finite, JSON-safe)
MOVING_THRESHOLD = 0.05  # moving_mask: a channel (RGBA over white) changes by more than this from frame 0

_LPIPS_NETS = {"alex": "alexnet", "vgg": "vgg16", "squeeze": "squeezenet1_1"}
_LPIPS_WEIGHTS = {"alexnet": "AlexNet_Weights", "vgg16": "VGG16_Weights", "squeezenet1_1": "SqueezeNet1_1_Weights"}
_lpips_cache: dict[str, torch.nn.Module] = {}


def _check_images(pred: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if pred.shape != gt.shape or pred.ndim != 4 or pred.shape[-1] != 3:
        raise ValueError(f"expected pred and gt of the same shape [B, H, W, 3], got {tuple(pred.shape)} and "
                         f"{tuple(gt.shape)}")
    return pred.detach().double(), gt.detach().double()


# ------------------------------------------------------------------------------------------------ images


def psnr(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """PSNR in dB (data range 1) of pred vs gt [B, H, W, 3] in [0, 1], computed per image and averaged over B.

    With `mask` [B, H, W] bool the MSE of each image is taken over its masked pixels only (e.g. the moving
    pixels of `moving_mask`); images whose mask is empty are left out of the average, and the result is nan
    when every mask is empty. MSE is floored at `PSNR_MSE_FLOOR`, so identical images give 120 dB, not inf."""
    p, g = _check_images(pred, gt)
    se = (p - g).pow(2).sum(-1)  # [B, H, W] squared error summed over RGB
    if mask is None:
        mask = torch.ones(se.shape, dtype=torch.bool)
    if mask.shape != se.shape:
        raise ValueError(f"mask must be [B, H, W] = {tuple(se.shape)}, got {tuple(mask.shape)}")
    m = mask.to(se.device, torch.bool)
    count = m.flatten(1).sum(1)  # [B]
    keep = count > 0
    if not keep.any():
        return float("nan")
    mse = (se * m).flatten(1).sum(1)[keep] / (3.0 * count[keep])  # [B'] mean over pixels and channels
    return float((-10.0 * torch.log10(mse.clamp(min=PSNR_MSE_FLOOR))).mean())


def ssim(pred: torch.Tensor, gt: torch.Tensor) -> float:
    """SSIM (torchmetrics, Gaussian window 11, sigma 1.5, data range 1) of [B, H, W, 3] images, averaged over B."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    p, g = _check_images(pred, gt)
    p, g = p.float().permute(0, 3, 1, 2), g.float().permute(0, 3, 1, 2)  # float32: ~3x faster than float64 on CPU
    val = structural_similarity_index_measure(p, g, data_range=1.0)
    return float(val)


def _lpips_weight_file(net: str) -> Path | None:
    """The torch hub cache path of the torchvision backbone weights LPIPS `net` needs, None without torchvision."""
    if importlib.util.find_spec("torchvision") is None:
        return None
    import torchvision

    weights = getattr(torchvision.models, _LPIPS_WEIGHTS[_LPIPS_NETS[net]]).DEFAULT
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def lpips_available(net: str = "alex") -> bool:
    """True when LPIPS(`net` = alex | vgg | squeeze) can run offline: torchvision is installed, the backbone
    weights are in the torch hub cache, and torchmetrics ships the LPIPS linear-layer weights."""
    if net not in _LPIPS_NETS:
        raise ValueError(f"LPIPS net must be one of {sorted(_LPIPS_NETS)}, got {net!r}")
    f = _lpips_weight_file(net)
    if f is None or not f.is_file():
        return False
    spec = importlib.util.find_spec("torchmetrics.functional.image.lpips")
    if spec is None or spec.origin is None:
        return False
    return (Path(spec.origin).parent / "lpips_models" / f"{net}.pth").is_file()


def lpips(pred: torch.Tensor, gt: torch.Tensor, net: str = "alex") -> float | None:
    """LPIPS (lower is better) of [B, H, W, 3] images in [0, 1], averaged over B; None when unavailable
    (see `lpips_available`). Never downloads weights."""
    if not lpips_available(net):
        return None
    p, g = _check_images(pred, gt)
    if net not in _lpips_cache:
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        _lpips_cache[net] = LearnedPerceptualImagePatchSimilarity(net_type=net, normalize=True).eval()
    metric = _lpips_cache[net]
    with torch.no_grad():
        val = metric(p.float().permute(0, 3, 1, 2).clamp(0, 1), g.float().permute(0, 3, 1, 2).clamp(0, 1))
    metric.reset()
    return float(val)


def moving_mask(gt_frames: torch.Tensor, thr: float = MOVING_THRESHOLD) -> torch.Tensor:
    """Pixels that move: [T, H, W] bool, True where gt frame t (RGBA [T, H, W, 4] composited over white) differs
    from frame 0 by more than `thr` in some channel. Frame 0 is all False."""
    if gt_frames.ndim != 4 or gt_frames.shape[-1] != 4:
        raise ValueError(f"expected RGBA frames [T, H, W, 4], got {tuple(gt_frames.shape)}")
    rgb = over_background(gt_frames.detach().double(), 1.0)  # [T, H, W, 3]
    return (rgb - rgb[:1]).abs().amax(-1) > thr


def motion_image_metrics(pred: torch.Tensor, gt: torch.Tensor, held: torch.Tensor | None = None,
                         with_lpips: bool = False) -> dict[str, float | None]:
    """Image metrics of a 4D result from one camera, each beside two no-motion baselines.

    pred, gt [T, H, W, 3] in [0, 1] over a white background; held [1, H, W, 3] the model without motion (default
    pred's frame 0). Keys: psnr, ssim, psnr_moving (on `moving_mask` of gt), lpips (with_lpips), each for
    pred, for "_no_motion" (gt frame 0 held still) and for "_held" (held, held still: the same reconstruction
    error as pred, no motion; the moving-pixel mask does not see motion pred puts where gt stays still, whole
    frames do). Averages run over the frames in which something moves (a non-empty `moving_mask`; all frames
    when none does): at frame 0, and at any later frame that returns exactly to it (a looping clip), the gt
    baseline is exact by construction and its capped 120 dB would dominate any mean over frames.
    """
    if pred.shape != gt.shape or pred.ndim != 4:
        raise ValueError(f"pred and gt must both be [T, H, W, 3], got {tuple(pred.shape)} and {tuple(gt.shape)}")
    held = pred[:1] if held is None else held
    mask = moving_mask(torch.cat([gt, torch.ones_like(gt[..., :1])], -1))  # [T, H, W]
    moves = mask.flatten(1).any(1)  # [T]
    f = moves if moves.any() else torch.ones_like(moves)
    out: dict[str, float | None] = {}
    for tag, img in (("", pred), ("_no_motion", gt[:1]), ("_held", held)):
        img = img.expand_as(gt)[f].contiguous()
        out["psnr" + tag] = psnr(img, gt[f])
        out["ssim" + tag] = ssim(img, gt[f])
        out["psnr_moving" + tag] = psnr(img, gt[f], mask[f])
        if with_lpips:
            out["lpips" + tag] = lpips(img, gt[f])
    return out


# ------------------------------------------------------------------------------------------------ poses


def bbox_size(points: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
    """max(width, height) of the bounding box of the (visible) points [..., N, 2] -> [...] (0 if none visible)."""
    pts = torch.as_tensor(points).double()
    vis = torch.ones(pts.shape[:-1], dtype=torch.bool) if visible is None else torch.as_tensor(visible).bool()
    v = vis.unsqueeze(-1)  # [..., N, 1]
    lo = torch.where(v, pts, torch.full_like(pts, math.inf)).amin(-2)  # [..., 2]
    hi = torch.where(v, pts, torch.full_like(pts, -math.inf)).amax(-2)
    size = (hi - lo).amax(-1)  # [...]
    return torch.where(vis.any(-1), size, torch.zeros_like(size))


def pck(pred: torch.Tensor, gt: torch.Tensor, norm: torch.Tensor | float, threshold: float = 0.2,
        visible: torch.Tensor | None = None) -> float:
    """Percentage of correct keypoints: the fraction of visible keypoints whose error ||pred - gt|| / norm is
    strictly below `threshold`. pred, gt [..., N, 2]; norm [...] per sample (e.g. `bbox_size(gt, visible)`) or a
    scalar, > 0 wherever a keypoint is visible; visible [..., N] bool (default all). nan when none is visible."""
    p, g = torch.as_tensor(pred).double(), torch.as_tensor(gt).double()
    if p.shape != g.shape or p.shape[-1] != 2:
        raise ValueError(f"pred and gt must both be [..., N, 2], got {tuple(p.shape)} and {tuple(g.shape)}")
    vis = torch.ones(p.shape[:-1], dtype=torch.bool) if visible is None else torch.as_tensor(visible).bool()
    n = torch.as_tensor(norm, dtype=torch.float64).expand(p.shape[:-2]).unsqueeze(-1).expand(vis.shape)
    if (n[vis] <= 0).any():
        raise ValueError("pck: the normaliser must be > 0 for every sample with visible keypoints")
    if not vis.any():
        return float("nan")
    err = (p - g).norm(dim=-1)  # [..., N]
    correct = err[vis] / n[vis] < threshold
    return float(correct.double().mean())


def keypoint_error_3d(pred: torch.Tensor, gt: torch.Tensor) -> float:
    """Mean Euclidean distance between pred and gt keypoints [T, N, 3] (any [..., D] works), in their units."""
    p, g = torch.as_tensor(pred).double(), torch.as_tensor(gt).double()
    if p.shape != g.shape:
        raise ValueError(f"pred and gt shapes differ: {tuple(p.shape)} vs {tuple(g.shape)}")
    return float((p - g).norm(dim=-1).mean())


def jitter(tracks: torch.Tensor) -> float:
    """Mean over time and tracks of ||x[t+1] - 2 x[t] + x[t-1]|| (the second difference; an acceleration per
    frame^2) of tracks [T, N, D]. 0 for tracks moving at constant velocity; nan when T < 3."""
    x = torch.as_tensor(tracks).double()
    if x.ndim != 3:
        raise ValueError(f"tracks must be [T, N, D], got {tuple(x.shape)}")
    if x.shape[0] < 3:
        return float("nan")
    acc = x[2:] - 2.0 * x[1:-1] + x[:-2]  # [T-2, N, D]
    return float(acc.norm(dim=-1).mean())
