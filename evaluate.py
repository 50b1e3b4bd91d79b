"""The study's evaluation of a training run, on top of fid.py (FID, KID, IS) and classifiers.py (the
built-in data's classifiers): `Evaluator` scores a run's samples against its held-out images in one
feature space (Inception when its weights are on disk, else the built-in data's classifier: FID(digits),
FID(mnist), FID(shapes)), with the FID's bootstrap interval, KID, diversity (a collapse alarm), LPIPS
diversity (with torchvision's VGG-16 on disk), sharpness against the real images' (blur or grain), the
samples farthest from any real image, class coverage, and the accuracy of conditional samples by the
data's classifier or the iCLEVR lab's evaluator (--evaluator; iCLEVR's top-k rule), also of --generate's
images (`save_generated`). Faces have a judge of their own (phase 1, offline too): `python evaluate.py
--faces REF RUN...` scores each run's --generate folder by the share of samples in which MTCNN finds a
face and FID(mtcnn) in MTCNN's last network's features, against one common reference (REF's held-out
images).
"""

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from scipy.spatial.distance import cdist, pdist

import classifiers
import common
import data
import fid

VGG_NAME = "vgg16-397923af.pth"  # torchvision's ImageNet VGG-16: LPIPS here, the perceptual loss in vae.py
VGG_URL = f"https://download.pytorch.org/models/{VGG_NAME}"


# ----------------------------------------------------------------------------- diversity and LPIPS diversity
def diversity(acts, n=500):
    """Mean pairwise Euclidean distance between the first n feature vectors: near 0 when a
    model repeats itself (mode collapse), compared with the same number on real images."""
    return float(pdist(np.asarray(acts, np.float64)[:n]).mean())


def farthest_from(acts, real_acts, k=16):
    """Indices of the k rows of acts farthest from their nearest real neighbour: the samples
    that look least like any training-distribution image, the worst first."""
    nearest = cdist(acts, real_acts).min(axis=1)
    return np.argsort(-nearest, kind="stable")[:k]


def ssim(x, y):
    """Mean SSIM (Wang et al. 2004) of image pairs in [0, 1] (N, C, H, W), per channel: an 11x11 Gaussian
    window of sigma 1.5, C1 = (0.01)^2, C2 = (0.03)^2, the window's own (biased) variances; -> (N,)."""
    g = torch.exp(-((torch.arange(11, dtype=x.dtype) - 5) ** 2) / (2 * 1.5**2))
    window = (g[:, None] * g[None, :] / g.sum() ** 2).expand(x.shape[1], 1, 11, 11)  # (C, 1, 11, 11)

    def blur(z):  # the window's weighted mean around each pixel, over the valid positions
        return F.conv2d(z, window, groups=x.shape[1])

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


def ssim_to_nearest(fake, acts, real, real_acts, n=100):
    """The cats report's SSIM for samples: each of the first n samples (in [0, 1], (N, C, H, W)) against
    its nearest held-out image in the feature space (uint8 (M, H, W, C)): high when samples copy, or
    closely resemble, real images; the mean."""
    nearest = cdist(acts[:n], real_acts).argmin(axis=1)
    pairs = torch.from_numpy(np.array(real[nearest])).permute(0, 3, 1, 2).float() / 255
    return float(ssim(fake[:n].float(), pairs).mean())


LPIPS_TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in vgg16().features


def lpips_vgg(state_dict, device="cpu"):
    """VGG-16's convolutional layers up to relu5_3, from torchvision's state dict."""
    from torchvision.models import vgg16

    vgg = vgg16()
    vgg.load_state_dict(state_dict)
    return vgg.features[: LPIPS_TAPS[-1] + 1].eval().requires_grad_(False).to(device)


@torch.no_grad()
def lpips_diversity(images, vgg, pairs=200, seed=0, batch_size=50):
    """Mean LPIPS distance (Zhang et al. 2018) between random pairs of images in [-1, 1], near 0 under
    mode collapse: its uncalibrated baseline (lpips=False, every channel weighing 1): each VGG tap
    unit-normalised over channels, squared differences summed over channels, averaged over positions."""
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
        pairs = zip(taps(images[a]), taps(images[b]))
        dists.append(sum(((u - v) ** 2).sum(1).mean((1, 2)) for u, v in pairs))
    return float(torch.cat(dists).mean())


def sharpness(x):
    """Mean absolute difference of neighbouring pixels of images (N, C, H, W): blur lowers it, grain (noise
    left by a sampler or a generator) raises it; read against real images'."""
    return (
        (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., 1:] - x[..., :-1]).abs().mean()
    ).item() / 2


# ----------------------------------------------------------------------------- evaluation during training
def to_unit_uint8(x):
    """[-1, 1] -> [0, 1] through save_grid's 8-bit rounding: tensors score as their saved PNGs do."""
    return ((x.float() + 1) / 2).mul(255).add(0.5).clamp(0, 255).to(torch.uint8).float() / 255


class Evaluator:
    """FID, KID, diversity (and LPIPS diversity with VGG-16 on disk) of generated images against
    the cached held-out features, in one feature space for the run: 'inception', or the built-in
    data's own classifier ('digits', 'mnist', 'shapes'); and conditional accuracy where such a
    classifier exists."""

    # Building the networks draws their initial weights (replaced by the trained ones) from the global RNG:
    # forked, so that the training noise does not depend on whether a run was resumed (its RNG restored
    # before this) or not.
    @torch.random.fork_rng(devices=[])
    def __init__(self, features, heldout, spec, res, n_real, device, weights=None, crop=None):
        self.model, self.device, self.classifier = None, device, None
        if features in ("auto", "inception"):
            try:  # load once: finding the weights already costs a sha256 of the 100 MB file
                self.model, features = fid.load_inception(weights, device), "inception"
            except common.UserError as e:
                if features == "inception":
                    raise
                features = spec if spec in data.CLASSIFIED else "none"
                if common.rank() == 0:  # one line, not a warning's two: the run goes on
                    then = f"in the {spec} feature space" if features != "none" else "skipped"
                    print(f"note: FID {then}: {e}", file=sys.stderr)
        self.features = features
        if features == "none":
            return
        # The data's classifier scores conditional samples, whatever space FID is measured in.
        own = classifiers.load_classifier(spec, device) if spec in data.CLASSIFIED else None
        self.model, self.classifier = self.model or classifiers.load_classifier(features, device), own
        self.n_real = min(n_real, len(heldout))
        # The device type too: a GPU's convolutions round differently from the CPU's.
        key = f"{features}_{spec}_{crop}_{res}_{self.n_real}_{torch.device(device).type}"
        key = key.replace("/", "_").replace(",", "+")[-150:]
        self.real_acts = self._real_activations(heldout, common.CACHE_DIR / "fid_stats" / f"{key}.npz")
        self.real_stats = fid.stats(self.real_acts)
        self.real_images = np.array(
            heldout.images[data.spread(len(heldout), self.n_real)]
        )  # (N, H, W, C) uint8
        self.real_sharpness = sharpness(torch.from_numpy(self.real_images).permute(0, 3, 1, 2).float() / 255)
        self.real_diversity = diversity(self.real_acts)
        try:  # optional: never downloaded for this, and its absence is n/a in the report
            path = common.find_pretrained(VGG_NAME, VGG_URL, None, "VGG_WEIGHTS", download=False)
            self.vgg = lpips_vgg(torch.load(path, map_location="cpu", weights_only=True), device)
        except common.UserError:
            self.vgg = None

    @classmethod
    def for_run(cls, args, heldout, device):
        """The evaluator a training run's flags ask for. A conditional run's samples are drawn for
        `labels` (--fid-n of them, like the held-out data's) and for each of `conditions`, the fixed
        condition lists (4 samples a condition), whose accuracy `accuracy` measures."""
        weights = args.inception_weights
        evaluator = cls(
            args.fid_features, heldout, args.data, args.res, args.fid_n_real, device, weights, args.crop
        )
        evaluator.n_fake, evaluator.labels = (
            args.fid_n,
            data.labels_like(heldout, args.fid_n) if args.cond else None,
        )
        evaluator.conditions = data.condition_lists(heldout, repeats=4) if args.cond else {}
        if args.evaluator:  # the iCLEVR lab's judge of the accuracy, with or without FID
            evaluator.classifier = classifiers.load_lab_evaluator(args.evaluator, device)
        return evaluator

    def score_generator(self, G, shape, seed, worst_path=None):
        """The run's evaluation of a generator G(noise, labels) (a GAN's G, a VAE's decoder, a DDPM's
        sampler; noise N(0, I) of `shape` a sample, seeded): FID and friends of `n_fake` samples (for
        `labels`), and the accuracy of the samples of each condition list (`acc_test`...); {} when off."""
        if self.features == "none" and self.classifier is None:
            return {}
        row = {}
        if self.features != "none":
            row = self(common.generate(G, self.n_fake, shape, self.device, seed, self.labels), worst_path)
        for name, y in self.conditions.items():
            row[f"acc_{name}"] = self.accuracy(common.generate(G, len(y), shape, self.device, seed + 3, y), y)
        return row

    @common.rank0_first()  # under torchrun rank 0 computes and caches them, the others read the cache
    def _real_activations(self, heldout, path):
        """The held-out images' features, cached at `path` (recomputed if that fails to load)."""
        try:
            with np.load(path) as f:
                acts = f["acts"]
            if acts.shape[0] == self.n_real:
                return acts
            warnings.warn(f"FID statistics cache {path} has {len(acts)} rows, not {self.n_real}; recomputing")
        except (OSError, ValueError, KeyError) as e:
            if path.exists():
                warnings.warn(f"FID statistics cache {path} is damaged ({e}); recomputing it")
        spread = data.spread(len(heldout), self.n_real)  # every class of a class-sorted held-out set
        real = torch.from_numpy(np.array(heldout.images[spread])).permute(0, 3, 1, 2).float() / 255
        acts = fid.activations(real, self.model, device=self.device)
        common.atomic_write(path, lambda f: np.savez(f, acts=acts))
        return acts

    def __call__(self, fake, worst_path=None):
        """fake: generated images in [-1, 1] (N, C, H, W) -> metrics dict (empty when off).
        worst_path: where to save a 4x4 grid of the 16 samples farthest from any real image."""
        if self.features == "none":
            return {}
        # Under torchrun every rank holds all the samples, scores its share and gathers the others'.
        rows = common.share(len(fake))
        mine = to_unit_uint8(fake[rows.start : rows.stop])
        acts, logits = fid.activations(mine, self.model, device=self.device, with_logits=True)
        acts, logits = (common.gather(torch.as_tensor(a), len(fake)).numpy() for a in (acts, logits))
        if self.features == "inception" and min(len(acts), self.n_real) < 2048:
            warnings.warn(f"Inception FID of {len(acts)} vs {self.n_real} images (< 2,048) is biased upwards")
        kid_mean, kid_std = fid.kid(acts, self.real_acts, subsets=50)
        row = dict(features=self.features, fid=fid.frechet_distance(*fid.stats(acts), *self.real_stats))
        # The metric's own noise: a 95% interval (normal, from the bootstrap's spread) over the samples.
        row["fid_std"] = fid.fid_bootstrap(acts, *self.real_stats)
        row.update(fid_lo=row["fid"] - 1.96 * row["fid_std"], fid_hi=row["fid"] + 1.96 * row["fid_std"])
        row.update(kid=kid_mean, kid_std=kid_std, n_fake=len(acts), n_real=self.n_real)
        row.update(diversity=diversity(acts), diversity_real=self.real_diversity)
        row["sharpness"] = sharpness(to_unit_uint8(fake)) / self.real_sharpness  # > 1: grain; < 1: blur
        row["ssim_nearest"] = ssim_to_nearest(to_unit_uint8(fake), acts, self.real_images, self.real_acts)
        if self.vgg is not None:
            row["lpips"] = lpips_diversity(fake, self.vgg)
        if worst_path is not None:
            common.save_grid(fake[torch.from_numpy(farthest_from(acts, self.real_acts))], worst_path, nrow=4)
        if self.features == "inception":
            row["is"], row["is_std"] = fid.inception_score(logits)
        elif self.features in ("digits", "mnist"):
            row["classes_covered"], row["class_kl"] = classifiers.class_coverage(logits)
        return row

    def accuracy(self, fake, labels):
        """Conditional accuracy of images in [-1, 1] generated for `labels` (`judged_accuracy`); None where
        there is no judge (a folder without --evaluator)."""
        return (
            None if self.classifier is None else judged_accuracy(self.classifier, fake, labels, self.device)
        )


@torch.no_grad()
def judged_accuracy(judge, fake, labels, device="cpu"):
    """iCLEVR's rule (classifiers.accuracy) on `judge`'s scores of images in [-1, 1], read as saved PNGs."""
    batches = to_unit_uint8(fake).split(500)
    scores = torch.cat([judge(x.to(device))[1].float().cpu() for x in batches])
    return classifiers.accuracy(scores, labels.cpu())


def save_generated(args, fake, labels, classes, folder):
    """--generate's folder (common.save_generated: the images, labels.csv, the grid) and, with --evaluator,
    the lab's accuracy of the images for their labels (top-k rule): printed and in FOLDER/accuracy.json.
    With --labels ROOT/test.json and N = its length, this is the lab's submission."""
    folder = common.save_generated(fake, labels, classes, folder)
    if args.evaluator and labels is not None:
        acc = judged_accuracy(classifiers.load_lab_evaluator(args.evaluator), fake.cpu(), labels)
        common.write_json(folder / "accuracy.json", dict(accuracy=acc, n=len(fake), evaluator=args.evaluator))
        print(f"accuracy {acc:.4f} by {args.evaluator} (top-k rule, {len(fake)} images)")
    return folder


# ----------------------------------------------------------------------------- faces (phase 1)
class MTCNNFeatures(nn.Module):
    """MTCNN's last network (ONet, the weights facenet-pytorch's wheel ships) as a feature space for
    faces: images in [0, 1] (N, 3, H, W), resized to ONet's 48x48 input and normalised as MTCNN does
    -> (its 256 features before the heads (N, 256), its face / not-face logits (N, 2)). FID in it is
    FID(mtcnn): a face detector's view, never comparable with Inception's."""

    def __init__(self, onet):
        super().__init__()
        self.onet = onet

    def forward(self, x):
        o = self.onet
        x = (F.interpolate(x, size=(48, 48), mode="area") * 255 - 127.5) * 0.0078125  # (N, 3, 48, 48)
        x = o.pool1(o.prelu1(o.conv1(x)))
        x = o.pool2(o.prelu2(o.conv2(x)))
        x = o.pool3(o.prelu3(o.conv3(x)))
        x = o.prelu4(o.conv4(x)).permute(0, 3, 2, 1).flatten(1)  # (N, 1152), in ONet's own order
        h = o.prelu5(o.dense5(x))  # (N, 256)
        return h, o.dense6_1(h)


def face_share(images, detector, min_prob=0.9):
    """The share of images (uint8 (N, H, W, 3)) in which MTCNN finds a face with probability >= min_prob,
    the threshold align.py uses; each image upscaled to at least 128 px first, as MTCNN's smallest face
    (20 px) is a large part of a small sample."""
    import align  # here, not at the top: align.py brings scikit-image, which training does not need

    side = max(128, images.shape[1])
    pil = [Image.fromarray(np.ascontiguousarray(im)).resize((side, side), Image.BICUBIC) for im in images]
    found = [hit for i in range(0, len(pil), 32) for hit in align.detect(pil[i : i + 32], detector)]
    return float(np.mean([hit is not None and hit[0] >= min_prob for hit in found]))


def read_folder(folder):
    """A --generate folder's images (000000.png ...) as uint8 (N, H, W, 3)."""
    files = sorted(Path(folder).glob("[0-9][0-9][0-9][0-9][0-9][0-9].png"))
    if not files:
        raise common.UserError(f"no images in {folder}")
    images = []
    for f in files:
        with Image.open(f) as img:
            images.append(np.asarray(img.convert("RGB")))
    return np.stack(images)


def score_faces(reference, runs, n_real=5000):
    """Phase 1's judge: each run's --generate folder (RUN/generated) against one common reference, the
    held-out sixth of the `reference` data (any --data spec, as a run splits it) at 128 px: the share with
    a face found (p >= 0.9), FID(mtcnn), and Inception FID where its weights are on disk -> RUN/faces.json
    each, and the rows."""
    import align  # here, not at the top: align.py brings scikit-image, which training does not need

    detector = align.make_detector("cpu")
    model = MTCNNFeatures(detector.onet)
    try:
        inception = fid.load_inception(None, "cpu")
    except common.UserError as e:
        inception = None
        print(f"note: no Inception FID for phase 1: {e}", file=sys.stderr)

    def unit(images):  # uint8 (N, H, W, 3) -> [0, 1] (N, 3, H, W)
        return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255

    heldout = data.load_dataset(reference, 128, channels=3, aug="none").split()[1]
    if len(heldout) < 2:
        raise common.UserError(
            f"{reference}: {len(heldout)} held-out images, too few for a reference (12+ images)"
        )
    real = unit(np.array(heldout.images[data.spread(len(heldout), n_real)]))  # (N, 3, 128, 128)
    real_stats = fid.stats(fid.activations(real, model))
    real_inception = fid.stats(fid.activations(real, inception)) if inception else None
    rows = []
    for run in map(Path, runs):
        fake = read_folder(run / "generated")
        row = dict(reference=str(reference), n_real=len(real), n_fake=len(fake))
        row["faces"] = face_share(fake, detector)
        row["fid_mtcnn"] = fid.frechet_distance(*fid.stats(fid.activations(unit(fake), model)), *real_stats)
        if inception:
            acts = fid.activations(unit(fake), inception)
            row["fid_inception"] = fid.frechet_distance(*fid.stats(acts), *real_inception)
        common.write_json(run / "faces.json", row)
        print(f"{run.name}: {json.dumps(row)}")
        rows.append(row)
    return rows


@common.exits_on_user_error
def main(argv=None):
    p = argparse.ArgumentParser(description="Score runs' generated faces against one reference folder.")
    p.add_argument(
        "--faces", required=True, metavar="REF", help="faces (a --data spec): their held-out sixth"
    )
    p.add_argument("runs", nargs="+", help="run folders, each with its --generate folder RUN/generated")
    p.add_argument("--n-real", type=int, default=5000, help="reference images (spread over the folder)")
    args = p.parse_args(argv)
    return score_faces(args.faces, args.runs, args.n_real)


if __name__ == "__main__":
    main()
