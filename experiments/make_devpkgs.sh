#!/usr/bin/env bash
# Pack what experiments/gpu_check.sh needs on a lent GPU machine whose Python image has torch and lightning but
# not the project's other packages: the pure-Python packages below (with their .dist-info) from this project's
# venv into .devpkgs/py.tar.xz, and imageio-ffmpeg's ffmpeg binary into .devpkgs/ffmpeg.xz (~56 MB together, under
# the 64 MiB a device call carries). Keep .devpkgs/ out of git (e.g. in .git/info/exclude) and pass it with
# `carry: [".devpkgs"]`. Run from the repository root after `make setup`.
set -eu
SITE=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
PKGS="gsplat omegaconf diffusers imageio_ffmpeg pygltflib dataclasses_json marshmallow deprecated typing_inspect mypy_extensions"
mkdir -p .devpkgs
names=()
for p in $PKGS; do
  for f in "$SITE/$p" "$SITE/$p.py" "$SITE"/"$p"-*.dist-info; do [ -e "$f" ] && names+=("$(basename "$f")"); done
done
tar cJf .devpkgs/py.tar.xz -C "$SITE" --exclude 'imageio_ffmpeg/binaries/ffmpeg-*' --exclude '__pycache__' "${names[@]}"
xz -9 -c "$SITE"/imageio_ffmpeg/binaries/ffmpeg-linux-x86_64-* > .devpkgs/ffmpeg.xz
ls -la .devpkgs
