#!/usr/bin/env bash
# Run here, before a lent GPU's first call: fills .gpu/ (git-ignored) with what that machine lacks.
# Its image has Python 3.12, torch, tensorboard and torchmetrics but no Avalanche and no network, so:
#   .gpu/whl/    wheels of avalanche-lib and of the packages it imports when imported (dill, gdown and
#                bs4, GPUtil, pytorchcv, qpsolvers), the versions this checkout's environment holds;
#   .gpu/stubs/  an empty `wandb` module: Avalanche imports wandb when imported, no run here logs to it;
#   .gpu/data/   the CIFAR-10 JPEG archive (19 MB), as CIFAR10-JPEG/cifar10-jpeg.tar.gz.
# Then: the device tool's run with carry [".gpu"] and the command `bash benchmarks/gpu/der_protocol.sh`.
# Usage: bash benchmarks/gpu/prepare.sh [DATASETS_DIR]   (default ../shared/datasets)
set -euo pipefail
cd "$(dirname "$0")/../.."
datasets="${1:-../shared/datasets}"
archive="$datasets/CIFAR10-JPEG/cifar10-jpeg.tar.gz"
[ -f "$archive" ] || { echo "prepare: no $archive" >&2; exit 1; }
python=".venv/bin/python"
[ -x "$python" ] || python=python3
version() { "$python" -c "import importlib.metadata as m; print(m.version('$1'))"; }

rm -rf .gpu
mkdir -p .gpu/whl .gpu/stubs/wandb .gpu/data/CIFAR10-JPEG
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do platforms+=(--platform "$p"); done
pure=()
for name in avalanche-lib dill gdown beautifulsoup4 soupsieve pytorchcv qpsolvers; do
  pure+=("$name==$(version "$name")")
done
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d .gpu/whl "${pure[@]}"
"$python" -m pip wheel -q --no-deps -w .gpu/whl "GPUtil==$(version GPUtil)"   # published as a source archive only
: > .gpu/stubs/wandb/__init__.py
cp "$archive" .gpu/data/CIFAR10-JPEG/
grep -qxF '/.gpu/' .gitignore || echo "prepare: add /.gpu/ to .gitignore" >&2
du -sh .gpu
