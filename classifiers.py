"""The study's classifiers: small CNNs trained deterministically on built-in labelled data
and cached, used to evaluate generated images where Inception does not fit.

`digits`: trained on the training split of scikit-learn's digits. Its 64-d penultimate layer
is the feature space of FID(digits) (never to be compared with Inception FID), and its
predictions give class coverage (how many of the 10 digits the samples hit) and the accuracy
of digits generated for an asked class.

`mnist`: the same network, trained the same way on the training split of the built-in
5,000 MNIST digits: FID(mnist), and the label preservation of translations into MNIST.

`shapes`: trained on the training split of the built-in shapes (24 labels, multi-hot, BCE on
logits), each image changed as a person would not notice (`unnoticed`: small shifts, slight blur,
brightness and contrast, pixel noise up to a generator's grain), so that it judges what is drawn,
not how cleanly: a sigma-0.02 noise costs it nothing, an extra object, a wrong colour or a wrong
shape cost what they should (benchmarks/judge_robustness.py). Its 128-d penultimate layer is the
feature space of FID(shapes); its top-k labels give the conditional accuracy of generated
multi-object images (the iCLEVR evaluator's rule).

A cached classifier that fails to load (truncated, damaged, another network's weights) is
retrained with a warning, never fatal and never silently reused.
"""

import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import common
import data


class DigitsNet(nn.Module):
    """A small digit classifier. x (N, C, H, W) in [0, 1] -> (features (N, 64), logits (N, 10)).
    Images are made gray and resized (antialiased) to 16x16 first, so any --res works; the
    digits are 8x8 at the source, so 16x16 loses nothing and costs a quarter of 32x32."""

    def __init__(self):
        super().__init__()

        def block(c_in, c_out):
            return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]

        layers = block(1, 32) + block(32, 32) + [nn.MaxPool2d(2)]  # (N, 32, 8, 8)
        layers += block(32, 64) + block(64, 64) + [nn.MaxPool2d(2)]  # (N, 64, 4, 4)
        layers += block(64, 128) + [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 64)]  # (N, 64)
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        x = x.mean(dim=1, keepdim=True)
        if x.shape[-1] != 16:
            x = F.interpolate(x, size=(16, 16), mode="bilinear", antialias=True, align_corners=False)
        feats = self.body(2 * x - 1)
        return feats, self.head(feats)


class ShapesNet(nn.Module):
    """A small multi-label classifier of the shapes images. x (N, 3, H, W) in [0, 1] ->
    (features (N, 128), logits (N, 24)); resized to 32x32 first, so any --res works."""

    def __init__(self, n_labels=24):
        super().__init__()

        def block(c_in, c_out):
            return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]

        layers = block(3, 16) + block(16, 32) + block(32, 64)  # (N, 64, 4, 4)
        layers += [nn.Flatten(), nn.Linear(64 * 16, 128)]  # position matters little; keep it anyway
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(128, n_labels))

    def forward(self, x):
        if x.shape[-1] != 32:
            x = F.interpolate(x, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
        feats = self.body(2 * x - 1)
        return feats, self.head(feats)


def accuracy(logits, labels):
    """iCLEVR's accuracy. Multi-hot labels (N, K): for each image, k = its number of labels;
    hits = how many of the classifier's top-k labels are among them; total hits / total k.
    Class indices (N,): the fraction classified as the asked class."""
    logits, labels = torch.as_tensor(logits), torch.as_tensor(labels)
    if labels.dim() == 1:
        return (logits.argmax(1) == labels).float().mean().item()
    k = labels.sum(1)  # (N,)
    rank = logits.argsort(1, descending=True).argsort(1)  # (N, K): 0 for each image's top label
    hits = ((rank < k[:, None]) & (labels > 0)).sum()
    return (hits / k.sum()).item()


def _images(data):
    return torch.from_numpy(np.array(data.images)).permute(0, 3, 1, 2).float() / 255  # (N, C, H, W) in [0, 1]


def unnoticed(x):
    """The changes a person does not notice in a shapes image x in [0, 1] (B, 3, H, W), drawn per image:
    a shift of up to 2 px (edges repeated), a partial 3x3 blur, brightness +-0.05 and contrast x[0.9, 1.1],
    pixel noise of std up to 0.1 (25 of 255 levels: a generator's grain). The judge trained on them
    scores what is drawn, not how cleanly; colours and shapes stay as they were."""
    B, _, H, W = x.shape
    dy, dx = torch.randint(0, 5, (2,))
    x = F.pad(x, (2, 2, 2, 2), mode="replicate")[:, :, dy : dy + H, dx : dx + W]
    blur = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    x = torch.lerp(x, blur, torch.rand(B, 1, 1, 1) * (torch.rand(B, 1, 1, 1) < 0.5))
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * (0.9 + 0.2 * torch.rand(B, 1, 1, 1)) + mean + 0.1 * (torch.rand(B, 1, 1, 1) - 0.5)
    return (x + 0.1 * torch.rand(B, 1, 1, 1) * torch.randn_like(x)).clamp(0, 1)


def train_classifier(name, epochs, seed=0):
    """Train the `name` network ('digits', 'mnist' or 'shapes') on its data's training split, Adam with a
    one-cycle schedule, on logits (cross-entropy for one label, BCE for multi-hot: no softmax or
    sigmoid first). Digits get random +-1 px shifts, so slightly off-centre samples still read; shapes
    the `unnoticed` changes (a narrower net, 16-32-64 channels, with a higher peak rate pays for them).
    Deterministic: seeded, CPU, the caller's RNG state left untouched. -> (model, held-out accuracy)."""
    res = 32 if name == "shapes" else 16
    train, heldout = data.load_dataset(name, res, aug="none").split()
    x_train, y_train = _images(train), torch.from_numpy(np.array(train.labels))
    if name != "shapes":
        loss_fn = F.cross_entropy
    else:
        loss_fn, y_train = F.binary_cross_entropy_with_logits, y_train.float()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ShapesNet() if name == "shapes" else DigitsNet()
        peak = 3e-3 if name == "shapes" else 2e-3
        opt = torch.optim.Adam(model.parameters(), lr=peak)
        steps = epochs * (len(x_train) // 64 + 1)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=peak, total_steps=steps)
        for _ in range(epochs):
            model.train()
            for idx in torch.randperm(len(x_train)).split(64):
                x = x_train[idx]
                if name != "shapes":
                    dx, dy = torch.randint(-1, 2, (2,))
                    x = torch.roll(x, shifts=(int(dy), int(dx)), dims=(2, 3))
                else:
                    x = unnoticed(x)
                loss = loss_fn(model(x)[1], y_train[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(x)[1] for x in _images(heldout).split(500)])
    return model, accuracy(logits, torch.from_numpy(np.array(heldout.labels)))


VERSION = dict(digits=1, mnist=1, shapes=2)  # a cached network of an older version is not read


@common.rank0_first()  # under torchrun rank 0 trains and caches it, the others read the cache
def load_classifier(name, device="cpu"):
    """The cached `name` network, trained and cached on first use, and again (with a warning)
    when the cached file fails to load."""
    path = common.CACHE_DIR / f"{name}_net_v{VERSION[name]}.pt"
    model = ShapesNet() if name == "shapes" else DigitsNet()
    try:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["model"])
    except Exception as e:  # missing, truncated, not a checkpoint, or not this network's weights
        if path.exists():
            warnings.warn(f"{name} net cache {path} does not load ({type(e).__name__}); retraining it")
        model, acc = train_classifier(name, epochs=10)
        print(f"{name} classifier trained: held-out accuracy {acc:.2%} (cached at {path})")
        common.save_checkpoint(path, {"model": model.state_dict(), "accuracy": acc})
    return model.eval().requires_grad_(False).to(device)


class LabEvaluator(nn.Module):
    """The iCLEVR lab's judge: torchvision's ResNet-18 with fc = Sequential(Linear(512, 24), Sigmoid()),
    fed 64x64 RGB in [-1, 1]. x (N, 3, H, W) in [0, 1] -> (None, probabilities (N, 24)), ranked by the
    same top-k rule (`accuracy`) as the built-in judges' logits."""

    def __init__(self, state_dict):
        super().__init__()
        from torchvision.models import resnet18  # only here: every other start stays free of torchvision

        self.net = resnet18()
        self.net.fc = nn.Sequential(nn.Linear(512, 24), nn.Sigmoid())
        self.net.load_state_dict(state_dict)

    def forward(self, x):
        if x.shape[-1] != 64:
            x = F.interpolate(x, size=(64, 64), mode="bilinear", antialias=True, align_corners=False)
        return None, self.net(2 * x - 1)


def load_lab_evaluator(path, device="cpu"):
    """--evaluator PATH: the lab's checkpoint ({"model": ResNet-18 state dict}); anything else is one line."""
    try:
        model = LabEvaluator(torch.load(path, map_location="cpu", weights_only=True)["model"])
    except Exception as e:  # missing, not a checkpoint, pickled code, or another network's weights
        first = str(e).strip().splitlines()[0][:120] if str(e).strip() else ""
        raise common.UserError(
            f"--evaluator {path} is not the iCLEVR lab's evaluator checkpoint ({type(e).__name__}: {first})"
        ) from None
    return model.eval().requires_grad_(False).to(device)


def class_coverage(logits, n_classes=10):
    """How many classes the samples hit (a class counts when it gets at least a fifth of
    its fair share, n / (5 * n_classes)), and KL(predicted-class histogram || uniform)."""
    pred = np.asarray(logits).argmax(1)
    hist = np.bincount(pred, minlength=n_classes) / len(pred)
    covered = int((hist >= 1 / (5 * n_classes)).sum())
    nz = hist > 0
    return covered, float((hist[nz] * np.log(hist[nz] * n_classes)).sum())
