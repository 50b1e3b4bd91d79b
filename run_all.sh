#!/usr/bin/env bash
# genstudy: the whole study as one recipe, read top to bottom.
#
#   bash run_all.sh --preset smoke              built-in data on the CPU, about 35 minutes
#   DATA=/data/celeba bash run_all.sh --preset full    the study's settings on a GPU
#   bash run_all.sh --preset smoke --only 2     one phase (then the report)
#   NPROC=8 DATA=/data/celeba bash run_all.sh --preset full   every run on 8 GPUs (torchrun, DDP)
#   SEEDS=3 bash run_all.sh --preset smoke --only 4          each step with seeds 0, 1, 2
#   bash run_all.sh --preset smoke --dry-run    print every command, phase by phase; run nothing
#
# Every run writes runs/<name>/, and the study ends with runs/REPORT.md (report.py).
# Re-running the script skips finished runs and resumes unfinished ones (--resume);
# a run that fails is reported and the study goes on with the next one.
set -uo pipefail
cd "$(dirname "$0")"

PRESET=smoke
ONLY=""
DRY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --preset) PRESET="${2:?--preset needs smoke|full}"; shift 2 ;;
    --only) ONLY="${2:?--only needs a phase number}"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "run_all.sh: unknown argument $1 (use --preset smoke|full, --only PHASE, --dry-run)" >&2; exit 2 ;;
  esac
done

PY="${PYTHON:-python}"
RUNS="${RUNS:-runs}"
# NPROC > 1: each training run is launched by torchrun, one process a GPU (or CPU slot), with
# --batch-size still the global batch. One machine; for several, launch the scripts with
# torchrun's rendezvous flags yourself (README).
NPROC="${NPROC:-1}"
LAUNCH=("$PY")
if [ "$NPROC" -gt 1 ]; then
  LAUNCH=("$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC")
fi
[ -n "$DRY" ] || mkdir -p "$RUNS"

case "$PRESET" in
  smoke)
    # Every script's own CPU preset (--preset cpu: the built-in digits at 16 px, whose source is
    # 8x8, and small networks), each run bounded in minutes: 0.8 per step, 1.2 for the phase-5
    # finalists, a quarter for phase 1's faces (all eight phases fit in about 35 minutes on two CPU
    # cores). Small nets taking thousands of steps beat big ones taking hundreds. FID(digits)
    # from 500 samples against the 299 held-out digits.
    DATA="${DATA:-digits}"
    SEEDS="${SEEDS:-1}"
    MINUTES="${MINUTES:-0.8}"
    RES=32  # the CPU preset's side: 16 for the built-in grey sets (8x8 digits, 25x25 faces), else 32
    case "$DATA" in digits|mnist|lfw) RES=16 ;; esac
    COMMON=(--preset cpu --data "$DATA" --device cpu --max-minutes "$MINUTES" --fid-n 500 --fid-features digits)
    FINAL=(--max-minutes "${FINAL_MINUTES:-1.2}")
    GAN=(--fid-every 10 --sample-every 5 --ckpt-every 20)
    SAGAN=()  # the preset's attention at 8x8: the depth of the study's 16x16 at 64, relative to the image
    # 2.4 asks "does it hold at a higher resolution?": twice the side, as 64 -> 128.
    GAN_HIGH=(--res 32 --ngf 16 --ndf 16 --attn-res 8)
    VAE=(--fid-every 5 --sample-every 2 --ckpt-every 10)
    ADV_START=300
    # Phase 1 on the 100 built-in LFW faces, upscaled to 128 so MTCNN can find them.
    FACES="$RUNS/data/lfw_faces"
    PIPE=(--ngf 16 --ndf 16 --max-minutes "${MINUTES_PIPE:-0.25}" --fid-features none --fid-every 0
          --sample-every 50 --ckpt-every 50)
    P1_SAMPLES=200  # samples a run for phase 1's judge (and reference faces: all 100 here)
    # DDIM with 10 steps: each evaluation samples 500 images, and sampling is most of a
    # DDPM run's evaluation time on a CPU.
    DDPM=(--sample-steps 10 --fid-every 5 --sample-every 1 --ckpt-every 5)
    DDPM_BASE=()
    DDPM_WIDE=(--base-ch 48 --attn-res 4,8)
    # Phase 6 on the built-in shapes at 32 px (the CPU preset's size for them), 30 seconds a
    # family (DDPM 45); evaluated once at the end: FID(shapes) of 200 samples, and the
    # accuracy on both condition lists.
    COND=(--preset cpu --data shapes --device cpu --cond --max-minutes "${COND_MINUTES:-0.5}" --fid-n 200
          --fid-features shapes --fid-every 0 --sample-every 1 --ckpt-every 5)
    COND_GAN=()
    COND_VAE=(--beta 1e-3)
    COND_DDPM=(--max-minutes "${COND_DDPM_MINUTES:-0.75}" --sample-steps 10)
    # Phase 7 on the built-in pair at 32 px (cyclegan.py's CPU preset), 24 seconds a run,
    # evaluated once at the end on 300 held-out images a direction.
    TRANS=(--preset cpu --device cpu --max-minutes "${TRANS_MINUTES:-0.4}" --fid-n 300 --fid-every 0
           --sample-every 1 --ckpt-every 5)
    # Phase 8: 1,000 steps a claim's run (about 15 seconds of DCGAN on digits). Steps, not the clock:
    # both runs of a pair train as long whatever their speed or the machine's load (on a clock budget a
    # busy CPU flipped a verdict). DCGAN's iteration claim at the report's own 200 vs 6,400, CycleGAN's
    # scaled down to 50 vs 500 for 1k vs 10k (5 steps a second); lr decay per step, mild vs steep.
    CLAIMS=(--max-steps "${CLAIM_STEPS:-1000}" --max-minutes 600 --fid-every 0)
    ITERS=(200 6400) CYC_ITERS=(50 500) DECAY=(0.9999 0.999)
    ;;
  test)
    # A few steps per run: used by the test suite to walk every phase quickly.
    DATA="${DATA:-digits}"
    SEEDS="${SEEDS:-1}"
    RES=32
    COMMON=(--preset study --data "$DATA" --device cpu --max-steps 3 --batch-size 16 --aug none
            --fid-features none --log-every 1)
    FINAL=(--max-steps 6)
    GAN=(--res 32 --ngf 8 --ndf 8)
    SAGAN=(--attn-res 16)
    GAN_HIGH=(--res 64 --ngf 4 --ndf 4 --attn-res 16)  # 16 alone: phase 5 retrains it at 32
    VAE=(--res 32 --width 8 --latent 16 --ndf 8)
    ADV_START=1
    FACES="$RUNS/data/lfw_faces"
    PIPE=(--ngf 4 --ndf 4)
    P1_SAMPLES=4
    DDPM=(--res 16 --ch-mult 1,2 --num-res-blocks 1 --dropout 0 --T 50 --sample-steps 5)
    DDPM_BASE=(--base-ch 8 --attn-res 8)
    DDPM_WIDE=(--base-ch 12 --attn-res 8)
    COND=(--preset study --data shapes --res 32 --cond --device cpu --max-steps 3 --batch-size 16 --aug none
          --fid-features none --log-every 1)
    COND_GAN=(--ngf 8 --ndf 8)
    COND_VAE=(--width 8 --latent 16 --beta 1e-3)
    COND_DDPM=(--res 16 --ch-mult 1,2 --num-res-blocks 1 --dropout 0 --T 50 --sample-steps 5 --base-ch 8
               --attn-res 8)
    TRANS=(--preset study --device cpu --res 16 --ngf 4 --ndf 4 --max-steps 3 --batch-size 4 --aug none
           --fid-features none --log-every 1)
    CLAIMS=()
    ITERS=(2 4) CYC_ITERS=(2 4) DECAY=(0.99 0.9)
    ;;
  full)
    # Every script's study preset (--preset study: batch 64, fp16 AMP + GradScaler on CUDA,
    # EMA 0.9999, FID every 25 epochs on 5,000 held-out images, 100 epochs) at 64 px.
    : "${DATA:?the full preset needs DATA=/path/to/images (for CelebA, img_align_celeba/)}"
    SEEDS="${SEEDS:-3}"  # every comparison with error bars: the spread over seeds
    RES=64
    COMMON=(--preset study --data "$DATA" --crop "${CROP:-178}" --res 64)
    FINAL=(--epochs 200)
    GAN=()
    SAGAN=()
    GAN_HIGH=(--res 128 --attn-res 16,32)
    VAE=(--width 64)
    ADV_START=5000
    FACES="$DATA"
    PIPE=()
    P1_SAMPLES=5000
    DDPM=()
    DDPM_BASE=()
    DDPM_WIDE=(--base-ch 192 --attn-res 8,16,32)
    COND=(--preset study --data shapes --res 64 --cond)
    COND_GAN=()
    COND_VAE=(--width 64 --beta 1e-3)
    COND_DDPM=()
    # The built-in pair's sources are 8x8 and 28x28: 32 px; no flips (a mirrored 3 is no 3).
    TRANS=(--preset study --res 32 --aug none)
    CLAIMS=()
    # The reports' own counts; lr decay per step over ~300k steps (100 epochs of CelebA): mild vs steep.
    ITERS=(200 6400) CYC_ITERS=(1000 10000) DECAY=(0.99999 0.9999)
    ;;
  *) echo "run_all.sh: unknown preset $PRESET (smoke, full or test)" >&2; exit 2 ;;
esac

# once FLAG...: the flags with each named once, in the order first named, the last value given winning (a
# preset's setting, then a step's own), into ONCE: a printed command is exactly the run. A flag followed
# by a word that is not a flag takes it as its value; one followed by a flag or by nothing is a switch.
once() {
  local -A value=() switch=()
  local names=() name
  while [ $# -gt 0 ]; do
    name="$1"; shift
    [[ -v "value[$name]" ]] || names+=("$name")
    if [ $# -gt 0 ] && [[ "$1" != --* ]]; then value[$name]="$1"; unset "switch[$name]"; shift
    else value[$name]=""; switch[$name]=1; fi
  done
  ONCE=()
  for name in "${names[@]}"; do
    ONCE+=("$name"); [[ -v "switch[$name]" ]] || ONCE+=("${value[$name]}")
  done
}
# words WORD...: the words as a shell reads them back, quoted only where they need it.
words() {
  local word out=()
  for word in "$@"; do
    if [[ "$word" =~ ^[][A-Za-z0-9_./,:=+-]+$ ]]; then out+=("$word"); else out+=("$(printf '%q' "$word")"); fi
  done
  echo "${out[*]}"
}
# say_or_do CMD...: a helper step (data, alignment, a decision, the report) run, or with --dry-run printed.
say_or_do() {
  if [ -n "$DRY" ]; then echo "== $(words "$@")"; else "$@"; fi
}

# run NAME SCRIPT FLAGS...: skip a finished run, resume an unfinished one; only the phases asked
# for run, but every step's command is kept in $RUNS/.commands/NAME, a NUL-ended word each
# (phase 5 retrains a pick with it). SEEDS=K > 1 runs the step K times, --seed 0..K-1, into
# $RUNS/NAME/seed_N/ (each skipped or resumed on its own). A failed run leaves FAILED (exit
# code and last error line) for the report; its output also goes to stderr.log. --dry-run prints
# the command instead.
FAILED=()
run() {
  local name="$1" script="$2"; shift 2
  once "$@"
  set -- "${ONCE[@]}"
  if [ -z "$DRY" ]; then
    mkdir -p "$RUNS/.commands" && printf '%s\0' "$script" "$@" > "$RUNS/.commands/$name"
  fi
  want "$PHASE" || return 0
  if [ "$SEEDS" -eq 1 ]; then
    run_one "$name" "$RUNS/$name" "$script" "$@"
  else
    for ((seed = 0; seed < SEEDS; seed++)); do
      run_one "$name/seed_$seed" "$RUNS/$name/seed_$seed" "$script" "$@" --seed "$seed"
    done
  fi
}
run_one() {
  local name="$1" out="$2" script="$3"; shift 3
  if [ -n "$DRY" ]; then
    echo "== $name: $(words "${LAUNCH[@]}" "$script" "$@" --out "$out" --resume)"
    return 0
  fi
  if [ -f "$out/summary.json" ] && grep -q '"complete": true' "$out/summary.json"; then
    echo "== $name: finished, skipped"
    return 0
  fi
  echo "== $name: ${LAUNCH[*]} $script $*"
  mkdir -p "$out"
  { "${LAUNCH[@]}" "$script" "$@" --out "$out" --resume 2>&1 1>&3 | tee "$out/stderr.log" >&2; } 3>&1
  local status=${PIPESTATUS[0]}
  if [ "$status" -eq 0 ]; then
    rm -f "$out/FAILED"
  else
    echo "== $name: FAILED (exit $status), going on with the next run" >&2
    # The last line of stderr, minus any progress bar the error was printed behind.
    { echo "exit $status ($script)"
      tr '\r' '\n' < "$out/stderr.log" | sed -E 's/^.*(it\/s|s\/it)[^]]*\]//' | grep . | tail -n 1
    } > "$out/FAILED"
    FAILED+=("$name")
  fi
}
want() { [ -z "$ONLY" ] || [ "$ONLY" = "$1" ]; }

# ---------------------------------------------------------------------------
# Phase 1: the data pipeline every later step uses, each choice a pair of DCGAN runs (64 px unless said):
#   1A resolution: 64 vs 128 (raw images)
#   1B alignment:  raw vs MTCNN-aligned faces (align.py: eyes, nose and mouth
#                  corners moved onto fixed positions by a similarity transform)
#   1C augmentation: flip vs jitter (the plan's: flip + rotation +-5 deg + colour jitter), aligned
#   1D data: aligned only vs aligned + raw mixed
# The winners go to $RUNS/phase1.json and carry forward (below).
PHASE=1
ALIGNED="$RUNS/data/aligned_128"
if want 1; then
  if [ "$PRESET" != full ] && [ ! -f "$FACES/labels.csv" ]; then
    # The 100 built-in LFW faces (25x25) upscaled to 128 px, as files: MTCNN needs faces that size.
    say_or_do "$PY" data.py lfw "$FACES" --res 128 || FAILED+=("1_faces")
  fi
  [ -n "$DRY" ] || echo "== aligning $FACES -> $ALIGNED (resumable; done files are skipped)"
  if say_or_do "$PY" align.py "$FACES" "$ALIGNED" --size 128; then
    P1=("${COMMON[@]}" "${GAN[@]}" "${PIPE[@]}")
    run 1A_raw_64         dcgan.py "${P1[@]}" --data "$FACES" --res 64 --aug flip
    run 1A_raw_128        dcgan.py "${P1[@]}" --data "$FACES" --res 128 --aug flip
    run 1B_aligned_64     dcgan.py "${P1[@]}" --data "$ALIGNED" --res 64 --aug flip
    run 1C_aligned_jitter dcgan.py "${P1[@]}" --data "$ALIGNED" --res 64 --aug jitter
    run 1D_aligned_mix    dcgan.py "${P1[@]}" --data "$ALIGNED,$FACES" --res 64 --aug flip
    # The judge, offline too: each run's samples against one common reference, the raw faces' held-out
    # sixth: the share in which MTCNN finds a face, FID(mtcnn), and Inception FID where its weights exist
    # (which then decides).
    judged=()
    for name in 1A_raw_64 1A_raw_128 1B_aligned_64 1C_aligned_jitter 1D_aligned_mix; do
      for ((seed = 0; seed < SEEDS; seed++)); do
        out="$RUNS/$name" && [ "$SEEDS" -eq 1 ] || out="$RUNS/$name/seed_$seed"
        say_or_do "$PY" dcgan.py --out "$out" --generate "$P1_SAMPLES" && judged+=("$out")
      done
    done
    say_or_do "$PY" evaluate.py --faces "$FACES" "${judged[@]}" --n-real "$P1_SAMPLES" || FAILED+=("1_judge")
    say_or_do "$PY" report.py "$RUNS" --phase1 || FAILED+=("1_decision")  # the winners, into phase1.json
  else
    echo "== align.py failed; phase 1 runs skipped" >&2
    FAILED+=("1_align")
  fi
fi

# The decision carries forward ("best pipeline carries forward to all phases"): report.py reads
# phase1.json into resolution, alignment, mixing and augmentation (64, raw, unmixed, flip where a
# question has no winner). They apply where phases 2-5 train on the faces phase 1 studied (the full
# preset): the data and --res for every run, the augmentation for the GAN steps (the plan: 1C is only
# indicative, so it is re-checked in phase 2 by one more DCGAN run; the VAE and the DDPM keep flips).
# The smoke preset's phases 2-5 train on digits, where alignment means nothing and a mirrored digit
# is another digit: the preset's own pipeline stays, and the line below says so.
read -r P1_RES P1_ALIGNED P1_MIX P1_AUG P1_FROM < <("$PY" report.py "$RUNS" --carry)
[ -n "${P1_AUG:-}" ] || { echo "run_all.sh: report.py --carry failed" >&2; exit 2; }
PIPELINE=() GAN_AUG=() OTHER_AUG=()
if [ "$FACES" = "$DATA" ]; then
  SOURCE="$DATA"
  [ "$P1_ALIGNED" = 1 ] && SOURCE="$ALIGNED"
  [ "$P1_MIX" = 1 ] && SOURCE="$ALIGNED,$DATA"
  RES="$P1_RES"
  PIPELINE=(--data "$SOURCE" --res "$RES") GAN_AUG=(--aug "$P1_AUG") OTHER_AUG=(--aug flip)
  echo "== phases 2-5 from $P1_FROM: ${PIPELINE[*]}; GANs --aug $P1_AUG, VAE and DDPM --aug flip"
else
  echo "== phase 1 ($P1_FROM): res $P1_RES, aligned $P1_ALIGNED, mixed $P1_MIX, --aug $P1_AUG; for faces:" \
    "phases 2-5 train on $DATA with the preset's own pipeline"
fi

# ---------------------------------------------------------------------------
# Phase 2: GAN evolution. Each step fixes the failure of the one before:
#   2.1 DCGAN (Radford et al. 2016): the baseline. Its Jensen-Shannon loss lets the
#       discriminator win; then G's gradients vanish or point at one mode (collapse).
#   2.2 WGAN-GP (Gulrajani et al. 2017): a critic estimating the Wasserstein distance,
#       kept 1-Lipschitz by a gradient penalty, gives useful gradients throughout.
#       Stable, but local texture artifacts and weak global structure remain.
#   2.3 + spectral-norm critic, GroupNorm generator, self-attention at 16x16 (Zhang
#       et al. 2019): far-apart parts of an image can agree.
#   2.4 the same at a higher resolution (128 in the full study): does it hold?
# The full preset also runs 2.3 with SAGAN's hinge loss: spectral norm and a
# gradient penalty pull against each other, and the report shows both.
# (Phases 2-4 list their runs even when --only skips them: phase 5 needs their flags.)
PHASE=2
P2=("${COMMON[@]}" "${GAN[@]}" "${PIPELINE[@]}" "${GAN_AUG[@]}")
run 2.1_dcgan      dcgan.py   "${P2[@]}"
if [ ${#GAN_AUG[@]} -gt 0 ]; then  # 1C re-checked on the GAN: the augmentation phase 1 did not pick
  OTHER=jitter && [ "$P1_AUG" = jitter ] && OTHER=flip
  run "2.1_dcgan_aug_$OTHER" dcgan.py "${P2[@]}" --aug "$OTHER"
fi
run 2.2_wgan_gp    wgan_gp.py "${P2[@]}"
run 2.3_sagan      sagan.py   "${P2[@]}" "${SAGAN[@]}"
run 2.4_sagan_high sagan.py   "${P2[@]}" "${GAN_HIGH[@]}"
GAN_FINALISTS=(2.1_dcgan 2.2_wgan_gp 2.3_sagan 2.4_sagan_high)
if [ "$PRESET" = full ]; then
  run 2.3h_sagan_hinge sagan.py "${P2[@]}" "${SAGAN[@]}" --loss hinge --n-critic 1 --lr-g 1e-4 --lr-d 4e-4
  GAN_FINALISTS+=(2.3h_sagan_hinge)
fi

# ---------------------------------------------------------------------------
# Phase 3: VAE evolution (vae.py), the likelihood family:
#   3.1 MSE + KL: per-pixel MSE is minimised by the mean of the plausible images,
#       so reconstructions and samples are blurry.
#   3.2 + VGG-16 feature matching (relu1_2, relu2_2, relu3_3): edges and texture count.
#   3.3 + a PatchGAN on the reconstructions: blur is punished patch by patch.
#       L = L_mse + 0.1 L_vgg + 0.1 L_adv + 1e-4 L_kl.
# VGG-16 needs torchvision's ImageNet weights; without them 3.2 is skipped (and
# 3.3 runs without its perceptual term), saying so.
PHASE=3
have_vgg() {
  "$PY" -c "import common, vae; common.find_pretrained(vae.VGG_NAME, vae.VGG_URL, None, 'VGG_WEIGHTS', download=False)" \
    >/dev/null 2>&1
}
P3=("${COMMON[@]}" "${VAE[@]}" "${PIPELINE[@]}" "${OTHER_AUG[@]}")
run 3.1_vae_mse vae.py "${P3[@]}" --beta 1.0
PERCEPTUAL=(--perceptual 0.1)
if [ "$PRESET" = full ] || have_vgg; then
  run 3.2_vae_perceptual vae.py "${P3[@]}" --beta 1e-4 "${PERCEPTUAL[@]}"
else
  PERCEPTUAL=()
  msg="VGG-16 weights (vgg16-397923af.pth) not found in \$VGG_WEIGHTS or the torch hub cache"
  if want 3; then
    echo "== 3.2_vae_perceptual: skipped: $msg; 3.3 runs without its perceptual term"
    [ -n "$DRY" ] || { mkdir -p "$RUNS/3.2_vae_perceptual" && echo "$msg" > "$RUNS/3.2_vae_perceptual/SKIPPED"; }
  fi
fi
run 3.3_vae_patchgan vae.py "${P3[@]}" --beta 1e-4 "${PERCEPTUAL[@]}" --adv 0.1 \
  --adv-start "$ADV_START"

# ---------------------------------------------------------------------------
# Phase 4: DDPM evolution (ddpm.py). Each step changes one thing:
#   4.1 linear schedule, eps-prediction: the DDPM baseline (Ho et al. 2020).
#   4.2 cosine schedule: linear destroys the signal too early; the last ~20% of its
#       steps are nearly pure noise, wasted capacity (Nichol & Dhariwal 2021).
#   4.3 v-prediction: eps-prediction's x0 = (x_t - sqrt(1-abar) eps) / sqrt(abar)
#       amplifies errors at high noise; v stays well scaled (Salimans & Ho 2022).
#   4.4 a wider U-Net with attention at more resolutions: is capacity the limit now?
PHASE=4
P4=("${COMMON[@]}" "${DDPM[@]}" "${PIPELINE[@]}" "${OTHER_AUG[@]}")
run 4.1_ddpm_linear_eps ddpm.py "${P4[@]}" "${DDPM_BASE[@]}" --schedule linear --pred eps
run 4.2_ddpm_cosine_eps ddpm.py "${P4[@]}" "${DDPM_BASE[@]}" --schedule cosine --pred eps
run 4.3_ddpm_cosine_v   ddpm.py "${P4[@]}" "${DDPM_BASE[@]}" --schedule cosine --pred v
run 4.4_ddpm_wide       ddpm.py "${P4[@]}" "${DDPM_WIDE[@]}" --schedule cosine --pred v

# ---------------------------------------------------------------------------
# Phase 5: the cross-family comparison. The best run of each family (lowest mean FID;
# without FID, the first finished one; 2.4 is a GAN candidate, as the plan says) is trained
# again, longer (FINAL: 200 epochs in the full study) under identical conditions: one
# resolution ($RES, phase 1's where it carries), the same data pipeline, batch, budget and
# evaluation. The picks are made once and kept in $RUNS/phase5.json (delete it to pick again).
PHASE=5
if want 5; then
  for family in gan vae ddpm; do
    case $family in
      gan) candidates=("${GAN_FINALISTS[@]}") ;;
      vae) candidates=(3.1_vae_mse 3.2_vae_perceptual 3.3_vae_patchgan) ;;
      ddpm) candidates=(4.1_ddpm_linear_eps 4.2_ddpm_cosine_eps 4.3_ddpm_cosine_v 4.4_ddpm_wide) ;;
    esac
    if [ -n "$DRY" ]; then
      echo "== 5_$family: the best of ${candidates[*]} (picked after phases 2-4), its command + ${FINAL[*]} --res $RES"
    elif best=$("$PY" report.py "$RUNS" --pick "$family" "${candidates[@]}"); then
      mapfile -d '' step < "$RUNS/.commands/$best"  # its script and flags, as phase 2-4 ran it
      run "5_$family" "${step[@]}" "${FINAL[@]}" --res "$RES"
    else
      echo "== 5_$family: no finished $family run to retrain" >&2
      FAILED+=("5_$family")
    fi
  done
fi

# ---------------------------------------------------------------------------
# Phase 6: conditional generation. Every family on the built-in `shapes` (1-3 objects from
# 8 colours x 3 shapes: 24 labels, multi-hot; the iCLEVR task in 2-D), each in its standard
# conditional form, scored by the shapes classifier's accuracy on two fixed lists of 32
# conditions: `test` (drawn as the training data) and `new_test` (combinations never trained on).
#   6.1 DCGAN + projection discriminator (Miyato & Koyama 2018)
#   6.2 AC-GAN (Odena et al. 2017) on the WGAN-GP critic: a class head beside the score
#   6.3 SAGAN: projection critic + class-conditional GroupNorm in the generator
#   6.4 CVAE (Sohn et al. 2015): the label into encoder and decoder
#   6.5 DDPM with classifier-free guidance (Ho & Salimans 2022), scored at S = 1, 0, 2, 4; with
#       min-SNR-5 loss weights, AdaGN conditioning and stochastic DDIM (eta 1): on shapes in 10
#       CPU-minutes they raised the accuracy at S = 2 from 0.36 to 0.75 and halved the grain
#       (docs/RESULTS.md)
PHASE=6
run 6.1_dcgan_proj  dcgan.py   "${COND[@]}" "${COND_GAN[@]}"
run 6.2_acgan       wgan_gp.py "${COND[@]}" "${COND_GAN[@]}"
run 6.3_sagan_cond  sagan.py   "${COND[@]}" "${COND_GAN[@]}"
run 6.4_cvae        vae.py     "${COND[@]}" "${COND_VAE[@]}"
run 6.5_ddpm_cfg    ddpm.py    "${COND[@]}" "${COND_DDPM[@]}" --schedule cosine --pred v --guidance 1,0,2,4 \
                    --min-snr 5 --scale-shift --eta 1

# ---------------------------------------------------------------------------
# Phase 7: unpaired image-to-image translation (cyclegan.py) between the built-in pair,
# scikit-learn's 8x8 digit scans (A) and 5,000 MNIST digits (B): labelled on both sides, so
# whether a translated 3 is still a 3 is measured (the target domain's classifier).
#   7.1 CycleGAN (Zhu et al. 2017): PatchGAN discriminators, cycle loss lambda = 10
#   7.2 without the cycle loss: only "look like B" is asked; does x's structure survive?
#   7.3 a DCGAN-style whole-image discriminator instead of the PatchGAN
#   7.4 both changes
#   7.5 7.1 + CyCADA's semantic-consistency term: each source domain's own classifier reads
#       the translation (only source labels train it; the target's classifier judges)
PHASE=7
run 7.1_cyclegan      cyclegan.py "${TRANS[@]}" --disc patch
run 7.2_no_cycle      cyclegan.py "${TRANS[@]}" --disc patch --lambda-cycle 0
run 7.3_dc_disc       cyclegan.py "${TRANS[@]}" --disc dc
run 7.4_dc_no_cycle   cyclegan.py "${TRANS[@]}" --disc dc --lambda-cycle 0
run 7.5_semantic      cyclegan.py "${TRANS[@]}" --disc patch --lambda-semantic 1

# ---------------------------------------------------------------------------
# Phase 8: the source reports' own claims, each a run or a pair of runs here (DCGAN's phase-2 settings at
# phase 8's budget; 8.0, the plain DCGAN, is the baseline of beta1 0.5, no weight decay and basic
# augmentation; phase 7's 7.1 and 7.3 are the two CycleGAN discriminators). REPORT.md's claims table gives each a verdict by the noise
# rule, and says how many seeds would resolve what stays within noise.
#   CSP-up on CelebA-128: lr pairs (equal 1e-4 does not converge; G 2e-4 / D 2e-5 converges and is
#     best; G 2e-4 / D 2e-3 nearly converges but repeats faces; both 1e-5 do not converge), and
#     "Tanh + BatchNorm in CSP improves convergence"
#   DCGAN on cats: beta1 0.7 worse than 0.5; weight decay 1e-6 worse than none; a steeper lr decay
#     worse (FID and SSIM to the nearest real image, the report's pair)
#   the course report: basic vs deluxe augmentation with and without DiffAugment; 200 vs 6,400
#     iterations; CycleGAN at 1k vs 10k iterations (and patch vs DC discriminator: phase 7)
PHASE=8
P8=("${COMMON[@]}" "${GAN[@]}" "${CLAIMS[@]}")
LONG=(--max-minutes 600)  # CycleGAN's iteration claim stops at its step counts, not phase 7's clock
run 8.0_dcgan            dcgan.py "${P8[@]}"
for pair in "1e-4 1e-4" "2e-4 2e-5" "2e-4 2e-3" "1e-5 1e-5"; do
  read -r lr_g lr_d <<< "$pair"
  run "8.1_csp_lr_${lr_g}_${lr_d}" dcgan.py "${P8[@]}" --g-arch csp --lr-g "$lr_g" --lr-d "$lr_d"
done
run 8.2_csp_tanh_bn      dcgan.py "${P8[@]}" --g-arch csp --lr-g 2e-4 --lr-d 2e-5 --csp-act tanh --csp-bn
run 8.3_beta1_0.7        dcgan.py "${P8[@]}" --beta1 0.7
run 8.4_weight_decay     dcgan.py "${P8[@]}" --weight-decay 1e-6
run 8.5_lr_decay         dcgan.py "${P8[@]}" --lr-decay "${DECAY[0]}"
run 8.5_lr_decay_steep   dcgan.py "${P8[@]}" --lr-decay "${DECAY[1]}"
run 8.6_basic_diffaug    dcgan.py "${P8[@]}" --aug none --diffaug color,translation,cutout
run 8.6_deluxe           dcgan.py "${P8[@]}" --aug deluxe
run 8.6_deluxe_diffaug   dcgan.py "${P8[@]}" --aug deluxe --diffaug color,translation,cutout
run 8.7_iters_short      dcgan.py "${P8[@]}" --max-steps "${ITERS[0]}"
run 8.7_iters_long       dcgan.py "${P8[@]}" --max-steps "${ITERS[1]}"
run 8.8_cyclegan_short   cyclegan.py "${TRANS[@]}" "${LONG[@]}" --disc patch --max-steps "${CYC_ITERS[0]}"
run 8.8_cyclegan_long    cyclegan.py "${TRANS[@]}" "${LONG[@]}" --disc patch --max-steps "${CYC_ITERS[1]}"

say_or_do "$PY" report.py "$RUNS" || FAILED+=("report")
echo
if [ -n "$DRY" ]; then
  echo "dry run: nothing was run"
elif [ ${#FAILED[@]} -gt 0 ]; then
  echo "finished with failed runs: ${FAILED[*]} (see $RUNS/<name>/FAILED); report: $RUNS/REPORT.md"
  exit 1
else
  echo "all runs finished; the report is $RUNS/REPORT.md"
fi
