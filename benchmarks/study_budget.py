"""What the full study costs on this machine: every training run of `run_all.sh --preset full` (its
--dry-run's commands: the carried-forward flags and phase 8's runs included) trained here for a few
steps, and its measured seconds a step projected to the run's whole length, in hours.

  python benchmarks/study_budget.py --data /data/celeba/img_align_celeba            # on the GPU to budget
  python benchmarks/study_budget.py --data /data/celeba/img_align_celeba --only 4 --steps 200
  NPROC=8 python benchmarks/study_budget.py --data /data/celeba/img_align_celeba    # under torchrun

Each run is trained twice, for --steps and for twice as many (without FID): the difference of the two
training times over the difference of steps is its seconds a step with start-up and warm-up (CUDA
context, cuDNN autotuning, first batches) cancelled. A run's length is its own --max-steps where it
has one (phase 8's iteration claims), else its epochs (the study preset's 100) x the steps an epoch of
DATA takes. Sampling hours: the FID evaluations (one every --fid-every epochs and the final one) x
--fid-n samples x the run's measured sampling seconds an image (the Inception pass not counted). The
last column multiplies by the run's seeds (SEEDS, 3 in the full preset). Phase 5 retrains one pick a
family for 200 epochs: counted as its most expensive candidate's run, twice (an upper bound: 2.4's
pick would retrain at 64 px, not 128). Runs on data the study makes (the aligned faces) are measured
on DATA at the same size. Runs go to OUT/<run>/{first,both} and are measured once.
"""

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import data  # noqa: E402


def study_commands(data, preset, only):
    """The dry run's training runs [(name, seeds, script, flags)], each seed folder counted, not repeated,
    and phase 5's picks {name: candidate runs}."""
    env = {**os.environ, "DATA": str(data), "PYTHON": sys.executable, "NPROC": "1"}
    cmd = ["bash", str(ROOT / "run_all.sh"), "--preset", preset, "--dry-run"] + (
        ["--only", only] if only else []
    )
    text = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    runs = {}
    for name, command in re.findall(r"^== (\S+?)(?:/seed_\d+)?: \S+ (\S+\.py .*)$", text, re.M):
        script, *flags = shlex.split(command)
        seeds = runs[name][1] + 1 if name in runs else 1
        runs[name] = (name, seeds, script, flags)
    picks = dict(re.findall(r"^== (5_\w+): the best of (.*?) \(picked", text, re.M))
    return list(runs.values()), {name: names.split() for name, names in picks.items()}


def flag(flags, name, default=None):
    """The value a command gives a flag (each is named once), else the default."""
    return flags[flags.index(name) + 1] if name in flags else default


def projected_hours(per_step, per_epoch, args, max_steps, sample_seconds):
    """(training hours, sampling hours) of a whole run: seconds a step and steps an epoch as measured,
    the run's args.json (epochs, fid_every, fid_n), its own --max-steps if any, seconds a sample."""
    steps = int(max_steps) if max_steps else args["epochs"] * per_epoch
    evaluations = (int(steps / per_epoch // args["fid_every"]) if args["fid_every"] else 0) + 1
    return per_step * steps / 3600, evaluations * args["fid_n"] * sample_seconds / 3600


def measure(launch, script, flags, out, steps):
    """Train the run for `steps` steps into `out` (once), -> its summary.json and args.json."""
    if not (out / "summary.json").exists():
        short = ["--out", str(out), "--max-steps", str(steps), "--fid-features", "none"]
        subprocess.run(launch + [str(ROOT / script), *flags, *short], check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "summary.json").read_text()), json.loads((out / "args.json").read_text())


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="the images the study trains on (run_all.sh's DATA)")
    p.add_argument(
        "--preset", default="full", choices=["full", "test"], help="test: the recipe tests' tiny one"
    )
    p.add_argument("--only", help="one phase, as run_all.sh --only")
    p.add_argument("--steps", type=int, default=100, help="steps measured a run")
    p.add_argument("--out", default="runs/budget", help="the measured runs go to OUT/<run>")
    args = p.parse_args()
    nproc = int(os.environ.get("NPROC", "1"))
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    launch = launch if nproc > 1 else [sys.executable]
    runs, picks = study_commands(args.data, args.preset, args.only)
    rows = {}
    for name, seeds, script, flags in runs:
        own_steps = flag(flags, "--max-steps")
        source = flag(flags, "--data")
        if source and source not in data.BUILTIN and not Path(source.split(",")[0]).exists():
            flags[flags.index("--data") + 1] = args.data  # made by the study (aligned faces): same size
        flags = [w for w in flags if w != "--resume"]
        flags = flags[: flags.index("--out")] + flags[flags.index("--out") + 2 :]
        steps = min(args.steps, int(own_steps or 2 * args.steps) // 2)
        print(f"== {name}: {script}, {steps} and {2 * steps} steps", flush=True)
        first, _ = measure(launch, script, flags, Path(args.out) / name / "first", steps)
        both, run_args = measure(launch, script, flags, Path(args.out) / name / "both", 2 * steps)
        per_step = (both["train_seconds"] - first["train_seconds"]) / (both["steps"] - first["steps"])
        per_epoch = both["steps"] / both["epochs"]
        train, sampling = projected_hours(
            per_step, per_epoch, run_args, own_steps, both["sample_seconds_per_image"]
        )
        rows[name] = (script, seeds, per_step, train, sampling)
    for name, candidates in picks.items():  # phase 5: the most expensive candidate, for 200 epochs not 100
        measured = [rows[c] for c in candidates if c in rows]
        if measured:
            script, seeds, per_step, train, sampling = max(measured, key=lambda r: r[3] + r[4])
            rows[name] = (script, seeds, per_step, 2 * train, 2 * sampling)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "this machine's CPU"
    print(f"\n`run_all.sh --preset {args.preset}` on {device}, {nproc} process(es) a run: hours")
    print(
        "| run | script | seeds | s/step | training | sampling | all seeds |\n|---|---|---|---|---|---|---|"
    )
    for name, (script, seeds, per_step, train, sampling) in rows.items():
        hours = seeds * (train + sampling)
        print(
            f"| {name} | {script} | {seeds} | {per_step:.3f} | {train:.2f} | {sampling:.2f} | {hours:.1f} |"
        )
    total = sum(seeds * (train + sampling) for _, seeds, _, train, sampling in rows.values())
    print(f"| all | | | | | | **{total:.1f}** |")


if __name__ == "__main__":
    main()
