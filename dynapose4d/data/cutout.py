"""Cutting an object out of a photograph on a real background: OpenCV's GrabCut (`grabcut_alpha`).

For pictures and video frames without alpha whose border is not one uniform colour (`data.background` handles
those). No model and no weights: GrabCut fits two colour mixtures (object, background) and a graph cut between
them, starting from what is known to be background.

The method and its limits:
  the frame is cut at a working size (longer side `WORK_SIZE`), the mask brought back to the frame's size
  (bilinear, threshold 1/2) and cleaned like the plain-background mask (`background.clean_mask`: specks dropped,
  small holes filled); then its edge is matted (`matte_edges`: alpha from unmixing the local object and
  background colours in a band of a pixel either side), so the alpha is 0 or 1 except along the outline.
  The cut starts from the border: a ring of ~`RING` of the shorter side is background for certain; inside it a
  pixel starts as "probably object" when its colour is far (`FAR`) from all of the ring's colours, else as
  "probably background"; colours on less than `MIN_SHARE` of the ring are not counted as background, so an object
  that touches the frame's edge keeps its colours (only what lies in the ring itself is cut off). The
  background must be seen along the border: background colours that appear only around the object (a
  cluttered room) are taken for object. Video frames are cut one by one the same way (starting from the
  previous frame's mask was measured worse: experiments/cutout_eval.py), except when the picture's mask is the
  user's: then GrabCut's two colour mixtures are fitted once on the picture and its mask (`colour_models`) and
  each frame is cut with them as they are (OpenCV's frozen-model mode), which cut clutter and colour-noise
  backgrounds far better than the border start and the others as well (experiments/RESULTS.md); so are views; a
  frame or view where they find far less object than the picture has (new colours: the object turned, a view
  of its back) is cut from its border.
  Colours shared by object and background (a grey coat on a grey wall) go either way: GrabCut is a colour
  model, not a recogniser. The run writes the cut-out picture to RUN/inputs/cutout.png to check; where it is
  wrong, cut the object out with a better tool (a PNG with alpha) and pass that instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dynapose4d.data.background import clean_mask, connected_components, unmix

WORK_SIZE = 384  # GrabCut's working size: longer side in pixels (cost grows with its square)
RING = 0.015  # border ring, fraction of the shorter side, taken as certain background (as the plain removal's)
BLUR = 1.0  # Gaussian blur (sigma, working-size pixels) before the cut, against sensor grain
BORDER_COLOURS = 8  # a picture's border colours are summarised by this many k-means centres
FAR = 40.0  # a picture's pixel farther than this (RGB distance, 0-255) from every border centre starts as object
MIN_SHARE = 0.05  # border colours on less of the ring than this are not taken as background (an object touching
# the edge puts its own colours there)
ITERATIONS = 5  # GrabCut iterations (colour-model / graph-cut rounds)
EDGE_BAND = 1  # pixels on either side of the cut's edge whose alpha is re-estimated by local unmixing
EDGE_WINDOW = 3  # half-side (pixels) of the window over which the local object and background colours are averaged
EDGE_CONTRAST = 0.1  # RGB distance (0-1) under which the local object and background colours are too close to unmix
ONE_PIECE = 0.9  # a cut whose largest 8-connected piece holds less of the object than this is reported as doubtful
# (`object_pieces`): every good cut of experiments/cutout_eval.py's scenes was one piece; the failed cuts of
# photographs were 2-6 pieces, the largest 32-84% of the object


@dataclass
class ColourModels:
    """GrabCut's two colour mixtures (OpenCV's layout, [1, 65] each) fitted on a picture whose object mask is
    known (`colour_models`): a video of the same scene is then cut with them (`grabcut_alpha`)."""

    background: np.ndarray  # [1, 65]
    foreground: np.ndarray  # [1, 65]


def _working_copy(rgb: torch.Tensor, cv2) -> np.ndarray:
    """The image GrabCut works on: uint8 BGR [h, w, 3] at most `WORK_SIZE` on its longer side, blurred by `BLUR`."""
    H, W = rgb.shape[:2]
    s = min(1.0, WORK_SIZE / max(H, W))
    h, w = max(1, round(H * s)), max(1, round(W * s))
    img = (rgb.detach().float().cpu()[..., :3].clamp(0, 1) * 255).round().to(torch.uint8).numpy()  # [H, W, 3]
    small = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA) if (h, w) != (H, W) else img
    small = np.ascontiguousarray(small[..., ::-1])  # [h, w, 3] BGR, as OpenCV expects
    return cv2.GaussianBlur(small, (0, 0), BLUR)  # sensor grain would otherwise split the colour models


def colour_models(rgb: torch.Tensor, alpha: torch.Tensor) -> ColourModels:
    """GrabCut's object and background colour mixtures of a picture rgb [H, W, 3] in [0, 1] whose object is
    alpha [H, W] > 1/2 (the user's mask): fitted once on all its pixels, labelled for certain."""
    import cv2

    cv2.setRNGSeed(0)
    small = _working_copy(rgb, cv2)
    h, w = small.shape[:2]
    a = F.interpolate(alpha.detach().float().cpu()[None, None], size=(h, w), mode="area")[0, 0].numpy()
    labels = np.where(a > 0.5, cv2.GC_FGD, cv2.GC_BGD).astype(np.uint8)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.grabCut(small, labels, None, bgd, fgd, 1, cv2.GC_INIT_WITH_MASK)
    return ColourModels(bgd, fgd)


def grabcut_alpha(rgb: torch.Tensor, models: ColourModels | None = None) -> torch.Tensor:
    """Alpha [H, W] (0 or 1) of the object in an RGB image [H, W, 3] in [0, 1] on a real background (see the
    module docstring for the method and its limits). With `models` (a picture of the same scene and its known
    mask, `colour_models`) the cut uses those colour mixtures as they are instead of learning them from the
    border. Deterministic: OpenCV's random generator is seeded."""
    import cv2  # OpenCV is only needed here; keep it off the import path of everything else

    cv2.setRNGSeed(0)  # k-means of the border colours and GrabCut's own mixture initialisation
    H, W = rgb.shape[:2]
    small = _working_copy(rgb, cv2)
    h, w = small.shape[:2]
    if models is not None:
        labels = _ring_labels(h, w, cv2)
        bgd, fgd = models.background.copy(), models.foreground.copy()
        cv2.grabCut(small, labels, None, bgd, fgd, ITERATIONS, cv2.GC_EVAL_FREEZE_MODEL)
        return _labels_alpha(labels, H, W, cv2)
    labels = _initial_labels(small, cv2)
    if not (labels == cv2.GC_PR_FGD).any():  # every colour is one of the border's: nothing stands out
        return torch.zeros(H, W)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.grabCut(small, labels, None, bgd, fgd, ITERATIONS, cv2.GC_INIT_WITH_MASK)
    return _labels_alpha(labels, H, W, cv2)


def _ring_labels(h: int, w: int, cv2) -> np.ndarray:
    """Labels [h, w]: the border ring certain background, the rest undecided ("probably background")."""
    b = max(1, round(RING * min(h, w)))
    labels = np.full((h, w), cv2.GC_BGD, np.uint8)
    labels[b:h - b, b:w - b] = cv2.GC_PR_BGD
    return labels


def _labels_alpha(labels: np.ndarray, H: int, W: int, cv2) -> torch.Tensor:
    """GrabCut's labels [h, w] -> alpha [H, W] (0 or 1): brought to the image's size, cleaned (`clean_mask`)."""
    h, w = labels.shape
    obj = ((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)).astype(np.float32)  # [h, w]
    if (h, w) != (H, W):
        up = F.interpolate(torch.from_numpy(obj)[None, None], size=(H, W), mode="bilinear", align_corners=False)
        obj = up[0, 0].numpy()
    return torch.from_numpy(clean_mask(obj > 0.5).astype(np.float32))  # [H, W]


def object_pieces(alpha: torch.Tensor) -> list[float]:
    """The object's 8-connected pieces in alpha [H, W] (alpha > 1/2) holding 1% of its pixels or more, each as its
    share of the object's pixels, largest first ([] for no object). A GrabCut cut of one object is one piece; a
    cut in several pieces of similar size (largest under `ONE_PIECE`) has often taken parts of the background."""
    _, sizes = connected_components(alpha.detach().cpu().numpy() > 0.5, diagonal=True)
    total = float(sizes[1:].sum())
    shares = [] if total == 0 else [float(n) / total for n in sizes[1:]]
    return sorted((f for f in shares if f >= 0.01), reverse=True)


def grabcut_rgba(rgb: torch.Tensor, models: ColourModels | None = None) -> torch.Tensor:
    """RGBA [H, W, 4] of the object in an RGB image [H, W, 3] on a real background: GrabCut's cut
    (`grabcut_alpha`, with the colour `models` of a masked picture of the scene when given) with its edge matted
    (`matte_edges`)."""
    return matte_edges(rgb, grabcut_alpha(rgb, models))


def matte_edges(rgb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Soft alpha along a binary mask's edge by local colour unmixing -> RGBA [H, W, 4] (rgb [H, W, 3] in [0, 1],
    mask [H, W] 0/1).

    In the band of `EDGE_BAND` pixels on either side of the edge, a pixel's colour I is taken as a mix
    a F + (1 - a) B of the mean colour F of the mask's pixels beyond the band and the mean colour B of the
    outside pixels beyond it, both within the (2 `EDGE_WINDOW` + 1)^2 window around the pixel:
    a = (I - B).(F - B) / |F - B|^2 clamped to [0, 1], and the pixel's colour becomes F (straight alpha).
    Band pixels without both estimates, or where |F - B| < `EDGE_CONTRAST`, keep the mask's 0 or 1. So the cut's
    hard edge turns into the object's antialiased one; an edge a pixel too far out is mostly moved back (the
    object's colour estimate then takes in edge pixels, so alpha there comes out a little high)."""
    img = rgb.detach().float().cpu()[..., :3]
    m = mask.detach().float().cpu()
    out = torch.cat([img, m[..., None]], -1)  # [H, W, 4]
    rows, cols = torch.nonzero(m.amax(1) > 0).flatten(), torch.nonzero(m.amax(0) > 0).flatten()
    if len(rows) == 0 or bool((m > 0).all()):
        return out
    H, W = m.shape
    reach = EDGE_BAND + EDGE_WINDOW + 1  # what the band's estimates read beyond the mask's box
    y0, y1 = max(0, int(rows[0]) - reach), min(H, int(rows[-1]) + 1 + reach)
    x0, x1 = max(0, int(cols[0]) - reach), min(W, int(cols[-1]) + 1 + reach)
    out[y0:y1, x0:x1] = _matte_box(img[y0:y1, x0:x1], m[y0:y1, x0:x1])
    return out


def _matte_box(img: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """`matte_edges` on a crop [h, w, 3], [h, w] that holds the mask with a margin (or the frame's edge)."""
    b, r = EDGE_BAND, EDGE_WINDOW
    grown = F.max_pool2d(m[None, None], 2 * b + 1, 1, b)[0, 0] > 0.5  # [h, w] within the band of the mask
    core = (-F.max_pool2d(-m[None, None], 2 * b + 1, 1, b))[0, 0] > 0.5  # [h, w] the mask beyond the band
    band, outside = grown & ~core, ~grown

    def local_mean(sel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # mean colour [h, w, 3], count [h, w]
        both = torch.cat([img * sel[..., None], sel[..., None]], -1).permute(2, 0, 1)[None]  # [1, 4, h, w]
        s = F.avg_pool2d(both, 2 * r + 1, 1, r, count_include_pad=False)[0].permute(1, 2, 0)  # [h, w, 4]
        return s[..., :3] / s[..., 3:].clamp_min(1e-8), s[..., 3]

    fg, n_fg = local_mean(core.float())
    bg, n_bg = local_mean(outside.float())
    return unmix(img, fg, bg, m, band & (n_fg > 0) & (n_bg > 0), EDGE_CONTRAST)


def _initial_labels(img: np.ndarray, cv2) -> np.ndarray:
    """GrabCut's starting labels [h, w] uint8 for an image [h, w, 3] uint8: the border ring certain background,
    inside it "probably object" where the colour is far from every ring colour, else "probably background"."""
    h, w = img.shape[:2]
    b = max(1, round(RING * min(h, w)))
    ring = np.ones((h, w), bool)
    ring[b:h - b, b:w - b] = False
    far = _far_from(img.reshape(-1, 3).astype(np.float32), img[ring].astype(np.float32), cv2).reshape(h, w)
    labels = np.where(far, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    labels[ring] = cv2.GC_BGD
    return labels


def _far_from(pixels: np.ndarray, border: np.ndarray, cv2) -> np.ndarray:
    """Which pixels [P, 3] lie farther than `FAR` (0-255 units) from all of the border's colours [Q, 3]
    (summarised by k-means into `BORDER_COLOURS` centres; those holding under `MIN_SHARE` of the border are
    dropped)."""
    k = min(BORDER_COLOURS, len(border))
    crit = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 1.0)
    _, assign, centres = cv2.kmeans(border, k, None, crit, 2, cv2.KMEANS_PP_CENTERS)  # [Q, 1], [k, 3]
    share = np.bincount(assign.ravel(), minlength=k) / len(border)  # [k]
    centres = centres[share >= MIN_SHARE] if (share >= MIN_SHARE).any() else centres
    d = np.sqrt(((pixels[:, None, :] - centres[None]) ** 2).sum(-1)).min(1)  # [P]
    return d > FAR
