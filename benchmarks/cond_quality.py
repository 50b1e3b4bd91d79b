"""Conditional generation quality on a time budget: every family's `--cond` run, one after
another (two runs at once on two cores would halve each one's budget), then a table of the
classifier's accuracy and FID in the data classifier's feature space.

  python benchmarks/cond_quality.py --data shapes             # 10 CPU-minutes a family
  python benchmarks/cond_quality.py --data digits --minutes 5 --families dcgan,vae

Settings: each script's CPU preset (small networks; 16 px digits, 32 px shapes) with --cond,
--max-minutes MINUTES of training, one evaluation at the end from --fid-n 500 samples; the VAE
with beta 1e-3; the DDPM with classifier-free guidance S = 2 (and S = 1 scored too), 20 DDIM
steps. Runs go to OUT/<family> and are resumed, not redone, when the table is asked again.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXTRA = dict(dcgan=[], wgan_gp=[], sagan=[], vae=["--beta", "1e-3"], ddpm=["--guidance", "2,1"])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="shapes", choices=["digits", "shapes"])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--families", default=",".join(EXTRA), help="comma list of " + ",".join(EXTRA))
    p.add_argument("--out", default="runs/bench_cond", help="runs go to OUT/<data>/<family>")
    args = p.parse_args()
    families = [f for f in args.families.split(",") if f]
    if bad := [f for f in families if f not in EXTRA]:
        p.error(f"unknown families {bad}")
    rows = []
    for family in families:
        out = Path(args.out) / args.data / family
        cmd = [sys.executable, str(ROOT / f"{family}.py"), "--preset", "cpu", "--device", "cpu", "--cond"]
        cmd += ["--data", args.data, "--max-minutes", str(args.minutes), "--fid-n", "500"]
        cmd += ["--fid-every", "0", "--out", str(out), "--resume", *EXTRA[family]]
        if not (out / "summary.json").exists():
            print(" ".join(cmd[1:]), flush=True)
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        summary = json.loads((out / "summary.json").read_text())
        evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        evals = [r for r in evals if r.get("kind") == "fid" and r["step"] == summary["steps"]]
        for row in evals:
            scale = f" S={row['guidance']:g}" if "guidance" in row else ""
            rows.append((family + scale, summary["steps"], summary["train_seconds"] / 60, row))
    space = f"FID({args.data})"
    print(f"\n{args.data}, --cond, {args.minutes:g} minutes of training a family, this machine's CPU")
    print(f"| family | steps | train min | accuracy test | accuracy new_test | {space} |")
    print("|---|---|---|---|---|---|")
    for name, steps, minutes, row in rows:
        new = f"{row['acc_new_test']:.3f}" if "acc_new_test" in row else "-"
        print(f"| {name} | {steps} | {minutes:.1f} | {row['acc_test']:.3f} | {new} | {row['fid']:.2f} |")


if __name__ == "__main__":
    main()
