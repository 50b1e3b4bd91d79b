#!/usr/bin/env bash
# genstudy: the whole study as one recipe, read top to bottom.
#
#   bash run_all.sh --preset smoke              built-in digits on the CPU, minutes
#   DATA=/data/celeba bash run_all.sh --preset full    the study's settings on a GPU
#   bash run_all.sh --preset smoke --only 2     one phase
#
# Every run writes runs/<name>/. Re-running the script skips finished runs and
# resumes unfinished ones (--resume); a run that fails is reported and the study
# goes on with the next one.
set -uo pipefail
cd "$(dirname "$0")"

PRESET=smoke
ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --preset) PRESET="${2:?--preset needs smoke|full}"; shift 2 ;;
    --only) ONLY="${2:?--only needs a phase number}"; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "run_all.sh: unknown argument $1 (use --preset smoke|full, --only PHASE)" >&2; exit 2 ;;
  esac
done

PY="${PYTHON:-python}"
RUNS="${RUNS:-runs}"
mkdir -p "$RUNS"

case "$PRESET" in
  smoke)
    # Built-in digits at 32x32 on the CPU. Small nets that take thousands of
    # steps beat big ones that take hundreds; each run is bounded in minutes.
    DATA="${DATA:-digits}"
    MINUTES="${MINUTES:-4}"
    COMMON=(--data "$DATA" --res 32 --device cpu --epochs 100000 --max-minutes "$MINUTES"
            --sample-every 20 --ckpt-every 20 --fid-every 0 --log-every 50)
    GAN_SIZE=(--ngf 32 --ndf 32)
    ;;
  test)
    # A few steps per run: used by the test suite to walk every phase quickly.
    DATA="${DATA:-digits}"
    COMMON=(--data "$DATA" --res 32 --device cpu --max-steps 3 --batch-size 16
            --fid-features none --log-every 1)
    GAN_SIZE=(--ngf 8 --ndf 8)
    ;;
  full)
    # The study's standard settings: batch 64, fp16 AMP + GradScaler (auto on
    # CUDA), EMA 0.9999, FID every 25 epochs on 5,000 held-out images, 100 epochs.
    : "${DATA:?the full preset needs DATA=/path/to/images (for CelebA, img_align_celeba/)}"
    COMMON=(--data "$DATA" --crop "${CROP:-178}" --res 64 --epochs 100 --batch-size 64
            --fid-every 25 --fid-n 5000 --fid-n-real 5000 --sample-every 1 --ckpt-every 1)
    GAN_SIZE=(--ngf 64 --ndf 64)
    ;;
  *) echo "run_all.sh: unknown preset $PRESET (smoke, full or test)" >&2; exit 2 ;;
esac

# run NAME SCRIPT FLAGS...: skip a finished run, resume an unfinished one.
FAILED=()
run() {
  local name="$1" script="$2"; shift 2
  local out="$RUNS/$name"
  if [ -f "$out/summary.json" ] && grep -q '"complete": true' "$out/summary.json"; then
    echo "== $name: finished, skipped"
    return 0
  fi
  echo "== $name: $PY $script $*"
  if "$PY" "$script" "$@" --out "$out" --resume; then
    rm -f "$out/FAILED"
  else
    echo "== $name: FAILED (exit $?), going on with the next run" >&2
    echo "$script $*" > "$out/FAILED" 2>/dev/null || true
    FAILED+=("$name")
  fi
}
want() { [ -z "$ONLY" ] || [ "$ONLY" = "$1" ]; }

# ---------------------------------------------------------------------------
# Phase 2: GAN evolution. Step 2.1 is DCGAN (Radford et al. 2016), the baseline
# whose failures (mode collapse, a discriminator that wins) motivate the rest.
if want 2; then
  run 2.1_dcgan dcgan.py "${COMMON[@]}" "${GAN_SIZE[@]}"
fi

# ---------------------------------------------------------------------------
echo
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "finished with failed runs: ${FAILED[*]} (see $RUNS/<name>/FAILED)"
else
  echo "all runs finished; outputs in $RUNS/ (samples.png, progress.gif, metrics.jsonl in each run)"
fi
