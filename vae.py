"""VAE: Kingma & Welling, "Auto-Encoding Variational Bayes" (2014), and its study evolution
toward sharper samples: L = L_mse + lambda_vgg L_vgg + lambda_adv L_adv + beta L_kl.

  step 3.1 MSE VAE           python vae.py --data DIR --res 64 --beta 1.0
  step 3.2 + VGG perceptual  python vae.py --data DIR --res 64 --beta 1e-4 --perceptual 0.1
  step 3.3 + PatchGAN        python vae.py --data DIR --res 64 --beta 1e-4 --perceptual 0.1 --adv 0.1 \
                                 --adv-start 2000
  presets   --preset study (CUDA): the defaults below; --preset cpu (elsewhere): 16 px digits, 5 minutes,
            FID(digits) of 1,000 prior samples at the end. Explicit flags win.

3.1: a conv encoder gives q(z|x) = N(mu, diag(exp(logvar))) over a 256-d latent; z = mu + exp(logvar / 2)
* eps (the reparameterisation trick, sec. 2.4: gradients flow through the sample); per-pixel MSE is the
Gaussian likelihood, whose optimum under uncertainty is the *mean* of the plausible images: blurry.
3.2: match VGG-16 features at relu1_2, relu2_2, relu3_3 too (Johnson et al. 2016): edges and textures
count. 3.3: a PatchGAN (Isola et al. 2017, 70x70 receptive field) judges each patch of the
reconstruction, punishing blur directly (as VQGAN's training, Esser et al. 2021), from --adv-start on.

Conventions and departures: L_mse is the mean over pixels and L_kl the sum over latent dims (averaged
over the batch), so beta = 1 weighs the KL heavily (the 3.1 failure); 3.2/3.3 use beta = 1e-4. The
decoder upsamples by nearest neighbour + 3x3 conv (no checkerboard). The adversarial loss is non-
saturating BCE on logits; samples come from an EMA of the weights. Below 32 px the PatchGAN has two
layers (34x34 patches). VGG-16 needs torchvision's vgg16-397923af.pth, else --perceptual says where.

`--cond` (phase 6): the CVAE (Sohn et al. 2015): the label vector (one-hot, or multi-hot for shapes'
1-3 objects) enters the encoder, q(z|x, y), and the decoder, p(x|z, y), each through the linear layer
at the latent; the prior stays N(0, I), so sampling is z ~ N(0, I) decoded with the asked label.
`--generate N` draws N images from a finished run.
"""

import argparse
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import common
import data
from evaluate import Evaluator, save_generated, ssim

VGG_NAME = "vgg16-397923af.pth"  # torchvision's ImageNet VGG-16
VGG_URL = f"https://download.pytorch.org/models/{VGG_NAME}"


# ----------------------------------------------------------------------------- model
def norm(ch):
    # GroupNorm, not BatchNorm: at evaluation the decoder sees posterior means, not training's noisy z,
    # which BatchNorm's running statistics would not fit. 32 groups where the width allows, >= 4 a group.
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if ch % g == 0 and (ch // g >= 4 or g == 1))
    return nn.GroupNorm(groups, ch)


def down(c_in, c_out):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False), norm(c_out), nn.LeakyReLU(0.2, True))


def up(c_in, c_out):
    # Nearest upsample + conv: every output pixel gets the same number of kernel taps.
    conv = nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False)
    return nn.Sequential(nn.Upsample(scale_factor=2), conv, norm(c_out), nn.LeakyReLU(0.2, True))


class VAE(nn.Module):
    """Encoder: image (B, C, res, res) [+ label] -> mu, logvar (B, latent). Decoder: z [+ label] ->
    image in [-1, 1]. With n_classes, the label vector joins the input of the linear layers at the latent."""

    def __init__(self, channels=3, res=64, latent=256, width=32, n_classes=0):
        super().__init__()
        self.latent, self.n_classes = latent, n_classes
        n = int(math.log2(res)) - 2  # halvings down to 4x4
        chs = [width * 2**i for i in range(n + 1)]  # e.g. 32, 64, 128, 256 at res 32
        stem = nn.Conv2d(channels, width, 3, 1, 1)
        downs = [down(chs[i], chs[i + 1]) for i in range(n)]
        self.encoder = nn.Sequential(stem, nn.LeakyReLU(0.2, True), *downs, nn.Flatten())
        self.to_stats = nn.Linear(chs[-1] * 16 + n_classes, 2 * latent)
        self.from_z = nn.Linear(latent + n_classes, chs[-1] * 16)
        ups = [up(chs[i + 1], chs[i]) for i in reversed(range(n))]
        self.decoder = nn.Sequential(*ups, nn.Conv2d(width, channels, 3, 1, 1), nn.Tanh())
        self.top = chs[-1]

    def with_label(self, h, y):
        if not self.n_classes:
            return h
        return torch.cat([h, data.label_vector(y, self.n_classes).to(h.dtype)], 1)  # (B, D + K)

    def encode(self, x, y=None):
        return self.to_stats(self.with_label(self.encoder(x), y)).chunk(2, dim=1)  # mu, logvar: (B, latent)

    def decode(self, z, y=None):
        h = F.leaky_relu(self.from_z(self.with_label(z, y)), 0.2).view(-1, self.top, 4, 4)  # (B, top, 4, 4)
        return self.decoder(h)  # (B, C, res, res)

    def forward(self, x, y=None):
        mu, logvar = self.encode(x, y)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)  # reparameterisation
        return self.decode(z, y), mu, logvar


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix's n-layer discriminator): image (B, C, H, W) -> real/fake logits (B, 1, h, w),
    each seeing a 70x70 patch with n_layers = 3 (6x6 at 64 px), 34x34 with 2 (fits 16x16 images)."""

    def __init__(self, channels=3, ndf=64, n_layers=3):
        super().__init__()
        layers, ch = [nn.Conv2d(channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)], ndf
        for i in range(1, n_layers + 1):  # stride 2 except the last: widths 2, 4, 8 x ndf
            out = ndf * min(2**i, 8)
            conv = nn.Conv2d(ch, out, 4, 2 if i < n_layers else 1, 1, bias=False)
            layers += [conv, nn.BatchNorm2d(out), nn.LeakyReLU(0.2, True)]
            ch = out
        self.net = nn.Sequential(*layers, nn.Conv2d(ch, 1, 4, 1, 1))

    def forward(self, x):
        return self.net(x)  # (B, 1, h, w)


class VGGPerceptual(nn.Module):
    """Feature matching on VGG-16 (torchvision's layout, `state_dict` None: random weights): mean squared
    feature differences at relu1_2, relu2_2, relu3_3, summed; inputs in [-1, 1], ImageNet-normalised."""

    TAPS = {3: "relu1_2", 8: "relu2_2", 15: "relu3_3"}  # indices into vgg16().features

    def __init__(self, state_dict=None):
        super().__init__()
        from torchvision.models import vgg16

        vgg = vgg16()
        if state_dict is not None:
            vgg.load_state_dict(state_dict)
        self.features = vgg.features[:16].eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def taps(self, x):
        """x in [-1, 1] (B, 1 or 3, H, W) -> {tap name: feature map}."""
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        h, out = ((x + 1) / 2 - self.mean) / self.std, {}
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.TAPS:
                out[self.TAPS[i]] = h
        return out

    def forward(self, x, y):
        fx, fy = self.taps(x), self.taps(y)
        return sum(F.mse_loss(fx[k], fy[k]) for k in fx)


def load_vgg(path=None):
    """torchvision's VGG-16 ImageNet state dict: --vgg-weights PATH, $VGG_WEIGHTS, or the torch hub cache."""
    found = common.find_pretrained(VGG_NAME, VGG_URL, path, "VGG_WEIGHTS", "--vgg-weights")
    return torch.load(found, map_location="cpu", weights_only=True)


# ----------------------------------------------------------------------------- losses
def kl_divergence(mu, logvar):
    """KL(N(mu, exp(logvar)) || N(0, I)), summed over latent dims, averaged over the batch
    (Kingma & Welling appendix B: -1/2 sum(1 + logvar - mu^2 - exp(logvar)))."""
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).sum(dim=1).mean()


def d_loss(real_logits, fake_logits):
    """The PatchGAN's loss: every patch of an input real, every patch of a reconstruction fake."""
    bce = F.binary_cross_entropy_with_logits
    return bce(real_logits, torch.ones_like(real_logits)) + bce(fake_logits, torch.zeros_like(fake_logits))


def g_adv_loss(fake_logits):
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


# ----------------------------------------------------------------------------- sampling and evaluation
@torch.no_grad()
def heldout_reconstruction(vae, heldout, device, batch_size=256):
    """Reconstructions (from mu, no sampling) of the held-out images: their mean squared error in [-1, 1]
    units, per pixel and channel, and their mean SSIM to the originals (the cats report's measure)."""
    mse = similarity = 0.0
    for i in range(0, len(heldout), batch_size):
        x, y = heldout.floats(range(i, min(i + batch_size, len(heldout))))
        x, y = x.to(device), y.to(device)
        recon = vae.decode(vae.encode(x, y)[0], y)  # (B, C, H, W)
        mse += F.mse_loss(recon, x, reduction="sum").item()
        similarity += ssim((recon.clamp(-1, 1) + 1) / 2, (x + 1) / 2).sum().item()
    return mse / (len(heldout) * heldout.images[0].size), similarity / len(heldout)


def evaluate(vae, evaluator, heldout, args, out):
    """Held-out reconstruction error and SSIM always; FID and friends of prior samples z ~ N(0, I)
    (decoded for the evaluator's labels when conditional) and the accuracy on each condition list."""
    mse, similarity = heldout_reconstruction(vae, heldout, evaluator.device)
    row = {"heldout_mse": mse, "heldout_ssim": similarity}
    return {**row, **evaluator.score_generator(vae.decode, vae.latent, args.seed + 2, out / "worst.png")}


@torch.no_grad()
def save_outputs(vae, args, fixed_y, conditions, heldout, device, out):
    """samples.png (prior samples: the grids' 64 latents), recon.png (rows alternate 8 held-out images
    and their reconstructions from mu), interp.png (slerps between codes of held-out images, decoded
    with the first one's label), cond_*.png (one cell a condition), progress.gif -> seconds a sample."""
    final, seconds = common.timed(common.generate, vae.decode, 64, args.latent, device, args.seed, fixed_y)
    images, labels = heldout.floats(torch.arange(32) % len(heldout))
    images, labels = images.to(device), labels.to(device)
    recons = vae.decode(vae.encode(images, labels)[0], labels)
    pairs = torch.stack([images.view(4, 8, *images.shape[1:]), recons.view(4, 8, *images.shape[1:])], 1)
    mus = vae.encode(images[:16], labels[:16])[0].cpu()
    walk = torch.cat([common.slerp(mus[i], mus[i + 8], torch.linspace(0, 1, 8)) for i in range(8)])
    walk = vae.decode(walk.to(device), labels[:8].repeat_interleave(8, 0))
    grids = {"samples.png": final, "recon.png": pairs.flatten(0, 2), "interp.png": walk}
    cells = {
        name: (common.generate(vae.decode, 32, args.latent, device, args.seed, y[:32]), y[:32])
        for name, y in conditions.items()
    }
    common.save_outputs(out, grids, cells, heldout.classes)
    return seconds / 64


# ----------------------------------------------------------------------------- main
CPU_PRESET = {}  # common.CPU_PRESET alone: 16 px digits, 5 minutes; the default width suits a CPU
MODEL_FLAGS = ("res", "latent", "width", "ndf", "cond")  # a resumed run must keep these


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--latent", type=int, default=256)
    a("--width", type=int, default=32, help="encoder/decoder base channels")
    a("--beta", type=float, default=1.0, help="KL weight (1.0 for 3.1, 1e-4 for 3.2/3.3)")
    a("--perceptual", type=float, default=0.0, metavar="W", help="VGG-16 feature loss weight (3.2)")
    a("--vgg-weights", default=None, help=f"path to torchvision's {VGG_NAME}")
    a("--adv", type=float, default=0.0, metavar="W", help="PatchGAN loss weight (3.3)")
    a("--adv-start", type=int, default=0, metavar="STEP", help="step at which the PatchGAN starts")
    a("--ndf", type=int, default=64, help="PatchGAN width")
    a("--lr-d", type=float, default=2e-4, help="PatchGAN learning rate")
    args = common.parse_with_preset(p, argv, "vae", CPU_PRESET, lr=1e-3)
    if min(args.beta, args.perceptual, args.adv) < 0:
        p.error("--beta, --perceptual and --adv must be >= 0")
    return args


@common.exits_on_user_error
def main(argv=None):
    args = parse_args(argv)
    out, device, autocast, scaler = common.prepare_run(args, MODEL_FLAGS)
    # Weights first: a missing VGG file is a one-line error before any work is done.
    vgg = VGGPerceptual(load_vgg(args.vgg_weights)).to(device) if args.perceptual else None
    train, heldout = data.train_and_heldout(args)
    channels, n_classes = train.images.shape[-1], len(train.classes) if args.cond else 0
    vae = common.place(VAE(channels, args.res, args.latent, args.width, n_classes), device)
    ema = common.EMA(vae, args.ema)
    opt = torch.optim.Adam(vae.parameters(), lr=args.lr)
    objects, D = dict(vae=vae, ema=ema, opt=opt, scaler=scaler), None
    if args.adv:
        # pix2pix's 3 layers from 32 px up; fewer below, so its last 4x4 convolutions still fit.
        D = common.place(
            PatchDiscriminator(channels, args.ndf, n_layers=min(3, int(math.log2(args.res)) - 2)), device
        )
        opt_d = torch.optim.Adam(D.parameters(), lr=args.lr_d, betas=(0.5, 0.999))
        objects.update(D=D, opt_d=opt_d)
    per_epoch = max(1, len(train) // args.batch_size)
    step, clock, log = common.start_or_resume(out, objects, args, args.epochs * per_epoch, "vae")
    if args.generate:  # no training: N prior samples from the finished run's EMA decoder
        labels = data.generation_labels(args, heldout, args.generate)
        fake = common.generate(ema.module.decode, args.generate, args.latent, device, args.seed + 4, labels)
        return save_generated(args, fake, labels, heldout.classes, args.generate_dir or out / "generated")
    # Under torchrun, the steps call these wrappers (gradients averaged over the ranks). D runs on inputs
    # and reconstructions before one backward: its BatchNorm buffers are not re-broadcast between the calls.
    vae_ddp = common.ddp(vae, device, args)
    D_ddp = common.ddp(D, device, args, sync_buffers=False) if D is not None else None
    evaluator = Evaluator.for_run(args, heldout, device)
    fixed_y = data.generation_labels(args, heldout, 64)  # every epoch's grid: the same 64 latents (seed)
    batches, losses, metrics, eval_step = data.batches(train, args, step, device), {}, {}, None
    while not clock.stop(step):
        x, y = next(batches)  # (B, C, H, W) in [-1, 1], augmented
        adv_on = D is not None and step >= args.adv_start
        with autocast():
            recon, mu, logvar = vae_ddp(x, y)
            terms = dict(mse=F.mse_loss(recon.float(), x), kl=kl_divergence(mu.float(), logvar.float()))
            loss = terms["mse"] + args.beta * terms["kl"]
            if vgg is not None:
                terms["perceptual"] = vgg(recon, x).float()
                loss = loss + args.perceptual * terms["perceptual"]
            if adv_on:
                terms["adv"] = g_adv_loss(D(recon).float())  # D's gradients unused here: no DDP
                loss = loss + args.adv * terms["adv"]
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        if adv_on:  # the PatchGAN learns to tell inputs from their reconstructions
            with autocast():
                terms["loss_d"] = d_loss(D_ddp(x).float(), D_ddp(recon.detach()).float())
            opt_d.zero_grad(set_to_none=True)
            scaler.scale(terms["loss_d"]).backward()
            scaler.step(opt_d)
        scaler.update()
        ema.update(vae)
        step += 1
        clock.tick()
        if step % args.log_every == 0 or step == clock.total:
            losses = {"loss": loss.item(), **{name: value.item() for name, value in terms.items()}}
            log.train(step, step / per_epoch, losses, scaler)
        if step % per_epoch == 0:  # end of an epoch: grid and evaluation (not training time), checkpoint
            epoch = step // per_epoch
            with clock.paused():
                if epoch % args.sample_every == 0:
                    grid = common.generate(ema.module.decode, 64, args.latent, device, args.seed, fixed_y)
                    common.save_grid(grid, out / "samples" / f"epoch_{epoch:04d}.png")
                if args.fid_every and epoch % args.fid_every == 0:
                    row = evaluate(ema.module, evaluator, heldout, args, out)
                    metrics, eval_step = log.eval(row, step, epoch), step
            if epoch % args.ckpt_every == 0:
                common.save_training_state(out, objects, step, epoch, clock.seconds, args)
    clock.finish()
    common.save_training_state(out, objects, step, step // per_epoch, clock.seconds, args)
    if clock.signalled:  # out within seconds: the final evaluation waits for --resume
        return common.write_summary(out, clock, dict(model="vae", steps=step))
    if eval_step != step:  # the final weights are evaluated unless the last epoch's evaluation saw them
        metrics = log.eval(evaluate(ema.module, evaluator, heldout, args, out), step, step / per_epoch)
    seconds = save_outputs(ema.module, args, fixed_y, evaluator.conditions, heldout, device, out)
    run = dict(model="vae", steps=step, epochs=step / per_epoch, sample_seconds_per_image=seconds)
    run["final"] = {**losses, **metrics}
    return common.write_summary(out, clock, run, dict(vae=vae, D=D), step * args.batch_size)


if __name__ == "__main__":
    main()
