"""WGAN-GP: Gulrajani, Ahmed, Arjovsky, Dumoulin & Courville, "Improved Training
of Wasserstein GANs" (2017).

Study step 2.2: DCGAN (2.1) collapses and its discriminator wins, because the Jensen-Shannon
loss gives G vanishing or useless gradients once D separates real from fake. A critic that
estimates the Wasserstein-1 distance keeps giving useful gradients; it must be 1-Lipschitz,
which the gradient penalty enforces softly (eq. 3):

    L_critic = E[C(G(z))] - E[C(x)] + lambda * E[(||grad C(x_hat)||_2 - 1)^2],
    x_hat = eps * x + (1 - eps) * G(z),  eps ~ U[0, 1]
    L_G = -E[C(G(z))]

  step 2.2   python wgan_gp.py --data DIR --res 64
  presets    --preset study (the default on CUDA): the defaults below; --preset cpu (elsewhere):
             16 px digits, ngf = ndf = 32, 5 minutes, FID(digits) of 1,000 samples at the end.

As the paper (Algorithm 1): Adam lr 1e-4, betas (0.0, 0.9), lambda 10, no BatchNorm in the
critic (it would make each sample's score depend on the batch, and the penalty is per sample).
The critic's norm is the study plan's InstanceNorm (its step 2.3 replaces the critic's InstanceNorm
by spectral norm); `--critic-norm layer` is the paper's recommendation (sec. 4). The generator is
DCGAN's (copied from dcgan.py so this file reads alone), with a 128-d latent; so are the TTUR and
lr-decay flags (DiffAugment is the study's DCGAN experiment: dcgan.py --diffaug). Departures: n_critic = 2
critic steps per generator step, not 5 (the study's setting: on a fixed time budget, more
generator steps won); samples from an EMA of G; the penalty is computed in fp32 outside
autocast (its double backward underflows in fp16).

`--cond` (phase 6): AC-GAN (Odena et al. 2017) on the WGAN-GP critic. The label vector (one-hot,
or multi-hot for shapes' 1-3 objects) joins z; a class head beside the critic's score names the
labels of an image, trained on real images in the critic step and on fakes in the generator step:
L_critic += w * L_class(C(x), y), L_G += w * L_class(C(G(z, y)), y), with w = --ac-weight (1, as
the paper's equal weighting); L_class is cross-entropy for one label, BCE summed over the labels for
multi-hot (so both are a negative log-likelihood per image), on logits.
The penalty sees the score alone. `--generate N` draws N images from a finished run.
"""

import argparse
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import common
import data
from evaluate import Evaluator, save_generated


# ----------------------------------------------------------------------------- model
class Generator(nn.Module):
    """DCGAN's generator: z (B, nz) [+ label vector (B, K)] -> image (B, C, res, res) in [-1, 1]."""

    def __init__(self, nz=128, ngf=64, channels=3, res=64, n_classes=0):
        super().__init__()
        self.nz, self.n_classes = nz, n_classes
        n_up = int(math.log2(res)) - 2  # 4x4 -> res
        ch = ngf * 2 ** (n_up - 1)
        conv = nn.ConvTranspose2d(nz + n_classes, ch, 4, 1, 0, bias=False)
        layers = [conv, nn.BatchNorm2d(ch), nn.ReLU(True)]
        for _ in range(n_up - 1):
            conv = nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False)
            layers += [conv, nn.BatchNorm2d(ch // 2), nn.ReLU(True)]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z, y=None):
        if self.n_classes:  # the label enters as K more latent dimensions (a linear layer's input)
            z = torch.cat([z, data.label_vector(y, self.n_classes).to(z.dtype)], 1)
        return self.net(z[:, :, None, None])  # (B, C, res, res)


class Critic(nn.Module):
    """image (B, C, res, res) -> (unbounded score (B,), class logits (B, K) or None). DCGAN's
    discriminator with a per-sample norm for BatchNorm: instance norm (per sample and channel, over H, W)
    or layer norm (GroupNorm with one group: per sample, over C, H, W); with n_classes, AC-GAN's class
    head on the same features."""

    def __init__(self, ndf=64, channels=3, res=64, n_classes=0, norm="instance"):
        super().__init__()
        make_norm = {
            "instance": lambda c: nn.InstanceNorm2d(c, affine=True),
            "layer": lambda c: nn.GroupNorm(1, c),
        }
        n_down = int(math.log2(res)) - 2
        layers = [nn.Conv2d(channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        ch = ndf
        for _ in range(n_down - 1):
            conv = nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False)
            layers += [conv, make_norm[norm](ch * 2), nn.LeakyReLU(0.2, True)]
            ch *= 2
        self.features = nn.Sequential(*layers)  # (B, ch, 4, 4)
        self.score = nn.Conv2d(ch, 1, 4, 1, 0)  # (B, 1, 1, 1)
        self.classify = nn.Linear(ch * 16, n_classes) if n_classes else None  # logits: no softmax

    def forward(self, x):
        h = self.features(x)
        return self.score(h).flatten(), self.classify(h.flatten(1)) if self.classify else None


def init_generator(m):
    # DCGAN's N(0, 0.02) init for the generator; the critic keeps PyTorch's default.
    if isinstance(m, nn.ConvTranspose2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------- losses
def gradient_penalty(critic, real, fake, eps=None):
    """E[(||grad_x C(x_hat)||_2 - 1)^2] at the points x_hat = eps x + (1 - eps) G(z) on the lines between
    real and fake samples, eps ~ U[0, 1] (B, 1, 1, 1) (eq. 3, without lambda)."""
    eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device) if eps is None else eps
    x_hat = (eps * real + (1 - eps) * fake.detach()).requires_grad_(True)  # (B, C, H, W)
    # create_graph: the penalty is itself differentiated when the critic is updated. Under torchrun,
    # DDP averages only what backward accumulates into the weights' .grad: this gradient (to x_hat) stays
    # the rank's own, as it should (a norm per image); the penalty's gradient to the weights is averaged.
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def critic_loss(real_scores, fake_scores):
    """E[C(G(z))] - E[C(x)]: minus the Wasserstein estimate (the penalty is added apart)."""
    return fake_scores.mean() - real_scores.mean()


def generator_loss(fake_scores):
    return -fake_scores.mean()


def class_loss(logits, y):
    """AC-GAN's class term, the labels' negative log-likelihood averaged over the batch: cross-entropy
    for class indices (B,); for multi-hot (B, K), BCE summed over the K labels (averaged, each label
    would weigh 1/K and the term would vanish beside the critic's). Both on logits: the losses apply
    log-softmax / log-sigmoid themselves, stably; never a softmax first."""
    if y.dim() == 1:
        return F.cross_entropy(logits.float(), y)
    return F.binary_cross_entropy_with_logits(logits.float(), y.float(), reduction="sum") / len(y)


# ----------------------------------------------------------------------------- main
CPU_PRESET = dict(ngf=32, ndf=32)  # with common.CPU_PRESET: 16 px digits, 5 minutes
MODEL_FLAGS = ("res", "nz", "ngf", "ndf", "critic_norm", "cond")  # a resumed run must keep these


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--nz", type=int, default=128, help="latent size")
    a("--ngf", type=int, default=64, help="generator width")
    a("--ndf", type=int, default=64, help="critic width")
    a("--critic-norm", default="instance", choices=["instance", "layer"], help="the critic's per-sample norm")
    a("--n-critic", type=int, default=2, help="critic steps per generator step")
    a("--gp-lambda", type=float, default=10.0, help="gradient penalty weight")
    a("--ac-weight", type=float, default=1.0, help="weight w of AC-GAN's class terms (--cond)")
    a("--lr-g", type=float, default=None, help="generator lr (default --lr); TTUR")
    a("--lr-d", type=float, default=None, help="critic lr (default --lr)")
    a("--lr-decay", type=float, default=None, metavar="GAMMA", help="both lrs x GAMMA each step")
    args = common.parse_with_preset(p, argv, "wgan_gp", CPU_PRESET, lr=1e-4)
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
    G = common.place(Generator(args.nz, args.ngf, channels, args.res, n_classes), device)
    C = common.place(Critic(args.ndf, channels, args.res, n_classes, args.critic_norm), device)
    G.apply(init_generator)
    ema = common.EMA(G, args.ema)
    opt_g = torch.optim.Adam(G.parameters(), lr=args.lr_g or args.lr, betas=(0.0, 0.9))
    opt_c = torch.optim.Adam(C.parameters(), lr=args.lr_d or args.lr, betas=(0.0, 0.9))
    objects = dict(G=G, C=C, ema=ema, opt_g=opt_g, opt_c=opt_c, scaler=scaler)
    # Each generator step eats n_critic real batches; epochs count real batches.
    per_epoch, n_critic = max(1, len(train) // args.batch_size), args.n_critic
    epoch_steps = math.ceil(args.epochs * per_epoch / n_critic)
    step, clock, log = common.start_or_resume(out, objects, args, epoch_steps, "wgan_gp")
    if args.generate:  # no training: N images from the finished run's EMA generator
        labels = data.generation_labels(args, heldout, args.generate)
        fake = common.generate(ema.module, args.generate, args.nz, device, args.seed + 4, labels)
        return save_generated(args, fake, labels, heldout.classes, args.generate_dir or out / "generated")
    # Under torchrun the steps call these wrappers (gradients averaged over the ranks); the critic's buffers
    # are not re-broadcast between its calls on real, fake and interpolated batches before one backward.
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
                (real_scores, real_logits), (fake_scores, _) = C_ddp(real), C_ddp(fake)
                loss_c = critic_loss(real_scores.float(), fake_scores.float())
                # AC-GAN: the critic learns to name the labels of real images.
                cls_c = class_loss(real_logits, y) if n_classes else torch.zeros((), device=device)
            eps = common.shard(torch.rand(args.batch_size, 1, 1, 1, device=device))  # where the penalty looks
            with torch.autocast(device.type, enabled=False):  # fp32: its double backward underflows in fp16
                gp = gradient_penalty(lambda x_hat: C_ddp(x_hat)[0], real.float(), fake.float(), eps)
            opt_c.zero_grad(set_to_none=True)
            scaler.scale(loss_c + args.gp_lambda * gp + args.ac_weight * cls_c).backward()
            scaler.step(opt_c)
            scaler.update()
        with autocast():  # G step, on the last critic batch's labels (fresh z); C's gradients unused: no DDP
            z = common.shard(torch.randn(args.batch_size, args.nz, device=device))
            scores, logits = C(G_ddp(z, y))
            loss_g = generator_loss(scores.float())
            # ...and G learns to make images whose labels the critic names correctly.
            cls_g = class_loss(logits, y) if n_classes else torch.zeros((), device=device)
        opt_g.zero_grad(set_to_none=True)
        scaler.scale(loss_g + args.ac_weight * cls_g).backward()
        scaler.step(opt_g)
        scaler.update()
        if args.lr_decay:  # both learning rates shrink every step
            for group in opt_g.param_groups + opt_c.param_groups:
                group["lr"] *= args.lr_decay
        ema.update(G)
        step += 1
        clock.tick()
        if step % args.log_every == 0 or step == clock.total:
            c = loss_c.item()  # minus the Wasserstein estimate E[C(x)] - E[C(G(z))], to watch shrink
            losses = dict(loss_c=c, loss_g=loss_g.item(), gp=gp.item(), wasserstein=-c)
            if n_classes:
                losses.update(class_c=cls_c.item(), class_g=cls_g.item())
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
        return common.write_summary(out, clock, dict(model="wgan_gp", steps=step))
    if fid_step != step:  # the final weights are evaluated unless the last epoch's FID saw them
        row = evaluator.score_generator(ema.module, args.nz, args.seed + 2, out / "worst.png")
        metrics = log.eval(row, step, step * n_critic / per_epoch)
    conditions, classes = evaluator.conditions, heldout.classes  # the final pictures, from the EMA weights
    seconds = common.save_samples(ema.module, args.nz, args.seed, fixed_y, conditions, classes, out)
    run = dict(model="wgan_gp", steps=step, epochs=step * n_critic / per_epoch)
    run.update(sample_seconds_per_image=seconds, final={**losses, **metrics})
    # images/s counts the real images the critic read: n_critic batches a generator step.
    return common.write_summary(out, clock, run, dict(G=G, D=C), step * n_critic * args.batch_size)


if __name__ == "__main__":
    main()
