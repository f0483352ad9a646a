#!/usr/bin/env bash
# One-shot GPU check for a lent H100/H200 (see README, 'GPU check'):
# build with the machine's torch, run the `cuda` tests and the GPU benchmarks,
# and leave everything under $OUT (results JSON named after the card).
#
#   device run:  UNSAM_DATA=.gpudata bash benchmarks/gpu_check.sh   (timeout ~520 s, carry [".whl", ".gpudata"])
#
# Prepare here, in the repo root (both folders are git-ignored via .git/info/exclude):
#   echo /.whl/ >> .git/info/exclude; echo /.gpudata/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl pycocotools==2.0.11
#   mkdir -p .gpudata/bsds500/images/val && cp $(ls ../shared/data/bsds500/images/val/*.jpg | head -32) .gpudata/bsds500/images/val/
# Each step has its own time limit, and every limit is cut to what is left of
# UNSAM_GPU_BUDGET (default 540 s, so the whole run fits one 10-minute call and
# leaves device time for a rerun): one slow step cannot eat the lease. Every
# log and the results JSON are written to $OUT as the steps finish (7 files:
# the device tool returns at most 8). The steps, most important first: build,
# the `cuda` tests, the presets' labeling speed with dino_vitb8 (random weights,
# 480 px; targets unsam >= 100 images/s, full >= 30, per-stage times beside the
# hardware estimate), the kernel benchmarks, the CLI on the GPU, training steps.
set -uo pipefail
T_START=$(date +%s)
BUDGET=${UNSAM_GPU_BUDGET:-540}
left() { echo $(( BUDGET - ($(date +%s) - T_START) )); }
OUT=${OUT:-/tmp/unsam-gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}   # only what this card needs: faster build
[ -n "${UNSAM_DATA:-}" ] && export UNSAM_DATA=$(realpath "$UNSAM_DATA")
PY=${PYTHON:-python3}
# Wheels carried in .whl/ (e.g. pycocotools) for what the image lacks.
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
card=$($PY -c "import torch,re;print(re.sub('[^a-z0-9]+','-',torch.cuda.get_device_name(0).lower()).strip('-'))")
echo "card: $card  torch: $($PY -c 'import torch;print(torch.__version__)')"
t0=$(date +%s)
if ! UNSAM_CUDA=ON CMAKE_BUILD_PARALLEL_LEVEL=16 timeout 240 $PY -m pip install --no-build-isolation --no-deps -v -e . > "$OUT/build.log" 2>&1; then
  tail -n 60 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
fi
echo "build: $(( $(date +%s) - t0 )) s"; grep -E "unsam: " "$OUT/build.log"
$PY -c "import unsam.kernels as k; assert k.cuda_available(), 'CUDA kernels not available'; print('cuda kernels OK')" || exit 1
PT="$PY -m pytest -p no:cacheprovider -p no:benchmark"
step() {  # step NAME SECONDS ARGS...: one pytest run with its own limit (cut to the budget left) and log
  local name=$1 limit=$2; shift 2
  local l=$(left)
  if [ "$l" -lt 20 ]; then echo "== $name: skipped, ${l} s of the budget left"; return; fi
  [ "$limit" -gt "$l" ] && limit=$l
  local s=$(date +%s)
  timeout "$limit" $PT "$@" 2>&1 | tee "$OUT/$name.log" | grep -vE "^\s*$" | tail -n 40
  local rc=${PIPESTATUS[0]}
  echo "== $name: rc $rc, $(( $(date +%s) - s )) s"
}
export UNSAM_BENCH_OUT="$OUT" UNSAM_BENCH_CARD="$card"
step cuda_tests 90 tests -m cuda -q
step bench_pipeline 200 benchmarks/test_pipeline_bench.py --benchmark -s -q -m cuda
step bench_kernels 80 benchmarks/test_kernels_bench.py --benchmark -s -q -m cuda
# The main job end to end on the GPU with the default for classic (full): no weights needed.
if [ -n "${UNSAM_DATA:-}" ] && [ "$(left)" -gt 60 ]; then
  s=$(date +%s)
  timeout 50 $PY -m unsam.label -i "$UNSAM_DATA/bsds500/images/val" -o /tmp/lab-gpu --backbone classic --batch-size 8 --gpu --quiet \
    >> "$OUT/label.log" 2>&1; echo "== unsam.label --gpu: rc $?, $(( $(date +%s) - s )) s, $(ls /tmp/lab-gpu/*.json 2>/dev/null | wc -l) json"
  # Per-image isolation with --gpu: a planted crash in one image's divide fails that image only (exit 1).
  first=$(ls "$UNSAM_DATA/bsds500/images/val" | head -1); first=${first%.jpg}
  s=$(date +%s)
  UNSAM_INJECT_FAULT="divide:$first:crash" timeout 60 $PY -m unsam.label -i "$UNSAM_DATA/bsds500/images/val" -o /tmp/lab-gpu-iso \
    --backbone classic --batch-size 4 --limit 8 --gpu --quiet >> "$OUT/label.log" 2>&1
  echo "== isolation --gpu: rc $? (1 expected), $(( $(date +%s) - s )) s, failed: $($PY -c "import json; print([f['stage'] + ' ' + f['reason'][:40] for f in json.load(open('/tmp/lab-gpu-iso/summary.json'))['failed']])" 2>&1)"
fi
step bench_train 100 benchmarks/test_train_bench.py --benchmark -s -q -m cuda
echo "total: $(( $(date +%s) - T_START )) s of ${BUDGET} s"
ls -la "$OUT"
