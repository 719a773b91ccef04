"""Scene folder loading and validation (DESIGN §5). PLACEHOLDER: being implemented."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from dynapose4d.cameras import Camera


@dataclass
class Scene:
    """A validated scene. Images are float32 in [0, 1], RGBA with straight (not premultiplied) colour."""

    root: Path
    image: torch.Tensor  # [H, W, 4] RGBA; alpha = object mask
    keypoints: torch.Tensor  # [N, 2] pixels on image (pixel centres at +0.5)
    skeleton: list[tuple[int, int]]  # 0-based keypoint index pairs
    names: list[str]  # N keypoint names ("kp00".. when not given)
    camera: Camera  # reference camera (camera.json, or the default reference camera)
    has_camera_json: bool  # False: the scene was recentred/rescaled (object ~80% of the frame)
    video: torch.Tensor | None = None  # [T, H, W, 4] driving frames, RGBA (background removed), or None
    views: list[tuple[Camera, torch.Tensor]] = field(default_factory=list)  # (camera, [H, W, 4]) extra views
    gt_dir: Path | None = None  # scene/gt when present (eval only)

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def num_keypoints(self) -> int:
        return int(self.keypoints.shape[0])
