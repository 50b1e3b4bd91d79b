import json
import math

import pytest
import torch
import torch.nn.functional as F

import common
import ddpm

TINY = [
    "--preset",
    "study",
    "--data",
    "lfw",
    "--res",
    "16",
    "--batch-size",
    "16",
    "--base-ch",
    "8",
    "--ch-mult",
    "1,2",
    "--num-res-blocks",
    "1",
    "--attn-res",
    "8",
    "--dropout",
    "0",
    "--T",
    "50",
    "--sample-steps",
    "5",
    "--log-every",
    "2",
    "--sample-every",
    "1",
    "--ckpt-every",
    "1",
    "--fid-features",
    "none",
]


def test_linear_betas_end_points():
    b = ddpm.make_betas("linear", 1000)
    assert b.dtype == torch.float64 and b.shape == (1000,)
    assert math.isclose(b[0].item(), 1e-4) and math.isclose(b[-1].item(), 0.02)
    assert torch.all(b[1:] > b[:-1])


def test_cosine_alpha_bar_is_the_cos2_formula():
    T, s = 1000, 0.008
    b = ddpm.make_betas("cosine", T)
    alpha_bar = torch.cumprod(1 - b, 0)
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
    for t in [0, 1, 10, 250, 500, 900, 990]:  # before the 0.999 clip bites at the very end
        assert math.isclose(alpha_bar[t].item(), f(t + 1) / f(0), rel_tol=1e-9), t
    assert b.max() <= 0.999 and b[-1] == 0.999
    assert torch.all(alpha_bar[1:] < alpha_bar[:-1])


def test_unknown_schedule_fails():
    with pytest.raises(ValueError):
        ddpm.make_betas("quadratic", 10)


def test_q_sample_moments():
    torch.manual_seed(0)
    alpha_bar = torch.cumprod(1 - ddpm.make_betas("linear", 1000), 0)
    x0 = torch.full((200_000, 1, 1, 1), 0.7)
    t = torch.full((200_000,), 300)
    x_t = ddpm.q_sample(x0, t, torch.randn_like(x0), alpha_bar)
    ab = alpha_bar[300].item()
    assert math.isclose(x_t.mean().item(), math.sqrt(ab) * 0.7, abs_tol=5e-3)
    assert math.isclose(x_t.var().item(), 1 - ab, rel_tol=2e-2)


@pytest.mark.parametrize("pred", ["eps", "v"])
def test_conversions_invert(pred):
    torch.manual_seed(0)
    x0, eps = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    ab = torch.tensor([0.9, 0.5, 0.1, 0.01]).view(4, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    out = eps if pred == "eps" else ddpm.v_target(x0, eps, ab)
    x0_hat, eps_hat = ddpm.to_x0_eps(out, x_t, ab, pred)
    assert torch.allclose(x0_hat, x0, atol=1e-4) and torch.allclose(eps_hat, eps, atol=1e-5)


def test_ddim_timesteps_spacings():
    assert ddpm.ddim_timesteps(1000, 10, "leading") == list(range(900, -1, -100))
    assert ddpm.ddim_timesteps(1000, 10, "trailing") == list(range(999, 98, -100))
    ts = ddpm.ddim_timesteps(1000, 10, "linspace")
    assert ts[0] == 999 and ts[-1] == 0 and len(ts) == 10 and ts == sorted(ts, reverse=True)


class Oracle(torch.nn.Module):
    """Returns the true eps (or v) of a fixed x0 at any x_t: a perfect denoiser for one image."""

    def __init__(self, x0, alpha_bar, pred):
        super().__init__()
        self.x0, self.alpha_bar, self.pred = x0, alpha_bar, pred
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.seen = []

    def forward(self, x, t):
        assert t.dtype == torch.long and t.shape == (x.shape[0],)
        self.seen.append(int(t[0]))
        ab = self.alpha_bar[t].float().view(-1, 1, 1, 1)
        eps = (x - ab.sqrt() * self.x0) / (1 - ab).sqrt()
        return eps if self.pred == "eps" else ddpm.v_target(self.x0, eps, ab)


@pytest.mark.parametrize("pred", ["eps", "v"])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_ddim_with_oracle_returns_x0(pred, spacing):
    torch.manual_seed(0)
    alpha_bar = torch.cumprod(1 - ddpm.make_betas("cosine", 1000), 0)
    x0 = torch.rand(3, 1, 8, 8) * 1.8 - 0.9
    oracle = Oracle(x0, alpha_bar, pred)
    out = ddpm.ddim_sample(oracle, x0.shape, alpha_bar, 10, pred, eta=0.0, spacing=spacing)
    assert torch.allclose(out, x0, atol=1e-4)
    assert oracle.seen == ddpm.ddim_timesteps(1000, 10, spacing)  # the previous t comes from the array


def test_ddpm_ancestral_with_oracle_returns_x0():
    torch.manual_seed(0)
    betas = ddpm.make_betas("linear", 100)
    alpha_bar = torch.cumprod(1 - betas, 0)
    x0 = torch.rand(2, 1, 4, 4) * 1.8 - 0.9
    out = ddpm.ddpm_sample(Oracle(x0, alpha_bar, "eps"), x0.shape, betas, "eps")
    # float32 eps at t = 0 (1 - abar = 1e-4) costs a few 1e-5 when turned back into x0.
    assert torch.allclose(out, x0, atol=5e-4)


@pytest.mark.parametrize("res,channels", [(16, 1), (32, 1), (32, 3), (64, 3), (128, 1)])
def test_unet_keeps_shape_and_uses_t(res, channels):
    torch.manual_seed(0)
    mult = {16: [1, 2], 32: [1, 2, 2], 64: [1, 2, 2], 128: [1, 1, 2]}[res]
    model = ddpm.UNet(channels, 8, mult, 1, [res // 4], 0.0, res).eval()
    torch.nn.init.normal_(model.out[-1].weight, std=0.1)  # the zero-initialised output would hide t
    x = torch.randn(2, channels, res, res)
    a = model(x, torch.tensor([0, 0]))
    b = model(x, torch.tensor([500, 500]))
    assert a.shape == x.shape
    assert not torch.allclose(a, b, atol=1e-4)


def test_unet_output_starts_at_zero():
    model = ddpm.UNet(1, 8, [1, 2], 1, [8], 0.0, 16)
    assert torch.count_nonzero(model(torch.randn(2, 1, 16, 16), torch.tensor([3, 4]))) == 0


def test_attention_where_asked():
    model = ddpm.UNet(1, 8, [1, 2, 2], 1, [8], 0.0, 32)
    n_attn = sum(isinstance(m, ddpm.Attention) for m in model.modules())
    assert n_attn == 1 + 1 + 2  # down at 16? no; down at 8: 1, middle: 1, up at 8: 2 (num_res_blocks + 1)


def test_end_to_end_and_resume(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    summary = ddpm.main(TINY + ["--schedule", "cosine", "--pred", "v", "--max-steps", "12", "--out", str(a)])
    for name in [
        "args.json",
        "metrics.jsonl",
        "samples.png",
        "progress.gif",
        "ckpt.pt",
        "summary.json",
        "denoise.png",
        "samples/epoch_0001.png",
    ]:
        assert (a / name).is_file() and (a / name).stat().st_size > 0, name
    assert summary["steps"] == 12 and summary["sample_seconds_per_image"] > 0
    ddpm.main(TINY + ["--schedule", "cosine", "--pred", "v", "--max-steps", "7", "--out", str(b)])
    ddpm.main(
        TINY + ["--schedule", "cosine", "--pred", "v", "--max-steps", "12", "--out", str(b), "--resume"]
    )
    ca, cb = common.load_checkpoint(a / "ckpt.pt"), common.load_checkpoint(b / "ckpt.pt")
    assert cb["step"] == 12
    for key in ca["ema"]["module"]:
        assert torch.equal(ca["ema"]["module"][key], cb["ema"]["module"][key]), key


def test_ddpm_sampler_and_fid_rows(tmp_path):
    out = tmp_path / "run"
    flags = [f for f in TINY if f not in ("lfw",)]
    flags[flags.index("--data") + 1 : flags.index("--data") + 1] = ["digits"]
    summary = ddpm.main(
        flags
        + [
            "--sampler",
            "ddpm",
            "--max-steps",
            "3",
            "--fid-features",
            "digits",
            "--fid-n",
            "40",
            "--out",
            str(out),
        ]
    )
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    fids = [r for r in rows if r["kind"] == "fid"]
    assert len(fids) == 1 and fids[0]["features"] == "digits" and fids[0]["n_fake"] == 40
    assert summary["sample_steps"] == 50


def test_bad_flags_exit_2(tmp_path, capsys):
    for bad, message in (
        (["--schedule", "quadratic"], "argument --schedule: invalid choice: 'quadratic'"),
        (["--pred", "x0"], "argument --pred: invalid choice: 'x0'"),
        (["--res", "32", "--ch-mult", "1,2,2,2,2,2,2"], "--ch-mult has 7 levels; --res 32 cannot be halved"),
        (["--sample-steps", "0"], "error: --sample-steps must be in 1..1000"),
        (["--spacing", "odd"], "argument --spacing: invalid choice: 'odd'"),
        (["--min-snr", "-1"], "error: --min-snr must be >= 0 (0 is off), got -1.0"),
    ):
        with pytest.raises(SystemExit) as e:
            ddpm.main(bad + ["--out", str(tmp_path / "x")])
        assert e.value.code == 2 and message in capsys.readouterr().err.splitlines()[-1], bad


def test_samplers_take_any_callable_and_the_noise_device():
    """No parameters to look at: the samplers run wherever the noise is."""
    alpha_bar = torch.cumprod(1 - ddpm.make_betas("cosine", 100), 0)
    x0 = torch.rand(2, 1, 4, 4) * 1.8 - 0.9
    oracle = Oracle(x0, alpha_bar, "v")
    plain = lambda x, t: oracle(x, t)  # parameter-free, as a compiled model is
    x_T = torch.randn(2, 1, 4, 4)
    out = ddpm.ddim_sample(plain, None, alpha_bar, 10, "v", x_T=x_T)
    assert torch.allclose(out, x0, atol=1e-4)
    torch.manual_seed(0)
    out = ddpm.ddpm_sample(plain, (2, 1, 4, 4), ddpm.make_betas("cosine", 100), "v")
    assert out.shape == (2, 1, 4, 4) and torch.allclose(out, x0, atol=5e-3)


@pytest.mark.parametrize("sampler, steps", [("ddim", 7), ("ddpm", 50)])
def test_every_output_uses_the_chosen_sampler(sampler, steps):
    """choose_sampler is the one place the sampler is chosen: grids, FID and samples.png (through
    sample) and the denoise strip all run what it returns."""
    import argparse

    betas = ddpm.make_betas("linear", 50)
    alpha_bar = torch.cumprod(1 - betas, 0)
    x0 = torch.rand(3, 1, 4, 4) * 1.8 - 0.9
    oracle = Oracle(x0, alpha_bar, "eps")
    args = argparse.Namespace(sampler=sampler, sample_steps=7, pred="eps", eta=0.0, spacing="trailing")
    chosen, x_T = ddpm.choose_sampler(args, alpha_bar, betas), torch.randn(3, 1, 4, 4)
    torch.manual_seed(0)
    out = ddpm.sample(chosen, oracle, x_T)
    assert len(oracle.seen) == steps and torch.allclose(out, x0, atol=5e-3)
    if sampler == "ddim":
        assert oracle.seen == ddpm.ddim_timesteps(50, 7, "trailing")  # --spacing is honoured too
    oracle.seen.clear()
    torch.manual_seed(0)
    strip = ddpm.denoising_strip(chosen, oracle, x_T, None, 1.0)  # x_T, 9 steps on the way, x_0
    assert len(oracle.seen) == steps and strip.shape == (3, 10, 1, 4, 4)
    assert torch.equal(strip[:, 0], x_T) and torch.equal(strip[:, -1], out)


@pytest.mark.parametrize("pred", ["eps", "v"])
def test_min_snr_weights_make_every_loss_an_x0_loss_capped_at_gamma(pred):
    # Hang et al.: the weighted eps (v) error is min(SNR, gamma) times the x0 error the same output implies.
    alpha_bar = torch.cumprod(1 - ddpm.make_betas("cosine", 1000), 0)
    t = torch.tensor([5, 300, 700, 990])
    ab = alpha_bar[t].float()
    snr = ab / (1 - ab)
    weight = ddpm.min_snr_weight(ab, pred, 5.0)
    torch.manual_seed(0)
    x0, noise, out = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    x_t = ddpm.q_sample(x0, t, noise, alpha_bar)
    target = noise if pred == "eps" else ddpm.v_target(x0, noise, ab[:, None, None, None])
    x0_hat = ddpm.to_x0_eps(out, x_t, ab[:, None, None, None], pred)[0]
    weighted = weight * ((out - target) ** 2).flatten(1).mean(1)
    x0_error = ((x0_hat - x0) ** 2).flatten(1).mean(1)
    assert torch.allclose(weighted, snr.clamp(max=5.0) * x0_error, rtol=1e-3)
    assert snr[0] > 5 > snr[-1]  # both sides of the cap are exercised


def test_min_snr_loss_weights_each_image_and_zero_is_plain_mse():
    alpha_bar = torch.cumprod(1 - ddpm.make_betas("linear", 1000), 0)
    torch.manual_seed(0)
    x0, noise, t = torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8), torch.tensor([10, 500, 900])
    out = torch.randn(3, 1, 8, 8)

    def model(x_t, t):
        return out

    plain = ddpm.diffusion_loss(model, x0, t, noise, alpha_bar, "eps")
    assert plain == pytest.approx(((out - noise) ** 2).mean().item(), rel=1e-6)
    weighted = ddpm.diffusion_loss(model, x0, t, noise, alpha_bar, "eps", min_snr=5.0)
    per_image = ((out - noise) ** 2).flatten(1).mean(1)
    expected = (ddpm.min_snr_weight(alpha_bar[t].float(), "eps", 5.0) * per_image).mean()
    assert weighted.item() == pytest.approx(expected.item(), rel=1e-6)
    assert weighted.item() < plain.item()  # t = 10 (SNR ~ 1000) counts 5/1000 of itself


def test_scale_shift_resblock_is_adagn():
    torch.manual_seed(0)
    block = ddpm.ResBlock(8, 8, 16, 0.0, scale_shift=True).eval()
    x, t_emb = torch.randn(2, 8, 4, 4), torch.randn(2, 16)
    scale, shift = block.t_proj(F.silu(t_emb)).chunk(2, dim=1)
    h = block.conv1(F.silu(block.norm1(x)))
    h = block.norm2(h) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
    assert torch.allclose(block(x, t_emb), x + block.conv2(F.silu(h)), atol=1e-6)
    plain = ddpm.ResBlock(8, 8, 16, 0.0).eval()
    h = plain.conv1(F.silu(plain.norm1(x))) + plain.t_proj(F.silu(t_emb))[:, :, None, None]
    assert torch.allclose(plain(x, t_emb), x + plain.conv2(F.silu(plain.norm2(h))), atol=1e-6)


def test_scale_shift_is_a_model_flag_kept_on_resume(tmp_path, capsys):
    out = tmp_path / "run"
    ddpm.main([*TINY, "--max-steps", "1", "--scale-shift", "--min-snr", "5", "--out", str(out)])
    assert json.loads((out / "args.json").read_text())["scale_shift"] is True
    state = common.load_checkpoint(out / "ckpt.pt")["model"]
    assert state["mid1.t_proj.weight"].shape[0] == 2 * state["mid1.conv2.weight"].shape[0]
    with pytest.raises(SystemExit) as e:
        ddpm.main([*TINY, "--max-steps", "2", "--resume", "--out", str(out)])
    assert e.value.code == 2
    assert "--scale-shift True (now False)" in capsys.readouterr().err
