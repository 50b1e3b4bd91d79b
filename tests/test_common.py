import argparse
import json
import math

import pytest
import torch
import torch.nn as nn

import common
import dcgan


def test_ema_arithmetic_with_warmup():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    ema = common.EMA(model, decay=0.9)
    w0 = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    d1 = min(0.9, 2 / 11)  # warm-up decay at the first update
    assert torch.allclose(ema.module.weight, d1 * w0 + (1 - d1) * (w0 + 1))
    for _ in range(200):
        ema.update(model)
    # After many updates of constant weights the average converges to them.
    assert torch.allclose(ema.module.weight, model.weight, atol=1e-6)
    assert ema.module.weight.requires_grad is False


def test_ema_decay_caps_warmup():
    model = nn.Linear(1, 1, bias=False)
    ema = common.EMA(model, decay=0.5)
    ema.num_updates = 1000  # warm-up long over: the decay is the cap
    old = ema.module.weight.detach().clone()
    with torch.no_grad():
        model.weight.fill_(10.0)
    ema.update(model)
    assert torch.allclose(ema.module.weight, 0.5 * old + 0.5 * 10.0)


def test_ema_state_round_trip():
    model = nn.Linear(2, 2)
    ema = common.EMA(model, 0.99)
    ema.update(model)
    other = common.EMA(nn.Linear(2, 2), 0.99)
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == 1 and torch.equal(other.module.weight, ema.module.weight)


def test_checkpoint_round_trip(tmp_path):
    state = {"w": torch.randn(3), "step": 7, "nested": {"rng": torch.get_rng_state()}}
    common.save_checkpoint(tmp_path / "c.pt", state)
    back = common.load_checkpoint(tmp_path / "c.pt")
    assert back["step"] == 7 and torch.equal(back["w"], state["w"])


def test_checkpoint_failure_mid_write_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    common.save_checkpoint(path, {"step": 1})
    real_save = torch.save

    def dies_half_way(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        common.save_checkpoint(path, {"step": 2})
    monkeypatch.setattr(torch, "save", real_save)
    assert common.load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temp file left behind


class _Payload:
    ran = []

    def __reduce__(self):
        return (_Payload.ran.append, ("code ran",))


def test_pickle_payload_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"step": 1, "x": _Payload()}, path)
    with pytest.raises(common.UserError, match="refusing"):
        common.load_checkpoint(path)
    assert _Payload.ran == []


def test_missing_checkpoint_is_user_error(tmp_path):
    with pytest.raises(common.UserError, match="not found"):
        common.load_checkpoint(tmp_path / "nope.pt")


def test_slerp_end_points_and_norm():
    torch.manual_seed(0)
    a, b = torch.randn(64), torch.randn(64)
    path = common.slerp(a, b, torch.linspace(0, 1, 5))
    assert torch.allclose(path[0], a, atol=1e-5) and torch.allclose(path[-1], b, atol=1e-5)
    # For equal-norm ends, slerp stays on the sphere where a straight line dips inside.
    b = b * a.norm() / b.norm()
    mid = common.slerp(a, b, torch.tensor([0.5]))[0]
    assert math.isclose(mid.norm().item(), a.norm().item(), rel_tol=1e-4)


def test_a_nonfinite_loss_names_step_and_checkpoint(tmp_path):
    clock = argparse.Namespace(bar=argparse.Namespace(set_postfix=lambda *a, **k: None, close=lambda: None))
    log = common.MetricsLog(tmp_path / "metrics.jsonl", clock)
    with pytest.raises(common.UserError, match=rf"loss is nan at step 12.*{tmp_path / 'ckpt.pt'}"):
        log.train(12, 0, {"loss": float("nan")})
    log.train(13, 0, {"loss": 1.0})
    assert [json.loads(r)["step"] for r in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [13]


def test_amp_policy_auto_is_off_on_cpu():
    args = common.add_common_args(argparse.ArgumentParser()).parse_args(["--device", "cpu"])
    device, autocast, scaler = common.setup_device(args)
    amp, dtype = autocast.keywords["enabled"], autocast.keywords["dtype"]
    assert device.type == "cpu" and amp is False and dtype == torch.float16
    assert not scaler.is_enabled()
    with autocast():
        assert not torch.is_autocast_enabled("cpu")


def test_save_grid_rounds_like_save_image(tmp_path):
    import numpy as np
    from PIL import Image

    x = torch.linspace(-1, 1, 2 * 1 * 4 * 4).view(2, 1, 4, 4)
    common.save_grid(x, tmp_path / "g.png", nrow=2)
    img = np.asarray(Image.open(tmp_path / "g.png"))
    assert img.shape[:2] == (4 + 4, 2 * 4 + 6)  # padding 2 around and between tiles
    assert img[2, 2, 0] == 0 and img[5, 13, 0] == 255


# ----------------------------------------------------------------------------- DiffAugment

ALL_OPS = ("color", "translation", "cutout")


def test_diff_augment_shapes_and_seed():
    x = torch.rand(6, 3, 32, 32) * 2 - 1
    torch.manual_seed(1)
    a = dcgan.diff_augment(x, ALL_OPS)
    torch.manual_seed(1)
    b = dcgan.diff_augment(x, ALL_OPS)
    torch.manual_seed(2)
    c = dcgan.diff_augment(x, ALL_OPS)
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert dcgan.diff_augment(x, ()) is x  # off means untouched


def test_diff_augment_is_differentiable():
    # G learns through D's view of its samples: the gradient must reach the pixels.
    x = (torch.rand(4, 1, 16, 16) * 2 - 1).requires_grad_(True)
    dcgan.diff_augment(x, ALL_OPS).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_translation_shifts_whole_images():
    B, H, W = 8, 16, 16
    x = torch.arange(1, H * W + 1, dtype=torch.float32).view(1, 1, H, W).repeat(B, 1, 1, 1)  # unique values
    torch.manual_seed(0)
    out = dcgan.diff_augment(x, ("translation",))
    shifts = set()
    for b in range(B):
        # Every pixel is either padding (0) or the input pixel at one shift (dy, dx), within 1/8 of the size.
        nz = out[b, 0].nonzero()
        i, j = nz[0].tolist()
        v = int(out[b, 0, i, j].item()) - 1
        dy, dx = v // W - i, v % W - j
        assert abs(dy) <= 2 and abs(dx) <= 2
        for i, j in nz.tolist():
            assert out[b, 0, i, j] == x[b, 0, i + dy, j + dx]
        assert (out[b, 0] == 0).sum() == H * W - len(nz)
        shifts.add((dy, dx))
    assert len(shifts) > 1  # each image draws its own shift


def test_cutout_zeroes_one_square_of_half_the_size():
    x = torch.ones(16, 1, 16, 16)
    torch.manual_seed(0)
    out = dcgan.diff_augment(x, ("cutout",))
    for img in out[:, 0]:
        rows, cols = (img == 0).nonzero(as_tuple=True)
        assert len(rows) == (rows.max() - rows.min() + 1) * (
            cols.max() - cols.min() + 1
        )  # a filled rectangle
        assert rows.max() - rows.min() + 1 <= 8 and cols.max() - cols.min() + 1 <= 8
        assert ((img == 0) | (img == 1)).all()
    assert (out == 0).float().mean() > 0.1


def test_color_is_brightness_saturation_and_contrast_per_image():
    """DiffAugment's color op: image mean + b (b in [-0.5, 0.5]); the grey part's deviations from the mean
    times c (contrast, in [0.5, 1.5]); each pixel's colour (deviation from its grey) times s c (saturation
    s in [0, 2])."""
    torch.manual_seed(0)
    x = torch.rand(256, 3, 8, 8) * 2 - 1
    out = dcgan.diff_augment(x, ("color",))
    grey = lambda t: t.mean(dim=1, keepdim=True) - t.mean(dim=(1, 2, 3), keepdim=True)
    colour = lambda t: t - t.mean(dim=1, keepdim=True)
    factor = lambda a, b: (a * b).sum(dim=(1, 2, 3)) / b.square().sum(dim=(1, 2, 3))  # least squares a = f b
    c, sc = factor(grey(out), grey(x)), factor(colour(out), colour(x))
    assert torch.allclose(grey(out), c.view(-1, 1, 1, 1) * grey(x), atol=1e-5)
    assert torch.allclose(colour(out), sc.view(-1, 1, 1, 1) * colour(x), atol=1e-5)
    b = out.mean(dim=(1, 2, 3)) - x.mean(dim=(1, 2, 3))
    for value, low, high in [(b, -0.5, 0.5), (c, 0.5, 1.5), (sc / c, 0.0, 2.0)]:
        assert value.min() >= low - 1e-5 and value.max() <= high + 1e-5  # within its range ...
        assert value.min() < low + 0.1 * (high - low) and value.max() > high - 0.1 * (
            high - low
        )  # ... all of it


def test_diffaug_policy_parses_and_rejects():
    assert dcgan.diffaug_policy("color,cutout") == ("color", "cutout")
    assert dcgan.diffaug_policy("") == ()
    with pytest.raises(Exception, match="unknown DiffAugment"):
        dcgan.diffaug_policy("color,blur")


class Recorder(nn.Module):
    """A stand-in generator: keeps every latent batch it is given, draws blank 4x4 images."""

    def __init__(self):
        super().__init__()
        self.w, self.seen = nn.Parameter(torch.zeros(1)), []

    def forward(self, z, y=None):
        self.seen.append(z.clone())
        return torch.zeros(len(z), 1, 4, 4) + self.w


def test_save_samples_draws_the_grids_latents_and_walks_between_two_latents_a_row(tmp_path):
    G = Recorder()
    common.save_samples(G, 16, 3, None, {}, None, tmp_path)
    samples, z = G.seen  # samples.png's latents, then interp.png's
    assert torch.equal(samples, torch.randn(64, 16, generator=torch.Generator().manual_seed(3)))
    assert z.shape == (64, 16)
    ends = torch.randn(16, 16, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(z[0], ends[0], atol=1e-5) and torch.allclose(z[7], ends[8], atol=1e-5)
    assert torch.allclose(z[56], ends[7], atol=1e-5) and torch.allclose(z[63], ends[15], atol=1e-5)
    for name in ("samples.png", "interp.png", "progress.gif"):
        assert (tmp_path / name).is_file(), name
