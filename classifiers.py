"""The study's classifiers: small CNNs trained deterministically on built-in labelled data
and cached, used to evaluate generated images where Inception does not fit.

`digits`: trained on the training split of scikit-learn's digits. Its 64-d penultimate layer
is the feature space of FID(digits) (never to be compared with Inception FID), and its
predictions give class coverage (how many of the 10 digits the samples hit).

A cached classifier that fails to load (truncated, damaged, another network's weights) is
retrained with a warning, never fatal and never silently reused.
"""

import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import common


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
        steps = epochs * (len(x_train) // 64 + 1)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
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
    """The cached DigitsNet, trained and cached on first use, and again (with a warning) when
    the cached file fails to load."""
    path = common.CACHE_DIR / "digits_net_v1.pt"
    model = DigitsNet()
    try:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["model"])
    except Exception as e:  # missing, truncated, not a checkpoint, or not this network's weights
        if path.exists():
            warnings.warn(f"digits net cache {path} does not load ({type(e).__name__}); retraining it")
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
