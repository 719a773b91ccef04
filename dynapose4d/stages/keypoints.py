"""The keypoint files the stages hand on through the manifest, each computed once by the stage that owns it.

- RUN/static/keypoints_3d.json (static stage, artifact "keypoints_3d"): the support keypoints lifted onto the
  static Gaussians (`dynapose4d.deform.tracks.lift_keypoints`, mode "ray" with the support's skeleton):
  {"names": [N], "world": [N][3]} in the Gaussians' world frame (the canonical frame of the dynamic stage). The
  cape stage projects them into its training views; the dynamic stage attaches them to the canonical Gaussians
  (track and bone losses, keypoints.json).
- RUN/cape/driving_keypoints.json (cape stage, artifact "driving_keypoints"): the keypoints on every driving
  frame, {"points": [T][N][2], "confidence": [T][N]} (+ "video_hash" for a generated video), in the pixels of the
  driving frames' own files: the scene's video with its recentring undone, or RUN/inputs/video/ (SVD, made in
  the pipeline's frame). `read_driving_keypoints` maps them into the pipeline's frame with the same similarity
  (`dynapose4d.priors.svd.keypoint_file_recentring`).

A later stage reads them and never recomputes them: a missing or mismatched file is an InputError naming it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dynapose4d.core.errors import InputError
from dynapose4d.core.io import write_json
from dynapose4d.data.scene import Scene
from dynapose4d.deform.tracks import lift_keypoints
from dynapose4d.gaussians.model import GaussianModel
from dynapose4d.priors.svd import generated_video_folder, keypoint_file_recentring, read_source
from dynapose4d.stages.base import StageContext

KEYPOINTS_3D = "static/keypoints_3d.json"
DRIVING_KEYPOINTS = "cape/driving_keypoints.json"


def lift_support_keypoints(gaussians: GaussianModel, scene: Scene) -> torch.Tensor:
    """The scene's support keypoints [N, 2] (pixels at the reference camera) lifted onto `gaussians`: world
    points [N, 3] (`lift_keypoints`, mode "ray", with the support's skeleton)."""
    H, W = scene.image.shape[:2]
    if scene.keypoints.shape[0] == 0:
        return torch.zeros(0, 3)
    return lift_keypoints(gaussians.activated(), scene.keypoints.float(), scene.camera, W, H,
                          skeleton=list(scene.skeleton))


def write_keypoints_3d(path: str | Path, names: list[str], world: torch.Tensor) -> None:
    """RUN/static/keypoints_3d.json: {"names", "world": [N][3]} (atomically)."""
    write_json(path, {"names": list(names), "world": world.tolist()})


def read_keypoints_3d(ctx: StageContext) -> torch.Tensor:
    """The static stage's lifted support keypoints [N, 3] (world frame); InputError naming the file when it is
    missing or holds another number of keypoints than the scene."""
    path = ctx.run_dir / ctx.artifacts.get("static", {}).get("keypoints_3d", KEYPOINTS_3D)
    if not path.is_file():
        raise InputError(f"{path}: missing (the static stage writes the lifted support keypoints; run it again)")
    world = torch.tensor(json.loads(path.read_text())["world"], dtype=torch.float32).reshape(-1, 3)
    if world.shape[0] != ctx.scene.num_keypoints:
        raise InputError(f"{path}: {world.shape[0]} keypoints, the scene has {ctx.scene.num_keypoints} "
                         f"(run the static stage again)")
    return world


def write_driving_keypoints(ctx: StageContext, points: torch.Tensor, confidence: torch.Tensor,
                            generated: bool) -> None:
    """RUN/cape/driving_keypoints.json from points [T, N, 2] in the pipeline's pixels and confidence [T, N];
    `generated`: the frames are RUN/inputs/video/ (their hash is recorded, the pixels stay as they are)."""
    rec = keypoint_file_recentring(ctx.scene, generated=generated)
    saved = rec.to_scene(points) if rec is not None else points
    made = read_source(generated_video_folder(ctx.run_dir)) if generated else None
    hashed = {"video_hash": made.get("hash")} if made else {}  # which generated video (the dynamic stage checks)
    write_json(ctx.run_dir / DRIVING_KEYPOINTS, {"points": saved.tolist(), "confidence": confidence.tolist(),
                                                **hashed}, indent=None)


def read_driving_keypoints(ctx: StageContext, num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The cape stage's driving keypoints in the pipeline's pixels [T, N, 2] and their confidence [T, N], for a
    driving video of `num_frames` frames (the scene's, else the generated one); InputError naming the file when
    it is missing or was made on other frames."""
    path = ctx.run_dir / ctx.artifacts.get("cape", {}).get("driving_keypoints", DRIVING_KEYPOINTS)
    if "cape" not in ctx.artifacts or not path.is_file():
        raise InputError(f"{path}: missing (dynamic.lambda_kml > 0 or dynamic.lambda_track > 0 reads the cape "
                         f"stage's driving keypoints: run it, or set them to 0)")
    d = json.loads(path.read_text())
    pts, conf = torch.tensor(d["points"], dtype=torch.float32), torch.tensor(d["confidence"], dtype=torch.float32)
    T, N = num_frames, ctx.scene.num_keypoints
    generated = ctx.scene.video is None
    if pts.shape != (T, N, 2) or conf.shape != (T, N):
        raise InputError(f"{path}: points {tuple(pts.shape)}, the driving video needs ({T}, {N}, 2) "
                         f"(made on other driving frames: run the cape stage again)")
    made = read_source(generated_video_folder(ctx.run_dir)) if generated else None
    if d.get("video_hash") != (made.get("hash") if made else None):
        raise InputError(f"{path}: made on another generated driving video than RUN/inputs/video/ "
                         f"(run the cape stage again)")
    rec = keypoint_file_recentring(ctx.scene, generated=generated)
    return (rec.from_scene(pts) if rec is not None else pts), conf
