"""Clips as users bring them. A driving video of another size than the picture (a phone clip beside a photo): laid
onto the picture by frame 0's object box (`dynapose4d.data.recentring.Registration`), checked against the same
video drawn at the picture's size, analytically (the object is drawn from its formula at each pixel, so no
resampler is the reference). A clip given alone: its frame 0 is the picture, the clip the driving video."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_video_memory import _block_spy

import dynapose4d.data.scene as scene_mod
from dynapose4d.core.io import write_image, write_video
from dynapose4d.data.recentring import registration_of
from dynapose4d.data.scene import load_scene, video_shrink
from dynapose4d.pipeline.config import TrainerConfig, WandbConfig
from dynapose4d.priors.svd import keypoint_file_recentring
from dynapose4d.stages.base import StageContext

W, H = 120, 90  # the picture
OBJ = dict(cx=60.0, cy=45.0, rx=30.0, ry=22.0)  # an ellipse in the picture's pixels
SHIFT = 3.0  # px of the picture the object moves right per frame
FRAMES = 3
CANVAS = (320, 180)  # the clip: 16:9, the object drawn 1.6 times larger, its picture origin at OFFSET
SCALE, OFFSET = 1.6, (40.0, 20.0)
BG = np.array([0.93, 0.95, 0.97])


def draw(t: int, size: tuple[int, int] = (W, H), scale: float = 1.0, offset: tuple[float, float] = (0.0, 0.0),
         rgb: bool = False) -> np.ndarray:
    """Frame t [h, w, 4] (or [h, w, 3] over BG): the ellipse moved right by SHIFT t picture px, striped in the
    picture's coordinates, as a camera at `scale` video px per picture px with the picture's origin at video pixel
    `offset` sees it; one video pixel of soft edge."""
    w, h = size
    qy, qx = np.mgrid[0:h, 0:w] + 0.5
    ux, uy = (qx - offset[0]) / scale, (qy - offset[1]) / scale  # picture pixels
    r = np.sqrt(((ux - OBJ["cx"] - SHIFT * t) / OBJ["rx"]) ** 2 + ((uy - OBJ["cy"]) / OBJ["ry"]) ** 2)
    a = np.clip((1.0 - r) * min(OBJ["rx"], OBJ["ry"]) * scale + 0.5, 0.0, 1.0)[..., None]
    stripes = 0.5 + 0.5 * np.sin((ux + uy) * (2 * np.pi / 24.0))
    col = np.stack([0.15 + 0.7 * stripes, 0.3 + 0.4 * uy / H, 0.8 - 0.5 * stripes], -1)
    return col * a + BG * (1 - a) if rgb else np.concatenate([col, a], -1)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """picture.png; same/ (the frames at the picture's size); wide/ (the clip at 320 x 180), wide.mp4 (the same
    over a plain background)."""
    d = tmp_path_factory.mktemp("clips")
    write_image(d / "picture.png", draw(0))
    for t in range(FRAMES):
        write_image(d / "same" / f"{t:03d}.png", draw(t))
        write_image(d / "wide" / f"{t:03d}.png", draw(t, CANVAS, SCALE, OFFSET))
    write_video(d / "wide.mp4", np.stack([draw(t, CANVAS, SCALE, OFFSET, rgb=True) for t in range(FRAMES)]), fps=8)
    return d


def _premultiplied(v: torch.Tensor) -> torch.Tensor:
    return torch.cat([v[..., :3] * v[..., 3:], v[..., 3:]], -1)


def _centroids(v: torch.Tensor) -> torch.Tensor:
    """Alpha-weighted centre [T, 2] (x, y) of frames [T, h, w, 4]."""
    a = v[..., 3]
    ys, xs = torch.meshgrid(torch.arange(a.shape[1]) + 0.5, torch.arange(a.shape[2]) + 0.5, indexing="ij")
    m = a.sum((1, 2))
    return torch.stack([(a * xs).sum((1, 2)) / m, (a * ys).sum((1, 2)) / m], -1)


@pytest.mark.parametrize("max_size", [0, 64])
def test_a_clip_of_another_size_lands_where_the_same_clip_at_the_pictures_size_does(clips, max_size):
    """The 16:9 clip, its object 1.6 times larger and off-centre, gives the frames the same video at the picture's
    size gives: alpha-weighted centres within 0.1 px, colour within 0.01 on average; the registration's scale and
    the video's own similarity are the drawing's (1 / 1.6, to the boxes' whole pixels)."""
    same = load_scene(clips / "picture.png", video=clips / "same", max_size=max_size)
    wide = load_scene(clips / "picture.png", video=clips / "wide", max_size=max_size)
    reg = wide.video_registration
    assert same.video_registration is None and same.video_recentring is None and reg is not None
    assert reg.video_size == CANVAS and reg.picture_size == (W, H)
    assert abs(reg.scale * SCALE - 1.0) < 0.02, reg
    assert torch.equal(wide.image, same.image) and torch.equal(wide.keypoints, same.keypoints)
    assert wide.video.shape == same.video.shape == (FRAMES, *same.image.shape)
    dc = (_centroids(wide.video) - _centroids(same.video)).norm(dim=-1)
    diff = (_premultiplied(wide.video) - _premultiplied(same.video)).abs()
    print(f"max_size {max_size}: centres {dc.max():.4f} px, colour mean {diff.mean():.4f} max {diff.max():.3f}")
    assert dc.max() < 0.1 and diff.mean() < 0.01, (dc, diff.mean())
    # the video's own similarity: a pipeline pixel p is the clip's pixel SCALE * (picture pixel) + OFFSET
    p = torch.tensor([[0.0, 0.0], [same.width / 2, same.height / 2], [same.width, same.height]], dtype=torch.float64)
    picture_px = same.recentring.to_scene(p) if same.recentring is not None else p
    expected = picture_px * SCALE + torch.tensor(OFFSET, dtype=torch.float64)
    torch.testing.assert_close(wide.video_recentring.to_scene(p), expected, atol=1.5, rtol=0)
    # driving keypoint files are written in the clip's pixels; the picture's files keep the picture's
    assert keypoint_file_recentring(wide, generated=False) is wide.video_recentring
    assert keypoint_file_recentring(same, generated=False) is same.recentring
    assert keypoint_file_recentring(wide, generated=True) is None


def test_an_mp4_of_another_size_over_a_plain_background_is_laid_on_too(clips):
    """The same clip as an RGB mp4 (cut out from its plain background, frame by frame): registered to within 2%,
    and its object where the frames at the picture's size put it (within 0.5 px: the codec and the cut-out)."""
    same = load_scene(clips / "picture.png", video=clips / "same", max_size=0)
    wide = load_scene(clips / "picture.png", video=clips / "wide.mp4", max_size=0)
    assert abs(wide.video_registration.scale * SCALE - 1.0) < 0.02
    dc = (_centroids(wide.video) - _centroids(same.video)).norm(dim=-1)
    assert dc.max() < 0.5, dc


def test_a_large_clip_is_shrunk_by_what_the_registration_leaves(clips, tmp_path, monkeypatch):
    """A clip drawing the object 4 times larger than the picture (640 x 360) needs 4 times fewer of its pixels per
    pipeline pixel: the shrink k comes from the picture's bound times the registration's scale (4 at max_size 32,
    where frames of the picture's size keep k = 1), and the frames equal the ones read unshrunk (mean colour
    difference under 0.004)."""
    for t in range(FRAMES):
        write_image(tmp_path / "big" / f"{t:03d}.png", draw(t, (640, 360), 4.0, (80.0, 5.0)))
    blocks = _block_spy(monkeypatch)  # the _FrameBlocks load_scene reads the video into
    small = load_scene(clips / "picture.png", video=tmp_path / "big", max_size=32)
    picture = scene_mod.read_image(clips / "picture.png")  # the picture's bound, before any video is read
    bound = scene_mod._scale_bound(picture, torch.tensor(small.auto_keypoints.keypoints), False, 32)
    assert video_shrink(bound, 32) == 1  # frames of the picture's size are not shrunk
    assert blocks[0].k == video_shrink(bound * small.video_registration.scale, 32) == 4, blocks[0].k
    monkeypatch.setattr(scene_mod, "VIDEO_OVERSAMPLE", 0)
    whole = load_scene(clips / "picture.png", video=tmp_path / "big", max_size=32)
    shrunk, full = blocks
    assert full.k == 1
    assert shrunk.boxes == full.boxes
    diff = (_premultiplied(small.video) - _premultiplied(whole.video)).abs()
    print(f"k {shrunk.k}: mean {diff.mean():.5f} max {diff.max():.4f}")
    assert diff.mean() < 0.004, diff.mean()


def test_registration_maps_boxes_and_composes_with_the_pictures_similarity():
    """Frame 0's box lands on the picture's box; followed by the picture's similarity, the composed one takes a
    video point where the two maps applied in turn take it."""
    from dynapose4d.data.recentring import Recentring

    reg = registration_of((100, 40, 200, 120), (20, 10, 70, 50), (320, 180), (96, 64))
    assert reg.scale == pytest.approx(0.5)
    assert reg.box_to_picture((100, 40, 200, 120)) == pytest.approx((20, 10, 70, 50))
    rec = Recentring(scale=0.7, centre=(44.0, 31.0), size=(96, 64), out_size=(48, 32))
    q = torch.tensor([[0.0, 0.0], [150.0, 80.0], [319.0, 179.5]], dtype=torch.float64)
    torch.testing.assert_close(reg.then(rec).from_scene(q), rec.from_scene(reg.to_picture(q)))
    torch.testing.assert_close(reg.then(rec).to_scene(rec.from_scene(reg.to_picture(q))), q)
    torch.testing.assert_close(reg.then(None).from_scene(q), reg.to_picture(q))  # the picture as given
    assert reg.then(rec).size == (320, 180) and reg.then(rec).output_size == (48, 32)


def test_a_registered_run_writes_driving_keypoints_in_the_clips_pixels(clips, tmp_path):
    """Through write_driving_keypoints: saved in the clip's pixels (the video's similarity undone), read back in
    the pipeline's."""
    from dynapose4d.stages.keypoints import DRIVING_KEYPOINTS, read_driving_keypoints, write_driving_keypoints

    scene = load_scene(clips / "picture.png", video=clips / "wide", max_size=0)
    ctx = StageContext(scene=scene, run_dir=tmp_path, artifacts={"cape": {"driving_keypoints": DRIVING_KEYPOINTS}},
                       trainer=TrainerConfig(accelerator="cpu", progress_bar=False), wandb=WandbConfig(enabled=False))
    (tmp_path / "cape").mkdir()
    pts = scene.keypoints[None].repeat(FRAMES, 1, 1)  # [T, N, 2] pipeline pixels
    write_driving_keypoints(ctx, pts, torch.ones(FRAMES, scene.num_keypoints), generated=False)
    saved = torch.tensor(json.loads((tmp_path / DRIVING_KEYPOINTS).read_text())["points"])
    picture_px = scene.recentring.to_scene(pts.double()) if scene.recentring is not None else pts.double()
    torch.testing.assert_close(saved.double(), picture_px * SCALE + torch.tensor(OFFSET, dtype=torch.float64),
                               atol=1.5, rtol=0)
    back, _ = read_driving_keypoints(ctx, FRAMES)
    torch.testing.assert_close(back, pts, atol=1e-3, rtol=0)


def test_the_run_says_how_it_laid_the_clip_and_records_it(clips, tmp_path):
    """The runner prints one line with the two sizes and the scale, warns when frame 0's box has another shape than
    the picture's, and keeps the similarity in the manifest."""
    import _fakes

    from dynapose4d.pipeline.config import load_config
    from dynapose4d.pipeline.runner import StageRunner

    def run(video: Path, out: Path) -> tuple[dict, list[str]]:
        said: list[str] = []
        cfg = load_config(None, _fakes.fake_overrides())
        m = StageRunner(clips / "picture.png", out, cfg, stages=_fakes.FAKE_STAGES, echo=said.append, video=video).run()
        return m, [s for s in said if "laid onto it" in s]

    m, lines = run(clips / "wide", tmp_path / "run")
    assert len(lines) == 1 and "(320x180)" in lines[0] and f"({W}x{H})" in lines[0] and "differ" not in lines[0]
    reg = m["inputs"]["video_registration"]
    assert reg["video_size"] == [320, 180] and abs(reg["scale"] * SCALE - 1) < 0.02
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["inputs"]["video_registration"] == reg
    # frame 0 squeezed to half its width: the boxes differ in shape, which the run says
    for t in range(FRAMES):
        f = draw(t, CANVAS, SCALE, OFFSET)
        write_image(tmp_path / "squeezed" / f"{t:03d}.png", f[:, ::2] if t == 0 else f[:, :CANVAS[0] // 2])
    _, lines = run(tmp_path / "squeezed", tmp_path / "run2")
    assert len(lines) == 1 and "differ in shape by" in lines[0], lines
    m, lines = run(clips / "same", tmp_path / "run3")  # the picture's size: nothing to say
    assert lines == [] and m["inputs"]["video_registration"] is None


# ------------------------------------------------------------------------------------------------ a clip alone


def test_a_clip_alone_is_its_frame_0_driven_by_itself(clips, tmp_path):
    """`load_scene(clip)` equals `load_scene(frame 0 as a picture, video=clip)`, bit for bit; --video still replaces
    the clip as the driving video; a GIF of one frame is a picture without video."""
    from dynapose4d.core.io import iter_video

    frame0 = next(iter_video(clips / "wide.mp4"))  # uint8 [h, w, 3], as decoded
    write_image(tmp_path / "frame0.png", frame0.astype(np.float32) / 255.0)
    alone = load_scene(clips / "wide.mp4", max_size=64)
    given = load_scene(tmp_path / "frame0.png", video=clips / "wide.mp4", max_size=64)
    assert alone.image_path == clips / "wide.mp4" and alone.video.shape[0] == FRAMES
    assert torch.equal(alone.image, given.image) and torch.equal(alone.video, given.video)
    assert torch.equal(alone.keypoints, given.keypoints) and alone.recentring == given.recentring
    other = load_scene(clips / "wide.mp4", video=clips / "same", max_size=64)  # --video wins (at the picture's size)
    assert abs(other.video_registration.scale / SCALE - 1) < 0.02 and torch.equal(other.image, alone.image)
    write_video(tmp_path / "still.gif", draw(0, rgb=True)[None], fps=8)
    still = load_scene(tmp_path / "still.gif", max_size=64)
    assert still.video is None and still.image.shape[:2] == (48, 64)  # 120 x 90 within max_size 64


def test_a_gif_gives_each_stored_frame_once_and_its_transparency():
    """GIFs are read by Pillow: 3 stored frames give 3 (ffmpeg gave a one-frame GIF as 12), and a GIF with a
    transparent colour gives RGBA frames whose alpha is the object's."""
    import tempfile

    from PIL import Image

    from dynapose4d.core.io import count_video_frames, iter_video

    with tempfile.TemporaryDirectory() as d:
        frames = [draw(t) for t in range(FRAMES)]  # [H, W, 4] float
        ims = [Image.fromarray((f * 255).round().astype(np.uint8), "RGBA") for f in frames]
        ims[0].save(Path(d) / "clip.gif", save_all=True, append_images=ims[1:], duration=125, loop=0, disposal=2)
        out = list(iter_video(Path(d) / "clip.gif"))
        assert count_video_frames(Path(d) / "clip.gif") == len(out) == FRAMES
        for f, truth in zip(out, frames):
            assert f.shape == (H, W, 4)
            a, b = f[..., 3] > 127, truth[..., 3] > 0.5
            assert (a & b).sum() / (a | b).sum() > 0.95  # the writer binarises the soft edge; a frame off by 3 px: 0.88
        write_video(Path(d) / "one.gif", draw(0, rgb=True)[None], fps=8)
        assert len(list(iter_video(Path(d) / "one.gif"))) == 1


def test_a_clip_alone_runs_and_writes_its_keypoints_on_frame_0(clips, tmp_path):
    """Through the runner (fake stages): the automatic keypoints drawn on frame 0 of the clip; a file that is
    neither picture nor clip names the kinds that are."""
    import _fakes

    from dynapose4d.core.errors import InputError
    from dynapose4d.core.io import read_image
    from dynapose4d.pipeline.config import load_config
    from dynapose4d.pipeline.runner import StageRunner

    cfg = load_config(None, _fakes.fake_overrides())
    m = StageRunner(clips / "wide.mp4", tmp_path / "run", cfg, stages=_fakes.FAKE_STAGES, echo=lambda s: None).run()
    assert m["num_frames"] == FRAMES and m["inputs"]["video"] is None and m["inputs"]["keypoints"] == "auto"
    drawn = read_image(tmp_path / "run" / "inputs" / "keypoints.png")
    assert drawn.shape[1] / drawn.shape[0] == pytest.approx(CANVAS[0] / CANVAS[1], rel=0.01)  # frame 0's aspect
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match=r"notes.txt: not a picture \(png.*\), a clip \(mp4.*gif\) nor"):
        load_scene(tmp_path / "notes.txt")


# ------------------------------------------------------------------------------------------------ video_align


def test_video_align_box_lays_on_a_clip_of_the_pictures_size_framed_otherwise(clips, tmp_path):
    """A clip of the picture's size whose object is 1.2 times larger and off-centre: "auto" uses it as it is and
    the run says it is framed otherwise; "box" lays it on by frame 0's box (centres within 0.1 px of the frames
    drawn as the picture frames them); "none" refuses a clip of another size, naming the frame."""
    import _fakes

    from dynapose4d.core.errors import ConfigError, InputError
    from dynapose4d.pipeline.config import load_config
    from dynapose4d.pipeline.runner import StageRunner

    for t in range(FRAMES):
        write_image(tmp_path / "framed" / f"{t:03d}.png", draw(t, (W, H), 1.2, (-8.0, -5.0)))
    same = load_scene(clips / "picture.png", video=clips / "same", max_size=0)
    auto = load_scene(clips / "picture.png", video=tmp_path / "framed", max_size=0)
    box = load_scene(clips / "picture.png", video=tmp_path / "framed", max_size=0, video_align="box")
    assert auto.video_registration is None and abs(auto.video_fit.scale * 1.2 - 1) < 0.02
    assert box.video_registration is not None
    assert (_centroids(auto.video) - _centroids(same.video)).norm(dim=-1).max() > 3  # as it is: ~7 px off
    assert (_centroids(box.video) - _centroids(same.video)).norm(dim=-1).max() < 0.1
    assert same.video_fit is not None and same.video_fit.scale == pytest.approx(1.0)

    said: list[str] = []
    cfg = load_config(None, _fakes.fake_overrides())
    StageRunner(clips / "picture.png", tmp_path / "run", cfg, stages=_fakes.FAKE_STAGES, echo=said.append,
                video=tmp_path / "framed").run()
    assert [s for s in said if "video_align=box" in s and "framed otherwise" in s], said
    said.clear()
    StageRunner(clips / "picture.png", tmp_path / "run2", cfg, stages=_fakes.FAKE_STAGES, echo=said.append,
                video=clips / "same").run()
    assert not [s for s in said if "video_align=box" in s or "laid onto it" in s], said
    with pytest.raises(InputError, match=r"wide/000.png: video frame is 320x180 but picture.png is 120x90 "
                                         r"\(video_align=none") as e:
        load_scene(clips / "picture.png", video=clips / "wide", video_align="none")
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="video_align"):
        load_config(None, ["video_align=crop"])


def test_a_long_strip_is_drawn_within_what_a_video_encoder_takes(tmp_path):
    """A 256 x 3 frame (a 1500 x 20 strip clip at max_image_size 256) was enlarged 86 times to 22016 px wide for the
    keypoint overlay, which H.264 refused (the cape stage failed); the enlargement stops at 4096 px, the keypoint
    dots stay where they belong, and the overlay encodes."""
    from dynapose4d.cape.overlay import draw_keypoints, keypoint_colours

    frame = torch.rand(3, 256, 3)
    pts = torch.tensor([[10.5, 1.5], [200.5, 1.5]])
    drawn = draw_keypoints(frame, pts, [(0, 1)])
    f = 4096 // 256
    assert drawn.shape == (3 * f, 256 * f, 3)
    for (x, y), c in zip(pts.tolist(), keypoint_colours(2)):
        assert tuple(drawn[int(y * f), int(x * f)]) == c
    write_video(tmp_path / "overlay.mp4", np.stack([drawn] * 2), fps=8)
    assert (tmp_path / "overlay.mp4").stat().st_size > 0
    small = draw_keypoints(torch.rand(20, 30, 3), pts[:1] / 10, [], min_side=256)  # enlarged to min_side as before
    assert small.shape == (20 * 13, 30 * 13, 3)


# ------------------------------------------------------------------------------------------------ video_frames


def test_frame_picks_are_evenly_spaced_with_both_ends():
    from dynapose4d.data.scene import frame_picks

    assert frame_picks(300, 16)[0] == 0 and frame_picks(300, 16)[-1] == 299 and len(set(frame_picks(300, 16))) == 16
    assert frame_picks(5, 3) == [0, 2, 4] and frame_picks(16, 16) is None and frame_picks(10, 0) is None
    gaps = np.diff(frame_picks(301, 16))
    assert gaps.min() == gaps.max() == 20  # 300 / 15


@pytest.mark.parametrize("kind", ["frames", "mp4"])
def test_video_frames_keeps_n_evenly_spaced_frames(tmp_path, kind, monkeypatch):
    """A 13-frame clip with video_frames=4 keeps frames 0, 4, 8, 12: the same tensors as loading those four frames
    alone (the others are never cut out); an mp4 whose frames cannot be counted up front is read whole and picked
    after; the run says how many it used; a long clip used whole gets a note."""
    import _fakes

    import dynapose4d.data.scene as scene_mod
    from dynapose4d.pipeline.config import load_config
    from dynapose4d.pipeline.runner import StageRunner

    write_image(tmp_path / "picture.png", draw(0))
    for t in range(13):
        write_image(tmp_path / "all" / f"{t:03d}.png", draw(t))
    for i, t in enumerate((0, 4, 8, 12)):
        write_image(tmp_path / "four" / f"{i:03d}.png", draw(t))
    if kind == "mp4":
        write_video(tmp_path / "all.mp4", np.stack([draw(t, rgb=True) for t in range(13)]), fps=8)
        write_video(tmp_path / "four.mp4", np.stack([draw(t, rgb=True) for t in (0, 4, 8, 12)]), fps=8)
    src, ref = (tmp_path / "all", tmp_path / "four") if kind == "frames" else (tmp_path / "all.mp4", None)
    picked = load_scene(tmp_path / "picture.png", video=src, max_size=64, video_frames=4)
    assert picked.video.shape[0] == 4 and picked.video_source_frames == 13
    if ref is not None:
        assert torch.equal(picked.video, load_scene(tmp_path / "picture.png", video=ref, max_size=64).video)
    else:  # an mp4: each kept frame is the decoded frame at its index
        whole = load_scene(tmp_path / "picture.png", video=src, max_size=64)
        assert torch.equal(picked.video, whole.video[[0, 4, 8, 12]])
        monkeypatch.setattr(scene_mod, "count_video_frames", lambda p: 0)  # not countable: read whole, then picked
        late = load_scene(tmp_path / "picture.png", video=src, max_size=64, video_frames=4)
        assert torch.equal(late.video, picked.video) and late.video_source_frames == 13
        return
    said: list[str] = []
    cfg = load_config(None, [*_fakes.fake_overrides(), "video_frames=4"])
    StageRunner(tmp_path / "picture.png", tmp_path / "run", cfg, stages=_fakes.FAKE_STAGES, echo=said.append,
                video=src).run()
    assert [s for s in said if s.startswith("the video has 13 frames: 4 of them used")], said
    monkeypatch.setattr("dynapose4d.pipeline.runner.LONG_CLIP", 8)
    said.clear()
    StageRunner(tmp_path / "picture.png", tmp_path / "run2", load_config(None, _fakes.fake_overrides()),
                stages=_fakes.FAKE_STAGES, echo=said.append, video=src).run()
    assert [s for s in said if "13 frames, all used" in s and "video_frames=16" in s], said
