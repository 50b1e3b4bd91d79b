"""torchrun on the CPU (Gloo), 2 processes: every training script trains a few steps, writes each output
once and ends with the same weights on both ranks; a 2-process DDPM takes the steps of one process on the
same global batch; a DDP run resumes exactly; FID gathered from both ranks equals one process's; the
inputs DDP cannot take fail in one line."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

import common
import ddpm

WORKER = ROOT / "tests" / "torchrun_worker.py"
SMALL = ["--preset", "cpu", "--batch-size", "8", "--log-every", "1", "--fid-n", "40", "--fid-n-real", "60"]
SCRIPTS = {
    "dcgan": ["--ngf", "8", "--ndf", "8"],
    "wgan_gp": ["--ngf", "8", "--ndf", "8", "--n-critic", "2"],
    "sagan": ["--ngf", "8", "--ndf", "8", "--n-critic", "2"],
    "vae": ["--width", "8", "--adv", "0.1"],  # with its BatchNorm PatchGAN
    "ddpm": ["--base-ch", "8"],
    "cyclegan": ["--res", "16", "--ngf", "4", "--ndf", "4", "--fid-features", "auto"],
}
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")  # each rank's BatchNorm statistics


def ddpm_flags(out, steps):
    return [*SMALL, *SCRIPTS["ddpm"], "--max-steps", str(steps), "--out", str(out)]


@pytest.fixture(scope="module")
def launch(tmp_path_factory):
    """One torchrun launch, every job of this file in it (a launch costs seconds, a job less): jobs are
    run in order by tests/torchrun_worker.py. -> (folder, launch result, exit code of job NAME on rank
    R, log of job NAME on rank R)."""
    top = tmp_path_factory.mktemp("ddp")
    jobs = [  # first: a cache still empty, built by rank 0 while rank 1 waits
        (
            "empty_cache",
            "ddpm",
            [*ddpm_flags(top / "cache_run", 2), "--fid-features", "digits"],
            top / "cache",
        )
    ]
    jobs += [
        (script, script, [*SMALL, *flags, "--max-steps", "4", "--out", str(top / script)], None)
        for script, flags in SCRIPTS.items()
    ]
    jobs += [
        ("ddpm_5", "ddpm", ddpm_flags(top / "two", 5), None),
        ("resume_a", "ddpm", ddpm_flags(top / "a", 6), None),
        ("resume_b3", "ddpm", ddpm_flags(top / "b", 3), None),
        ("resume_b6", "ddpm", [*ddpm_flags(top / "b", 6), "--resume"], None),
        ("evaluate", "evaluate", [str(top / "two.json")], None),
        ("generate", "ddpm", [*ddpm_flags(top / "two", 5), "--generate", "4"], None),
        (
            "batch_7",
            "dcgan",
            [*SMALL, "--batch-size", "7", "--max-steps", "2", "--out", str(top / "b7")],
            None,
        ),
    ]
    plan = top / "plan.json"
    plan.write_text(json.dumps([dict(name=n, script=s, argv=a, cache=c and str(c)) for n, s, a, c in jobs]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER)]
    res = subprocess.run([*cmd, str(plan)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-4000:]
    exit_code = lambda name, r=0: int((top / f"{name}.rank{r}.exit").read_text())
    log = lambda name, r=0: (top / f"{name}.rank{r}.log").read_text()
    return top, res, exit_code, log


def rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_same(a, b, path=""):
    """Nested state dicts equal, tensors bit for bit (BatchNorm running statistics left out)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            if not str(key).endswith(BUFFERS):
                assert_same(a[key], b[key], f"{path}/{key}")
    elif torch.is_tensor(a):
        assert torch.equal(a, b), path
    else:
        assert a == b, path


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_trains_under_torchrun_with_one_set_of_outputs(launch, script):
    top, _, exit_code, log = launch
    out = top / script
    assert exit_code(script) == exit_code(script, 1) == 0, log(script)[-3000:]
    train = [r["step"] for r in rows(out) if r["kind"] == "train"]
    assert train == [1, 2, 3, 4]  # rank 0 alone writes: no row twice
    assert len([r for r in rows(out) if r["kind"] in ("fid", "eval")]) == 1
    assert log(script).count("done: 4 steps") == 1 and "done:" not in log(script, 1)  # rank 1 prints nothing
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["steps"] == 4
    assert (out / ("translate.png" if script == "cyclegan" else "samples.png")).exists()
    rank0, rank1 = (torch.load(out / f"rank_{r}.pt", weights_only=True) for r in (0, 1))
    # Averaged gradients, identical updates: models, EMA (its BatchNorm statistics rank 0's on both),
    # optimizer moments and RNG agree bit for bit. (CycleGAN's image pools hold each rank's own fakes.)
    for name in rank0:
        if name.startswith("ema"):
            assert_same(rank0[name]["module"], rank1[name]["module"], name)  # buffers included
        elif not name.startswith("pool"):
            assert_same(rank0[name], rank1[name], name)
    assert torch.equal(rank0["rng"], rank1["rng"])
    ckpt = common.load_checkpoint(out / "ckpt.pt")
    assert_same(
        {k: ckpt[k] for k in rank0 if k not in ("rng", "step")},
        {k: rank0[k] for k in rank0 if k not in ("rng", "step")},
    )


def test_ddpm_on_two_processes_takes_the_steps_of_one(tmp_path, launch):
    """GroupNorm only, no dropout: 2 ranks with 4 images each follow 1 process with the batch of 8 (each
    rank draws the global batch's t and noise and keeps its rows; DDP averages the gradients)."""
    one, two = tmp_path / "one", launch[0] / "two"
    ddpm.main(ddpm_flags(one, 5))
    a, b = common.load_checkpoint(one / "ckpt.pt"), common.load_checkpoint(two / "ckpt.pt")
    for key in a["model"]:
        torch.testing.assert_close(b["model"][key], a["model"][key], rtol=1e-4, atol=1e-5, msg=key)
    loss = lambda out: [r["loss"] for r in rows(out) if r["kind"] == "train"]
    assert loss(two) == pytest.approx(loss(one), rel=1e-4)
    fid_row = lambda out: next(r for r in rows(out) if r["kind"] == "fid")
    assert fid_row(two)["fid"] == pytest.approx(fid_row(one)["fid"], rel=1e-3)
    assert fid_row(two)["n_fake"] == fid_row(one)["n_fake"] == 40


def test_rank_0_builds_an_empty_cache_while_the_others_wait(launch):
    """Data cache, digits classifier (whose training reads the data again, on rank 0 only) and held-out
    features built by rank 0, read by rank 1: the ranks' barriers must pair up either way."""
    top, _, exit_code, log = launch
    assert exit_code("empty_cache") == exit_code("empty_cache", 1) == 0, log("empty_cache")[-3000:]
    assert "digits classifier trained" in log("empty_cache") and "trained" not in log("empty_cache", 1)
    cache = top / "cache"
    assert (cache / "digits_net_v1.pt").is_file() and len(list((cache / "fid_stats").glob("*.npz"))) == 1


def test_ddp_run_resumes_as_if_uninterrupted(launch):
    top, _, exit_code, log = launch
    a, b = top / "a", top / "b"
    assert [exit_code(j) for j in ("resume_a", "resume_b3", "resume_b6")] == [0, 0, 0], log("resume_b6")
    assert "resumed" in log("resume_b6") and "at step 3" in log("resume_b6")
    ca, cb = common.load_checkpoint(a / "ckpt.pt"), common.load_checkpoint(b / "ckpt.pt")
    assert cb["step"] == 6
    assert_same({k: ca[k] for k in ("model", "ema", "opt")}, {k: cb[k] for k in ("model", "ema", "opt")})
    train = lambda out: [r for r in rows(out) if r["kind"] == "train"]
    assert train(a) == train(b)


def test_fid_gathered_from_two_ranks_equals_one_process(launch, tmp_path):
    top = launch[0]
    res = subprocess.run(
        [sys.executable, str(WORKER), "evaluate", str(tmp_path / "one.json")], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr[-3000:]
    one, two = (json.loads(p.read_text()) for p in (tmp_path / "one.json", top / "two.json"))
    assert (one.pop("world_size"), two.pop("world_size")) == (1, 2)
    assert one["n_fake"] == two["n_fake"] == 101
    for key in ("fid", "kid", "diversity", "classes_covered"):
        assert two[key] == pytest.approx(one[key], rel=1e-6), key


def test_a_batch_that_does_not_split_over_the_ranks_is_refused(launch):
    _, _, exit_code, log = launch
    assert exit_code("batch_7") == exit_code("batch_7", 1) == 2
    assert (
        log("batch_7").strip().splitlines()[-1]
        == "error: --batch-size 7 does not split evenly over 2 processes"
    )


def test_generate_and_sync_bn_say_what_they_need(tmp_path, capsys, launch):
    with pytest.raises(SystemExit) as e:
        ddpm.main([*SMALL, "--sync-bn", "--max-steps", "1", "--out", str(tmp_path / "r")])
    assert e.value.code == 2 and "--sync-bn needs GPUs" in capsys.readouterr().err
    _, _, exit_code, log = launch
    assert exit_code("generate") == 2 and log("generate").strip().splitlines()[-1] == (
        "error: --generate runs in one process, not under torchrun"
    )
