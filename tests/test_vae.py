"""vae.py: KL in closed form, the VGG perceptual loss on random weights, the PatchGAN
grid, the upsample+conv decoder, end-to-end runs with resume, missing weights."""

import json

import pytest
import torch
import torch.nn as nn
from torchvision.models import vgg16

import common
import data
import vae

TINY = [
    "--preset",
    "study",
    "--data",
    "lfw",
    "--res",
    "32",
    "--batch-size",
    "8",
    "--width",
    "8",
    "--latent",
    "16",
    "--ndf",
    "8",
    "--log-every",
    "1",
    "--fid-features",
    "none",
]


def test_kl_matches_torch_distributions():
    torch.manual_seed(0)
    mu, logvar = torch.randn(5, 7), torch.randn(5, 7)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    expected = torch.distributions.kl_divergence(q, p).sum(1).mean()
    assert torch.allclose(vae.kl_divergence(mu, logvar), expected, atol=1e-5)


def test_kl_is_zero_at_the_prior():
    assert vae.kl_divergence(torch.zeros(3, 4), torch.zeros(3, 4)).item() == 0.0
    assert vae.kl_divergence(torch.full((3, 4), 0.5), torch.zeros(3, 4)).item() == pytest.approx(4 * 0.125)


@pytest.mark.parametrize("res", [32, 64, 128])
def test_vae_shapes_and_reparameterisation(res):
    torch.manual_seed(0)
    model = vae.VAE(channels=3, res=res, latent=16, width=8)
    x = torch.rand(2, 3, res, res) * 2 - 1
    recon, mu, logvar = model(x)
    assert recon.shape == x.shape and mu.shape == logvar.shape == (2, 16) and recon.abs().max() <= 1
    model.eval()
    a, b = model(x)[0], model(x)[0]
    assert not torch.allclose(a, b)  # z is sampled
    assert torch.equal(
        model.decode(model.encode(x)[0]), model.decode(model.encode(x)[0])
    )  # the mean path is not


def test_decoder_has_no_transposed_conv():
    model = vae.VAE(channels=1, res=64, latent=16, width=8)
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in model.modules())
    assert sum(isinstance(m, nn.Upsample) for m in model.decoder.modules()) == 4  # 4x4 -> 64x64


def test_patch_discriminator_is_a_grid_of_70px_patches():
    D = vae.PatchDiscriminator(channels=3, ndf=8)
    assert D(torch.randn(2, 3, 64, 64)).shape == (2, 1, 6, 6)
    # One logit's receptive field: the input pixels its gradient reaches span 70 px (eval
    # mode: in training mode BatchNorm's batch statistics couple every pixel).
    D.eval()
    x = torch.randn(1, 3, 160, 160, requires_grad=True)
    out = D(x)
    out[0, 0, 8, 8].backward()
    rows, cols = x.grad[0].abs().sum(0).nonzero(as_tuple=True)
    assert rows.max() - rows.min() + 1 == 70 and cols.max() - cols.min() + 1 == 70
    # Two layers (vae.py's choice below 32 px) see 34 px and still fit a 16x16 image.
    D2 = vae.PatchDiscriminator(channels=1, ndf=8, n_layers=2).eval()
    assert D2(torch.randn(2, 1, 16, 16)).shape == (2, 1, 2, 2)
    x = torch.randn(1, 1, 96, 96, requires_grad=True)
    D2(x)[0, 0, 8, 8].backward()
    rows, cols = x.grad[0].abs().sum(0).nonzero(as_tuple=True)
    assert rows.max() - rows.min() + 1 == 34 and cols.max() - cols.min() + 1 == 34


def test_patchgan_at_16px(tmp_path):
    # The smoke study's resolution: pix2pix's 3-layer PatchGAN would not fit 16x16.
    summary = vae.main(
        [
            "--preset",
            "study",
            "--data",
            "digits",
            "--res",
            "16",
            "--width",
            "8",
            "--latent",
            "8",
            "--ndf",
            "8",
            "--batch-size",
            "8",
            "--aug",
            "none",
            "--fid-features",
            "none",
            "--max-steps",
            "3",
            "--adv",
            "0.1",
            "--adv-start",
            "1",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert summary["steps"] == 3 and summary["params_D"] > 0


@pytest.fixture(scope="module")
def vgg_state():
    torch.manual_seed(0)
    return vgg16().state_dict()  # torchvision's architecture, random weights


def test_perceptual_zero_for_identical_positive_otherwise(vgg_state):
    loss = vae.VGGPerceptual(vgg_state)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert loss(x, x).item() == 0.0
    assert loss(x, x + 0.1 * torch.randn_like(x)).item() > 0
    gray = torch.rand(2, 1, 32, 32) * 2 - 1
    gray2 = torch.rand(2, 1, 32, 32) * 2 - 1
    assert torch.allclose(loss(gray, gray2), loss(gray.repeat(1, 3, 1, 1), gray2.repeat(1, 3, 1, 1)))


def test_perceptual_taps_are_the_named_relus(vgg_state):
    loss = vae.VGGPerceptual(vgg_state)
    assert set(loss.TAPS.values()) == {"relu1_2", "relu2_2", "relu3_3"}
    # torchvision's vgg16().features: conv1_1 relu conv1_2 relu(3) pool conv2_1 relu conv2_2 relu(8) pool
    # conv3_1 relu conv3_2 relu conv3_3 relu(15)
    ref = vgg16()
    ref.load_state_dict(vgg_state)
    ref.eval()
    convs_before = {i: sum(isinstance(m, nn.Conv2d) for m in ref.features[:i]) for i in loss.TAPS}
    assert convs_before == {3: 2, 8: 4, 15: 7} and all(
        isinstance(ref.features[i], nn.ReLU) for i in loss.TAPS
    )
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    normed = ((x + 1) / 2 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]
    ).view(1, 3, 1, 1)
    seen = {}
    for i in loss.TAPS:
        ref.features[i].register_forward_hook(lambda m, inp, out, i=i: seen.__setitem__(i, out.clone()))
    with torch.no_grad():
        ref.features(normed)
        taps = loss.taps(x)
    for i, name in loss.TAPS.items():
        assert torch.allclose(taps[name], seen[i], atol=1e-5), name
    assert not any(p.requires_grad for p in loss.parameters())


def rows(out):
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]


def test_end_to_end_with_patchgan(tmp_path):
    out = tmp_path / "run"
    # lfw: 84 training faces // 8 = 10 steps an epoch.
    summary = vae.main(TINY + ["--max-steps", "12", "--adv", "0.1", "--adv-start", "5", "--out", str(out)])
    for name in [
        "args.json",
        "metrics.jsonl",
        "samples.png",
        "recon.png",
        "interp.png",
        "progress.gif",
        "ckpt.pt",
        "summary.json",
        "samples/epoch_0001.png",
    ]:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    train = [r for r in rows(out) if r["kind"] == "train"]
    assert (
        "adv" not in train[3] and "adv" in train[5] and "loss_d" in train[5]
    )  # the PatchGAN starts at step 5
    assert {"mse", "kl", "loss"} <= set(train[0])
    evals = [r for r in rows(out) if r["kind"] == "eval"]
    ckpt = common.load_checkpoint(out / "ckpt.pt")
    # The logged held-out error is the EMA model's, recomputed here from the checkpoint on lfw's held-out set.
    model = vae.VAE(1, 32, 16, 8)
    model.load_state_dict(ckpt["ema"]["module"])
    heldout = data.load_dataset("lfw", 32, aug="none").split()[1]
    assert evals[-1]["step"] == 12
    mse, similarity = vae.heldout_reconstruction(model.eval(), heldout, "cpu")
    assert evals[-1]["heldout_mse"] == pytest.approx(mse, rel=1e-6)
    assert evals[-1]["heldout_ssim"] == pytest.approx(similarity, rel=1e-6)
    assert summary["final"]["heldout_mse"] == evals[-1]["heldout_mse"] and summary["params_D"] > 0
    assert {"vae", "ema", "opt", "D", "opt_d", "scaler"} <= set(ckpt) and ckpt["step"] == 12
    from PIL import Image

    assert Image.open(out / "recon.png").size == (8 * 34 + 2, 8 * 34 + 2)  # 4 input rows + 4 recon rows


def test_heldout_reconstruction_in_closed_form():
    """A perfect autoencoder: error 0, SSIM 1; one that adds 0.1 to every pixel: error 0.01, SSIM below 1."""

    class Shifted:
        def __init__(self, shift):
            self.shift = shift

        def encode(self, x, y):
            return x, None  # (mu, logvar): the image itself as the code

        def decode(self, z, y):
            return z + self.shift

    heldout = data.load_dataset("lfw", 32, aug="none").split()[1]
    assert vae.heldout_reconstruction(Shifted(0.0), heldout, "cpu") == pytest.approx((0.0, 1.0))
    mse, similarity = vae.heldout_reconstruction(Shifted(0.1), heldout, "cpu")
    assert mse == pytest.approx(0.01, rel=1e-4) and 0.5 < similarity < 0.999


def test_resume_matches_uninterrupted(tmp_path):
    flags = TINY + ["--adv", "0.1", "--adv-start", "4"]
    a, b = tmp_path / "a", tmp_path / "b"
    vae.main(flags + ["--max-steps", "9", "--out", str(a)])
    vae.main(flags + ["--max-steps", "4", "--out", str(b)])
    vae.main(flags + ["--max-steps", "9", "--out", str(b), "--resume"])
    ca, cb = common.load_checkpoint(a / "ckpt.pt"), common.load_checkpoint(b / "ckpt.pt")
    for key in ca["vae"]:
        assert torch.equal(ca["vae"][key], cb["vae"][key]), key
    for key in ca["D"]:
        assert torch.equal(ca["D"][key], cb["D"][key]), key
    drop = lambda rs: [r for r in rs if not (r["kind"] == "eval" and r["step"] == 4)]
    assert rows(a) == drop(rows(b))


def test_perceptual_step_runs_with_weights(tmp_path, monkeypatch, vgg_state):
    monkeypatch.setattr(vae, "load_vgg", lambda path: vgg_state)
    out = tmp_path / "run"
    vae.main(TINY + ["--max-steps", "3", "--beta", "1e-4", "--perceptual", "0.1", "--out", str(out)])
    train = [r for r in rows(out) if r["kind"] == "train"]
    assert all(r["perceptual"] > 0 for r in train)
    assert train[-1]["loss"] == pytest.approx(
        train[-1]["mse"] + 1e-4 * train[-1]["kl"] + 0.1 * train[-1]["perceptual"], rel=1e-5
    )


def test_missing_vgg_weights_is_one_clear_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("GENSTUDY_OFFLINE")  # a download is tried, and fails as offline

    def offline(url, dst):
        raise OSError("network is unreachable")

    monkeypatch.setattr(common, "download_file", offline)
    with pytest.raises(SystemExit) as e:
        vae.main(TINY + ["--max-steps", "1", "--perceptual", "0.1", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: weights {vae.VGG_NAME} not found at {tmp_path / 'torch' / 'hub'}")
    assert "(download failed: network is unreachable)" in err and "--vgg-weights PATH" in err


def test_wrong_vgg_file_refused(tmp_path, capsys):
    bad = tmp_path / vae.VGG_NAME
    torch.save({"x": torch.zeros(1)}, bad)
    with pytest.raises(SystemExit) as e:
        vae.main(
            TINY
            + [
                "--max-steps",
                "1",
                "--perceptual",
                "0.1",
                "--vgg-weights",
                str(bad),
                "--out",
                str(tmp_path / "run"),
            ]
        )
    assert e.value.code == 2 and "sha256" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--beta", "-1"], "error: --beta, --perceptual and --adv must be >= 0"),
        (["--cond"], "error: --cond needs labelled data with at least 2 classes; lfw has 1"),
        (["--data", ""], "error: --data is empty"),
    ],
)
def test_bad_input_exits_2(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as e:
        vae.main(TINY + ["--max-steps", "1", "--out", str(tmp_path / "run")] + flags)
    assert e.value.code == 2 and capsys.readouterr().err.splitlines()[-1].endswith(message)
