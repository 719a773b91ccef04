"""U²-Net, the salient-object network DreamGaussian's and DreamGaussian4D's preprocessing cut pictures out with
(through the `rembg` package), in plain torch, loading the authors' PyTorch weights (`load_u2net`).

Where its weights are at hand (the run setting `u2net`: `u2net.pth`, 176 MB, or the small `u2netp.pth`, 4.7 MB,
from the U-2-Net repository, xuebinqin/U-2-Net, folder saved_models/), a picture without alpha on a real background
is cut out by it instead of GrabCut (`data.scene`, `cutout: auto | u2net`): a learned model finds the object
where colours alone cannot (clutter, an object in a room). Nothing is downloaded at run time.

The architecture (Qin et al., "U²-Net: Going Deeper with Nested U-Structure for Salient Object Detection", 2020):
  block:    REBNCONV = 3x3 convolution (dilation d, padding d) -> batch norm -> ReLU.
  RSU-L:    a residual U inside each stage: an input REBNCONV (in -> out), an encoder of L-1 REBNCONVs (out -> mid,
            then mid -> mid) with 2x2 max pooling (ceil mode) between them, a last dilated one (d = 2) at the
            bottom, a decoder of REBNCONVs on [deeper, skip] concatenations (2 mid -> mid, the last 2 mid -> out)
            with bilinear upsampling to the skip's size; the output adds the input REBNCONV's.
  RSU-4F:   the same with dilations 1, 2, 4, 8 (decoder 4, 2, 1) in place of pooling (full resolution).
  U²-Net:   stages RSU-7, 6, 5, 4, 4F, 4F with pooling between them, a decoder RSU-4F, 4, 5, 6, 7 on [upsampled
            deeper, skip]; a 3x3 side convolution to one channel on each decoder stage and on the bottom stage,
            upsampled to the input size; a 1x1 convolution fuses the six into the output (sigmoid).
  channels: U²-Net (in, mid, out) per stage: 3-32-64, 64-32-128, 128-64-256, 256-128-512, 512-256-512,
            512-256-512; decoder 1024-256-512, 1024-128-256, 512-64-128, 256-32-64, 128-16-64.
            U²-NetP: every stage mid 16, out 64 (decoder in 128).
  test time (the authors' and rembg's): the picture resized to 320 x 320, divided by its largest value,
            normalised by ImageNet's mean and deviation; the fused output min-max normalised and resized back.
The parameter names are the authors' (stage1.rebnconvin.conv_s1.weight ...), so their files load strictly.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from dynapose4d.core.errors import MissingWeightsError
from dynapose4d.core.images import IMAGENET_MEAN, IMAGENET_STD

INPUT_SIZE = 320  # the side the authors' test code and rembg resize every picture to
MEAN, STD = IMAGENET_MEAN, IMAGENET_STD  # the input's normalisation
WEIGHTS_HINT = ("u2net.pth (176 MB) or u2netp.pth (4.7 MB) from the U-2-Net repository (github.com/xuebinqin/"
                "U-2-Net, saved_models/), set by `--set u2net=PATH`")
# (in, mid, out) of the encoder stages 1-6 and the decoder stages 5d-1d
U2NET_STAGES = ((3, 32, 64), (64, 32, 128), (128, 64, 256), (256, 128, 512), (512, 256, 512), (512, 256, 512))
U2NET_DECODER = ((1024, 256, 512), (1024, 128, 256), (512, 64, 128), (256, 32, 64), (128, 16, 64))
U2NETP_STAGES = ((3, 16, 64),) + ((64, 16, 64),) * 5
U2NETP_DECODER = ((128, 16, 64),) * 5
HEIGHTS = (7, 6, 5, 4, 0, 0)  # RSU height per encoder stage; 0: RSU-4F


class REBNCONV(nn.Module):
    """3x3 convolution (dilation `d`) -> batch norm -> ReLU."""

    def __init__(self, cin: int, cout: int, d: int = 1) -> None:
        super().__init__()
        self.conv_s1 = nn.Conv2d(cin, cout, 3, padding=d, dilation=d)
        self.bn_s1 = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn_s1(self.conv_s1(x)))


def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bilinear resize of `x` [B, C, h, w] to `like`'s spatial size."""
    return F.interpolate(x, size=like.shape[2:], mode="bilinear", align_corners=False)


class RSU(nn.Module):
    """A residual U block of height `height` (2x2 max pooling between levels, dilation 2 at the bottom), or, with
    `height` 0, RSU-4F (dilations 1, 2, 4, 8, no pooling). [B, cin, H, W] -> [B, cout, H, W]."""

    def __init__(self, height: int, cin: int, mid: int, cout: int) -> None:
        super().__init__()
        self.pooled = height > 0
        levels = height if self.pooled else 4
        dil = [1] * (levels - 1) + [2] if self.pooled else [1, 2, 4, 8]
        self.levels = levels
        self.rebnconvin = REBNCONV(cin, cout)
        for i in range(1, levels + 1):  # encoder: rebnconv1 .. rebnconvL
            setattr(self, f"rebnconv{i}", REBNCONV(cout if i == 1 else mid, mid, dil[i - 1]))
        for i in range(levels - 1, 0, -1):  # decoder: rebnconv(L-1)d .. rebnconv1d
            setattr(self, f"rebnconv{i}d", REBNCONV(2 * mid, cout if i == 1 else mid, dil[i - 1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hxin = self.rebnconvin(x)
        skips = []
        h = hxin
        for i in range(1, self.levels):
            h = getattr(self, f"rebnconv{i}")(h)
            skips.append(h)
            if self.pooled and i < self.levels - 1:  # the last two levels share a resolution
                h = F.max_pool2d(h, 2, 2, ceil_mode=True)
        h = getattr(self, f"rebnconv{self.levels}")(h)  # the bottom level (dilated, on the level above's output)
        for i in range(self.levels - 1, 0, -1):
            skip = skips[i - 1]
            if self.pooled and i < self.levels - 1:
                h = _up(h, skip)
            h = getattr(self, f"rebnconv{i}d")(torch.cat([h, skip], 1))
        return h + hxin


class U2Net(nn.Module):
    """U²-Net (`small` False) or U²-NetP (True): a picture [B, 3, H, W], normalised as `prepare` does, -> the
    object's probability [B, 1, H, W] (the fused output, sigmoid)."""

    def __init__(self, small: bool = False) -> None:
        super().__init__()
        stages, decoder = (U2NETP_STAGES, U2NETP_DECODER) if small else (U2NET_STAGES, U2NET_DECODER)
        for i, ((cin, mid, cout), h) in enumerate(zip(stages, HEIGHTS), start=1):
            setattr(self, f"stage{i}", RSU(h, cin, mid, cout))
        for (cin, mid, cout), i, h in zip(decoder, range(5, 0, -1), (0, 4, 5, 6, 7)):
            setattr(self, f"stage{i}d", RSU(h, cin, mid, cout))
        side_in = [decoder[4][2], decoder[3][2], decoder[2][2], decoder[1][2], decoder[0][2], stages[5][2]]
        for i, c in enumerate(side_in, start=1):
            setattr(self, f"side{i}", nn.Conv2d(c, 1, 3, padding=1))
        self.outconv = nn.Conv2d(6, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        enc = []
        h = x
        for i in range(1, 7):
            h = getattr(self, f"stage{i}")(h)
            enc.append(h)
            if i < 6:
                h = F.max_pool2d(h, 2, 2, ceil_mode=True)
        dec = [enc[5]]  # the bottom stage's output feeds side6
        h = enc[5]
        for i in range(5, 0, -1):
            h = getattr(self, f"stage{i}d")(torch.cat([_up(h, enc[i - 1]), enc[i - 1]], 1))
            dec.append(h)
        # dec: [hx6, hx5d, hx4d, hx3d, hx2d, hx1d]; side i reads the decoder output of stage i (side6: hx6)
        sides = [getattr(self, f"side{i}")(dec[6 - i]) for i in range(1, 7)]
        sides = [sides[0]] + [_up(s, sides[0]) for s in sides[1:]]
        return torch.sigmoid(self.outconv(torch.cat(sides, 1)))


def load_u2net(path: str | Path) -> U2Net:
    """The U²-Net (or U²-NetP, told by its weights) of the authors' PyTorch file at `path` (a state dict, loaded
    with weights_only=True and strict key and shape checks), in eval mode. A missing file is a MissingWeightsError,
    a file that is not such weights an InputError-style one-line MissingWeightsError naming it."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise MissingWeightsError(f"U²-Net weights not found at {p}: {WEIGHTS_HINT}")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same one-line message
        raise MissingWeightsError(f"{p}: not a PyTorch weights file ({type(e).__name__})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if isinstance(state, dict):
        state = {str(k).removeprefix("module."): v for k, v in state.items()}  # saved from DataParallel
    if not isinstance(state, dict) or "stage1.rebnconvin.conv_s1.weight" not in state:
        raise MissingWeightsError(f"{p}: not U²-Net weights (no stage1.rebnconvin.conv_s1.weight): {WEIGHTS_HINT}")
    small = int(state["stage1.rebnconvin.conv_s1.weight"].shape[0]) == 64 and \
        int(state["stage1.rebnconv1.conv_s1.weight"].shape[0]) == 16
    model = U2Net(small=small)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise MissingWeightsError(f"{p}: U²-Net weights of another layout ({first[:160]})") from None
    return model.eval()


def prepare(rgb: torch.Tensor) -> torch.Tensor:
    """RGB [H, W, 3] in [0, 1] -> the network's input [1, 3, 320, 320]: resized (bilinear, antialiased), divided
    by its largest value, normalised by ImageNet's mean and deviation (the authors' test-time transform)."""
    x = rgb.detach().float().cpu()[..., :3].permute(2, 0, 1)[None]  # [1, 3, H, W]
    x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=True)
    x = x / x.max().clamp_min(1e-8)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def u2net_alpha(model: nn.Module, rgb: torch.Tensor) -> torch.Tensor:
    """The object's alpha [H, W] in [0, 1] in a picture `rgb` [H, W, 3|4] (its alpha ignored): the network's output
    on `prepare`'s input, min-max normalised, resized back (bilinear) to the picture's size."""
    H, W = rgb.shape[:2]
    out = model(prepare(rgb))  # [1, 1, 320, 320]
    lo, hi = out.min(), out.max()
    out = (out - lo) / (hi - lo).clamp_min(1e-8)
    return F.interpolate(out, size=(H, W), mode="bilinear", align_corners=False)[0, 0].clamp(0, 1)
