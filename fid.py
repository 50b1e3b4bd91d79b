"""FID, KID and IS, from scratch, with numbers identical to pytorch-fid.

  python fid.py real_dir fake_dir                     # prints FID: <value>
  python fid.py real_dir fake_dir --kid               # also KID (x 1e3 is customary)
  python fid.py --save-stats real_dir real_stats.npz  # then: python fid.py real_stats.npz fake_dir
  python fid.py real_dir fake_dir --features digits   # FID(digits): built-in digits feature space

FID (Heusel et al. 2017, eq. 6): ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2)) between
Gaussians fitted to Inception pool3 features. The network is the TF-slim 2015 Inception-v3 that
the original TTUR code used, as ported by pytorch-fid: torchvision's Inception-v3 with the avg-pool
branches of the A, C and first E blocks excluding padding from the average, a max-pool branch in
the last E block, BatchNorm eps 1e-3 and a 1008-way classifier. Inputs in [0, 1] are resized to
299x299 (bilinear, align_corners=False) and scaled to [-1, 1]; gray images are repeated to RGB.
The state-dict keys equal those of pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`.

KID (Binkowski et al. 2018): unbiased MMD^2 with the cubic kernel k(x, y) = (x.y / d + 1)^3,
averaged over random subsets; unbiased, so it suits small sample counts better than FID.
IS (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))) from the same network's 1008-way logits.
Diversity: mean pairwise feature distance of the samples, beside that of the real images; LPIPS
diversity (Zhang et al. 2018, the uncalibrated lpips=False variant on torchvision's VGG-16) when
those weights are on disk; worst.png: the samples farthest from any real image in feature space.

Departure from pytorch-fid, for speed only: after loading, each BatchNorm is folded into the
convolution before it and the network runs channels-last (pool3 agrees to 1e-4, tested).

`digits` features: a small CNN classifier trained deterministically on the built-in digits and
cached; its 64-d penultimate layer is the feature space of FID(digits), and its predictions give
class coverage. It is never to be compared with Inception FID.
"""
import argparse
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from scipy import linalg
from scipy.spatial.distance import cdist, pdist

import common

WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_NAME}"
VGG_NAME = "vgg16-397923af.pth"  # torchvision's ImageNet VGG-16: LPIPS here, the perceptual loss in vae.py
VGG_URL = f"https://download.pytorch.org/models/{VGG_NAME}"
IMAGE_EXTS = {"bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp"}  # pytorch-fid's list


# ----------------------------------------------------------------------------- Inception-v3 (FID variant)

class ConvBN(nn.Module):
    """torchvision's BasicConv2d: conv (no bias) -> BatchNorm(eps 1e-3) -> ReLU."""

    def __init__(self, c_in, c_out, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))

    @torch.no_grad()
    def fold(self):
        """BN(conv(x)) = conv'(x) with w' = w * g / sqrt(var + eps), b' = beta - mean * g / sqrt(var + eps)."""
        bn, conv = self.bn, self.conv
        scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)  # (C_out,)
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=True)
        fused.weight.copy_((conv.weight.double() * scale[:, None, None, None]).float())
        fused.bias.copy_((bn.bias.double() - bn.running_mean.double() * scale).float())
        self.conv, self.bn = fused, nn.Identity()


def _avg_pool(x):
    # The FID network's average pools ignore padding (TF's behaviour), unlike torchvision's.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, c_in, pool_features):
        super().__init__()
        self.branch1x1 = ConvBN(c_in, 64, 1)
        self.branch5x5_1 = ConvBN(c_in, 48, 1)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(c_in, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(c_in, pool_features, 1)

    def forward(self, x):
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg_pool(x))], 1)


class InceptionB(nn.Module):  # grid reduction 35 -> 17
    def __init__(self, c_in):
        super().__init__()
        self.branch3x3 = ConvBN(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(c_in, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):  # factorised 7x7 convolutions
    def __init__(self, c_in, c7):
        super().__init__()
        self.branch1x1 = ConvBN(c_in, 192, 1)
        self.branch7x7_1 = ConvBN(c_in, c7, 1)
        self.branch7x7_2 = ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = ConvBN(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = ConvBN(c_in, c7, 1)
        self.branch7x7dbl_2 = ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = ConvBN(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = ConvBN(c_in, 192, 1)

    def forward(self, x):
        dbl = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            dbl = conv(dbl)
        return torch.cat([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            dbl,
            self.branch_pool(_avg_pool(x))], 1)


class InceptionD(nn.Module):  # grid reduction 17 -> 8
    def __init__(self, c_in):
        super().__init__()
        self.branch3x3_1 = ConvBN(c_in, 192, 1)
        self.branch3x3_2 = ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(c_in, 192, 1)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x):
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):  # expanded filter bank; pool = "avg" in Mixed_7b, "max" in Mixed_7c
    def __init__(self, c_in, pool):
        super().__init__()
        self.pool = pool
        self.branch1x1 = ConvBN(c_in, 320, 1)
        self.branch3x3_1 = ConvBN(c_in, 384, 1)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBN(c_in, 448, 1)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBN(c_in, 192, 1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = _avg_pool(x) if self.pool == "avg" else F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(b3), self.branch3x3_2b(b3),
            self.branch3x3dbl_3a(dbl), self.branch3x3dbl_3b(dbl),
            self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """x: RGB (N, 3, H, W) in [0, 1], any H, W (gray (N, 1, H, W) is repeated) ->
    (pool3 (N, 2048), logits (N, 1008))."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, c7=128)
        self.Mixed_6c = InceptionC(768, c7=160)
        self.Mixed_6d = InceptionC(768, c7=160)
        self.Mixed_6e = InceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        self.fc = nn.Linear(2048, 1008)

    def forward(self, x):
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)  # (N, 3, 299, 299)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # (N, 64, 147, 147)
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # (N, 192, 71, 71)
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)  # ends at (N, 2048, 8, 8)
        pool3 = x.mean(dim=(2, 3))  # (N, 2048)
        return pool3, self.fc(pool3)  # dropout is the identity at inference


# ----------------------------------------------------------------------------- weights

def find_weights(path=None, download=True):
    """--inception-weights PATH, then $FID_WEIGHTS, then the torch hub checkpoint cache
    (downloaded there when missing and online). Raises UserError saying what to put where."""
    return common.find_pretrained(WEIGHTS_NAME, WEIGHTS_URL, path, "FID_WEIGHTS", "--inception-weights", download)


def load_inception(weights=None, device="cpu"):
    """weights: None (look up as find_weights does), a path (sha256 checked), or a state dict
    (used as is: the tests pass random ones). Returns the eval-mode, BN-folded network."""
    model = FIDInceptionV3()
    if not isinstance(weights, dict):
        weights = torch.load(find_weights(weights), map_location="cpu", weights_only=True)
    model.load_state_dict(weights, strict=True)
    model.eval()
    for m in model.modules():
        if isinstance(m, ConvBN):
            m.fold()
    return model.to(device, memory_format=torch.channels_last).requires_grad_(False)


# ----------------------------------------------------------------------------- activations and statistics

def _folder_batches(folder, batch_size):
    """pytorch-fid's file set (top-level files with its extensions), as [0, 1] RGB batches."""
    folder = Path(folder)
    if not folder.is_dir():
        raise common.UserError(f"not a folder: {folder}")
    files = sorted(f for f in folder.iterdir() if f.suffix.lower().lstrip(".") in IMAGE_EXTS)
    if not files:
        raise common.UserError(f"no images in {folder}")
    for i in range(0, len(files), batch_size):
        imgs = []
        for f in files[i:i + batch_size]:
            try:
                with Image.open(f) as img:
                    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255  # as ToTensor
            except OSError as e:
                raise common.UserError(f"unreadable image {f}: {e}")
            imgs.append(torch.from_numpy(arr).permute(2, 0, 1))
        for shape in dict.fromkeys(t.shape for t in imgs):  # a batch can only hold one size
            yield torch.stack([t for t in imgs if t.shape == shape])


@torch.inference_mode()
def activations(images, model, batch_size=50, device=None, with_logits=False):
    """images: float tensor in [0, 1] (N, C, H, W), a folder path, or an iterable of such
    batches -> pool3 activations, float64 (N, 2048) (and logits (N, 1008) with_logits)."""
    device = device or next(model.parameters()).device
    if isinstance(images, (str, Path)):
        batches = _folder_batches(images, batch_size)
    elif torch.is_tensor(images):
        batches = images.split(batch_size)
    else:
        batches = images
    feats, logits = [], []
    for x in batches:
        for chunk in x.split(batch_size):
            f, l = model(chunk.to(device, torch.float32).contiguous(memory_format=torch.channels_last))
            feats.append(f.double().cpu())
            logits.append(l.double().cpu())
    acts = torch.cat(feats).numpy()
    return (acts, torch.cat(logits).numpy()) if with_logits else acts


def stats(acts):
    """Gaussian fit: mean and unbiased covariance, float64."""
    acts = np.asarray(acts, dtype=np.float64)
    return acts.mean(axis=0), np.cov(acts, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2)), as pytorch-fid computes it."""
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        # Singular product (e.g. fewer samples than dimensions): nudge the diagonals.
        warnings.warn(f"FID: singular product of covariances; adding {eps} to the diagonals")
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: imaginary component {np.max(np.abs(covmean.imag))} in sqrtm")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def kid(acts1, acts2, subsets=100, subset_size=1000, seed=0):
    """Unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3 over random subsets -> (mean, std)."""
    acts1, acts2 = np.asarray(acts1, np.float64), np.asarray(acts2, np.float64)
    d, m = acts1.shape[1], min(subset_size, len(acts1), len(acts2))
    rng = np.random.RandomState(seed)
    mmds = []
    for _ in range(subsets):
        x = acts1[rng.choice(len(acts1), m, replace=False)]
        y = acts2[rng.choice(len(acts2), m, replace=False)]
        k_xx, k_yy, k_xy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
        # Dropping the diagonals of k_xx and k_yy makes the estimate unbiased.
        mmds.append((k_xx.sum() - np.trace(k_xx)) / (m * (m - 1)) + (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
                    - 2 * k_xy.mean())
    return float(np.mean(mmds)), float(np.std(mmds))


def inception_score(logits, splits=10):
    """exp(E_x KL(p(y|x) || p(y))) per split -> (mean, std) over splits."""
    p_yx = torch.softmax(torch.as_tensor(logits, dtype=torch.float64), dim=1).numpy()  # (N, K)
    scores = []
    for part in np.array_split(p_yx, splits):
        p_y = part.mean(axis=0, keepdims=True)
        kl = (part * (np.log(part + 1e-12) - np.log(p_y + 1e-12))).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def diversity(acts, n=500):
    """Mean pairwise Euclidean distance between the first n feature vectors: near 0 when a
    model repeats itself (mode collapse), compared with the same number on real images."""
    return float(pdist(np.asarray(acts, np.float64)[:n]).mean())


def farthest_from(acts, real_acts, k=16):
    """Indices of the k rows of acts farthest from their nearest real neighbour: the samples
    that look least like any training-distribution image, the worst first."""
    nearest = cdist(acts, real_acts).min(axis=1)
    return np.argsort(-nearest, kind="stable")[:k]


def save_stats(path, mu, sigma):
    common._atomic_write(path, lambda f: np.savez(f, mu=mu, sigma=sigma))


def load_stats(path):
    with np.load(path) as f:
        return f["mu"], f["sigma"]


# ----------------------------------------------------------------------------- digits feature space

class DigitsNet(nn.Module):
    """A small digit classifier. x (N, C, H, W) in [0, 1] -> (features (N, 64), logits (N, 10)).
    Images are made gray and resized (antialiased) to 16x16 first, so any --res works; the
    digits are 8x8 at the source, so 16x16 loses nothing and costs a quarter of 32x32."""

    def __init__(self):
        super().__init__()
        block = lambda c_in, c_out: [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
        self.body = nn.Sequential(*block(1, 32), *block(32, 32), nn.MaxPool2d(2),      # (N, 32, 8, 8)
                                  *block(32, 64), *block(64, 64), nn.MaxPool2d(2),     # (N, 64, 4, 4)
                                  *block(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(),  # (N, 128)
                                  nn.Linear(128, 64))
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        x = x.mean(dim=1, keepdim=True)
        if x.shape[-1] != 16:
            x = F.interpolate(x, size=(16, 16), mode="bilinear", antialias=True, align_corners=False)
        feats = self.body(2 * x - 1)
        return feats, self.head(feats)


def train_digits_net(epochs=10, seed=0):
    """Train DigitsNet on the training split of the built-in digits (random shifts of +-1 px,
    so it also reads slightly off-centre generated digits). Deterministic: seeded, CPU,
    and the caller's RNG state is left untouched. -> (model, held-out accuracy)."""
    train, heldout = common.load_dataset("digits", 16, aug="none").split()
    x_train = torch.from_numpy(np.array(train.images)).permute(0, 3, 1, 2).float() / 255  # (N, 1, 16, 16)
    y_train = torch.from_numpy(np.array(train.labels))
    x_test = torch.from_numpy(np.array(heldout.images)).permute(0, 3, 1, 2).float() / 255
    y_test = torch.from_numpy(np.array(heldout.labels))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsNet()
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=epochs * (len(x_train) // 64 + 1))
        for _ in range(epochs):
            model.train()
            for idx in torch.randperm(len(x_train)).split(64):
                x = x_train[idx]
                dx, dy = torch.randint(-1, 2, (2,))
                x = torch.roll(x, shifts=(int(dy), int(dx)), dims=(2, 3))
                loss = F.cross_entropy(model(x)[1], y_train[idx])  # logits in, no softmax first
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x_test)[1].argmax(1) == y_test).float().mean().item()
    return model, accuracy


def load_digits_net(device="cpu"):
    """The cached DigitsNet (trained and cached on first use)."""
    path = common.CACHE_DIR / "digits_net_v1.pt"
    model = DigitsNet()
    if path.exists():
        ckpt = common.load_checkpoint(path)
        model.load_state_dict(ckpt["model"])
    else:
        model, accuracy = train_digits_net()
        print(f"digits feature net trained: held-out accuracy {accuracy:.2%} (cached at {path})")
        common.save_checkpoint(path, {"model": model.state_dict(), "accuracy": accuracy})
    return model.eval().requires_grad_(False).to(device)


def class_coverage(logits, n_classes=10):
    """How many classes the samples hit (a class counts when it gets at least a fifth of
    its fair share, n / (5 * n_classes)), and KL(predicted-class histogram || uniform)."""
    pred = np.asarray(logits).argmax(1)
    hist = np.bincount(pred, minlength=n_classes) / len(pred)
    covered = int((hist >= 1 / (5 * n_classes)).sum())
    nz = hist > 0
    return covered, float((hist[nz] * np.log(hist[nz] * n_classes)).sum())


# ----------------------------------------------------------------------------- LPIPS diversity

LPIPS_TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in vgg16().features


def lpips_vgg(state_dict, device="cpu"):
    """VGG-16's convolutional layers up to relu5_3, from torchvision's state dict."""
    from torchvision.models import vgg16
    vgg = vgg16()
    vgg.load_state_dict(state_dict)
    return vgg.features[:LPIPS_TAPS[-1] + 1].eval().requires_grad_(False).to(device)


@torch.no_grad()
def lpips_diversity(images, vgg, pairs=200, seed=0, batch_size=50):
    """Mean LPIPS distance (Zhang et al. 2018) between random pairs of images in [-1, 1]
    (N, C, H, W): high when samples differ, near 0 under mode collapse. This is LPIPS's
    uncalibrated 'baseline' (lpips=False): its learned per-channel weights are not part of
    torchvision, so every channel weighs 1. Each tap's channels are unit-normalised per
    position, squared differences are summed over channels, averaged over positions and
    summed over the five taps."""
    device = next(vgg.parameters()).device
    i, j = torch.randint(len(images), (2, pairs), generator=torch.Generator().manual_seed(seed))
    i, j = i[i != j], j[i != j]
    shift = torch.tensor([-0.030, -0.088, -0.188], device=device).view(1, 3, 1, 1)  # LPIPS's input scaling
    scale = torch.tensor([0.458, 0.448, 0.450], device=device).view(1, 3, 1, 1)

    def taps(x):
        x = (x.to(device).float().expand(-1, 3, -1, -1) - shift) / scale  # gray -> RGB
        out = []
        for k, layer in enumerate(vgg):
            x = layer(x)
            if k in LPIPS_TAPS:
                out.append(x / (x.norm(dim=1, keepdim=True) + 1e-10))
        return out

    dists = []
    for a, b in zip(i.split(batch_size), j.split(batch_size)):
        dists.append(sum(((u - v) ** 2).sum(1).mean((1, 2)) for u, v in zip(taps(images[a]), taps(images[b]))))
    return float(torch.cat(dists).mean())


# ----------------------------------------------------------------------------- evaluation during training

def to_unit_uint8(x):
    """Images in [-1, 1] -> [0, 1] after the same 8-bit rounding as torchvision's save_image,
    so a score of generated tensors equals the score of their saved PNGs."""
    return ((x.float() + 1) / 2).mul(255).add(0.5).clamp(0, 255).to(torch.uint8).float() / 255


class Evaluator:
    """FID, KID and diversity of generated images against the held-out real images, in one
    feature space for the whole run ('inception' or 'digits'); real statistics are cached on
    disk. LPIPS diversity too when torchvision's VGG-16 weights are already on disk."""

    def __init__(self, features, heldout, spec, res, n_real, device, weights=None):
        self.model = None
        if features == "auto":
            try:  # load once: finding the weights already costs a sha256 of the 100 MB file
                self.model, features = load_inception(weights, device), "inception"
            except common.UserError as e:
                features = "digits" if spec == "digits" else "none"
                warnings.warn(f"{e}; FID uses {'the digits feature space' if features == 'digits' else 'nothing: skipped'}")
        self.features, self.device = features, device
        if features == "none":
            return
        if self.model is None:
            self.model = load_inception(weights, device) if features == "inception" else load_digits_net(device)
        self.n_real = min(n_real, len(heldout))
        key = f"{features}_{spec}_{res}_{self.n_real}".replace("/", "_").replace(",", "+")[-150:]
        path = common.CACHE_DIR / "fid_stats" / f"{key}.npz"
        if path.exists():
            with np.load(path) as f:
                self.real_acts = f["acts"]
        else:
            real = torch.from_numpy(np.array(heldout.images[:self.n_real])).permute(0, 3, 1, 2).float() / 255
            self.real_acts = activations(real, self.model, device=device)
            common._atomic_write(path, lambda f: np.savez(f, acts=self.real_acts, mu=self.real_acts.mean(0),
                                                          sigma=np.cov(self.real_acts, rowvar=False)))
        self.real_stats = stats(self.real_acts)
        self.real_diversity = diversity(self.real_acts)
        try:  # optional: never downloaded for this, and its absence is n/a in the report
            path = common.find_pretrained(VGG_NAME, VGG_URL, None, "VGG_WEIGHTS", download=False)
            self.vgg = lpips_vgg(torch.load(path, map_location="cpu", weights_only=True), device)
        except common.UserError:
            self.vgg = None

    def __call__(self, fake, worst_path=None):
        """fake: generated images in [-1, 1] (N, C, H, W) -> metrics dict (empty when off).
        worst_path: where to save a 4x4 grid of the 16 samples farthest from any real image."""
        if self.features == "none":
            return {}
        acts, logits = activations(to_unit_uint8(fake), self.model, device=self.device, with_logits=True)
        if self.features == "inception" and min(len(acts), self.n_real) < 2048:
            warnings.warn(f"Inception FID from {len(acts)} fake / {self.n_real} real images: fewer than 2,048 "
                          "samples bias FID upwards; compare only at equal counts, or use KID")
        kid_mean, kid_std = kid(acts, self.real_acts, subsets=50)
        row = {"features": self.features, "fid": frechet_distance(*stats(acts), *self.real_stats),
               "kid": kid_mean, "kid_std": kid_std, "n_fake": len(acts), "n_real": self.n_real,
               "diversity": diversity(acts), "diversity_real": self.real_diversity}
        if self.vgg is not None:
            row["lpips"] = lpips_diversity(fake, self.vgg)
        if worst_path is not None:
            common.save_grid(fake[torch.from_numpy(farthest_from(acts, self.real_acts))], worst_path, nrow=4)
        if self.features == "inception":
            row["is"], row["is_std"] = inception_score(logits)
        else:
            row["classes_covered"], row["class_kl"] = class_coverage(logits)
        return row


# ----------------------------------------------------------------------------- CLI

def _acts_or_stats(path, model, args):
    if str(path).endswith(".npz"):
        if args.kid:
            raise common.UserError(f"--kid needs image folders, not saved statistics ({path})")
        return None, load_stats(path)
    acts = activations(path, model, args.batch_size, args.device)
    if args.features == "inception" and len(acts) < 2048:
        warnings.warn(f"{path}: {len(acts)} images; Inception FID from fewer than 2,048 is biased upwards")
    return acts, stats(acts)


@common.exits_on_user_error
def main(argv=None):
    p = argparse.ArgumentParser(description="FID (and KID) between two image folders or .npz statistics.")
    p.add_argument("paths", nargs=2, help="two folders or .npz files; with --save-stats: folder, output .npz")
    p.add_argument("--save-stats", action="store_true", help="write the first folder's mu, sigma to the second path")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--features", default="inception", choices=["inception", "digits"])
    p.add_argument("--inception-weights", default=None, help=f"path to {WEIGHTS_NAME}")
    p.add_argument("--kid", action="store_true", help="also print KID (folders only)")
    args = p.parse_args(argv)
    for path in args.paths[:1 if args.save_stats else 2]:
        if not Path(path).exists():
            raise common.UserError(f"not found: {path}")
    if args.features == "inception":
        model = load_inception(args.inception_weights, args.device)
    else:
        model = load_digits_net(args.device)
    if args.save_stats:
        save_stats(args.paths[1], *stats(activations(args.paths[0], model, args.batch_size, args.device)))
        print(f"saved {args.paths[1]}")
        return
    (acts1, stats1), (acts2, stats2) = (_acts_or_stats(p_, model, args) for p_ in args.paths)
    value = frechet_distance(*stats1, *stats2)
    print(f"FID{'(digits)' if args.features == 'digits' else ''}: {value}")
    if args.kid:
        mean, std = kid(acts1, acts2)
        print(f"KID: {mean} +- {std}")
    return value


if __name__ == "__main__":
    main()
