"""Stable Video Diffusion driving-video prior, through the real loading code with a tiny random-weight pipeline."""

from __future__ import annotations

import json

import pytest
import torch

from dynapose4d.core.errors import MissingWeightsError
from dynapose4d.priors import svd
from dynapose4d.priors.svd import SVDConfig, alpha_from_white, driving_video, generate_video, load_svd_pipeline


def _tiny_pipeline(path):
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    unet = UNetSpatioTemporalConditionModel(
        sample_size=8, in_channels=8, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        cross_attention_dim=32, num_attention_heads=(2, 4), addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=24, num_frames=4,
    )
    vae = AutoencoderKLTemporalDecoder(block_out_channels=(32, 32), in_channels=3, out_channels=3,
                                       down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                                       latent_channels=4, layers_per_block=1)
    enc = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, projection_dim=32, num_hidden_layers=2, num_attention_heads=4, image_size=224,
        intermediate_size=37, patch_size=32))
    sched = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                   prediction_type="v_prediction", sigma_max=700.0, sigma_min=0.002,
                                   timestep_type="continuous", use_karras_sigmas=True, interpolation_type="linear",
                                   steps_offset=1, timestep_spacing="leading")
    proc = CLIPImageProcessor(crop_size={"height": 224, "width": 224}, size={"shortest_edge": 224})
    pipe = StableVideoDiffusionPipeline(vae=vae, image_encoder=enc, unet=unet, scheduler=sched,
                                        feature_extractor=proc)
    pipe.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def tiny_svd(tmp_path_factory):
    return _tiny_pipeline(tmp_path_factory.mktemp("svd") / "tiny-svd")


def _image(h=24, w=20):
    img = torch.zeros(h, w, 4)
    img[6:18, 5:15] = torch.tensor([0.8, 0.2, 0.1, 1.0])
    return img


def test_tiny_pipeline_generates_T_frames_of_the_scene_size(tiny_svd, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = SVDConfig(model=str(tiny_svd), num_frames=4, width=32, height=32, num_inference_steps=2,
                    decode_chunk_size=2, device="cpu")
    img = _image()
    frames = generate_video(img, cfg, seed=0)
    assert frames.shape == (4, 24, 20, 4)
    assert torch.isfinite(frames).all() and frames.min() >= 0 and frames.max() <= 1
    assert torch.allclose(frames[0, ..., 3:], img[..., 3:])  # a saturated object on white: the rule gives its mask


def test_driving_video_saves_and_reuses_frames(tiny_svd, tmp_path, monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = SVDConfig(model=str(tiny_svd), num_frames=3, width=32, height=32, num_inference_steps=1, device="cpu")
    scene = SimpleNamespace(video=None, image=_image(16, 16))
    v = driving_video(scene, tmp_path, cfg)
    files = sorted((tmp_path / "inputs" / "video").glob("*.png"))
    assert [f.name for f in files] == ["000.png", "001.png", "002.png"]
    cfg.device = "cuda"  # not part of the video's identity: a second call reads the saved frames, loads nothing
    monkeypatch.setattr(svd, "load_svd_pipeline", lambda *a, **k: pytest.fail("the saved frames were not reused"))
    again = driving_video(scene, tmp_path, cfg)
    assert again.shape == v.shape == (3, 16, 16, 4)
    assert (again - v).abs().max() <= 1 / 255 + 1e-6
    scene.video = torch.rand(5, 16, 16, 4)
    assert driving_video(scene, tmp_path, cfg) is scene.video  # the scene's own video wins


def test_missing_weights_error_explains_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingWeightsError, match="not in the local Hugging Face cache"):
        load_svd_pipeline("stabilityai/stable-video-diffusion-img2vid")
    with pytest.raises(MissingWeightsError, match=f"no folder {tmp_path}/absent"):
        load_svd_pipeline(str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingWeightsError, match="model_index.json"):
        load_svd_pipeline(str(tmp_path / "empty"))


def test_alpha_from_white():
    rgb = torch.tensor([[1.0, 1.0, 1.0], [0.96, 1.0, 1.0], [0.2, 0.9, 1.0]])
    assert torch.allclose(alpha_from_white(rgb, 0.08)[:, 0], torch.tensor([0.0, 0.5, 1.0]), atol=1e-5)


# --- the generated video as a hashed artifact, framing, the alpha rule, fp16 files, freeing -----------------


class FakeSVDPipe:
    """Stands in for StableVideoDiffusionPipeline: records every call's conditioning image and keyword
    arguments and returns `num_frames` copies of that image ([1, T, 3, h, w] in [0, 1], like output_type="pt"),
    each frame darkened by `fade` per frame so that frames differ. It holds a reference to itself, as real
    pipelines' parts do through their hooks: only a garbage collection frees it."""

    def __init__(self, fade: float = 0.0) -> None:
        self.calls: list[dict] = []
        self.fade = fade
        self.me = self

    def __call__(self, image, **kw):
        from types import SimpleNamespace

        import numpy as np

        self.calls.append({"image": image, **kw})
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)  # [3, h, w]
        frames = torch.stack([x * (1 - self.fade * t) for t in range(kw["num_frames"])])
        return SimpleNamespace(frames=frames[None])


def _disc(h: int, w: int, cy: float, cx: float, r: float) -> torch.Tensor:
    """RGBA [h, w, 4]: a dark-red disc (alpha 1) on transparent."""
    yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    inside = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).float()[..., None]
    return torch.cat([torch.tensor([0.3, 0.05, 0.05]) * inside, inside], -1)


def test_generated_video_is_regenerated_when_its_inputs_change(tmp_path, monkeypatch):
    """RUN/inputs/video/ is reused only for the same scene image, seed and SVD settings (source.json carries
    their hash); any change regenerates it, and frames without a source.json are never reused. Before the fix
    the folder was reused whatever changed."""
    from types import SimpleNamespace

    pipes: list[FakeSVDPipe] = []
    monkeypatch.setattr(svd, "load_svd_pipeline", lambda *a, **k: pipes.append(FakeSVDPipe()) or pipes[-1])
    cfg = SVDConfig(num_frames=3, width=32, height=32, device="cpu")
    scene = SimpleNamespace(video=None, image=_disc(16, 16, 8, 8, 5))
    folder = tmp_path / "inputs" / "video"
    driving_video(scene, tmp_path, cfg, seed=0)
    source = json.loads((folder / "source.json").read_text())
    assert source["hash"] == svd.video_hash(scene.image, cfg, 0) and source["seed"] == 0
    assert source["svd"]["motion_bucket_id"] == 127 and len(pipes) == 1
    driving_video(scene, tmp_path, cfg, seed=0)
    assert len(pipes) == 1  # same inputs: reused
    driving_video(scene, tmp_path, cfg, seed=1)
    assert len(pipes) == 2  # the seed changed
    driving_video(scene, tmp_path, SVDConfig(num_frames=3, width=32, height=32, motion_bucket_id=60), seed=1)
    assert len(pipes) == 3 and json.loads((folder / "source.json").read_text())["svd"]["motion_bucket_id"] == 60
    scene.image = _disc(16, 16, 8, 9, 5)
    driving_video(scene, tmp_path, SVDConfig(num_frames=3, width=32, height=32, motion_bucket_id=60), seed=1)
    assert len(pipes) == 4  # the scene image changed
    (folder / "source.json").unlink()  # frames of unknown origin (e.g. an older version's)
    driving_video(scene, tmp_path, SVDConfig(num_frames=3, width=32, height=32, motion_bucket_id=60), seed=1)
    assert len(pipes) == 5 and (folder / "source.json").is_file()
    assert sorted(p.name for p in folder.iterdir()) == ["000.png", "001.png", "002.png", "source.json"]
    assert pipes[0].calls[0]["decode_chunk_size"] == 3  # all frames decoded at once by default


def test_the_dynamic_stage_records_the_generated_video(tmp_path, monkeypatch):
    """A scene without a video: the dynamic stage returns the generated frames as the `driving_video` artifact
    (so the manifest lists it) and writes their hash to its summary (the manifest's metrics)."""
    from dynamic_helpers import STATIC_ARTIFACTS, perfect_static

    from dynapose4d.data.scene import load_scene
    from dynapose4d.data.synthetic import make_object, write_scene
    from dynapose4d.pipeline.config import TrainerConfig, WandbConfig
    from dynapose4d.stages.base import StageContext
    from dynapose4d.stages.dynamic import stage as dynamic

    monkeypatch.setattr(svd, "load_svd_pipeline", lambda *a, **k: FakeSVDPipe(fade=0.05))
    root = write_scene("lamp", tmp_path / "scene", seed=1, num_frames=1, size=24)
    import shutil

    shutil.rmtree(root / "video")
    scene = load_scene(root)
    assert scene.video is None
    perfect_static(make_object("lamp", 1, 1), tmp_path / "run", scene)
    ctx = StageContext(scene=scene, run_dir=tmp_path / "run", artifacts={"static": dict(STATIC_ARTIFACTS)},
                       trainer=TrainerConfig(accelerator="cpu", progress_bar=False), wandb=WandbConfig(enabled=False))
    cfg = dynamic.DynamicConfig(steps=1, lambda_kml=0.0, lambda_scl=0.0, orbit_frames=2, evaluate=False)
    cfg.svd.num_frames, cfg.svd.width, cfg.svd.height = 3, 32, 32
    arts = dynamic.run(ctx, cfg)
    assert arts["driving_video"] == "inputs/video"
    source = json.loads((tmp_path / "run" / "inputs" / "video" / "source.json").read_text())
    summary = json.loads((tmp_path / "run" / "dynamic" / "summary.json").read_text())
    assert summary["dynamic/driving_video_hash"] == source["hash"] == svd.video_hash(scene.image, cfg.svd, 0)


def _dark(x: torch.Tensor) -> tuple[float, float, float, float]:
    """(centre row, centre col, height, width) in pixels of the dark pixels (< 0.5 in every channel) of [h, w, 3]."""
    ys, xs = torch.nonzero((x < 0.5).all(-1), as_tuple=True)
    return (ys.float().mean().item() + 0.5, xs.float().mean().item() + 0.5,
            (ys.max() - ys.min() + 1).item(), (xs.max() - xs.min() + 1).item())


def test_non_square_image_is_padded_for_svd_and_mapped_back():
    """A 24 x 48 image (disc of radius 8 at (12, 14)) is padded with white to 48 x 48 for a 32 x 32 generation:
    the conditioning keeps the disc round, at (12 + 12, 14) x 32 / 48; the frames come back at 24 x 48 with the
    content where it was. Before the fix the conditioning was the image squeezed to a square (a 2 : 1 ellipse)."""
    import numpy as np

    pipe = FakeSVDPipe()
    img = _disc(24, 48, 12, 14, 8)
    frames = generate_video(img, SVDConfig(num_frames=2, width=32, height=32), pipe=pipe)
    cond = torch.from_numpy(np.asarray(pipe.calls[0]["image"], dtype=np.float32) / 255.0)  # [32, 32, 3]
    cy, cx, h, w = _dark(cond)
    s = 32 / 48
    assert cy == pytest.approx(24 * s, abs=0.5) and cx == pytest.approx(14 * s, abs=0.5)
    assert abs(h - w) <= 1 and h == pytest.approx(16 * s, abs=1.5)
    assert cond[:6].min() > 0.95 and cond[-6:].min() > 0.95  # white padding above and below
    assert frames.shape == (2, 24, 48, 4)
    back = frames[1, ..., :3] * frames[1, ..., 3:] + 1 - frames[1, ..., 3:]  # the generated frame over white
    want = img[..., :3] * img[..., 3:] + 1 - img[..., 3:]
    cy, cx, h, w = _dark(back)
    assert cy == pytest.approx(12, abs=0.5) and cx == pytest.approx(14, abs=0.5) and abs(h - w) <= 2  # resampling
    assert (back - want).abs().mean() < 0.04  # edges blurred by the 48 -> 32 -> 48 round trip


def test_every_frame_alpha_comes_from_one_rule():
    """Frame 0 and the generated frames get their alpha from the same rule (distance to white), and each frame
    composited over white is exactly the RGB SVD drew (frame 0: the input over white). The input has a
    near-white opaque pixel and a half-transparent one: before the fix frame 0 kept the input's mask (1 and 0.5
    there) while a generated frame with the same pixels got the rule's (0.25 and 1)."""
    pipe = FakeSVDPipe()
    img = _disc(16, 16, 8, 8, 5)
    img[2, 2] = torch.tensor([0.98, 0.98, 0.98, 1.0])  # opaque, almost white
    img[3, 3] = torch.tensor([0.0, 0.0, 0.0, 0.5])  # half-transparent black: 0.5 grey over white
    cfg = SVDConfig(num_frames=3, width=16, height=16, alpha_threshold=0.08)
    frames = generate_video(img, cfg, pipe=pipe)
    over = frames[..., :3] * frames[..., 3:] + 1 - frames[..., 3:]  # [T, H, W, 3]
    for t in range(3):
        torch.testing.assert_close(frames[t, ..., 3:], alpha_from_white(over[t], 0.08), atol=1e-5, rtol=0)
    torch.testing.assert_close(over[0], img[..., :3] * img[..., 3:] + 1 - img[..., 3:], atol=1e-5, rtol=0)
    assert frames[0, 2, 2, 3].item() == pytest.approx(0.25, abs=1e-4)
    assert frames[0, 3, 3, 3].item() == pytest.approx(1.0)
    # a static "video" (every frame is the conditioning image): same alpha in every frame, away from resampling
    torch.testing.assert_close(frames[1, ..., 3:], frames[0, ..., 3:], atol=0.05, rtol=0)


def test_fp16_files_alone_load(tiny_svd, tmp_path, monkeypatch):
    """A folder with only the files the download hint fetches (SVD_FILES: the fp16 weight files, configs,
    model_index.json) loads (variant="fp16", cast to float32 on CPU); a full-precision-only folder loads too.
    Before the fix the loader asked for the full-precision files only, so the fp16 download did not load."""
    import shutil

    from diffusers import StableVideoDiffusionPipeline
    from huggingface_hub.utils import filter_repo_objects

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    full = StableVideoDiffusionPipeline.from_pretrained(str(tiny_svd))
    saved = tmp_path / "saved"
    full.save_pretrained(str(saved), variant="fp16")
    (saved / "unet" / "extra.bin").write_bytes(b"not read")  # something the hint must not fetch
    files = [p.relative_to(saved).as_posix() for p in saved.rglob("*") if p.is_file()]
    fetched = list(filter_repo_objects(files, allow_patterns=list(svd.SVD_FILES)))
    assert sorted(fetched) == sorted(set(files) - {"unet/extra.bin"})
    only = tmp_path / "fp16-only"
    for f in fetched:
        (only / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(saved / f, only / f)
    pipe = load_svd_pipeline(str(only), "cpu")
    assert pipe.unet.dtype == torch.float32
    torch.testing.assert_close(pipe.unet.conv_in.weight, full.unet.conv_in.weight)  # the same weights, read back
    assert load_svd_pipeline(str(tiny_svd), "cpu").unet.dtype == torch.float32  # no fp16 files: the others
    with pytest.raises(MissingWeightsError) as e:
        load_svd_pipeline("stabilityai/stable-video-diffusion-img2vid")
    hint = str(e.value)
    assert "hf download stabilityai/stable-video-diffusion-img2vid" in hint and "dynamic.svd.model=DIR" in hint
    assert all(f"--include '{p}'" in hint for p in svd.SVD_FILES) and "\n" not in hint


def test_svd_pipeline_is_freed_after_generation(tmp_path, monkeypatch):
    """The pipeline `driving_video` loads is gone (weakref dead) once it returns, although it sits in a
    reference cycle (FakeSVDPipe.me): the stage collects it before training."""
    import weakref
    from types import SimpleNamespace

    refs: list[weakref.ref] = []

    def load(*a, **k):
        pipe = FakeSVDPipe()
        refs.append(weakref.ref(pipe))
        return pipe

    monkeypatch.setattr(svd, "load_svd_pipeline", load)
    driving_video(SimpleNamespace(video=None, image=_disc(16, 16, 8, 8, 5)), tmp_path,
                  SVDConfig(num_frames=2, width=16, height=16))
    assert len(refs) == 1 and refs[0]() is None


def test_a_folder_without_a_parts_weights_is_missing_before_loading(tiny_svd, tmp_path):
    """`check_svd_weights` (the check before a run) looks at each part's config and weight file, so a partial
    copy stops the run up front instead of failing in the middle of it."""
    import shutil

    from dynapose4d.priors.svd import check_svd_weights

    check_svd_weights(str(tiny_svd))  # complete
    part = shutil.copytree(tiny_svd, tmp_path / "partial")
    for f in (part / "vae").iterdir():
        if f.suffix in (".safetensors", ".bin"):
            f.unlink()
    with pytest.raises(MissingWeightsError, match="lacks the weights of vae/"):
        check_svd_weights(str(part))
