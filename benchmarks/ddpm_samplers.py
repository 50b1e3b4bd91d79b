"""One trained DDPM, sampled several ways: does grain (noise left in the samples) come from the sampler or
from the network? Each sampler scores a copy of the finished run (`ddpm.py --resume` with the sampler's
flags re-runs only the final evaluation), so the weights are the same in every row.

  python benchmarks/ddpm_samplers.py runs/bench_cond/shapes/ddpm
  python benchmarks/ddpm_samplers.py RUN --samplers ddim20,ddim20_trailing,ddim50,ddim20_eta1

Prints sampler | accuracy test / new_test | FID in the run's feature space | sharpness (the samples' mean
neighbouring-pixel difference over the held-out images': above 1 is grain, below 1 blur), at the run's
first --guidance.
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLERS = dict(
    ddim20=["--sample-steps", "20"],
    ddim20_trailing=["--sample-steps", "20", "--spacing", "trailing"],
    ddim50=["--sample-steps", "50"],
    ddim100=["--sample-steps", "100"],
    ddim20_eta1=["--sample-steps", "20", "--eta", "1"],
    ddpm1000=["--sampler", "ddpm"],
)


# What a resume must repeat to be the same run (a resume takes the flags given, not the run's args.json).
KEPT = (
    "preset",
    "device",
    "data",
    "res",
    "crop",
    "cond",
    "seed",
    "batch_size",
    "max_minutes",
    "epochs",
    "lr",
)
KEPT += ("fid_n", "fid_n_real", "fid_features", "T", "schedule", "pred", "base_ch", "ch_mult")
KEPT += (
    "num_res_blocks",
    "attn_res",
    "dropout",
    "scale_shift",
    "min_snr",
    "p_uncond",
    "ema",
    "aug",
    "fid_every",
)


def as_flags(saved):
    """args.json's KEPT values as command-line flags: lists comma-joined, True as a bare switch."""
    flags = []
    for name in KEPT:
        value = saved.get(name)
        if value is None or value is False:
            continue
        flags.append("--" + name.replace("_", "-"))
        if value is not True:
            flags.append(",".join(map(str, value)) if isinstance(value, list) else str(value))
    return flags


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path, help="a finished ddpm.py run folder")
    p.add_argument("--samplers", default="ddim20,ddim20_trailing,ddim50,ddim20_eta1")
    p.add_argument("--fid-n", type=int, default=None, help="samples for FID (default: the run's --fid-n)")
    args = p.parse_args()
    names = [s for s in args.samplers.split(",") if s]
    if bad := [s for s in names if s not in SAMPLERS]:
        p.error(f"unknown samplers {bad}; choose from {', '.join(SAMPLERS)}")
    trained = json.loads((args.run / "args.json").read_text())
    n = args.fid_n or trained["fid_n"]
    at = f"guidance {trained['guidance'][0]:g}, {n} samples"
    print(f"{args.run}: {trained['schedule']} / {trained['pred']}, {at}")
    print("| sampler | accuracy test | accuracy new_test | FID | sharpness |")
    print("|---|---|---|---|---|")
    for name in names:
        with tempfile.TemporaryDirectory() as tmp:
            run = Path(tmp) / "run"
            shutil.copytree(args.run, run)
            metrics = run / "metrics.jsonl"
            before = len(metrics.read_text().splitlines())
            cmd = [sys.executable, str(ROOT / "ddpm.py"), "--out", str(run), "--resume"]
            cmd += [*as_flags(trained), "--guidance", f"{trained['guidance'][0]:g}", *SAMPLERS[name]]
            cmd += ["--fid-n", str(args.fid_n)] if args.fid_n else []
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            (row,) = [json.loads(line) for line in metrics.read_text().splitlines()[before:]]
        cells = [f"{row.get(k, float('nan')):.3f}" for k in ("acc_test", "acc_new_test")]
        cells += [f"{row['fid']:.1f}", f"{row['sharpness']:.2f}"]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
