"""CycleGAN: Zhu, Park, Isola & Efros, "Unpaired Image-to-Image Translation using Cycle-Consistent
Adversarial Networks" (2017).

  phase 7 (translation)   python cyclegan.py                          (built-in digits <-> MNIST)
    7.1 the paper's model    --disc patch
    7.2 no cycle loss        --disc patch --lambda-cycle 0
    7.3 whole-image D        --disc dc
    7.4 both                 --disc dc --lambda-cycle 0
    7.5 + semantic term      --disc patch --lambda-semantic 1   (CyCADA's, off by default; digit pairs)
  your own pair             python cyclegan.py --data ROOT (ROOT/trainA, trainB; testA, testB if any)
                            python cyclegan.py --data-a SPEC --data-b SPEC (any --data, e.g. folders)
  presets   --preset study (CUDA): the defaults below (ngf = ndf = 64, batch 1 as the paper, 100 epochs);
            --preset cpu (elsewhere): 32 px, ngf = ndf = 16, batch 8, 5 minutes. Explicit flags win.

Two generators, G_AB: A -> B and G_BA: B -> A, and two discriminators, D_B (is it a real B?) and D_A.
With unpaired data an adversarial loss alone only asks G_AB(x) to look like *some* B: any mapping
onto B's distribution fits, including one that forgets x. The cycle-consistency loss (eq. 2)
||G_BA(G_AB(x)) - x||_1 + ||G_AB(G_BA(y)) - y||_1, weighted lambda = 10, asks each translation to keep
enough of x to get x back; the identity loss (sec. 5.2) ||G_AB(y) - y||_1 + ||G_BA(x) - x||_1, weighted
0.5 lambda, keeps a translation from changing what already looks like the target (tint, intensity).
The cycle loss keeps what lets x come back, not what x means: a 3 may travel as any digit G_BA can undo.
`--lambda-semantic W` adds the semantic-consistency term of CyCADA (Hoffman et al. 2018, sec. 3): a
fixed classifier of the source domain (the digits net for A -> B, the MNIST net for B -> A) should read
the translation as it reads the source. It uses only the source's labels, as domain adaptation may; the
target domain's classifier, which judges label preservation below, never trains anything.

As the paper (and the authors' PyTorch code): the ResNet generator of Johnson et al. 2016
(c7s1-64, d128, d256, 6 residual blocks up to 128 px and 9 above, u128, u64, c7s1; reflection
padding, InstanceNorm), the 70x70 PatchGAN discriminator (one real/fake logit per overlapping patch,
InstanceNorm), the least-squares GAN loss (Mao et al. 2017), D's loss halved, a pool of the last 50
fakes for the discriminators (Shrivastava et al. 2017), Adam 2e-4 with betas (0.5, 0.999), constant
for the first half of training and then linearly to zero, N(0, 0.02) init.
Departures: the PatchGAN has one layer fewer per halving of the image below 256 px (at least one),
so a patch stays about a quarter of the image, not all of it (--d-layers to choose; 3 is the paper's
70 px); `--disc dc` is a DCGAN-style discriminator that sees the whole image (one logit), for the
comparison; translations for the grids, evaluation and --generate come from an EMA of each generator;
the learning rate decays over the second half of --epochs, or of --max-minutes when that is given.

Evaluation (every --fid-every epochs, and at the end), on held-out images of both domains: FID in
the target domain's feature space (Inception, or the built-in data's classifier: FID(mnist) for
digits -> MNIST), label preservation (the target domain's classifier on the translations, against
their source labels: does a 3 stay a 3?), the classes the translations hit, the cycle L1 (mean
|G_BA(G_AB(x)) - x| in [-1, 1] units) and the sharpness (neighbouring-pixel differences, translated
over real target images: under 1 is blur).
`--generate N` translates N held-out images each way into RUN/generated/A2B and B2A.
"""

import argparse
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import classifiers
import common
import data
from evaluate import Evaluator, sharpness


# ----------------------------------------------------------------------------- model
class ResidualBlock(nn.Module):
    def __init__(self, ch):
        super().__init__()
        layers = [nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3), nn.InstanceNorm2d(ch), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3), nn.InstanceNorm2d(ch)]
        self.block = nn.Sequential(*layers)

    def forward(self, x):  # (B, ch, H, W)
        return x + self.block(x)


class ResnetGenerator(nn.Module):
    """image (B, c_in, H, W) -> image (B, c_out, H, W) in [-1, 1]: two stride-2 convs down, residual
    blocks at H/4, two transposed convs up. Reflection padding keeps the borders free of zero-padding
    artifacts; InstanceNorm normalises each image on its own (the batch is 1 in the paper)."""

    def __init__(self, c_in=3, c_out=3, ngf=64, n_blocks=9):
        super().__init__()
        layers, ch = (
            [nn.ReflectionPad2d(3), nn.Conv2d(c_in, ngf, 7), nn.InstanceNorm2d(ngf), nn.ReLU(True)],
            ngf,
        )
        for _ in range(2):  # d128, d256 (for ngf = 64)
            layers += [nn.Conv2d(ch, ch * 2, 3, 2, 1), nn.InstanceNorm2d(ch * 2), nn.ReLU(True)]
            ch *= 2
        layers += [ResidualBlock(ch) for _ in range(n_blocks)]  # (B, 4 ngf, H / 4, W / 4)
        for _ in range(2):  # u128, u64
            up = nn.ConvTranspose2d(ch, ch // 2, 3, 2, 1, output_padding=1)
            layers += [up, nn.InstanceNorm2d(ch // 2), nn.ReLU(True)]
            ch //= 2
        self.net = nn.Sequential(*layers, nn.ReflectionPad2d(3), nn.Conv2d(ch, c_out, 7), nn.Tanh())

    def forward(self, x):
        return self.net(x)  # (B, c_out, H, W)


class PatchDiscriminator(nn.Module):
    """PatchGAN (as vae.py's, with InstanceNorm as the CycleGAN authors): image (B, C, H, W) ->
    logits (B, 1, h, w), one for each patch it sees: 70x70 with n_layers = 3 (a 30x30 map at 256 px),
    34x34 with 2, 16x16 with 1. It judges texture and local structure; the cycle loss minds the rest."""

    def __init__(self, channels=3, ndf=64, n_layers=3):
        super().__init__()
        layers, ch = [nn.Conv2d(channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)], ndf
        for i in range(1, n_layers + 1):  # stride 2 except the last: widths 2, 4, 8 x ndf
            out = ndf * min(2**i, 8)
            conv = nn.Conv2d(ch, out, 4, 2 if i < n_layers else 1, 1)
            layers += [conv, nn.InstanceNorm2d(out), nn.LeakyReLU(0.2, True)]
            ch = out
        self.net = nn.Sequential(*layers, nn.Conv2d(ch, 1, 4, 1, 1))

    def forward(self, x):
        return self.net(x)  # (B, 1, h, w)


class ImageDiscriminator(nn.Module):
    """DCGAN-style discriminator (`--disc dc`): strided convs down to 4x4, then one 4x4 conv over the
    whole map: one logit an image (B, 1, 1, 1). The same norm and widths as the PatchGAN, so the
    comparison is about what one logit sees: a patch, or the whole image."""

    def __init__(self, channels=3, ndf=64, res=64):
        super().__init__()
        layers, ch = [nn.Conv2d(channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)], ndf
        for _ in range(int(math.log2(res)) - 3):  # res / 2 -> 4
            out = min(ch * 2, ndf * 8)
            layers += [nn.Conv2d(ch, out, 4, 2, 1), nn.InstanceNorm2d(out), nn.LeakyReLU(0.2, True)]
            ch = out
        self.net = nn.Sequential(*layers, nn.Conv2d(ch, 1, 4, 1, 0))

    def forward(self, x):
        return self.net(x)  # (B, 1, 1, 1)


def init_weights(m):
    # The authors' `init_type normal`: conv weights from N(0, 0.02), biases 0.
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        nn.init.zeros_(m.bias)


def networks(args, train_a, train_b):
    """G_AB, G_BA (ResNet generators), D_A, D_B (PatchGAN or whole-image), N(0, 0.02) init."""
    c_a, c_b = train_a.images.shape[-1], train_b.images.shape[-1]
    G_AB, G_BA = (
        ResnetGenerator(c_in, c_out, args.ngf, args.n_blocks) for c_in, c_out in ((c_a, c_b), (c_b, c_a))
    )
    if args.disc == "patch":
        D_A, D_B = (PatchDiscriminator(c, args.ndf, args.d_layers) for c in (c_a, c_b))
    else:
        D_A, D_B = (ImageDiscriminator(c, args.ndf, args.res) for c in (c_a, c_b))
    for m in (G_AB, G_BA, D_A, D_B):
        m.apply(init_weights)
    return G_AB, G_BA, D_A, D_B


class ImagePool:
    """A history of generated images (Shrivastava et al. 2017): D learns from a mix of the newest fakes
    and older ones, so G and D do not chase each other in circles. Size 0 passes through; until full,
    each image is stored and returned as is; then each image, with probability 1/2, is returned as is,
    else swapped with a random stored one (which is returned). Draws from the torch CPU RNG, which
    the checkpoint saves; `state_dict` holds the stored images, so a resumed run continues exactly."""

    def __init__(self, size):
        self.size, self.images = size, []

    def query(self, images):
        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif torch.rand(()) < 0.5:
                i = int(torch.randint(len(self.images), ()))
                out.append(self.images[i].to(image.device))  # a checkpoint may load them elsewhere
                self.images[i] = image.clone()
            else:
                out.append(image)
        return torch.stack(out)

    def state_dict(self):
        return {"images": torch.stack(self.images) if self.images else torch.empty(0)}

    def load_state_dict(self, state):
        self.images = list(state["images"])


# ----------------------------------------------------------------------------- losses and schedule
def gan_loss(logits, real, kind):
    """D's output against the label real (1) or fake (0). lsgan: mean (logit - label)^2, the paper's
    choice (no saturating log, steadier); bce: the log loss, on logits."""
    target = torch.full_like(logits, 1.0 if real else 0.0)
    if kind == "lsgan":
        return F.mse_loss(logits, target)
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, target)
    raise ValueError(f"unknown GAN loss {kind!r}")


def generator_loss(generators, discriminators, real_a, real_b, kind, lambda_cycle, lambda_identity):
    """-> (fake_a, fake_b, terms) for (G_AB, G_BA) and (D_A, D_B): the adversarial terms (both generators
    fool their discriminator), the cycle loss (eq. 2, both ways) and, when weighted, the identity loss;
    terms["total"] is gan + lambda_cycle (cycle + lambda_identity identity), the authors' weighting."""
    (G_AB, G_BA), (D_A, D_B) = generators, discriminators
    fake_b, fake_a = G_AB(real_a), G_BA(real_b)  # (B, C_b, H, W), (B, C_a, H, W)
    terms = {"gan": gan_loss(D_B(fake_b), True, kind) + gan_loss(D_A(fake_a), True, kind)}
    terms["cycle"] = F.l1_loss(G_BA(fake_b), real_a) + F.l1_loss(G_AB(fake_a), real_b)
    terms["total"] = terms["gan"] + lambda_cycle * terms["cycle"]
    if lambda_cycle * lambda_identity:
        terms["identity"] = F.l1_loss(G_AB(real_b), real_b) + F.l1_loss(G_BA(real_a), real_a)
        terms["total"] = terms["total"] + lambda_cycle * lambda_identity * terms["identity"]
    return fake_a, fake_b, terms


def semantic_loss(classifier, real, fake):
    """CyCADA's semantic consistency (Hoffman et al. 2018, sec. 3), for one direction: the source domain's
    fixed classifier should name the translation as it names the source image, CE(f(fake), argmax
    f(real)). Images in [-1, 1]; `classifier` (classifiers.py's) takes [0, 1] -> (features, logits)."""
    with torch.no_grad():
        pseudo_labels = classifier((real + 1) / 2)[1].argmax(1)  # (B,)
    return F.cross_entropy(classifier((fake + 1) / 2)[1].float(), pseudo_labels)


def discriminator_loss(D, real, fake, kind):
    """Real as real, fake as fake; halved, as the authors do, so D learns slower than G."""
    return 0.5 * (gan_loss(D(real), True, kind) + gan_loss(D(fake), False, kind))


def lr_factor(progress):
    """The paper's schedule over training progress in [0, 1]: 1 for the first half, then linearly to 0."""
    return min(1.0, 2.0 * (1.0 - progress))


# ----------------------------------------------------------------------------- data
def load_domains(args):
    """-> (train_a, test_a), (train_b, test_b), (name_a, name_b): --data-a/--data-b (any --data spec,
    held-out split as every script's), --data ROOT in the authors' layout (testA/testB when present,
    else a split of trainA/trainB), or the built-in pair: scikit-learn's digits <-> MNIST."""
    if (args.data_a is None) != (args.data_b is None):
        raise common.UserError("--data-a and --data-b go together: one for each domain")
    if args.data is not None and args.data_a is not None:
        raise common.UserError("--data ROOT or --data-a/--data-b, not both")
    load = dict(res=args.res, crop=args.crop, aug=args.aug)
    if args.data is None:
        names = (args.data_a or "digits", args.data_b or "mnist")
        domains = [data.load_dataset(spec, **load).split() for spec in names]
    else:
        root = Path(args.data)
        if not root.is_dir() or not all((root / f"train{side}").is_dir() for side in "AB"):
            raise common.UserError(
                f"--data {args.data}: cyclegan.py needs a folder holding trainA/ and trainB/ (testA/, "
                "testB/ optional), or --data-a SPEC --data-b SPEC"
            )
        names, domains = (str(root / "testA"), str(root / "testB")), []
        for side in "AB":
            train, test = root / f"train{side}", root / f"test{side}"
            if test.is_dir():
                domains.append((data.load_dataset(str(train), **load), data.load_dataset(str(test), **load)))
            else:
                domains.append(data.load_dataset(str(train), **load).split())
    for (train, test), name in zip(domains, names):
        if len(test) == 0:  # a split holds out a sixth
            raise common.UserError(f"{name}: {len(train)} image(s) leave none held out; give it 6 or more")
    c_a, c_b = (train.images.shape[-1] for train, _ in domains)
    if c_a != c_b and args.lambda_cycle * args.lambda_identity:
        raise common.UserError(
            f"domain A has {c_a} channel(s) and B {c_b}: the identity loss feeds B's images to G_AB, which "
            "takes A's; pass --lambda-identity 0, or data with equal channels"
        )
    return *domains, names


def spread_images(domain, n):
    """n images spread evenly over a domain's images (every class, where its files come sorted by class),
    as (x (n, C, H, W) in [-1, 1], labels); all of them when n >= len(domain)."""
    return domain.floats(data.spread(len(domain), n))


# ----------------------------------------------------------------------------- sampling and evaluation
@torch.no_grad()
def translate(G, x, device, batch_size=256):
    """G over images x (N, C, H, W) in [-1, 1], in batches, gathered on the CPU."""
    return torch.cat([G(b.to(device)).float().cpu() for b in x.split(batch_size)])


def as_rgb(x):
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x  # gray beside colour in one grid


def translation_grid(G_AB, G_BA, x_a, x_b, device):
    """Rows x_A, G_AB(x_A), G_BA(G_AB(x_A)), then x_B, G_BA(x_B), G_AB(G_BA(x_B)) (N columns)."""
    fake_b, fake_a = translate(G_AB, x_a, device), translate(G_BA, x_b, device)
    rows = [x_a, fake_b, translate(G_BA, fake_b, device), x_b, fake_a, translate(G_AB, fake_a, device)]
    return torch.cat([as_rgb(r) for r in rows])


def evaluate(G_AB, G_BA, evaluators, tests, n, device):
    """Both directions on n held-out images: the cycle L1, the sharpness against the target's real
    images; in the target's feature space FID, KID and the classes the translations hit (a built-in
    classifier's space); label preservation where both domains carry the same classes."""
    row = {}
    for way, G, G_back, (source, target), evaluator in (
        ("ab", G_AB, G_BA, tests, evaluators[1]),
        ("ba", G_BA, G_AB, tests[::-1], evaluators[0]),
    ):
        x, labels = spread_images(source, n)
        fake = translate(G, x, device)
        row[f"cycle_{way}"] = (translate(G_back, fake, device) - x).abs().mean().item()
        row[f"sharpness_{way}"] = sharpness(fake) / sharpness(spread_images(target, n)[0])
        scores = evaluator(fake)
        row.update({f"{k}_{way}": scores[k] for k in ("fid", "kid", "features") if k in scores})
        if "classes_covered" in scores:
            row[f"classes_{way}"] = scores["classes_covered"]
        if source.classes == target.classes and len(source.classes) > 1:
            row[f"acc_{way}"] = evaluator.accuracy(fake, labels)
    return {k: v for k, v in row.items() if v is not None}


def save_translations(G_AB, G_BA, test_a, test_b, n, device, folder):
    """--generate: n held-out images of each domain translated, into FOLDER/A2B and FOLDER/B2A (with
    the source images' labels in labels.csv where the domain has classes)."""
    for way, G, test in (("A2B", G_AB, test_a), ("B2A", G_BA, test_b)):
        x, labels = spread_images(test, n)
        labels = labels if len(test.classes) > 1 else None
        common.save_generated(translate(G, x, device), labels, test.classes, folder / way)
    return folder


def say_eval(row, step):
    """Print an evaluation row -> the row."""
    words = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()]
    print(f"step {step}: " + ", ".join(words))
    return row


# ----------------------------------------------------------------------------- main
CPU_PRESET = dict(res=32, ngf=16, ndf=16, batch_size=8, sample_every=1, ckpt_every=1)
MODEL_FLAGS = ("res", "ngf", "ndf", "n_blocks", "disc", "d_layers", "data_a", "data_b")  # kept on resume


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--data-a", default=None, help="domain A: any --data spec (with --data-b)")
    a("--data-b", default=None, help="domain B: any --data spec (with --data-a)")
    a("--ngf", type=int, default=64, help="generator width")
    a("--ndf", type=int, default=64, help="discriminator width")
    a("--n-blocks", type=int, default=None, help="residual blocks (default 6 up to 128 px, 9 above)")
    a("--disc", default="patch", choices=["patch", "dc"], help="PatchGAN, or DCGAN-style whole-image D")
    a("--d-layers", type=int, default=None, help="PatchGAN layers (default 3 at 256 px, one fewer a halving)")
    a("--gan-loss", default="lsgan", choices=["lsgan", "bce"])
    a("--lambda-cycle", type=float, default=10.0, help="cycle loss weight (0: off, the ablation)")
    a("--lambda-identity", type=float, default=0.5, help="identity loss weight, times --lambda-cycle")
    a("--pool", type=int, default=50, help="fakes kept for the discriminators (0: off)")
    a("--lambda-semantic", type=float, default=0.0, help="CyCADA's semantic term weight (0: off)")
    # No --data: the built-in pair; batch 1 as the paper.
    args = common.parse_with_preset(p, argv, "cyclegan", CPU_PRESET, data=None, batch_size=1)
    args.n_blocks = args.n_blocks or (6 if args.res <= 128 else 9)
    args.d_layers = args.d_layers or max(1, int(math.log2(args.res)) - 5)
    names = (args.data_a or "digits", args.data_b or "mnist") if args.data is None else ()
    if args.lambda_semantic and not all(n in ("digits", "mnist") for n in names):
        raise common.UserError(
            "--lambda-semantic needs a digit classifier of each domain: --data-a and --data-b each digits "
            "or mnist (the default pair)"
        )
    if args.cond or args.labels or args.evaluator:
        raise common.UserError(
            "--cond, --labels and --evaluator do not apply: cyclegan.py translates, it is not conditioned"
        )
    return args


@common.exits_on_user_error
def main(argv=None):
    args = parse_args(argv)
    out, device, autocast, scaler = common.prepare_run(args, MODEL_FLAGS)
    (train_a, test_a), (train_b, test_b), names = load_domains(args)
    G_AB, G_BA, D_A, D_B = (common.place(m, device) for m in networks(args, train_a, train_b))
    ema_ab, ema_ba = common.EMA(G_AB, args.ema), common.EMA(G_BA, args.ema)
    betas = (0.5, 0.999)
    opt_g = torch.optim.Adam([*G_AB.parameters(), *G_BA.parameters()], lr=args.lr, betas=betas)
    opt_d = torch.optim.Adam([*D_A.parameters(), *D_B.parameters()], lr=args.lr, betas=betas)
    pool_a, pool_b = ImagePool(args.pool), ImagePool(args.pool)
    objects = dict(G_AB=G_AB, G_BA=G_BA, D_A=D_A, D_B=D_B, ema_ab=ema_ab, ema_ba=ema_ba, opt_g=opt_g)
    objects.update(opt_d=opt_d, scaler=scaler, pool_a=pool_a, pool_b=pool_b)
    per_epoch = max(1, max(len(train_a), len(train_b)) // args.batch_size)
    step, clock, log = common.start_or_resume(out, objects, args, args.epochs * per_epoch, "cyclegan")
    if args.generate:  # no training: translate N held-out images each way with the EMA generators
        folder = Path(args.generate_dir or out / "generated")
        return save_translations(ema_ab.module, ema_ba.module, test_a, test_b, args.generate, device, folder)
    # Under torchrun the steps call these wrappers (gradients averaged over the ranks). The G step calls
    # the discriminators themselves: frozen there, they have no gradient for DDP to wait for.
    G_AB_ddp, G_BA_ddp = common.ddp(G_AB, device, args), common.ddp(G_BA, device, args)
    D_A_ddp, D_B_ddp = common.ddp(D_A, device, args), common.ddp(D_B, device, args)
    tests, weights = (test_a, test_b), args.inception_weights
    evaluators = [  # each domain's held-out images, in its own feature space
        Evaluator(args.fid_features, test, name, args.res, args.fid_n_real, device, weights, args.crop)
        for test, name in zip(tests, names)
    ]
    # --lambda-semantic: the source labels' knowledge, as CyCADA uses it (never the target's, which is
    # what judges the label preservation): each domain's own classifier, fixed.
    source_classifiers = (
        [classifiers.load_classifier(n, device) for n in names] if args.lambda_semantic else []
    )
    # The same 8 held-out images of each domain in every grid.
    fixed_a, fixed_b = spread_images(test_a, 8)[0], spread_images(test_b, 8)[0]
    stream_a = data.batches(train_a, args, step, device)
    stream_b = data.batches(train_b, args, step, device, args.seed + 1)  # its own order
    losses, metrics, eval_step = {}, {}, None
    while not clock.stop(step):
        # Constant, then linearly to 0 over the second half of --epochs (or of --max-minutes, when
        # that bounds the run); --max-steps stops a run without changing its schedule.
        progress = max(step / (args.epochs * per_epoch), clock.checked / clock.max_seconds)
        for group in opt_g.param_groups + opt_d.param_groups:
            group["lr"] = args.lr * lr_factor(progress)
        real_a, real_b = next(stream_a)[0], next(stream_b)[0]  # (B, C, H, W) in [-1, 1], augmented
        # G step (both generators): D's weights are frozen, so no gradient is spent on them.
        D_A.requires_grad_(False)
        D_B.requires_grad_(False)
        with autocast():
            weights = (args.lambda_cycle, args.lambda_identity)
            fake_a, fake_b, terms = generator_loss(
                (G_AB_ddp, G_BA_ddp), (D_A, D_B), real_a, real_b, args.gan_loss, *weights
            )
            if args.lambda_semantic:  # each direction judged by its source domain's classifier
                f_a, f_b = source_classifiers
                terms["semantic"] = semantic_loss(f_a, real_a, fake_b) + semantic_loss(f_b, real_b, fake_a)
                terms["total"] = terms["total"] + args.lambda_semantic * terms["semantic"]
        opt_g.zero_grad(set_to_none=True)
        scaler.scale(terms["total"]).backward()
        scaler.step(opt_g)
        # D step (both discriminators), on fakes from the pools.
        D_A.requires_grad_(True)
        D_B.requires_grad_(True)
        with autocast():
            loss_d_a = discriminator_loss(D_A_ddp, real_a, pool_a.query(fake_a), args.gan_loss)
            loss_d_b = discriminator_loss(D_B_ddp, real_b, pool_b.query(fake_b), args.gan_loss)
        opt_d.zero_grad(set_to_none=True)
        scaler.scale(loss_d_a + loss_d_b).backward()
        scaler.step(opt_d)
        scaler.update()
        ema_ab.update(G_AB)
        ema_ba.update(G_BA)
        step += 1
        clock.tick()
        if step % args.log_every == 0 or step == clock.total:
            losses = {f"loss_g_{k}": v.item() for k, v in terms.items()}
            losses.update(loss_d_a=loss_d_a.item(), loss_d_b=loss_d_b.item())
            log.train(step, step / per_epoch, losses, scaler)
        if step % per_epoch == 0:  # end of an epoch: grid and evaluation (not training time), checkpoint
            epoch = step // per_epoch
            with clock.paused():
                if epoch % args.sample_every == 0:
                    grid = translation_grid(ema_ab.module, ema_ba.module, fixed_a, fixed_b, device)
                    common.save_grid(grid, out / "samples" / f"epoch_{epoch:04d}.png")
                if args.fid_every and epoch % args.fid_every == 0:  # an "eval" row: no single "fid" here
                    row = evaluate(ema_ab.module, ema_ba.module, evaluators, tests, args.fid_n, device)
                    metrics, eval_step = say_eval(log.eval(row, step, epoch), step), step
            if epoch % args.ckpt_every == 0:
                common.save_training_state(out, objects, step, epoch, clock.seconds, args)
    clock.finish()
    common.save_training_state(out, objects, step, step // per_epoch, clock.seconds, args)
    if clock.signalled:  # out within seconds: the final evaluation waits for --resume
        return common.write_summary(out, clock, dict(model="cyclegan", steps=step))
    if eval_step != step:  # the final weights are evaluated unless the last epoch's evaluation saw them
        row = evaluate(ema_ab.module, ema_ba.module, evaluators, tests, args.fid_n, device)
        metrics = say_eval(log.eval(row, step, step / per_epoch), step)
    grid, seconds = common.timed(translation_grid, ema_ab.module, ema_ba.module, fixed_a, fixed_b, device)
    common.save_outputs(out, {"translate.png": grid})
    run = dict(model="cyclegan", domains=list(names), steps=step, epochs=step / per_epoch)
    run.update(sample_seconds_per_image=seconds / (4 * len(fixed_a)), final={**losses, **metrics})  # 4 a pair
    return common.write_summary(
        out, clock, run, dict(G_AB=G_AB, G_BA=G_BA, D_A=D_A, D_B=D_B), step * args.batch_size
    )


if __name__ == "__main__":
    main()
