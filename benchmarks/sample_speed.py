"""DDPM sampling speed: seconds per image for DDIM at 10/50/100 steps and ancestral DDPM.

  python benchmarks/sample_speed.py                       # the smoke preset's U-Net (digits, res 16)
  python benchmarks/sample_speed.py --res 32 --base-ch 64 --ch-mult 1,2,2 --attn-res 8

Random weights (speed does not depend on their values), batch 64, CPU, T = 1000.
Prints a table with seconds per image and the peak RSS of the process after each row.
"""

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ddpm  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--res", type=int, default=16)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--base-ch", type=int, default=32)
    p.add_argument("--ch-mult", type=ddpm.csv_ints, default=[1, 2, 2])
    p.add_argument("--num-res-blocks", type=int, default=1)
    p.add_argument("--attn-res", type=ddpm.csv_ints, default=[8])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--T", type=int, default=1000)
    args = p.parse_args()

    torch.manual_seed(0)
    model = ddpm.UNet(
        args.channels, args.base_ch, args.ch_mult, args.num_res_blocks, args.attn_res, 0.0, args.res
    )
    torch.nn.init.normal_(model.out[-1].weight, std=0.02)  # not the all-zero output of a fresh net
    model.eval()
    betas = ddpm.make_betas("cosine", args.T)
    alpha_bar = torch.cumprod(1 - betas, 0)
    shape = (args.batch_size, args.channels, args.res, args.res)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(
        f"U-Net {params:.2f}M params, res {args.res}, base {args.base_ch}, ch-mult {args.ch_mult}, "
        f"batch {args.batch_size}, CPU threads {torch.get_num_threads()}"
    )
    print(f"| {'sampler':<16} | {'network calls':>13} | {'s / image':>9} | {'peak RSS MB':>11} |")
    print(f"|{'-' * 18}|{'-' * 15}|{'-' * 11}|{'-' * 13}|")
    ddpm.ddim_sample(model, shape, alpha_bar, 2, "v")  # warm-up
    rows = [
        (f"DDIM {s} steps", s, lambda s=s: ddpm.ddim_sample(model, shape, alpha_bar, s, "v"))
        for s in (10, 50, 100)
    ]
    rows.append(("DDPM ancestral", args.T, lambda: ddpm.ddpm_sample(model, shape, betas, "v")))
    for name, calls, run in rows:
        t = time.time()
        run()
        per_image = (time.time() - t) / args.batch_size
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"| {name:<16} | {calls:13d} | {per_image:9.4f} | {rss:11.0f} |")


if __name__ == "__main__":
    main()
