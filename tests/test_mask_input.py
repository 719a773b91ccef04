"""The picture's mask given by the user (`--mask FILE`, a scene folder's mask.png), the RGBA picture whose alpha
outlines nothing (opaque but for a few pixels), and the warning on a GrabCut cut in pieces: checked against the
synthetic objects' known alpha (tests/cutout_backgrounds.py puts them on textured backgrounds)."""

from __future__ import annotations

import json

import _fakes
import pytest
import torch
from cutout_backgrounds import composite, make_background

from dynapose4d.cli import main
from dynapose4d.core.errors import InputError
from dynapose4d.core.io import read_image, write_image
from dynapose4d.data.cutout import object_pieces
from dynapose4d.data.scene import MASK_SNAP, MIN_CLEAR, load_scene
from dynapose4d.data.synthetic import write_scene
from dynapose4d.pipeline.config import load_config
from dynapose4d.pipeline.run_command import command_line
from dynapose4d.pipeline.runner import StageRunner


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a > 0.5, b > 0.5
    return float((a & b).sum()) / max(1, int((a | b).sum()))


@pytest.fixture(scope="module")
def quadruped(tmp_path_factory) -> torch.Tensor:
    """A quadruped's picture, RGBA [128, 128, 4] with its true (antialiased) alpha."""
    scene = write_scene("quadruped", tmp_path_factory.mktemp("q") / "s", seed=0, num_frames=2, size=128)
    return read_image(scene / "image.png")


def _cluttered(folder, rgba: torch.Tensor):
    """The object over the clutter background, where GrabCut alone fails (README: IoU 0.26)."""
    write_image(folder / "photo.png", composite(rgba, make_background("clutter", 128, 128, seed=0)))
    return folder / "photo.png"


def _edge(alpha: torch.Tensor) -> torch.Tensor:
    """Pixels within 1 px of the true outline (where alpha differs from its 3x3 max or min)."""
    a = alpha[None, None]
    pool = torch.nn.functional.max_pool2d
    return ((pool(a, 3, 1, 1) - (-pool(-a, 3, 1, 1))) > 0.02)[0, 0]


def test_a_binary_mask_cuts_the_object_out_of_clutter_with_a_matted_edge(quadruped, tmp_path):
    photo = _cluttered(tmp_path, quadruped)
    truth = quadruped[..., 3]
    assert _iou(load_scene(photo).cutout[..., 3], truth) < 0.6  # GrabCut alone: the clutter is taken for object
    binary = (truth > 0.5).float()
    write_image(tmp_path / "mask.png", binary[..., None].expand(-1, -1, 3))  # white on black, 8-bit RGB
    s = load_scene(photo, mask=tmp_path / "mask.png")
    assert s.mask_path == tmp_path / "mask.png" and s.grabcut_cuts == 0 and s.cutout_pieces == []
    cut = s.cutout  # [128, 128, 4] the picture as the mask cut it, in the file's pixels
    assert _iou(cut[..., 3], truth) > 0.95  # the mask (IoU 1 at 1/2) with its edge re-estimated
    # the hard mask's edge is matted by unmixing the picture's colours: closer to the true antialiased alpha
    edge = _edge(truth)
    assert edge.sum() > 100
    err_matted = (cut[..., 3] - truth)[edge].abs().mean()
    err_binary = (binary - truth)[edge].abs().mean()
    assert err_matted < 0.8 * err_binary, (err_matted, err_binary)
    # inside, the picture's own colours; the scene the stages see matches the one loaded with the true alpha
    inside = -torch.nn.functional.max_pool2d(-binary[None, None], 7, 1, 3)[0, 0] > 0.5  # over 3 px inside
    assert torch.allclose(cut[..., :3][inside], read_image(photo)[..., :3][inside], atol=1e-6)
    write_image(tmp_path / "true.png", quadruped)
    ref = load_scene(tmp_path / "true.png")
    assert _iou(s.image[..., 3], ref.image[..., 3]) > 0.9


def test_lossy_masks_are_read_as_black_and_white(quadruped, tmp_path):
    """JPEG's compression greys a black-and-white mask: taken as grey, the background got faint alpha (2-3% of it)
    and twice the PNG mask's error; read at 1/2 and matted it is as good as the PNG. A lossy WebP's faint noise is
    snapped away."""
    from PIL import Image

    photo = _cluttered(tmp_path, quadruped)
    truth = quadruped[..., 3]
    binary = ((truth > 0.5).numpy() * 255).astype("uint8")
    Image.fromarray(binary).save(tmp_path / "mask.png")
    Image.fromarray(binary).save(tmp_path / "mask.jpg", quality=75)
    grey = read_image(tmp_path / "mask.jpg")[..., 0]
    assert ((grey > 0.02) & (grey < 0.98)).float().mean() > 0.01  # the compression's grey
    png, jpg = load_scene(photo, mask=tmp_path / "mask.png"), load_scene(photo, mask=tmp_path / "mask.jpg")
    assert torch.equal(jpg.cutout[..., 3][truth == 0] > 0, png.cutout[..., 3][truth == 0] > 0)
    assert (jpg.cutout[..., 3] - truth).abs().mean() <= 1.05 * (png.cutout[..., 3] - truth).abs().mean()
    # a lossy WebP's noise (grey up to ~0.1 around the object) is snapped to black and white
    Image.fromarray(binary).save(tmp_path / "mask.webp", quality=60)
    grey = read_image(tmp_path / "mask.webp")[..., 0]
    assert ((grey > 0) & (truth == 0)).float().mean() > 0.005
    webp = load_scene(photo, mask=tmp_path / "mask.webp")
    assert ((webp.cutout[..., 3] > 0) & (png.cutout[..., 3] == 0)).float().mean() < 0.002
    assert _iou(webp.cutout[..., 3], truth) > 0.95


def test_a_soft_mask_is_the_alpha_and_a_cut_out_png_gives_its_alpha(quadruped, tmp_path):
    photo = _cluttered(tmp_path, quadruped)
    truth = quadruped[..., 3]
    write_image(tmp_path / "soft.png", truth[..., None].expand(-1, -1, 3))  # grey levels: used as they are
    s = load_scene(photo, mask=tmp_path / "soft.png")
    snapped = torch.where(truth < MASK_SNAP, 0.0, torch.where(truth > 1 - MASK_SNAP, 1.0, truth))
    assert ((truth > 0.2) & (truth < 0.8)).sum() > 50  # the antialiased edge's grey levels are kept
    assert (s.cutout[..., 3] - snapped).abs().max() <= 0.5 / 255 + 1e-6
    # a cut-out PNG (the object with alpha, made by another tool) as the mask: its alpha, not its colours
    write_image(tmp_path / "cut.png", quadruped)
    s = load_scene(photo, mask=tmp_path / "cut.png")
    assert (s.cutout[..., 3] - snapped).abs().max() <= 0.5 / 255 + 1e-6
    # a mask replaces the picture's own alpha too
    write_image(tmp_path / "own.png", quadruped)
    square = torch.zeros(128, 128)
    square[30:50, 8:120] = 0.75  # a bar (long enough for automatic keypoints)
    write_image(tmp_path / "square.png", square[..., None].expand(-1, -1, 3))
    s = load_scene(tmp_path / "own.png", mask=tmp_path / "square.png")  # 0.75 is kept as it is
    assert (s.cutout[..., 3] - square).abs().max() <= 0.5 / 255 + 1e-6


def test_a_scene_folder_mask_png_is_used_and_mask_replaces_it(quadruped, tmp_path):
    folder = tmp_path / "scene"
    folder.mkdir()
    write_image(folder / "image.png", composite(quadruped, make_background("clutter", 128, 128, seed=0)))
    write_image(folder / "mask.png", (quadruped[..., 3] > 0.5).float()[..., None].expand(-1, -1, 3))
    s = load_scene(folder)
    assert s.mask_path == folder / "mask.png" and _iou(s.cutout[..., 3], quadruped[..., 3]) > 0.95
    other = torch.zeros(128, 128)
    other[10:30, 4:110] = 1
    write_image(tmp_path / "other.png", other[..., None].expand(-1, -1, 3))
    s = load_scene(folder, mask=tmp_path / "other.png")
    assert s.mask_path == tmp_path / "other.png" and _iou(s.cutout[..., 3], other) > 0.95


def test_bad_masks_are_one_line_errors_before_any_run_folder(quadruped, tmp_path, capsys):
    photo = _cluttered(tmp_path, quadruped)
    write_image(tmp_path / "small.png", torch.ones(64, 128, 3))
    write_image(tmp_path / "black.png", torch.zeros(128, 128, 3))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    cases = {"small.png": "the mask is 128x64 pixels, the picture (photo.png) 128x128",
             "black.png": "no pixel over 1/2", "broken.png": "unreadable image", "missing.png": "file not found"}
    for name, words in cases.items():
        with pytest.raises(InputError) as e:
            load_scene(photo, mask=tmp_path / name)
        msg = str(e.value)
        assert msg.startswith(str(tmp_path / name)) and words in msg and "\n" not in msg, msg
        out = tmp_path / f"run_{name}"
        assert main(["run", str(photo), "--out", str(out), "--mask", str(tmp_path / name),
                     "--config", "smoke"]) == 2
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err and not out.exists()


def test_a_run_records_its_mask_and_reruns_when_the_mask_changes(quadruped, tmp_path):
    photo = _cluttered(tmp_path, quadruped)
    write_image(tmp_path / "mask.png", (quadruped[..., 3] > 0.5).float()[..., None].expand(-1, -1, 3))
    lines: list[str] = []
    cfg = load_config(None, _fakes.fake_overrides())
    run = tmp_path / "run"
    StageRunner(photo, run, cfg, stages=_fakes.FAKE_STAGES, echo=lines.append, mask=tmp_path / "mask.png").run()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["inputs"]["mask"] == str((tmp_path / "mask.png").resolve())
    assert any("alpha is the mask" in line for line in lines) and not any("GrabCut" in line for line in lines)
    assert _iou(read_image(run / "inputs" / "cutout.png")[..., 3], quadruped[..., 3]) > 0.95
    lines.clear()
    StageRunner(photo, run, cfg, stages=_fakes.FAKE_STAGES, echo=lines.append, mask=tmp_path / "mask.png",
                resume=True).run()
    assert not any("starting" in line for line in lines)  # unchanged: nothing reruns
    bigger = torch.nn.functional.max_pool2d((quadruped[..., 3] > 0.5).float()[None, None], 5, 1, 2)[0, 0]
    write_image(tmp_path / "mask.png", bigger[..., None].expand(-1, -1, 3))
    lines.clear()
    StageRunner(photo, run, cfg, stages=_fakes.FAKE_STAGES, echo=lines.append, mask=tmp_path / "mask.png",
                resume=True).run()
    assert any("scene differs" in line for line in lines)
    args = type("A", (), {"scene": "p.png", "out": "r", "mask": "m.png", "video": None, "keypoints": None})()
    assert command_line(args) == "dynapose4d run p.png --out r --mask m.png"


def test_grabcuts_mask_is_written_to_be_corrected_and_passed_back(quadruped, tmp_path):
    """RUN/inputs/mask.png is GrabCut's mask of the picture; corrected by the user and passed back with --mask on
    the same folder, it is used (and kept), and the stages rerun on the corrected alpha."""
    photo = _cluttered(tmp_path, quadruped)
    run = tmp_path / "run"
    cfg = load_config(None, _fakes.fake_overrides() + ["stages=[static]"])
    lines: list[str] = []
    StageRunner(photo, run, cfg, stages=_fakes.FAKE_STAGES, echo=lines.append).run()
    mask_png = run / "inputs" / "mask.png"
    grab = read_image(mask_png)[..., 0]  # GrabCut's wrong cut (clutter)
    assert _iou(grab, quadruped[..., 3]) < 0.6 and any(f"--mask {mask_png}" in line for line in lines)
    write_image(mask_png, (quadruped[..., 3] > 0.5).float()[..., None].expand(-1, -1, 3))  # the user's correction
    lines.clear()
    StageRunner(photo, run, cfg, stages=_fakes.FAKE_STAGES, echo=lines.append, mask=mask_png, resume=True).run()
    assert any("scene differs" in line for line in lines) and any("[static] starting" in line for line in lines)
    assert mask_png.is_file() and _iou(read_image(mask_png)[..., 0], quadruped[..., 3]) == 1.0
    assert _iou(read_image(run / "inputs" / "cutout.png")[..., 3], quadruped[..., 3]) > 0.95
    assert json.loads((run / "manifest.json").read_text())["inputs"]["mask"] == str(mask_png.resolve())


def test_an_rgba_picture_opaque_but_for_a_few_pixels_is_cut_out(quadruped, tmp_path):
    """A PNG saved as RGBA whose alpha outlines nothing (opaque but for stray pixels) is cut out as an RGB one;
    an alpha transparent on MIN_CLEAR of the picture or more is the object's mask."""
    rgb = composite(quadruped, torch.tensor([1.0, 1.0, 1.0]).expand(128, 128, 3))  # a white background
    write_image(tmp_path / "rgb.png", rgb)
    stray = torch.ones(128, 128)
    stray[0, :8] = 0.4  # 8 pixels of 16384: under MIN_CLEAR
    assert (stray < 0.5).float().mean() < MIN_CLEAR
    write_image(tmp_path / "stray.png", torch.cat([rgb, stray[..., None]], -1))
    s, ref = load_scene(tmp_path / "stray.png"), load_scene(tmp_path / "rgb.png")
    assert torch.equal(s.image, ref.image)  # the white background removed, as for the RGB file
    assert _iou(s.image[..., 3], load_scene(_true(tmp_path, quadruped)).image[..., 3]) > 0.9
    # transparent on more than MIN_CLEAR: the alpha is the mask (here a box, not the quadruped), kept as it is
    box = torch.ones(128, 128)
    box[:, :8] = 0.0  # 6% of the picture
    write_image(tmp_path / "box.png", torch.cat([rgb, box[..., None]], -1))
    s = load_scene(tmp_path / "box.png", max_size=0)
    assert s.cutout is None and s.grabcut_cuts == 0
    assert _iou(s.image[..., 3], ref.image[..., 3]) < 0.5  # the box's alpha (recentred), not the quadruped's


def _true(folder, rgba: torch.Tensor):
    write_image(folder / "true.png", rgba)
    return folder / "true.png"


def test_object_pieces_and_the_warning_on_a_cut_in_pieces(quadruped, tmp_path):
    a = torch.zeros(64, 64)
    a[2:32, 2:32] = 1  # 900 px
    a[40:50, 40:50] = 1  # 100 px
    assert object_pieces(a) == pytest.approx([0.9, 0.1])
    assert object_pieces(torch.zeros(8, 8)) == []
    # two objects side by side on grain: GrabCut finds both, two pieces of similar size -> the run warns
    two = torch.zeros(128, 256, 4)
    two[:, :128], two[:, 128:] = quadruped, quadruped
    write_image(tmp_path / "two.png", composite(two, make_background("grain", 128, 256, seed=0)))
    lines: list[str] = []
    cfg = load_config(None, _fakes.fake_overrides() + ["stages=[static]"])
    StageRunner(tmp_path / "two.png", tmp_path / "run", cfg, stages=_fakes.FAKE_STAGES, echo=lines.append).run()
    warn = [line for line in lines if line.startswith("warning: GrabCut's cut of the picture is in 2 pieces")]
    assert len(warn) == 1 and "--mask FILE" in warn[0] and str(tmp_path / "run" / "inputs" / "cutout.png") in warn[0]
    # one object on the same background: one piece, no warning
    write_image(tmp_path / "one.png", composite(quadruped, make_background("grain", 128, 128, seed=0)))
    lines.clear()
    StageRunner(tmp_path / "one.png", tmp_path / "run1", cfg, stages=_fakes.FAKE_STAGES, echo=lines.append).run()
    assert any("GrabCut cut the object" in line for line in lines) and not any("warning" in line for line in lines)


def test_with_the_users_mask_the_frames_are_cut_with_the_pictures_colours(tmp_path):
    """A clip on clutter, the picture's mask given: each frame is cut with GrabCut's colour mixtures fitted on the
    picture and its mask, not from the border (which takes the clutter for object). Against the frames' true
    alpha; the picture's own alpha (an RGBA picture) is no background sample, so then the frames go as before."""
    scene = write_scene("quadruped", tmp_path / "s", seed=0, num_frames=4, size=128)
    truth = [read_image(f) for f in sorted((scene / "video").glob("*.png"))]  # [128, 128, 4] each
    bg = make_background("clutter", 128, 128, seed=0)
    for t, f in enumerate(truth):
        write_image(tmp_path / "frames" / f"{t:03d}.png", composite(f, bg))
    write_image(tmp_path / "photo.png", composite(truth[0], bg))
    write_image(tmp_path / "mask.png", (truth[0][..., 3] > 0.5).float()[..., None].expand(-1, -1, 3))
    plain = load_scene(tmp_path / "photo.png", video=tmp_path / "frames")  # border starts (no mask)
    masked = load_scene(tmp_path / "photo.png", video=tmp_path / "frames", mask=tmp_path / "mask.png")
    assert masked.grabcut_cuts == plain.grabcut_cuts - 1 == 4  # the frames, not the picture
    assert masked.frames_by_picture_colours and not plain.frames_by_picture_colours

    def frame_ious(s) -> list[float]:  # the scene's frames against the truth resampled the same way
        ref = load_scene(tmp_path / "true.png", video=tmp_path / "true_frames")
        return [_iou(a, b) for a, b in zip(s.video[1:, ..., 3], ref.video[1:, ..., 3])]

    write_image(tmp_path / "true.png", truth[0])
    for t, f in enumerate(truth):
        write_image(tmp_path / "true_frames" / f"{t:03d}.png", f)
    with_mask, border = frame_ious(masked), frame_ious(plain)
    assert max(border) < 0.3 and sum(with_mask) / 3 > 0.5, (with_mask, border)
    assert all(w > b + 0.15 for w, b in zip(with_mask, border)), (with_mask, border)
    # an RGBA picture with the mask: its transparent pixels show no background, the frames start from the border
    write_image(tmp_path / "rgba.png", torch.cat([composite(truth[0], bg), torch.ones(128, 128, 1) * 0.0 +
                                                  (truth[0][..., 3:] > 0.01).float()], -1))
    rgba = load_scene(tmp_path / "rgba.png", video=tmp_path / "frames", mask=tmp_path / "mask.png")
    assert max(frame_ious(rgba)) < 0.3 and not rgba.frames_by_picture_colours


def test_a_frame_the_pictures_colours_miss_is_cut_from_its_border(tmp_path):
    """A frame whose object shows colours the picture does not (a red object, then a green one) finds almost
    nothing with the picture's colour mixtures: it is cut from its border instead (on grain, where that works).
    (Views go the same way: `_Cutter.rgba(..., same_scene=True)`.)"""
    scene = write_scene("quadruped", tmp_path / "s", seed=0, num_frames=2, size=128)
    pic, second = read_image(scene / "image.png"), read_image(scene / "video" / "001.png")
    pic = torch.cat([torch.tensor([0.9, 0.1, 0.1]).expand(128, 128, 3), pic[..., 3:]], -1)  # red
    turned = torch.cat([torch.tensor([0.1, 0.8, 0.1]).expand(128, 128, 3), second[..., 3:]], -1)  # green
    bg = make_background("grain", 128, 128, seed=0)
    write_image(tmp_path / "photo.png", composite(pic, bg))
    write_image(tmp_path / "frames" / "000.png", composite(pic, bg))
    write_image(tmp_path / "frames" / "001.png", composite(turned, bg))
    write_image(tmp_path / "mask.png", (pic[..., 3] > 0.5).float()[..., None].expand(-1, -1, 3))
    from dynapose4d.data.cutout import colour_models, grabcut_alpha

    models = colour_models(composite(pic, bg), (pic[..., 3] > 0.5).float())
    assert grabcut_alpha(composite(turned, bg), models).mean() < 0.25 * (pic[..., 3] > 0.5).float().mean()
    s = load_scene(tmp_path / "photo.png", video=tmp_path / "frames", mask=tmp_path / "mask.png")
    write_image(tmp_path / "t" / "000.png", pic)
    write_image(tmp_path / "t" / "001.png", turned)
    write_image(tmp_path / "true.png", pic)
    ref = load_scene(tmp_path / "true.png", video=tmp_path / "t")
    assert _iou(s.video[1, ..., 3], ref.video[1, ..., 3]) > 0.8  # the border start's cut, not the empty one
    assert s.frames_by_picture_colours  # frame 0 still went by the picture's colours
