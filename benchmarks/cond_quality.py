"""Conditional generation quality on a time budget: every family's `--cond` run, one after
another (two runs at once on two cores would halve each one's budget), evaluated at each of the
budgets asked (the same run resumed with a larger --max-minutes: an accuracy-vs-minutes curve),
then a table of the classifier's accuracy and FID in the data classifier's feature space, with the
iCLEVR lab's GPU numbers beside them as the reference they are.

  python benchmarks/cond_quality.py --data shapes                       # 10 CPU-minutes a family
  python benchmarks/cond_quality.py --data shapes --minutes 5,10,20,40 --families wgan_gp,ddpm
  python benchmarks/cond_quality.py --data digits --minutes 5 --families dcgan,vae
  python benchmarks/cond_quality.py --families ddpm --extra "--min-snr 5" --tag _snr5   # a variant

Settings: each script's CPU preset (small networks; 16 px digits, 32 px shapes) with --cond,
--max-minutes of training, one evaluation at each budget from --fid-n 500 samples; the VAE with
beta 1e-2 on digits, 1e-3 on shapes (about the same weight per pixel); the DDPM with classifier-free
guidance S = 2 (and S = 1 scored too), 20 DDIM steps, on shapes with DDPM_SHAPES' flags. Runs go to
OUT/<data>/<family><tag> and are resumed, not redone, when the table is asked again; each budget's
steps and minutes are kept in OUT/<data>/<family><tag>/curve.json. Sharpness is the samples' mean
neighbouring-pixel difference over the held-out images' (above 1: grain; below 1: blur).
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXTRA = dict(dcgan=[], wgan_gp=[], sagan=[], vae=[], ddpm=["--guidance", "2,1"])
# The CVAE's KL weight: L_mse is a mean over pixels, so the same weight per pixel is 12x smaller on shapes
# (3 x 32 x 32 values) than on the 16 px digits (measured on digits, 5 minutes: 1e-3 gives accuracy 0.80,
# 1e-2 gives 1.00: with a weak KL, z carries the digit and the label steers only part of the samples).
VAE_BETA = dict(digits="1e-2", shapes="1e-3")
# The DDPM on shapes as docs/RESULTS.md measured it best: min-SNR-5 loss weights, AdaGN conditioning, and
# stochastic DDIM (eta 1: the deterministic sampler leaves grain on shapes; on digits it costs FID instead).
DDPM_SHAPES = ["--min-snr", "5", "--scale-shift", "--eta", "1"]
# The conditional-generation lab's own results on iCLEVR (GPUs, ~200 GAN and ~20 DDPM epochs, 64 px).
LAB = {"GAN (the lab, GPU)": (0.972, 0.845), "DDPM (the lab, GPU)": (0.931, 0.810)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="shapes", choices=["digits", "shapes"])
    p.add_argument("--minutes", default="10", help="training budgets, a comma list: 5,10,20,40")
    p.add_argument("--families", default=",".join(EXTRA), help="comma list of " + ",".join(EXTRA))
    p.add_argument("--out", default="runs/bench_cond", help="runs go to OUT/<data>/<family><tag>")
    p.add_argument("--extra", default="", help="more flags for every run, as one string")
    p.add_argument("--tag", default="", help="a variant's suffix to the run folders")
    args = p.parse_args()
    families = [f for f in args.families.split(",") if f]
    if bad := [f for f in families if f not in EXTRA]:
        p.error(f"unknown families {bad}")
    budgets = sorted(float(m) for m in args.minutes.split(",") if m)
    rows = []
    for family in families:
        out = Path(args.out) / args.data / f"{family}{args.tag}"
        curve_file = out / "curve.json"
        for minutes in budgets:
            curve = json.loads(curve_file.read_text()) if curve_file.exists() else {}
            if f"{minutes:g}" not in curve:  # train on to this budget (resumed), evaluated at its end
                cmd = [sys.executable, str(ROOT / f"{family}.py"), "--preset", "cpu", "--device", "cpu"]
                cmd += ["--cond", "--data", args.data, "--max-minutes", f"{minutes:g}", "--fid-n", "500"]
                cmd += ["--fid-every", "0", "--out", str(out), "--resume", *EXTRA[family]]
                cmd += ["--beta", VAE_BETA[args.data]] if family == "vae" else []
                cmd += DDPM_SHAPES if family == "ddpm" and args.data == "shapes" else []
                cmd += args.extra.split()
                print(" ".join(cmd[1:]), flush=True)
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                summary = json.loads((out / "summary.json").read_text())
                curve[f"{minutes:g}"] = dict(steps=summary["steps"], minutes=summary["train_seconds"] / 60)
                curve_file.write_text(json.dumps(curve))
            done = curve[f"{minutes:g}"]
            evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            at_budget = {
                r.get("guidance"): r for r in evals if r.get("kind") == "fid" and r["step"] == done["steps"]
            }
            for row in at_budget.values():  # the last evaluation of each guidance scale at that step
                scale = f" S={row['guidance']:g}" if "guidance" in row else ""
                rows.append((f"{family}{args.tag}{scale}", done["steps"], done["minutes"], row))
    space = f"FID({args.data})"
    print(f"\n{args.data}, --cond, {args.minutes} minutes of training a family, this machine's CPU")
    print(f"| family | steps | train min | accuracy test | accuracy new_test | {space} | sharpness |")
    print("|---|---|---|---|---|---|---|")
    for name, steps, minutes, row in rows:
        new = f"{row['acc_new_test']:.3f}" if "acc_new_test" in row else "-"
        sharp = f"{row['sharpness']:.2f}" if "sharpness" in row else "-"
        cells = f"{row['acc_test']:.3f} | {new} | {row['fid']:.2f} | {sharp}"
        print(f"| {name} | {steps} | {minutes:.1f} | {cells} |")
    if args.data == "shapes":
        for name, (test, new_test) in LAB.items():
            print(f"| {name} | | | {test:.3f} | {new_test:.3f} | | |")


if __name__ == "__main__":
    main()
