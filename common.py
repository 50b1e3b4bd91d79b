"""Training plumbing shared by the genstudy scripts, in the order a script meets it: errors and files,
ranks (torchrun), flags and presets, pretrained weights, device and AMP, EMA, the run's folder, its
checkpoints and resume, the training clock, the metrics log, images (grids, sampling in batches, the
final pictures and GIF, --generate's folders) and the run's summary. Under torchrun (several
processes, one a GPU or CPU slot) the same plumbing splits each batch and each evaluation over the
ranks, and only rank 0 writes files, prints and draws the bar (see `setup_device`). No model, loss,
sampler or dataset lives here: data.py holds the data, each model script its own model and loop.
"""

import argparse
import atexit
import contextlib
import copy
import functools
import hashlib
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
from PIL import Image
from tqdm import tqdm

CACHE_DIR = Path(os.environ.get("GENSTUDY_CACHE", Path.home() / ".cache" / "genstudy"))
GRAY_BUILTIN = ("digits", "mnist", "lfw")  # built-in data of one small channel: 16 px in the CPU preset


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
AUGMENTATIONS = ("none", "flip", "jitter", "deluxe")  # data.augment's modes


def add_common_args(parser):
    """The flags every training script shares (`parse_with_preset` adds them)."""
    a = parser.add_argument
    a("--preset", default="auto", choices=["auto", "cpu", "study"], help="auto: study on CUDA, cpu otherwise")
    a("--data", default="digits", help="digits | mnist | lfw | shapes | image folder | comma-separated mix")
    a("--res", type=int, default=32, choices=[16, 32, 64, 128, 256], help="16 suits the 8x8 digits on a CPU")
    a("--crop", type=int, default=None, help="center-crop N px before resizing (CelebA: 178)")
    a("--aug", default="flip", choices=AUGMENTATIONS)
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
    a("--sync-bn", action="store_true", help="under torchrun on GPUs: BatchNorm over the global batch")
    a("--workers", type=int, default=0, help="data-loading worker processes")
    a("--fid-every", type=int, default=25, help="epochs between FID evaluations (0 = only at the end)")
    a("--fid-n", type=int, default=5000, help="generated images per FID")
    a("--fid-n-real", type=int, default=5000, help="held-out real images per FID")
    a("--fid-features", default="auto", choices=["auto", "inception", "digits", "mnist", "shapes", "none"])
    a("--inception-weights", default=None, help="path to pt_inception-2015-12-05-6726825d.pth")
    a("--log-every", type=int, default=50, help="steps between metrics.jsonl rows")
    a("--sample-every", type=int, default=1, help="epochs between samples/epoch_NNNN.png")
    a("--ckpt-every", type=int, default=1, help="epochs between checkpoints")
    a("--cond", action="store_true", help="class-conditional model (labels from the data)")
    a("--generate", type=int, default=None, metavar="N", help="no training: N images from OUT's checkpoint")
    a("--generate-dir", default=None, help="where --generate writes (default OUT/generated)")
    a("--labels", default=None, help="labels to generate: 3 | 3,5 | 'red circle,blue square' | test | FILE")
    a(
        "--evaluator",
        default=None,
        metavar="PATH",
        help="the iCLEVR lab's classifier checkpoint: the accuracy judge",
    )
    return parser


# The CPU first look every script shares: 16 px (32 for shapes and folders), 5 minutes, FID once at the end.
# A script's own `cpu_preset` wins over it (cyclegan.py's res, for one).
CPU_PRESET = dict(res=16, aug="none", epochs=100_000, max_minutes=5.0, fid_every=0, fid_n=1000)
CPU_PRESET.update(log_every=25, sample_every=10, ckpt_every=10)


def parse_with_preset(parser, argv, script, cpu_preset, **defaults):
    """Add the shared flags (with the script's own `defaults` for some) and parse; --out defaults to
    runs/SCRIPT. Then fill each flag not given from the preset: `study` keeps the defaults, `cpu` takes
    CPU_PRESET and the script's `cpu_preset` (small networks); `auto` is study on CUDA, else cpu.
    --generate N samples the trained run in --out: each flag it was trained with that is not given here
    comes from its args.json (the model, data, sampler...)."""
    add_common_args(parser)
    parser.set_defaults(**defaults)
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
    args.out, args.script = args.out or f"runs/{script}", script  # the script too: a resume checks it
    saved = Path(args.out) / "args.json"
    if args.generate is not None and saved.exists():
        keep = given | {"generate", "generate_dir", "labels", "out", "resume", "device", "preset", "script"}
        vars(args).update({f: v for f, v in json.loads(saved.read_text()).items() if f not in keep})
    return args


# ----------------------------------------------------------------------------- pretrained weights
def download_file(url, dst):
    with urllib.request.urlopen(url, timeout=20) as r:
        size = int(r.headers.get("Content-Length", 0))
        with tqdm.wrapattr(r, "read", total=size, desc=dst.name) as source:
            atomic_write(dst, lambda f: shutil.copyfileobj(source, f, 1 << 20))


@rank0_first()  # a download is written by rank 0 alone
def find_pretrained(name, url, path=None, env=None, flag="", download=True):
    """A pretrained weights file: `path` (a --flag), $env, then the torch hub cache (downloaded there when
    missing, online and not GENSTUDY_OFFLINE=1), its sha256 checked against the name's prefix. UserError
    says in one line what is missing and where it goes."""
    cache = Path(torch.hub.get_dir()) / "checkpoints" / name
    found = Path(path) if path else Path(os.environ[env]) if env and os.environ.get(env) else cache
    why = ""
    if not found.exists() and found == cache and download and not os.environ.get("GENSTUDY_OFFLINE"):
        try:
            download_file(url, cache)
        except OSError as e:
            why = f" (download failed: {getattr(e, 'reason', e)})"
    if not found.exists():
        where = f"download {url} to {cache}, pass {flag} PATH or set {env}=PATH"
        raise UserError(f"weights {name} not found at {found}{why}; {where}")
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
    if not dist.is_initialized():  # once a process (the tests run several jobs in one launch)
        device_id = torch.device("cuda", torch.cuda.current_device()) if on_cuda else None
        dist.init_process_group("nccl" if on_cuda else "gloo", device_id=device_id)
        # The ranks agree on when to stop at every step: over Gloo on the CPU, since an NCCL collective
        # would make each step wait for the GPU.
        _AGREE = dist.new_group(backend="gloo") if on_cuda else dist.group.WORLD
        atexit.register(dist.destroy_process_group)
    # CPU batches are channels-last (the cache's layout), so are the weights' gradients, and DDP's
    # buckets (laid out like the weights) then take a copy: a warning each run, no cost worth one here.
    warnings.filterwarnings("ignore", "Grad strides do not match bucket view strides")
    if rank() != 0:
        sys.stdout = open(os.devnull, "w")
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


# ----------------------------------------------------------------------------- runs and checkpoints
def prepare_run(args, model_flags):
    """Make the run folder, seed -> (folder, device, autocast, scaler). A resume of another script's run,
    or with a flag of `model_flags` set otherwise than in the run's args.json, is refused, naming each
    flag; start_or_resume writes args.json once the checkpoint has loaded, so that a refused resume leaves
    every file as it was. --generate: the run must hold a checkpoint (parse_with_preset took its flags)."""
    out = Path(args.out)
    saved = json.loads((out / "args.json").read_text()) if (out / "args.json").exists() else {}
    if (args.resume or args.generate is not None) and saved.get("script", args.script) != args.script:
        raise UserError(f"{out} is a {saved['script']}.py run, not a {args.script}.py one; use another --out")
    if args.generate is not None:
        if not (out / "ckpt.pt").exists() or not (out / "args.json").exists():
            raise UserError(f"--generate samples a trained run, and {out} holds no checkpoint (--out RUN)")
        if args.generate < 1:
            raise UserError(f"--generate N needs N >= 1, got {args.generate}")
        if under_torchrun():
            raise UserError("--generate runs in one process, not under torchrun")
        torch.manual_seed(args.seed)
        return (out, *setup_device(args))
    if (out / "ckpt.pt").exists() and not args.resume:
        raise UserError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if args.resume and (out / "ckpt.pt").exists() and saved:
        now = json.loads(json.dumps(vars(args)))
        differ = [f for f in model_flags if f in saved and saved[f] != now[f]]
        if differ:
            said = ", ".join(f"--{f.replace('_', '-')} {saved[f]} (now {now[f]})" for f in differ)
            raise UserError(f"cannot resume {out}: it was trained with {said}; use another --out")
    (out / "samples").mkdir(parents=True, exist_ok=True)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)  # also seeds every CUDA device
    return (out, *setup_device(args))


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


def start_or_resume(out, objects, args, total_steps, desc):
    """Load OUT/ckpt.pt into `objects` with --resume or --generate, else start at 0, then write the run's
    args.json (not for --generate) -> (step, clock, log):
    the TrainClock of a run of `total_steps` (unless --max-steps) shown as `desc`, and its MetricsLog
    (None for --generate, which reads the run and writes no log)."""
    path, step, seconds, resumed = Path(out) / "ckpt.pt", 0, 0.0, False
    if (args.resume or args.generate) and path.exists():
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
        if args.generate:
            return ckpt["step"], None, None
        torch.set_rng_state(ckpt["rng"]["cpu"])
        if "cuda" in ckpt["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
        step, seconds, resumed = ckpt["step"], ckpt["train_seconds"], True
        print(f"resumed {path} at step {step}")
    write_json(Path(out) / "args.json", vars(args))
    clock = TrainClock(args, seconds, total_steps, step, desc)
    return step, clock, MetricsLog(Path(out) / "metrics.jsonl", clock, step if resumed else None)


def save_training_state(out, objects, step, epoch, train_seconds, args):
    """OUT/ckpt.pt: each object's state_dict (models, optimizers, EMA, scaler), RNGs, step, time, flags."""
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    state = {name: obj.state_dict() for name, obj in objects.items()}
    state.update(rng=rng, step=step, epoch=epoch, train_seconds=train_seconds, args=vars(args))
    save_checkpoint(Path(out) / "ckpt.pt", state)


class TrainClock:
    """Training seconds summed across resumes (evaluation inside `paused()` does not count, so --max-minutes
    and images/s measure training); `stop(step)`: after `total` steps (--max-steps, else `epoch_steps`), a
    SIGINT/SIGTERM or --max-minutes; the tqdm `bar`, over steps, or over minutes when --max-minutes bounds the
    run and --max-steps does not (steps from --epochs would show 0/2,300,000 and an ETA of days)."""

    def __init__(self, args, seconds, epoch_steps, step, desc):
        self.total = args.max_steps if args.max_steps is not None else epoch_steps
        self._base, self._start, self._end = seconds, None, None  # the clock starts at the first `stop`
        self.max_seconds = args.max_minutes * 60 if args.max_minutes else math.inf
        self.signalled, self.timed_out = None, False
        self.by_time = args.max_minutes is not None and args.max_steps is None
        fmt = "{l_bar}{bar}| {n:.1f}/{total:g} min [{elapsed}<{remaining}{postfix}]" if self.by_time else None
        total, initial = (args.max_minutes, seconds / 60) if self.by_time else (self.total, step)
        refresh = 0.1 if sys.stderr.isatty() else 30
        # delay: drawn from the first step on, so that an error before it is a line of its own
        options = dict(bar_format=fmt, mininterval=refresh, disable=rank() != 0, delay=1e-3)
        self.bar = tqdm(total=total, initial=initial, desc=desc, **options)
        self.checked = seconds  # the training seconds at the last `stop` check

    @property
    def seconds(self):
        if self._start is None:  # not started: the seconds of earlier runs
            return self._base
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
        """Stop before this step? Asked before each step; the first ask starts the clock, and from then
        on a SIGINT/SIGTERM finishes the step in flight, then stops."""
        if self._start is None:
            self._start = time.time()
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, self._handle)
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
        now = time.time()
        self._start, self._end = self._start or now, now
        self.bar.close()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


# ----------------------------------------------------------------------------- metrics log
SKIPPED_ROWS = 3  # under fp16, this many logged rows in a row with a non-finite loss stop the run


class MetricsLog:
    """metrics.jsonl, a JSON object a line; on resume, rows after the checkpoint's step are dropped.
    `train` logs a training row and shows it on the clock's bar; `eval` logs an evaluation row."""

    def __init__(self, path, clock, resume_step=None):
        self.path, self.clock, self.nonfinite = Path(path), clock, 0  # nonfinite: rows in a row
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

    def train(self, step, epoch, losses, scaler=None):
        """A training row. A non-finite loss stops the run, naming the step and the last checkpoint,
        except under an enabled GradScaler, which skips an overflowed fp16 step by design and lowers its
        scale: there only SKIPPED_ROWS rows in a row do (an isolated inf is logged and training goes on).
        Under torchrun each rank's loss is of its share of the batch: the logged one is their mean."""
        if world_size() > 1:
            values = torch.tensor(list(losses.values()), dtype=torch.float64)
            dist.all_reduce(values, group=_AGREE)
            losses = dict(zip(losses, (values / world_size()).tolist()))
        bad = [f"{name} is {value}" for name, value in losses.items() if not math.isfinite(value)]
        self.nonfinite = self.nonfinite + 1 if bad else 0
        if bad and not (scaler is not None and scaler.is_enabled() and self.nonfinite < SKIPPED_ROWS):
            last = f"last good checkpoint: {self.path.parent / 'ckpt.pt'}"
            self.clock.bar.close()  # the message on a line of its own, after the bar's last state
            raise UserError(f"{bad[0]} at step {step}: training diverged; {last}")
        self.write(kind="train", step=step, epoch=epoch, **losses)
        self.clock.bar.set_postfix(losses, refresh=False)  # drawn at the bar's own pace, not every row

    def eval(self, row, step, epoch):
        """An evaluation row (kind "fid" when it has an FID, else "eval"; {} logs nothing); says the FID
        -> row."""
        if row:
            self.write(kind="fid" if "fid" in row else "eval", step=step, epoch=epoch, **row)
        if "fid" in row:
            space = f"({row['features']})" if row["features"] != "inception" else ""
            fid, kid, n_fake, n_real = row["fid"], row["kid"], row["n_fake"], row["n_real"]
            print(f"step {step}: FID{space} {fid:.3f}, KID {kid:.5f} ({n_fake} fake vs {n_real} real)")
        return row


# ----------------------------------------------------------------------------- images
def save_grid(x, path, nrow=8):
    """x in [-1, 1] (B, C, H, W) -> RGB PNG grid, `nrow` images a row, 2 px white padding, rounded to
    8 bits as torchvision's save_image does (and byte for byte its file, without importing torchvision at
    every start); (R, K, C, H, W): R rows of K. Atomic, for progress.gif's sake."""
    if x.dim() == 5:
        x, nrow = x.flatten(0, 1), x.shape[1]
    x = (x.detach().float().cpu() + 1) / 2
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
    (n, c, h, w), cols = x.shape, min(nrow, x.shape[0])
    grid = torch.ones(c, (h + 2) * math.ceil(n / cols) + 2, (w + 2) * cols + 2)
    for i, image in enumerate(x):
        row, col = divmod(i, cols)
        grid[:, 2 + row * (h + 2) :][:, :h, 2 + col * (w + 2) :][:, :, :w] = image
    grid = x[0] if n == 1 else grid  # one image: no padding
    pixels = grid.mul(255).add(0.5).clamp(0, 255).permute(1, 2, 0).to(torch.uint8).numpy()
    atomic_write(path, lambda f: Image.fromarray(pixels).save(f, format="PNG"))


def label_names(y, classes):
    """A label (index or multi-hot row) in words: '3', 'red circle + blue square'."""
    return classes[int(y)] if y.dim() == 0 else " + ".join(classes[i] for i in y.nonzero().flatten())


def save_outputs(out, grids, conditions=None, classes=None):
    """A run's final pictures: each of `grids` ({file name: images}) as a grid in OUT; for each condition
    list ({name: (images, labels)}) OUT/cond_NAME.png, an 8x4 grid of one cell a condition, and beside it
    cond_NAME.txt, each cell's labels; then progress.gif from the epoch grids (a run shorter than an
    epoch: its first grid)."""
    for name, x in grids.items():
        save_grid(x, Path(out) / name)
    for name, (x, labels) in (conditions or {}).items():
        save_grid(x, Path(out) / f"cond_{name}.png", nrow=8)
        legend = "".join(
            f"row {i // 8 + 1}, col {i % 8 + 1}: {label_names(y, classes)}\n" for i, y in enumerate(labels)
        )
        atomic_write(Path(out) / f"cond_{name}.txt", lambda f, text=legend: f.write(text.encode()))
    frames = sorted((Path(out) / "samples").glob("epoch_*.png")) or [Path(out) / next(iter(grids))]
    if rank() == 0:  # it wrote the grids
        frames = [Image.open(p).convert("RGB") for p in frames]
        save = functools.partial(frames[0].save, format="GIF", save_all=True, duration=200, loop=0)
        atomic_write(Path(out) / "progress.gif", lambda f: save(f, append_images=frames[1:]))


def slerp(a, b, t):
    """Slerp between latents a, b (D,) at t (K,) -> (K, D): Gaussian latents lie near a sphere, not a line."""
    a_n, b_n = a / a.norm(), b / b.norm()
    omega = torch.acos((a_n * b_n).sum().clamp(-1, 1))
    t = t[:, None]
    if omega.abs() < 1e-6:
        return (1 - t) * a + t * b
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)


@torch.no_grad()
def save_samples(G, nz, seed, labels, conditions, classes, out):
    """A generator's final pictures, G(z, y) with z ~ N(0, I) (nz,): samples.png (the 64 latents of the
    epoch grids, `seed`'s), interp.png (a slerp between two random latents a row, one label a row),
    cond_*.png and progress.gif (`save_outputs`) -> seconds a sample."""
    device = next(G.parameters()).device
    final, seconds = timed(generate, G, 64, nz, device, seed, labels)
    ends = torch.randn(16, nz, generator=torch.Generator().manual_seed(seed + 1))
    walk = torch.cat([slerp(ends[i], ends[8 + i], torch.linspace(0, 1, 8)) for i in range(8)])  # (64, nz)
    walk_y = labels[:8].repeat_interleave(8, 0).to(device) if labels is not None else None
    cells = {name: (generate(G, 32, nz, device, seed, y[:32]), y[:32]) for name, y in conditions.items()}
    save_outputs(out, {"samples.png": final, "interp.png": G(walk.to(device), walk_y)}, cells, classes)
    return seconds / 64


def save_generated(x, labels, classes, folder):
    """--generate's output: x in [-1, 1] (N, C, H, W) as 000000.png ... through the grids' 8-bit
    rounding (so FID tools score what a grid shows), labels.csv (file, label ids, names) if labelled, and
    for N <= 256 the images 8 a row beside the folder (FOLDER_grid.png, out of FID tools' way: the iCLEVR
    lab's submission grid)."""
    folder, grid = Path(folder), Path(folder).with_name(f"{Path(folder).name}_grid.png")
    folder.mkdir(parents=True, exist_ok=True)
    for old in [*folder.glob("[0-9][0-9][0-9][0-9][0-9][0-9].png"), folder / "labels.csv", grid]:
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
    if len(x) <= 256:
        save_grid(x, grid, nrow=8)
    print(f"wrote {len(pixels)} images to {folder}")
    return folder


@torch.no_grad()
def generate(G, n, shape, device, seed, labels=None, batch_size=256):
    """n images from G(noise, labels) (a GAN's generator, a VAE's decoder, a DDPM's sampler) for `labels`
    (n of them, or None), the noise N(0, I) of `shape` a sample (nz, or (C, H, W)) drawn on the CPU from
    `seed`: the same noise at every call. In batches, gathered on the CPU. Randomness G draws itself (a
    stochastic sampler's) is seeded too, and training's RNG is left as it was. Under torchrun each rank
    makes its `share` of the n images from the same n noise samples, and all get all."""
    g, shape = torch.Generator().manual_seed(seed), (shape,) if isinstance(shape, int) else tuple(shape)
    noise = torch.cat(
        [torch.randn(min(batch_size, n - i), *shape, generator=g) for i in range(0, n, batch_size)]
    )
    rows, out = share(n), []  # (n >= the number of ranks: every rank gets rows)
    with torch.random.fork_rng(devices=[device] if torch.device(device).type == "cuda" else []):
        torch.manual_seed(seed + rows.start)  # each rank's own stream
        for i in range(rows.start, rows.stop, batch_size):
            j = min(i + batch_size, rows.stop)
            y = labels[i:j].to(device) if labels is not None else None
            out.append(G(noise[i:j].to(device), y).float().cpu())
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


# ----------------------------------------------------------------------------- summary
def write_summary(out, clock, run, models=None, images=0):
    """summary.json -> its dict. After a SIGINT/SIGTERM (the checkpoint written): `run` and the time,
    marked incomplete, to leave within seconds (a cluster's preemption gives 30-90 s of grace); --resume
    runs the final evaluation (run_all.sh does so on its next pass). A finished run: `run` (model, steps,
    final metrics...), the sizes of `models` ({name: module or None}), training time and speed (`images`
    read) and what stopped it."""
    if clock.signalled:
        summary = {**run, "train_seconds": clock.seconds, "stopped_by": clock.signalled, "complete": False}
        write_json(Path(out) / "summary.json", summary)
        print(f"{clock.signalled}: checkpoint at step {run['steps']} in {out}; --resume finishes the run")
        return summary
    models = {name: m for name, m in models.items() if m is not None}
    sizes = {f"params_{name}": sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    summary = {**run, "params": sum(sizes.values()), **sizes, "train_seconds": clock.seconds}
    summary.update(images_per_s=images / max(clock.seconds, 1e-9))
    summary.update(stopped_by="max-minutes" if clock.timed_out else "steps", complete=True)
    write_json(Path(out) / "summary.json", summary)
    print(f"done: {run['steps']} steps in {clock.seconds:.0f}s; outputs in {out}")
    return summary
