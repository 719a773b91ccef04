"""Scene folder loading and validation (the contract users read: docs/scene-folder.md).

`load_scene(path)` reads a scene folder and returns a validated `Scene`, or raises `InputError` with a one-line
message that names the offending file and the problem. It never leaves anything behind (it writes nothing).

Files:
  image.png       RGBA: alpha is the object mask. RGB (or RGBA opaque on 99.5% of it or more): the object is cut
                  out (border-colour estimation on a uniform background, else GrabCut; below).
  keypoints.json  {"keypoints": [[x, y] | [x, y, v], ...] pixels, "skeleton": [[i, j], ...], "names": [...]}.
                  "names" is optional (default kp00, kp01, ...). A third entry v is a visibility flag: v > 0 is
                  accepted, v = 0 (invisible) is an error, since the support keypoints must all be visible.
                  Optional: without it the keypoints and a tree skeleton are made from the mask's medial axis
                  (`dynapose4d.data.auto_keypoints`, kept in `Scene.auto_keypoints` so the run can write them).
  video/000.png … driving frames, sorted by the number in their names (png, jpg, webp, bmp, tif, heic). Preferred
  video.mp4       over video.mp4 when both exist. RGB frames (and every mp4 frame) are cut out as image.png is.
                  Frames of another size than image.png are laid onto it by frame 0's object box (below).
  camera.json     reference camera. Without it the default reference camera is used and the scene is recentred.
  views/          cameras.json + <name>.png (RGBA, or RGB with background removal), same size as image.png.
  gt/             checked here (cameras.json, a folder of 000.png … per camera, equal frame counts, and
                  keypoints3d.json of [T][N][3] with this scene's N and the gt frame count T), so that a broken
                  gt/ stops the run before training and not when a stage evaluates; its path is kept
                  (`Scene.gt_dir`); the stages and `dynapose4d eval` read it. An empty gt/ counts as none. gt
                  frames larger than `max_size` are compared scaled down to it (below).

A picture alone (png, jpg, webp, bmp, tif or heic; `load_scene(picture, video=...)`) is a scene with only image.png:
no camera.json, views/ or gt/ (recentred), video and keypoints only when passed (`video`: an mp4 or a folder of frames;
`keypoints`: a keypoints.json file, also accepted for a folder, where they replace the folder's own files).
A clip alone (mp4, mov, webm, mkv, avi or gif) is a picture alone whose picture is the clip's frame 0 and whose
video is the clip (unless `video` is passed; a clip of one frame, such as a still GIF, is a picture without video).

Recentring (no camera.json, the DreamGaussian convention): image, keypoints and every video frame go through one
2D similarity (one bilinear resample, antialiased when shrinking) that puts the centre of image.png's mask
bounding box at the image centre and scales the box to fill 80% of the frame (of the tighter of width and
height). The frame keeps the files' size, or, when their longer side is over the run's `max_image_size`, the
same aspect at that longer side (a 4000 x 3000 photo becomes 512 x 384 with the default), so that a large photo
costs what a small one does. The scale is reduced when needed so that every keypoint and the mask boxes of all video
frames stay inside the frame. Parts of the frame that come from outside the input are transparent. views/ or gt/
without camera.json is an error, because recentring would misalign them.

A scene with camera.json is used as given (nothing moves, so views/ and gt/ stay aligned with its cameras), except
that when image.png's longer side is over `max_size` (the run's `max_image_size`) everything in pixels is scaled
down together: image, video frames and views/ images (same resample as recentring: bilinear on premultiplied colour,
antialiased) into a frame W' x H' within `max_size` (a 4096 x 4096 scene becomes 512 x 512 with the default), and
the keypoints by the same map. That map is a pure scale s = H' / H about the frame centre (`downscale_of`): the
cameras' files are unchanged, and their intrinsics, which follow the frame size (fx = fy = H / (2 tan(fov_y / 2)),
cx = W / 2, cy = H / 2; docs/cameras.md), then project every 3D point exactly where the scale takes its projection
at the files' size. gt/ frames are compared with renders at the run's size: the scorers read those over `max_size`
(`Scene.gt_max_size`, in the scene's fingerprint when set) scaled down by the same downscale
(`dynapose4d.evaluation.gt.read_gt_frames`); gt/keypoints3d.json is 3D and unchanged. A scene within `max_size` is
loaded bit for bit as its files are (no similarity, the same tensors and fingerprint).

Video frames are read one at a time, get their alpha and their mask box (in the files' pixels) at the files' size,
and are kept in 8 bits in one block until that resample. When the files are much larger than the pipeline's frames
each frame is first shrunk by an integer k (area average of k x k blocks on premultiplied colour,
`dynapose4d.data.recentring.shrink_frame`), the largest k that keeps at least `VIDEO_OVERSAMPLE` (2) stored pixels
per pipeline pixel (`video_shrink`), from the most the similarity can magnify the files: the downscale's scale, or
the recentring's from image.png and the keypoints alone (the frames' boxes can only lower it). So a 4K clip is
stored at most a few times the pipeline's size, a small object that the recentring magnifies keeps its frames at
the files' size, and `max_size` 0 or frames within reach of it shrink nothing (k = 1: the same tensors as without
the shrink). The resample reads the shrunk frames through the same similarity (`stored_recentring`).

A video whose frames are of another size than image.png (a phone clip beside a photo) is first laid onto image.png
by the similarity that puts frame 0's mask box on image.png's (`dynapose4d.data.recentring.Registration`: centre on
centre, scaled by the geometric mean of the width and height ratios; `Scene.video_registration`), then goes
through image.png's similarity; the two make one (`Scene.video_recentring`), so it is still one resample, the
shrink k counts the clip's own pixels, and its mask boxes are kept inside the frame in image.png's pixels.
`video_align` "box" does the same for a video of image.png's size (framed otherwise); "none" never does, and
refuses another size. `Scene.video_fit` is that similarity whether applied or not (the run reports a misfit).

Either similarity, recentring or downscale, is kept (`Scene.recentring`; `has_camera_json` tells which) so that 2D
outputs can be written back in the pixels of the scene's own files (`dynapose4d.data.recentring`).

Images without alpha (the run's `cutout` setting): "plain" removes a uniform background
(`dynapose4d.data.background`, `remove_background`, and its limits) and refuses any other; "grabcut" cuts the
object out of a real background (`dynapose4d.data.cutout`, OpenCV's GrabCut, and its limits); "u2net" does so
with U²-Net, the salient-object network of DreamGaussian's preprocessing (`dynapose4d.data.u2net`; its weights
file is the `u2net` argument); "auto" (default) uses the first where the border is one colour and elsewhere
U²-Net when its weights file exists, else GrabCut, image by image.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dynapose4d.cape import MAX_SUPPORT_KEYPOINTS
from dynapose4d.core.cameras import REFERENCE_CAMERA, Camera, load_camera, load_cameras
from dynapose4d.core.errors import InputError, MissingWeightsError
from dynapose4d.core.io import (
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    count_video_frames,
    iter_video,
    read_first_frame,
    read_image,
)
from dynapose4d.data.auto_keypoints import AutoKeypoints, auto_keypoints
from dynapose4d.data.background import remove_background
from dynapose4d.data.cutout import ColourModels, colour_models, grabcut_rgba, matte_edges, object_pieces
from dynapose4d.data.recentring import (
    FILL,
    Recentring,
    Registration,
    apply_recentring,
    downscale_of,
    mask_box,
    recentring_of,
    registration_of,
    resample_frames,
    shrink_frame,
    stored_recentring,
)
from dynapose4d.data.u2net import WEIGHTS_HINT as U2NET_HINT
from dynapose4d.data.u2net import load_u2net, u2net_alpha
from dynapose4d.evaluation.gt import check_gt_frames, gt_frame_size, load_gt

MIN_SIZE = 8  # smallest accepted image side, pixels
PICTURES = "png, jpg, webp, bmp, tif, heic"  # the picture files a scene may be given as (messages)
CLIPS = "mp4, mov, webm, mkv, avi, gif"  # the video files a scene may be given as alone (messages)
AUTO_MIN_GAP = 0.035  # automatic keypoints of a scene with camera.json: least spacing, x the image's longer side
AUTO_MAX_SIDE = 1024  # automatic keypoints are made on the mask shrunk to keep at least this many pixels on the
# longer side of the object's box (`_auto_keypoints`; a smaller object is used as it is)
VIDEO_OVERSAMPLE = 2  # video frames are stored shrunk by an integer k that keeps at least this many stored pixels
# per pixel of the pipeline's frames, along each axis (`video_shrink`; 0: never shrunk)


@dataclass
class Scene:
    """A validated scene. Images are float32 in [0, 1], RGBA with straight (not premultiplied) colour."""

    root: Path
    image: torch.Tensor  # [H, W, 4] RGBA; alpha = object mask
    keypoints: torch.Tensor  # [N, 2] pixels on image (pixel centres at +0.5)
    skeleton: list[tuple[int, int]]  # 0-based keypoint index pairs
    names: list[str]  # N keypoint names ("kp00".. when not given)
    camera: Camera  # reference camera (camera.json, or the default reference camera)
    has_camera_json: bool  # False: the scene was recentred (object ~80% of the frame)
    video: torch.Tensor | None = None  # [T, H, W, 4] driving frames, RGBA (background removed), or None
    views: list[tuple[Camera, torch.Tensor]] = field(default_factory=list)  # (camera, [H, W, 4]) extra views
    gt_dir: Path | None = None  # scene/gt when present (eval only)
    recentring: Recentring | None = None  # files -> these frames: recentring or downscale (None: used as given)
    image_path: Path | None = None  # the image file read (root/image.png, or the picture given alone)
    keypoints_path: Path | None = None  # the keypoints file read; None when the keypoints are automatic
    auto_keypoints: AutoKeypoints | None = None  # automatic keypoints in the image file's pixels (no keypoints file)
    gt_keypoints: bool = False  # gt/keypoints3d.json holds this scene's keypoints (False for automatic keypoints)
    cutout: torch.Tensor | None = None  # [H0, W0, 4] the picture as GrabCut or the mask file cut it out (file
    # pixels), else None
    cutout_pieces: list[float] = field(default_factory=list)  # the automatically cut picture's pieces, shares of
    # the object largest first (`data.cutout.object_pieces`); [] when GrabCut or U²-Net did not cut the picture
    mask_path: Path | None = None  # the mask file that gave the picture its alpha (`load_scene`'s `mask`), else None
    frames_by_picture_colours: bool = False  # GrabCut cut video frames or views with the colours of the picture and
    # its mask (`data.cutout.colour_models`), not from each one's border
    grabcut_cuts: int = 0  # images (picture, video frames, views) that GrabCut cut out (`data.cutout`)
    u2net_cuts: int = 0  # images that U²-Net cut out (`data.u2net`; cutout auto with its weights, or u2net)
    gt_max_size: int = 0  # gt frames are compared within this longer side (`max_size`; 0: all at their own size)
    video_registration: Registration | None = None  # a video of another size than the picture: how it was laid
    # onto the picture (frame 0's object box onto the picture's; None: the picture's size, used as it is)
    video_fit: Registration | None = None  # frame 0's box onto the picture's, applied or not (how far apart they
    # are; None without a video or an object in either)
    video_source_frames: int = 0  # frames in the video's file or folder (more than `video` holds with video_frames)

    @functools.cached_property
    def video_recentring(self) -> Recentring | None:
        """A registered video's own similarity, its files' pixels -> these frames (`Registration.then`); None when
        the video is used as it is (`recentring` is its similarity too)."""
        reg = self.video_registration
        return None if reg is None else reg.then(self.recentring)

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def num_keypoints(self) -> int:
        return int(self.keypoints.shape[0])


# ------------------------------------------------------------------------------------------------ public


def load_scene(path: str | Path, video: str | Path | None = None, keypoints: str | Path | None = None,
               max_size: int = 0, cutout: str = "auto", video_align: str = "auto", video_frames: int = 0,
               mask: str | Path | None = None, u2net: str | Path | None = None) -> Scene:
    """Load and validate the scene folder at `path` (docs/scene-folder.md), or a picture (png, jpg, webp, bmp, tif,
    heic) given alone. Raises `InputError` (one line, naming the file) on any bad input; see the module docstring for
    the files, recentring and the downscale, and `dynapose4d.data.background` for the background removal. The
    frames are brought within `max_size` pixels on their longer side (0: kept at the files' size). `cutout` says how
    images without alpha get it: "auto", "plain", "grabcut" or "u2net" (`_Cutter.rgba`; `Scene.grabcut_cuts` counts the
    GrabCut cuts, `Scene.cutout` keeps the picture's cut-out when it was one). `video_align` says how the video is
    laid onto the picture: "auto" by frame 0's object box when its frames are of another size (else as they are),
    "box" always by that box, "none" as they are (frames of another size are an error). `video_frames` N > 0 keeps
    N frames of a longer video, evenly spaced, its first and last included (`frame_picks`; the others are not cut
    out nor stored); 0 keeps all.

    `video` (an mp4, or a folder of numbered frames) replaces the folder's video/ or video.mp4; `keypoints` (a
    file in keypoints.json's format) replaces its keypoints.json. Without either keypoints file the keypoints
    and skeleton are made from the mask (`dynapose4d.data.auto_keypoints`) and kept in `Scene.auto_keypoints`.
    `mask` (an image of the picture's size, `_masked`) replaces the folder's mask.png; either gives the picture
    its alpha in place of its own and of any cut-out (video frames and views are cut out as before, but by GrabCut
    with the colour models of the picture and the mask when the picture has no alpha of its own). `u2net`: the
    U²-Net weights file that `cutout` "auto" (when it exists) and "u2net" cut real backgrounds with
    (`dynapose4d.data.u2net`; `Scene.u2net_cuts` counts its cuts)."""
    root = Path(path)
    if not root.exists():
        raise InputError(f"{root}: scene folder or picture not found")
    picture = root.is_file()
    clip = picture and root.suffix.lower() in VIDEO_SUFFIXES
    if picture:
        if root.suffix.lower() not in IMAGE_SUFFIXES and not clip:
            raise InputError(f"{root}: not a picture ({PICTURES}), a clip ({CLIPS}) nor a scene folder "
                             "(a folder with image.png)")
        image_path, root = root, root.parent
    elif not root.is_dir():
        raise InputError(f"{root}: a scene must be a folder (with image.png), a picture ({PICTURES}) or a clip "
                         f"({CLIPS})")
    else:
        image_path = root / "image.png"
        if not image_path.is_file():
            raise InputError(f"{image_path}: file not found (a scene needs image.png)")
    if video_align not in VIDEO_ALIGNS:
        raise ValueError(f"video_align {video_align!r}: expected one of {VIDEO_ALIGNS}")
    cutter = _Cutter(cutout, u2net)
    if clip:  # a clip alone: its frame 0 is the picture and, unless --video says otherwise, it drives it
        image, more = read_first_frame(image_path)
        video = image_path if video is None and more else video
    else:
        image = read_image(image_path)
    H, W = image.shape[:2]
    if H < MIN_SIZE or W < MIN_SIZE:  # before the cut-out, which would only say that it found no object
        raise InputError(f"{image_path}: image is {W}x{H} pixels; at least {MIN_SIZE}x{MIN_SIZE} is needed")
    mask_path = Path(mask) if mask is not None else (None if picture else root / "mask.png")
    if mask_path is not None and (mask is not None or mask_path.exists()):
        own_alpha = image.shape[-1] == 4 and _outlines(image[..., 3])
        image = _masked(image, mask_path, image_path.name)  # [H, W, 4]: the user's mask replaces any cut-out
        cut_picture, pieces = image, []
        if not own_alpha:  # the picture shows its background: frames that need GrabCut take its colours from it
            cutter.models = colour_models(image[..., :3], image[..., 3])
            cutter.models_area = (image[..., 3] > 0.5).float().mean().item()
    else:
        mask_path = None
        image = cutter.rgba(image, image_path)  # [H, W, 4]
        # the picture as GrabCut or U²-Net cut it out, in the file's pixels
        cut_picture = image if cutter.grabcut or cutter.learned else None
        pieces = object_pieces(image[..., 3]) if cut_picture is not None else []
    has_camera = not picture and (root / "camera.json").exists()
    kp_path = Path(keypoints) if keypoints is not None else (None if picture else root / "keypoints.json")
    auto = None
    if kp_path is not None and (keypoints is not None or kp_path.exists()):
        kps, skeleton, names = _read_keypoints(kp_path, W, H, image_path.name)
    else:
        auto = _auto_keypoints(image, image_path, has_camera)
        kps, skeleton, names = torch.tensor(auto.keypoints, dtype=torch.float32), list(auto.skeleton), list(auto.names)
    if not has_camera and not bool((image[..., 3] > 0.5).any()):  # the recentring centres the mask's box
        raise InputError(f"{image_path}: no pixel of the alpha channel is over 50% opaque: no object to centre")
    # video frames are stored shrunk by k when the pipeline's frames need far fewer pixels (`video_shrink`), and
    # laid onto the picture by frame 0's object box when they are of another size (`Registration`)
    target = _VideoTarget(size=(W, H), box=mask_box(image[..., 3] > 0.5), name=image_path.name,
                          scale_bound=_scale_bound(image, kps, has_camera, max_size), max_size=max_size,
                          edges="extend" if has_camera else "transparent", align=video_align, frames=video_frames)
    if video is not None:
        block = _read_video_path(Path(video), target, cutter)
    else:
        block = None if picture else _read_video(root, target, cutter)

    camera = load_camera(root / "camera.json") if has_camera else REFERENCE_CAMERA
    views_dir, gt_dir = root / "views", root / "gt"
    if not has_camera and not picture:
        for d, what in ((views_dir, "views/"), (gt_dir, "gt/")):
            if d.exists():
                raise InputError(f"{d}: {what} needs camera.json (the reference camera it is aligned with); "
                                 "without it the scene is recentred and would no longer match")
    views = _read_views(views_dir, H, W, cutter) if not picture and views_dir.exists() else []
    # an empty gt/ counts as none
    has_gt = not picture and gt_dir.exists() and (not gt_dir.is_dir() or any(gt_dir.iterdir()))
    gt_keypoints, gt_max_size = False, 0
    if has_gt:  # automatic keypoints are not the gt's: their tracks are not compared with gt/keypoints3d.json
        gt_keypoints = _check_gt(gt_dir, int(kps.shape[0]), check_keypoints=auto is None)  # False for auto
        gt_max_size = max_size if _gt_larger_than(gt_dir, max_size) else 0

    if has_camera:  # only scaled down (the cameras' intrinsics follow the frame size): views/ go along
        recentring = downscale_of(W, H, max_size)
        views = [(cam, resample_frames(recentring, img[None])[0]) for cam, img in views] if recentring else views
    else:  # the video frames' mask boxes were taken at the files' size as they were read
        recentring = recentring_of(image, kps, None, fill=FILL, max_size=max_size,
                                   boxes=None if block is None else block.picture_boxes())
    image, kps, _ = apply_recentring(recentring, image, kps)  # None: as given
    vid = None if block is None else block.resampled(recentring)  # float, at the pipeline's size
    return Scene(
        root=root, image=image.contiguous(), keypoints=kps, skeleton=skeleton, names=names, camera=camera,
        has_camera_json=has_camera, video=None if vid is None else vid.contiguous(), views=views,
        gt_dir=gt_dir if has_gt else None, recentring=recentring, image_path=image_path,
        keypoints_path=None if auto is not None else kp_path, auto_keypoints=auto, gt_keypoints=gt_keypoints,
        cutout=cut_picture, grabcut_cuts=cutter.grabcut, u2net_cuts=cutter.learned, cutout_pieces=pieces,
        mask_path=mask_path, frames_by_picture_colours=cutter.by_models > 0,
        gt_max_size=gt_max_size,
        video_registration=None if block is None else block.registration,
        video_fit=None if block is None else block.fit,
        video_source_frames=0 if block is None else block.source_frames,
    )


def video_shrink(scale: float, max_size: int) -> int:
    """The integer k by which video frames are shrunk as they are read (area average of k x k blocks,
    `dynapose4d.data.recentring.shrink_frame`) when the pipeline's frames magnify the files' pixels by at most
    `scale` (the recentring's or downscale's scale, files -> pipeline): the largest k with k * scale <= 1 /
    VIDEO_OVERSAMPLE, so the stored frames keep at least VIDEO_OVERSAMPLE pixels per pipeline pixel. 1 (nothing
    shrunk) when `max_size` is 0 (the files' own size) or VIDEO_OVERSAMPLE is 0."""
    if max_size <= 0 or VIDEO_OVERSAMPLE <= 0 or not scale > 0:
        return 1
    return max(1, math.floor(1.0 / (VIDEO_OVERSAMPLE * scale)))


def _scale_bound(image: torch.Tensor, kps: torch.Tensor, has_camera: bool, max_size: int) -> float:
    """The most the pipeline's frames magnify the picture's pixels, known before the video is read (0: frames are
    never shrunk, `max_size` 0): a downscale's scale from the size; the recentring's from image.png and the
    keypoints alone, which bounds the final one (the video's mask boxes can only lower it), so a small object that
    the recentring magnifies keeps its frames at the files' size."""
    if max_size <= 0:
        return 0.0
    W, H = int(image.shape[1]), int(image.shape[0])
    try:
        rec = downscale_of(W, H, max_size) if has_camera else recentring_of(image, kps, None, FILL, max_size)
    except ValueError:  # an empty mask: the recentring says so after the video is read
        return 0.0
    return 1.0 if rec is None else rec.scale


def _auto_keypoints(image: torch.Tensor, image_path: Path, has_camera: bool) -> AutoKeypoints:
    """Keypoints from the mask of `image` [H, W, 4] (pixels of the file); a mask without enough object is an
    InputError naming the file. Their spacing keeps them apart by the cape stage's coincidence distance: a
    recentred image (no camera.json) scales the object to 80% of the frame, which the default spacing (4% of the
    object's size) allows for; used as given, they are kept 3.5% of the image's longer side apart. An object
    whose box is over `AUTO_MAX_SIDE` pixels on its longer side gets them on its mask shrunk by the integer k
    that keeps at least that many (area average of k x k blocks, alpha over 1/2), scaled back by k: the medial
    axis of a 48-megapixel photo's mask took 16 s, and the run sees the object at a few hundred pixels."""
    alpha = image[..., 3]
    box = mask_box(alpha > 0.5)
    k = 1 if box is None else max(1, max(box[2] - box[0], box[3] - box[1]) // AUTO_MAX_SIDE)
    mask = (alpha.numpy() if k == 1 else _shrink_alpha(alpha, k)) > 0.5
    try:
        gap = AUTO_MIN_GAP * max(image.shape[0], image.shape[1]) / k if has_camera else 0.0
        auto = auto_keypoints(mask, min_gap=gap)
    except ValueError as e:
        raise InputError(f"{image_path}: no keypoints.json, and automatic keypoints failed: {e}") from None
    if k > 1:  # a shrunk pixel u covers file pixels [k u, k u + k): points scale by k (pixel centres at +0.5)
        auto.keypoints = auto.keypoints * k
    return auto


def _shrink_alpha(alpha: torch.Tensor, k: int) -> np.ndarray:
    """Alpha [H, W] -> the mean of each k x k block [ceil(H / k), ceil(W / k)] (outside the image counts as 0)."""
    H, W = alpha.shape
    a = F.pad(alpha[None, None].float(), (0, -W % k, 0, -H % k))
    return F.avg_pool2d(a, k)[0, 0].numpy()


# ------------------------------------------------------------------------------------------------ helpers


MODELS_MIN_AREA = 0.25  # a frame or view cut with the picture's colours that finds under this share of the picture's
# object area is cut from its border instead (views of the demo's back found 0-2% of it with the picture's colours)
MASK_SNAP = 0.1  # a mask file's values within this of 0 or 1 are taken as 0 or 1 (compression noise, `_masked`)
MIN_CLEAR = 0.005  # an alpha under 1/2 on less of the image than this is no mask: the image is cut out as if opaque
# (a PNG saved as RGBA with a few stray translucent pixels outlined nothing)
CUTOUTS = ("auto", "plain", "grabcut", "u2net")  # how pictures and frames without alpha are cut out (RunConfig.cutout)
VIDEO_ALIGNS = ("auto", "box", "none")  # how a driving video is laid onto the picture (RunConfig.video_align)


class _Cutter:
    """Gives images without alpha their alpha by the run's `cutout` rule, and counts the GrabCut and U²-Net cuts.
    `u2net`: the U²-Net weights file (`data.u2net`), loaded on first use; "auto" uses it when it exists."""

    def __init__(self, mode: str = "auto", u2net: str | Path | None = None) -> None:
        if mode not in CUTOUTS:
            raise ValueError(f"cutout {mode!r}: expected one of {CUTOUTS}")
        self.mode, self.grabcut, self.learned, self.by_models = mode, 0, 0, 0
        self.models: ColourModels | None = None  # colour mixtures of the picture and the user's mask, for frames
        # and views
        self.models_area = 0.0  # the share of the picture its mask covers (a frame's cut with the models far
        # below it has missed the object: that frame is cut from its border instead)
        self.u2net_path = Path(u2net).expanduser() if u2net else None
        self._model: torch.nn.Module | None = None
        self.use_u2net = mode == "u2net" or (mode == "auto" and self.u2net_path is not None
                                             and self.u2net_path.is_file())
        if mode == "u2net" and (self.u2net_path is None or not self.u2net_path.is_file()):
            raise MissingWeightsError(f"cutout=u2net: U²-Net weights not found at {self.u2net_path or '(unset)'}: "
                                      f"{U2NET_HINT} (or cutout=auto: GrabCut without them)")

    def _cut_u2net(self, rgb: torch.Tensor) -> torch.Tensor:
        """RGBA [H, W, 4]: the picture's colours with U²-Net's alpha (`data.u2net.u2net_alpha`), values within
        `MASK_SNAP` of 0 or 1 taken as 0 or 1 (its output is never exactly 0 on a background)."""
        if self._model is None:
            self._model = load_u2net(self.u2net_path)
        a = u2net_alpha(self._model, rgb)  # [H, W]
        return torch.cat([rgb[..., :3].float(), _snapped(a)[..., None]], -1)

    def rgba(self, img: torch.Tensor, path: Path | str, same_scene: bool = False) -> torch.Tensor:
        """[H, W, 3|4] -> [H, W, 4]: alpha kept when it is under 1/2 on `MIN_CLEAR` of the image or more; else
        "plain" removes a uniform background, "grabcut" cuts the object out of any background, "u2net" does so
        by U²-Net, "auto" does the first when the border is one colour and else U²-Net when its weights exist,
        GrabCut when they do not. A video frame or view (`same_scene`) is cut by GrabCut with the picture's colour
        `models` when there are some, unless that finds under `MODELS_MIN_AREA` of the picture's object (then from
        its border)."""
        if img.shape[-1] == 4 and img[..., 3].min().item() < 1.0:
            if img[..., 3].max().item() <= 0.0:
                raise InputError(f"{path}: the alpha channel is empty (fully transparent): no object to use")
            if _outlines(img[..., 3]):
                return img.float()
        kind = "no alpha" if img.shape[-1] == 3 else (
            "alpha is fully opaque" if img[..., 3].min().item() >= 1.0 else
            f"alpha is {100 * (1 - MIN_CLEAR):g}% opaque or more (not an object's mask)")
        out = remove_background(img[..., :3]) if self.mode in ("auto", "plain") else None
        how = "on the uniform background"
        if out is None and self.mode == "plain":
            raise InputError(f"{path}: {kind} and the background is not a uniform colour: provide an RGBA image "
                             "(or set cutout=auto to cut it out with GrabCut)")
        if out is None and self.use_u2net:
            out = self._cut_u2net(img[..., :3])
            how, self.learned = "by U²-Net", self.learned + 1
        elif out is None:
            models = self.models if same_scene else None
            out = grabcut_rgba(img[..., :3], models)
            if models is not None and (out[..., 3] > 0.5).float().mean().item() < MODELS_MIN_AREA * self.models_area:
                out = grabcut_rgba(img[..., :3])  # the picture's colours missed the object here (it turned?)
            elif models is not None:
                self.by_models += 1
            how, self.grabcut = "by GrabCut", self.grabcut + 1
        frac = (out[..., 3] > 0.5).float().mean().item()
        if frac == 0.0:
            raise InputError(f"{path}: {kind} and no object found {how}: provide an RGBA image")
        if frac > 0.95:
            raise InputError(f"{path}: {kind} and the object found {how} covers {100 * frac:.1f}% of the image: "
                             "provide an RGBA image")
        return out


def _masked(image: torch.Tensor, path: Path, image_name: str) -> torch.Tensor:
    """The picture [H, W, 3|4] with its alpha from the mask file at `path` -> [H, W, 4]. The mask must have the
    picture's size; its alpha is used when it has one that is a mask (under 1/2 on `MIN_CLEAR` of it, such as a
    cut-out PNG), else its grey level (white: object); values within `MASK_SNAP` of 0 or 1 are taken as 0 or 1
    (a lossy WebP mask's noise gave faint alpha to 4% of the background). A mask of only 0 and 1 then (a painted or
    segmented one) gets its edge matted as a GrabCut cut does (`data.cutout.matte_edges`); other values are used as
    the alpha they say, except in a JPEG, whose compression blurs a black-and-white mask into grey: it is taken as
    black and white (at 1/2) and matted (a JPEG mask used as grey gave faint alpha to 2-3% of the background, and
    twice the error)."""
    m = read_image(path)  # [H, W, 3|4]
    H, W = image.shape[:2]
    if tuple(m.shape[:2]) != (H, W):
        raise InputError(f"{path}: the mask is {m.shape[1]}x{m.shape[0]} pixels, the picture ({image_name}) "
                         f"{W}x{H}: a mask must have the picture's size")
    if m.shape[-1] == 4 and _outlines(m[..., 3]):
        alpha = m[..., 3]
    else:
        alpha = m[..., :3].mean(-1)  # [H, W]
    if not bool((alpha > 0.5).any()):
        raise InputError(f"{path}: the mask has no pixel over 1/2 (white: object): no object")
    if path.suffix.lower() in (".jpg", ".jpeg"):
        alpha = (alpha > 0.5).float()
    alpha = _snapped(alpha)
    rgb = image[..., :3].float()
    if bool(((alpha == 0) | (alpha == 1)).all()):
        return matte_edges(rgb, alpha)
    return torch.cat([rgb, alpha[..., None].float()], -1)


def _outlines(alpha: torch.Tensor) -> bool:
    """Whether alpha [H, W] outlines an object: under 1/2 on `MIN_CLEAR` of the image or more."""
    return (alpha < 0.5).float().mean().item() >= MIN_CLEAR


def _snapped(alpha: torch.Tensor) -> torch.Tensor:
    """Alpha [H, W] with values within `MASK_SNAP` of 0 or 1 set to 0 or 1."""
    return torch.where(alpha < MASK_SNAP, 0.0, torch.where(alpha > 1 - MASK_SNAP, 1.0, alpha))


def _read_json(path: Path):
    if path.is_dir():
        raise InputError(f"{path}: a folder, not a JSON file")
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))  # a byte-order mark (Windows editors) is skipped
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: unreadable file ({type(e).__name__})") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: malformed JSON ({e.msg} at line {e.lineno} column {e.colno})") from None


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _read_keypoints(path: Path, W: int, H: int, image_name: str = "image.png"
                    ) -> tuple[torch.Tensor, list[tuple[int, int]], list[str]]:
    data = _read_json(path)
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object with 'keypoints' and 'skeleton', got {type(data).__name__}")
    if "keypoints" not in data:
        raise InputError(f"{path}: missing 'keypoints' (a list of [x, y] pixel positions on {image_name})")
    kps = data["keypoints"]
    if not isinstance(kps, list) or len(kps) == 0:
        raise InputError(f"{path}: 'keypoints' must be a non-empty list of [x, y] pixel positions")
    pts = []
    for i, p in enumerate(kps):
        if not isinstance(p, list) or len(p) not in (2, 3) or not all(_is_number(v) for v in p):
            raise InputError(f"{path}: keypoint {i} must be [x, y] or [x, y, v] numbers, got {json.dumps(p)[:60]}")
        if not all(math.isfinite(v) for v in p):
            raise InputError(f"{path}: keypoint {i} is not finite: {p}")
        if len(p) == 3 and p[2] <= 0:
            raise InputError(f"{path}: keypoint {i} has visibility v={p[2]}; the support keypoints must all be "
                             f"visible on {image_name} (remove it, or give it v > 0)")
        x, y = float(p[0]), float(p[1])
        if not (0.0 <= x <= W and 0.0 <= y <= H):
            raise InputError(f"{path}: keypoint {i} at ({x:g}, {y:g}) is outside {image_name} ({W}x{H} pixels)")
        pts.append((x, y))
    N = len(pts)
    if N > MAX_SUPPORT_KEYPOINTS:
        raise InputError(f"{path}: {N} keypoints; at most {MAX_SUPPORT_KEYPOINTS} are supported (the pose model's "
                         "limit)")
    if "skeleton" not in data:
        raise InputError(f"{path}: missing 'skeleton' (a list of [i, j] keypoint index pairs; [] for none)")
    sk = data["skeleton"]
    if not isinstance(sk, list):
        raise InputError(f"{path}: 'skeleton' must be a list of [i, j] keypoint index pairs")
    skeleton: list[tuple[int, int]] = []
    for k, e in enumerate(sk):
        if (not isinstance(e, list) or len(e) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in e)):
            raise InputError(f"{path}: skeleton edge {k} must be a pair of integer indices, got {json.dumps(e)[:60]}")
        i, j = e
        if not (0 <= i < N and 0 <= j < N):
            raise InputError(f"{path}: skeleton edge {k} {e} has an index out of range (there are {N} keypoints, "
                             f"indices 0..{N - 1})")
        if i == j:
            raise InputError(f"{path}: skeleton edge {k} {e} connects keypoint {i} to itself")
        skeleton.append((i, j))
    names = data.get("names")
    if names is None:
        names = [f"kp{i:02d}" for i in range(N)]
    elif not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InputError(f"{path}: 'names' must be a list of strings")
    elif len(names) != N:
        raise InputError(f"{path}: 'names' has {len(names)} entries but there are {N} keypoints")
    elif len(set(names)) != N:
        dup = sorted({n for n in names if names.count(n) > 1})
        raise InputError(f"{path}: keypoint names must be unique, repeated: {dup}")
    return torch.tensor(pts, dtype=torch.float32), skeleton, list(names)


def _frame_files(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir()
             if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES]
    numbered: dict[int, Path] = {}
    for p in files:
        m = re.fullmatch(r".*?(\d+)", p.stem)  # the number that ends the name (clip2_007: 7)
        if m is None:
            raise InputError(f"{p}: video frame names must be numbered (000.png, 001.png, ...)")
        k = int(m.group(1))
        if k in numbered:
            raise InputError(f"{p}: frame number {k} is given twice (also {numbered[k].name})")
        numbered[k] = p
    return [numbered[k] for k in sorted(numbered)]


@dataclass(frozen=True)
class _VideoTarget:
    """The picture that driving frames are read against (`_read_video_path`)."""

    size: tuple[int, int]  # (W, H) of the picture's file
    box: tuple[int, int, int, int] | None  # the picture's mask box (alpha > 0.5), its pixels
    name: str  # the picture's file name, for messages
    scale_bound: float  # the most the pipeline magnifies the picture's pixels (`_scale_bound`; 0: never shrink)
    max_size: int  # the run's max_image_size
    edges: str  # outside the files, for frames of the picture's size ("extend": a camera.json scene's downscale)
    align: str = "auto"  # `load_scene`'s video_align
    frames: int = 0  # `load_scene`'s video_frames (0: all)


def _read_video(root: Path, target: _VideoTarget, cutter: _Cutter) -> _FrameBlock | None:
    """A scene folder's video/ (preferred) or video.mp4, or None."""
    folder, mp4 = root / "video", root / "video.mp4"
    if folder.exists():
        return _read_video_path(folder, target, cutter)
    if mp4.exists():
        return _read_video_path(mp4, target, cutter)
    return None


def _read_video_path(path: Path, target: _VideoTarget, cutter: _Cutter) -> _FrameBlock:
    """The frames of a folder of numbered frames or of an mp4 file as a `_FrameBlock`: RGBA uint8 [T, ceil(H / k),
    ceil(W / k), 4] (W x H the frames' size) and each frame's mask box at the files' size. Each frame gets its
    alpha (`_Cutter.rgba`) at the files' size as it is read, its mask box, then is shrunk by k (area average on
    premultiplied colour, `shrink_frame`) and kept in 8 bits, in one block allocated up front (a long video in
    float does not fit in memory, many frame-sized pieces fragment it, and a phone's 4K clip at its own size takes
    10 GB in 8 bits; the recentring resample turns the frames into float at the pipeline's size). Frames of
    another size than the picture are laid onto it by frame 0's object box (`_video_layout`)."""
    if not path.exists():
        raise InputError(f"{path}: video not found (an mp4 file or a folder of frames 000.png, 001.png, ...)")
    if path.is_dir():
        files = _frame_files(path)
        if not files:
            raise InputError(f"{path}: the video has 0 frames (no 000.png, 001.png, ...)")
        total, picks = len(files), frame_picks(len(files), target.frames)
        files = files if picks is None else [files[i] for i in picks]
        expected, frames = len(files), ((f, read_image(f)) for f in files)
    else:
        if path.name == "video" and not path.suffix:
            raise InputError(f"{path}: expected a folder of frames (000.png, 001.png, ...)")
        total = count_video_frames(path)  # 0 when it cannot be counted: every frame is read, then picked
        picks = frame_picks(total, target.frames)
        chosen = None if picks is None else set(picks)
        expected = total if picks is None else len(picks)
        frames = ((f"{path} (frame {t})", torch.from_numpy(f).float().div_(255.0))  # [H, W, 3|4] uint8 each
                  for t, f in enumerate(iter_video(path)) if chosen is None or t in chosen)
    out: _FrameBlock | None = None
    first: tuple[Path | str, tuple[int, int]] | None = None
    for where, img in frames:
        size = (int(img.shape[1]), int(img.shape[0]))  # (W, H)
        if first is None:
            first = (where, size)
        elif size != first[1]:  # mp4 frames all have the stream's size
            raise InputError(f"{where}: video frames of different sizes: {size[0]}x{size[1]}, "
                             f"but {Path(first[0]).name} is {first[1][0]}x{first[1][1]}")
        rgba = cutter.rgba(img, where, same_scene=True)
        if out is None:
            out = _FrameBlock(expected, size, *_video_layout(rgba, target, where))
        out.add(rgba)
    if out is None or out.count == 0:
        raise InputError(f"{path}: the video has 0 frames")
    out.source_frames = max(total, out.count)
    picks = frame_picks(out.count, target.frames) if total == 0 else None  # not counted up front: picked now
    if picks is not None:
        out.select(picks)
    return out


def frame_picks(total: int, n: int) -> list[int] | None:
    """`n` indices of `total` frames evenly spaced, the first and the last included (round((total - 1) i /
    (n - 1))), or None (all of them) when `n` is 0 or there are no more than `n`."""
    if n <= 0 or total <= n:
        return None
    if n == 1:
        return [0]
    return [round(i * (total - 1) / (n - 1)) for i in range(n)]


def _video_layout(frame0: torch.Tensor, target: _VideoTarget, where: Path | str
                  ) -> tuple[int, str, Registration | None, Registration | None]:
    """How a video whose first frame is `frame0` [H, W, 4] is stored: its shrink k (`video_shrink`), what lies
    outside its frames, the `Registration` that lays them onto the picture when `target.align` asks for one
    (frame 0's object box onto the picture's: "box", or "auto" for frames of another size; InputError naming the
    file when either has no object, or for another size under "none"), and that registration whether applied or
    not (the fit, None when a box is missing)."""
    size = (int(frame0.shape[1]), int(frame0.shape[0]))
    (W, H), (w, h) = target.size, size
    box = mask_box(_quantise(frame0[..., 3]) > 127)
    fit = None if box is None or target.box is None else registration_of(box, target.box, size, target.size)
    register = target.align == "box" or (target.align == "auto" and size != target.size)
    if size != target.size and target.align == "none":
        raise InputError(f"{where}: video frame is {w}x{h} but {target.name} is {W}x{H} (video_align=none; "
                         "'auto' or 'box' lays it onto the picture by frame 0's object box)")
    if not register:
        return video_shrink(target.scale_bound, target.max_size), target.edges, None, fit
    if fit is None:
        whose = f"{where}: frame 0 shows" if box is None else f"{target.name}: the picture shows"
        raise InputError(f"{whose} no object (alpha over 50%), needed to lay the video ({w}x{h}) onto "
                         f"{target.name} ({W}x{H}) by its box" + ("; give frames of its size" if size != target.size
                                                                   else "; set video_align=auto"))
    return video_shrink(target.scale_bound * fit.scale, target.max_size), "transparent", fit, fit


class _FrameBlock:
    """RGBA frames in [0, 1] of the files' `size` (W, H) stored as uint8 in one [T, ceil(H / k), ceil(W / k), 4]
    block sized for `expected` frames (grown if more come, trimmed if fewer), shrunk by the integer k = `shrink`
    (`shrink_frame`; 1: as given, bit for bit), and each frame's mask box (alpha > 0.5 as stored in 8 bits) in the
    files' pixels, taken before the shrink (`boxes`, what the recentring keeps inside the frame). `registration`
    lays the frames onto the picture (None: used as they are); `fit` is frame 0's box onto the picture's, applied
    or not (`_video_layout`)."""

    def __init__(self, expected: int, size: tuple[int, int] = (0, 0), shrink: int = 1,
                 edges: str = "transparent", registration: Registration | None = None,
                 fit: Registration | None = None) -> None:
        self.expected, self.count = max(1, expected), 0
        self.size, self.k, self.edges = size, max(1, int(shrink)), edges
        self.registration, self.fit = registration, fit
        self.block: torch.Tensor | None = None
        self.boxes: list[tuple[int, int, int, int] | None] = []
        self.source_frames = 0  # frames in the file or folder (`_read_video_path`)

    def add(self, rgba: torch.Tensor) -> None:
        self.boxes.append(mask_box(_quantise(rgba[..., 3]) > 127))
        rgba = shrink_frame(rgba, self.k, self.edges)
        if self.block is None:
            self.block = torch.empty((self.expected, *rgba.shape), dtype=torch.uint8)
        elif self.count == self.block.shape[0]:  # more frames than the header said
            self.block = torch.cat([self.block, torch.empty_like(self.block[: max(1, self.count // 4)])])
        self.block[self.count] = _quantise(rgba)
        self.count += 1

    def frames(self) -> torch.Tensor:
        assert self.block is not None
        return self.block[: self.count]

    def select(self, picks: list[int]) -> None:
        """Keep the frames at `picks` (indices of the frames added, in order)."""
        self.block = self.frames()[picks].clone()
        self.boxes = [self.boxes[i] for i in picks]
        self.count = len(picks)

    def picture_boxes(self) -> list[tuple[float, float, float, float] | None]:
        """The frames' mask boxes in the picture's pixels (what the recentring keeps inside the frame)."""
        reg = self.registration
        return list(self.boxes) if reg is None else [reg.box_to_picture(b) for b in self.boxes]

    def resampled(self, rec: Recentring | None) -> torch.Tensor:
        """The frames moved into float [T, Ho, Wo, 4] by the picture's similarity `rec` (None: as given), after the
        registration when there is one (`Registration.then`), in one resample (`resample_frames`, through
        `stored_recentring` when shrunk)."""
        if self.registration is not None:
            rec = self.registration.then(rec)
        frames = self.frames()
        stored = (int(frames.shape[2]), int(frames.shape[1]))
        return resample_frames(stored_recentring(rec, self.size, self.k, stored), frames)


def _quantise(rgba: torch.Tensor) -> torch.Tensor:
    """Float RGBA in [0, 1] -> uint8 (exact for frames read from 8-bit files with their own alpha)."""
    return (rgba.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


def _read_views(folder: Path, H: int, W: int, cutter: _Cutter) -> list[tuple[Camera, torch.Tensor]]:
    if not folder.is_dir():
        raise InputError(f"{folder}: expected a folder with cameras.json and one <name>.png per camera")
    cams = load_cameras(folder / "cameras.json")
    views = []
    for cam in cams:
        p = folder / f"{cam.name}.png"
        if not p.is_file():
            raise InputError(f"{p}: file not found (views/cameras.json lists camera '{cam.name}')")
        img = cutter.rgba(read_image(p), p, same_scene=True)
        if tuple(img.shape[:2]) != (H, W):
            raise InputError(f"{p}: view is {img.shape[1]}x{img.shape[0]} but image.png is {W}x{H}")
        views.append((cam, img))
    return views


def _gt_larger_than(folder: Path, max_size: int) -> bool:
    """Whether a gt camera's frames (the size of its 000.png, from the file's header) have a longer side over
    `max_size` (> 0): the scorers then compare them scaled down (`dynapose4d.evaluation.gt.read_gt_frames`)."""
    return max_size > 0 and any(max(gt_frame_size(folder / cam.name)) > max_size for cam in load_gt(folder).cameras)


def _check_gt(folder: Path, num_keypoints: int, check_keypoints: bool = True) -> bool:
    """Validate a gt/ folder's structure without reading its images (see the module docstring). Returns whether
    gt/keypoints3d.json exists and holds the scene's keypoints: with `check_keypoints` a count other than
    `num_keypoints` is an error; without (automatic keypoints, which are not the gt's) it is False."""
    if not folder.is_dir():
        raise InputError(f"{folder}: expected a folder with cameras.json and one folder of frames per camera")
    gt = load_gt(folder)
    counts = {cam.name: len(check_gt_frames(folder / cam.name)) for cam in gt.cameras}
    if len(set(counts.values())) > 1:
        raise InputError(f"{folder}: gt cameras have different frame counts {counts}")
    kp = gt.keypoints3d
    if kp is None:
        return False
    T = next(iter(counts.values()))
    if kp.shape[0] != T or (check_keypoints and kp.shape[1] != num_keypoints):
        raise InputError(f"{folder / 'keypoints3d.json'}: {kp.shape[0]} frames of {kp.shape[1]} keypoints, but the "
                         f"gt cameras have {T} frames and keypoints.json has {num_keypoints} keypoints")
    for name, vis in gt.visible.items():
        if check_keypoints and name in counts and tuple(vis.shape) != (T, num_keypoints):
            raise InputError(f"{folder / 'keypoints2d.json'}: camera {name!r} has 'visible' flags of shape "
                             f"{list(vis.shape)}, but there are {T} frames of {num_keypoints} keypoints")
    return check_keypoints
