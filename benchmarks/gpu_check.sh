#!/usr/bin/env bash
# One-shot GPU check for a lent H100/H200 (see README, 'GPU check'):
# build with the machine's torch, run the `cuda` tests and the GPU benchmarks,
# and leave everything under $OUT (results JSON named after the card).
#
#   device run:  bash benchmarks/gpu_check.sh        (timeout ~480 s, carry [".whl"])
#
# The device image lacks pycocotools: first, here, in the repo root:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl pycocotools==2.0.11
set -uo pipefail
OUT=${OUT:-/tmp/unsam-gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}   # only what this card needs: faster build
PY=${PYTHON:-python3}
# Wheels carried in .whl/ (e.g. pycocotools) for what the image lacks.
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
card=$($PY -c "import torch,re;print(re.sub('[^a-z0-9]+','-',torch.cuda.get_device_name(0).lower()).strip('-'))")
echo "card: $card"
t0=$(date +%s)
if ! UNSAM_CUDA=ON $PY -m pip install --no-build-isolation --no-deps -v -e . > "$OUT/build.log" 2>&1; then
  tail -n 60 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
fi
echo "build: $(( $(date +%s) - t0 )) s"; grep -E "unsam: " "$OUT/build.log"
$PY -c "import unsam.kernels as k; assert k.cuda_available(), 'CUDA kernels not available'; print('cuda kernels OK')" || exit 1
$PY -m pytest tests -m cuda -q -p no:cacheprovider 2>&1 | tee "$OUT/cuda_tests.log"
UNSAM_BENCH_OUT="$OUT" UNSAM_BENCH_CARD="$card" \
  $PY -m pytest benchmarks --benchmark -s -q -p no:cacheprovider -m cuda 2>&1 | tee "$OUT/bench.log"
ls -la "$OUT"
