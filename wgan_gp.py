"""WGAN-GP: Gulrajani, Ahmed, Arjovsky, Dumoulin & Courville, "Improved Training
of Wasserstein GANs" (2017).

Study step 2.2: DCGAN (2.1) collapses and its discriminator wins, because the
Jensen-Shannon loss gives G vanishing or useless gradients once D separates real
from fake. A critic that estimates the Wasserstein-1 distance keeps giving useful
gradients; the critic must be 1-Lipschitz, which the gradient penalty enforces
softly (eq. 3):

    L_critic = E[C(G(z))] - E[C(x)] + lambda * E[(||grad C(x_hat)||_2 - 1)^2],
    x_hat = eps * x + (1 - eps) * G(z),  eps ~ U[0, 1]
    L_G = -E[C(G(z))]

  step 2.2                      python wgan_gp.py --data DIR --res 64
  CPU first look                python wgan_gp.py --data digits --res 32 --aug none --ngf 32 --ndf 32 --max-minutes 3

As the paper (Algorithm 1): Adam lr 1e-4, betas (0.0, 0.9), lambda 10, no
BatchNorm in the critic (it would make each sample's score depend on the batch,
and the penalty is per sample); layer norm instead, as the paper recommends (sec. 4).
The generator is DCGAN's (copied from dcgan.py so this file reads alone), with a
128-d latent.

Departures: n_critic = 2 critic steps per generator step, not 5 (the study's
setting: on a fixed time budget, more generator steps won); samples come from an
EMA of the generator's weights; the penalty is computed in fp32 outside autocast
(its double backward underflows in fp16 without loss scaling).
"""
import argparse
import math

import torch
import torch.nn as nn

import common
import fid


# ----------------------------------------------------------------------------- model

class Generator(nn.Module):
    """DCGAN's generator: z (B, nz) -> image (B, C, res, res) in [-1, 1]."""

    def __init__(self, nz=128, ngf=64, channels=3, res=64):
        super().__init__()
        self.nz = nz
        n_up = int(math.log2(res)) - 2  # 4x4 -> res
        ch = ngf * 2 ** (n_up - 1)
        layers = [nn.ConvTranspose2d(nz, ch, 4, 1, 0, bias=False), nn.BatchNorm2d(ch), nn.ReLU(True)]
        for _ in range(n_up - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch // 2), nn.ReLU(True)]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z, y=None):
        return self.net(z[:, :, None, None])  # (B, C, res, res)


class Critic(nn.Module):
    """image (B, C, res, res) -> unbounded score (B,). DCGAN's discriminator with
    layer norm (GroupNorm with one group: per sample, over C, H, W) for BatchNorm."""

    def __init__(self, ndf=64, channels=3, res=64):
        super().__init__()
        n_down = int(math.log2(res)) - 2
        layers = [nn.Conv2d(channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        ch = ndf
        for _ in range(n_down - 1):
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False), nn.GroupNorm(1, ch * 2), nn.LeakyReLU(0.2, True)]
            ch *= 2
        layers.append(nn.Conv2d(ch, 1, 4, 1, 0))  # (B, 1, 1, 1)
        self.net = nn.Sequential(*layers)

    def forward(self, x, y=None):
        return self.net(x).flatten()  # (B,)


def init_generator(m):
    # DCGAN's N(0, 0.02) init for the generator; the critic keeps PyTorch's default.
    if isinstance(m, nn.ConvTranspose2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------- losses

def gradient_penalty(critic, real, fake):
    """E[(||grad_x C(x_hat)||_2 - 1)^2] at random points x_hat on the lines between
    real and fake samples (eq. 3, without lambda)."""
    eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
    x_hat = (eps * real + (1 - eps) * fake.detach()).requires_grad_(True)  # (B, C, H, W)
    # create_graph: the penalty is itself differentiated when the critic is updated.
    grad, = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def critic_loss(real_scores, fake_scores):
    """E[C(G(z))] - E[C(x)]: minus the Wasserstein estimate (the penalty is added apart)."""
    return fake_scores.mean() - real_scores.mean()


def generator_loss(fake_scores):
    return -fake_scores.mean()


# ----------------------------------------------------------------------------- main

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(p)
    common.add_gan_args(p, lr=1e-4)
    p.add_argument("--nz", type=int, default=128, help="latent size")
    p.add_argument("--ngf", type=int, default=64, help="generator width")
    p.add_argument("--ndf", type=int, default=64, help="critic width")
    p.add_argument("--n-critic", type=int, default=2, help="critic steps per generator step")
    p.add_argument("--gp-lambda", type=float, default=10.0, help="gradient penalty weight")
    return p.parse_args(argv)


@common.exits_on_user_error
def main(argv=None):
    args = parse_args(argv)
    if args.cond:
        raise common.UserError("wgan_gp.py is unconditional; --cond is implemented in dcgan.py")
    if args.n_critic < 1:
        raise common.UserError(f"--n-critic must be at least 1, got {args.n_critic}")
    out = common.prepare_run(args, "wgan_gp")
    device, amp, amp_dtype = common.setup_device(args)
    common.seed_everything(args.seed)
    data = common.load_dataset(args.data, args.res, crop=args.crop, aug=args.aug)
    train, heldout = data.split()
    channels = train.images.shape[-1]

    G = Generator(args.nz, args.ngf, channels, args.res).to(device)
    C = Critic(args.ndf, channels, args.res).to(device)
    G.apply(init_generator)
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

    # Each generator step eats n_critic real batches; epochs count real batches.
    per_epoch = max(1, len(train) // args.batch_size)
    total = args.max_steps if args.max_steps is not None else math.ceil(args.epochs * per_epoch / args.n_critic)
    real_batches = common.batches(train, args.batch_size, args.seed, step * args.n_critic, device, args.workers)
    epoch = step * args.n_critic // per_epoch
    stop = common.StopFlag(args.max_minutes)
    losses, metrics, fid_step = {}, {}, None
    bar = common.progress(total, step, "wgan_gp")
    clock = common.TrainClock(train_seconds)
    while step < total and not stop(clock.seconds):
        for _ in range(args.n_critic):
            _, x, _ = next(real_batches)
            real = common.augment(common.to_float(x), train.aug)  # (B, C, H, W)
            z = torch.randn(real.shape[0], args.nz, device=device)
            with common.autocast(device, amp, amp_dtype):
                with torch.no_grad():
                    fake = G(z)
                # With --diffaug the critic (and its penalty) sees augmented images only.
                real, fake = common.diff_augment(real, args.diffaug), common.diff_augment(fake, args.diffaug)
                real_scores, fake_scores = C(real), C(fake)
                loss_c = critic_loss(real_scores.float(), fake_scores.float())
            with torch.autocast(device.type, enabled=False):
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
            # The Wasserstein estimate E[C(x)] - E[C(G(z))] is the number to watch: it
            # should shrink as G improves (the GAN losses of 2.1 say little).
            losses = {"loss_c": loss_c.item(), "loss_g": loss_g.item(), "gp": gp.item(),
                      "wasserstein": -loss_c.item()}
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
    return common.write_summary(out, "wgan_gp", params, step, step * args.n_critic / per_epoch,
                                step * args.n_critic * args.batch_size, train_seconds, sample_seconds,
                                {**losses, **metrics}, stop)


if __name__ == "__main__":
    main()
