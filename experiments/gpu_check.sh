#!/usr/bin/env bash
# One prepared GPU check (run on a lent CUDA machine from the repository root; results under $OUT):
#   1. the paper's models built at full size with random weights (tests/full_size_models.py),
#   2. configs/default.yaml's whole pipeline on the GPU on a 256-px scene without video or views
#      (Zero-1-to-3 SDS, the SVD driving video at its default size and steps, PoseAnything-S frozen,
#      dynamic SDS + KML), with STATIC_STEPS / DYNAMIC_STEPS steps (default 100 / 25; the preset's own 500 / 500
#      for the per-asset time; 100 dynamic steps took 52 s on one H100) and PRESET (default; low_vram for the chunked decode),
#   3. the dynamic stage's Zero-1-to-3 SDS alone by dynamic.sds_chunk (experiments/sds_chunk_cost.py; SDS_COST=0
#      leaves it out): seconds per step's SDS and peak GPU memory for 1, 2, 4, 7 and all 14 frames per call,
#   4. the gpu-marked tests (GPU_TESTS=0 leaves them out).
# PIPELINE=0 leaves out 2 (one call of the preset's 500 + 500 steps, then another for 3 and 4, keeps each under 10 min).
# Packages the machine's image lacks travel in .devpkgs/ (pure-Python files of this project's venv, and the
# ffmpeg binary of imageio-ffmpeg, xz-compressed), made by experiments/make_devpkgs.sh. W&B is off (not in that
# image). Example: `STATIC_STEPS=500 DYNAMIC_STEPS=500 GPU_TESTS=0 SDS_COST=0 bash experiments/gpu_check.sh`,
# then `PIPELINE=0 bash experiments/gpu_check.sh` (the models, once built, are cached in /tmp/fs on that machine).
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 WANDB_MODE=disabled TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
S=${STATIC_STEPS:-100}; D=${DYNAMIC_STEPS:-25}; PRESET=${PRESET:-default}
mkdir -p /tmp/site && tar xJf .devpkgs/py.tar.xz -C /tmp/site
B=/tmp/site/imageio_ffmpeg/binaries/ffmpeg-linux-x86_64-v9.0.2
xz -dc .devpkgs/ffmpeg.xz > "$B" && chmod +x "$B"
export PYTHONPATH=/tmp/site:$PWD DYNAPOSE4D_FULL_SIZE_CACHE=/tmp/fs
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, lightning, diffusers, gsplat; print(torch.__version__, lightning.__version__, diffusers.__version__, gsplat.__version__)"
t0=$(date +%s)
for m in zero123-xl svd-img2vid poseanything-small; do python3 tests/full_size_models.py $m > /dev/null || exit 1; done
echo "build: $(( $(date +%s) - t0 )) s"
Z=$(python3 -c "import sys; sys.path.insert(0,'tests'); import full_size_models as f; print(f.folder_of('zero123-xl'))")
V=$(python3 -c "import sys; sys.path.insert(0,'tests'); import full_size_models as f; print(f.folder_of('svd-img2vid'))")
P=$(python3 -c "import sys; sys.path.insert(0,'tests'); import full_size_models as f; print(f.folder_of('poseanything-small') / f.POSEANYTHING_FILES['small'])")
if [ "${PIPELINE:-1}" = 1 ]; then  # PIPELINE=0: only the SDS timing and the tests
rm -rf /tmp/scene /tmp/run
python3 -m dynapose4d make-scene humanoid --out /tmp/scene --seed 0 --size 256 > /dev/null
rm -rf /tmp/scene/video /tmp/scene/views /tmp/scene/gt
t0=$(date +%s)
/usr/bin/time -v -o "$OUT/time.txt" python3 -m dynapose4d run /tmp/scene --out /tmp/run --config "$PRESET" \
  --set zero123.path="$Z" dynamic.svd.model="$V" cape.checkpoint="$P" wandb.enabled=false \
  static.steps=$S dynamic.steps=$D > "$OUT/pipeline.log" 2>&1
echo "pipeline: rc $? $(( $(date +%s) - t0 )) s ($PRESET, static $S steps, dynamic $D steps)"
python3 - "$OUT" <<'PY'
import json, sys
from pathlib import Path
run, out = Path("/tmp/run"), Path(sys.argv[1])
m = json.loads((run / "manifest.json").read_text())
rep = {}
for name, rec in m["stages"].items():
    s = run / name / "summary.json"
    rep[name] = {"status": rec.get("status"), "seconds": rec.get("seconds"),
                 "summary": json.loads(s.read_text()) if s.is_file() else None, "error": rec.get("error")}
(out / "report.json").write_text(json.dumps(rep, indent=1, default=str))
for k, v in rep.items():
    summ = v["summary"] or {}
    print(k, v["status"], v["seconds"], "s", {a: b for a, b in summ.items() if "time" in a or "cuda" in a or "seconds" in a})
PY
grep -E "Maximum resident|Elapsed" "$OUT/time.txt"
fi
[ "${SDS_COST:-1}" = 0 ] || timeout 200 python3 experiments/sds_chunk_cost.py cuda 1 2 4 7 0 2>&1 | grep sds_chunk
[ "${GPU_TESTS:-1}" = 0 ] || timeout 240 python3 -m pytest -q -m gpu -p no:cacheprovider -x tests 2>&1 | tail -15
