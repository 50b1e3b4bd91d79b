"""What only a GPU can check: `make test-gpu` (pytest -m gpu) runs these with CUDA visible; without a
CUDA device (and in `make test`, which hides CUDA) they are skipped.

- a resumed run equals an uninterrupted one under --deterministic (within a tolerance: cuDNN's
  deterministic kernels repeat, but a GPU promises no more than that);
- fp16 AMP with its GradScaler: finite losses, the scale saved and restored on resume;
- channels-last weights and batches on CUDA;
- DDP over NCCL with 2 processes, where 2 GPUs exist.
"""

import argparse
import json
import math
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

import common
import data
import dcgan
import ddpm

pytestmark = pytest.mark.gpu

CUDA = ["--device", "cuda", "--batch-size", "16", "--log-every", "1", "--fid-features", "none"]
DCGAN = ["--preset", "study", "--res", "32", "--ngf", "16", "--ndf", "16", *CUDA]
DDPM = ["--preset", "cpu", "--base-ch", "16", *CUDA]


def assert_close(a, b, path=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_close(a[key], b[key], f"{path}/{key}")
    elif torch.is_tensor(a) and a.is_floating_point():
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=path)
    else:
        assert torch.equal(a, b) if torch.is_tensor(a) else a == b, path


@pytest.mark.parametrize("module, flags", [(dcgan, DCGAN), (ddpm, DDPM)], ids=["dcgan", "ddpm"])
def test_resume_equals_uninterrupted_under_deterministic(tmp_path, module, flags):
    flags = [*flags, "--deterministic", "--amp", "off"]
    a, b = tmp_path / "a", tmp_path / "b"
    module.main([*flags, "--max-steps", "12", "--out", str(a)])
    module.main([*flags, "--max-steps", "5", "--out", str(b)])
    module.main([*flags, "--max-steps", "12", "--out", str(b), "--resume"])
    ca, cb = common.load_checkpoint(a / "ckpt.pt"), common.load_checkpoint(b / "ckpt.pt")
    assert cb["step"] == 12 and "cuda" in cb["rng"]
    names = ("G", "D", "ema", "opt_g", "opt_d") if module is dcgan else ("model", "ema", "opt")
    for name in names:
        assert_close(ca[name], cb[name], name)
    losses = lambda out: [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses(a)) == len(losses(b)) == 12  # b: steps 1-5, then 6-12 after the resume
    for ra, rb in zip(losses(a), losses(b)):
        assert ra.keys() == rb.keys() and all(ra[k] == pytest.approx(rb[k], rel=1e-5) for k in ra)


def test_fp16_amp_with_the_scaler_trains_and_resumes_its_scale(tmp_path):
    out = tmp_path / "run"
    flags = [*DCGAN, "--amp", "on", "--amp-dtype", "fp16"]
    summary = dcgan.main([*flags, "--max-steps", "20", "--out", str(out)])
    assert summary["complete"]
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if '"train"' in l]
    assert len(rows) == 20 and all(abs(r["loss_d"]) < 1e3 for r in rows[-5:])
    scale = common.load_checkpoint(out / "ckpt.pt")["scaler"]["scale"]
    assert math.log2(scale).is_integer()  # 2^16 halved at each overflow, doubled after 2,000 good steps
    args = dcgan.parse_args([*flags, "--out", str(tmp_path / "x")])
    _, autocast, scaler = common.setup_device(args)
    with autocast():
        y = torch.nn.Conv2d(3, 4, 3).cuda()(torch.randn(2, 3, 8, 8, device="cuda"))
    assert y.dtype == torch.float16 and scaler.is_enabled()
    # A resume restores the scale the run had reached (not the initial 2^16).
    resume = argparse.Namespace(resume=True, generate=None, max_steps=None, max_minutes=None)
    step, clock, _ = common.start_or_resume(out, dict(scaler=scaler), resume, 100, "t")
    clock.finish()
    assert step == 20 and scaler.get_scale() == scale


def test_channels_last_weights_and_batches_on_cuda():
    G = common.place(dcgan.Generator(100, 16, 3, 32), "cuda")
    convs = [m.weight for m in G.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert convs and all(w.is_cuda and w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    train = data.load_dataset("digits", 16, aug="none").split()[0]
    args = argparse.Namespace(batch_size=8, seed=0, workers=0, aug="none")
    x, _ = next(data.batches(train, args, 0, torch.device("cuda")))
    assert x.is_cuda and x.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_ddp_over_nccl_with_two_processes(tmp_path):
    out = tmp_path / "run"
    plan = tmp_path / "plan.json"
    argv = [*DCGAN, "--max-steps", "4", "--out", str(out)]
    plan.write_text(json.dumps([dict(name="dcgan", script="dcgan", argv=argv, cache=None)]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    res = subprocess.run([*cmd, str(ROOT / "tests" / "torchrun_worker.py"), str(plan)], capture_output=True)
    assert res.returncode == 0 and (tmp_path / "dcgan.rank0.exit").read_text() == "0", res.stderr[-3000:]
    rank0, rank1 = (torch.load(out / f"rank_{r}.pt", weights_only=True) for r in (0, 1))
    for name in ("G", "opt_g"):
        assert_close(rank0[name], rank1[name], name)
