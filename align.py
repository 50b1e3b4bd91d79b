"""Face alignment for the phase-1 pipeline study: MTCNN (Zhang, Zhang, Li & Qiao,
"Joint Face Detection and Alignment Using Multitask Cascaded Convolutional
Networks", 2016; facenet-pytorch's port, whose wheel ships the weights) finds
the most confident face and its 5 landmarks; a similarity transform (rotation,
uniform scale, translation: the face keeps its shape) maps them onto
REF_LANDMARKS by least squares (Umeyama 1991), and the photo is warped with
cubic interpolation.

  python align.py SRC DST --size 128 [--min-prob 0.9]

walks SRC recursively and mirrors its tree under DST as PNGs (a.jpg -> a.png),
with DST/manifest.csv: file, status (aligned | no_face | unreadable), the
detection probability and the 5 landmarks in the source image. A re-run skips
every file already in the manifest; each PNG is written to a temp file and
renamed before its manifest row is appended, so a kill loses at most the image
in flight. Study step 1B trains DCGAN on DST instead of SRC.
"""

import argparse
import csv
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

import common
import data

# Left eye, right eye, nose tip, left and right mouth corners in a 128x128 frame
# ("left" as seen in the image). Scaled by size / 128 for other sizes.
REF_LANDMARKS = np.array([[38.0, 51.0], [90.0, 51.0], [64.0, 71.0], [45.0, 95.0], [83.0, 95.0]])
FIELDS = ["file", "status", "probability", "landmarks"]


def make_detector(device=None):
    """MTCNN that returns every face sorted by confidence (not by size), on the GPU when present."""
    from facenet_pytorch import MTCNN

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return MTCNN(keep_all=True, select_largest=False, device=device)


def detect(images, detector):
    """PIL RGB images (all one size, for one batched pass) -> [(probability, (5, 2) landmarks) or None]."""
    boxes, probs, points = detector.detect(images if len(images) > 1 else images[0], landmarks=True)
    if len(images) == 1:
        boxes, probs, points = [boxes], [probs], [points]
    out = []
    for b, p, pts in zip(boxes, probs, points):
        if b is None:
            out.append(None)
            continue
        # Under numpy 2, facenet-pytorch hands back object arrays: make them plain floats.
        p = np.asarray(p, dtype=np.float64).reshape(-1)
        pts = np.asarray([np.asarray(x, dtype=np.float64) for x in pts]).reshape(-1, 5, 2)
        best = int(p.argmax())
        out.append((float(p[best]), pts[best]))
    return out


def warp_to_reference(img, landmarks, size):
    """Warp PIL image so that `landmarks` (5, 2) land on REF_LANDMARKS scaled to size."""
    from skimage.transform import SimilarityTransform, warp

    tform = SimilarityTransform.from_estimate(landmarks, REF_LANDMARKS * size / 128)
    if not tform:  # degenerate landmarks (all on one point)
        return None
    # warp() wants the map from output to input coordinates: the inverse transform.
    out = warp(
        np.asarray(img), tform.inverse, output_shape=(size, size), order=3, mode="edge", preserve_range=True
    )
    return Image.fromarray(np.clip(out, 0, 255).round().astype(np.uint8))


def align_face(img, size=128, detector=None, min_prob=0.0):
    """PIL image -> the most confident face aligned to REF_LANDMARKS at size x size (PIL), or None."""
    img = img.convert("RGB")
    found = detect([img], detector or make_detector())[0]
    if found is None or found[0] < min_prob:
        return None
    return warp_to_reference(img, found[1], size)


# ----------------------------------------------------------------------------- CLI
def _read_manifest(path):
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        return {row["file"]: row for row in csv.DictReader(f)}


def _save_png(img, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    common.atomic_write(path, lambda f: img.save(f, format="PNG"))


def _same_size_batches(files, batch_size):
    """Group files whose images share a size (MTCNN batches only equal-sized images),
    keeping the walk order within each group; unreadable files travel alone."""
    groups = {}
    for path in files:
        try:
            with Image.open(path) as im:
                key = im.size
        except Exception:
            key = ("unreadable", str(path))
        groups.setdefault(key, []).append(path)
    for group in groups.values():
        for i in range(0, len(group), batch_size):
            yield group[i : i + batch_size]


@common.exits_on_user_error
def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("src", help="folder of images (walked recursively)")
    p.add_argument("dst", help="output folder: aligned PNGs in the same tree + manifest.csv")
    p.add_argument("--size", type=int, default=128, help="output size; the reference landmarks scale with it")
    p.add_argument(
        "--min-prob", type=float, default=0.9, help="faces detected with less confidence count as no_face"
    )
    p.add_argument("--batch-size", type=int, default=16, help="same-sized images detected in one MTCNN pass")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = p.parse_args(argv)
    src, dst = Path(args.src), Path(args.dst)
    if not src.is_dir():
        raise common.UserError(f"{src} is not a folder")
    if args.size < 16:
        raise common.UserError(f"--size must be at least 16, got {args.size}")
    files = sorted(f for f in src.rglob("*") if f.suffix.lower() in data.IMAGE_EXTS and f.is_file())
    if not files:
        raise common.UserError(f"no images under {src}")
    dst.mkdir(parents=True, exist_ok=True)
    manifest_path = dst / "manifest.csv"
    done = _read_manifest(manifest_path)
    todo = [f for f in files if str(f.relative_to(src)) not in done]
    print(f"{len(files)} images under {src}: {len(files) - len(todo)} already done, {len(todo)} to align")
    counts = {"aligned": 0, "no_face": 0, "unreadable": 0}
    for row in done.values():
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    if todo:
        device = None if args.device == "auto" else args.device
        detector = make_detector(device)
        new_file = not manifest_path.exists()
        with open(manifest_path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            if new_file:
                writer.writeheader()
            bar = tqdm(total=len(todo), desc="align", mininterval=0.1 if sys.stderr.isatty() else 30)
            for batch in _same_size_batches(todo, args.batch_size):
                images, rows = [], []
                for path in batch:
                    try:
                        with Image.open(path) as im:
                            images.append((path, im.convert("RGB")))
                    except Exception:  # PIL raises many kinds for a bad file
                        rows.append(
                            dict(
                                file=str(path.relative_to(src)),
                                status="unreadable",
                                probability="",
                                landmarks="",
                            )
                        )
                found = detect([im for _, im in images], detector) if images else []
                for (path, im), hit in zip(images, found):
                    rel = path.relative_to(src)
                    row = {"file": str(rel), "status": "no_face", "probability": "", "landmarks": ""}
                    if hit is not None:
                        prob, lm = hit
                        row.update(
                            probability=f"{prob:.4f}", landmarks=" ".join(f"{v:.1f}" for v in lm.ravel())
                        )
                        face = warp_to_reference(im, lm, args.size) if prob >= args.min_prob else None
                        if face is not None:
                            _save_png(face, (dst / rel).with_suffix(".png"))
                            row["status"] = "aligned"
                    rows.append(row)
                for row in rows:  # after the PNGs exist: a row means the file is done
                    writer.writerow(row)
                    counts[row["status"]] += 1
                f.flush()
                os.fsync(f.fileno())
                bar.update(len(batch))
            bar.close()
    print(", ".join(f"{k}: {v}" for k, v in counts.items()) + f"; manifest: {manifest_path}")
    return counts


if __name__ == "__main__":
    main()
