"""Video frames much larger than the pipeline's frames are shrunk by an integer k as they are read
(`dynapose4d.data.scene.video_shrink`, `dynapose4d.data.recentring.shrink_frame`): the scene comes out as it does
from the frames at their own size (within the tolerance measured here), its keypoints and similarity unchanged,
the stored block k^2 times smaller, and a clip that took over 1 GB to hold at its own size loads in a few hundred
MB.

Measured on 2 CPU cores: the whole file in about 45 s, the 4K clip's test about 20 s."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from dynapose4d.core.io import write_video
from dynapose4d.data import scene as scene_mod
from dynapose4d.data.recentring import Recentring, resample_frames, shrink_frame, stored_recentring
from dynapose4d.data.scene import load_scene, video_shrink

BG = (235, 238, 240)


def _frame(h: int, w: int, dx: float, ry: float, rx: float) -> np.ndarray:
    """uint8 [h, w, 3]: a shaded, striped ellipse (radii ry, rx, centred right of the middle by dx) on a plain
    background, with a soft (antialiased) edge."""
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    cy, cx = h * 0.5, w * 0.5 + dx
    r = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    a = np.clip((1.0 - r) * min(ry, rx) + 0.5, 0.0, 1.0)[..., None]  # one pixel of soft edge
    stripes = 0.5 + 0.5 * np.sin((xx + yy) * (2 * np.pi / 40.0))
    obj = np.stack([0.15 + 0.7 * stripes, 0.25 + 0.5 * (yy / h), 0.8 - 0.4 * stripes], -1)
    img = obj * a + np.array(BG) / 255.0 * (1 - a)
    return (img * 255.0).round().astype(np.uint8)


def write_image(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, img)


def _block_spy(monkeypatch) -> list:
    """The `_FrameBlock`s that load_scene reads its video into."""
    blocks = []
    read = scene_mod._read_video_path

    def spy(*args, **kw):
        blocks.append(read(*args, **kw))
        return blocks[-1]

    monkeypatch.setattr(scene_mod, "_read_video_path", spy)
    return blocks


@pytest.fixture(scope="module")
def large(tmp_path_factory) -> Path:
    """A 1600 x 1200 picture, its 4 frames as PNGs and as an mp4, and a scene folder of the same with
    camera.json (RGBA image and frames)."""
    d = tmp_path_factory.mktemp("large")
    h, w = 1200, 1600
    frames = [_frame(h, w, 40.0 * t, 420.0, 300.0) for t in range(4)]
    write_image(d / "pic.png", frames[0])
    for t, f in enumerate(frames):
        write_image(d / "frames" / f"{t:03d}.png", f)
    write_video(d / "clip.mp4", np.stack(frames))
    scene = d / "scene"
    rgba = [np.concatenate([f, np.full((h, w, 1), 255, np.uint8)], -1) for f in frames]
    for f in rgba:  # alpha from the plain background, as a user's RGBA export would have it
        f[..., 3] = np.where(np.abs(f[..., :3].astype(int) - BG).sum(-1) > 30, 255, 0)
    write_image(scene / "image.png", rgba[0])
    for t, f in enumerate(rgba):
        write_image(scene / "video" / f"{t:03d}.png", f)
    (scene / "camera.json").write_text(json.dumps({"elevation": 0.0, "azimuth": 0.0, "radius": 2.0, "fov_y": 49.1}))
    return d


@pytest.mark.parametrize("case", ["mp4", "frames", "camera.json"])
def test_a_large_clip_is_shrunk_as_read_and_loads_as_at_its_own_size(large, monkeypatch, case):
    """max_size 128: the frames stored k = 5 (recentred) or 6 (camera.json) times smaller (25 and 36 times fewer
    bytes), the scene equal to the one loaded without shrinking, its picture, keypoints and similarity identical.
    Measured on premultiplied colour and alpha (straight colour under a near-zero alpha is anything): recentred,
    mean abs difference 0.0009, max 0.026 (on the soft edges); camera.json, mean 0.0022, max 0.075, where the
    stripes (a 40-px period, 3.2 pixels of the 128-px frame) are near the frame's resolution; the alpha-weighted
    centre of every frame within 0.004 px."""
    path, video = {"mp4": (large / "pic.png", large / "clip.mp4"), "frames": (large / "pic.png", large / "frames"),
                   "camera.json": (large / "scene", None)}[case]
    blocks = _block_spy(monkeypatch)
    small = load_scene(path, video=video, max_size=128)
    monkeypatch.setattr(scene_mod, "VIDEO_OVERSAMPLE", 0)  # never shrunk: the frames at the files' size
    full = load_scene(path, video=video, max_size=128)
    shrunk, whole = blocks
    assert whole.k == 1 and whole.frames().shape == (4, 1200, 1600, 4)
    k = 6 if case == "camera.json" else 5
    assert shrunk.k == k and shrunk.frames().shape == (4, -(-1200 // k), -(-1600 // k), 4)
    # at least 2 stored pixels per pipeline pixel, and not 4 (k is the largest that keeps 2)
    assert 2.0 <= 1.0 / (k * small.recentring.scale) < 4.0, small.recentring
    assert shrunk.boxes == whole.boxes  # the mask boxes at the files' size
    assert small.recentring == full.recentring and torch.equal(small.keypoints, full.keypoints)
    assert torch.equal(small.image, full.image)
    assert small.video.shape == full.video.shape == (4, *full.image.shape)

    def premultiplied(v):  # the colour that shows (straight colour under a near-zero alpha is anything)
        return torch.cat([v[..., :3] * v[..., 3:], v[..., 3:]], -1)

    diff = (premultiplied(small.video) - premultiplied(full.video)).abs()
    print(f"{case}: k={k} mean {diff.mean():.5f} max {diff.max():.4f}")
    assert diff.mean() < 0.004 and diff.max() < 0.1, (diff.mean(), diff.max())


def test_video_shrink_keeps_two_pixels_per_pipeline_pixel_and_never_shrinks_at_the_files_size():
    assert video_shrink(0.1, 128) == 5 and video_shrink(0.125, 512) == 4 and video_shrink(0.13, 512) == 3
    assert video_shrink(0.26, 512) == 1 and video_shrink(4.0, 512) == 1  # magnified: kept at the files' size
    assert video_shrink(0.01, 0) == 1  # max_size 0: the files' own size


def test_a_small_object_that_the_recentring_magnifies_is_not_shrunk(tmp_path, monkeypatch):
    """The scale bound comes from the picture's mask box and keypoints: a 1600 x 1200 frame whose object is small
    is magnified (scale > 1/2 at max_size 512), so its frames keep the files' size (k = 1: the same tensors)."""
    frames = [_frame(1200, 1600, 4.0 * t, 120.0, 80.0) for t in range(2)]
    write_image(tmp_path / "pic.png", frames[0])
    for t, f in enumerate(frames):
        write_image(tmp_path / "frames" / f"{t:03d}.png", f)
    blocks = _block_spy(monkeypatch)
    s = load_scene(tmp_path / "pic.png", video=tmp_path / "frames", max_size=512)
    assert s.recentring.scale > 0.5 and blocks[0].k == 1


def test_stored_recentring_reads_the_shrunk_frames_where_the_files_pixels_were():
    """A frame shrunk by k and read through `stored_recentring` lands where the frame at its own size does: a
    one-block square (k x k file pixels) comes out at the same place, for sizes that k does not divide."""
    k, H, W = 4, 30, 41
    img = torch.zeros(H, W, 4)
    img[8:12, 16:20] = torch.tensor([1.0, 0.5, 0.25, 1.0])  # a 4 x 4 block aligned with the k grid
    rec = Recentring(scale=0.5, centre=(19.0, 12.0), size=(W, H), out_size=(16, 12))
    st = shrink_frame(img, k)
    assert st.shape == (8, 11, 4)  # ceil(30 / 4), ceil(41 / 4): the partial last blocks padded transparent
    srec = stored_recentring(rec, (W, H), k, (11, 8))
    a = resample_frames(rec, img[None])[0]
    b = resample_frames(srec, st[None])[0]
    assert srec.output_size == rec.output_size and b.shape == a.shape

    def centroid(x):
        w = x[..., 3]
        yy, xx = torch.meshgrid(torch.arange(w.shape[0]) + 0.5, torch.arange(w.shape[1]) + 0.5, indexing="ij")
        return torch.stack([(w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()])

    # the shrunk frame's block lands exactly where the similarity puts its centre; the frame at its own size within
    # 0.02 px (its antialiasing step rounds 41 x 0.5 to 20 pixels)
    assert torch.allclose(centroid(b), rec.from_scene(torch.tensor([18.0, 10.0])), atol=1e-4)
    assert torch.allclose(centroid(a), centroid(b), atol=0.02)
    assert torch.allclose(b[..., 3].sum(), torch.tensor(4.0), rtol=1e-5)  # 16 file pixels at scale 0.5
    assert torch.allclose(a[..., 3].sum(), b[..., 3].sum(), rtol=0.005)
    assert stored_recentring(rec, (W, H), 1, (W, H)) is rec  # k = 1: the same similarity, the same code


# peak resident memory of the child process from /proc (VmHWM), as tests/test_scene.py's long-clip test. The
# clip's frames get their alpha from a plain threshold here: the background removal of one 4K frame takes about
# 3 s and 1.1 GB of its own (`dynapose4d.data.background`), which this test does not measure
MEMORY_SCRIPT = """
import re, sys
from pathlib import Path
import torch
from dynapose4d.data import scene
scene.remove_background = lambda rgb: torch.cat([rgb, (rgb[..., 2:] < 0.85).float()], -1)
s = scene.load_scene(sys.argv[1], video=sys.argv[2], keypoints=sys.argv[3], max_size=128)
assert s.video.shape == (32, 72, 128, 4), s.video.shape
print(int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 2**20)
"""


def test_a_4k_clip_that_took_over_a_gigabyte_loads_in_a_fraction(tmp_path):
    """32 frames of 3840 x 2160 (a phone's 4K; 1.06 GB in 8 bits at its own size) with an RGBA picture and its
    keypoints, at max_size 128: peak memory under 1.2 GB (measured 0.78 GB, of which 0.22 GB is the imports and
    0.38 GB reading and recentring the 4K picture; before the shrink, 2.9 GB)."""
    import imageio_ffmpeg

    h, w = 2160, 3840
    base = _frame(h, w + 400, 0.0, 700.0, 500.0)
    pic = base[:, 200:200 + w]
    write_image(tmp_path / "pic.png", np.concatenate([pic, np.where(pic[..., 2:] < 217, 255, 0).astype(np.uint8)], -1))
    (tmp_path / "kp.json").write_text(json.dumps({"keypoints": [[1920, 1080], [1920, 600], [1920, 1560]],
                                                  "skeleton": [[0, 1], [0, 2]]}))
    writer = imageio_ffmpeg.write_frames(str(tmp_path / "clip.mp4"), (w, h), fps=10, codec="libx264",
                                         pix_fmt_out="yuv420p", macro_block_size=1, ffmpeg_log_level="error",
                                         output_params=["-preset", "ultrafast"])
    writer.send(None)
    for t in range(32):
        writer.send(np.ascontiguousarray(base[:, 200 - 6 * t:200 - 6 * t + w]))  # the object moves right
    writer.close()
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, *(str(tmp_path / f) for f in
                                                                 ("pic.png", "clip.mp4", "kp.json"))],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    peak_gb = float(out.stdout.strip().splitlines()[-1])
    print(f"peak {peak_gb:.2f} GB")
    assert peak_gb < 1.2, peak_gb


def test_small_frames_are_not_shrunk(tmp_path, monkeypatch):
    """The demo's and the tests' small frames: k = 1 and the same tensors as with shrinking off (also checked
    against the code before the shrink, bit for bit, when it was added)."""
    from dynapose4d.data.synthetic import write_scene

    root = write_scene("humanoid", tmp_path / "hum", num_frames=3, size=128)
    blocks = _block_spy(monkeypatch)
    for kw in ({}, {"max_size": 64}, {"max_size": 40}):
        a = load_scene(root, **kw)
        monkeypatch.setattr(scene_mod, "VIDEO_OVERSAMPLE", 0)
        b = load_scene(root, **kw)
        monkeypatch.setattr(scene_mod, "VIDEO_OVERSAMPLE", 2)
        assert torch.equal(a.video, b.video) and torch.equal(a.image, b.image) and a.recentring == b.recentring
    assert [b.k for b in blocks] == [1] * 6
