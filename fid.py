"""FID, KID and IS, from scratch, with numbers identical to pytorch-fid.

  python fid.py real_dir fake_dir                     # prints FID: <value>
  python fid.py real_dir fake_dir --kid               # also KID (x 1e3 is customary)
  python fid.py --save-stats real_dir real_stats.npz  # then: python fid.py real_stats.npz fake_dir
  python fid.py real_dir fake_dir --features digits   # FID(digits): built-in digits feature space
  python fid.py real_dir RUN/generated --features shapes  # FID(shapes), e.g. of a --generate folder

FID (Heusel et al. 2017, eq. 6): ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2)) between
Gaussians fitted to Inception pool3 features, from the TF-slim 2015 Inception-v3 of the TTUR code
as pytorch-fid ports it (padding-excluding avg pools, a max pool in the last block, BatchNorm eps
1e-3, 1008 classes; inputs in [0, 1] resized bilinearly to 299x299), with the state-dict keys of
its `pt_inception-2015-12-05-6726825d.pth`. KID (Binkowski et al. 2018): unbiased MMD^2 with the
kernel (x.y / d + 1)^3 over random subsets, better than FID at small sample counts. IS (Salimans
et al. 2016): exp(E_x KL(p(y|x) || p(y))). Departure, for speed only: BatchNorm folded into the
convolutions, channels-last. The study's evaluation of a training run (evaluate.py) is built on this
library; `--features digits|mnist|shapes` scores folders in a built-in classifier's feature space.
"""

import argparse
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

import classifiers
import common
import data

WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_NAME}"
FID_RESAMPLES = 50  # bootstrap resamples of the generated features behind each FID's interval
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
    def fold(self):  # BN(conv(x)) = conv'(x), w' = w g / sqrt(var + eps), b' = beta - mean g / sqrt(...)
        bn, conv = self.bn, self.conv
        scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)  # (C_out,)
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding)
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
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, dbl, self.branch_pool(_avg_pool(x))], 1)


class InceptionB(nn.Module):  # grid reduction 35 -> 17
    def __init__(self, c_in):
        super().__init__()
        self.branch3x3 = ConvBN(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(c_in, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2)

    def forward(self, x):
        dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), dbl, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


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
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        return torch.cat([self.branch1x1(x), b7, dbl, self.branch_pool(_avg_pool(x))], 1)


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
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


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
        b3 = [self.branch3x3_2a(b3), self.branch3x3_2b(b3)]
        dbl = [self.branch3x3dbl_3a(dbl), self.branch3x3dbl_3b(dbl)]
        return torch.cat([self.branch1x1(x), *b3, *dbl, self.branch_pool(pooled)], 1)


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
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)  # ends at (N, 2048, 8, 8)
        pool3 = x.mean(dim=(2, 3))  # (N, 2048)
        return pool3, self.fc(pool3)  # dropout is the identity at inference


def load_inception(weights=None, device="cpu"):
    """weights: a state dict (used as is: the tests pass random ones), a path (sha256 checked),
    or None: $FID_WEIGHTS, then the torch hub checkpoint cache (downloaded there when missing
    and online). Returns the eval-mode, BN-folded network."""
    model = FIDInceptionV3()
    if not isinstance(weights, dict):
        where = (weights, "FID_WEIGHTS", "--inception-weights")
        weights = torch.load(common.find_pretrained(WEIGHTS_NAME, WEIGHTS_URL, *where), weights_only=True)
    model.load_state_dict(weights)
    for m in model.eval().modules():
        if isinstance(m, ConvBN):
            m.fold()
    return model.to(device, memory_format=torch.channels_last).requires_grad_(False)


# ----------------------------------------------------------------------------- activations and statistics
def _folder_batches(folder, batch_size):
    """pytorch-fid's file set (top-level files with its extensions), as [0, 1] RGB batches."""
    folder = Path(folder)
    if not folder.is_dir():
        raise common.UserError(f"not a folder: {folder}")
    if not (files := sorted(f for f in folder.iterdir() if f.suffix.lower().lstrip(".") in IMAGE_EXTS)):
        raise common.UserError(f"no images in {folder}")
    for i in range(0, len(files), batch_size):
        imgs = []
        for f in files[i : i + batch_size]:
            try:
                with Image.open(f) as img:
                    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255  # as ToTensor
            except OSError as e:
                raise common.UserError(f"unreadable image {f}: {e}") from None
            imgs.append(torch.from_numpy(arr).permute(2, 0, 1))
        for shape in dict.fromkeys(t.shape for t in imgs):  # a batch can only hold one size
            yield torch.stack([t for t in imgs if t.shape == shape])


@torch.inference_mode()
def activations(images, model, batch_size=50, device=None, with_logits=False):
    """images: float tensor in [0, 1] (N, C, H, W), a folder path, or an iterable of such
    batches -> pool3 activations, float64 (N, 2048) (and logits (N, 1008) with_logits)."""
    device = device or next(model.parameters()).device
    if isinstance(images, (str, Path)):
        images = _folder_batches(images, batch_size)
    feats, logits = [], []
    # Full fp32 on a GPU too: TF32 convolutions and matmuls (10-bit mantissas) would move the
    # features, and FID with them, away from pytorch-fid's and from the CPU's cached ones.
    matmul_tf32, torch.backends.cuda.matmul.allow_tf32 = torch.backends.cuda.matmul.allow_tf32, False
    try:
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            for x in [images] if torch.is_tensor(images) else images:
                for chunk in x.split(batch_size):
                    f, l = model(
                        chunk.to(device, torch.float32).contiguous(memory_format=torch.channels_last)
                    )
                    feats.append(f.double().cpu())
                    logits.append(l.double().cpu())
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
    acts = torch.cat(feats).numpy()
    return (acts, torch.cat(logits).numpy()) if with_logits else acts


def stats(acts):
    """Gaussian fit: mean and unbiased covariance, float64."""
    acts = np.asarray(acts, dtype=np.float64)
    return acts.mean(axis=0), np.cov(acts, rowvar=False)


def factor(sigma, fallback=True):
    """L with L L^T = sigma (a covariance): Cholesky's; where sigma is singular (fewer samples than
    dimensions), None unless `fallback`: then V diag(sqrt(w)) from its eigendecomposition (slower)."""
    try:
        return np.linalg.cholesky(sigma)
    except np.linalg.LinAlgError:
        if not fallback:
            return None
        w, V = np.linalg.eigh(sigma)
        return V * np.sqrt(w.clip(min=0))  # rounding below zero clipped


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)): pytorch-fid's number, without its
    sqrtm. Tr (sigma1 sigma2)^(1/2) is the sum of the square roots of the eigenvalues of sigma1 sigma2,
    and with sigma1 = L L^T those are the eigenvalues of the symmetric L^T sigma2 L (eig(AB) = eig(BA)):
    real and >= 0, found by one symmetric eigensolver (2048-d: under a second; sqrtm takes seconds),
    with no imaginary parts to drop."""
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(
            f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}"
        )
    if (L := factor(sigma1, fallback=False)) is None:  # singular: sigma2 sigma1 has the same eigenvalues
        sigma1, sigma2 = sigma2, sigma1
        L = factor(sigma1)
    root_trace = np.sqrt(np.linalg.eigvalsh(L.T @ sigma2 @ L).clip(min=0)).sum()
    diff = mu1 - mu2
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * root_trace)


def fid_bootstrap(acts, mu_real, sigma_real, resamples=FID_RESAMPLES, seed=0):
    """How far FID could move from the draw of the generated samples alone: the standard deviation of
    the FID of `resamples` bootstrap draws of acts' rows (with replacement, seeded) against the same
    real statistics, each by frechet_distance's route with the real covariance factored once."""
    L = factor(sigma_real)
    rng, fids = np.random.default_rng(seed), []
    for _ in range(resamples):
        mu, sigma = stats(acts[rng.integers(0, len(acts), len(acts))])
        root_trace = np.sqrt(np.linalg.eigvalsh(L.T @ sigma @ L).clip(min=0)).sum()
        diff = mu - mu_real
        fids.append(diff.dot(diff) + np.trace(sigma) + np.trace(sigma_real) - 2 * root_trace)
    return float(np.std(fids, ddof=1))


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
        xx, yy = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1)), (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
        mmds.append(xx + yy - 2 * k_xy.mean())
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


def save_stats(path, mu, sigma):  # pytorch-fid's .npz layout
    common.atomic_write(path, lambda f: np.savez(f, mu=mu, sigma=sigma))


def load_stats(path):
    try:
        with np.load(path) as f:
            return f["mu"], f["sigma"]
    except (OSError, ValueError, KeyError) as e:
        raise common.UserError(f"{path} is not a statistics file with mu and sigma ({e})") from None


# ----------------------------------------------------------------------------- CLI
def _acts_or_stats(path, args, model):
    """A folder's activations and statistics, or (None, statistics) of a .npz file."""
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
    a = p.add_argument
    a("paths", nargs=2, help="two folders or .npz files; with --save-stats: folder, output .npz")
    a("--save-stats", action="store_true", help="write the first folder's mu, sigma to the second path")
    a("--batch-size", type=int, default=50)
    a("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a("--features", default="inception", choices=["inception", *data.CLASSIFIED])
    a("--inception-weights", default=None, help=f"path to {WEIGHTS_NAME}")
    a("--kid", action="store_true", help="also print KID (folders only)")
    args = p.parse_args(argv)
    inputs = args.paths[:1] if args.save_stats else args.paths
    if missing := [path for path in inputs if not Path(path).exists()]:
        raise common.UserError(f"not found: {missing[0]}")
    model = None
    if any(not str(path).endswith(".npz") for path in inputs):  # two .npz files need no network at all
        if args.features == "inception":
            model = load_inception(args.inception_weights, args.device)
        else:
            model = classifiers.load_classifier(args.features, args.device)
    if args.save_stats:
        save_stats(args.paths[1], *stats(activations(args.paths[0], model, args.batch_size, args.device)))
        print(f"saved {args.paths[1]}")
        return
    (acts1, stats1), (acts2, stats2) = (_acts_or_stats(path, args, model) for path in args.paths)
    value = frechet_distance(*stats1, *stats2)
    print(f"FID{f'({args.features})' if args.features != 'inception' else ''}: {value}")
    if args.kid:
        mean, std = kid(acts1, acts2)
        print(f"KID: {mean} +- {std}")
    return value


if __name__ == "__main__":
    main()
