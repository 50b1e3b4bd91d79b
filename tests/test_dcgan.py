import argparse
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT

import common
import data
import dcgan
import evaluate

TINY = [
    "--preset",
    "study",
    "--data",
    "lfw",
    "--batch-size",
    "16",
    "--ngf",
    "8",
    "--ndf",
    "8",
    "--log-every",
    "2",
    "--sample-every",
    "1",
    "--ckpt-every",
    "1",
    "--fid-features",
    "none",
]


@pytest.mark.parametrize("res", [32, 64, 128])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_follow_res(res, channels):
    G = dcgan.Generator(nz=16, ngf=8, channels=channels, res=res)
    D = dcgan.Discriminator(ndf=8, channels=channels, res=res)
    x = G(torch.randn(5, 16))
    assert x.shape == (5, channels, res, res) and x.abs().max() <= 1
    assert D(x).shape == (5,)


@pytest.mark.parametrize("arch", ["dcgan", "upconv", "csp"])
@pytest.mark.parametrize("res", [32, 64, 128])
def test_generator_archs_follow_res(arch, res):
    G = dcgan.Generator(nz=16, ngf=8, channels=3, res=res, arch=arch)
    x = G(torch.randn(3, 16))
    assert x.shape == (3, 3, res, res) and x.abs().max() <= 1


@pytest.mark.parametrize("arch", ["dcgan", "upconv", "csp"])
def test_up_blocks_double_height_and_width(arch):
    block = dcgan.up_block(arch, 32, 16)
    assert block(torch.randn(2, 32, 5, 7)).shape == (2, 16, 10, 14)
    assert dcgan.CSPUp(32, 16)(torch.randn(2, 32, 4, 4)).shape == (2, 16, 8, 8)


def test_upconv_has_no_transposed_conv_after_the_projection():
    G = dcgan.Generator(nz=16, ngf=8, channels=1, res=64, arch="upconv")
    transposed = [m for m in G.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(transposed) == 1 and transposed[0] is G.net[0]  # only z (1x1) -> 4x4


def test_csp_half_of_the_channels_goes_straight_through():
    block = dcgan.CSPUp(8, 4)
    with torch.no_grad():  # let the 1x1 mix read only the straight half, unchanged
        block.mix.weight.zero_()
        block.mix.weight[:, :4, 0, 0] = torch.eye(4)
    x = torch.randn(2, 8, 3, 3)
    assert torch.equal(block(x), torch.nn.functional.interpolate(x[:, :4], scale_factor=2, mode="nearest"))
    assert block.conv[0].in_channels == 4 and block.conv[0].out_channels == 4  # the learned half


def test_csp_reports_variant_tanh_and_a_norm_on_the_straight_half():
    torch.manual_seed(0)
    block = dcgan.CSPUp(8, 4, act="tanh", straight_bn=True)
    x = torch.randn(6, 8, 3, 3) * 5 + 2  # far from zero mean and unit spread
    with torch.no_grad():  # the mix reads the straight half alone, then the learned half alone
        block.mix.weight.zero_()
        block.mix.weight[:, :4, 0, 0] = torch.eye(4)
        straight = block(x)  # (B, 4, 6, 6)
        block.mix.weight.zero_()
        block.mix.weight[:, 4:, 0, 0] = torch.eye(4)
        learned = block(x)
    # Training-mode BatchNorm: each straight channel standardised over the batch and positions.
    assert straight.mean(dim=(0, 2, 3)).abs().max() < 1e-5
    assert straight.var(dim=(0, 2, 3), unbiased=False).sub(1).abs().max() < 1e-3
    # Tanh after the learned half's BatchNorm: inside (-1, 1), and negative values kept (ReLU's are not).
    assert learned.abs().max() < 1 and learned.min() < -0.5
    relu = dcgan.CSPUp(8, 4)
    assert isinstance(relu.conv[2], torch.nn.ReLU) and isinstance(relu.straight_norm, torch.nn.Identity)


def test_conditional_shapes():
    G = dcgan.Generator(nz=16, ngf=8, channels=1, res=32, n_classes=10)
    D = dcgan.Discriminator(ndf=8, channels=1, res=32, n_classes=10)
    y = torch.arange(4)
    x = G(torch.randn(4, 16), y)
    assert D(x, y).shape == (4,)
    # The label matters: same z, different y, different image.
    z = torch.randn(1, 16).expand(2, 16)
    G.eval()
    out = G(z, torch.tensor([0, 1]))
    assert not torch.allclose(out[0], out[1])


def test_losses_are_bce_on_logits():
    real, fake = torch.tensor([3.0, -1.0]), torch.tensor([-2.0, 0.5])
    expected = -(torch.log(torch.sigmoid(real)).mean() + torch.log(1 - torch.sigmoid(fake)).mean())
    assert torch.allclose(dcgan.d_loss(real, fake), expected, atol=1e-6)
    assert torch.allclose(dcgan.g_loss(fake), -torch.log(torch.sigmoid(fake)).mean(), atol=1e-6)


def test_end_to_end_writes_every_output(tmp_path):
    out = tmp_path / "run"
    summary = dcgan.main(TINY + ["--max-steps", "7", "--out", str(out)])
    for name in [
        "args.json",
        "metrics.jsonl",
        "samples.png",
        "progress.gif",
        "ckpt.pt",
        "summary.json",
        "interp.png",
        "samples/epoch_0001.png",
    ]:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [2, 4, 6, 7]
    ckpt = common.load_checkpoint(out / "ckpt.pt")
    assert ckpt["step"] == 7 and {"G", "D", "ema", "opt_g", "opt_d", "scaler", "rng", "args"} <= set(ckpt)
    assert summary["steps"] == 7 and summary["params"] > 0 and summary["images_per_s"] > 0
    assert json.loads((out / "summary.json").read_text())["sample_seconds_per_image"] > 0


def test_resume_matches_uninterrupted(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    dcgan.main(TINY + ["--max-steps", "12", "--out", str(a)])
    dcgan.main(TINY + ["--max-steps", "5", "--out", str(b)])
    dcgan.main(TINY + ["--max-steps", "12", "--out", str(b), "--resume"])
    ca, cb = common.load_checkpoint(a / "ckpt.pt"), common.load_checkpoint(b / "ckpt.pt")
    assert cb["step"] == 12
    for key in ca["G"]:
        assert torch.equal(ca["G"][key], cb["G"][key]), key
    for key in ca["ema"]["module"]:
        assert torch.equal(ca["ema"]["module"][key], cb["ema"]["module"][key]), key
    # Same losses at every logged step; b also logged where its first part ended (step 5).
    rows = lambda p: [json.loads(l) for l in (p / "metrics.jsonl").read_text().splitlines()]
    assert rows(a) == [r for r in rows(b) if r["step"] != 5]


def start_until_checkpoint(out):
    """Start a long dcgan.py run in a subprocess; return it once its first checkpoint exists."""
    cmd = [sys.executable, str(ROOT / "dcgan.py")] + TINY + ["--max-steps", "100000", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
    deadline = time.time() + 120
    while not (out / "ckpt.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    return proc


def test_resume_after_kill(tmp_path):
    """SIGKILL mid-run: the last checkpoint survives and --resume finishes the run."""
    out = tmp_path / "run"
    proc = start_until_checkpoint(out)
    time.sleep(0.5)  # let it get into the middle of writing something
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = common.load_checkpoint(out / "ckpt.pt")["step"]
    assert saved >= 5
    summary = dcgan.main(TINY + ["--max-steps", str(saved + 3), "--out", str(out), "--resume"])
    assert summary["steps"] == saved + 3


def test_max_minutes_budget(tmp_path):
    summary = dcgan.main(TINY + ["--max-minutes", "0.05", "--out", str(tmp_path / "run")])
    assert summary["stopped_by"] == "max-minutes" and summary["complete"] is True
    assert 2.5 < summary["train_seconds"] < 30


def test_fid_rows_in_digits_space(tmp_path):
    out = tmp_path / "run"
    summary = dcgan.main(
        [
            "--preset",
            "study",
            "--data",
            "digits",
            "--aug",
            "none",
            "--batch-size",
            "64",
            "--ngf",
            "8",
            "--ndf",
            "8",
            "--max-steps",
            "25",
            "--fid-every",
            "1",
            "--fid-features",
            "digits",
            "--fid-n",
            "300",
            "--out",
            str(out),
        ]
    )
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    fids = [r for r in rows if r["kind"] == "fid"]
    # One at the end of epoch 1 (1,498 training digits // 64 = 23 steps), one at the end (step 25).
    assert [r["step"] for r in fids] == [23, 25]
    for r in fids:
        assert r["features"] == "digits" and r["n_fake"] == 300 and r["n_real"] == 299
    # The last row again, from the checkpoint's EMA generator: the same samples, the same numbers.
    args = argparse.Namespace(**json.loads((out / "args.json").read_text()))
    G = dcgan.Generator(100, 8, 1, 32)
    G.load_state_dict(common.load_checkpoint(out / "ckpt.pt")["ema"]["module"])
    heldout = data.train_and_heldout(args)[1]
    row = evaluate.Evaluator.for_run(args, heldout, "cpu").score_generator(G.eval(), 100, args.seed + 2)
    assert {k: row[k] for k in ("fid", "kid", "classes_covered")} == {
        k: fids[-1][k] for k in ("fid", "kid", "classes_covered")
    }
    assert summary["final"]["fid"] == fids[-1]["fid"]


def test_ttur_and_lr_decay(tmp_path):
    out = tmp_path / "run"
    dcgan.main(
        TINY
        + ["--max-steps", "5", "--lr-g", "1e-4", "--lr-d", "4e-4", "--lr-decay", "0.9", "--out", str(out)]
    )
    ckpt = common.load_checkpoint(out / "ckpt.pt")
    assert ckpt["opt_g"]["param_groups"][0]["lr"] == pytest.approx(1e-4 * 0.9**5)
    assert ckpt["opt_d"]["param_groups"][0]["lr"] == pytest.approx(4e-4 * 0.9**5)
    # The decayed learning rates live in the optimizers' state, so a resume continues them.
    assert ckpt["step"] == 5 and "sched_g" not in ckpt


def test_variants_resume_exactly(tmp_path):
    """Every seed variant at once (CSP generator, TTUR, lr decay, DiffAugment): the
    decayed learning rates and DiffAugment's random draws must survive a resume."""
    flags = TINY + [
        "--g-arch",
        "csp",
        "--csp-act",
        "tanh",
        "--csp-bn",
        "--weight-decay",
        "1e-3",
        "--lr-g",
        "1e-4",
        "--lr-d",
        "3e-4",
        "--lr-decay",
        "0.95",
        "--diffaug",
        "color,translation,cutout",
    ]
    a, b = tmp_path / "a", tmp_path / "b"
    dcgan.main(flags + ["--max-steps", "12", "--out", str(a)])
    dcgan.main(flags + ["--max-steps", "6", "--out", str(b)])
    dcgan.main(flags + ["--max-steps", "12", "--out", str(b), "--resume"])
    ca, cb = common.load_checkpoint(a / "ckpt.pt"), common.load_checkpoint(b / "ckpt.pt")
    for key in ca["G"]:
        assert torch.equal(ca["G"][key], cb["G"][key]), key
    assert ca["opt_d"]["param_groups"][0]["lr"] == cb["opt_d"]["param_groups"][0]["lr"]
    assert (
        ca["opt_g"]["param_groups"][0]["weight_decay"]
        == ca["opt_d"]["param_groups"][0]["weight_decay"]
        == 1e-3
    )


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--g-arch", "resnet"],
            "error: argument --g-arch: invalid choice: 'resnet' (choose from 'dcgan', 'upconv', 'csp')",
        ),
        (
            ["--diffaug", "color,blur"],
            "error: argument --diffaug: unknown DiffAugment op(s) ['blur']; choose from ('color', "
            "'translation', 'cutout')",
        ),
        (["--lr-decay", "1.5"], "error: --lr-decay must be in (0, 1], got 1.5"),
        (["--csp-bn"], "error: --csp-act and --csp-bn need --g-arch csp"),
    ],
)
def test_bad_variant_flags_exit_2(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as e:
        dcgan.main(TINY + ["--max-steps", "1", "--out", str(tmp_path / "run")] + flags)
    assert e.value.code == 2 and capsys.readouterr().err.strip().splitlines()[-1].endswith(message)
