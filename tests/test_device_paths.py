"""The CUDA paths' defects, checked on the CPU where they can be: resume reads checkpoints onto the CPU,
a scaler saved disabled resumes enabled, attention takes the fused kernels' 4-D layout, fp16's skipped
steps do not stop a run, FID's cache keys carry the device and the crop (and its reference images are
spread over the held-out set), the cache is read per batch, the loader's workers start once."""

import argparse
import itertools
import json
import os
import time

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import common
import data
import ddpm
import evaluate
import fid


def resume_args():
    return argparse.Namespace(resume=True, generate=None, max_steps=None, max_minutes=None)


def test_resume_reads_the_checkpoint_onto_the_cpu(tmp_path, monkeypatch):
    """A checkpoint saved on a GPU holds CUDA tensors; mapped onto the GPU again, its RNG states would
    be CUDA tensors, which torch.set_rng_state rejects. The resume path maps everything to the CPU
    (load_state_dict then copies each tensor to its model's device)."""
    model, opt = nn.Linear(2, 2), None
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(3, 2)).sum().backward()
    opt.step()
    torch.manual_seed(7)
    common.save_training_state(tmp_path, dict(model=model, opt=opt), 5, 1, 9.0, argparse.Namespace(a=1))
    expected_rng = torch.get_rng_state()
    seen = []
    load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: seen.append(k.get("map_location")) or load(*a, **k))
    torch.manual_seed(0)
    fresh = nn.Linear(2, 2)
    fresh_opt = torch.optim.Adam(fresh.parameters())
    step, clock, _ = common.start_or_resume(tmp_path, dict(model=fresh, opt=fresh_opt), resume_args(), 9, "t")
    clock.finish()
    assert seen == ["cpu"] and (step, clock.seconds) == (5, 9.0)
    assert torch.equal(torch.get_rng_state(), expected_rng)
    assert torch.equal(fresh.weight, model.weight)
    # Adam's step count stays a CPU tensor: reading it costs no GPU sync.
    assert fresh_opt.state_dict()["state"][0]["step"].device.type == "cpu"


def test_a_scaler_saved_disabled_resumes_enabled(tmp_path):
    off = torch.amp.GradScaler("cpu", enabled=False)
    assert off.state_dict() == {}  # what an AMP-off run (CPU, bf16) saves
    common.save_training_state(tmp_path, dict(scaler=off), 3, 0, 1.0, argparse.Namespace())
    on = torch.amp.GradScaler("cpu", enabled=True, init_scale=1024.0)
    step, clock, _ = common.start_or_resume(tmp_path, dict(scaler=on), resume_args(), 9, "t")
    clock.finish()
    assert step == 3
    assert on.get_scale() == 1024.0  # starts from its initial scale
    # An enabled scaler's state still round-trips.
    saved = torch.amp.GradScaler("cpu", enabled=True, init_scale=8.0)
    common.save_training_state(tmp_path, dict(scaler=saved), 4, 0, 1.0, argparse.Namespace())
    common.start_or_resume(tmp_path, dict(scaler=on), resume_args(), 9, "t")[1].finish()
    assert on.get_scale() == 8.0


def test_attention_takes_the_fused_kernels_layout(monkeypatch):
    torch.manual_seed(0)
    attn = ddpm.Attention(8)
    nn.init.normal_(attn.proj.weight)  # the output projection starts at zero in the U-Net
    x = torch.randn(2, 8, 4, 4)
    shapes = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(
        F, "scaled_dot_product_attention", lambda q, k, v: shapes.append(q.shape) or sdpa(q, k, v)
    )
    got = attn(x)
    assert shapes == [(2, 1, 16, 8)]  # (batch, heads, positions, channels)
    # The same numbers as attention written out: softmax(q k^T / sqrt(C)) v over the 16 positions.
    q, k, v = attn.qkv(attn.norm(x)).flatten(2).transpose(1, 2).chunk(3, dim=2)  # (B, HW, C)
    h = torch.softmax(q @ k.transpose(1, 2) / 8**0.5, dim=-1) @ v
    assert torch.allclose(got, x + attn.proj(h.transpose(1, 2).reshape(2, 8, 4, 4)), atol=1e-5)


def test_fp16_skipped_steps_stop_the_run_only_in_a_row(tmp_path):
    clock = argparse.Namespace(bar=argparse.Namespace(set_postfix=lambda *a, **k: None, close=lambda: None))
    log = common.MetricsLog(tmp_path / "metrics.jsonl", clock)
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    inf = {"loss": float("inf")}
    for step in (1, 2):  # GradScaler skips these steps by design: logged, training goes on
        log.train(step, 0, inf, scaler)
    log.train(3, 0, {"loss": 1.0}, scaler)  # a finite row resets the count
    for step in (4, 5):
        log.train(step, 0, inf, scaler)
    with pytest.raises(common.UserError, match="loss is inf at step 6"):
        log.train(6, 0, inf, scaler)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    # Without a scaler (fp32, bf16) the first non-finite loss stops the run.
    with pytest.raises(common.UserError, match="at step 1"):
        common.MetricsLog(tmp_path / "m2.jsonl", clock).train(1, 0, inf, None)


def test_fid_statistics_cache_is_keyed_by_device_and_crop():
    held = data.load_dataset("digits", 16, aug="none").split()[1]
    evaluate.Evaluator("digits", held, "digits", 16, 50, "cpu")
    evaluate.Evaluator("digits", held, "digits", 16, 50, "cpu", crop=6)
    names = sorted(p.name for p in (common.CACHE_DIR / "fid_stats").glob("digits_digits_*_16_50_cpu.npz"))
    assert names == ["digits_digits_6_16_50_cpu.npz", "digits_digits_None_16_50_cpu.npz"]


def test_deterministic_mode_turns_benchmark_off(monkeypatch):
    monkeypatch.setattr(
        os, "environ", {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    )
    args = argparse.Namespace(device="cpu", amp="off", amp_dtype="fp16", deterministic=True, sync_bn=False)
    try:
        common.setup_device(args)
        assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(False)


def test_a_split_reads_the_cache_per_batch_not_a_copy():
    whole = data.load_dataset("digits", 16)
    assert isinstance(whole.images, np.memmap)
    train, held = whole.split()
    assert train.images.base is whole.images and held.images.base is whole.images  # indices, no copy
    x, y = train.batch(np.array([5, 0, 3]))
    rows = np.sort(train.images.index[[5, 0, 3]])
    assert np.array_equal(x.permute(0, 2, 3, 1).numpy(), np.asarray(whole.images)[rows])
    assert np.array_equal(y.numpy(), whole.labels[rows])
    assert np.array_equal(np.asarray(held.images), np.asarray(whole.images)[held.images.index])


class WorkerPids(torch.utils.data.Dataset):
    """Each batch says (in its labels) which process read it."""

    aug = "none"

    def __len__(self):
        return 8

    def __getitem__(self, idx):
        return torch.zeros(len(idx), 1, 1, 1, dtype=torch.uint8), torch.full((len(idx),), os.getpid())


def test_loader_workers_start_once_for_every_epoch():
    args = argparse.Namespace(batch_size=4, seed=0, workers=1)
    stream = data.batches(WorkerPids(), args, 0, device="cpu")
    got = [next(stream) for _ in range(6)]  # three epochs of two batches
    assert [epoch for epoch, _ in itertools.islice(data.batch_order(8, 4, 0, 0), 6)] == [0, 0, 1, 1, 2, 2]
    pids = {int(y[0]) for _, y in got}
    assert len(pids) == 1 and pids != {os.getpid()}  # one worker process read all three epochs


class FlagsSeen(nn.Module):
    """A stand-in feature network that records the TF32 switches in force when it runs."""

    def __init__(self):
        super().__init__()
        self.w, self.seen = nn.Parameter(torch.zeros(1)), []

    def forward(self, x):
        self.seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
        return x.flatten(1)[:, :4], x.flatten(1)[:, :3]


def test_fid_features_are_computed_without_tf32():
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True  # as a user's training script may set it
    try:
        net = FlagsSeen()
        acts = fid.activations(torch.rand(5, 3, 4, 4), net, batch_size=2)
        assert acts.shape == (5, 4) and net.seen == [(False, False)] * 3
        assert torch.backends.cuda.matmul.allow_tf32 is True  # restored afterwards
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def test_timed_returns_the_result_and_its_seconds():
    result, seconds = common.timed(lambda x: time.sleep(0.05) or x + 1, 1)
    assert result == 2 and 0.05 <= seconds < 1


def test_fid_reference_images_are_spread_over_a_class_sorted_held_out_set():
    held = data.load_dataset("mnist", 16, aug="none").split()[1]  # MNIST's file is sorted by class
    assert held.labels[:100].max() < 2  # its first 100 held-out images are 0s and 1s only
    evaluator = evaluate.Evaluator("mnist", held, "mnist", 16, 100, "cpu")
    spread = np.linspace(0, len(held) - 1, 100).round().astype(int)
    assert sorted(set(held.labels[spread].tolist())) == list(range(10))
    x = torch.from_numpy(np.array(held.images[spread])).permute(0, 3, 1, 2).float() / 255
    assert np.allclose(evaluator.real_acts, fid.activations(x, evaluator.model))
