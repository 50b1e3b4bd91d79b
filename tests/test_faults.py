"""Bad input and faults, the same matrix for all six training scripts: each case ends in its one-line
message (exit code 2) or recovers as promised, and loses nothing: a refused run leaves every file of the
run byte-identical; a stopped one leaves a checkpoint that --resume finishes exactly."""

import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import ROOT
from PIL import Image

import common
import cyclegan
import dcgan
import ddpm
import sagan
import vae
import wgan_gp

MODULES = dict(dcgan=dcgan, wgan_gp=wgan_gp, sagan=sagan, vae=vae, ddpm=ddpm, cyclegan=cyclegan)
SMALL = ["--preset", "cpu", "--batch-size", "8", "--log-every", "1", "--fid-features", "none"]
FLAGS = {
    "dcgan": ["--ngf", "8", "--ndf", "8"],
    "wgan_gp": ["--ngf", "8", "--ndf", "8", "--n-critic", "2"],
    "sagan": ["--ngf", "8", "--ndf", "8", "--n-critic", "2"],
    "vae": ["--width", "8"],
    "ddpm": ["--base-ch", "8"],
    "cyclegan": ["--ngf", "4", "--ndf", "4", "--res", "16"],
}
# A loss each script computes every step: made NaN to check that the run stops, saying where.
LOSS = dict(
    dcgan="d_loss",
    wgan_gp="critic_loss",
    sagan="critic_loss",
    vae="kl_divergence",
    ddpm="diffusion_loss",
    cyclegan="discriminator_loss",
)
SCRIPTS = list(MODULES)


def flags(script, out, *extra):
    return [*SMALL, *FLAGS[script], "--out", str(out), *extra]


def refused(script, argv, capsys):
    """Run SCRIPT's main(argv), which must exit 2 -> its stderr, one line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        MODULES[script].main(argv)
    err = capsys.readouterr().err
    *before, message = err.rstrip("\n").split("\n")
    assert e.value.code == 2 and message.startswith("error: ") and "Traceback" not in err, err
    assert all("it/s]" in line for line in before), err  # at most a progress bar above it
    return message


def files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 2-step run of every script, copied for each test that needs one."""
    top = tmp_path_factory.mktemp("trained")
    for script in SCRIPTS:
        MODULES[script].main(flags(script, top / script, "--max-steps", "2"))
    return top


def copy_of(trained, script, tmp_path):
    return shutil.copytree(trained / script, tmp_path / script)


@pytest.mark.parametrize("script", SCRIPTS)
def test_missing_data_path(script, tmp_path, capsys):
    data = ["--data-a", "/no/such/folder", "--data-b", "digits"] if script == "cyclegan" else ["--data"]
    data += [] if script == "cyclegan" else ["/no/such/folder"]
    err = refused(script, flags(script, tmp_path / "run", "--max-steps", "1", *data), capsys)
    assert err == "error: data path not found: /no/such/folder"
    assert not (tmp_path / "run" / "args.json").exists() and not (tmp_path / "run" / "ckpt.pt").exists()


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_garbage_image_is_skipped_counted_and_listed(script, tmp_path):
    folder = tmp_path / "images"
    for i in range(24):  # two labelled sub-folders of real images, and one file that is no image
        (folder / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        pixels = np.random.RandomState(i).randint(0, 255, (20, 20, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"c{i % 2}" / f"{i:02d}.png")
    (folder / "c0" / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image at all")
    data = (
        ["--data-a", str(folder), "--data-b", str(folder)]
        if script == "cyclegan"
        else ["--data", str(folder)]
    )
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image\(s\) under .*images; list in"):
        summary = MODULES[script].main(flags(script, tmp_path / "run", "--max-steps", "2", *data))
    assert summary["complete"] and summary["steps"] == 2
    manifests = [json.loads(p.read_text()) for p in (common.CACHE_DIR / "data").glob("*.json")]
    (manifest,) = [m for m in manifests if m["spec"] == str(folder)]
    assert manifest["skipped"] == [f"{folder / 'c0' / 'garbage.png'}: UnidentifiedImageError"]
    assert manifest["n"] == 24


@pytest.mark.parametrize("script", SCRIPTS)
def test_cond_on_unlabelled_data(script, tmp_path, capsys):
    err = refused(
        script, flags(script, tmp_path / "run", "--max-steps", "1", "--cond", "--data", "lfw"), capsys
    )
    if script == "cyclegan":
        assert err.startswith("error: --cond, --labels and --evaluator do not apply: cyclegan.py translates")
    else:
        assert err == "error: --cond needs labelled data with at least 2 classes; lfw has 1"
    assert not (tmp_path / "run" / "args.json").exists()


@pytest.mark.parametrize("script", SCRIPTS)
def test_existing_run_is_not_overwritten(script, trained, tmp_path, capsys):
    run = copy_of(trained, script, tmp_path)
    before = files(run)
    err = refused(script, flags(script, run, "--max-steps", "3"), capsys)
    assert err == f"error: {run} already holds a run; pass --resume to continue it or choose another --out"
    assert files(run) == before


@pytest.mark.parametrize("script", SCRIPTS)
def test_resume_of_another_scripts_run(script, trained, tmp_path, capsys):
    other = SCRIPTS[(SCRIPTS.index(script) + 1) % len(SCRIPTS)]
    run = copy_of(trained, other, tmp_path)
    before = files(run)
    err = refused(script, flags(script, run, "--max-steps", "3", "--resume"), capsys)
    assert err == f"error: {run} is a {other}.py run, not a {script}.py one; use another --out"
    assert files(run) == before


@pytest.mark.parametrize("script", SCRIPTS)
def test_resume_with_other_model_flags(script, trained, tmp_path, capsys):
    run = copy_of(trained, script, tmp_path)
    before = files(run)
    err = refused(script, flags(script, run, "--max-steps", "3", "--resume", "--res", "32"), capsys)
    assert err == f"error: cannot resume {run}: it was trained with --res 16 (now 32); use another --out"
    assert files(run) == before


@pytest.mark.parametrize("script", SCRIPTS)
def test_resume_of_a_damaged_checkpoint(script, trained, tmp_path, capsys):
    run = copy_of(trained, script, tmp_path)
    (run / "ckpt.pt").write_bytes((run / "ckpt.pt").read_bytes()[:1000])  # cut short by a full disk
    before = files(run)
    err = refused(script, flags(script, run, "--max-steps", "3", "--resume"), capsys)
    assert err == f"error: {run / 'ckpt.pt'} is not a readable checkpoint (damaged? RuntimeError)"
    assert files(run) == before


@pytest.mark.parametrize("script", SCRIPTS)
def test_generate_needs_a_checkpoint_and_a_count(script, trained, tmp_path, capsys):
    err = refused(script, flags(script, tmp_path / "empty", "--generate", "4"), capsys)
    empty = tmp_path / "empty"
    assert err == f"error: --generate samples a trained run, and {empty} holds no checkpoint (--out RUN)"
    run = copy_of(trained, script, tmp_path)
    before = files(run)
    err = refused(script, ["--out", str(run), "--generate", "0"], capsys)
    assert err == "error: --generate N needs N >= 1, got 0"
    assert files(run) == before


@pytest.mark.parametrize("script", SCRIPTS)
def test_nan_loss_stops_naming_the_step_and_the_checkpoint(script, trained, tmp_path, capsys, monkeypatch):
    run = copy_of(trained, script, tmp_path)
    saved = (run / "ckpt.pt").read_bytes()
    loss = getattr(MODULES[script], LOSS[script])
    monkeypatch.setattr(MODULES[script], LOSS[script], lambda *a: loss(*a) * float("nan"))
    err = refused(script, flags(script, run, "--max-steps", "6", "--resume"), capsys)
    assert err.startswith("error: loss") and err.endswith(
        f" is nan at step 3: training diverged; last good checkpoint: {run / 'ckpt.pt'}"
    )
    assert (run / "ckpt.pt").read_bytes() == saved  # the step-2 checkpoint, untouched


@pytest.fixture(scope="module")
def sigterm(tmp_path_factory):
    """Every script started in a subprocess, all at once, each sent SIGTERM once it is training
    (mid-epoch: 8 images a step) -> {script: (folder, exit code, seconds from signal to exit, stderr)}."""
    top = tmp_path_factory.mktemp("sigterm")
    procs = {}
    for script in SCRIPTS:
        cmd = [
            sys.executable,
            str(ROOT / f"{script}.py"),
            *flags(script, top / script, "--max-steps", "100000"),
        ]
        procs[script] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # One loop signals each script as soon as it trains and notes when each exits: timing an exit only after
    # every script was signalled would charge the early ones with the late ones' start-up.
    signalled, exited, deadline = {}, {}, time.time() + 240
    while len(exited) < len(procs) and time.time() < deadline:
        for script, proc in procs.items():
            metrics = top / script / "metrics.jsonl"
            if script in exited:
                continue
            if proc.poll() is not None:  # also a crash before the signal, which the test reports
                exited[script] = time.time()
            elif script not in signalled and metrics.exists() and metrics.read_text().count("\n") >= 2:
                proc.send_signal(signal.SIGTERM)
                signalled[script] = time.time()
        time.sleep(0.02)
    results = {}
    for script, proc in procs.items():
        code = proc.wait(timeout=60)
        seconds = exited.get(script, time.time()) - signalled.get(script, float("nan"))
        results[script] = (top / script, code, seconds, proc.stderr.read())
    return results


@pytest.mark.parametrize("script", SCRIPTS)
def test_sigterm_checkpoints_exits_fast_and_resume_equals_an_uninterrupted_run(script, sigterm, tmp_path):
    run, code, seconds, stderr = sigterm[script]
    assert code == 0, stderr[-3000:]
    assert seconds < 15  # half the shortest preemption grace (30-90 s), with six scripts sharing two cores
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_by"] == "SIGTERM" and summary["complete"] is False
    saved = common.load_checkpoint(run / "ckpt.pt")["step"]
    assert saved == summary["steps"] >= 2
    assert not (run / "samples.png").exists()  # the final evaluation and outputs wait for --resume
    total = str(saved + 2)
    summary = MODULES[script].main(flags(script, run, "--max-steps", total, "--resume"))
    assert summary["complete"] is True and summary["steps"] == saved + 2
    MODULES[script].main(flags(script, tmp_path / "straight", "--max-steps", total))
    resumed, straight = (
        common.load_checkpoint(run / "ckpt.pt"),
        common.load_checkpoint(tmp_path / "straight" / "ckpt.pt"),
    )
    for name in resumed:
        if name not in ("train_seconds", "args"):
            assert_same(resumed[name], straight[name], name)
    rows = lambda out: [
        json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if '"train"' in l
    ]
    assert rows(run) == rows(tmp_path / "straight")


def assert_same(a, b, path):
    """Nested state: tensors bit for bit, everything else equal."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_same(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}/{i}")
    elif torch.is_tensor(a):
        assert torch.equal(a, b), path
    else:
        assert a == b, path
