"""Images/s of DCGAN training: pure compute vs the full dcgan.py loop.

  python benchmarks/train_speed.py [--res 64] [--batch-size 64] [--steps 30]

Four rows, each in its own process (so peak RSS is its own), same model and batch:
  pure    the D and G steps of dcgan.py on random tensors (1 and 3 channels)
  digits  dcgan.main on the cached built-in digits (data, augmentation, EMA, logging)
  folder  dcgan.main on a folder of 2,000 RGB 64x64 PNGs (cached to uint8 before the loop)
The loop's overhead is pure / loop - 1 against the pure row with the same
channels; the target is under 5% at res 64, batch 64. This machine's speed drifts
by 10-20% between runs, so the rows are run --repeats times, interleaved, and the
best run of each row is reported (as timeit does).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def pure(args, channels):
    import torch

    import dcgan

    G = dcgan.Generator(100, args.ngf, channels, args.res).apply(dcgan.init_weights)
    D = dcgan.Discriminator(args.ngf, channels, args.res).apply(dcgan.init_weights)
    opt_g = torch.optim.Adam(G.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), 2e-4, betas=(0.5, 0.999))
    real = torch.rand(args.batch_size, channels, args.res, args.res) * 2 - 1
    z = torch.randn(args.batch_size, 100)
    t0 = None
    for i in range(args.steps + 2):
        if i == 2:  # two warm-up steps, as the loop's first steps also pay for allocation
            t0 = time.time()
        fake = G(z)
        loss_d = dcgan.d_loss(D(real), D(fake.detach()))
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        loss_g = dcgan.g_loss(D(fake))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
    return args.steps * args.batch_size / (time.time() - t0)


def loop(args, data):
    import dcgan

    with tempfile.TemporaryDirectory() as tmp:
        size = ["--res", str(args.res), "--batch-size", str(args.batch_size)]
        size += ["--ngf", str(args.ngf), "--ndf", str(args.ngf)]
        flags = ["--preset", "study", "--data", data, *size, "--aug", "flip", "--sample-every", "1000000"]
        flags += ["--ckpt-every", "1000000", "--fid-features", "none", "--log-every", "10", "--device", "cpu"]
        flags += ["--out", f"{tmp}/run"]
        # Warm-up run pays for caching the data and first allocations; then the timed run.
        dcgan.main(flags + ["--max-steps", "2", "--out", f"{tmp}/warm"])
        s = dcgan.main(flags + ["--max-steps", str(args.steps + 2)])
        return s["images_per_s"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--res", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--ngf", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--row", default=None, help=argparse.SUPPRESS)  # internal: one row in a child process
    args = p.parse_args()

    if args.row:
        if args.row.startswith("pure"):
            ips = pure(args, channels=int(args.row[-1]))
        else:
            ips = loop(args, "digits" if args.row == "digits" else os.environ["BENCH_FOLDER"])
        print(
            json.dumps(
                {
                    "images_per_s": ips,
                    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                }
            )
        )
        return

    import numpy as np
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "pngs"
        folder.mkdir()
        rng = np.random.RandomState(0)
        for i in range(2000):
            Image.fromarray(rng.randint(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")
        env = dict(os.environ, BENCH_FOLDER=str(folder), GENSTUDY_CACHE=str(Path(tmp) / "cache"))
        rows = {}
        for _ in range(args.repeats):
            for row in ["pure1", "digits", "pure3", "folder"]:
                cmd = [
                    sys.executable,
                    __file__,
                    "--row",
                    row,
                    "--res",
                    str(args.res),
                    "--batch-size",
                    str(args.batch_size),
                    "--ngf",
                    str(args.ngf),
                    "--steps",
                    str(args.steps),
                ]
                res = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if res.returncode:
                    sys.exit(f"{row} failed:\n{res.stderr[-2000:]}")
                r = json.loads(res.stdout.strip().splitlines()[-1])
                if row not in rows or r["images_per_s"] > rows[row]["images_per_s"]:
                    rows[row] = r

    import torch

    print(
        f"DCGAN training, res {args.res}, batch {args.batch_size}, ngf=ndf={args.ngf}, "
        f"{args.steps} timed steps, best of {args.repeats}, CPU threads {torch.get_num_threads()}"
    )
    print(f"| {'row':<28} | {'images/s':>9} | {'vs pure':>8} | {'peak RSS MB':>11} |")
    print(f"|{'-' * 30}|{'-' * 11}|{'-' * 10}|{'-' * 13}|")
    names = {
        "pure1": "pure compute, 1 channel",
        "digits": "dcgan.py loop, cached digits",
        "pure3": "pure compute, 3 channels",
        "folder": "dcgan.py loop, 2000 RGB PNGs",
    }
    baseline = {"pure1": "pure1", "digits": "pure1", "pure3": "pure3", "folder": "pure3"}
    for row, r in rows.items():
        overhead = rows[baseline[row]]["images_per_s"] / r["images_per_s"] - 1
        print(
            f"| {names[row]:<28} | {r['images_per_s']:9.1f} | {overhead:+7.1%} | {r['peak_rss_mb']:11.0f} |"
        )


if __name__ == "__main__":
    main()
