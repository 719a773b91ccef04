"""The dynamic stage: a deformation φ(S, τ) moves the static stage's Gaussians to follow the driving video.

Losses (each with its λ, logged separately under dynamic/loss_*):
  L_ref  MSE of RGB (λ_rgb) and alpha (λ_alpha) at the reference camera over a batch of frames;
  KML    keypoint match: CAPE (frozen, eval mode) on the render at τ against CAPE on driving frame τ
         (computed once per run; coordinates normalised by the image size, confidence-weighted); the
         gradient flows through CAPE into the render and the Gaussians; no CAPE forward when λ_kml = 0;
  SCL    spatio-temporal consistency: mean over Gaussians of ‖P_{τ+1} − P_τ‖² on centres;
  SDS    optional novel-view score distillation with the Zero-1-to-3 prior of the top-level `zero123` setting
         (the static stage's), conditioned on each driving frame (λ_sds, default 0). DreamGaussian4D's weights:
         4 × SDS (mean over novel views of the summed surrogate) against 10000 × the reference RGB MSE, i.e.
         λ_sds = 0.0004 · λ_rgb; the renders it scores are square, with the field of view of the square the
         (padded) driving frame becomes.
PAL = λ_kml · KML + λ_scl · SCL. Writes RUN/dynamic/deform.ckpt, keypoints.json, videos/, metrics.json. The
frozen priors are freed when training ends; on CUDA the stage's peak memory goes to its summary; a generated
driving video (RUN/inputs/video/) is an artifact, its hash in the summary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from dynapose4d import cape
from dynapose4d.core.cameras import Camera, project
from dynapose4d.core.errors import ConfigError, InputError
from dynapose4d.core.images import over_background
from dynapose4d.core.io import write_json
from dynapose4d.core.memory import free_memory, peak_memory_summary, reset_peak_memory
from dynapose4d.core.seeding import DYNAMIC_FRAMES, torch_generator
from dynapose4d.deform import (
    Deformation,
    build_deformation,
    gaussians_at,
    load_dynamic,
    render_4d,
    save_dynamic,
)
from dynapose4d.deform.losses import (
    KeypointFn,
    bone_length_loss,
    keypoint_match_loss,
    knn_indices,
    reference_loss,
    rigidity_loss,
    scl_pairs,
)
from dynapose4d.deform.tracks import Attachment, attach_keypoints, carry_points, keypoint_tracks, project_tracks
from dynapose4d.evaluation.report import evaluate_4d, flat_metrics, write_videos
from dynapose4d.gaussians import GaussianModel, load_ply
from dynapose4d.priors.framing import square_fov_y
from dynapose4d.priors.svd import (
    check_svd_weights,
    driving_video,
    generated_video_folder,
    keypoint_file_recentring,
    read_source,
)
from dynapose4d.priors.zero123 import Zero123Config, Zero123Prior, resolve_zero123
from dynapose4d.render import rasterize
from dynapose4d.stages.base import StageContext, build_trainer, quiet_fit, resume_checkpoint
from dynapose4d.stages.logger import log_images, log_summary, log_videos
from dynapose4d.stages.settings import DynamicConfig

__all__ = ["DynamicConfig", "DynamicGaussianModule", "gaussians_at", "load_dynamic", "run"]


class _FrameBatches(IterableDataset):
    """An endless stream of random frame-index batches [B] (without replacement within a batch)."""

    def __init__(self, num_frames: int, batch: int, seed: int) -> None:
        self.num_frames, self.batch, self.seed = num_frames, min(batch, num_frames), seed

    def __iter__(self):
        dist = torch.distributed
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        g = torch_generator(self.seed, DYNAMIC_FRAMES, rank)
        while True:
            yield torch.randperm(self.num_frames, generator=g)[: self.batch]


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
        support_keypoints: torch.Tensor | None = None,  # [N, 2] pixels at the reference camera (track loss)
        skeleton: list[tuple[int, int]] | None = None,  # the support's bones, to lift the track loss's keypoints
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
        att, rest = None, None  # the track and bone losses' keypoints, lifted and attached to the canonical Gaussians
        if cfg.lambda_track > 0 and kp_targets is None:
            raise ConfigError("dynamic.lambda_track > 0 needs the driving keypoints (cape stage)")
        if cfg.lambda_track > 0 or cfg.lambda_bone > 0:
            if support_keypoints is None:
                raise ConfigError("dynamic.lambda_track > 0 and dynamic.lambda_bone > 0 need the support keypoints")
            with torch.no_grad():  # as the written tracks (`keypoint_tracks`)
                rest, att = attach_keypoints(canonical.activated(), support_keypoints, camera, self.width,
                                             self.height, cfg.track_neighbours, skeleton=skeleton)
        for name in ("idx", "weights", "offsets"):  # [N, k], [N, k], [N, k, 3]
            self.register_buffer(f"track_{name}", getattr(att, name) if att else None, persistent=False)
        self.register_buffer("track_rest", rest, persistent=False)  # [N, 3] lifted keypoints (canonical)
        bones = torch.tensor([[i, j] for i, j in (skeleton or []) if i != j], dtype=torch.long).reshape(-1, 2)
        self.register_buffer("bones", bones, persistent=False)  # [E, 2]

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

    # training -----------------------------------------------------------------------------------
    def training_step(self, frames: torch.Tensor, batch_idx: int) -> torch.Tensor:
        cfg, T = self.cfg, self.num_frames
        frames = frames.to(self.device).long()  # [B]
        B = frames.shape[0]
        use_scl = cfg.lambda_scl > 0 and T > 1
        partner = torch.where(frames < T - 1, frames + 1, frames - 1)  # consecutive frame for SCL
        all_frames = torch.cat([frames, partner]) if use_scl else frames
        g = gaussians_at(self.canonical, self.phi, self.taus(all_frames))  # means [B(+B), N, 3] ...
        rgbs, alphas = [], []
        for b in range(B):
            rgb, alpha = self.render_frame(g, b)
            rgbs.append(rgb[0])
            alphas.append(alpha[0])
        rgb, alpha = torch.stack(rgbs), torch.stack(alphas)  # [B, H, W, 3], [B, H, W, 1]
        l_rgb, l_alpha = reference_loss(rgb, alpha, self.video[frames], cfg.background)
        loss = cfg.lambda_rgb * l_rgb + cfg.lambda_alpha * l_alpha
        logs = {"loss_rgb": l_rgb, "loss_alpha": l_alpha}
        if cfg.lambda_kml > 0:
            pred, _ = self._frozen["keypoints_fn"](rgb.permute(0, 3, 1, 2))
            kml = keypoint_match_loss(pred, self.kp_targets[frames], self.kp_confidence[frames], self.width,
                                      self.height)
            loss = loss + cfg.lambda_kml * kml
            logs["loss_kml"] = kml
        if use_scl:
            scl = scl_pairs(g["means"][:B], g["means"][B:])
            loss = loss + cfg.lambda_scl * scl
            logs["loss_scl"] = scl
        if cfg.lambda_track > 0 or cfg.lambda_bone > 0:
            att = Attachment(self.track_idx, self.track_weights, self.track_offsets)
            world = carry_points(att, self.canonical.splats["quats"], g["means"][:B], g["quats"][:B])  # [B, N, 3]
        if cfg.lambda_track > 0:
            px, _ = project(world, self.viewmats[0], self.Ks[0])  # [B, N, 2]
            trk = keypoint_match_loss(px, self.kp_targets[frames], self.kp_confidence[frames], self.width,
                                      self.height)
            loss = loss + cfg.lambda_track * trk
            logs["loss_track"] = trk
        if cfg.lambda_bone > 0:
            bone = bone_length_loss(world, self.track_rest, self.bones)
            loss = loss + cfg.lambda_bone * bone
            logs["loss_bone"] = bone
        if cfg.lambda_rigid > 0:
            rig = rigidity_loss(g["means"], self.canonical.means, self.neighbours)
            loss = loss + cfg.lambda_rigid * rig
            logs["loss_rigid"] = rig
        if cfg.lambda_sds > 0:
            sds = self._sds(g, frames)
            loss = loss + cfg.lambda_sds * sds
            logs["loss_sds"] = sds
        logs["loss"] = loss
        self.log_dict({f"dynamic/{k}": v.detach() for k, v in logs.items()}, prog_bar=False, batch_size=B)
        return loss

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


# ------------------------------------------------------------------------------------------------
# wiring: CAPE, driving keypoints, SDS
# ------------------------------------------------------------------------------------------------
class CapeKeypoints:
    """The frozen CAPE model as a `KeypointFn`: support = the scene's image + keypoints, queries = renders. The
    support's tokens are computed once (per device), not in every training step."""

    def __init__(self, model: Any, support_image: torch.Tensor, support_keypoints: torch.Tensor,
                 skeleton: list[tuple[int, int]]) -> None:
        self.model = model
        self.support_image = support_image  # [3, H, W] over the background
        self.support_keypoints = support_keypoints  # [N, 2] px
        self.skeleton = skeleton
        self._support: Any = None  # dynapose4d.cape.PreparedSupport on the queries' device

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dev = images.device
        if self._support is None or self._support.tokens.device != dev:
            self.model.to(dev)
            with torch.no_grad():  # the model is frozen: the tokens are constants
                self._support = cape.prepare_support(self.support_image.to(dev), self.support_keypoints.to(dev),
                                                     self.skeleton, checkpoint=self.model)
        return cape.predict_prepared(self._support, images)


def _cape_keypoints(ctx: StageContext, background: float) -> CapeKeypoints:
    model = cape.load_keypoint_model(ctx.artifact("cape", "model"))  # CAPEModel, or PoseAnything via its pointer
    model.eval()
    model.requires_grad_(False)
    img = ctx.scene.image
    support = over_background(img, background).permute(2, 0, 1).contiguous()
    return CapeKeypoints(model, support, ctx.scene.keypoints.float(), list(ctx.scene.skeleton))


def _driving_keypoints(ctx: StageContext, video: torch.Tensor, keypoints_fn: KeypointFn | None, background: float
                       ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """p_τ for every driving frame: the cape stage's driving_keypoints.json when it matches the video (its shape,
    and for a generated video the hash of the frames it was made on), else CAPE run once here on the driving
    frames. None when neither is available."""
    import json

    T, N = video.shape[0], ctx.scene.num_keypoints
    try:
        path = ctx.artifact("cape", "driving_keypoints")
    except InputError:
        path = None
    if path is not None and Path(path).is_file():
        d = json.loads(Path(path).read_text())
        pts, conf = torch.tensor(d["points"], dtype=torch.float32), torch.tensor(d["confidence"], dtype=torch.float32)
        made = read_source(generated_video_folder(ctx.run_dir)) if ctx.scene.video is None else None
        same_video = d.get("video_hash") == (made.get("hash") if made else None)
        if pts.shape == (T, N, 2) and conf.shape == (T, N) and same_video:
            rec = keypoint_file_recentring(ctx.scene, generated=ctx.scene.video is None)
            return (rec.from_scene(pts) if rec is not None else pts), conf
    if keypoints_fn is None:
        return None
    imgs = over_background(video, background).permute(0, 3, 1, 2)
    pts, conf = [], []
    with torch.no_grad():
        for i in range(0, T, 8):
            p, c = keypoints_fn(imgs[i:i + 8])
            pts.append(p.cpu())
            conf.append(c.cpu())
    return torch.cat(pts).float(), torch.cat(conf).float()


class Zero123PerFrame:
    """The Zero-1-to-3 prior (the top-level `zero123` setting) conditioned per driving frame seen from the
    reference camera at `elevation` degrees: `(images [B,3,S,S], frames [B], Δelevation [B], Δazimuth [B],
    progress) -> SDS loss` (mean over the batch). Built lazily on first use, held outside the LightningModule's
    children (never checkpointed); `release()` frees it."""

    def __init__(self, cfg: DynamicConfig, video: torch.Tensor, zero123: Zero123Config | None = None,
                 elevation: float = 0.0) -> None:
        self.cfg, self.video = cfg, video  # [T, H, W, 4]
        self.zero123 = zero123 or Zero123Config()
        self.elevation = float(elevation)
        self.prior: Any = None
        self.refs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def release(self) -> None:
        """Drop the model and the cached conditionings (the stage calls this when training ends)."""
        self.prior = None
        self.refs = {}

    def __call__(self, images: torch.Tensor, frames: torch.Tensor, d_elev: torch.Tensor, d_azim: torch.Tensor,
                 progress: float) -> torch.Tensor:
        c = self.cfg
        if self.prior is None:
            self.prior = Zero123Prior.from_config(self.zero123, device=images.device)
        n = frames.shape[0]
        losses, grads = [], []
        for b, f in enumerate(frames.tolist()):
            if f not in self.refs:
                fr = self.video[f]
                rgb = over_background(fr, 1.0).permute(2, 0, 1)[None]  # over white
                self.prior.set_reference(rgb.to(images.device), elevation=self.elevation)
                self.refs[f] = (self.prior.clip_embedding, self.prior.ref_latent)
            self.prior.clip_embedding, self.prior.ref_latent = self.refs[f]
            # each frame's image gradient now, so its VAE-encoder graph is freed before the next frame (stacking
            # the 14 losses kept 14 graphs alive until the backward: 19.4 GB peak at full size on the CPU)
            leaf = images[b:b + 1].detach().requires_grad_(True)  # [1, 3, S, S]
            with torch.enable_grad():
                loss = self.prior.sds(leaf, d_elev[b:b + 1], d_azim[b:b + 1], torch.zeros(1), progress, c.sds)
                (grad,) = torch.autograd.grad(loss, leaf)
            losses.append(loss.detach())
            grads.append(grad / n)
        g = torch.cat(grads)  # [B, 3, S, S] = d(mean loss) / d images
        surrogate = (images * g).sum()  # gradient g into the renders
        return surrogate - surrogate.detach() + torch.stack(losses).mean()  # value: the mean SDS loss


def _sds_fn(cfg: DynamicConfig, video: torch.Tensor, zero123: Zero123Config | None = None,
            elevation: float = 0.0) -> Zero123PerFrame:
    """Fail before training when the Zero-1-to-3 weights are missing; the prior itself loads on first use."""
    zero123 = zero123 or Zero123Config()
    resolve_zero123(zero123.source)
    return Zero123PerFrame(cfg, video, zero123, elevation)


# ------------------------------------------------------------------------------------------------
# the stage
# ------------------------------------------------------------------------------------------------
def build_module(ctx: StageContext, cfg: DynamicConfig, video: torch.Tensor, keypoints_fn: KeypointFn | None = None,
                 zero123: Zero123Config | None = None) -> DynamicGaussianModule:
    """The stage's LightningModule from the static stage's Gaussians, the driving video, (λ_kml > 0) CAPE and
    (λ_sds > 0) the Zero-1-to-3 prior `zero123` (default: the run config's top-level `zero123`)."""
    targets = conf = None
    if cfg.lambda_kml > 0 or cfg.lambda_track > 0:  # CAPE first: a missing cape stage fails before anything else
        if cfg.lambda_kml > 0:
            keypoints_fn = keypoints_fn or _cape_keypoints(ctx, cfg.background)
        kp = _driving_keypoints(ctx, video, keypoints_fn, cfg.background)
        if kp is None:
            raise ConfigError("dynamic.lambda_kml > 0 and dynamic.lambda_track > 0 need the cape stage (RUN/cape/): "
                              "run it, or set them to 0")
        targets, conf = kp
    zero123 = zero123 or ctx.zero123
    sds = _sds_fn(cfg, video, zero123, ctx.scene.camera.elevation) if cfg.lambda_sds > 0 else None
    canonical = load_ply(ctx.artifact("static", "gaussians"))
    phi = build_deformation(cfg.deform, canonical.means, video.shape[0], cfg.hexplane, cfg.control, seed=ctx.seed)
    return DynamicGaussianModule(cfg, canonical, phi, video, ctx.scene.camera, targets, conf,
                                 keypoints_fn if cfg.lambda_kml > 0 else None, sds, ctx.scene.keypoints.float(),
                                 list(ctx.scene.skeleton))


def check_weights(cfg: DynamicConfig, scene: Any, zero123: Zero123Config, run_dir: Path) -> None:
    """Raise MissingWeightsError now (before a run folder exists) when this stage will need weights that this
    machine does not have: Zero-1-to-3 for λ_sds > 0, Stable Video Diffusion when the scene has no video and
    none was generated into `run_dir` yet."""
    if cfg.lambda_sds > 0:
        resolve_zero123(zero123.source)
    if scene.video is None and not (Path(run_dir) / "inputs" / "video" / "source.json").is_file():
        check_svd_weights(cfg.svd.model)


def run(ctx: StageContext, cfg: DynamicConfig, keypoints_fn: KeypointFn | None = None,
        zero123: Zero123Config | None = None) -> dict[str, str]:
    """Train φ on the driving video, then write RUN/dynamic/{deform.ckpt, keypoints.json, videos/, metrics.json}.

    `keypoints_fn` replaces CAPE (tests; any differentiable detector); `zero123` the run config's top-level
    Zero-1-to-3 setting (λ_sds > 0). Returns the artifacts (with "driving_video" when it was generated)."""
    cfg.validate()
    if cfg.lambda_kml > 0 and keypoints_fn is None:
        ctx.artifact("cape", "model")  # fails now (clear message) rather than after the driving video
    zero123 = zero123 or ctx.zero123
    if cfg.lambda_sds > 0:  # missing Zero-1-to-3 weights fail before the driving video is generated
        resolve_zero123(zero123.source)
    scene = ctx.scene
    device = reset_peak_memory(ctx.trainer)  # the stage's peak includes a driving video generated here
    video = driving_video(scene, ctx.run_dir, cfg.svd, seed=ctx.seed)  # [T, H, W, 4]
    if tuple(video.shape[1:3]) != (scene.height, scene.width):
        raise InputError(f"{scene.root}: driving video frames are {tuple(video.shape[1:3])}, the image is "
                         f"{(scene.height, scene.width)}")
    module = build_module(ctx, cfg, video, keypoints_fn, zero123)
    ctx.stage_dir("dynamic")
    trainer = build_trainer(ctx, "dynamic", cfg.steps)
    loader = DataLoader(_FrameBatches(module.num_frames, cfg.batch_frames, ctx.seed), batch_size=None)
    with quiet_fit():
        trainer.fit(module, loader, ckpt_path=resume_checkpoint(ctx, "dynamic"))
    release_priors(module)
    artifacts = {"deform": "dynamic/deform.ckpt", "keypoints": "dynamic/keypoints.json", "videos": "dynamic/videos"}
    summary: dict[str, Any] = peak_memory_summary("dynamic", device)
    source = read_source(generated_video_folder(ctx.run_dir)) if scene.video is None else None
    if source is not None:  # the generated driving video: an artifact with its own hash
        artifacts["driving_video"] = generated_video_folder(ctx.run_dir).relative_to(ctx.run_dir).as_posix()
        summary["dynamic/driving_video_hash"] = source.get("hash")
    if trainer.is_global_zero:
        metrics = write_outputs(ctx, cfg, module, trainer.logger)
        if metrics:
            artifacts["metrics"] = "dynamic/metrics.json"

        log_summary(trainer.logger, summary)
    return artifacts


def release_priors(module: DynamicGaussianModule) -> None:
    """Free the frozen models a trained module holds (the Zero-1-to-3 prior, CAPE) and their device memory."""
    sds = module._frozen.get("sds_fn")
    if hasattr(sds, "release"):
        sds.release()
    module._frozen = {k: None for k in module._frozen}
    free_memory()


def write_outputs(ctx: StageContext, cfg: DynamicConfig, module: DynamicGaussianModule, logger: Any = None
                  ) -> dict[str, Any]:
    """deform.ckpt, keypoints.json (3D tracks + their reference-view projections), videos and, when the scene
    has gt/, metrics.json beside the no-motion baselines. Returns the metrics ({} without gt/)."""
    out = ctx.stage_dir("dynamic")
    module.eval()
    scene, T, W, H = ctx.scene, module.num_frames, module.width, module.height
    save_module(out / "deform.ckpt", module)
    with torch.no_grad():
        tracks = keypoint_tracks(module.canonical, module.phi, scene.keypoints, scene.camera, W, H, T,
                                 cfg.track_neighbours, skeleton=list(scene.skeleton)).cpu()  # [T, N, 3]
    conf = module.kp_confidence.cpu() if module.kp_confidence is not None else torch.ones(T, scene.num_keypoints)
    ref_2d = project_tracks(tracks, scene.camera, W, H)  # [T, N, 2] px of the pipeline's frame
    if scene.recentring is not None:  # written in the pixels of the scene's image.png
        ref_2d = scene.recentring.to_scene(ref_2d)
    write_json(out / "keypoints.json", {
        "names": list(scene.names),
        "world": tracks.tolist(),
        "reference_2d": ref_2d.tolist(),
        "confidence": conf.tolist(),
        "skeleton": [list(b) for b in scene.skeleton],  # the support's bones (the exported skeleton's tree)
    })
    kp_targets = module.kp_targets.cpu() if module.kp_targets is not None else None
    paths = write_videos(out / "videos", module.canonical, module.phi, scene.camera, module.video.cpu(), tracks,
                         kp_targets, cfg.background, cfg.video_fps, cfg.orbit_frames)
    log_videos(logger, "dynamic/videos", list(paths.values()))
    last = [0.0, 1.0] if T > 1 else [0.0]
    rgb = render_4d(module.canonical, module.phi, [scene.camera], last, W, H, cfg.background)[0][:, 0]
    drive = over_background(module.video[[0, T - 1] if T > 1 else [0]].cpu(), cfg.background)
    log_images(logger, "dynamic/reference_first_last", [torch.cat([r, d], 1) for r, d in zip(rgb, drive)],
               captions=["frame 0: render | driving", f"frame {T - 1}: render | driving"][: len(last)])
    metrics: dict[str, Any] = {}
    gt_dir = getattr(scene, "gt_dir", None)
    if cfg.evaluate and gt_dir is not None and Path(gt_dir).is_dir():
        with torch.no_grad():
            gt_tracks = tracks if getattr(scene, "auto_keypoints", None) is None else None  # auto: not the gt's
            metrics = evaluate_4d(module.canonical, module.phi, gt_dir, gt_tracks, scene.camera, cfg.background)
        write_json(out / "metrics.json", metrics)
        log_summary(logger, {f"dynamic/{k}": v for k, v in flat_metrics(metrics).items()})
    return metrics


def save_module(path: str | Path, module: DynamicGaussianModule) -> None:
    """deform.ckpt of a trained module (canonical Gaussians + φ + the reference camera and image size)."""
    save_dynamic(path, module.canonical, module.phi, extra={
        "camera": module.camera.to_dict(), "width": module.width, "height": module.height,
        "background": float(module.cfg.background), "num_frames": module.num_frames,
    })

