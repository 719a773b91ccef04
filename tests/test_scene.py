"""Scene loading and validation (docs/scene-folder.md): good scenes load as given or recentred, RGB images get their
background removed, and every bad input is a one-line InputError naming the file. Scenes are written by hand."""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from dynapose4d.core.errors import InputError
from dynapose4d.data.background import clean_mask, connected_components
from dynapose4d.data.scene import load_scene

H, W = 48, 64  # non-square on purpose
RED = (0.9, 0.1, 0.1)
BLUE = (0.1, 0.2, 0.8)


def _u8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def _object(h: int = H, w: int = W, cy: float = 20.0, cx: float = 24.0, ry: float = 8.0, rx: float = 10.0,
            marker: tuple[int, int] | None = (20, 28)) -> np.ndarray:
    """RGBA float [h, w, 4]: a blue ellipse with a 3x3 red marker block centred at pixel `marker` (row, col)."""
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    img = np.zeros((h, w, 4))
    img[inside, :3] = BLUE
    img[inside, 3] = 1.0
    if marker is not None:
        r, c = marker
        img[r - 1:r + 2, c - 1:c + 2, :3] = RED
    return img


def write_scene(root: Path, image: np.ndarray | None = None, keypoints=None, skeleton=None, names=None,
                camera: bool = True, video: list[np.ndarray] | None = None) -> Path:
    """Write a scene folder by hand. Default: the RGBA ellipse, 3 keypoints (one on the marker), camera.json."""
    root.mkdir(parents=True, exist_ok=True)
    image = _object() if image is None else image
    iio.imwrite(root / "image.png", _u8(image))
    kp = {"keypoints": keypoints if keypoints is not None else [[28.5, 20.5], [18.0, 18.0], [30.0, 24.0]],
          "skeleton": skeleton if skeleton is not None else [[0, 1], [1, 2]]}
    if names is not None:
        kp["names"] = names
    (root / "keypoints.json").write_text(json.dumps(kp))
    if camera:
        (root / "camera.json").write_text(json.dumps({"elevation": 0, "azimuth": 0, "radius": 2.0, "fov_y": 49.1}))
    if video is not None:
        (root / "video").mkdir()
        for i, f in enumerate(video):
            iio.imwrite(root / "video" / f"{i:03d}.png", _u8(f))
    return root


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum()) / float((a | b).sum())


def _bbox(mask: torch.Tensor) -> tuple[int, int, int, int]:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


# ------------------------------------------------------------------------------------------------ good scenes


def test_rgba_scene_with_camera_is_used_as_given(tmp_path):
    img = _object()
    s = load_scene(write_scene(tmp_path / "s", img, names=["a", "b", "c"]))
    assert s.has_camera_json and s.camera.radius == 2.0
    assert s.image.shape == (H, W, 4) and s.image.dtype == torch.float32
    assert torch.allclose(s.image, torch.from_numpy(_u8(img)).float() / 255)
    assert torch.equal(s.keypoints, torch.tensor([[28.5, 20.5], [18.0, 18.0], [30.0, 24.0]]))
    assert s.skeleton == [(0, 1), (1, 2)] and s.names == ["a", "b", "c"]
    assert s.video is None and s.views == [] and s.gt_dir is None
    assert (s.height, s.width, s.num_keypoints) == (H, W, 3)


def test_grey_alpha_and_16_bit_images_load_as_rgba(tmp_path):
    img = _object()
    grey = img[..., :3].mean(-1)
    root = write_scene(tmp_path / "la")
    iio.imwrite(root / "image.png", _u8(np.stack([grey, img[..., 3]], -1)))  # 2-channel PNG (grey + alpha)
    s = load_scene(root)
    assert s.image.shape == (H, W, 4)
    assert torch.equal(s.image[..., 0], s.image[..., 2]) and torch.equal(s.image[..., 3] > 0.5,
                                                                         torch.from_numpy(img[..., 3] > 0.5))
    root16 = write_scene(tmp_path / "g16")
    iio.imwrite(root16 / "image.png", (np.where(img[..., 3] > 0, 0.3, 1.0) * 65535).astype(np.uint16))
    s16 = load_scene(root16)  # 16-bit grey on white: background removed, values scaled by 65535
    assert s16.image.shape == (H, W, 4) and abs(float(s16.image[20, 20, 0]) - 0.3) < 1e-3
    assert _iou(s16.image[..., 3] > 0.5, torch.from_numpy(img[..., 3] > 0.5)) > 0.9


def test_defaults_visibility_flag_views_and_gt(tmp_path):
    root = write_scene(tmp_path / "s", keypoints=[[28.5, 20.5, 2], [18.0, 18.0, 1]], skeleton=[[0, 1]])
    (root / "views").mkdir()
    (root / "views" / "cameras.json").write_text(json.dumps([{"name": "side", "azimuth": 90}]))
    iio.imwrite(root / "views" / "side.png", _u8(_object()))
    (root / "gt").mkdir()
    s = load_scene(root)
    assert s.names == ["kp00", "kp01"] and s.keypoints.shape == (2, 2)
    assert len(s.views) == 1 and s.views[0][0].azimuth == 90 and s.views[0][1].shape == (H, W, 4)
    assert s.gt_dir is None  # an empty gt/ has nothing to evaluate against


def test_broken_gt_is_an_input_error_at_load(tmp_path):
    """A broken gt/ stops the run at load time (before any training), with the file named."""
    root = write_scene(tmp_path / "s", keypoints=[[28.5, 20.5], [18.0, 18.0]], skeleton=[[0, 1]])
    (root / "camera.json").write_text(json.dumps({"elevation": 0, "azimuth": 0, "radius": 2, "fov_y": 49.1}))
    gt = root / "gt"
    (gt / "az000").mkdir(parents=True)
    iio.imwrite(gt / "az000" / "000.png", _u8(_object()))
    iio.imwrite(gt / "az000" / "001.png", _u8(_object()))
    with pytest.raises(InputError, match=r"gt: not a gt folder \(no cameras.json\)"):
        load_scene(root)
    (gt / "cameras.json").write_text(json.dumps([{"name": "az000"}, {"name": "az090", "azimuth": 90}]))
    with pytest.raises(InputError, match=r"gt/az090: no gt frames"):
        load_scene(root)
    (gt / "az090").mkdir()
    iio.imwrite(gt / "az090" / "000.png", _u8(_object()))
    with pytest.raises(InputError, match=r"different frame counts"):
        load_scene(root)
    iio.imwrite(gt / "az090" / "001.png", _u8(_object()))
    (gt / "keypoints3d.json").write_text(json.dumps({"frames": [[[0, 0, 0]] * 3] * 2}))
    with pytest.raises(InputError, match=r"keypoints3d.json: 2 frames of 3 keypoints.*has 2 keypoints"):
        load_scene(root)
    (gt / "keypoints3d.json").write_text(json.dumps({"frames": [[[0, 0, 0]] * 2] * 2}))
    assert load_scene(root).gt_dir == gt
    # what the stages read from gt/ later is checked here too, so that no stage fails on it with a run half done
    (gt / "keypoints3d.json").write_text('{"frames": [[[0, 0, NaN], [0, 0, 0]], [[0, 0, 0], [0, 0, 0]]]}')
    with pytest.raises(InputError, match=r"keypoints3d.json: positions must be finite"):
        load_scene(root)
    (gt / "keypoints3d.json").write_text(json.dumps({"frames": [[[0, 0, 0]] * 2] * 2}))
    kp2d = gt / "keypoints2d.json"
    for text, words in (("[1]", "expected a JSON object"), ('{"az090": {"visible": "yes"}}', "'az090': 'visible'"),
                        ('{"az090": {"visible": [[true, true]]}}', r"shape \[1, 2\], but there are 2 frames")):
        kp2d.write_text(text)
        with pytest.raises(InputError, match=r"keypoints2d.json: .*" + words):
            load_scene(root)
    kp2d.write_text(json.dumps({"az090": {"visible": [[True, False]] * 2}}))
    assert load_scene(root).gt_dir == gt
    iio.imwrite(gt / "az090" / "001.png", _u8(_object(h=H + 2)))
    with pytest.raises(InputError, match=r"gt/az090/001.png: gt frame is 64x50, but 000.png is 64x48"):
        load_scene(root)
    (gt / "az090" / "001.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"gt/az090/001.png: unreadable gt frame"):
        load_scene(root)


def test_video_frames_sorted_numerically_and_preferred_over_mp4(tmp_path):
    from dynapose4d.core.io import write_video

    root = write_scene(tmp_path / "s")
    (root / "video").mkdir()
    for i in range(12):  # 0.png .. 11.png: lexicographic order would put 10, 11 before 2
        f = _object()
        f[0, 0] = (i / 20.0, 0, 0, 1.0)  # frame id in a corner pixel
        iio.imwrite(root / "video" / f"{i}.png", _u8(f))
    write_video(root / "video.mp4", torch.ones(3, H, W, 3))  # must be ignored: video/ wins
    s = load_scene(root)
    assert s.video.shape == (12, H, W, 4)
    ids = [round(float(s.video[t, 0, 0, 0]) * 20) for t in range(12)]
    assert ids == list(range(12))


def test_frame_names_ending_in_their_number_after_other_digits(tmp_path):
    root = write_scene(tmp_path / "s")
    (root / "video").mkdir()
    for i in (0, 1, 2, 10):  # a clip's frames as an editor exports them: the clip's number, then the frame's
        f = _object()
        f[0, 0] = (i / 20.0, 0, 0, 1.0)  # frame id in a corner pixel
        iio.imwrite(root / "video" / f"clip2_{i:03d}.png", _u8(f))
    s = load_scene(root)
    assert [round(float(s.video[t, 0, 0, 0]) * 20) for t in range(4)] == [0, 1, 2, 10]


def test_json_files_with_a_byte_order_mark_load(tmp_path):
    """Some Windows editors start a UTF-8 file with a byte-order mark: keypoints.json and camera.json still load."""
    root = write_scene(tmp_path / "s")
    for name in ("keypoints.json", "camera.json"):
        (root / name).write_text("\ufeff" + (root / name).read_text(), encoding="utf-8")
    s = load_scene(root)
    assert s.num_keypoints == 3 and s.camera.radius == 2.0


def test_mp4_video_gets_background_removed(tmp_path):
    from dynapose4d.core.images import over_background
    from dynapose4d.core.io import write_video

    root = write_scene(tmp_path / "s")
    frames = torch.stack([over_background(torch.from_numpy(_object(cx=20.0 + 4 * t)).float(), 1.0)
                          for t in range(4)])
    write_video(root / "video.mp4", frames)
    s = load_scene(root)
    assert s.video.shape == (4, H, W, 4)
    for t in range(4):
        true = torch.from_numpy(_object(cx=20.0 + 4 * t)[..., 3] > 0.5)
        assert _iou(s.video[t, ..., 3] > 0.5, true) > 0.9  # H.264 blurs edges a little


@pytest.mark.parametrize("counted", [0, 1, 3, 9])
def test_mp4_frames_whatever_its_header_counts(tmp_path, monkeypatch, counted):
    """The frame block is sized by the stream's frame count; a count that is off (or missing) still gives every
    decoded frame, no more."""
    from dynapose4d.core.images import over_background
    from dynapose4d.core.io import write_video
    from dynapose4d.data import scene as scene_module

    root = write_scene(tmp_path / "s")
    write_video(root / "video.mp4", torch.stack([over_background(torch.from_numpy(_object(cx=20.0 + 4 * t)).float(),
                                                                 1.0) for t in range(5)]))
    want = load_scene(root).video
    monkeypatch.setattr(scene_module, "count_video_frames", lambda path: counted)
    got = load_scene(root).video
    assert got.shape == want.shape == (5, H, W, 4) and torch.equal(got, want)


def test_rgb_on_white_background_mask_matches(tmp_path):
    rng = np.random.default_rng(0)
    hi = _object(h=320, w=384, cy=160, cx=176, ry=88, rx=120, marker=(160, 176))  # 4x supersampled
    yy, xx = np.mgrid[0:320, 0:384] + 0.5
    hi[(((yy - 140) / 24) ** 2 + ((xx - 240) / 36) ** 2 <= 1.0), :3] = (0.2, 0.7, 0.3)  # a second colour
    prem = np.concatenate([hi[..., :3] * hi[..., 3:], hi[..., 3:]], -1).reshape(80, 4, 96, 4, 4).mean((1, 3))
    alpha = prem[..., 3]  # [80, 96] anti-aliased true alpha
    rgb = prem[..., :3] + (1 - alpha[..., None])  # over white
    rgb[44:46, 30:32] = 1.0  # a background-coloured speck inside the object (a hole to fill)
    rgb[5:7, 85:87] = (0.3, 0.3, 0.3)  # stray specks on the background (to drop)
    rgb[70, 8] = (0.0, 0.0, 0.0)
    rgb = rgb + rng.normal(0, 0.01, rgb.shape)  # sensor noise
    root = write_scene(tmp_path / "s", rgb, keypoints=[[44.5, 40.5]], skeleton=[])
    s = load_scene(root)
    mask, true = s.image[..., 3] > 0.5, torch.from_numpy(alpha > 0.5)
    assert _iou(mask, true) > 0.95
    assert mask[44:46, 30:32].all() and not mask[5:7, 85:87].any() and not mask[70, 8]
    # edges get fractional alpha close to the truth (a binary mask is off by ~0.26 on average there)
    edge = torch.from_numpy((alpha > 0.05) & (alpha < 0.95))
    err = (s.image[..., 3].double() - torch.from_numpy(alpha)).abs()[edge].mean()
    assert err < 0.05, float(err)


def test_recentring_fills_80_percent_and_moves_keypoints(tmp_path):
    marker = (14, 17)  # row, col of the red block inside a small off-centre ellipse
    img = _object(cy=14.0, cx=15.0, ry=6.0, rx=7.0, marker=marker)
    kp = [[marker[1] + 0.5, marker[0] + 0.5], [12.0, 10.0]]
    root = write_scene(tmp_path / "s", img, keypoints=kp, skeleton=[[0, 1]], camera=False, video=[img, img])
    s = load_scene(root)
    assert not s.has_camera_json and s.camera.radius == 2.0 and s.image.shape == (H, W, 4)
    x0, y0, x1, y1 = _bbox(s.image[..., 3] > 0.5)
    # the tighter dimension (height here: 12 of 48 rows vs 14 of 64 columns) fills 80% of the frame
    assert abs((y1 - y0) - 0.8 * H) <= 2.0, (y0, y1)
    assert abs((x0 + x1) / 2 - W / 2) <= 1.0 and abs((y0 + y1) / 2 - H / 2) <= 1.0
    # the keypoint on the marker is still on a red pixel
    c, r = (int(v) for v in s.keypoints[0].floor())
    px = s.image[r, c]
    assert px[0] > 0.7 and px[1] < 0.3 and px[2] < 0.3 and px[3] > 0.9, px
    red = (s.image[..., 0] > 0.5) & (s.image[..., 1] < 0.4) & (s.image[..., 3] > 0.5)  # the scaled-up marker
    ys, xs = torch.nonzero(red, as_tuple=True)
    centroid = torch.stack([xs.float().mean() + 0.5, ys.float().mean() + 0.5])
    assert (s.keypoints[0] - centroid).abs().max() < 0.5, (s.keypoints[0], centroid)
    # the video got the very same transform
    assert torch.allclose(s.video[0], s.image) and torch.allclose(s.video[1], s.image)


def test_recentring_is_kept_and_maps_pipeline_pixels_back_to_the_files(tmp_path):
    img = _object(cy=14.0, cx=15.0, ry=6.0, rx=7.0, marker=None)
    kp = [[15.5, 14.5], [12.0, 10.0], [20.0, 17.0]]
    s = load_scene(write_scene(tmp_path / "s", img, keypoints=kp, skeleton=[], camera=False))
    rec = s.recentring
    assert rec is not None and rec.size == (W, H) and rec.scale > 1.5
    torch.testing.assert_close(rec.to_scene(s.keypoints.double()), torch.tensor(kp, dtype=torch.float64))
    torch.testing.assert_close(rec.from_scene(torch.tensor(kp, dtype=torch.float64)), s.keypoints.double())
    # the mask box centre of the file lands on the frame centre
    torch.testing.assert_close(rec.from_scene(torch.tensor(rec.centre)), torch.tensor([W / 2.0, H / 2.0]))
    assert load_scene(write_scene(tmp_path / "c", img, keypoints=kp, skeleton=[])).recentring is None


def test_recentring_keeps_moving_video_object_inside(tmp_path):
    img = _object(cy=24.0, cx=32.0, ry=6.0, rx=6.0, marker=None)
    far = _object(cy=24.0, cx=56.0, ry=6.0, rx=6.0, marker=None)  # frame 1: object near the right edge
    root = write_scene(tmp_path / "s", img, keypoints=[[32.0, 24.0]], skeleton=[], camera=False, video=[img, far])
    s = load_scene(root)
    a0, a1 = s.video[0, ..., 3], s.video[1, ..., 3]
    assert abs(float(a1.sum()) / float(a0.sum()) - 1.0) < 0.05  # not clipped
    assert not (a1[:, -1] > 0.5).any()
    assert torch.allclose(s.video[0], s.image)


def test_a_large_picture_is_scaled_down_in_the_recentring_resample(tmp_path):
    """max_size: a 480 x 360 scene without camera.json comes out 128 x 96 (same aspect), recentred as at full size
    (the same fractions of the frame), the marker keypoint still on the marker, the video through the same
    resample, and the kept similarity maps pipeline pixels back to the file's."""
    big_h, big_w = 360, 480
    marker = (140, 170)
    img = _object(big_h, big_w, cy=150.0, cx=180.0, ry=60.0, rx=70.0, marker=None)
    img[marker[0] - 6:marker[0] + 7, marker[1] - 6:marker[1] + 7, :3] = RED  # a 13 x 13 red block
    kp = [[marker[1] + 0.5, marker[0] + 0.5], [150.0, 120.0]]
    root = write_scene(tmp_path / "s", img, keypoints=kp, skeleton=[[0, 1]], camera=False, video=[img, img])
    full, small = load_scene(root), load_scene(root, max_size=128)
    assert full.image.shape == (big_h, big_w, 4) and small.image.shape == (96, 128, 4)
    assert small.video.shape[1:3] == (96, 128)
    assert load_scene(root, max_size=1000).image.shape == (big_h, big_w, 4)  # never scaled up
    fb = torch.tensor(_bbox(full.image[..., 3] > 0.5), dtype=torch.float64) / torch.tensor([big_w, big_h] * 2)
    sb = torch.tensor(_bbox(small.image[..., 3] > 0.5), dtype=torch.float64) / torch.tensor([128, 96] * 2)
    assert (fb - sb).abs().max() < 1.5 / 96, (fb, sb)  # the same place and fill, within a pixel of the small frame
    torch.testing.assert_close(small.keypoints / torch.tensor([128 / big_w, 96 / big_h]), full.keypoints,
                               atol=1e-3, rtol=1e-4)
    red = (small.image[..., 0] > 0.5) & (small.image[..., 1] < 0.4) & (small.image[..., 3] > 0.5)
    ys, xs = torch.nonzero(red, as_tuple=True)
    centroid = torch.stack([xs.float().mean() + 0.5, ys.float().mean() + 0.5])
    assert (small.keypoints[0] - centroid).abs().max() < 0.5, (small.keypoints[0], centroid)
    assert torch.allclose(small.video[0], small.image)
    rec = small.recentring
    assert rec.size == (big_w, big_h) and rec.output_size == (128, 96)
    torch.testing.assert_close(rec.to_scene(small.keypoints.double()), torch.tensor(kp, dtype=torch.float64))


def test_connected_components_match_flood_fill():
    rng = np.random.default_rng(1)
    for diagonal in (True, False):
        for _ in range(5):
            m = rng.random((17, 23)) < 0.45
            labels, sizes = connected_components(m, diagonal)
            ref = _flood(m, diagonal)
            assert sorted(sizes[1:].tolist()) == sorted(np.bincount(ref.ravel())[1:].tolist())
            pairs = {(int(a), int(b)) for a, b in zip(labels[m], ref[m])}  # a bijection between labelings
            assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs}) == len(sizes) - 1
            assert (labels[~m] == 0).all()


def test_clean_mask_drops_specks_and_fills_small_holes():
    m = np.zeros((40, 40), bool)
    m[5:35, 5:35] = True
    m[20, 20] = False  # small hole: filled
    m[10:20, 22:32] = False  # large enclosed region (100 px > 0.5% of the object): kept as background
    m[1, 38] = True  # speck: dropped
    out = clean_mask(m)
    assert out[20, 20] and not out[1, 38] and not out[12:18, 24:30].any() and out[5:35, 5].all()


def _flood(m: np.ndarray, diagonal: bool) -> np.ndarray:
    lab = np.zeros(m.shape, int)
    nb = [(-1, 0), (1, 0), (0, -1), (0, 1)] + ([(-1, -1), (-1, 1), (1, -1), (1, 1)] if diagonal else [])
    k = 0
    for s in zip(*np.nonzero(m)):
        if lab[s]:
            continue
        k += 1
        lab[s] = k
        q = deque([s])
        while q:
            y, x = q.popleft()
            for dy, dx in nb:
                v = (y + dy, x + dx)
                if 0 <= v[0] < m.shape[0] and 0 <= v[1] < m.shape[1] and m[v] and not lab[v]:
                    lab[v] = k
                    q.append(v)
    return lab


# ------------------------------------------------------------------------------------------------ bad scenes


def _kp(root: Path, **kw) -> None:
    data = {"keypoints": [[28.5, 20.5], [18.0, 18.0]], "skeleton": [[0, 1]]}
    data.update(kw)
    (root / "keypoints.json").write_text(json.dumps(data))


def _rgb_noise_background(root: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.random((H, W, 3))
    iio.imwrite(root / "image.png", _u8(rgb))


def _frames(root: Path, *sizes: tuple[int, int]) -> None:
    (root / "video").mkdir()
    for i, (h, w) in enumerate(sizes):
        iio.imwrite(root / "video" / f"{i:03d}.png", _u8(_object(h=h, w=w)))


def _faint_frame(root: Path, size: tuple[int, int]) -> None:
    """A frame 0 of another size than image.png whose alpha is nowhere over 50%: nothing to lay onto the picture."""
    (root / "video").mkdir()
    f = _u8(_object(h=size[0], w=size[1]))
    f[..., 3] = np.minimum(f[..., 3], 100)
    iio.imwrite(root / "video" / "000.png", f)


def _views(root: Path, cameras: bool = True) -> None:
    (root / "views").mkdir()
    if cameras:
        (root / "views" / "cameras.json").write_text(json.dumps([{"name": "a", "azimuth": 90}]))


BAD = {  # name: (how to break a good scene, file named in the message, words in the message)
    "missing image": (lambda r: (r / "image.png").unlink(), "image.png", "not found"),
    "unreadable image": (lambda r: (r / "image.png").write_bytes(b"not a png"), "image.png", "unreadable"),
    "image too small": (lambda r: iio.imwrite(r / "image.png", np.full((1, 1, 3), 200, np.uint8)), "image.png",
                        "at least 8x8"),  # said before the cut-out finds nothing in it
    "rgb, non-uniform background": (_rgb_noise_background, "image.png", "provide an RGBA image"),
    "empty alpha": (lambda r: iio.imwrite(r / "image.png", np.zeros((H, W, 4), np.uint8)), "image.png", "empty"),
    "no keypoints.json, round object": (lambda r: (r / "keypoints.json").unlink(), "image.png",
                                        "automatic keypoints"),  # the ellipse's medial axis is too short
    "malformed json": (lambda r: (r / "keypoints.json").write_text('{"keypoints": [[1, 2],'), "keypoints.json",
                       "malformed JSON"),
    "keypoints.json is a folder": (lambda r: ((r / "keypoints.json").unlink(), (r / "keypoints.json").mkdir()),
                                   "keypoints.json", "a folder, not a JSON file"),
    "not an object": (lambda r: (r / "keypoints.json").write_text("[1, 2]"), "keypoints.json", "JSON object"),
    "no keypoints": (lambda r: _kp(r, keypoints=[]), "keypoints.json", "non-empty"),
    "keypoint outside": (lambda r: _kp(r, keypoints=[[28.5, 20.5], [70.0, 10.0]]), "keypoints.json", "outside"),
    "keypoint negative": (lambda r: _kp(r, keypoints=[[28.5, -1.0], [7.0, 10.0]]), "keypoints.json", "outside"),
    "keypoint not finite": (lambda r: _kp(r, keypoints=[[28.5, float("nan")], [7.0, 10.0]]), "keypoints.json",
                            "not finite"),
    "keypoint malformed": (lambda r: _kp(r, keypoints=[[28.5], [7.0, 10.0]]), "keypoints.json", "[x, y]"),
    "too many keypoints": (lambda r: _kp(r, keypoints=[[28.5, 20.5]] * 101, skeleton=[]), "keypoints.json",
                           "at most 100"),  # the pose model's limit, found before any stage runs
    "keypoint invisible": (lambda r: _kp(r, keypoints=[[28.5, 20.5, 2], [7.0, 10.0, 0]]), "keypoints.json",
                           "visible"),
    "skeleton out of range": (lambda r: _kp(r, skeleton=[[0, 2]]), "keypoints.json", "out of range"),
    "skeleton self-loop": (lambda r: _kp(r, skeleton=[[1, 1]]), "keypoints.json", "itself"),
    "skeleton not ints": (lambda r: _kp(r, skeleton=[[0, "a"]]), "keypoints.json", "integer"),
    "skeleton missing": (lambda r: (r / "keypoints.json").write_text('{"keypoints": [[1, 2]]}'), "keypoints.json",
                         "skeleton"),
    "names length": (lambda r: _kp(r, names=["a"]), "keypoints.json", "names"),
    "names repeated": (lambda r: _kp(r, names=["a", "a"]), "keypoints.json", "unique"),
    "frames of different sizes": (lambda r: _frames(r, (H, W), (H, W + 2)), "video/001.png", "different sizes"),
    "frame of another size, no object": (lambda r: _faint_frame(r, (H + 2, W)), "video/000.png", "no object"),
    "zero frames": (lambda r: (r / "video").mkdir(), "video", "0 frames"),
    "frame not numbered": (lambda r: (_frames(r, (H, W)), (r / "video" / "000.png").rename(r / "video" / "a.png")),
                           "video/a.png", "numbered"),
    "unreadable mp4": (lambda r: (r / "video.mp4").write_bytes(b"garbage"), "video.mp4", "unreadable"),
    "malformed camera.json": (lambda r: (r / "camera.json").write_text("{"), "camera.json", "JSON"),
    "bad camera value": (lambda r: (r / "camera.json").write_text('{"radius": -1}'), "camera.json", "radius"),
    "camera value not finite": (lambda r: (r / "camera.json").write_text('{"elevation": NaN}'), "camera.json",
                                "finite"),
    "views without cameras.json": (lambda r: _views(r, cameras=False), "views/cameras.json", "not found"),
    "view image missing": (_views, "views/a.png", "not found"),
    "views without camera.json": (lambda r: (_views(r), (r / "camera.json").unlink()), "views", "camera.json"),
    "gt without camera.json": (lambda r: ((r / "gt").mkdir(), (r / "camera.json").unlink()), "gt", "camera.json"),
    "scene is a file": (lambda r: None, "notafolder", "folder"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_error_naming_the_file(tmp_path, case):
    breaker, file, words = BAD[case]
    root = write_scene(tmp_path / "scene")
    breaker(root)
    if case == "scene is a file":
        root = tmp_path / "notafolder"
        root.write_text("x")
    with pytest.raises(InputError) as e:
        load_scene(root)
    msg = str(e.value)
    assert "\n" not in msg
    assert str(root / file) in msg or (file in msg and str(root) in msg), msg
    assert words in msg, msg


@pytest.mark.parametrize("case", ["missing image", "skeleton out of range", "frames of different sizes"])
def test_cli_run_on_bad_scene_exits_2_and_leaves_no_run_folder(tmp_path, capsys, case):
    from dynapose4d.cli import main

    root = write_scene(tmp_path / "scene")
    BAD[case][0](root)
    run = tmp_path / "run"
    assert main(["run", str(root), "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and BAD[case][1].split("/")[0] in err, err
    assert not run.exists()


def test_video_resample_in_chunks_from_8_bits_equals_the_whole_float_video():
    """apply_recentring on a uint8 video, a few frames at a time, gives exactly what the whole float video gives."""
    from dynapose4d.data.recentring import apply_recentring, recentring_of

    g = torch.Generator().manual_seed(0)
    img = torch.from_numpy(_object(cy=14.0, cx=15.0, ry=6.0, rx=7.0)).float()
    video = (torch.rand(7, H, W, 4, generator=g) * 255).round().to(torch.uint8)
    video[..., 3] = torch.where(img[..., 3] > 0.5, 255, 0).to(torch.uint8)
    kp = torch.tensor([[15.0, 14.0]])
    rec = recentring_of(img, kp, video, max_size=40)
    assert rec is not None and rec.output_size == (40, 30)
    _, _, whole = apply_recentring(rec, img, kp, video.float() / 255.0, chunk=100)
    _, _, chunked = apply_recentring(rec, img, kp, video, chunk=3)
    assert chunked.dtype == torch.float32 and chunked.shape == (7, 30, 40, 4) and torch.equal(chunked, whole)
    _, _, as_given = apply_recentring(None, img, kp, video)  # no recentring: the video in float, unchanged
    assert torch.equal(as_given, video.float() / 255.0)


# peak resident memory of this process from /proc (VmHWM): getrusage's ru_maxrss survives exec, so a child of a
# large pytest process would report the parent's size
MEMORY_SCRIPT = """
import re, sys
from pathlib import Path
from dynapose4d.data.scene import load_scene
s = load_scene(sys.argv[1], video=sys.argv[2], max_size=128)
assert s.video.shape == (40, 72, 128, 4), s.video.shape
print(int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 2**20)
"""


def test_a_long_hd_video_is_never_whole_in_float(tmp_path):
    """A 40-frame 1280 x 720 mp4 with a picture: loaded at max_size 128 in under 1.5 GB of peak memory (measured
    0.72 GB). Held in float at full size, as before, it took 3.9 GB (a 10 s 1080p phone clip: over 24 GB)."""
    import subprocess
    import sys

    import imageio_ffmpeg

    h, w = 720, 1280
    yy, xx = np.mgrid[0:h, 0:w]

    def frame(dx: int) -> np.ndarray:
        f = np.full((h, w, 3), (235, 238, 240), np.uint8)
        f[((yy - 360) / 200.0) ** 2 + ((xx - 600 - dx) / 150.0) ** 2 <= 1.0] = (30, 60, 200)
        return f

    iio.imwrite(tmp_path / "pic.png", frame(0))
    writer = imageio_ffmpeg.write_frames(str(tmp_path / "clip.mp4"), (w, h), fps=10, codec="libx264",
                                         pix_fmt_out="yuv420p", macro_block_size=1, ffmpeg_log_level="error")
    writer.send(None)
    for t in range(40):
        writer.send(frame(3 * t))
    writer.close()
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path / "pic.png"), str(tmp_path / "clip.mp4")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    peak_gb = float(out.stdout.strip().splitlines()[-1])
    assert peak_gb < 1.5, peak_gb
