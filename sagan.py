"""SAGAN-style GAN: WGAN-GP (Gulrajani et al. 2017) with a spectrally normalised
critic (Miyato et al. 2018), a GroupNorm generator and self-attention in both
networks (Zhang, Goodfellow, Metaxas & Odena, "Self-Attention Generative
Adversarial Networks", 2019).

Study steps 2.3 and 2.4: WGAN-GP (2.2) trains stably but its samples show local
texture artifacts and weak global coherence (a convolution only sees a few
pixels; a face's two eyes are far apart). Three changes:
  - self-attention at 16x16 (and 32x32 at 128) in both networks: every position
    can look at every other one (sec. 3; gamma starts at 0, so the nets first
    learn local structure, then blend in attention);
  - spectral norm on every critic layer: each weight matrix divided by its top
    singular value, a hard per-layer Lipschitz bound (Miyato et al. eq. 8);
  - GroupNorm instead of BatchNorm in the generator: samples stop depending on
    which other samples share the batch.

  step 2.3                      python sagan.py --data DIR --res 64
  step 2.4                      python sagan.py --data DIR --res 128 --attn-res 16,32
  hinge loss variant            python sagan.py --data DIR --res 64 --loss hinge --n-critic 1 \
                                    --lr-g 1e-4 --lr-d 4e-4
  presets                       --preset study (the default on CUDA): the flags' defaults below;
                                --preset cpu (elsewhere): 16 px digits, ngf = ndf = 32, attention at
                                8x8, 5 minutes, FID(digits) of 1,000 samples at the end

(On the CPU, attention at 8x8 of a 32x32 image sits at the same depth, res/4, as
16x16 at 64, and the penalty's double backward through a 256-position attention
costs 2.5x a plain critic step; at 8x8 it is nearly free.)

Departures from the SAGAN paper: the loss is WGAN-GP by default (the study's
choice, so 2.3 changes the networks and nothing else); the paper's hinge loss
is `--loss hinge`. Spectral norm and a gradient penalty are known to fight (SN
already bounds each layer, and the penalty pulls the gradient norm up to exactly 1),
which is why both are here for the report to compare. The generator has no
spectral norm (the paper puts it in both). The attention block is the study plan's: bias-free
projections and logits scaled by 1/sqrt(C/8) (the paper's has biases and no scale). Samples come from an
EMA of G.

`--cond` (phase 6), as SAGAN and BigGAN do it: class-conditional GroupNorm in the generator (each
norm's gain and bias come from the label vector through a linear layer, one-hot or multi-hot for
shapes' 1-3 objects), the label vector also concatenated to z (BigGAN's direct path: the
conditional norms start as plain GroupNorm), and a projection critic (Miyato & Koyama 2018,
eq. 3): score(x, y) = psi(h) + <embed(y), h> with h the critic's pooled features. `--generate N`
samples a finished run.
"""

import argparse
import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

import common
import data
from evaluate import Evaluator, save_generated


# ----------------------------------------------------------------------------- model
class SelfAttention(nn.Module):
    """Self-attention over the H*W positions (SAGAN sec. 3, fig. 2) as the study's plan writes it:
    out = x + gamma * V softmax(Q^T K / sqrt(mid)), with bias-free 1x1 projections and query and key
    projected to mid = C/8 channels. The 1/sqrt(mid) is the transformer's (Vaswani et al. 2017), not the
    SAGAN paper's: it keeps the logits' spread independent of the width, so the softmax does not saturate."""

    def __init__(self, channels):
        super().__init__()
        mid = max(1, channels // 8)
        self.query = nn.Conv2d(channels, mid, 1, bias=False)
        self.key = nn.Conv2d(channels, mid, 1, bias=False)
        self.value = nn.Conv2d(channels, channels, 1, bias=False)
        self.scale = mid**-0.5
        # gamma = 0: the block starts as the identity and learns how much to attend.
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        B, C, H, W = x.shape
        q = self.query(x).flatten(2)  # (B, mid, N)
        k = self.key(x).flatten(2)  # (B, mid, N)
        v = self.value(x).flatten(2)  # (B, C, N)
        attn = torch.softmax(q.transpose(1, 2) @ k * self.scale, dim=-1)  # (B, N, N): row i = where i looks
        out = (v @ attn.transpose(1, 2)).view(B, C, H, W)  # (B, C, H, W)
        return x + self.gamma * out


def norm(ch):
    # GroupNorm: 32 groups where the width allows, never fewer than 4 channels a group.
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if ch % g == 0 and (ch // g >= 4 or g == 1))
    return nn.GroupNorm(groups, ch)


class ConditionalNorm(nn.Module):
    """Class-conditional GroupNorm: GN(x) * (1 + gain(y)) + bias(y), per channel, from the label vector
    (B, K) by one linear layer started at zero (so it starts as plain GroupNorm)."""

    def __init__(self, ch, n_classes):
        super().__init__()
        self.norm, self.n_classes = norm(ch), n_classes
        self.embed = nn.Linear(n_classes, 2 * ch, bias=False)
        nn.init.zeros_(self.embed.weight)

    def forward(self, x, y):
        gain, bias = self.embed(data.label_vector(y, self.n_classes).to(x.dtype)).chunk(2, dim=1)  # (B, C)
        return self.norm(x) * (1 + gain[:, :, None, None]) + bias[:, :, None, None]


class Generator(nn.Module):
    """z (B, nz) [+ label] -> image (B, C, res, res) in [-1, 1]: DCGAN's transposed convs with GroupNorm
    (class-conditional with n_classes), SelfAttention after the blocks whose output size is in attn_res."""

    def __init__(self, nz=128, ngf=64, channels=3, res=64, attn_res=(16,), n_classes=0):
        super().__init__()
        self.nz, self.n_classes = nz, n_classes
        n_up = int(math.log2(res)) - 2
        ch, size = ngf * 2 ** (n_up - 1), 4

        def gn(ch):
            return ConditionalNorm(ch, n_classes) if n_classes else norm(ch)

        # As BigGAN: the label also joins z (K more latent dimensions), a direct path from the first step,
        # where the conditional norms start as plain GroupNorm and take many steps to learn.
        layers = [nn.ConvTranspose2d(nz + n_classes, ch, 4, 1, 0, bias=False), gn(ch), nn.ReLU(True)]
        for _ in range(n_up - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), gn(ch // 2), nn.ReLU(True)]
            ch, size = ch // 2, size * 2
            if size in attn_res:
                layers.append(SelfAttention(ch))
        layers += [nn.ConvTranspose2d(ch, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z, y=None):
        if self.n_classes:
            z = torch.cat([z, data.label_vector(y, self.n_classes).to(z.dtype)], 1)  # (B, nz + K)
        h = z[:, :, None, None]  # (B, nz [+ K], 1, 1)
        for layer in self.net:  # the label goes to each conditional norm
            h = layer(h, y) if isinstance(layer, ConditionalNorm) else layer(h)
        return h  # (B, C, res, res)


class Critic(nn.Module):
    """image (B, C, res, res) -> score (B,): strided convs with LeakyReLU, no
    normalisation layers (spectral norm is applied to the weights by `spectrally_normed`),
    SelfAttention after the blocks whose output size is in attn_res."""

    def __init__(self, ndf=64, channels=3, res=64, attn_res=(16,), n_classes=0):
        super().__init__()
        n_down = int(math.log2(res)) - 2
        layers = [nn.Conv2d(channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        ch, size = ndf, res // 2
        if size in attn_res:
            layers.append(SelfAttention(ch))
        for _ in range(n_down - 1):
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1), nn.LeakyReLU(0.2, True)]
            ch, size = ch * 2, size // 2
            if size in attn_res:
                layers.append(SelfAttention(ch))
        layers.append(nn.Conv2d(ch, 1, 4, 1, 0))
        self.net = nn.Sequential(*layers)
        self.embed = nn.Linear(n_classes, ch, bias=False) if n_classes else None  # projection
        self.n_classes = n_classes

    def forward(self, x, y=None):
        h = self.net[:-1](x)  # (B, ch, 4, 4)
        score = self.net[-1](h).flatten()  # (B,)
        if self.embed is not None:  # + <embed(y), sum of h over positions>: does x match its label?
            score = score + (
                self.embed(data.label_vector(y, self.n_classes).to(h.dtype)) * h.sum((2, 3))
            ).sum(1)
        return score


def spectrally_normed(model):
    """Spectral norm on every conv of `model` (attention projections and the label embedding too). Each
    forward pass in training mode runs one power iteration to track the top singular
    value sigma of the (out, in*k*k) weight matrix, and uses W / sigma."""
    for m in list(model.modules()):
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            spectral_norm(m)
    return model


def init_generator(m):
    if isinstance(m, (nn.ConvTranspose2d, nn.Conv2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)


# ----------------------------------------------------------------------------- losses
def gradient_penalty(critic, real, fake, eps=None):
    """E[(||grad_x C(x_hat)||_2 - 1)^2] at random interpolates x_hat = eps x + (1 - eps) G(z) of real and
    fake, eps ~ U[0, 1] (B, 1, 1, 1) (Gulrajani et al. eq. 3, without lambda)."""
    eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device) if eps is None else eps
    x_hat = (eps * real + (1 - eps) * fake.detach()).requires_grad_(True)  # (B, C, H, W)
    # Under torchrun this gradient (to x_hat) is the rank's own, a norm per image; DDP averages only the
    # penalty's gradient to the weights, which backward accumulates.
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def critic_loss(real_scores, fake_scores, loss):
    """The critic's loss: WGAN's E[C(G(z))] - E[C(x)] (minus the Wasserstein estimate; the gradient
    penalty is added apart), or SAGAN's hinge (eq. 5): real scores pushed above 1, fake below -1."""
    if loss == "hinge":
        return F.relu(1 - real_scores).mean() + F.relu(1 + fake_scores).mean()
    return fake_scores.mean() - real_scores.mean()


def generator_loss(fake_scores):
    return -fake_scores.mean()  # the same for WGAN and hinge


# ----------------------------------------------------------------------------- main
CPU_PRESET = dict(ngf=32, ndf=32, attn_res=[8])  # with common.CPU_PRESET: 16 px digits, 5 minutes
MODEL_FLAGS = ("res", "nz", "ngf", "ndf", "attn_res", "cond")  # a resumed run must keep these


def csv_ints(text):
    return [int(v) for v in text.split(",") if v]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--loss", default="wgan-gp", choices=["wgan-gp", "hinge"])
    a("--nz", type=int, default=128, help="latent size")
    a("--ngf", type=int, default=64, help="generator width")
    a("--ndf", type=int, default=64, help="critic width")
    a("--attn-res", type=csv_ints, default=[16], help="sizes with self-attention: 16,32")
    a("--n-critic", type=int, default=2, help="critic steps per generator step")
    a("--gp-lambda", type=float, default=10.0, help="gradient penalty weight (--loss wgan-gp)")
    a("--lr-g", type=float, default=None, help="generator lr (default --lr); TTUR")
    a("--lr-d", type=float, default=None, help="critic lr (default --lr)")
    a("--lr-decay", type=float, default=None, metavar="GAMMA", help="both lrs x GAMMA each step")
    args = common.parse_with_preset(p, argv, "sagan", CPU_PRESET, lr=1e-4)
    sizes = [2**k for k in range(3, int(math.log2(args.res)))]  # feature-map sizes both nets pass through
    if any(r not in sizes for r in args.attn_res):
        p.error(f"--attn-res {args.attn_res}: at --res {args.res} the feature maps are {sizes}")
    if args.n_critic < 1:
        p.error(f"--n-critic must be at least 1, got {args.n_critic}")
    if args.lr_decay is not None and not 0 < args.lr_decay <= 1:
        p.error(f"--lr-decay must be in (0, 1], got {args.lr_decay}")
    return args


@common.exits_on_user_error
def main(argv=None):
    args = parse_args(argv)
    out, device, autocast, scaler = common.prepare_run(args, MODEL_FLAGS)
    train, heldout = data.train_and_heldout(args)
    channels, n_classes = train.images.shape[-1], len(train.classes) if args.cond else 0
    G = common.place(Generator(args.nz, args.ngf, channels, args.res, args.attn_res, n_classes), device)
    G.apply(init_generator)
    C = spectrally_normed(Critic(args.ndf, channels, args.res, args.attn_res, n_classes))
    C = common.place(C, device)
    ema = common.EMA(G, args.ema)
    opt_g = torch.optim.Adam(G.parameters(), lr=args.lr_g or args.lr, betas=(0.0, 0.9))
    opt_c = torch.optim.Adam(C.parameters(), lr=args.lr_d or args.lr, betas=(0.0, 0.9))
    objects = dict(G=G, C=C, ema=ema, opt_g=opt_g, opt_c=opt_c, scaler=scaler)
    # Each generator step eats n_critic real batches; epochs count real batches.
    per_epoch, n_critic = max(1, len(train) // args.batch_size), args.n_critic
    epoch_steps = math.ceil(args.epochs * per_epoch / n_critic)
    step, clock, log = common.start_or_resume(out, objects, args, epoch_steps, "sagan")
    if args.generate:  # no training: N images from the finished run's EMA generator
        labels = data.generation_labels(args, heldout, args.generate)
        fake = common.generate(ema.module, args.generate, args.nz, device, args.seed + 4, labels)
        return save_generated(args, fake, labels, heldout.classes, args.generate_dir or out / "generated")
    # Under torchrun the steps call these wrappers (gradients averaged over the ranks); the critic's spectral-
    # norm vectors (buffers, the same on every rank) are not re-broadcast between its calls before a backward.
    G_ddp, C_ddp = common.ddp(G, device, args), common.ddp(C, device, args, sync_buffers=False)
    evaluator = Evaluator.for_run(args, heldout, device)
    fixed_y = data.generation_labels(args, heldout, 64)  # every epoch's grid: the same 64 latents (seed)
    real_batches, epoch = data.batches(train, args, step * n_critic, device), step * n_critic // per_epoch
    losses, metrics, fid_step = {}, {}, None
    while not clock.stop(step):
        for _ in range(n_critic):
            real, y = next(real_batches)  # (B, C, H, W) in [-1, 1], augmented
            z = common.shard(torch.randn(args.batch_size, args.nz, device=device))  # this rank's rows
            with autocast():
                with torch.no_grad():
                    fake = G(z, y)
                real_scores, fake_scores = C_ddp(real, y).float(), C_ddp(fake, y).float()
            loss_c, gp = critic_loss(real_scores, fake_scores, args.loss), torch.zeros((), device=device)
            if args.loss == "wgan-gp":  # the penalty, in fp32 (see wgan_gp.py), under the batch's labels
                eps = common.shard(torch.rand(args.batch_size, 1, 1, 1, device=device))
                with torch.autocast(device.type, enabled=False):
                    gp = gradient_penalty(functools.partial(C_ddp, y=y), real.float(), fake.float(), eps)
            opt_c.zero_grad(set_to_none=True)
            scaler.scale(loss_c + args.gp_lambda * gp).backward()
            scaler.step(opt_c)
            scaler.update()
        with autocast():  # G step, on the last critic batch's labels (fresh z); C's gradients unused: no DDP
            fake = G_ddp(common.shard(torch.randn(args.batch_size, args.nz, device=device)), y)
            loss_g = generator_loss(C(fake, y).float())
        opt_g.zero_grad(set_to_none=True)
        scaler.scale(loss_g).backward()
        scaler.step(opt_g)
        scaler.update()
        if args.lr_decay:  # both learning rates shrink every step
            for group in opt_g.param_groups + opt_c.param_groups:
                group["lr"] *= args.lr_decay
        ema.update(G)
        step += 1
        clock.tick()
        if step % args.log_every == 0 or step == clock.total:
            wasserstein = (real_scores.mean() - fake_scores.mean()).item()
            losses = dict(loss_c=loss_c.item(), loss_g=loss_g.item(), gp=gp.item(), wasserstein=wasserstein)
            log.train(step, step * n_critic / per_epoch, losses, scaler)
        if step * n_critic // per_epoch > epoch:  # an epoch of real batches is done: grid, FID, checkpoint
            epoch = step * n_critic // per_epoch
            with clock.paused():
                if epoch % args.sample_every == 0:
                    grid = common.generate(ema.module, 64, args.nz, device, args.seed, fixed_y)
                    common.save_grid(grid, out / "samples" / f"epoch_{epoch:04d}.png")
                if args.fid_every and epoch % args.fid_every == 0:
                    row = evaluator.score_generator(ema.module, args.nz, args.seed + 2, out / "worst.png")
                    metrics, fid_step = log.eval(row, step, step * n_critic / per_epoch), step
            if epoch % args.ckpt_every == 0:
                common.save_training_state(out, objects, step, epoch, clock.seconds, args)
    clock.finish()
    common.save_training_state(out, objects, step, epoch, clock.seconds, args)
    if clock.signalled:  # out within seconds: the final evaluation waits for --resume
        return common.write_summary(out, clock, dict(model="sagan", steps=step))
    if fid_step != step:  # the final weights are evaluated unless the last epoch's FID saw them
        row = evaluator.score_generator(ema.module, args.nz, args.seed + 2, out / "worst.png")
        metrics = log.eval(row, step, step * n_critic / per_epoch)
    conditions, classes = evaluator.conditions, heldout.classes  # the final pictures, from the EMA weights
    seconds = common.save_samples(ema.module, args.nz, args.seed, fixed_y, conditions, classes, out)
    run = dict(model="sagan", steps=step, epochs=step * n_critic / per_epoch)
    run.update(sample_seconds_per_image=seconds, final={**losses, **metrics})
    # images/s counts the real images the critic read: n_critic batches a generator step.
    return common.write_summary(out, clock, run, dict(G=G, D=C), step * n_critic * args.batch_size)


if __name__ == "__main__":
    main()
