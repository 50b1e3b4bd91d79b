"""cyclegan.py: the image pool, the PatchGAN's receptive field, the generator, the losses on hand-made
tensors, the built-in MNIST and its classifier, end-to-end runs (built-in pair, authors' folder
layout), resume, --generate and the bad inputs."""

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import png_folder
from PIL import Image

import classifiers
import common
import cyclegan
import data
import dcgan
import evaluate

SMALL = ["--preset", "study", "--res", "16", "--ngf", "4", "--ndf", "4", "--batch-size", "4", "--aug", "none"]
SMALL += ["--log-every", "1", "--fid-n", "40", "--fid-n-real", "60"]


def rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- image pool
def numbered(values):
    """Images (N, 1, 2, 2) whose pixels all hold their number: a returned image says where it came from."""
    return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone()


def test_image_pool_of_size_0_passes_through():
    x = numbered([1, 2, 3])
    assert cyclegan.ImagePool(0).query(x) is x


def test_image_pool_fills_first_then_swaps_about_half():
    torch.manual_seed(0)
    pool = cyclegan.ImagePool(10)
    first = numbered(range(10))
    assert torch.equal(pool.query(first), first)  # the first `size` come back unchanged, and are stored
    assert sorted(int(im[0, 0, 0]) for im in pool.images) == list(range(10))
    new = numbered(range(100, 400))
    got = [int(im[0, 0, 0]) for im in pool.query(new)]
    seen = set(range(10))
    swapped = 0
    for i, value in enumerate(got):
        if value != 100 + i:  # swapped: an image stored earlier (an old one, or a new one stored before it)
            assert value in seen, (i, value)
            swapped += 1
        seen.add(100 + i)
    assert len(pool.images) == 10
    assert 110 <= swapped <= 190  # binomial(300, 1/2): mean 150, sd 8.7


def test_image_pool_state_round_trips():
    pool = cyclegan.ImagePool(4)
    pool.query(numbered([1, 2, 3, 4, 5]))
    copy = cyclegan.ImagePool(4)
    copy.load_state_dict(pool.state_dict())
    torch.manual_seed(3)
    a = pool.query(numbered(range(10, 30)))
    torch.manual_seed(3)
    assert torch.equal(copy.query(numbered(range(10, 30))), a)


# ----------------------------------------------------------------------------- networks
def receptive_field(D, res):
    """Side of the input region that one central output logit depends on (norms removed: InstanceNorm
    would spread every logit over the whole image)."""
    for name, m in list(D.net.named_children()):
        if isinstance(m, nn.InstanceNorm2d):
            D.net._modules[name] = nn.Identity()
    x = torch.randn(1, 3, res, res, requires_grad=True)
    out = D(x)
    h, w = out.shape[-2:]
    out[0, 0, h // 2, w // 2].backward()
    touched = x.grad[0].abs().sum(0) > 0  # (res, res)
    return int(touched.any(1).sum()), int(touched.any(0).sum()), (h, w)


@pytest.mark.parametrize("n_layers, field", [(3, 70), (2, 34), (1, 16)])
def test_patchgan_receptive_field(n_layers, field):
    rows_, cols, _ = receptive_field(cyclegan.PatchDiscriminator(3, 4, n_layers), 256)
    assert rows_ == cols == field


def test_patchgan_map_is_30x30_at_256px_and_dc_gives_one_logit():
    assert cyclegan.PatchDiscriminator(3, 4, 3)(torch.randn(1, 3, 256, 256)).shape == (1, 1, 30, 30)
    for res in (16, 32, 64):
        assert cyclegan.ImageDiscriminator(3, 4, res)(torch.randn(2, 3, res, res)).shape == (2, 1, 1, 1)
    # The whole-image D's one logit sees every pixel.
    assert receptive_field(cyclegan.ImageDiscriminator(3, 4, 32), 32)[:2] == (32, 32)


def test_resnet_generator_keeps_the_size_maps_channels_and_normalises_each_image_alone():
    torch.manual_seed(0)
    for res, c_in, c_out in [(16, 1, 3), (32, 3, 1), (64, 3, 3)]:
        G = cyclegan.ResnetGenerator(c_in, c_out, ngf=4, n_blocks=2)
        assert G(torch.randn(2, c_in, res, res)).shape == (2, c_out, res, res)
    G = cyclegan.ResnetGenerator(3, 3, ngf=4, n_blocks=6)
    assert sum(isinstance(m, cyclegan.ResidualBlock) for m in G.modules()) == 6
    x = torch.randn(4, 3, 32, 32)
    # InstanceNorm: an image's translation does not depend on the others in its batch (BatchNorm's would).
    alone, among_others = G(x[:1]), G(torch.cat([x[:1], 5 * torch.randn(3, 3, 32, 32)]))[:1]
    assert torch.allclose(G(x)[:1], alone, atol=1e-4) and torch.allclose(among_others, alone, atol=1e-4)


def test_residual_blocks_and_patch_layers_follow_the_resolution():
    assert cyclegan.parse_args(["--preset", "study", "--res", "128"]).n_blocks == 6
    assert cyclegan.parse_args(["--preset", "study", "--res", "256"]).n_blocks == 9
    assert cyclegan.parse_args(["--preset", "study", "--res", "256"]).d_layers == 3
    assert cyclegan.parse_args(["--preset", "study", "--res", "64"]).d_layers == 1
    assert cyclegan.parse_args(["--preset", "study", "--res", "64", "--d-layers", "3"]).d_layers == 3


# ----------------------------------------------------------------------------- losses and schedule
class Shift(nn.Module):
    def __init__(self, by):
        super().__init__()
        self.by = by

    def forward(self, x):
        return x + self.by


def zeros_d(x):
    return torch.zeros(x.shape[0], 1, 3, 3)


def test_cycle_identity_and_gan_terms_on_hand_made_generators():
    a, b = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)
    # Each generator adds 0.5: a round trip is off by 1 (cycle 1 + 1), a target image by 0.5 (identity
    # 0.5 + 0.5); D says 0 everywhere, so LSGAN's (0 - 1)^2 is 1 for each generator.
    fake_a, fake_b, t = cyclegan.generator_loss(
        (Shift(0.5), Shift(0.5)), (zeros_d, zeros_d), a, b, "lsgan", 10, 0.5
    )
    assert torch.allclose(fake_b, a + 0.5) and torch.allclose(fake_a, b + 0.5)
    assert t["cycle"].item() == pytest.approx(2.0)
    assert t["identity"].item() == pytest.approx(1.0)
    assert t["gan"].item() == pytest.approx(2.0)
    assert t["total"].item() == pytest.approx(2.0 + 10 * 2.0 + 10 * 0.5 * 1.0)
    # A perfect round trip: no cycle or identity loss; no cycle weight: no identity term at all.
    _, _, t = cyclegan.generator_loss((nn.Identity(),) * 2, (zeros_d, zeros_d), a, b, "bce", 10, 0.5)
    assert t["cycle"].item() == t["identity"].item() == 0.0
    assert t["gan"].item() == pytest.approx(2 * np.log(2))
    _, _, t = cyclegan.generator_loss((Shift(0.5), Shift(0.5)), (zeros_d, zeros_d), a, b, "lsgan", 0, 0.5)
    assert "identity" not in t and t["total"].item() == pytest.approx(2.0)


class TwoClasses(nn.Module):
    """A fixed 'classifier' of [0, 1] images: logits (mean - 0.5, 0.5 - mean), features unused."""

    def forward(self, x):
        m = x.mean((1, 2, 3))
        return None, torch.stack([m - 0.5, 0.5 - m], 1)


def test_semantic_loss_is_cross_entropy_against_the_source_images_own_reading():
    f = TwoClasses()
    real = torch.tensor([0.8, -0.8]).view(2, 1, 1, 1).expand(2, 1, 4, 4)  # [0, 1]: 0.9 -> class 0, 0.1 -> 1
    fake = torch.tensor([0.4, 0.2]).view(2, 1, 1, 1).expand(2, 1, 4, 4)  # 0.7 and 0.6: both read as 0
    logits = torch.tensor([[0.2, -0.2], [0.1, -0.1]])
    expected = F.cross_entropy(logits, torch.tensor([0, 1]))
    assert cyclegan.semantic_loss(f, real, fake).item() == pytest.approx(expected.item(), rel=1e-6)
    fake = fake.clone().requires_grad_(True)  # the gradient reaches the translation, none the labels
    cyclegan.semantic_loss(f, real, fake).backward()
    # Descent brightens the first (read as 0, as its source) and darkens the second (its source read as 1).
    assert fake.grad[0].sum() < 0 < fake.grad[1].sum()


def test_semantic_term_trains_with_the_source_classifiers_only(tmp_path):
    out = tmp_path / "run"
    flags = ["--max-steps", "2", "--fid-features", "none", "--lambda-semantic", "2", "--out", str(out)]
    cyclegan.main([*SMALL, *flags])
    train = [r for r in rows(out) if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2]
    for r in train:  # total = gan + 10 (cycle + 0.5 identity) + 2 semantic
        assert r["loss_g_semantic"] > 0
        expected = r["loss_g_gan"] + 10 * (r["loss_g_cycle"] + 0.5 * r["loss_g_identity"])
        assert r["loss_g_total"] == pytest.approx(expected + 2 * r["loss_g_semantic"], rel=1e-5)


def test_discriminator_loss_is_half_the_sum_on_real_and_fake():
    x = torch.zeros(2, 1, 4, 4)
    # D says 0: LSGAN costs (0 - 1)^2 = 1 on the real, (0 - 0)^2 = 0 on the fake.
    assert cyclegan.discriminator_loss(zeros_d, x, x, "lsgan").item() == pytest.approx(0.5)
    assert cyclegan.discriminator_loss(zeros_d, x, x, "bce").item() == pytest.approx(np.log(2))
    with pytest.raises(ValueError):
        cyclegan.gan_loss(torch.zeros(1), True, "hinge")


def test_learning_rate_is_constant_then_linear_to_zero():
    assert [cyclegan.lr_factor(p) for p in (0.0, 0.25, 0.5, 0.75, 1.0)] == [1.0, 1.0, 1.0, 0.5, 0.0]


# ----------------------------------------------------------------------------- built-in MNIST
def test_mnist_loads_deterministically_with_its_classifier():
    a, b = data.load_dataset("mnist", 16), data.load_dataset("mnist", 16)
    assert a.images.shape == (5000, 16, 16, 1) and np.array_equal(np.asarray(a.images), np.asarray(b.images))
    assert np.bincount(a.labels).tolist() == [500] * 10
    train, heldout = a.split()
    assert (len(train), len(heldout)) == (4167, 833)
    assert np.array_equal(np.asarray(heldout.images), np.asarray(b.split()[1].images))
    # The classifier, trained as the digits net on the training split: held-out accuracy.
    net = classifiers.load_classifier("mnist")
    x = torch.from_numpy(np.array(heldout.images)).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        acc = classifiers.accuracy(net(x)[1], torch.from_numpy(heldout.labels))
    print(f"mnist classifier held-out accuracy {acc:.4f}")
    assert acc >= 0.95
    shuffled = torch.from_numpy(np.random.RandomState(0).permutation(heldout.labels))
    assert classifiers.accuracy(net(x)[1], shuffled) < 0.2


def test_every_script_takes_mnist_with_its_own_fid_space(tmp_path):
    out = tmp_path / "dcgan_mnist"
    flags = [
        "--preset",
        "study",
        "--data",
        "mnist",
        "--res",
        "16",
        "--ngf",
        "4",
        "--ndf",
        "4",
        "--aug",
        "none",
    ]
    dcgan.main([*flags, "--max-steps", "2", "--batch-size", "8", "--fid-n", "50", "--out", str(out)])
    (row,) = [r for r in rows(out) if r["kind"] == "fid"]
    assert row["features"] == "mnist" and row["n_real"] == 833  # auto, no Inception weights: FID(mnist)


# ----------------------------------------------------------------------------- end to end
def test_built_in_pair_end_to_end(tmp_path):
    out = tmp_path / "run"
    cyclegan.main([*SMALL, "--max-steps", "6", "--fid-features", "auto", "--out", str(out)])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["domains"] == ["digits", "mnist"] and summary["steps"] == 6
    evals = [r for r in rows(out) if r["kind"] == "eval"]
    assert len(evals) == 1 and evals[0]["features_ab"] == "mnist" and evals[0]["features_ba"] == "digits"
    for key in ("fid_ab", "fid_ba", "acc_ab", "acc_ba", "cycle_ab", "cycle_ba"):
        assert key in summary["final"]
    assert [r["step"] for r in rows(out) if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    # The logged cycle L1 and label preservation, recomputed from the checkpoint's EMA generators.
    ckpt = common.load_checkpoint(out / "ckpt.pt")
    G_AB, G_BA = cyclegan.ResnetGenerator(1, 1, 4, 6), cyclegan.ResnetGenerator(1, 1, 4, 6)
    G_AB.load_state_dict(ckpt["ema_ab"]["module"])
    G_BA.load_state_dict(ckpt["ema_ba"]["module"])
    _, test_a = data.load_dataset("digits", 16).split()
    x, labels = cyclegan.spread_images(test_a, 40)
    with torch.no_grad():
        fake_b = G_AB(x)
        cycle = (G_BA(fake_b) - x).abs().mean().item()
        logits = classifiers.load_classifier("mnist")(evaluate.to_unit_uint8(fake_b))[1]
    assert evals[0]["cycle_ab"] == pytest.approx(cycle, rel=1e-4)
    assert evals[0]["acc_ab"] == pytest.approx(classifiers.accuracy(logits, labels), abs=1e-6)
    # translate.png: 6 rows of 8; its first row is 8 held-out digits as they are, spread over the set.
    grid = np.asarray(Image.open(out / "translate.png").convert("L"))
    assert grid.shape == (2 + 6 * 18, 2 + 8 * 18)
    first = np.asarray(test_a.images[np.linspace(0, len(test_a) - 1, 8).round().astype(int)])[..., 0]
    for i in range(8):
        assert np.array_equal(grid[2:18, 2 + 18 * i : 18 + 18 * i], first[i])
    assert (out / "progress.gif").exists() and (out / "args.json").exists()


def test_authors_folder_layout_and_gray_to_colour(tmp_path):
    root = tmp_path / "horse2zebra"
    png_folder(root / "trainA", 12, res=20, seed=1)
    png_folder(root / "trainB", 10, res=24, seed=2)
    png_folder(root / "testA", 5, res=20, seed=3)  # no testB: B's held-out images are split off trainB
    out = tmp_path / "run"
    cyclegan.main(
        [*SMALL, "--max-steps", "3", "--data", str(root), "--fid-features", "none", "--out", str(out)]
    )
    (last,) = [r for r in rows(out) if r["kind"] == "eval"]
    assert set(last) == {"kind", "step", "epoch", "cycle_ab", "cycle_ba", "sharpness_ab", "sharpness_ba"}
    assert Image.open(out / "translate.png").mode == "RGB"
    # One channel to three works once the identity loss (which needs equal channels) is off.
    out2 = tmp_path / "gray2rgb"
    argv = [*SMALL, "--max-steps", "2", "--data-a", "digits", "--data-b", str(root / "trainB")]
    cyclegan.main([*argv, "--lambda-identity", "0", "--fid-features", "none", "--out", str(out2)])
    ckpt = common.load_checkpoint(out2 / "ckpt.pt")
    assert ckpt["G_AB"]["net.1.weight"].shape[1] == 1 and ckpt["G_BA"]["net.1.weight"].shape[1] == 3


def test_resume_matches_uninterrupted(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    flags = [*SMALL, "--fid-features", "none", "--pool", "6"]  # a small pool: swaps happen in 6 steps
    cyclegan.main([*flags, "--max-steps", "6", "--out", str(a)])
    cyclegan.main([*flags, "--max-steps", "3", "--out", str(b)])
    cyclegan.main([*flags, "--max-steps", "6", "--out", str(b), "--resume"])
    ca, cb = common.load_checkpoint(a / "ckpt.pt"), common.load_checkpoint(b / "ckpt.pt")
    for name in ("G_AB", "G_BA", "D_A", "D_B"):
        for key in ca[name]:
            assert torch.equal(ca[name][key], cb[name][key]), (name, key)
    assert torch.equal(ca["pool_a"]["images"], cb["pool_a"]["images"])
    # The same rows, and the first part's own final evaluation (at step 3) before them.
    first_part = [r for r in rows(b) if r["kind"] == "eval" and r["step"] == 3]
    assert len(first_part) == 1 and [r for r in rows(b) if r not in first_part] == rows(a)


def test_generate_translates_held_out_images_both_ways(tmp_path):
    out = tmp_path / "run"
    cyclegan.main([*SMALL, "--max-steps", "2", "--fid-features", "none", "--out", str(out)])
    cyclegan.main(["--out", str(out), "--generate", "5"])
    for way, source in (("A2B", "digits"), ("B2A", "mnist")):
        files = sorted((out / "generated" / way).glob("*.png"))
        assert [f.name for f in files] == [f"{i:06d}.png" for i in range(5)]
        assert all(Image.open(f).size == (16, 16) for f in files)
        with open(out / "generated" / way / "labels.csv") as f:
            got = [int(r["labels"]) for r in csv.DictReader(f)]
        heldout = data.load_dataset(source, 16).split()[1]
        assert got == heldout.labels[np.linspace(0, len(heldout) - 1, 5).round().astype(int)].tolist()


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "argv, message",
    [
        (lambda t: ["--data-a", str(t / "missing"), "--data-b", "mnist"], "not found"),
        (lambda t: ["--data-a", str(t / "empty"), "--data-b", "mnist"], "no images"),
        (lambda t: ["--data-a", "digits"], "go together"),
        (lambda t: ["--data", str(t / "empty")], "trainA/ and trainB/"),
        (lambda t: ["--data", "digits"], "trainA/ and trainB/"),
        (lambda t: ["--data", str(t), "--data-a", "digits", "--data-b", "mnist"], "not both"),
        (lambda t: ["--data-a", "digits", "--data-b", str(t / "rgb")], "channel"),
        (lambda t: ["--data-a", "digits", "--data-b", str(t / "few")], "none held out"),
        (lambda t: ["--data", str(t / "tiny")], "none held out"),  # trainA of 2 images, no testA
        (lambda t: ["--cond"], "not conditioned"),
        (
            lambda t: ["--data-a", "digits", "--data-b", str(t / "rgb"), "--lambda-semantic", "1"],
            "digit classifier",
        ),
        (lambda t: ["--generate", "3", "--out", str(t / "nothing")], "no checkpoint"),
    ],
)
def test_bad_input_exits_2(tmp_path, capsys, argv, message):
    (tmp_path / "empty").mkdir()
    png_folder(tmp_path / "rgb", 6, res=16)
    png_folder(tmp_path / "few", 2, res=16)
    png_folder(tmp_path / "tiny" / "trainA", 2, res=16)
    png_folder(tmp_path / "tiny" / "trainB", 6, res=16)
    with pytest.raises(SystemExit) as e:
        cyclegan.main(
            [
                *SMALL,
                "--max-steps",
                "1",
                "--fid-features",
                "none",
                "--out",
                str(tmp_path / "r"),
                *argv(tmp_path),
            ]
        )
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1
