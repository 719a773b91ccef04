"""`core.io.read_image` reads a picture as a viewer shows it: the camera's EXIF orientation, palette transparency,
CMYK JPEGs, 16-bit grey, WebP/BMP/TIFF; what it cannot read is a one-line error naming the file. References:
the array written (lossless formats), numpy's own rotations, Pillow's conversion of the same pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dynapose4d.core.errors import InputError
from dynapose4d.core.io import read_image
from dynapose4d.data.scene import load_scene

H, W = 24, 40  # not square, so a turned image has the other shape


def _rgba() -> np.ndarray:
    """uint8 [H, W, 4]: an asymmetric object (a bar and a dot) on a transparent background."""
    a = np.zeros((H, W, 4), np.uint8)
    a[4:10, 3:30] = (220, 120, 30, 255)
    a[15:20, 30:36] = (40, 90, 200, 255)
    return a


# EXIF orientation -> the numpy operation that shows the stored pixels upright (the TIFF/EXIF definition)
ORIENTATIONS = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: np.rot90(a, 2),
    4: lambda a: a[::-1],
    5: lambda a: np.transpose(a, (1, 0, 2)),  # flipped over the main diagonal
    6: lambda a: np.rot90(a, -1),  # the stored image is shown turned 90° clockwise
    7: lambda a: np.rot90(np.transpose(a, (1, 0, 2)), 2),  # flipped over the anti-diagonal
    8: lambda a: np.rot90(a, 1),
}


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int) -> None:
    a = _rgba()
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "phone.png"
    Image.fromarray(a).save(path, exif=exif)
    got = read_image(path)
    want = np.ascontiguousarray(ORIENTATIONS[orientation](a)).astype(np.float32) / 255
    assert got.shape == want.shape and torch.equal(got, torch.from_numpy(want)), orientation


def test_cmyk_jpeg_is_rgb_not_rgba(tmp_path: Path) -> None:
    """A CMYK JPEG has four channels; they are ink, not RGB + alpha (read as RGBA, the object vanished)."""
    rgb = np.where(_rgba()[..., 3:] > 0, _rgba()[..., :3], 255).astype(np.uint8)
    path = tmp_path / "print.jpg"
    Image.fromarray(rgb).convert("CMYK").save(path, quality=95)
    got = read_image(path)
    with Image.open(path) as im:
        want = np.asarray(im.convert("RGB")).astype(np.float32) / 255
    assert got.shape == (H, W, 3) and torch.allclose(got, torch.from_numpy(want))
    assert (got - torch.from_numpy(rgb / 255.0).float()).abs().mean() < 0.05  # close to the picture it came from
    scene = load_scene(path)  # on its white background: the object is found
    assert int((scene.image[..., 3] > 0.5).sum()) > 100


def test_palette_transparency_16_bit_grey_and_other_formats(tmp_path: Path) -> None:
    a = _rgba()
    pal = Image.fromarray(a[..., :3]).quantize(8)
    clear = pal.getpixel((0, 0))  # the background's palette index
    pal.save(tmp_path / "pal.png", transparency=clear)
    got = read_image(tmp_path / "pal.png")
    assert got.shape == (H, W, 4)
    assert torch.equal(got[..., 3] > 0.5, torch.from_numpy(a[..., 3] > 0))
    pal.save(tmp_path / "opaque.png")  # no transparent colour: RGB
    assert read_image(tmp_path / "opaque.png").shape == (H, W, 3)

    g16 = (np.arange(H * W, dtype=np.uint32).reshape(H, W) * 61 % 65536).astype(np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    got = read_image(tmp_path / "g16.png")
    assert got.shape == (H, W, 3) and torch.equal(got[..., 1], torch.from_numpy(g16.astype(np.float32) / 65535))

    for name in ("pic.webp", "pic.bmp", "pic.tif"):
        kw = {"lossless": True} if name.endswith("webp") else {}
        Image.fromarray(a if not name.endswith("bmp") else a[..., :3]).save(tmp_path / name, **kw)
        got = read_image(tmp_path / name)
        want = a if not name.endswith("bmp") else a[..., :3]
        assert torch.equal(got, torch.from_numpy(want.astype(np.float32) / 255)), name
    assert load_scene(tmp_path / "pic.webp").image.shape == (H, W, 4)  # a picture given alone


def test_unreadable_images_are_one_line_errors_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "text.png").write_text("not an image")
    Image.fromarray(np.random.rand(H, W).astype(np.float32)).save(tmp_path / "float.tif")
    for name, words in (("text.png", "unreadable image"), ("float.tif", "8 or 16 bits"), ("gone.png", "not found")):
        with pytest.raises(InputError) as e:
            read_image(tmp_path / name)
        msg = str(e.value)
        assert name in msg and words in msg and "\n" not in msg, msg


def test_a_picture_over_pillows_limits_is_read_quietly_or_refused_in_one_line(tmp_path: Path, monkeypatch) -> None:
    """Over Pillow's first limit (89 megapixels: a 108-megapixel phone photo) a picture is read without a warning;
    over its second, refused with a one-line error that says why (not "unreadable")."""
    import warnings

    Image.fromarray(_rgba()).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", H * W - 1)  # the picture is over the first limit only
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_image(tmp_path / "big.png").shape == (H, W, 4)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", H * W // 3)
    with pytest.raises(InputError) as e:
        read_image(tmp_path / "big.png")
    msg = str(e.value)
    assert "big.png" in msg and "too large" in msg and "\n" not in msg, msg


def test_heic_pictures_are_read_and_run_as_a_picture(tmp_path: Path) -> None:
    """HEIC (what iPhones save): RGB and RGBA read as the pixels written (lossy, within a few levels), and a HEIC
    picture goes through `load_scene` as any other picture."""
    import pillow_heif

    pillow_heif.register_heif_opener()  # to write the test files; read_image registers it on its own
    yy, xx = np.mgrid[0:48, 0:64]
    rgb = np.stack([xx * 4, yy * 5, 255 - xx * 3], -1).astype(np.uint8)  # smooth: little lossy error
    Image.fromarray(rgb).save(tmp_path / "a.HEIC", quality=100)  # the suffix in any case
    out = read_image(tmp_path / "a.HEIC")
    assert out.shape == (48, 64, 3) and float((out - torch.from_numpy(rgb / 255.0).float()).abs().mean()) < 0.02
    rgba = np.full((48, 64, 4), 255, np.uint8)
    rgba[..., :3] = 240
    rgba[..., 3] = 0
    rgba[10:40, 20:44] = (200, 40, 30, 255)  # an opaque block on a transparent background
    Image.fromarray(rgba).save(tmp_path / "obj.heif", quality=100)
    out = read_image(tmp_path / "obj.heif")
    assert out.shape == (48, 64, 4) and float((out[..., 3] > 0.5).float().mean()) == pytest.approx(30 * 24 / (48 * 64),
                                                                                                  abs=0.02)
    scene = load_scene(tmp_path / "obj.heif", keypoints=_keypoints_file(tmp_path))
    assert scene.image.shape[-1] == 4 and scene.image_path.name == "obj.heif"


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_a_heic_with_a_camera_orientation_is_turned_once_as_a_jpeg_is(tmp_path: Path, orientation: int) -> None:
    """A HEIC saved with an EXIF orientation: the HEIF reader turns it as it decodes and resets the tag, so it
    must come out as the same picture in a JPEG does (turned once, not twice or never)."""
    import pillow_heif

    pillow_heif.register_heif_opener()
    a = np.zeros((40, 80, 3), np.uint8)
    a[:, :20] = (255, 0, 0)  # red on the left, blue on the right, green along the top: every turn differs
    a[:, 60:] = (0, 0, 255)
    a[:6] = (0, 255, 0)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(a).save(tmp_path / "o.jpg", exif=exif.tobytes(), quality=98)
    Image.fromarray(a).save(tmp_path / "o.heic", exif=exif.tobytes(), quality=100)
    jpg, heic = read_image(tmp_path / "o.jpg"), read_image(tmp_path / "o.heic")
    assert jpg.shape == heic.shape == ((80, 40, 3) if orientation in (6, 8) else (40, 80, 3))
    assert float((jpg - heic).abs().mean()) < 0.03  # lossy codecs: the same picture within a few levels
    upright = torch.from_numpy(a / 255.0).float()
    assert jpg.shape != upright.shape or float((jpg - upright).abs().mean()) > 0.1  # it was turned


def _keypoints_file(tmp_path: Path) -> Path:
    import json

    path = tmp_path / "kp.json"
    path.write_text(json.dumps({"keypoints": [[24, 14], [40, 36], [26, 36]], "skeleton": [[0, 1], [0, 2]]}))
    return path
