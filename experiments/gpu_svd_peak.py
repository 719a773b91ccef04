"""Peak GPU memory of the driving-video generation alone (SVD img2vid, 14 frames, the default size and steps),
with the full-size random-weight folder of tests/full_size_models.py: `python experiments/gpu_svd_peak.py`."""

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import full_size_models as fsm  # noqa: E402

from dynapose4d.data.scene import load_scene  # noqa: E402
from dynapose4d.priors.svd import SVDConfig, driving_video  # noqa: E402

folder = fsm.ensure("svd-img2vid")
scene = load_scene(sys.argv[1])
for chunk in (0, 7, 2):  # 0 = decode all 14 frames at once (the default)
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    frames = driving_video(scene, Path(f"/tmp/svdrun{chunk}"), SVDConfig(model=str(folder), decode_chunk_size=chunk))
    torch.cuda.synchronize()
    print(f"decode_chunk_size={chunk}: {tuple(frames.shape)} {time.perf_counter() - t0:.1f} s, "
          f"peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
