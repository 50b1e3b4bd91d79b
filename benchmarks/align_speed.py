"""align.py CLI speed: faces per second on a folder of 200 test images made from the
built-in photos, and the peak RSS.

  python benchmarks/align_speed.py [--n 200] [--batch-size 16] [--device cpu]

The folder: skimage's astronaut (one face) at 4 sizes (512, 384, 256, 192 px),
each also rotated by +-10 degrees and mirrored, plus coffee (no face) at 2 sizes,
cycled to --n images in a temp dir. Each size group is one MTCNN batch shape, as
in a real folder of mixed sizes. Two timings: the first run (detection and warps
for every image) and a re-run (everything in the manifest: no detection work).
"""

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageOps
from skimage import data

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import align  # noqa: E402


def make_folder(root, n):
    face, coffee = Image.fromarray(data.astronaut()), Image.fromarray(data.coffee())
    variants = []
    for size in (512, 384, 256, 192):
        im = face.resize((size, size), Image.LANCZOS)
        variants += [
            im,
            im.rotate(10, resample=Image.BICUBIC),
            im.rotate(-10, resample=Image.BICUBIC),
            ImageOps.mirror(im),
        ]
    variants += [coffee, coffee.resize((300, 200), Image.LANCZOS)]
    for i in range(n):
        variants[i % len(variants)].save(root / f"{i:04d}.png")
    return sum(1 for i in range(n) if i % len(variants) < len(variants) - 2)  # images with a face


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "src", Path(tmp) / "dst"
        src.mkdir()
        n_faces = make_folder(src, args.n)
        flags = ["--size", "128", "--batch-size", str(args.batch_size), "--device", args.device]
        t = time.time()
        counts = align.main([str(src), str(dst)] + flags)
        first = time.time() - t
        t = time.time()
        align.main([str(src), str(dst)] + flags)
        rerun = time.time() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("\n| images | with a face | aligned | first run | faces/s | images/s | re-run | peak RSS |")
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.n} | {n_faces} | {counts['aligned']} | {first:.1f} s | {counts['aligned'] / first:.2f} | "
        f"{args.n / first:.2f} | {rerun:.2f} s | {rss:.0f} MB |"
    )


if __name__ == "__main__":
    main()
