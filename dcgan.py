"""DCGAN: Radford, Metz & Chintala, "Unsupervised Representation Learning with
Deep Convolutional Generative Adversarial Networks" (2016).

Study steps:
  phase 1 (pipeline ablations)  python dcgan.py --data DIR --res 64|128 --aug flip|deluxe
  step 2.1 (the GAN baseline)   python dcgan.py --data DIR --res 64
  CPU first look                python dcgan.py --data digits --res 32 --aug none --ngf 32 --ndf 32 --max-minutes 3

Variants from the seed reports (each one flag, combinable):
  --g-arch upconv    nearest upsample + 3x3 conv instead of transposed conv (Odena et al.
                     2016, "Deconvolution and Checkerboard Artifacts")
  --g-arch csp       CSP-up blocks: half the channels upsampled straight through, half
                     through transposed conv + BN + ReLU, concatenated (after CSPNet)
  --lr-g 1e-4 --lr-d 4e-4   two time-scale update rule (Heusel et al. 2017)
  --lr-decay 0.9999  both learning rates times GAMMA after every step
  --diffaug color,translation,cutout   DiffAugment (Zhao et al. 2020) on real and fake
                     images in D's and G's steps, for small datasets

The networks follow the paper: transposed convolutions with BatchNorm and ReLU in
the generator, strided convolutions with LeakyReLU(0.2) in the discriminator (no
BatchNorm on its first layer), N(0, 0.02) weight init, Adam 2e-4 with beta1 = 0.5.
The number of up/down blocks follows --res (3 at 32, 4 at 64, 5 at 128).

Departures from the paper: the loss is BCE on logits (the sigmoid is folded into
the loss, which is stable under fp16 autocast); the generator is trained with the
non-saturating loss -log D(G(z)) (Goodfellow et al. 2014, sec. 3), as the paper's
code does; samples come from an EMA of the generator's weights; `--cond` adds a
one-hot label to z and a projection term to D (Miyato & Koyama 2018).
"""
import argparse
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import common
import fid


# ----------------------------------------------------------------------------- model

class CSPUp(nn.Module):
    """Cross-stage-partial 2x upsampling (after Wang et al. 2020, CSPNet): half the
    channels are upsampled straight through (nearest neighbour, no weights), the
    other half go through transposed conv + BN + ReLU; the concatenation is mixed
    to c_out channels by a 1x1 conv (CSPNet's transition). Half the transposed-conv
    cost of a DCGAN block, and a gradient highway through the plain half."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.half = c_in // 2
        self.conv = nn.Sequential(nn.ConvTranspose2d(c_in - self.half, self.half, 4, 2, 1, bias=False),
                                  nn.BatchNorm2d(self.half), nn.ReLU(True))
        self.mix = nn.Conv2d(2 * self.half, c_out, 1, bias=False)

    def forward(self, x):  # (B, c_in, H, W)
        straight, learned = x[:, :self.half], x[:, self.half:]
        h = torch.cat([F.interpolate(straight, scale_factor=2, mode="nearest"), self.conv(learned)], 1)
        return self.mix(h)  # (B, c_out, 2H, 2W)


def up_block(arch, c_in, c_out):
    """One 2x upsampling stage of the generator, (B, c_in, H, W) -> (B, c_out, 2H, 2W)."""
    if arch == "dcgan":
        up = nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False)
    elif arch == "upconv":
        # Resize-convolution (Odena et al. 2016): every output pixel gets the same number
        # of kernel taps, so no checkerboard from the stride-2 transposed conv's overlap.
        up = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False))
    elif arch == "csp":
        return nn.Sequential(CSPUp(c_in, c_out), nn.BatchNorm2d(c_out), nn.ReLU(True))
    else:
        raise ValueError(f"unknown generator architecture {arch!r}")
    return nn.Sequential(up, nn.BatchNorm2d(c_out), nn.ReLU(True))


class Generator(nn.Module):
    """z (B, nz) [+ one-hot label] -> image (B, C, res, res) in [-1, 1].
    arch: dcgan (transposed convs), upconv (nearest upsample + conv), csp (CSPUp blocks)."""

    def __init__(self, nz=100, ngf=64, channels=3, res=64, n_classes=0, arch="dcgan"):
        super().__init__()
        self.nz, self.n_classes = nz, n_classes
        n_up = int(math.log2(res)) - 2  # 4x4 -> res: 3 blocks at 32, 4 at 64, 5 at 128
        ch = ngf * 2 ** (n_up - 1)
        layers = [nn.ConvTranspose2d(nz + n_classes, ch, 4, 1, 0, bias=False), nn.BatchNorm2d(ch), nn.ReLU(True)]
        for _ in range(n_up - 1):
            layers.append(up_block(arch, ch, ch // 2))  # (B, ch / 2, 2H, 2W)
            ch //= 2
        if arch == "upconv":
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, channels, 3, 1, 1)]
        else:
            layers.append(nn.ConvTranspose2d(ch, channels, 4, 2, 1, bias=False))
        self.net = nn.Sequential(*layers, nn.Tanh())

    def forward(self, z, y=None):
        if self.n_classes:
            z = torch.cat([z, F.one_hot(y, self.n_classes).to(z.dtype)], 1)
        return self.net(z[:, :, None, None])  # (B, C, res, res)


class Discriminator(nn.Module):
    """image (B, C, res, res) -> real/fake logit (B,)."""

    def __init__(self, ndf=64, channels=3, res=64, n_classes=0):
        super().__init__()
        n_down = int(math.log2(res)) - 2
        layers = [nn.Conv2d(channels, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        ch = ndf
        for _ in range(n_down - 1):
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch * 2), nn.LeakyReLU(0.2, True)]
            ch *= 2
        self.features = nn.Sequential(*layers)  # (B, ch, 4, 4)
        self.out = nn.Conv2d(ch, 1, 4, 1, 0, bias=False)
        # Projection discriminator: logit += <embed(y), pooled features>.
        self.embed = nn.Embedding(n_classes, ch) if n_classes else None

    def forward(self, x, y=None):
        h = self.features(x)
        logit = self.out(h).flatten()  # (B,)
        if self.embed is not None:
            logit = logit + (self.embed(y) * h.sum(dim=(2, 3))).sum(1)
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
    return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


def g_loss(fake_logits):
    """Non-saturating generator loss -log D(G(z)): strong gradients when D wins."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


# ----------------------------------------------------------------------------- sampling

@torch.no_grad()
# ----------------------------------------------------------------------------- main

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(p)
    common.add_gan_args(p, lr=2e-4)
    p.add_argument("--g-arch", default="dcgan", choices=["dcgan", "upconv", "csp"], help="generator upsampling")
    p.add_argument("--nz", type=int, default=100, help="latent size")
    p.add_argument("--ngf", type=int, default=64, help="generator width")
    p.add_argument("--ndf", type=int, default=64, help="discriminator width")
    p.add_argument("--beta1", type=float, default=0.5)
    return p.parse_args(argv)


@common.exits_on_user_error
def main(argv=None):
    args = parse_args(argv)
    out = common.prepare_run(args, "dcgan")
    device, amp, amp_dtype = common.setup_device(args)
    common.seed_everything(args.seed)
    data = common.load_dataset(args.data, args.res, crop=args.crop, aug=args.aug, cond=args.cond)
    train, heldout = data.split()
    channels, n_classes = train.images.shape[-1], (len(data.classes) if args.cond else 0)

    G = Generator(args.nz, args.ngf, channels, args.res, n_classes, args.g_arch).to(device)
    D = Discriminator(args.ndf, channels, args.res, n_classes).to(device)
    G.apply(init_weights)
    D.apply(init_weights)
    ema = common.EMA(G, args.ema)
    opt_g, opt_d, schedulers = common.gan_optimizers(G, D, args, betas=(args.beta1, 0.999))
    scaler = common.grad_scaler(device, amp, amp_dtype)

    # Fixed noise, so every epoch's grid shows the same 64 latents.
    fixed_z = torch.randn(64, args.nz, generator=torch.Generator().manual_seed(args.seed)).to(device)
    fixed_y = (torch.arange(64) % max(n_classes, 1)).to(device) if n_classes else None

    evaluate = fid.Evaluator(args.fid_features, heldout, args.data, args.res, args.fid_n_real, device,
                             args.inception_weights)
    fid_labels = torch.arange(args.fid_n) % n_classes if n_classes else None

    def fid_row():
        if evaluate.features == "none":  # no feature space: skip the sampling too
            return {}
        fake = common.generate(ema.module, args.fid_n, args.nz, device, args.seed + 2, fid_labels)
        return common.log_fid(log, evaluate(fake, out / "worst.png"), step, step / per_epoch)

    def D_aug(x, y):  # with --diffaug, D sees every image, real or fake, augmented
        return D(common.diff_augment(x, args.diffaug), y)

    objects = {"G": G, "D": D, "ema": ema, "opt_g": opt_g, "opt_d": opt_d, "scaler": scaler, **schedulers}
    step, train_seconds, log = common.start_or_resume(out, objects, args, device)

    def checkpoint():
        common.save_checkpoint(out / "ckpt.pt", common.training_state(objects, step, step // per_epoch,
                                                                      clock.seconds, args))

    per_epoch = max(1, len(train) // args.batch_size)
    total = args.max_steps if args.max_steps is not None else args.epochs * per_epoch
    stop = common.StopFlag(args.max_minutes)
    losses, metrics, fid_step = {}, {}, None
    bar = common.progress(total, step, "dcgan")
    clock = common.TrainClock(train_seconds)
    for epoch, x, y in common.batches(train, args.batch_size, args.seed, step, device, args.workers):
        if step >= total or stop(clock.seconds):
            break
        real = common.augment(common.to_float(x), train.aug)  # (B, C, H, W)
        y = y if n_classes else None
        z = torch.randn(real.shape[0], args.nz, device=device)

        # D step: maximise log D(x) + log(1 - D(G(z))).
        with common.autocast(device, amp, amp_dtype):
            fake = G(z, y)
            loss_d = d_loss(D_aug(real, y), D_aug(fake.detach(), y))
        opt_d.zero_grad(set_to_none=True)
        scaler.scale(loss_d).backward()
        scaler.step(opt_d)

        # G step: the fake batch goes through the updated D.
        with common.autocast(device, amp, amp_dtype):
            loss_g = g_loss(D_aug(fake, y))
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
            losses = {"loss_d": loss_d.item(), "loss_g": loss_g.item()}
            common.check_finite(step, out, **losses)
            log.write(kind="train", step=step, epoch=step / per_epoch, **losses)
            bar.set_postfix(losses)
        if step % per_epoch == 0:  # end of an epoch
            row = common.epoch_end(out, step // per_epoch, args, clock,
                                   lambda path: common.save_grid(ema.module(fixed_z, fixed_y), path), fid_row, checkpoint)
            if row is not None:
                metrics, fid_step = row, step
    bar.close()
    stop.restore()
    train_seconds = clock.seconds
    checkpoint()
    if fid_step != step:
        metrics = fid_row()

    sample_seconds = common.save_gan_outputs(ema.module, fixed_z, out, args.seed + 1, fixed_y)
    params = {"params": common.count_params(G, D), "params_G": common.count_params(G), "params_D": common.count_params(D)}
    return common.write_summary(out, "dcgan", params, step, step / per_epoch, step * args.batch_size, train_seconds,
                                sample_seconds, {**losses, **metrics}, stop)


if __name__ == "__main__":
    main()
