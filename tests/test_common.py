import math

import pytest
import torch
import torch.nn as nn

import common


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


def test_check_finite_names_step_and_checkpoint(tmp_path):
    with pytest.raises(common.UserError, match=r"step 12.*ckpt\.pt"):
        common.check_finite(12, tmp_path, loss=float("nan"))
    common.check_finite(12, tmp_path, loss=1.0)


def test_amp_policy_auto_is_off_on_cpu():
    import argparse
    args = common.add_common_args(argparse.ArgumentParser()).parse_args(["--device", "cpu"])
    device, amp, dtype = common.setup_device(args)
    assert device.type == "cpu" and amp is False and dtype == torch.float16
    assert not common.grad_scaler(device, amp, dtype).is_enabled()


def test_save_grid_rounds_like_save_image(tmp_path):
    import numpy as np
    from PIL import Image
    x = torch.linspace(-1, 1, 2 * 1 * 4 * 4).view(2, 1, 4, 4)
    common.save_grid(x, tmp_path / "g.png", nrow=2)
    img = np.asarray(Image.open(tmp_path / "g.png"))
    assert img.shape[:2] == (4 + 4, 2 * 4 + 6)  # padding 2 around and between tiles
    assert img[2, 2, 0] == 0 and img[5, 13, 0] == 255
