"""Activation extraction speed: fid.py against pytorch-fid, same random weights, same images.

  python benchmarks/fid_speed.py [--n 512] [--batch-size 50]

Each implementation runs in its own process (peak RSS is its own) on the same folder of
64x64 PNGs, CPU, with the random Inception weights the tests use (the real file cannot be
downloaded here; speed does not depend on the weight values). Prints images/s, peak RSS,
the largest pool3 difference between the two, and the seconds for one 2048-d Frechet distance by
pytorch-fid's sqrtm (how fid.py computed it before) and by fid.py's eigenvalues (now), with the
relative difference of the two numbers.
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def extract(impl, folder, batch_size, out):
    import torch

    from tests.test_fid import random_inception_state

    weights = random_inception_state()
    files = sorted(Path(folder).glob("*.png"))
    if impl == "pytorch-fid":
        import pytorch_fid.inception as pi
        from pytorch_fid.fid_score import get_activations

        pi.load_state_dict_from_url = lambda *a, **k: weights
        model = pi.InceptionV3([3]).eval()
        t = time.time()
        acts = get_activations(files, model, batch_size, 2048, "cpu", num_workers=0)
    else:
        import fid

        model = fid.load_inception(weights)
        t = time.time()
        acts = fid.activations(folder, model, batch_size)
    seconds = time.time() - t
    np.save(out, acts)
    return {
        "images_per_s": len(files) / seconds,
        "threads": torch.get_num_threads(),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--impl", default=None, help=argparse.SUPPRESS)  # internal: one row in a child
    p.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    p.add_argument("--acts", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.impl:
        print(json.dumps(extract(args.impl, args.folder, args.batch_size, args.acts)))
        return

    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "pngs"
        folder.mkdir()
        rng = np.random.RandomState(0)
        for i in range(args.n):
            Image.fromarray(rng.randint(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")
        rows, acts = {}, {}
        for impl in ["pytorch-fid", "fid.py"]:
            out = Path(tmp) / f"{impl}.npy"
            cmd = [
                sys.executable,
                __file__,
                "--impl",
                impl,
                "--folder",
                str(folder),
                "--acts",
                str(out),
                "--batch-size",
                str(args.batch_size),
            ]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode:
                sys.exit(f"{impl} failed:\n{res.stderr[-2000:]}")
            rows[impl] = json.loads(res.stdout.strip().splitlines()[-1])
            acts[impl] = np.load(out)

    import fid

    diff = np.abs(acts["fid.py"] - acts["pytorch-fid"]).max()
    a = acts["fid.py"]
    mu1, s1 = fid.stats(a[: len(a) // 2])
    mu2, s2 = fid.stats(a[len(a) // 2 :])
    # One 2048-d Frechet distance, before (pytorch-fid's scipy sqrtm, as fid.py computed it until
    # the eigenvalue form) and now, on full-rank covariances and on a singular one (1,000 samples).
    from pytorch_fid.fid_score import calculate_frechet_distance

    rng, frechet = np.random.RandomState(0), []
    for n_fake in (4096, 1000):
        x, y = rng.randn(4096, 2048), rng.randn(n_fake, 2048) @ rng.randn(2048, 2048) * 0.05 + 0.1
        stats_x, stats_y = fid.stats(x), fid.stats(y)
        t = time.time()
        theirs = calculate_frechet_distance(*stats_y, *stats_x)
        sqrtm_seconds = time.time() - t
        seconds = []
        for _ in range(3):  # best of 3: this machine's speed drifts
            t = time.time()
            ours = fid.frechet_distance(*stats_y, *stats_x)
            seconds.append(time.time() - t)
        frechet.append((n_fake, sqrtm_seconds, min(seconds), abs(ours - theirs) / abs(theirs)))

    print(
        f"Inception activations, {args.n} PNGs of 64x64, batch {args.batch_size}, CPU threads "
        f"{rows['fid.py']['threads']}"
    )
    print(f"| {'implementation':<14} | {'images/s':>9} | {'speed-up':>8} | {'peak RSS MB':>11} |")
    print(f"|{'-' * 16}|{'-' * 11}|{'-' * 10}|{'-' * 13}|")
    for impl, r in rows.items():
        speedup = r["images_per_s"] / rows["pytorch-fid"]["images_per_s"]
        print(f"| {impl:<14} | {r['images_per_s']:9.2f} | {speedup:7.2f}x | {r['peak_rss_mb']:11.0f} |")
    print(f"max |pool3 fid.py - pool3 pytorch-fid| = {diff:.2e}")
    print("\nOne 2048-d Frechet distance (4,096 real samples against n fake)")
    print("| fake samples | sqrtm (before) s | eigenvalues (now) s | relative diff |")
    print("|---:|---:|---:|---:|")
    for n_fake, before, now, diff in frechet:
        print(f"| {n_fake:,} | {before:.2f} | {now:.2f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
