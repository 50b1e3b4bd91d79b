"""DDPM with a U-Net, the DDIM sampler, and the study's phase-4 evolution.

Papers: Ho, Jain & Abbeel, "Denoising Diffusion Probabilistic Models" (2020) -- DDPM;
Nichol & Dhariwal, "Improved DDPM" (2021) -- cosine schedule, eq. 17; Salimans & Ho,
"Progressive Distillation" (2022) -- v-prediction, sec. 4; Song, Meng & Ermon, "Denoising
Diffusion Implicit Models" (2021) -- DDIM, eq. 12.

Study steps (phase 4), each fixing what the one before showed:
  4.1  python ddpm.py --schedule linear --pred eps          the DDPM baseline
  4.2  python ddpm.py --schedule cosine --pred eps          linear wastes its last steps on pure noise
  4.3  python ddpm.py --schedule cosine --pred v            eps-prediction is poor at high noise
                                                            (x0 = (x_t - ..)/sqrt(abar) blows up)
  4.4  python ddpm.py --schedule cosine --pred v --base-ch 192 --attn-res 8,16,32    wider, more attention

Presets (--preset auto: study on CUDA, cpu elsewhere; a flag given explicitly wins over either):
  study  the flags' defaults below: base width 128, 2 res blocks a level, 100 DDIM steps, FID
         from 5,000 samples every 25 epochs, 100 epochs
  cpu    a first look in about 6 minutes: digits at 16 px (their source is 8x8), base width 32,
         levels 1,2,2, one res block a level, attention at 8x8, no dropout, lr 1e-3, 5 minutes
         of training, then FID(digits) of 1,000 samples with 20 DDIM steps

Forward process: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (Ho eq. 4). The network predicts
eps or v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0 and is trained with plain MSE on that target
(Ho's L_simple, eq. 14): Algorithm 1 is the training step in main() (draw t and eps, then
`diffusion_loss`); Algorithm 2 is `ddpm_sample`, and `ddim_sample` its deterministic shortcut.
The sampler is chosen once (`choose_sampler`); every output (grids, FID, --generate) calls it
through `sample`, always with the EMA weights.

Two later refinements, off by default (the study's steps are the papers' baseline): `--min-snr GAMMA`
weights each timestep's loss by min(SNR, gamma) in x0 terms (Hang et al. 2023, "Efficient Diffusion
Training via Min-SNR Weighting"; gamma = 5), so the many nearly clean timesteps stop dominating;
`--scale-shift` lets the t (and label) embedding scale and shift each ResBlock's normalised features
(AdaGN, Dhariwal & Nichol 2021, "Diffusion Models Beat GANs", sec. 3) instead of adding to them.

Departures from the papers: AdamW instead of Adam; no learning-rate warm-up (the CPU runs
are short); the U-Net's output conv starts at zero; GroupNorm uses 32 groups only where
that leaves at least 4 channels a group, so small widths work; DDIM clips the predicted x0
to [-1, 1] and re-derives eps from it (as the reference implementations do), and its last
step uses abar_prev = 1.

Conditional (phase 6): `--cond` adds a label embedding (one linear layer on the one-hot, or for
shapes multi-hot, label vector) to the timestep embedding, and trains with classifier-free guidance
(Ho & Salimans 2022): `--p-uncond 0.1` replaces the label by the null condition (a zero vector,
what y=None gives) for that fraction of the batch, so one network learns both eps(x_t, t, y) and
eps(x_t, t). `--guidance S` samples with eps_u + S (eps_c - eps_u): S = 1 is plain conditional,
S = 0 unconditional, S > 1 trades diversity for fidelity (the paper's w is S - 1). With v-prediction
the same blend is applied to v, which is the same thing (eps is linear in v at fixed x_t and t).
`--guidance 1,0,2,4` also scores the final weights at each further S (phase 6's sweep).
`--generate N` draws N images from a finished run (`--labels`, `--guidance`, the sampler flags).
"""

import argparse
import functools
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import common
import data
from evaluate import Evaluator, save_generated


# ----------------------------------------------------------------------------- U-Net
def timestep_embedding(t, dim):
    """Sinusoidal embedding of integer timesteps t (B,) -> (B, dim), as in the Transformer."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device) / half)  # (half,)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=1)


def norm(ch):
    # 32 groups as in DDPM where the width allows, but never fewer than 4 channels a group.
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if ch % g == 0 and (ch // g >= 4 or g == 1))
    return nn.GroupNorm(groups, ch)


class ResBlock(nn.Module):
    """Two 3x3 convs and a skip. The embedding of t (and of the label) is added to every channel (DDPM),
    or with scale_shift it scales and shifts the normalised features, GN(h) (1 + scale) + shift (AdaGN,
    Dhariwal & Nichol 2021, sec. 3.2)."""

    def __init__(self, c_in, c_out, t_dim, dropout, scale_shift=False):
        super().__init__()
        self.norm1, self.conv1 = norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.t_proj, self.scale_shift = nn.Linear(t_dim, 2 * c_out if scale_shift else c_out), scale_shift
        self.norm2, self.conv2 = norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, t_emb):
        h = self.conv1(F.silu(self.norm1(x)))
        emb = self.t_proj(F.silu(t_emb))[:, :, None, None]  # (B, C or 2C, 1, 1)
        if self.scale_shift:
            scale, shift = emb.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + emb)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Single-head self-attention over the H*W positions, residual."""

    def __init__(self, ch):
        super().__init__()
        self.norm, self.qkv, self.proj = norm(ch), nn.Conv2d(ch, 3 * ch, 1), nn.Conv2d(ch, ch, 1)

    def forward(self, x):
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).flatten(2).transpose(1, 2)[:, None]  # (B, 1 head, HW, 3C)
        # 4-D (batch, heads, positions, channels): the layout the fused (flash / memory-efficient)
        # kernels take; they never build the HW x HW attention matrix.
        h = F.scaled_dot_product_attention(*qkv.chunk(3, dim=-1))  # (B, 1, HW, C)
        return x + self.proj(h[:, 0].transpose(1, 2).reshape(B, C, H, W))


class UNet(nn.Module):
    """model(x_t (B, C, res, res), t (B,) long, y=None) -> eps or v prediction, same shape as x_t.
    Levels of `ch_mult`, `num_res_blocks` ResBlocks each, attention at the resolutions in
    `attn_res`, a skip connection from every down block to its mirror up block. With n_classes,
    the label y (indices (B,) or label vectors (B, K)) is embedded and added to t's embedding;
    y=None is the null condition (as a zero label vector)."""

    def __init__(
        self,
        channels=3,
        base_ch=128,
        ch_mult=(1, 2, 2, 2),
        num_res_blocks=2,
        attn_res=(16,),
        dropout=0.1,
        res=32,
        n_classes=0,
        scale_shift=False,
    ):
        super().__init__()
        t_dim = 4 * base_ch
        self.base_ch, self.n_classes = base_ch, n_classes
        self.t_mlp = nn.Sequential(nn.Linear(base_ch, t_dim), nn.SiLU(), nn.Linear(t_dim, t_dim))
        # No bias: the zero vector (the null condition) embeds to exactly zero.
        self.label_embed = nn.Linear(n_classes, t_dim, bias=False) if n_classes else None
        self.conv_in = nn.Conv2d(channels, base_ch, 3, padding=1)

        def block(c_in, c_out, size):  # a ResBlock, then attention where the feature map is that size
            # The ResBlock is made first: the init order of the seed.
            res_block = ResBlock(c_in, c_out, t_dim, dropout, scale_shift)
            return nn.ModuleList([res_block, Attention(c_out) if size in attn_res else nn.Identity()])

        self.down, skips, ch, size = nn.ModuleList(), [base_ch], base_ch, res
        for level, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                self.down.append(block(ch, base_ch * mult, size))
                ch = base_ch * mult
                skips.append(ch)
            if level < len(ch_mult) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))  # halve H, W
                skips.append(ch)
                size //= 2
        self.mid1, self.mid_attn = ResBlock(ch, ch, t_dim, dropout, scale_shift), Attention(ch)
        self.mid2 = ResBlock(ch, ch, t_dim, dropout, scale_shift)

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(ch_mult))):
            for _ in range(num_res_blocks + 1):
                self.up.append(block(ch + skips.pop(), base_ch * mult, size))
                ch = base_ch * mult
            if level > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(ch, ch, 3, padding=1)))
                size *= 2
        self.out = nn.Sequential(norm(ch), nn.SiLU(), nn.Conv2d(ch, channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)  # start as the zero predictor: a calm first step
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x, t, y=None):
        t_emb = self.t_mlp(timestep_embedding(t, self.base_ch))  # (B, 4 * base_ch)
        if y is not None and self.label_embed is not None:
            t_emb = t_emb + self.label_embed(data.label_vector(y, self.n_classes).to(t_emb.dtype))
        h = self.conv_in(x)
        hs = [h]
        for layer in self.down:
            h = layer[1](layer[0](h, t_emb)) if isinstance(layer, nn.ModuleList) else layer(h)
            hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, t_emb)), t_emb)
        for layer in self.up:
            if isinstance(layer, nn.ModuleList):
                h = layer[1](layer[0](torch.cat([h, hs.pop()], dim=1), t_emb))
            else:
                h = layer(h)
        return self.out(h)


# ----------------------------------------------------------------------------- diffusion: pure functions
def make_betas(schedule, T):
    """beta_1..beta_T as float64 (T,). linear: 1e-4..0.02 (Ho et al.). cosine: from
    abar(t) = f(t) / f(0), f(t) = cos^2((t/T + s) / (1 + s) * pi/2), s = 0.008, with
    beta_t = 1 - abar(t) / abar(t-1) clipped at 0.999 (Nichol & Dhariwal eq. 17)."""
    if schedule == "linear":
        return torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    if schedule == "cosine":
        s = 0.008
        steps = torch.arange(T + 1, dtype=torch.float64) / T
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        alpha_bar = f / f[0]
        return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
    raise ValueError(f"unknown schedule {schedule!r}")


def _at(a, t, x):
    """a[t] shaped to broadcast against x: (B,) -> (B, 1, 1, 1); `a` lives on x's device."""
    return a[t].float().view(-1, *([1] * (x.dim() - 1)))


def q_sample(x0, t, noise, alpha_bar):
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (Ho eq. 4)."""
    ab = _at(alpha_bar, t, x0)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def v_target(x0, noise, alpha_bar_t):
    """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0 (Salimans & Ho sec. 4); alpha_bar_t broadcasts."""
    return alpha_bar_t.sqrt() * noise - (1 - alpha_bar_t).sqrt() * x0


def to_x0_eps(out, x_t, alpha_bar_t, pred):
    """The network's output (eps or v) at x_t -> (x0, eps)."""
    a, s = alpha_bar_t.sqrt(), (1 - alpha_bar_t).sqrt()
    if pred == "eps":
        return (x_t - s * out) / a, out
    return a * x_t - s * out, s * x_t + a * out  # from v: x0 = a x_t - s v, eps = s x_t + a v


def min_snr_weight(alpha_bar_t, pred, gamma):
    """Min-SNR-gamma loss weights (Hang et al. 2023, eq. 8 and sec. 3.4): each timestep's MSE counts as
    if the target were x0 with weight min(SNR_t, gamma), SNR_t = abar_t / (1 - abar_t); as eps and v errors
    are x0 errors times 1/SNR and 1/(SNR + 1), that is min(SNR, gamma) / SNR for eps and min(SNR, gamma) /
    (SNR + 1) for v. The nearly clean timesteps, easy and many, stop dominating the gradient."""
    snr = alpha_bar_t / (1 - alpha_bar_t)
    return snr.clamp(max=gamma) / (snr if pred == "eps" else snr + 1)


def diffusion_loss(model, x0, t, noise, alpha_bar, pred, y=None, min_snr=0.0):
    """Algorithm 1's loss, L_simple (Ho eq. 14): the MSE between the network's output at
    x_t = q_sample(x0, t, noise) and its target, eps itself or v; with min_snr > 0 each image's MSE is
    weighted by `min_snr_weight`. The caller draws t ~ U{0..T-1} (B,) and noise ~ N(0, I) like x0."""
    x_t = q_sample(x0, t, noise, alpha_bar)
    target = noise if pred == "eps" else v_target(x0, noise, _at(alpha_bar, t, x0))
    out = model(x_t, t, y) if y is not None else model(x_t, t)
    if not min_snr:
        return F.mse_loss(out, target)
    weight = min_snr_weight(alpha_bar[t].float(), pred, min_snr)  # (B,)
    return (weight * ((out.float() - target) ** 2).flatten(1).mean(1)).mean()


def drop_labels(y, keep):
    """Classifier-free guidance's training: the label vectors (B, K) where keep (B,) is False become the
    null condition, zero, so the network also learns the unconditional prediction."""
    return y * keep[:, None]


def guided(model, x, t, labels, guidance):
    """Classifier-free guidance (Ho & Salimans eq. 6, w = guidance - 1): out_u + guidance (out_c - out_u),
    out the eps or v prediction; no labels: the unconditional model. 1 and 0 need one network call."""
    if labels is None or guidance == 0:
        return model(x, t)
    out_c = model(x, t, labels.to(x.device))
    if guidance == 1:
        return out_c
    out_u = model(x, t)
    return out_u + guidance * (out_c - out_u)


# ----------------------------------------------------------------------------- sampling
def ddim_timesteps(T, steps, spacing="leading"):
    """The S timesteps DDIM visits, descending. For T = 1000, S = 10: leading 900..0,
    trailing 999..99, linspace 999..0 (Lin et al. 2024, table 2, name these)."""
    if spacing == "leading":
        ts = np.arange(steps) * (T // steps)
    elif spacing == "trailing":
        ts = np.round(np.arange(T, 0, -T / steps)).astype(np.int64)[::-1] - 1
    elif spacing == "linspace":
        ts = np.linspace(0, T - 1, steps).round().astype(np.int64)
    else:
        raise ValueError(f"unknown spacing {spacing!r}")
    return [int(t) for t in ts[::-1]]


@torch.no_grad()
def ddim_sample(model, shape, alpha_bar, steps, pred, eta=0.0, spacing="leading", x_T=None):
    """DDIM (Song et al. eq. 12): x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps
    + sigma z, with sigma = eta sqrt((1 - abar_prev) / (1 - abar) (1 - abar / abar_prev)).
    eta = 0 is deterministic. The previous timestep is the next entry of the schedule array;
    after the last entry, abar_prev = 1. Starts from x_T, or from N(0, I) noise of `shape`; runs on
    the noise's device, so any callable model(x, t) works (a guided one: see `sample`)."""
    x = x_T if x_T is not None else torch.randn(shape)
    ts = ddim_timesteps(len(alpha_bar), steps, spacing)
    ab_all = alpha_bar.to(x.device)
    for i, t in enumerate(ts):
        ab = ab_all[t].float()
        ab_prev = ab_all[ts[i + 1]].float() if i + 1 < len(ts) else torch.tensor(1.0, device=x.device)
        out = model(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)).float()
        x0 = to_x0_eps(out, x, ab, pred)[0].clamp(-1, 1)
        eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()  # re-derived from the clipped x0
        sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).sqrt()
        x = ab_prev.sqrt() * x0 + (1 - ab_prev - sigma**2).clamp(min=0).sqrt() * eps
        if eta > 0 and i + 1 < len(ts):
            x = x + sigma * torch.randn_like(x)
    return x


@torch.no_grad()
def ddpm_sample(model, shape, betas, pred, x_T=None):
    """Algorithm 2: ancestral sampling through all T steps (Ho eq. 6-7, fixed-small variance beta~_t).
    Noise and device as in ddim_sample."""
    x = x_T if x_T is not None else torch.randn(shape)
    betas = betas.to(x.device)
    alphas = 1 - betas
    alpha_bar = torch.cumprod(alphas, 0)
    for t in reversed(range(len(betas))):
        ab = alpha_bar[t].float()
        ab_prev = (alpha_bar[t - 1] if t > 0 else torch.tensor(1.0, device=x.device)).float()
        out = model(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)).float()
        x0 = to_x0_eps(out, x, ab, pred)[0].clamp(-1, 1)
        # Posterior q(x_{t-1} | x_t, x0): mean is a blend of x0 and x_t (Ho eq. 7).
        coef_x0 = (betas[t] * ab_prev.sqrt() / (1 - ab)).float()
        coef_xt = ((1 - ab_prev) * alphas[t].sqrt() / (1 - ab)).float()
        x = coef_x0 * x0 + coef_xt * x
        if t > 0:
            x = x + (betas[t] * (1 - ab_prev) / (1 - ab)).float().sqrt() * torch.randn_like(x)
    return x


def choose_sampler(args, alpha_bar, betas):
    """The sampler the flags ask for, chosen once for every output: sampler(model, shape, x_T=...)."""
    if args.sampler == "ddim":
        ddim = dict(steps=args.sample_steps, pred=args.pred, eta=args.eta, spacing=args.spacing)
        return functools.partial(ddim_sample, alpha_bar=alpha_bar, **ddim)
    return functools.partial(ddpm_sample, betas=betas, pred=args.pred)


def sample(sampler, model, x_T, labels=None, guidance=1.0):
    """Images in [-1, 1] from noise x_T (B, C, H, W) by `sampler` (`choose_sampler`'s), the model guided
    toward `labels` (see `guided`)."""
    return sampler(functools.partial(guided, model, labels=labels, guidance=guidance), x_T.shape, x_T=x_T)


def evaluate(model, sampler, shape, evaluator, args, guidance, out):
    """FID and friends of --fid-n samples from seeded noise (a conditional run's for the evaluator's
    labels, at `guidance`), and the accuracy on each condition list; {} when no feature space is on."""
    draw = functools.partial(sample, sampler, model, guidance=guidance)  # draw(x_T, labels)
    row = evaluator.score_generator(draw, shape, args.seed + 2, out / "worst.png")
    return {**row, "guidance": guidance} if row and evaluator.conditions else row


@torch.no_grad()
def denoising_strip(sampler, model, x_T, labels, guidance):
    """denoise.png's rows: each x_T, then x_t at 9 evenly spaced sampler steps, the last x_0 -> (B, 10,
    C, H, W). The sampler hands the (guided) model every x_t on its way: keep them."""
    path = []

    def watched(x, t):
        path.append(x.cpu())
        return guided(model, x, t, labels, guidance)

    path.append(sampler(watched, x_T.shape, x_T=x_T).cpu())  # x_T, x_t..., x_0
    keep = np.linspace(0, len(path) - 2, 9).round().astype(int) + 1
    return torch.stack([path[0]] + [path[i] for i in keep], dim=1)


def save_outputs(sampler, model, args, shape, fixed_y, conditions, classes, out):
    """The final pictures from the EMA weights at the first --guidance: samples.png (the grids' 64 x_T),
    denoise.png (8 of them on their way), cond_*.png (one cell a condition) -> seconds a sample."""
    device = next(model.parameters()).device
    draw = functools.partial(sample, sampler, model, guidance=args.guidance[0])  # draw(x_T, labels)
    final, seconds = common.timed(common.generate, draw, 64, shape, device, args.seed, fixed_y)
    x_T = torch.randn(64, *shape, generator=torch.Generator().manual_seed(args.seed))[:8].to(device)
    strip_y = fixed_y[:8] if fixed_y is not None else None
    strip = denoising_strip(sampler, model, x_T, strip_y, args.guidance[0])
    cells = {
        name: (common.generate(draw, 32, shape, device, args.seed, y[:32]), y[:32])
        for name, y in conditions.items()
    }
    common.save_outputs(out, {"samples.png": final, "denoise.png": strip}, cells, classes)
    return seconds / 64


# ----------------------------------------------------------------------------- main
# With common.CPU_PRESET (16 px digits, 5 minutes): the small U-Net of the CPU first look.
CPU_PRESET = dict(base_ch=32, ch_mult=[1, 2, 2], num_res_blocks=1, attn_res=[8], dropout=0.0, lr=1e-3)
CPU_PRESET.update(sample_steps=20)
MODEL_FLAGS = ("res", "T", "schedule", "pred", "base_ch", "ch_mult", "num_res_blocks", "attn_res", "cond")
MODEL_FLAGS += ("scale_shift",)


def csv_ints(text):
    return [int(v) for v in text.split(",") if v]


def csv_floats(text):
    try:
        return [float(v) for v in text.split(",") if v.strip()] or [1.0]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma list of numbers: {text!r}") from None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--T", type=int, default=1000, help="diffusion steps")
    a("--schedule", default="linear", choices=["linear", "cosine"])
    a("--pred", default="eps", choices=["eps", "v"])
    a("--base-ch", type=int, default=128)
    a("--ch-mult", type=csv_ints, default=None, help="default by res: 1,2,2 (16), 1,2,2,2 (32) ...")
    a("--num-res-blocks", type=int, default=2)
    a("--attn-res", type=csv_ints, default=None, help="default: res/8 and res/4 (8,16 at 64)")
    a("--dropout", type=float, default=0.1)
    a("--scale-shift", action="store_true", help="AdaGN: the t and label embedding scale and shift")
    a("--grad-clip", type=float, default=1.0)
    a("--min-snr", type=float, default=0.0, metavar="GAMMA", help="min-SNR-gamma loss weights (0: L_simple)")
    a("--sampler", default="ddim", choices=["ddim", "ddpm"], help="for every output: grids, FID, samples")
    a("--sample-steps", type=int, default=100, help="DDIM steps")
    a("--eta", type=float, default=0.0, help="DDIM noise: 0 deterministic, 1 DDPM-like")
    a("--spacing", default="leading", choices=["leading", "trailing", "linspace"])
    a("--p-uncond", type=float, default=0.1, help="--cond: fraction of labels dropped in training (CFG)")
    a("--guidance", type=csv_floats, default=[1.0], metavar="S", help="CFG scale (0,1,2,4: also scored)")
    args = common.parse_with_preset(p, argv, "ddpm", CPU_PRESET)
    default_mult = {
        16: [1, 2, 2],
        32: [1, 2, 2, 2],
        64: [1, 2, 2, 4],
        128: [1, 1, 2, 3, 4],
        256: [1, 1, 2, 2, 4, 4],
    }
    args.ch_mult = args.ch_mult or default_mult[args.res]
    args.attn_res = args.attn_res or [args.res // 8, args.res // 4]
    if args.res % 2 ** (len(args.ch_mult) - 1):
        p.error(f"--ch-mult has {len(args.ch_mult)} levels; --res {args.res} cannot be halved that often")
    if not 1 <= args.sample_steps <= args.T:
        p.error(f"--sample-steps must be in 1..{args.T}")
    if args.min_snr < 0:
        p.error(f"--min-snr must be >= 0 (0 is off), got {args.min_snr}")
    if not 0 <= args.p_uncond < 1:
        p.error(f"--p-uncond must be in [0, 1), got {args.p_uncond}")
    if args.guidance != [1.0] and not args.cond:  # (--generate: the run's --cond)
        p.error("--guidance needs a conditional model (trained with --cond)")
    return args


@common.exits_on_user_error
def main(argv=None):
    args = parse_args(argv)
    out, device, autocast, scaler = common.prepare_run(args, MODEL_FLAGS)
    train, heldout = data.train_and_heldout(args)
    shape, n_classes = (train.images.shape[-1], args.res, args.res), len(train.classes) if args.cond else 0
    betas = make_betas(args.schedule, args.T)  # float64: cumprod over 1000 steps keeps its precision
    alpha_bar = torch.cumprod(1 - betas, 0).to(device)  # on the device once: no copy (and sync) a step
    unet = (args.base_ch, args.ch_mult, args.num_res_blocks, args.attn_res, args.dropout, args.res, n_classes)
    model = common.place(UNet(shape[0], *unet, args.scale_shift), device)
    ema = common.EMA(model, args.ema)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    objects = dict(model=model, ema=ema, opt=opt, scaler=scaler)
    per_epoch = max(1, len(train) // args.batch_size)
    step, clock, log = common.start_or_resume(out, objects, args, args.epochs * per_epoch, "ddpm")
    sampler = choose_sampler(args, alpha_bar, betas)  # of every output: grids, FID, --generate
    draw = functools.partial(sample, sampler, ema.module, guidance=args.guidance[0])  # draw(x_T, labels)
    if args.generate:  # no training: N images from the finished run's EMA weights
        labels = data.generation_labels(args, heldout, args.generate)
        fake = common.generate(draw, args.generate, shape, device, args.seed + 4, labels)
        return save_generated(args, fake, labels, heldout.classes, args.generate_dir or out / "generated")
    model_ddp = common.ddp(model, device, args)  # under torchrun: gradients averaged over the ranks
    evaluator = Evaluator.for_run(args, heldout, device)
    fixed_y = data.generation_labels(args, heldout, 64)  # every epoch's grid: the same 64 x_T (seed)
    batches, losses, metrics, fid_step = data.batches(train, args, step, device), {}, {}, None
    while not clock.stop(step):
        x0, labels = next(batches)  # (B, C, H, W) in [-1, 1], augmented
        # Algorithm 1. Under torchrun every rank draws the global batch's t, eps (and CFG's label drops)
        # from the same RNG and keeps its rows (`shard`): N processes take the step one process takes.
        B, y = args.batch_size, None
        if n_classes:  # classifier-free guidance: --p-uncond of the labels become the null condition
            keep = common.shard(torch.rand(B, device=device)) >= args.p_uncond  # (B,)
            y = drop_labels(data.label_vector(labels, n_classes), keep)  # (B, K)
        t = common.shard(torch.randint(0, args.T, (B,), device=device))  # t ~ U{0..T-1} (B,)
        noise = common.shard(torch.randn(B, *shape, device=device))  # eps ~ N(0, I) (B, C, H, W)
        with autocast():
            loss = diffusion_loss(model_ddp, x0, t, noise, alpha_bar, args.pred, y, args.min_snr)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        scaler.step(opt)
        scaler.update()
        ema.update(model)
        step += 1
        clock.tick()
        if step % args.log_every == 0 or step == clock.total:
            losses = {"loss": loss.item()}
            log.train(step, step / per_epoch, losses, scaler)
        if step % per_epoch == 0:  # end of an epoch: grid and FID (not training time), checkpoint
            epoch = step // per_epoch
            with clock.paused():
                if epoch % args.sample_every == 0:
                    grid = common.generate(draw, 64, shape, device, args.seed, fixed_y)
                    common.save_grid(grid, out / "samples" / f"epoch_{epoch:04d}.png")
                if args.fid_every and epoch % args.fid_every == 0:
                    row = evaluate(ema.module, sampler, shape, evaluator, args, args.guidance[0], out)
                    metrics, fid_step = log.eval(row, step, epoch), step
            if epoch % args.ckpt_every == 0:
                common.save_training_state(out, objects, step, epoch, clock.seconds, args)
    clock.finish()
    common.save_training_state(out, objects, step, step // per_epoch, clock.seconds, args)
    if clock.signalled:  # out within seconds: the final evaluation waits for --resume
        return common.write_summary(out, clock, dict(model="ddpm", steps=step))
    if fid_step != step:  # the final weights are evaluated unless the last epoch's FID saw them
        row = evaluate(ema.module, sampler, shape, evaluator, args, args.guidance[0], out)
        metrics = log.eval(row, step, step / per_epoch)
    for guidance in args.guidance[1:]:  # --guidance 1,0,2,4: the final weights at each further scale
        log.eval(evaluate(ema.module, sampler, shape, evaluator, args, guidance, out), step, step / per_epoch)
    seconds = save_outputs(
        sampler, ema.module, args, shape, fixed_y, evaluator.conditions, heldout.classes, out
    )
    run = dict(model="ddpm", schedule=args.schedule, pred=args.pred, sampler=args.sampler, steps=step)
    run.update(sample_steps=args.sample_steps if args.sampler == "ddim" else args.T, epochs=step / per_epoch)
    run.update(sample_seconds_per_image=seconds, final={**losses, **metrics})
    return common.write_summary(out, clock, run, dict(model=model), step * args.batch_size)


if __name__ == "__main__":
    main()
