"""The 2D similarity between a scene's files and the frames the pipeline sees (`dynapose4d.data.scene` describes
when and why), and applying it to the image, keypoints, video and other frames in one resample.

- Recentring (a scene without camera.json; the DreamGaussian convention): the similarity that centres the
  object's mask box and scales it to fill 80% of the frame (`recentring_of`). A frame larger than the run's
  `max_image_size` comes out smaller (same aspect, longer side `max_image_size`) in that same resample.
- Downscale (a scene with camera.json, and gt/ frames, larger than `max_image_size`; `downscale_of`): a pure
  scale about the frame centre into a frame W' x H' within `max_image_size`. Cameras carry no pixel intrinsics:
  K comes from fov_y and the frame size (fx = fy = H / (2 tan(fov_y / 2)), cx = W / 2, cy = H / 2;
  docs/cameras.md), so the one similarity that keeps every camera's projection exact at the new size is the
  scale s = H' / H about the centre (a 3D point's pixel p' = (p - (W/2, H/2)) s + (W'/2, H'/2)). W' is rounded
  from W s, so the frame's left and right edges are the files' edges to within a quarter pixel.

A driving video of another size than the picture is first laid onto the picture by its frame 0's object box
(`Registration`, `registration_of`); followed by the picture's similarity it is again a `Recentring`, the video's
own (`Registration.then`).

Both are a `Recentring`, so every 2D output written "in the pixels of the scene's files" maps back through
`Recentring.to_scene` the same way. The resample (`resample_frames`) is bilinear on premultiplied colour,
antialiased when shrinking. Video frames much larger than the output are stored shrunk by an integer k as they are
read (`shrink_frame`: area average on premultiplied colour); `stored_recentring` is the same similarity for them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

FILL = 0.8  # recentring: the mask bounding box fills this fraction of the frame (DreamGaussian's 1 - border 0.2)


@dataclass(frozen=True)
class Recentring:
    """The 2D similarity of recentring or of a downscale (`recentring_of`, `downscale_of`, `apply_recentring`): a
    scene-file pixel q maps to the pipeline pixel p = (q - centre) * scale + out_size / 2 (pixel centres at +0.5
    in both)."""

    scale: float
    centre: tuple[float, float]  # (cx, cy): the scene-file point that lands on the frame centre, pixels
    size: tuple[int, int]  # (W, H) of the scene's frames
    out_size: tuple[int, int] | None = None  # (W, H) of the pipeline's frames; None: `size`
    edges: str = "transparent"  # outside the files: "transparent" (recentring), "extend" (a downscale's sub-pixel
    # sliver at the frame's edges repeats the edge pixels)

    @property
    def output_size(self) -> tuple[int, int]:
        """(W, H) of the frames the pipeline sees."""
        return self.size if self.out_size is None else self.out_size

    def _centre_and_half(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = torch.tensor(self.centre, dtype=x.dtype, device=x.device)
        return c, torch.tensor(self.output_size, dtype=x.dtype, device=x.device) / 2.0

    def from_scene(self, q: torch.Tensor) -> torch.Tensor:
        """Scene-file pixels [..., 2] -> pipeline pixels [..., 2]."""
        c, half = self._centre_and_half(q)
        return (q - c) * self.scale + half

    def to_scene(self, p: torch.Tensor) -> torch.Tensor:
        """Pipeline pixels [..., 2] -> scene-file pixels [..., 2] (the inverse of `from_scene`)."""
        c, half = self._centre_and_half(p)
        return (p - half) / self.scale + c


@dataclass(frozen=True)
class Registration:
    """The similarity that lays a driving video of another size than the picture onto the picture: frame 0's
    object box onto the picture's (`registration_of`). A video-file pixel q maps to the picture-file pixel
    (q - video_centre) * scale + picture_centre (pixel centres at +0.5 in both)."""

    scale: float  # picture pixels per video pixel
    video_centre: tuple[float, float]  # (x, y) centre of frame 0's object box, video pixels
    picture_centre: tuple[float, float]  # (x, y) centre of the picture's object box, picture pixels
    video_size: tuple[int, int]  # (W, H) of the video's frames
    picture_size: tuple[int, int]  # (W, H) of the picture
    spread: float = 0.0  # how far the boxes' width and height ratios disagree (larger / smaller - 1; 0: same shape)

    def to_picture(self, q: torch.Tensor) -> torch.Tensor:
        """Video-file pixels [..., 2] -> picture-file pixels [..., 2]."""
        c = torch.tensor(self.video_centre, dtype=q.dtype, device=q.device)
        return (q - c) * self.scale + torch.tensor(self.picture_centre, dtype=q.dtype, device=q.device)

    def box_to_picture(self, box: tuple[int, int, int, int] | None) -> tuple[float, float, float, float] | None:
        """A pixel-edge box (x0, y0, x1, y1) of the video -> the same box in picture pixels (None stays None)."""
        if box is None:
            return None
        (x0, y0), (x1, y1) = self.to_picture(torch.tensor([box[:2], box[2:]], dtype=torch.float64)).tolist()
        return x0, y0, x1, y1

    def then(self, rec: Recentring | None) -> Recentring:
        """The video's own similarity to the pipeline's frames: this registration followed by the picture's `rec`
        (None: the picture as given). With v = video_centre, s_v = scale, c_p =
        picture_centre and rec's (c, s): p = ((q - v) s_v + c_p - c) s + out / 2 = (q - (v - (c_p - c) / s_v))
        (s_v s) + out / 2, a `Recentring` of the video's pixels. Outside the video is transparent."""
        if rec is None:
            W, H = self.picture_size
            rec = Recentring(scale=1.0, centre=(W / 2.0, H / 2.0), size=(W, H))
        centre = tuple(v - (p - c) / self.scale for v, p, c in zip(self.video_centre, self.picture_centre, rec.centre))
        return Recentring(scale=rec.scale * self.scale, centre=(float(centre[0]), float(centre[1])),
                          size=self.video_size, out_size=rec.output_size, edges="transparent")


def registration_of(video_box: tuple[int, int, int, int], picture_box: tuple[int, int, int, int],
                    video_size: tuple[int, int], picture_size: tuple[int, int]) -> Registration:
    """The `Registration` that puts the centre of `video_box` (frame 0's object box, video pixels) on the centre of
    `picture_box` (the picture's, picture pixels), scaled by the geometric mean of the two boxes' width and height
    ratios (so that a pose that widens the box a little in one direction moves the scale by half as much)."""
    vw, vh = video_box[2] - video_box[0], video_box[3] - video_box[1]
    pw, ph = picture_box[2] - picture_box[0], picture_box[3] - picture_box[1]
    sx, sy = pw / vw, ph / vh
    return Registration(scale=math.sqrt(sx * sy), video_centre=_box_centre(video_box),
                        picture_centre=_box_centre(picture_box), video_size=(int(video_size[0]), int(video_size[1])),
                        picture_size=(int(picture_size[0]), int(picture_size[1])), spread=max(sx, sy) / min(sx, sy) - 1)


def _box_centre(box: tuple[int, int, int, int]) -> tuple[float, float]:
    return (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0


def output_size_of(W: int, H: int, max_size: int) -> tuple[int, int]:
    """(W, H) of a frame W x H brought within `max_size` pixels on its longer side (same aspect; 0 = as it is)."""
    if max_size <= 0 or max(W, H) <= max_size:
        return W, H
    f = max_size / max(W, H)
    return max(1, round(W * f)), max(1, round(H * f))


def downscale_of(W: int, H: int, max_size: int) -> Recentring | None:
    """The pure downscale (module docstring) of a frame W x H into W' x H' within `max_size` pixels on its longer
    side, or None when it already fits (or `max_size` is 0). H' = round(H f) with f = max_size / max(W, H), the
    scale s = H' / H (what the cameras' fy = H / (2 tan(fov_y / 2)) scales by), W' = round(W s) (one less H' in
    the rare case where that would pass `max_size`)."""
    if max_size <= 0 or max(W, H) <= max_size:
        return None
    Ho = max(1, round(H * max_size / max(W, H)))
    Wo = max(1, round(W * Ho / H))
    while Wo > max_size and Ho > 1:
        Ho -= 1
        Wo = max(1, round(W * Ho / H))
    return Recentring(scale=Ho / H, centre=(W / 2.0, H / 2.0), size=(int(W), int(H)), out_size=(int(Wo), int(Ho)),
                      edges="extend")


def recentring_of(image: torch.Tensor, keypoints: torch.Tensor, video: torch.Tensor | None = None,
                  fill: float = FILL, max_size: int = 0,
                  boxes: Sequence[tuple[float, float, float, float] | None] | None = None) -> Recentring | None:
    """The similarity that moves the mask bounding box of `image` [H, W, 4] to the frame centre, scaled to fill
    `fill` of the frame, shrunk if needed to keep all `keypoints` [N, 2] (pixels) and the mask boxes of `video`
    [T, H, W, 4] (float in [0, 1] or uint8; alpha > 0.5) inside the frame; the frame itself brought within
    `max_size` pixels on its longer side (`output_size_of`). None when it is the identity. `boxes` (x0, y0, x1, y1;
    None for an empty mask) are video frames' mask boxes in the image's pixels, given instead of (or besides)
    `video` (`dynapose4d.data.scene` keeps them from the frames at the files' size as it reads them). The video
    can only lower the scale: without it the result's scale bounds the one with any video."""
    H, W = image.shape[:2]
    Wo, Ho = output_size_of(W, H, max_size)
    box = mask_box(image[..., 3] > 0.5)
    if box is None:
        raise ValueError("recentring_of: the image mask is empty")
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    s = min(fill * W / (x1 - x0), fill * H / (y1 - y0))
    # points that must stay in the frame: keypoints and the corners of every video frame's mask box
    pts = [keypoints.double()]
    if video is not None:
        half = 127.5 if video.dtype == torch.uint8 else 0.5  # alpha > 0.5
        for t in range(video.shape[0]):
            vb = mask_box(video[t, ..., 3] > half)
            if vb is not None:
                pts.append(torch.tensor([[vb[0], vb[1]], [vb[2], vb[3]]], dtype=torch.float64))
    for vb in boxes or ():
        if vb is not None:
            pts.append(torch.tensor([[vb[0], vb[1]], [vb[2], vb[3]]], dtype=torch.float64))
    allp = torch.cat(pts)
    ex, ey = (allp[:, 0] - cx).abs().max().item(), (allp[:, 1] - cy).abs().max().item()
    if ex > 0:
        s = min(s, 0.98 * (W / 2.0) / ex)
    if ey > 0:
        s = min(s, 0.98 * (H / 2.0) / ey)
    if abs(s - 1.0) < 1e-9 and cx == W / 2.0 and cy == H / 2.0 and (Wo, Ho) == (W, H):
        return None
    s *= min(Wo / W, Ho / H)  # the same fill of the smaller frame
    return Recentring(scale=float(s), centre=(float(cx), float(cy)), size=(int(W), int(H)),
                      out_size=None if (Wo, Ho) == (W, H) else (int(Wo), int(Ho)))


def stored_recentring(rec: Recentring | None, size: tuple[int, int], k: int,
                      stored: tuple[int, int]) -> Recentring | None:
    """`rec` (None: the identity) for frames of the files' `size` (W, H) stored `k` times smaller, `stored` (W, H)
    pixels covering file pixels [0, k W_s) x [0, k H_s) (`shrink_frame`): stored pixel u covers file pixels
    [k u, k u + k), so with pixel centres at +0.5 in both a file point q is the stored point q / k, and
    p = (q - c) s + out / 2 = (u - c / k) (s k) + out / 2. The same output frame, read from the stored pixels
    (`rec` itself when k = 1)."""
    if k == 1:
        return rec
    if rec is None:
        rec = Recentring(scale=1.0, centre=(size[0] / 2.0, size[1] / 2.0), size=size)
    return Recentring(scale=rec.scale * k, centre=(rec.centre[0] / k, rec.centre[1] / k), size=stored,
                      out_size=rec.output_size, edges=rec.edges)


def shrink_frame(rgba: torch.Tensor, k: int, edges: str = "transparent", rows: int = 256) -> torch.Tensor:
    """RGBA [H, W, 4] in [0, 1] (straight colour) shrunk by the integer `k`: each output pixel the area average of
    a k x k block of premultiplied colour (so the object's edges do not blend with the colour under alpha 0),
    -> [ceil(H / k), ceil(W / k), 4] straight colour. A partial last block is padded as the resample treats the
    outside (`Recentring.edges`): transparent, or the edge pixels repeated ("extend"). About `rows` rows at a time,
    so that a 4K frame costs no more than itself."""
    if k == 1:
        return rgba
    step = k * max(1, rows // k)
    return torch.cat([_shrink_rows(rgba[i:i + step], k, edges) for i in range(0, rgba.shape[0], step)])


def _shrink_rows(rgba: torch.Tensor, k: int, edges: str) -> torch.Tensor:
    H, W = rgba.shape[:2]
    x = rgba.permute(2, 0, 1)[None].float()  # [1, 4, H, W]
    x = _premultiply(x)
    ph, pw = -H % k, -W % k
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate" if edges == "extend" else "constant")
    x = F.avg_pool2d(x, k)
    return _straight(x)[0].permute(1, 2, 0).contiguous()


def apply_recentring(rec: Recentring | None, image: torch.Tensor, keypoints: torch.Tensor,
                     video: torch.Tensor | None = None, chunk: int = 4
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """`image` [H, W, 4], `keypoints` [N, 2] and `video` [T, H, W, 4] (float in [0, 1] or uint8) moved by `rec`
    into frames of its output size [Ho, Wo] (as given when None; the video then in float): one bilinear resample,
    antialiased when shrinking, `chunk` video frames at a time (a long video is never whole in float at the
    files' size)."""
    if rec is None:
        return image, keypoints, (None if video is None else _as_float(video))
    kp = rec.from_scene(keypoints.double())
    out = _resample(rec, image[None])[0]
    if video is None:
        return out, kp.to(keypoints.dtype), None
    return out, kp.to(keypoints.dtype), resample_frames(rec, video, chunk)


def resample_frames(rec: Recentring | None, frames: torch.Tensor, chunk: int = 4) -> torch.Tensor:
    """RGBA frames [B, H, W, 4] (float in [0, 1] or uint8; straight colour) moved by `rec` into frames of its
    output size: float [B, Ho, Wo, 4], `chunk` at a time (as given, in float, when `rec` is None)."""
    if rec is None:
        return _as_float(frames)
    return torch.cat([_resample(rec, _as_float(frames[i:i + chunk])) for i in range(0, frames.shape[0], chunk)])


def _as_float(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255.0 if x.dtype == torch.uint8 else x


def _resample(rec: Recentring, frames: torch.Tensor) -> torch.Tensor:
    """RGBA frames [B, H, W, 4] in [0, 1] through `rec` -> [B, Ho, Wo, 4]."""
    H, W = frames.shape[1:3]
    Wo, Ho = rec.output_size
    s, (cx, cy) = rec.scale, rec.centre
    # output pixel x' shows source x = (x' - Wo / 2) / s + cx (likewise y): one exact similarity for everything
    x = frames.permute(0, 3, 1, 2).float()  # [B, 4, H, W]
    x = _premultiply(x)  # so edges do not blend with black
    if s < 1.0:  # shrinking: low-pass first (antialiased resize); grid_sample's normalised coords are unchanged
        x = F.interpolate(x, size=(max(1, round(H * s)), max(1, round(W * s))), mode="bilinear",
                          align_corners=False, antialias=True)
    xs = ((torch.arange(Wo, dtype=torch.float64) + 0.5 - Wo / 2.0) / s + cx) * (2.0 / W) - 1.0  # [Wo]
    ys = ((torch.arange(Ho, dtype=torch.float64) + 0.5 - Ho / 2.0) / s + cy) * (2.0 / H) - 1.0  # [Ho]
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).float()  # [Ho, Wo, 2] (x, y) in [-1, 1]
    pad = "border" if rec.edges == "extend" else "zeros"  # zeros outside = transparent
    x = F.grid_sample(x, grid.expand(x.shape[0], Ho, Wo, 2), mode="bilinear", padding_mode=pad, align_corners=False)
    return _straight(x).permute(0, 2, 3, 1).contiguous()  # [B, Ho, Wo, 4]


def mask_box(mask: torch.Tensor) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) pixel-edge bounding box (x1, y1 exclusive) of a bool mask [H, W], None if empty."""
    ys = torch.nonzero(mask.any(dim=1)).flatten()
    xs = torch.nonzero(mask.any(dim=0)).flatten()
    if len(ys) == 0:
        return None
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def _premultiply(x: torch.Tensor) -> torch.Tensor:
    """Straight RGBA [B, 4, H, W] -> premultiplied colour and alpha [B, 4, H, W]."""
    return torch.cat([x[:, :3] * x[:, 3:], x[:, 3:]], dim=1)


def _straight(x: torch.Tensor) -> torch.Tensor:
    """Premultiplied RGBA [B, 4, H, W] -> straight colour in [0, 1] (black where alpha is ~0) and alpha [B, 4, H, W]."""
    a = x[:, 3:].clamp(0.0, 1.0)
    rgb = torch.where(a > 1e-6, x[:, :3] / a.clamp(min=1e-6), torch.zeros_like(x[:, :3])).clamp(0.0, 1.0)
    return torch.cat([rgb, a], 1)
