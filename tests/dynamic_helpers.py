"""Helpers of the dynamic-stage tests: a differentiable stand-in for CAPE and a synthetic-scene run context."""

from __future__ import annotations

from pathlib import Path

import torch

from dynapose4d.core.cameras import load_camera
from dynapose4d.core.io import read_image
from dynapose4d.data.scene import Scene
from dynapose4d.gaussians import GaussianModel, rgb_to_sh, save_ply


class ColourKeypoints:
    """A differentiable keypoint detector: keypoint k = soft-argmax over pixels of exp(-sharpness ‖I - c_k‖²).

    images [B, 3, H, W] in [0, 1] -> (points [B, N, 2] px with pixel centres at +0.5, confidence [B, N])."""

    def __init__(self, colours: torch.Tensor, sharpness: float = 40.0) -> None:
        self.colours = colours.float()  # [N, 3]
        self.sharpness = sharpness
        self.calls = 0

    @classmethod
    def from_support(cls, image: torch.Tensor, keypoints: torch.Tensor, sharpness: float = 40.0) -> ColourKeypoints:
        """Colours read from the support image [H, W, 4] (over white) at the support keypoints [N, 2]."""
        a = image[..., 3:]
        rgb = image[..., :3] * a + (1 - a)
        ij = keypoints.floor().long()
        return cls(rgb[ij[:, 1].clamp(0, image.shape[0] - 1), ij[:, 0].clamp(0, image.shape[1] - 1)], sharpness)

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        B, _, H, W = images.shape
        c = self.colours.to(images)
        d2 = ((images.unsqueeze(1) - c.view(1, -1, 3, 1, 1)) ** 2).sum(2)  # [B, N, H, W]
        p = torch.softmax(-self.sharpness * d2.flatten(2), dim=-1).view_as(d2)
        ys = torch.arange(H, dtype=images.dtype, device=images.device) + 0.5
        xs = torch.arange(W, dtype=images.dtype, device=images.device) + 0.5
        x = (p.sum(2) * xs).sum(-1)
        y = (p.sum(3) * ys).sum(-1)
        return torch.stack([x, y], -1), torch.ones(B, c.shape[0], dtype=images.dtype, device=images.device)


def scene_from_folder(root: Path) -> Scene:
    """A Scene of a synthetic scene folder (camera.json present, video/ and gt/), without the loader's checks."""
    import json

    kp = json.loads((root / "keypoints.json").read_text())
    frames = sorted((root / "video").glob("*.png"))
    return Scene(
        root=root, image=read_image(root / "image.png"), keypoints=torch.tensor(kp["keypoints"], dtype=torch.float32),
        skeleton=[tuple(e) for e in kp["skeleton"]], names=kp["names"], camera=load_camera(root / "camera.json"),
        has_camera_json=True, video=torch.stack([read_image(f) for f in frames]), views=[], gt_dir=root / "gt",
    )


def perfect_static(obj, run_dir: Path, scene: Scene | None = None) -> Path:
    """RUN/static/gaussians.ply = the synthetic object's own Gaussians at frame 0 (a perfect static stage); with
    `scene`, also RUN/static/keypoints_3d.json, its support keypoints lifted onto them as the static stage does."""
    from dynapose4d.gaussians import load_ply
    from dynapose4d.stages.keypoints import lift_support_keypoints, write_keypoints_3d

    g = obj.gaussians(0)
    model = GaussianModel(means=g["means"], scales=torch.log(g["scales"]), quats=g["quats"],
                          opacities=torch.logit(g["opacities"].clamp(1e-4, 1 - 1e-4)),
                          sh0=rgb_to_sh(g["colors"]).unsqueeze(1))
    path = run_dir / "static" / "gaussians.ply"
    save_ply(model, path)
    if scene is not None:
        write_keypoints_3d(run_dir / "static" / "keypoints_3d.json", list(scene.names),
                           lift_support_keypoints(load_ply(path), scene))
    return path


#: The static artifacts `perfect_static(..., scene)` writes.
STATIC_ARTIFACTS = {"gaussians": "static/gaussians.ply", "keypoints_3d": "static/keypoints_3d.json"}


def detected_driving_keypoints(ctx, detector, background: float = 1.0) -> None:
    """RUN/cape/driving_keypoints.json from a stand-in detector on the scene's video (over `background`), written
    as the cape stage writes it, and recorded in `ctx.artifacts` (a cape stage with another detector)."""
    from dynapose4d.core.images import over_background
    from dynapose4d.stages.keypoints import DRIVING_KEYPOINTS, write_driving_keypoints

    imgs = over_background(ctx.scene.video, background).permute(0, 3, 1, 2)
    with torch.no_grad():
        found = [detector(imgs[i:i + 8]) for i in range(0, imgs.shape[0], 8)]
    pts, conf = torch.cat([p.cpu() for p, _ in found]).float(), torch.cat([c.cpu() for _, c in found]).float()
    (ctx.run_dir / "cape").mkdir(parents=True, exist_ok=True)
    write_driving_keypoints(ctx, pts, conf, generated=False)
    ctx.artifacts["cape"] = {"driving_keypoints": DRIVING_KEYPOINTS}
