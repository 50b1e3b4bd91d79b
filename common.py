"""Shared plumbing for the genstudy scripts: flags, data, device and AMP policy,
EMA, checkpoints, metrics log, sample grids, stopping. No model code lives here:
every model script keeps its own networks and its own training loop.

Data (`--data`): `digits` (scikit-learn's 1,797 real 8x8 digits), `lfw`
(scikit-image's 100 real 25x25 faces), an image folder (recursive; the label is
the first sub-folder), or a comma-separated mix of these. Images are
center-cropped, resized with antialiasing to `--res` and cached once as a uint8
`.npy` under the cache dir; training reads the cache and augments batches.
"""
import argparse
import contextlib
import functools
import hashlib
import json
import math
import os
import signal
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

CACHE_DIR = Path(os.environ.get("GENSTUDY_CACHE", Path.home() / ".cache" / "genstudy"))
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
HELDOUT_MAX = 5000  # real images kept out of training, the FID reference set


class UserError(Exception):
    """Bad input from the user: shown as one line, exit code 2, no traceback."""


def exits_on_user_error(main):
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2)
    return wrapper


def csv_ints(text):
    return [int(v) for v in text.split(",") if v]


def add_common_args(parser):
    """The flags every training script shares (design section 5)."""
    a = parser.add_argument
    a("--data", default="digits", help="digits | lfw | image folder | comma-separated mix")
    a("--res", type=int, default=32, choices=[16, 32, 64, 128], help="16 suits the 8x8 digits on a CPU")
    a("--crop", type=int, default=None, help="center-crop N px before resizing (CelebA: 178)")
    a("--aug", default="flip", choices=["none", "flip", "deluxe"])
    a("--batch-size", type=int, default=64)
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
    a("--workers", type=int, default=0, help="data-loading worker processes")
    a("--fid-every", type=int, default=25, help="epochs between FID evaluations (0 = only at the end)")
    a("--fid-n", type=int, default=5000, help="generated images per FID")
    a("--fid-n-real", type=int, default=5000, help="held-out real images per FID")
    a("--fid-features", default="auto", choices=["auto", "inception", "digits", "none"],
      help="auto: Inception when its weights are found, else the digits net on digits, else none")
    a("--inception-weights", default=None, help="path to pt_inception-2015-12-05-6726825d.pth")
    a("--log-every", type=int, default=50, help="steps between metrics.jsonl rows")
    a("--sample-every", type=int, default=1, help="epochs between samples/epoch_NNNN.png")
    a("--ckpt-every", type=int, default=1, help="epochs between checkpoints")
    a("--cond", action="store_true", help="class-conditional model (labels from the data)")
    return parser


def add_gan_args(parser, lr):
    """Flags the three GAN scripts share: the seed reports' training variants."""
    a = parser.add_argument
    parser.set_defaults(lr=lr)
    a("--lr-g", type=float, default=None, help="generator lr (default --lr); TTUR: Heusel et al. 2017")
    a("--lr-d", type=float, default=None, help="discriminator/critic lr (default --lr)")
    a("--lr-decay", type=float, default=None, metavar="GAMMA", help="multiply both lrs by GAMMA every step")
    a("--diffaug", type=diffaug_policy, default=(), metavar="OPS",
      help="DiffAugment on real and fake images: comma list of " + ",".join(DIFFAUG_OPS))
    return parser


def gan_optimizers(G, D, args, betas):
    """Adam for G and for D at --lr-g / --lr-d (each defaults to --lr), and with
    --lr-decay the per-step exponential schedulers, as a dict ready for the checkpoint."""
    opt_g = torch.optim.Adam(G.parameters(), lr=args.lr_g or args.lr, betas=betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=args.lr_d or args.lr, betas=betas)
    schedulers = {}
    if args.lr_decay is not None:
        if not 0 < args.lr_decay <= 1:
            raise UserError(f"--lr-decay must be in (0, 1], got {args.lr_decay}")
        schedulers = {"sched_g": torch.optim.lr_scheduler.ExponentialLR(opt_g, args.lr_decay),
                      "sched_d": torch.optim.lr_scheduler.ExponentialLR(opt_d, args.lr_decay)}
    return opt_g, opt_d, schedulers


# ----------------------------------------------------------------------------- data

def _square(img, crop):
    w, h = img.size
    side = min(crop or min(w, h), w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return img.crop((left, top, left + side, top + side))


def _to_uint8(img, res, channels, crop):
    """PIL image -> (res, res, channels) uint8: square crop, antialiased resize."""
    img = img.convert("L" if channels == 1 else "RGB")
    img = _square(img, crop).resize((res, res), Image.BICUBIC, reducing_gap=None)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[..., None] if channels == 1 else arr


def _builtin(name):
    """Built-in arrays as (uint8 images (N, H, W), labels, class names)."""
    if name == "digits":
        from sklearn.datasets import load_digits
        d = load_digits()
        return (d.images * (255 / 16)).round().astype(np.uint8), d.target, [str(i) for i in range(10)]
    from skimage.data import lfw_subset
    faces = lfw_subset()[:100]  # the rest of lfw_subset are non-face patches
    return (faces * 255).round().astype(np.uint8), np.zeros(100, dtype=np.int64), ["face"]


def _list_folder(root):
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    labels = [p.relative_to(root).parts[0] if len(p.relative_to(root).parts) > 1 else "." for p in files]
    return files, labels


def _atomic_write(path, write_fn, suffix=""):
    """Write through a temp file in the same folder, then rename: a kill at any
    moment leaves either the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix + ".tmp")
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


def _load_source(src, res, channels, crop):
    """One source of a spec -> cached (images uint8 (N, res, res, C), labels, class names)."""
    if src in ("digits", "lfw"):
        key_files = [src]
    else:
        root = Path(src).expanduser()
        if not root.exists():
            raise UserError(f"data path not found: {src}")
        if not root.is_dir():
            raise UserError(f"--data must be digits, lfw or a folder of images, got file {src}")
        files, folder_labels = _list_folder(root)
        if not files:
            raise UserError(f"no images ({', '.join(sorted(IMAGE_EXTS))}) under {src}")
        key_files = [f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files]
    key = hashlib.sha1(json.dumps([src, crop, res, channels, key_files]).encode()).hexdigest()[:16]
    npy, manifest = CACHE_DIR / "data" / f"{key}.npy", CACHE_DIR / "data" / f"{key}.json"
    if npy.exists() and manifest.exists():
        meta = json.loads(manifest.read_text())
        return np.load(npy, mmap_mode="r"), np.array(meta["labels"], dtype=np.int64), meta["classes"]

    skipped = []
    if src in ("digits", "lfw"):
        raw, labels, classes = _builtin(src)
        images = np.stack([_to_uint8(Image.fromarray(im), res, channels, crop) for im in raw])
    else:
        from tqdm import tqdm
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
    _atomic_write(npy, lambda f: np.save(f, images))
    meta = {"spec": src, "res": res, "crop": crop, "channels": channels, "n": len(images),
            "classes": classes, "labels": labels.tolist(), "skipped": skipped}
    _atomic_write(manifest, lambda f: f.write(json.dumps(meta).encode()))
    return np.load(npy, mmap_mode="r"), labels, classes


class ImageData(torch.utils.data.Dataset):
    """uint8 images (N, H, W, C) + labels. Items are (x (C, H, W) in [-1, 1], label).
    Training uses `batch(idx)` to read whole uint8 batches; `aug` is applied to
    batch tensors on the training device by `augment`."""

    def __init__(self, images, labels, classes, aug):
        self.images, self.labels, self.classes, self.aug = images, labels, classes, aug

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        x = torch.from_numpy(np.array(self.images[i])).permute(2, 0, 1)  # (C, H, W) uint8
        return x.float() / 127.5 - 1, int(self.labels[i])

    def batch(self, idx):
        idx = np.sort(np.asarray(idx))  # sorted reads are kinder to a memmap
        x = torch.from_numpy(np.ascontiguousarray(self.images[idx])).permute(0, 3, 1, 2)  # (B, C, H, W)
        return x, torch.from_numpy(self.labels[idx])

    def subset(self, idx):
        return ImageData(self.images[np.sort(idx)], self.labels[np.sort(idx)], self.classes, self.aug)

    def split(self):
        """Deterministic (train, held-out) split; held-out is 1/6 of the data, at most 5,000."""
        perm = np.random.RandomState(0).permutation(len(self))
        n_out = min(HELDOUT_MAX, len(self) // 6)
        return self.subset(perm[n_out:]), self.subset(perm[:n_out])


def load_dataset(spec, res, channels=None, crop=None, aug="flip", cond=False):
    """`spec` -> ImageData of (x, label), x float in [-1, 1] of shape (C, res, res).
    channels=None keeps 1 for built-in gray data and 3 when any folder is in the spec."""
    sources = [s.strip() for s in spec.split(",") if s.strip()]
    if not sources:
        raise UserError("--data is empty")
    if aug not in ("none", "flip", "deluxe"):
        raise UserError(f"unknown augmentation {aug!r}")
    if channels is None:
        channels = 1 if all(s in ("digits", "lfw") for s in sources) else 3
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


class _EpochBatches(torch.utils.data.Dataset):
    """Batch `first + i` of one epoch's permutation, as uint8 tensors: the unit a
    data-loading worker reads from the memmap."""

    def __init__(self, data, perm, batch_size, first, per_epoch):
        self.data, self.perm, self.batch_size, self.first, self.per_epoch = data, perm, batch_size, first, per_epoch

    def __len__(self):
        return self.per_epoch - self.first

    def __getitem__(self, i):
        b = self.first + i
        return self.data.batch(self.perm[b * self.batch_size:(b + 1) * self.batch_size])


def batches(data, batch_size, seed, start_step, device, workers=0):
    """Endless (epoch, x uint8 (B, C, H, W), labels) on `device`. Epoch e's order is
    a permutation drawn from (seed, e) alone, so a resumed run sees the same batches
    as an uninterrupted one. `workers` > 0 reads batches in worker processes (worth
    it when the cache is larger than RAM and the memmap reads hit the disk)."""
    per_epoch = max(1, len(data) // batch_size)
    epoch, first = divmod(start_step, per_epoch)
    pin = torch.device(device).type == "cuda"
    while True:
        g = torch.Generator().manual_seed(seed * 100003 + epoch)
        perm = torch.randperm(len(data), generator=g).numpy()
        # The loader draws its workers' base seed from `g`, not from the global RNG that
        # the training noise comes from (which would break exact resume).
        loader = torch.utils.data.DataLoader(_EpochBatches(data, perm, batch_size, first, per_epoch),
                                             batch_size=None, num_workers=workers, pin_memory=pin, generator=g)
        for x, y in loader:
            yield epoch, x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        epoch, first = epoch + 1, 0


def to_float(x):
    return x.float() / 127.5 - 1  # uint8 [0, 255] -> [-1, 1]


def augment(x, mode):
    """Batch augmentation of x in [-1, 1] (B, C, H, W), using the torch RNG of x's device."""
    if mode == "none":
        return x
    B = x.shape[0]
    flip = torch.rand(B, 1, 1, 1, device=x.device) < 0.5
    x = torch.where(flip, x.flip(3), x)
    if mode == "deluxe":
        angle = (torch.rand(B, device=x.device) * 2 - 1) * math.radians(5)
        cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)  # (B, 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
        brightness = (torch.rand(B, 1, 1, 1, device=x.device) * 2 - 1) * 0.1 * 2  # +-0.1 of the [0,1] range
        contrast = 1 + (torch.rand(B, 1, 1, 1, device=x.device) * 2 - 1) * 0.1
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * contrast + mean + brightness
        if x.shape[1] == 3:
            saturation = 1 + (torch.rand(B, 1, 1, 1, device=x.device) * 2 - 1) * 0.05
            gray = x.mean(dim=1, keepdim=True)
            x = (x - gray) * saturation + gray
    return x.clamp(-1, 1)


DIFFAUG_OPS = ("color", "translation", "cutout")


def diffaug_policy(text):
    """argparse type for --diffaug: '' (off) or a comma list of DIFFAUG_OPS."""
    ops = [o.strip() for o in text.split(",") if o.strip()]
    bad = [o for o in ops if o not in DIFFAUG_OPS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown DiffAugment op(s) {bad}; choose from {','.join(DIFFAUG_OPS)}")
    return tuple(ops)


def diff_augment(x, policy):
    """DiffAugment (Zhao et al. 2020): the same kind of random, differentiable
    augmentation on real *and* fake images, in D's and G's steps, so D cannot
    memorise a small training set and G's gradients pass through. x in [-1, 1]
    (B, C, H, W); draws from the torch RNG of x's device. Each op as in the paper's
    code: color (brightness +-0.5, saturation x[0, 2], contrast x[0.5, 1.5]),
    translation (up to 1/8 of the size, zero padded), cutout (a square of half the size)."""
    if not policy:
        return x
    B, C, H, W = x.shape
    rand = functools.partial(torch.rand, device=x.device, dtype=x.dtype)
    if "color" in policy:
        x = x + (rand(B, 1, 1, 1) - 0.5)
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * (rand(B, 1, 1, 1) * 2) + mean
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * (rand(B, 1, 1, 1) + 0.5) + mean
    rows = torch.arange(H, device=x.device).view(1, H, 1)  # (1, H, 1)
    cols = torch.arange(W, device=x.device).view(1, 1, W)  # (1, 1, W)
    if "translation" in policy:
        sh, sw = int(H * 0.125 + 0.5), int(W * 0.125 + 0.5)
        dy = torch.randint(-sh, sh + 1, (B, 1, 1), device=x.device)
        dx = torch.randint(-sw, sw + 1, (B, 1, 1), device=x.device)
        # Read pixel (i + dy, j + dx) from a copy padded by one zero pixel all round:
        # a shift past the border reads the padding.
        src_r = (rows + dy + 1).clamp(0, H + 1)  # (B, H, 1)
        src_c = (cols + dx + 1).clamp(0, W + 1)  # (B, 1, W)
        padded = F.pad(x, [1, 1, 1, 1])  # (B, C, H + 2, W + 2)
        b = torch.arange(B, device=x.device).view(B, 1, 1)
        x = padded.permute(0, 2, 3, 1)[b, src_r, src_c].permute(0, 3, 1, 2)  # (B, C, H, W)
    if "cutout" in policy:
        ch, cw = int(H * 0.5 + 0.5), int(W * 0.5 + 0.5)
        top = torch.randint(0, H + (1 - ch % 2), (B, 1, 1), device=x.device) - ch // 2
        left = torch.randint(0, W + (1 - cw % 2), (B, 1, 1), device=x.device) - cw // 2
        hole = (rows >= top) & (rows < top + ch) & (cols >= left) & (cols < left + cw)  # (B, H, W)
        x = x * (~hole).unsqueeze(1).to(x.dtype)
    return x


# ----------------------------------------------------------------------------- pretrained weights

def find_pretrained(name, url, path=None, env=None, flag="", download=True):
    """A pretrained weights file: `path` (a --flag), then $env, then the torch hub
    checkpoint cache (downloaded there when missing and online). The sha256 prefix in
    the file name (torch hub's convention) is checked. Raises UserError saying what
    to put where."""
    cache = Path(torch.hub.get_dir()) / "checkpoints" / name
    found = Path(path) if path else Path(os.environ[env]) if env and os.environ.get(env) else cache
    if not found.exists() and found == cache and download:
        try:
            download_file(url, cache)
        except OSError as e:
            warnings.warn(f"could not download {url}: {e}")
    if not found.exists():
        raise UserError(f"weights {name} not found at {found}. Download {url} and put it at {cache}"
                        f" (or pass {flag} PATH, or set {env}=PATH)")
    expected = name.rsplit("-", 1)[1].split(".")[0]
    h = hashlib.sha256()
    with open(found, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if not h.hexdigest().startswith(expected):
        raise UserError(f"{found} is not {name}: its sha256 does not start with {expected}")
    return found


def download_file(url, dst):
    import urllib.request
    from tqdm import tqdm
    dst.parent.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(url, timeout=20) as r:
        total = int(r.headers.get("Content-Length", 0))
        with tqdm(total=total, unit="B", unit_scale=True, desc=dst.name) as bar:
            def write(f):
                for chunk in iter(lambda: r.read(1 << 20), b""):
                    f.write(chunk)
                    bar.update(len(chunk))
            _atomic_write(dst, write)


# ----------------------------------------------------------------------------- device, AMP, seeding

def setup_device(args):
    """-> (device, amp enabled, amp dtype). AMP 'auto' is on for CUDA only: bf16
    autocast on CPUs without bf16 units is ~200x slower than fp32."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA device is available")
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    amp = args.amp == "on" or (args.amp == "auto" and device.type == "cuda")
    dtype = torch.float16 if args.amp_dtype == "fp16" else torch.bfloat16
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return device, amp, dtype


def autocast(device, amp, dtype):
    return torch.autocast(device.type, dtype=dtype, enabled=amp)


def grad_scaler(device, amp, dtype):
    # Loss scaling is needed for fp16 only; bf16 has fp32's exponent range.
    return torch.amp.GradScaler(device.type, enabled=amp and dtype == torch.float16)


def seed_everything(seed):
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state():
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- EMA

class EMA:
    """Exponential moving average of a model's weights, for sampling.
    Warm-up: the decay used at update n is min(decay, (1 + n) / (10 + n)), so early
    averages are not dominated by the random initial weights."""

    def __init__(self, model, decay):
        import copy
        self.decay, self.num_updates = decay, 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model):
        self.num_updates += 1
        d = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for ema_p, p in zip(self.module.parameters(), model.parameters()):
            ema_p.lerp_(p.detach(), 1 - d)
        for ema_b, b in zip(self.module.buffers(), model.buffers()):
            ema_b.copy_(b)  # BatchNorm statistics are not averaged, they are copied

    def state_dict(self):
        return {"module": self.module.state_dict(), "num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state):
        self.module.load_state_dict(state["module"])
        self.num_updates = state["num_updates"]


# ----------------------------------------------------------------------------- checkpoints, logs, images

def save_checkpoint(path, state):
    _atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path, map_location="cpu"):
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint not found: {path}")
    except Exception as e:  # torch raises UnpicklingError (or RuntimeError) for non-tensor payloads
        raise UserError(f"refusing to load {path}: it is not a plain tensor checkpoint and would need "
                        f"pickle to run code ({str(e).splitlines()[0][:120]})")


def training_state(objects, step, epoch, train_seconds, args):
    """Everything --resume needs: each object's state_dict (models, optimizers, EMA, grad
    scalers), the RNG state, step and epoch, the training time so far and the flags."""
    return {**{name: obj.state_dict() for name, obj in objects.items()}, "rng": rng_state(),
            "step": step, "epoch": epoch, "train_seconds": train_seconds, "args": vars(args)}


def start_or_resume(out, objects, args, device):
    """With --resume and OUT/ckpt.pt present, load it into `objects` (a training_state
    checkpoint); else start at step 0. -> (step, train_seconds, MetricsLog)."""
    path = Path(out) / "ckpt.pt"
    if not (args.resume and path.exists()):
        return 0, 0.0, MetricsLog(Path(out) / "metrics.jsonl")
    ckpt = load_checkpoint(path, map_location=device)
    for name, obj in objects.items():
        obj.load_state_dict(ckpt[name])
    set_rng_state(ckpt["rng"])
    print(f"resumed {path} at step {ckpt['step']}")
    return ckpt["step"], ckpt["train_seconds"], MetricsLog(Path(out) / "metrics.jsonl", resume_step=ckpt["step"])


def log_fid(log, row, step, epoch):
    """Write a {"kind": "fid"} row (when FID is on) and say it on stdout."""
    if row:
        log.write(kind="fid", step=step, epoch=epoch, **row)
        space = "(digits)" if row["features"] == "digits" else ""
        print(f"step {step}: FID{space} {row['fid']:.3f}, KID {row['kid']:.5f} "
              f"({row['n_fake']} fake vs {row['n_real']} real)")
    return row


class MetricsLog:
    """metrics.jsonl: one JSON object per line. On resume, rows logged after the
    checkpoint's step are dropped, so the log matches an uninterrupted run."""

    def __init__(self, path, resume_step=None):
        self.path = Path(path)
        if resume_step is not None and self.path.exists():
            rows = [json.loads(l) for l in self.path.read_text().splitlines() if l.strip()]
            keep = [r for r in rows if r.get("step", 0) <= resume_step]
            _atomic_write(self.path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in keep).encode()))
        elif resume_step is None:
            self.path.write_text("")

    def write(self, **row):
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


def save_grid(x, path, nrow=8):
    """x in [-1, 1] (B, C, H, W) -> PNG grid, 8-bit rounded as torchvision does. Atomic,
    so a run killed mid-write leaves no truncated PNG for progress.gif to choke on."""
    from torchvision.utils import save_image
    grid = (x.detach().float().cpu() + 1) / 2
    _atomic_write(path, lambda f: save_image(grid, f, format="PNG", nrow=nrow, padding=2, pad_value=1.0))


def save_gif(frames_dir, path, ms=200, fallback=None):
    """The epoch grids as an animated GIF; a run shorter than an epoch gets `fallback` (its final grid)."""
    files = sorted(Path(frames_dir).glob("epoch_*.png")) or ([Path(fallback)] if fallback else [])
    frames = [Image.open(p).convert("RGB") for p in files]
    if frames:
        _atomic_write(path, lambda f: frames[0].save(f, format="GIF", save_all=True, append_images=frames[1:],
                                                     duration=ms, loop=0))


def slerp(a, b, t):
    """Spherical interpolation between latents a, b (D,) at fractions t (K,) -> (K, D):
    Gaussian latents live near a sphere, and a straight line cuts through its inside."""
    a_n, b_n = a / a.norm(), b / b.norm()
    omega = torch.acos((a_n * b_n).sum().clamp(-1, 1))
    t = t[:, None]
    if omega.abs() < 1e-6:
        return (1 - t) * a + t * b
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)


def latent_walk(nz, seed, rows=8, cols=8):
    """(rows * cols, nz) latents: each row a slerp path between two random N(0, I)
    latents, for interp.png."""
    ends = torch.randn(2 * rows, nz, generator=torch.Generator().manual_seed(seed))
    t = torch.linspace(0, 1, cols)
    return torch.cat([slerp(ends[i], ends[rows + i], t) for i in range(rows)])


@torch.no_grad()
def save_gan_outputs(G, fixed_z, out, seed, labels=None):
    """A GAN's final pictures from its (EMA) generator G(z, y): samples.png from the
    fixed noise, interp.png (latent slerp rows), progress.gif from the epoch grids.
    Returns the sampling seconds per image."""
    t = time.time()
    final = G(fixed_z, labels)
    sample_seconds = (time.time() - t) / fixed_z.shape[0]
    save_grid(final, Path(out) / "samples.png")
    walk = latent_walk(fixed_z.shape[1], seed).to(fixed_z.device)
    walk_y = labels[:8].repeat_interleave(8) if labels is not None else None  # one class per row
    save_grid(G(walk, walk_y), Path(out) / "interp.png")
    save_gif(Path(out) / "samples", Path(out) / "progress.gif", fallback=Path(out) / "samples.png")
    return sample_seconds


@torch.no_grad()
def generate(G, n, nz, device, seed, labels=None, batch_size=256):
    """n images from G(z, y), z ~ N(0, I) from a generator seeded with `seed` (the same
    noise at every evaluation, and training's RNG untouched), in batches, gathered on
    the CPU. `labels` (n,) for a conditional G."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, n, batch_size):
        z = torch.randn(min(batch_size, n - i), nz, generator=g).to(device)
        y = labels[i:i + len(z)].to(device) if labels is not None else None
        out.append(G(z, y).float().cpu())
    return torch.cat(out)


def count_params(*models):
    return sum(p.numel() for m in models for p in m.parameters())


# ----------------------------------------------------------------------------- run bookkeeping

def prepare_run(args, script):
    """Make the run folder and write args.json. Returns the folder as a Path."""
    out = Path(args.out or f"runs/{script}")
    ckpt = out / "ckpt.pt"
    if out.exists() and ckpt.exists() and not args.resume:
        raise UserError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    (out / "samples").mkdir(parents=True, exist_ok=True)
    (out / "args.json").write_text(json.dumps(vars(args), indent=2) + "\n")
    return out


class TrainClock:
    """Training seconds so far, summed across resumes. Sampling and evaluation run
    inside `paused()` and do not count, so --max-minutes and images/s measure training."""

    def __init__(self, seconds=0.0):
        self._base, self._start = seconds, time.time()

    @property
    def seconds(self):
        return self._base + time.time() - self._start

    @contextlib.contextmanager
    def paused(self):
        t = time.time()
        try:
            yield
        finally:
            self._start += time.time() - t


def epoch_end(out, epoch, args, clock, save_samples, evaluate, checkpoint):
    """What every training loop does when an epoch ends: the epoch's sample grid
    (every --sample-every epochs) and an evaluation (every --fid-every), neither
    counted as training time, then a checkpoint (every --ckpt-every).
    `save_samples(path)`, `evaluate() -> row`, `checkpoint()`. Returns the row or None."""
    row = None
    with clock.paused():
        if epoch % args.sample_every == 0:
            save_samples(Path(out) / "samples" / f"epoch_{epoch:04d}.png")
        if args.fid_every and epoch % args.fid_every == 0:
            row = evaluate()
    if epoch % args.ckpt_every == 0:
        checkpoint()
    return row


def write_summary(out, model, params, step, epochs, images, train_seconds, sample_seconds, final, stop, **extra):
    """summary.json: the run's size, speed, final losses and metrics, and how it stopped
    (`complete` is false when a signal cut it short, so run_all.sh resumes it)."""
    summary = {"model": model, **extra, **params, "steps": step, "epochs": epochs, "train_seconds": train_seconds,
               "images_per_s": images / max(train_seconds, 1e-9), "sample_seconds_per_image": sample_seconds,
               "final": final, "stopped_by": stop.reason, "complete": not stop.signalled}
    write_json(Path(out) / "summary.json", summary)
    print(f"done: {step} steps in {train_seconds:.0f}s; outputs in {out}")
    return summary


class StopFlag:
    """Set by SIGINT/SIGTERM; `stop(elapsed)` is also true once the training time (not
    counting sampling and evaluation, and summed across resumes) passes --max-minutes.
    The loop checks it between steps and ends cleanly: checkpoint, final samples, metrics."""

    def __init__(self, max_minutes):
        self.max_seconds = max_minutes * 60 if max_minutes else None
        self.signalled, self.timed_out = None, False
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.signalled:  # a second Ctrl-C means now
            raise KeyboardInterrupt
        self.signalled = signal.Signals(signum).name
        print(f"\n{self.signalled}: finishing the current step, then checkpoint and samples", file=sys.stderr)

    def __call__(self, elapsed):
        self.timed_out = self.max_seconds is not None and elapsed > self.max_seconds
        return bool(self.signalled) or self.timed_out

    @property
    def reason(self):
        return self.signalled or ("max-minutes" if self.timed_out else "steps")

    def restore(self):
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def progress(total, initial, desc):
    """A tqdm bar; redrawn at most every 30 s when stderr is a log file, not a terminal."""
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True,
                mininterval=0.1 if sys.stderr.isatty() else 30)


def check_finite(step, out, **losses):
    for name, value in losses.items():
        if not math.isfinite(value):
            raise UserError(f"{name} is {value} at step {step}: training diverged; "
                            f"last good checkpoint: {Path(out) / 'ckpt.pt'}")


def write_json(path, obj):
    Path(path).write_text(json.dumps(obj, indent=2) + "\n")
