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
  hinge loss variant            python sagan.py --data DIR --res 64 --loss hinge --n-critic 1 --lr-g 1e-4 --lr-d 4e-4
  CPU first look                python sagan.py --data digits --res 32 --aug none --ngf 32 --ndf 32 --attn-res 8 --max-minutes 3

(On the CPU, attention at 8x8 of a 32x32 image sits at the same depth, res/4, as
16x16 at 64, and the penalty's double backward through a 256-position attention
costs 2.5x a plain critic step; at 8x8 it is nearly free.)

Departures from the SAGAN paper: the loss is WGAN-GP by default (the study's
choice, so 2.3 changes the networks and nothing else); the paper's hinge loss
is `--loss hinge`. Spectral norm and a gradient penalty are known to fight (SN
already bounds each layer, and the penalty pulls the gradient norm up to exactly 1),
which is why both are here for the report to compare. The generator has no
spectral norm (the paper puts it in both). Samples come from an EMA of G.
"""
import argparse
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

import common
import fid


# ----------------------------------------------------------------------------- model

class SelfAttention(nn.Module):
    """Self-attention over the H*W positions (SAGAN sec. 3, fig. 2):
    out = x + gamma * V softmax(Q^T K), with query and key projected to C/8 channels."""

    def __init__(self, channels):
        super().__init__()
        self.query = nn.Conv2d(channels, max(1, channels // 8), 1)
        self.key = nn.Conv2d(channels, max(1, channels // 8), 1)
        self.value = nn.Conv2d(channels, channels, 1)
        # gamma = 0: the block starts as the identity and learns how much to attend.
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        B, C, H, W = x.shape
        q = self.query(x).flatten(2)  # (B, C/8, N)
        k = self.key(x).flatten(2)  # (B, C/8, N)
        v = self.value(x).flatten(2)  # (B, C, N)
        attn = torch.softmax(q.transpose(1, 2) @ k, dim=-1)  # (B, N, N): row i = where position i looks
        out = (v @ attn.transpose(1, 2)).view(B, C, H, W)  # (B, C, H, W)
        return x + self.gamma * out


def norm(ch):
    # GroupNorm: 32 groups where the width allows, never fewer than 4 channels a group.
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if ch % g == 0 and (ch // g >= 4 or g == 1))
    return nn.GroupNorm(groups, ch)


class Generator(nn.Module):
    """z (B, nz) -> image (B, C, res, res) in [-1, 1]: DCGAN's transposed convs with
    GroupNorm, and SelfAttention after the blocks whose output size is in attn_res."""

    def __init__(self, nz=128, ngf=64, channels=3, res=64, attn_res=(16,)):
        super().__init__()
        self.nz = nz
        n_up = int(math.log2(res)) - 2
        ch, size = ngf * 2 ** (n_up - 1), 4
        layers = [nn.ConvTranspose2d(nz, ch, 4, 1, 0, bias=False), norm(ch), nn.ReLU(True)]
        for _ in range(n_up - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), norm(ch // 2), nn.ReLU(True)]
            ch, size = ch // 2, size * 2
            if size in attn_res:
                layers.append(SelfAttention(ch))
        layers += [nn.ConvTranspose2d(ch, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z, y=None):
        return self.net(z[:, :, None, None])  # (B, C, res, res)


class Critic(nn.Module):
    """image (B, C, res, res) -> score (B,): strided convs with LeakyReLU, no
    normalisation layers (spectral norm is applied to the weights by `spectrally_normed`),
    SelfAttention after the blocks whose output size is in attn_res."""

    def __init__(self, ndf=64, channels=3, res=64, attn_res=(16,)):
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

    def forward(self, x, y=None):
        return self.net(x).flatten()  # (B,)


def spectrally_normed(model):
    """Spectral norm on every conv of `model` (attention projections included). Each
    forward pass in training mode runs one power iteration to track the top singular
    value sigma of the (out, in*k*k) weight matrix, and uses W / sigma."""
    for m in list(model.modules()):
        if isinstance(m, nn.Conv2d):
            spectral_norm(m)
    return model


def init_generator(m):
    if isinstance(m, (nn.ConvTranspose2d, nn.Conv2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)


# ----------------------------------------------------------------------------- losses

def gradient_penalty(critic, real, fake):
    """E[(||grad_x C(x_hat)||_2 - 1)^2] at random interpolates of real and fake
    (Gulrajani et al. eq. 3, without lambda)."""
    eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
    x_hat = (eps * real + (1 - eps) * fake.detach()).requires_grad_(True)  # (B, C, H, W)
    grad, = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def critic_loss(real_scores, fake_scores, loss):
    if loss == "hinge":  # SAGAN eq. 5: push real scores above 1 and fake scores below -1
        return F.relu(1 - real_scores).mean() + F.relu(1 + fake_scores).mean()
    return fake_scores.mean() - real_scores.mean()  # WGAN: minus the Wasserstein estimate


def generator_loss(fake_scores):
    return -fake_scores.mean()  # the same for WGAN and hinge


# ----------------------------------------------------------------------------- main

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(p)
    common.add_gan_args(p, lr=1e-4)
    p.add_argument("--loss", default="wgan-gp", choices=["wgan-gp", "hinge"])
    p.add_argument("--nz", type=int, default=128, help="latent size")
    p.add_argument("--ngf", type=int, default=64, help="generator width")
    p.add_argument("--ndf", type=int, default=64, help="critic width")
    p.add_argument("--attn-res", type=common.csv_ints, default=(16,), help="sizes with self-attention, e.g. 16,32")
    p.add_argument("--n-critic", type=int, default=2, help="critic steps per generator step")
    p.add_argument("--gp-lambda", type=float, default=10.0, help="gradient penalty weight (--loss wgan-gp)")
    return p.parse_args(argv)


@common.exits_on_user_error
def main(argv=None):
    args = parse_args(argv)
    if args.cond:
        raise common.UserError("sagan.py is unconditional; --cond is implemented in dcgan.py")
    if args.n_critic < 1:
        raise common.UserError(f"--n-critic must be at least 1, got {args.n_critic}")
    sizes = [2 ** k for k in range(3, int(math.log2(args.res)))]  # feature-map sizes both nets pass through
    if any(r not in sizes for r in args.attn_res):
        raise common.UserError(f"--attn-res {args.attn_res}: at --res {args.res} the feature maps are {sizes}")
    out = common.prepare_run(args, "sagan")
    device, amp, amp_dtype = common.setup_device(args)
    common.seed_everything(args.seed)
    data = common.load_dataset(args.data, args.res, crop=args.crop, aug=args.aug)
    train, heldout = data.split()
    channels = train.images.shape[-1]

    G = Generator(args.nz, args.ngf, channels, args.res, args.attn_res).to(device)
    G.apply(init_generator)
    C = spectrally_normed(Critic(args.ndf, channels, args.res, args.attn_res)).to(device)
    ema = common.EMA(G, args.ema)
    opt_g, opt_c, schedulers = common.gan_optimizers(G, C, args, betas=(0.0, 0.9))
    scaler = common.grad_scaler(device, amp, amp_dtype)
    fixed_z = torch.randn(64, args.nz, generator=torch.Generator().manual_seed(args.seed)).to(device)
    evaluate = fid.Evaluator(args.fid_features, heldout, args.data, args.res, args.fid_n_real, device,
                             args.inception_weights)

    def fid_row():
        if evaluate.features == "none":  # no feature space: skip the sampling too
            return {}
        fake = common.generate(ema.module, args.fid_n, args.nz, device, args.seed + 2)
        return common.log_fid(log, evaluate(fake, out / "worst.png"), step, step * args.n_critic / per_epoch)

    objects = {"G": G, "C": C, "ema": ema, "opt_g": opt_g, "opt_c": opt_c, "scaler": scaler, **schedulers}
    step, train_seconds, log = common.start_or_resume(out, objects, args, device)

    def checkpoint():
        common.save_checkpoint(out / "ckpt.pt", common.training_state(objects, step, epoch, clock.seconds, args))

    per_epoch = max(1, len(train) // args.batch_size)  # real batches; a generator step eats n_critic
    total = args.max_steps if args.max_steps is not None else math.ceil(args.epochs * per_epoch / args.n_critic)
    real_batches = common.batches(train, args.batch_size, args.seed, step * args.n_critic, device, args.workers)
    epoch = step * args.n_critic // per_epoch
    stop = common.StopFlag(args.max_minutes)
    losses, metrics, fid_step = {}, {}, None
    bar = common.progress(total, step, "sagan")
    clock = common.TrainClock(train_seconds)
    while step < total and not stop(clock.seconds):
        for _ in range(args.n_critic):
            _, x, _ = next(real_batches)
            real = common.augment(common.to_float(x), train.aug)  # (B, C, H, W)
            z = torch.randn(real.shape[0], args.nz, device=device)
            with common.autocast(device, amp, amp_dtype):
                with torch.no_grad():
                    fake = G(z)
                real, fake = common.diff_augment(real, args.diffaug), common.diff_augment(fake, args.diffaug)
                real_scores, fake_scores = C(real), C(fake)
                loss_c = critic_loss(real_scores.float(), fake_scores.float(), args.loss)
            gp = torch.zeros((), device=device)
            if args.loss == "wgan-gp":
                with torch.autocast(device.type, enabled=False):  # fp32: see wgan_gp.py
                    gp = gradient_penalty(C, real.float(), fake.float())
            opt_c.zero_grad(set_to_none=True)
            scaler.scale(loss_c + args.gp_lambda * gp).backward()
            scaler.step(opt_c)
            scaler.update()

        with common.autocast(device, amp, amp_dtype):
            fake = G(torch.randn(args.batch_size, args.nz, device=device))
            loss_g = generator_loss(C(common.diff_augment(fake, args.diffaug)).float())
        opt_g.zero_grad(set_to_none=True)
        scaler.scale(loss_g).backward()
        scaler.step(opt_g)
        scaler.update()
        for scheduler in schedulers.values():
            scheduler.step()
        ema.update(G)
        step += 1
        bar.update(1)

        if step % args.log_every == 0 or step == total:
            losses = {"loss_c": loss_c.item(), "loss_g": loss_g.item(), "gp": gp.item(),
                      "wasserstein": (real_scores.mean() - fake_scores.mean()).item()}
            common.check_finite(step, out, **losses)
            log.write(kind="train", step=step, epoch=step * args.n_critic / per_epoch, **losses)
            bar.set_postfix(losses)
        if step * args.n_critic // per_epoch > epoch:  # an epoch of real batches is done
            epoch = step * args.n_critic // per_epoch
            row = common.epoch_end(out, epoch, args, clock, lambda path: common.save_grid(ema.module(fixed_z), path),
                                   fid_row, checkpoint)
            if row is not None:
                metrics, fid_step = row, step
    bar.close()
    stop.restore()
    train_seconds = clock.seconds
    checkpoint()
    if fid_step != step:
        metrics = fid_row()

    sample_seconds = common.save_gan_outputs(ema.module, fixed_z, out, args.seed + 1)
    params = {"params": common.count_params(G, C), "params_G": common.count_params(G), "params_D": common.count_params(C)}
    # images/s counts the real images the critic reads (n_critic batches per generator step).
    return common.write_summary(out, "sagan", params, step, step * args.n_critic / per_epoch,
                                step * args.n_critic * args.batch_size, train_seconds, sample_seconds,
                                {**losses, **metrics}, stop)


if __name__ == "__main__":
    main()
