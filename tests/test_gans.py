"""wgan_gp.py and sagan.py: losses in closed form, spectral norm, self-attention,
shapes at every resolution, and end-to-end runs with resume."""

import json

import pytest
import torch
import torch.nn as nn

import common
import sagan
import wgan_gp


class Linear(nn.Module):
    """f(x) = w . x: its gradient is w everywhere."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        return (x.flatten(1) * self.w).sum(1)


@pytest.mark.parametrize("module", [wgan_gp, sagan])
@pytest.mark.parametrize("norm_w", [0.3, 1.0, 2.5])
def test_gradient_penalty_of_linear_critic(module, norm_w):
    torch.manual_seed(0)
    w = torch.randn(3 * 4 * 4, dtype=torch.float64)
    w = w / w.norm() * norm_w
    real, fake = torch.randn(5, 3, 4, 4, dtype=torch.float64), torch.randn(5, 3, 4, 4, dtype=torch.float64)
    lam = 10.0
    gp = lam * module.gradient_penalty(Linear(w), real, fake)
    assert gp.item() == pytest.approx(lam * (norm_w - 1) ** 2, abs=1e-10)


def test_gradient_penalty_is_differentiable_in_the_critic():
    w = torch.full((16,), 0.5, requires_grad=False)
    critic = Linear(w.clone())
    gp = wgan_gp.gradient_penalty(critic, torch.randn(4, 1, 4, 4), torch.randn(4, 1, 4, 4))
    gp.backward()
    # d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||, with ||w|| = 2
    assert torch.allclose(critic.w.grad, 2 * (2 - 1) * w / 2, atol=1e-6)


def test_wasserstein_and_hinge_losses():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-3.0, 0.0])
    assert wgan_gp.critic_loss(real, fake).item() == pytest.approx(-1.5 - 1.25)
    assert wgan_gp.generator_loss(fake).item() == pytest.approx(1.5)
    # hinge: relu(1 - real) = [0, 0.5], relu(1 + fake) = [0, 1]
    assert sagan.critic_loss(real, fake, "hinge").item() == pytest.approx(0.25 + 0.5)
    assert sagan.critic_loss(real, fake, "wgan-gp").item() == pytest.approx(-2.75)
    w = torch.full((2,), 1.5)  # a linear critic with ||grad|| = 1.5 * sqrt(2) everywhere
    x_real, x_fake = torch.randn(2, 1, 1, 2), torch.randn(2, 1, 1, 2)
    gp = sagan.gradient_penalty(Linear(w), x_real, x_fake)
    assert gp.item() == pytest.approx((1.5 * 2**0.5 - 1) ** 2, rel=1e-5)


@pytest.mark.parametrize("module", [wgan_gp, sagan])
def test_gradient_penalty_looks_at_the_given_interpolation_points(module):
    """x_hat = eps x + (1 - eps) G(z): a critic whose gradient norm is |x_hat|-dependent tells where."""
    critic = lambda x: 0.5 * (x.flatten(1) ** 2).sum(1)  # grad = x_hat, its norm |x_hat|
    real, fake = torch.full((3, 1, 1, 4), 2.0), torch.zeros(3, 1, 1, 4)
    eps = torch.tensor([0.0, 0.25, 1.0]).view(3, 1, 1, 1)  # |x_hat| = 4 eps: 0, 1, 4
    gp = module.gradient_penalty(critic, real, fake, eps)
    assert gp.item() == pytest.approx(((0 - 1) ** 2 + (1 - 1) ** 2 + (4 - 1) ** 2) / 3)


@pytest.mark.parametrize("norm", ["instance", "layer"])
def test_wgan_critic_norms_are_per_sample(norm):
    torch.manual_seed(0)
    C = wgan_gp.Critic(ndf=8, channels=3, res=64, norm=norm)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in C.modules())
    # Per-sample scores: a sample's score does not depend on the rest of the batch.
    x = torch.randn(6, 3, 64, 64)
    assert torch.allclose(C(x)[0][:2], C(x[:2])[0], atol=1e-5)
    # What each norm standardises (at init: gain 1, bias 0): instance norm each channel of each sample over
    # H, W; layer norm each sample over C, H, W, leaving the channels' own means apart.
    seen = []
    first = next(m for m in C.modules() if isinstance(m, (nn.InstanceNorm2d, nn.GroupNorm)))
    first.register_forward_hook(lambda m, i, o: seen.append(o.clone()))  # before the in-place LeakyReLU
    C(x)
    channel_means = seen[0].mean((2, 3))  # (B, C)
    assert seen[0].mean((1, 2, 3)).abs().max() < 1e-5  # both: zero mean per sample
    if norm == "instance":
        assert channel_means.abs().max() < 1e-5
    else:
        assert channel_means.abs().max() > 0.01
    assert isinstance(wgan_gp.Critic(ndf=8, channels=3, res=64).features[3], nn.InstanceNorm2d)  # the default


@pytest.mark.parametrize("res", [32, 64, 128])
def test_wgan_shapes(res):
    G, C = wgan_gp.Generator(nz=128, ngf=8, channels=1, res=res), wgan_gp.Critic(ndf=8, channels=1, res=res)
    x = G(torch.randn(2, 128))
    assert x.shape == (2, 1, res, res) and C(x)[0].shape == (2,) and C(x)[1] is None


def test_spectral_norm_top_singular_value_is_one():
    torch.manual_seed(0)
    C = sagan.spectrally_normed(sagan.Critic(ndf=8, channels=3, res=32))
    convs = [m for m in C.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 7 and all(
        hasattr(m, "parametrizations") for m in convs
    )  # 3 down, 1 out, 3 in attention
    with torch.no_grad():  # whatever the raw weights' scale, the weights used have sigma 1
        for m in convs:
            m.parametrizations.weight.original.mul_(5)
    assert all(
        torch.linalg.matrix_norm(m.parametrizations.weight.original.flatten(1), 2) > 1.5 for m in convs
    )
    for _ in range(10):  # each training-mode forward runs one power iteration
        C(torch.randn(4, 3, 32, 32))
    for m in convs:
        sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1), 2).item()
        assert sigma == pytest.approx(1.0, abs=0.05)


def test_self_attention_is_identity_at_init_and_global_after():
    torch.manual_seed(0)
    attn = sagan.SelfAttention(16)
    x = torch.randn(2, 16, 8, 8)
    assert attn.gamma.item() == 0 and torch.equal(attn(x), x)
    assert attn.query.out_channels == 2 and attn.key.out_channels == 2 and attn.value.out_channels == 16
    with torch.no_grad():
        attn.gamma.fill_(1.0)
    y = attn(x)
    assert y.shape == x.shape
    # Every position attends to every other: change one corner pixel, the opposite corner moves.
    x2 = x.clone()
    x2[:, :, 0, 0] += 5
    assert not torch.allclose(attn(x2)[:, :, 7, 7], y[:, :, 7, 7])


def test_self_attention_is_the_plans_formula_written_out():
    """The plan's block: bias-free 1x1 q, k, v; q and k to mid = C/8; logits scaled by mid^-0.5."""
    torch.manual_seed(0)
    attn = sagan.SelfAttention(32)
    assert all(m.bias is None for m in (attn.query, attn.key, attn.value))
    with torch.no_grad():
        attn.gamma.fill_(0.7)
    x = torch.randn(2, 32, 4, 5)
    Wq, Wk, Wv = (m.weight[:, :, 0, 0] for m in (attn.query, attn.key, attn.value))  # (out, in)
    X = x.flatten(2)  # (B, C, N)
    Q, K, V = Wq @ X, Wk @ X, Wv @ X  # (B, 4, N), (B, 4, N), (B, 32, N)
    expected = torch.empty_like(X)
    for b in range(2):
        for i in range(20):  # position i's output: V weighted by softmax over j of <q_i, k_j> / sqrt(4)
            logits = torch.stack([Q[b, :, i] @ K[b, :, j] for j in range(20)]) / 2.0
            expected[b, :, i] = V[b] @ torch.softmax(logits, 0)
    torch.testing.assert_close(attn(x), x + 0.7 * expected.view_as(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("res, attn_res, n_attn", [(32, (16,), 1), (64, (16,), 1), (128, (16, 32), 2)])
def test_sagan_shapes_and_attention_placement(res, attn_res, n_attn):
    G = sagan.Generator(nz=128, ngf=8, channels=3, res=res, attn_res=attn_res)
    C = sagan.spectrally_normed(sagan.Critic(ndf=8, channels=3, res=res, attn_res=attn_res))
    assert sum(isinstance(m, sagan.SelfAttention) for m in G.modules()) == n_attn
    assert sum(isinstance(m, sagan.SelfAttention) for m in C.modules()) == n_attn
    assert not any(isinstance(m, nn.BatchNorm2d) for m in G.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in G.modules())
    # The attention sees the sizes it was placed at.
    seen = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: seen.append(o.shape[-1]))
        for m in list(G.modules()) + list(C.modules())
        if isinstance(m, sagan.SelfAttention)
    ]
    x = G(torch.randn(2, 128))
    assert x.shape == (2, 3, res, res) and C(x).shape == (2,)
    assert sorted(seen) == sorted(list(attn_res) * 2)
    for h in hooks:
        h.remove()


# ----------------------------------------------------------------------------- end to end

TINY = [
    "--preset",
    "study",
    "--data",
    "lfw",
    "--batch-size",
    "8",
    "--ngf",
    "8",
    "--ndf",
    "8",
    "--log-every",
    "1",
    "--fid-features",
    "none",
    "--res",
    "32",
]
OUTPUTS = [
    "args.json",
    "metrics.jsonl",
    "samples.png",
    "interp.png",
    "progress.gif",
    "ckpt.pt",
    "summary.json",
    "samples/epoch_0001.png",
]


def rows(out):
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]


def test_wgan_gp_end_to_end(tmp_path):
    out = tmp_path / "run"
    # lfw: 84 training faces // 8 = 10 batches an epoch; 2 critic batches a step, so 5 steps an epoch.
    summary = wgan_gp.main(TINY + ["--max-steps", "6", "--out", str(out)])
    for name in OUTPUTS:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    train = [r for r in rows(out) if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6] and train[4]["epoch"] == 1.0
    assert {"loss_c", "loss_g", "gp", "wasserstein"} <= set(train[0])
    ckpt = common.load_checkpoint(out / "ckpt.pt")
    assert ckpt["step"] == 6 and {"G", "C", "ema", "opt_g", "opt_c", "scaler"} <= set(ckpt)
    assert ckpt["opt_g"]["param_groups"][0]["lr"] == 1e-4 and ckpt["opt_g"]["param_groups"][0]["betas"] == (
        0.0,
        0.9,
    )
    assert summary["steps"] == 6 and summary["epochs"] == pytest.approx(1.2)


@pytest.mark.parametrize("module", [wgan_gp, sagan])
def test_resume_matches_uninterrupted(tmp_path, module):
    # 7 steps = 14 critic batches crosses an epoch (10 batches) mid-step; resume at step 3. The deluxe
    # augmentation draws from the RNG as each batch is read: the resumed run must read the same draws.
    flags = TINY + ["--aug", "deluxe"]
    a, b = tmp_path / "a", tmp_path / "b"
    module.main(flags + ["--max-steps", "7", "--out", str(a)])
    module.main(flags + ["--max-steps", "3", "--out", str(b)])
    module.main(flags + ["--max-steps", "7", "--out", str(b), "--resume"])
    ca, cb = common.load_checkpoint(a / "ckpt.pt"), common.load_checkpoint(b / "ckpt.pt")
    assert cb["step"] == 7
    for key in ca["G"]:
        assert torch.equal(ca["G"][key], cb["G"][key]), key
    for key in ca["C"]:
        assert torch.equal(ca["C"][key], cb["C"][key]), key
    assert rows(a) == rows(b)  # same losses at every step (b logged step 3 once, then resumed)


@pytest.mark.parametrize(
    "res, extra",
    [
        (32, ["--loss", "hinge", "--n-critic", "1"]),
        (64, []),
        (128, ["--attn-res", "16,32", "--batch-size", "4"]),
    ],
)
def test_sagan_end_to_end(tmp_path, res, extra):
    out = tmp_path / "run"
    summary = sagan.main(
        TINY + ["--res", str(res), "--max-steps", "2", "--sample-every", "1", "--out", str(out)] + extra
    )
    for name in OUTPUTS[:-1]:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    from PIL import Image

    assert Image.open(out / "samples.png").size == (8 * (res + 2) + 2,) * 2  # 8x8 grid, 2 px padding
    assert summary["steps"] == 2 and summary["params_D"] > 0
    # Resume continues from step 2.
    summary = sagan.main(
        TINY + ["--res", str(res), "--max-steps", "3", "--out", str(out), "--resume"] + extra
    )
    assert summary["steps"] == 3  # and it went on from step 2: one row each, step 3 the resumed run's
    assert [r["step"] for r in rows(out) if r["kind"] == "train"] == [1, 2, 3]


@pytest.mark.parametrize(
    "module, flags, message",
    [
        (sagan, ["--attn-res", "7"], "error: --attn-res [7]: at --res 32 the feature maps are [8, 16]"),
        (
            sagan,
            ["--loss", "bce"],
            "error: argument --loss: invalid choice: 'bce' (choose from 'wgan-gp', 'hinge')",
        ),
        (sagan, ["--cond"], "error: --cond needs labelled data with at least 2 classes; lfw has 1"),
        (wgan_gp, ["--n-critic", "0"], "error: --n-critic must be at least 1, got 0"),
        (
            wgan_gp,
            ["--critic-norm", "batch"],
            "error: argument --critic-norm: invalid choice: 'batch' (choose from 'instance', 'layer')",
        ),
        (wgan_gp, ["--lr-decay", "1.5"], "error: --lr-decay must be in (0, 1], got 1.5"),
        (wgan_gp, ["--data", "/no/such/folder"], "error: data path not found: /no/such/folder"),
    ],
)
def test_bad_input_exits_2(tmp_path, capsys, module, flags, message):
    with pytest.raises(SystemExit) as e:
        module.main(TINY + ["--max-steps", "1", "--out", str(tmp_path / "run")] + flags)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.strip().splitlines()[-1].endswith(message) and "Traceback" not in err
