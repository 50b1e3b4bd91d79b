"""CycleGAN on the built-in pair (scikit-learn's digits <-> MNIST) on a time budget, with and without
its cycle loss (and optionally the whole-image discriminator), one run after another (two at once on
two cores would halve each one's budget), then a table of what phase 7 measures.

  python benchmarks/translation_quality.py                      # 10 CPU-minutes a variant
  python benchmarks/translation_quality.py --minutes 3 --variants cycle,no_cycle,dc
  python benchmarks/translation_quality.py --minutes 20 --variants cycle,semantic   # CyCADA's term

Settings: cyclegan.py's CPU preset (32 px, ngf = ndf = 16, batch 8, PatchGAN with one layer: 16 px
patches), --max-minutes MINUTES (the learning rate decays over the second half of them), one
evaluation at the end on every held-out image (299 digits, 833 MNIST). Runs go to
OUT/<minutes>min/<variant> (a budget is a run of its own: the learning rate decays over its second half) and
are reused, not redone, when the table is asked again. The last row is the floor: the target
domain's classifier on the held-out source images, untranslated. `semantic` adds CyCADA's
semantic-consistency term (--lambda-semantic 1: each source domain's classifier, never the target's
judge, reads the translation).
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import classifiers  # noqa: E402
import data  # noqa: E402

VARIANTS = dict(
    cycle=["--disc", "patch"],
    no_cycle=["--disc", "patch", "--lambda-cycle", "0"],
    dc=["--disc", "dc"],
    dc_no_cycle=["--disc", "dc", "--lambda-cycle", "0"],
    semantic=["--disc", "patch", "--lambda-semantic", "1"],
)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", default="10", help="training budgets, a comma list (a run each): 5,10,20")
    p.add_argument("--variants", default="cycle,no_cycle", help="comma list of " + ",".join(VARIANTS))
    p.add_argument("--out", default="runs/bench_translation", help="runs go to OUT/<minutes>min/<variant>")
    args = p.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    if bad := [v for v in variants if v not in VARIANTS]:
        p.error(f"unknown variants {bad}")
    rows = []
    for variant in variants:
        for minutes in sorted(float(m) for m in args.minutes.split(",") if m):
            out = Path(args.out) / f"{minutes:g}min" / variant  # the lr schedule follows the budget
            cmd = [sys.executable, str(ROOT / "cyclegan.py"), "--preset", "cpu", "--device", "cpu"]
            cmd += ["--max-minutes", f"{minutes:g}", "--fid-n", "5000", "--fid-every", "0"]
            cmd += ["--out", str(out), "--resume", *VARIANTS[variant]]
            if not (out / "summary.json").exists():
                print(" ".join(cmd[1:]), flush=True)
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            summary = json.loads((out / "summary.json").read_text())
            evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            (row,) = [r for r in evals if r.get("kind") == "eval" and r["step"] == summary["steps"]]
            rows.append((variant, summary["steps"], summary["train_seconds"] / 60, row))
    print(f"\ndigits (A) <-> MNIST (B), {args.minutes} minutes of training a variant, this machine's CPU")
    untranslated = []  # the floor: each target classifier on the source images as they are
    for source, target in (("digits", "mnist"), ("mnist", "digits")):
        test = data.load_dataset(source, 32).split()[1]
        x = torch.from_numpy(np.array(test.images)).permute(0, 3, 1, 2).float() / 255  # (N, 1, 32, 32)
        with torch.no_grad():
            logits = classifiers.load_classifier(target)(x)[1]
        untranslated.append(classifiers.accuracy(logits, torch.from_numpy(test.labels)))
    spaces = f"FID({rows[0][3]['features_ab']}) A->B | FID({rows[0][3]['features_ba']}) B->A"
    print(
        f"| variant | steps | train min | label kept A->B | B->A | {spaces} | cycle L1 A->B | B->A "
        "| sharpness A->B | B->A | classes hit A->B | B->A |"
    )
    print("|---" * 13 + "|")
    for name, steps, minutes, r in rows:
        cells = [name, steps, f"{minutes:.1f}", f"{r['acc_ab']:.3f}", f"{r['acc_ba']:.3f}"]
        cells += [f"{r['fid_ab']:.2f}", f"{r['fid_ba']:.2f}", f"{r['cycle_ab']:.3f}", f"{r['cycle_ba']:.3f}"]
        cells += [f"{r['sharpness_ab']:.2f}", f"{r['sharpness_ba']:.2f}", r["classes_ab"], r["classes_ba"]]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    print(
        f"| untranslated (the source as it is) | | | {untranslated[0]:.3f} | {untranslated[1]:.3f} |"
        + " |" * 8
    )


if __name__ == "__main__":
    main()
