"""DCGAN: Radford, Metz & Chintala, "Unsupervised Representation Learning with Deep
Convolutional Generative Adversarial Networks" (2016).

  phase 1 (pipeline ablations)  python dcgan.py --data DIR --res 64|128 --aug flip|jitter
  step 2.1 (the GAN baseline)   python dcgan.py --data DIR --res 64
  presets   --preset study (the default on CUDA): the defaults below (ngf = ndf = 64, 100 epochs, FID
            every 25); --preset cpu (elsewhere): 16 px digits, ngf = ndf = 32, 5 minutes, FID(digits)
            of 1,000 samples at the end. A flag given explicitly wins over either.
  variants  --g-arch upconv (nearest upsample + 3x3 conv, Odena et al. 2016) | csp (CSP-up blocks;
            the CSP-up report's version: --csp-act tanh --csp-bn, ReLU and no BatchNorm by default),
            --lr-g 1e-4 --lr-d 4e-4 (TTUR, Heusel et al. 2017), --lr-decay 0.9999 (both learning
            rates times GAMMA every step), --diffaug color,translation,cutout (Zhao et al. 2020)

As the paper: transposed convolutions with BatchNorm and ReLU in G, strided ones with LeakyReLU(0.2)
in D (no BatchNorm on its first layer), N(0, 0.02) init, Adam 2e-4 with beta1 = 0.5; up/down blocks
follow --res (3 at 32, 4 at 64, 5 at 128). Departures: BCE on logits (stable under fp16 autocast); the
non-saturating G loss -log D(G(z)) (Goodfellow et al. 2014, sec. 3), as the paper's code; samples from
an EMA of G. `--cond` (phase 6): the label vector (one-hot for a class, multi-hot for shapes'
1-3 objects) joins z, and D gets a projection term <embed(y), features> (Miyato & Koyama 2018).
`--generate N` draws N images from a finished run (`--labels` picks the conditions).
"""

import argparse
import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import common
import data
from evaluate import Evaluator, save_generated


# ----------------------------------------------------------------------------- model
class CSPUp(nn.Module):
    """Cross-stage-partial 2x upsampling (after CSPNet, Wang et al. 2020): half the channels go
    straight (nearest), half through transposed conv + BN + ReLU; a 1x1 conv (the transition) mixes.
    The CSP-up report's variant: Tanh for that ReLU (act="tanh"), and a BatchNorm on the straight half
    (straight_bn), which it found to converge faster."""

    def __init__(self, c_in, c_out, act="relu", straight_bn=False):
        super().__init__()
        self.half = c_in // 2
        up = nn.ConvTranspose2d(c_in - self.half, self.half, 4, 2, 1, bias=False)
        activation = {"relu": nn.ReLU(True), "tanh": nn.Tanh()}[act]
        self.conv = nn.Sequential(up, nn.BatchNorm2d(self.half), activation)
        self.straight_norm = nn.BatchNorm2d(self.half) if straight_bn else nn.Identity()
        self.mix = nn.Conv2d(2 * self.half, c_out, 1, bias=False)

    def forward(self, x):  # (B, c_in, H, W)
        straight, learned = x[:, : self.half], x[:, self.half :]
        straight = self.straight_norm(F.interpolate(straight, scale_factor=2, mode="nearest"))
        return self.mix(torch.cat([straight, self.conv(learned)], 1))  # (B, c_out, 2H, 2W)


def up_block(arch, c_in, c_out, last=False, csp=("relu", False)):
    """One 2x upsampling stage of the generator, (B, c_in, H, W) -> (B, c_out, 2H, 2W); the last
    stage makes the image: no BatchNorm or ReLU after it (and CSP's is a plain transposed conv).
    csp: CSPUp's (act, straight_bn)."""
    if arch == "dcgan" or (arch == "csp" and last):
        up = nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False)
    elif arch == "upconv":
        # Resize-convolution (Odena et al. 2016): each output pixel gets as many kernel taps as
        # the next, so no checkerboard from the stride-2 transposed conv's uneven overlap.
        up = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(c_in, c_out, 3, 1, 1, bias=last))
    elif arch == "csp":
        up = CSPUp(c_in, c_out, *csp)
    else:
        raise ValueError(f"unknown generator architecture {arch!r}")
    return up if last else nn.Sequential(up, nn.BatchNorm2d(c_out), nn.ReLU(True))


class Generator(nn.Module):
    """z (B, nz) [+ label vector (B, K)] -> image (B, C, res, res) in [-1, 1]; `arch` picks the up blocks."""

    def __init__(self, nz=100, ngf=64, channels=3, res=64, n_classes=0, arch="dcgan", csp=("relu", False)):
        super().__init__()
        self.nz, self.n_classes = nz, n_classes
        n_up = int(math.log2(res)) - 2  # 4x4 -> res: 3 blocks at 32, 4 at 64, 5 at 128
        ch = ngf * 2 ** (n_up - 1)
        conv = nn.ConvTranspose2d(nz + n_classes, ch, 4, 1, 0, bias=False)
        layers = [conv, nn.BatchNorm2d(ch), nn.ReLU(True)]
        for _ in range(n_up - 1):
            layers.append(up_block(arch, ch, ch // 2, csp=csp))  # (B, ch / 2, 2H, 2W)
            ch //= 2
        self.net = nn.Sequential(*layers, up_block(arch, ch, channels, last=True), nn.Tanh())

    def forward(self, z, y=None):
        if self.n_classes:  # the label enters as K more latent dimensions (a linear layer's input)
            z = torch.cat([z, data.label_vector(y, self.n_classes).to(z.dtype)], 1)
        return self.net(z[:, :, None, None])  # (B, C, res, res)


class Discriminator(nn.Module):
    """image (B, C, res, res) [+ label] -> real/fake logit (B,)."""

    def __init__(self, ndf=64, channels=3, res=64, n_classes=0):
        super().__init__()
        n_down = int(math.log2(res)) - 2
        layers, ch = [nn.Conv2d(channels, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)], ndf
        for _ in range(n_down - 1):
            conv = nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False)
            layers += [conv, nn.BatchNorm2d(ch * 2), nn.LeakyReLU(0.2, True)]
            ch *= 2
        self.features = nn.Sequential(*layers)  # (B, ch, 4, 4)
        self.out = nn.Conv2d(ch, 1, 4, 1, 0, bias=False)
        self.embed = nn.Linear(n_classes, ch, bias=False) if n_classes else None  # projection
        self.n_classes = n_classes

    def forward(self, x, y=None):
        h = self.features(x)
        logit = self.out(h).flatten()  # (B,)
        if self.embed is not None:  # + <embed(y), sum of h over positions>: does x match its label?
            logit = logit + (self.embed(data.label_vector(y, self.n_classes)) * h.sum(dim=(2, 3))).sum(1)
        return logit


def init_weights(m):
    # Radford et al. sec. 4: all weights from N(0, 0.02); BatchNorm scale around 1.
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------- losses
def d_loss(real_logits, fake_logits):
    """-[log D(x) + log(1 - D(G(z)))], on logits."""
    bce = F.binary_cross_entropy_with_logits
    return bce(real_logits, torch.ones_like(real_logits)) + bce(fake_logits, torch.zeros_like(fake_logits))


def g_loss(fake_logits):
    """Non-saturating generator loss -log D(G(z)): strong gradients when D wins."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


# ----------------------------------------------------------------------------- DiffAugment
DIFFAUG_OPS = ("color", "translation", "cutout")


def diffaug_policy(text):
    """argparse type for --diffaug: '' (off) or a comma list of DIFFAUG_OPS."""
    ops = tuple(o.strip() for o in text.split(",") if o.strip())
    if bad := [o for o in ops if o not in DIFFAUG_OPS]:
        raise argparse.ArgumentTypeError(f"unknown DiffAugment op(s) {bad}; choose from {DIFFAUG_OPS}")
    return ops


def diff_augment(x, policy):
    """DiffAugment (Zhao et al. 2020): random, differentiable augmentation of real *and* fake images
    (B, C, H, W) in D's and G's steps, so D cannot memorise a small set and G's gradients pass through.
    As the paper's code: color (brightness +-0.5, saturation x[0, 2], contrast x[0.5, 1.5]),
    translation (<= 1/8, zero padded), cutout (half the size)."""
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
        # Read pixel (i + dy, j + dx) of a copy padded by one zero pixel: past the border, zeros.
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


# ----------------------------------------------------------------------------- main
CPU_PRESET = dict(ngf=32, ndf=32)  # with common.CPU_PRESET: 16 px digits, 5 minutes
MODEL_FLAGS = (
    "res",
    "g_arch",
    "csp_act",
    "csp_bn",
    "nz",
    "ngf",
    "ndf",
    "cond",
)  # a resumed run must keep these


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--g-arch", default="dcgan", choices=["dcgan", "upconv", "csp"], help="generator upsampling")
    a("--csp-act", default="relu", choices=["relu", "tanh"], help="CSP-up's learned-half activation")
    a("--csp-bn", action="store_true", help="CSP-up: BatchNorm on the straight (pass-through) half")
    a("--nz", type=int, default=100, help="latent size")
    a("--ngf", type=int, default=64, help="generator width")
    a("--ndf", type=int, default=64, help="discriminator width")
    a("--beta1", type=float, default=0.5, help="Adam's beta1 (the paper's 0.5)")
    a("--weight-decay", type=float, default=0.0, help="Adam's L2 weight decay on both networks")
    a("--lr-g", type=float, default=None, help="generator lr (default --lr); TTUR")
    a("--lr-d", type=float, default=None, help="discriminator lr (default --lr)")
    a("--lr-decay", type=float, default=None, metavar="GAMMA", help="both lrs x GAMMA each step")
    a("--diffaug", type=diffaug_policy, default=(), metavar="OPS", help=",".join(DIFFAUG_OPS))
    args = common.parse_with_preset(p, argv, "dcgan", CPU_PRESET)
    if args.lr_decay is not None and not 0 < args.lr_decay <= 1:
        p.error(f"--lr-decay must be in (0, 1], got {args.lr_decay}")
    if args.g_arch != "csp" and (args.csp_act != "relu" or args.csp_bn):
        p.error("--csp-act and --csp-bn need --g-arch csp")
    return args


@common.exits_on_user_error
def main(argv=None):
    args = parse_args(argv)
    out, device, autocast, scaler = common.prepare_run(args, MODEL_FLAGS)
    train, heldout = data.train_and_heldout(args)
    channels, n_classes = train.images.shape[-1], len(train.classes) if args.cond else 0
    csp = (args.csp_act, args.csp_bn)
    G = common.place(Generator(args.nz, args.ngf, channels, args.res, n_classes, args.g_arch, csp), device)
    D = common.place(Discriminator(args.ndf, channels, args.res, n_classes), device)
    G.apply(init_weights)
    D.apply(init_weights)
    ema = common.EMA(G, args.ema)
    betas, decay = (args.beta1, 0.999), args.weight_decay
    opt_g = torch.optim.Adam(G.parameters(), lr=args.lr_g or args.lr, betas=betas, weight_decay=decay)
    opt_d = torch.optim.Adam(D.parameters(), lr=args.lr_d or args.lr, betas=betas, weight_decay=decay)
    objects = dict(G=G, D=D, ema=ema, opt_g=opt_g, opt_d=opt_d, scaler=scaler)
    per_epoch = max(1, len(train) // args.batch_size)
    step, clock, log = common.start_or_resume(out, objects, args, args.epochs * per_epoch, "dcgan")
    if args.generate:  # no training: N images from the finished run's EMA generator
        labels = data.generation_labels(args, heldout, args.generate)
        fake = common.generate(ema.module, args.generate, args.nz, device, args.seed + 4, labels)
        return save_generated(args, fake, labels, heldout.classes, args.generate_dir or out / "generated")
    # Under torchrun, the training step calls these wrappers (gradients averaged over the ranks). D runs
    # on the real and the fake batch before one backward: its BatchNorm buffers (never used, D stays in
    # training mode) are not re-broadcast at each call, which would change them in place between the two.
    G_ddp, D_ddp = common.ddp(G, device, args), common.ddp(D, device, args, sync_buffers=False)
    evaluator = Evaluator.for_run(args, heldout, device)
    fixed_y = data.generation_labels(args, heldout, 64)  # every epoch's grid: the same 64 latents (seed)
    batches, losses, metrics, fid_step = data.batches(train, args, step, device), {}, {}, None
    while not clock.stop(step):
        real, y = next(batches)  # (B, C, H, W) in [-1, 1], augmented
        z = common.shard(torch.randn(args.batch_size, args.nz, device=device))  # this rank's rows
        # D step: maximise log D(x) + log(1 - D(G(z))); with --diffaug D sees every image augmented.
        with autocast():
            fake = G_ddp(z, y)
            real_aug, fake_aug = diff_augment(real, args.diffaug), diff_augment(fake.detach(), args.diffaug)
            loss_d = d_loss(D_ddp(real_aug, y), D_ddp(fake_aug, y))
        opt_d.zero_grad(set_to_none=True)
        scaler.scale(loss_d).backward()
        scaler.step(opt_d)
        # G step: the fake batch goes through the updated D.
        with autocast():
            loss_g = g_loss(D(diff_augment(fake, args.diffaug), y))  # D's gradients unused: no DDP
        opt_g.zero_grad(set_to_none=True)
        scaler.scale(loss_g).backward()
        scaler.step(opt_g)
        scaler.update()
        if args.lr_decay:  # both learning rates shrink every step
            for group in opt_g.param_groups + opt_d.param_groups:
                group["lr"] *= args.lr_decay
        ema.update(G)
        step += 1
        clock.tick()
        if step % args.log_every == 0 or step == clock.total:
            losses = {"loss_d": loss_d.item(), "loss_g": loss_g.item()}
            log.train(step, step / per_epoch, losses, scaler)
        if step % per_epoch == 0:  # end of an epoch: grid and FID (not training time), checkpoint
            epoch = step // per_epoch
            with clock.paused():
                if epoch % args.sample_every == 0:
                    grid = common.generate(ema.module, 64, args.nz, device, args.seed, fixed_y)
                    common.save_grid(grid, out / "samples" / f"epoch_{epoch:04d}.png")
                if args.fid_every and epoch % args.fid_every == 0:
                    row = evaluator.score_generator(ema.module, args.nz, args.seed + 2, out / "worst.png")
                    metrics, fid_step = log.eval(row, step, epoch), step
            if epoch % args.ckpt_every == 0:
                common.save_training_state(out, objects, step, epoch, clock.seconds, args)
    clock.finish()
    common.save_training_state(out, objects, step, step // per_epoch, clock.seconds, args)
    if clock.signalled:  # out within seconds: the final evaluation waits for --resume
        return common.write_summary(out, clock, dict(model="dcgan", steps=step))
    if fid_step != step:  # the final weights are evaluated unless the last epoch's FID saw them
        row = evaluator.score_generator(ema.module, args.nz, args.seed + 2, out / "worst.png")
        metrics = log.eval(row, step, step / per_epoch)
    conditions, classes = evaluator.conditions, heldout.classes  # the final pictures, from the EMA weights
    seconds = common.save_samples(ema.module, args.nz, args.seed, fixed_y, conditions, classes, out)
    run = dict(model="dcgan", steps=step, epochs=step / per_epoch, sample_seconds_per_image=seconds)
    run["final"] = {**losses, **metrics}
    return common.write_summary(out, clock, run, dict(G=G, D=D), step * args.batch_size)


if __name__ == "__main__":
    main()
