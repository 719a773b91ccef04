"""The dynamic stage's LightningModule: a deformation φ(S, τ) moves the static stage's Gaussians to follow the
driving video.

Losses (each with its λ, logged separately under dynamic/loss_*):
  L_ref  MSE of RGB (λ_rgb) and alpha (λ_alpha) at the reference camera over a batch of frames;
  KML    keypoint match: CAPE (frozen, eval mode) on the render at τ against CAPE on driving frame τ
         (the cape stage's driving keypoints; coordinates normalised by the image size, confidence-weighted);
         the gradient flows through CAPE into the render and the Gaussians; no CAPE forward when λ_kml = 0;
  SCL    spatio-temporal consistency: mean over Gaussians of ‖P_{τ+1} − P_τ‖² on centres;
  track, bone, rigid  optional terms (not in the paper; λ = 0 by default, see `DynamicConfig`);
  SDS    optional novel-view score distillation with the Zero-1-to-3 prior of the top-level `zero123` setting
         (the static stage's), conditioned on each driving frame (λ_sds, default 0). DreamGaussian4D's weights:
         4 × SDS (mean over novel views of the summed surrogate) against 10000 × the reference RGB MSE, i.e.
         λ_sds = 0.0004 · λ_rgb; the renders it scores are square, with the field of view of the square the
         (padded) driving frame becomes.
PAL = λ_kml · KML + λ_scl · SCL. The stage's wiring and outputs: `dynapose4d.stages.dynamic.stage`.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch.utils.data import IterableDataset

from dynapose4d.core.cameras import Camera, project
from dynapose4d.core.errors import ConfigError
from dynapose4d.core.seeding import DYNAMIC_FRAMES, torch_generator
from dynapose4d.deform import Deformation, gaussians_at
from dynapose4d.deform.losses import (
    KeypointFn,
    bone_length_loss,
    keypoint_match_loss,
    knn_indices,
    reference_loss,
    rigidity_loss,
    scl_pairs,
)
from dynapose4d.deform.tracks import Attachment, attach_points, carry_points
from dynapose4d.gaussians import GaussianModel
from dynapose4d.priors.framing import square_fov_y
from dynapose4d.render import rasterize
from dynapose4d.stages.dynamic.config import DynamicConfig

STAGE = "dynamic"


class DynamicGaussianModule(L.LightningModule):
    """The canonical Gaussians + φ trained on the driving video with L_ref, KML, SCL (and optional SDS).

    `keypoints_fn` (images [B,3,H,W] in [0,1] -> (points [B,N,2] px, confidence [B,N])) is the frozen CAPE
    (or any differentiable detector); `kp_targets` [T,N,2] px and `kp_confidence` [T,N] are its detections on
    the driving frames. Frozen priors are held outside the module's children, so they never reach a checkpoint.
    """

    def __init__(
        self,
        cfg: DynamicConfig,
        canonical: GaussianModel,
        phi: Deformation,
        video: torch.Tensor,  # [T, H, W, 4] RGBA driving frames
        camera: Camera,
        kp_targets: torch.Tensor | None = None,  # [T, N, 2] pixels
        kp_confidence: torch.Tensor | None = None,  # [T, N]
        keypoints_fn: KeypointFn | None = None,
        sds_fn: Any = None,  # callable(images [B,3,h,w], frames [B], Δelev [B], Δazim [B], progress) -> loss
        keypoints_3d: torch.Tensor | None = None,  # [N, 3] support keypoints lifted onto `canonical` (track, bone)
        skeleton: list[tuple[int, int]] | None = None,  # the support's bones (bone loss)
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.canonical = canonical
        self.phi = phi
        self.camera = camera
        self.num_frames, self.height, self.width = int(video.shape[0]), int(video.shape[1]), int(video.shape[2])
        self.register_buffer("video", video.float(), persistent=False)
        self.register_buffer("viewmats", camera.viewmat()[None], persistent=False)
        self.register_buffer("Ks", camera.K(self.width, self.height)[None], persistent=False)
        self.register_buffer("bg", torch.full((1, 3), float(cfg.background)), persistent=False)
        self.register_buffer("kp_targets", kp_targets.float() if kp_targets is not None else None, persistent=False)
        conf = kp_confidence if kp_confidence is not None or kp_targets is None else torch.ones(kp_targets.shape[:2])
        self.register_buffer("kp_confidence", conf.float() if conf is not None else None, persistent=False)
        self._frozen = {"keypoints_fn": keypoints_fn, "sds_fn": sds_fn}  # not nn children: never checkpointed
        if cfg.lambda_kml > 0 and (keypoints_fn is None or kp_targets is None):
            raise ConfigError("dynamic.lambda_kml > 0 needs a keypoint detector (CAPE) and driving keypoints")
        if cfg.lambda_sds > 0 and sds_fn is None:
            raise ConfigError("dynamic.lambda_sds > 0 needs the Zero-1-to-3 prior (dynapose4d.priors.zero123)")
        self.canonical.requires_grad_(cfg.train_canonical)
        nb = knn_indices(canonical.means, cfg.rigid_neighbours) if cfg.lambda_rigid > 0 else None
        self.register_buffer("neighbours", nb, persistent=False)
        att, rest = None, None  # the track and bone losses' keypoints, attached to the canonical Gaussians
        if cfg.lambda_track > 0 and kp_targets is None:
            raise ConfigError("dynamic.lambda_track > 0 needs the driving keypoints (cape stage)")
        if cfg.lambda_track > 0 or cfg.lambda_bone > 0:
            if keypoints_3d is None:
                raise ConfigError("dynamic.lambda_track > 0 or dynamic.lambda_bone > 0 needs the lifted support "
                                  "keypoints (static stage)")
            with torch.no_grad():  # as the written tracks (`carry_tracks`)
                rest = keypoints_3d.to(canonical.means.device)
                att = attach_points(rest, canonical.activated()["means"], cfg.track_neighbours)
        for name in ("idx", "weights", "offsets"):  # [N, k], [N, k], [N, k, 3]
            self.register_buffer(f"track_{name}", getattr(att, name) if att else None, persistent=False)
        self.register_buffer("track_rest", rest, persistent=False)  # [N, 3] lifted keypoints (canonical)
        bones = torch.tensor([[i, j] for i, j in (skeleton or []) if i != j], dtype=torch.long).reshape(-1, 2)
        self.register_buffer("bones", bones, persistent=False)  # [E, 2]

    # training -----------------------------------------------------------------------------------
    def training_step(self, frames: torch.Tensor, batch_idx: int) -> torch.Tensor:
        cfg, T = self.cfg, self.num_frames
        frames = frames.to(self.device).long()  # [B]
        B = frames.shape[0]
        use_scl = cfg.lambda_scl > 0 and T > 1
        partner = torch.where(frames < T - 1, frames + 1, frames - 1)  # consecutive frame for SCL
        g = gaussians_at(self.canonical, self.phi, self.taus(torch.cat([frames, partner]) if use_scl else frames))
        rgb, alpha = self.render_reference(g, B)  # [B, H, W, 3], [B, H, W, 1]: frames at the reference camera

        l_rgb, l_alpha = reference_loss(rgb, alpha, self.video[frames], cfg.background)
        loss = cfg.lambda_rgb * l_rgb + cfg.lambda_alpha * l_alpha  # L_ref
        logs = {"loss_rgb": l_rgb, "loss_alpha": l_alpha}
        if cfg.lambda_kml > 0:  # KML: CAPE on the renders against CAPE on the driving frames
            kml = self._keypoint_loss(self._frozen["keypoints_fn"](rgb.permute(0, 3, 1, 2))[0], frames)
            loss = loss + cfg.lambda_kml * kml
            logs["loss_kml"] = kml
        if use_scl:  # SCL: centres of consecutive frames
            scl = scl_pairs(g["means"][:B], g["means"][B:])
            loss = loss + cfg.lambda_scl * scl
            logs["loss_scl"] = scl
        if cfg.lambda_track > 0 or cfg.lambda_bone > 0:
            world = self.carried_keypoints(g, B)  # [B, N, 3] the lifted support keypoints, carried by φ
        if cfg.lambda_track > 0:  # track: those keypoints, projected, against the driving keypoints
            trk = self._keypoint_loss(project(world, self.viewmats[0], self.Ks[0])[0], frames)
            loss = loss + cfg.lambda_track * trk
            logs["loss_track"] = trk
        if cfg.lambda_bone > 0:  # bone: those keypoints keep the support skeleton's bone lengths
            bone = bone_length_loss(world, self.track_rest, self.bones)
            loss = loss + cfg.lambda_bone * bone
            logs["loss_bone"] = bone
        if cfg.lambda_rigid > 0:  # rigid: local isometry of the deformed centres
            rig = rigidity_loss(g["means"], self.canonical.means, self.neighbours)
            loss = loss + cfg.lambda_rigid * rig
            logs["loss_rigid"] = rig
        if cfg.lambda_sds > 0:  # SDS: novel views, the prior conditioned on each driving frame
            sds = self._sds(g, frames)
            loss = loss + cfg.lambda_sds * sds
            logs["loss_sds"] = sds
        logs["loss"] = loss
        self.log_dict({f"{STAGE}/{k}": v.detach() for k, v in logs.items()}, prog_bar=False, batch_size=B)
        return loss

    # rendering ----------------------------------------------------------------------------------
    def taus(self, frames: torch.Tensor) -> torch.Tensor:
        return frames.float() / max(self.num_frames - 1, 1)

    def render_frame(self, g: dict[str, torch.Tensor], b: int | None, viewmats: torch.Tensor | None = None,
                     Ks: torch.Tensor | None = None, width: int | None = None, height: int | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Render element b of a batched `gaussians_at` dict (b=None: an unbatched one) -> rgb [C,H,W,3], alpha."""
        pick = (lambda x: x[b]) if b is not None else (lambda x: x)
        vm = self.viewmats if viewmats is None else viewmats
        K = self.Ks if Ks is None else Ks
        rgb, alpha, _ = rasterize(pick(g["means"]), pick(g["quats"]), pick(g["scales"]), g["opacities"], g["colors"],
                                  vm, K, width or self.width, height or self.height,
                                  backgrounds=self.bg.expand(vm.shape[0], 3))
        return rgb, alpha

    def render_reference(self, g: dict[str, torch.Tensor], count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `count` elements of a batched `gaussians_at` dict at the reference camera: rgb [B, H, W, 3],
        alpha [B, H, W, 1]."""
        rgbs, alphas = [], []
        for b in range(count):
            rgb, alpha = self.render_frame(g, b)
            rgbs.append(rgb[0])
            alphas.append(alpha[0])
        return torch.stack(rgbs), torch.stack(alphas)

    # loss pieces --------------------------------------------------------------------------------
    def _keypoint_loss(self, points: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """KML's distance (`keypoint_match_loss`) of points [B, N, 2] px to the driving keypoints of `frames`."""
        return keypoint_match_loss(points, self.kp_targets[frames], self.kp_confidence[frames], self.width,
                                   self.height)

    def carried_keypoints(self, g: dict[str, torch.Tensor], count: int) -> torch.Tensor:
        """World positions [B, N, 3] of the lifted support keypoints carried by the first `count` elements of a
        batched `gaussians_at` dict (`carry_points` with the attachment made at construction)."""
        att = Attachment(self.track_idx, self.track_weights, self.track_offsets)
        return carry_points(att, self.canonical.splats["quats"], g["means"][:count], g["quats"][:count])

    def _sds(self, g: dict[str, torch.Tensor], frames: torch.Tensor) -> torch.Tensor:
        """Novel-view SDS on one random camera per frame of the batch, the prior conditioned on that driving frame."""
        B = frames.shape[0]
        lo, hi = self.cfg.sds_elevation_range
        d_elev = torch.empty(B).uniform_(lo, hi)
        d_azim = torch.empty(B).uniform_(-180.0, 180.0)
        imgs = []
        size = max(self.width, self.height)  # square renders of the square the driving frames are padded to
        fov = square_fov_y(self.camera.fov_y, self.width, self.height)
        for b in range(B):
            cam = Camera("sds", self.camera.elevation + float(d_elev[b]), self.camera.azimuth + float(d_azim[b]),
                         self.camera.radius, fov)
            rgb, _ = self.render_frame(g, b, cam.viewmat()[None].to(self.device),
                                       cam.K(size, size)[None].to(self.device), size, size)
            imgs.append(rgb[0])
        progress = min(1.0, self.global_step / max(1, self.cfg.steps))
        return self._frozen["sds_fn"](torch.stack(imgs).permute(0, 3, 1, 2), frames, d_elev, d_azim, progress)

    def configure_optimizers(self):
        groups = list(self.phi.param_groups())
        if self.cfg.train_canonical:
            s = self.canonical.splats
            groups.append({"params": [s["means"], s["scales"], s["quats"]], "lr": self.cfg.canonical_lr,
                           "name": "canonical_geometry"})
            groups.append({"params": [s["sh0"], s["opacities"]], "lr": self.cfg.canonical_color_lr,
                           "name": "canonical_appearance"})
        return torch.optim.Adam(groups, eps=1e-15)


class FrameBatches(IterableDataset):
    """An endless stream of random frame-index batches [B] (without replacement within a batch)."""

    def __init__(self, num_frames: int, batch: int, seed: int) -> None:
        self.num_frames, self.batch, self.seed = num_frames, min(batch, num_frames), seed

    def __iter__(self):
        dist = torch.distributed
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        g = torch_generator(self.seed, DYNAMIC_FRAMES, rank)
        while True:
            yield torch.randperm(self.num_frames, generator=g)[: self.batch]
