import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

RUNS = [
    "1A_raw_64",
    "1A_raw_128",
    "1B_aligned_64",
    "1C_aligned_jitter",
    "1D_aligned_mix",
    "2.1_dcgan",
    "2.2_wgan_gp",
    "2.3_sagan",
    "2.4_sagan_high",
    "3.1_vae_mse",
    "3.3_vae_patchgan",
    "4.1_ddpm_linear_eps",
    "4.2_ddpm_cosine_eps",
    "4.3_ddpm_cosine_v",
    "4.4_ddpm_wide",
    "5_gan",
    "5_vae",
    "5_ddpm",
    "6.1_dcgan_proj",
    "6.2_acgan",
    "6.3_sagan_cond",
    "6.4_cvae",
    "6.5_ddpm_cfg",
    "7.1_cyclegan",
    "7.2_no_cycle",
    "7.3_dc_disc",
    "7.4_dc_no_cycle",
    "7.5_semantic",
    "8.0_dcgan",
    "8.1_csp_lr_1e-4_1e-4",
    "8.1_csp_lr_2e-4_2e-5",
    "8.1_csp_lr_2e-4_2e-3",
    "8.1_csp_lr_1e-5_1e-5",
    "8.2_csp_tanh_bn",
    "8.3_beta1_0.7",
    "8.4_weight_decay",
    "8.5_lr_decay",
    "8.5_lr_decay_steep",
    "8.6_basic_diffaug",
    "8.6_deluxe",
    "8.6_deluxe_diffaug",
    "8.7_iters_short",
    "8.7_iters_long",
    "8.8_cyclegan_short",
    "8.8_cyclegan_long",
]


def run_all(runs_dir, *args, python=sys.executable, **env_vars):
    # No VGG-16 weights (the suite's TORCH_HOME is empty): step 3.2 must be skipped, saying so.
    env = dict(os.environ, RUNS=str(runs_dir), PYTHON=str(python), **env_vars)
    return subprocess.run(
        ["bash", str(ROOT / "run_all.sh"), "--preset", "test", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def stand_in(tmp_path):
    """A PYTHON for run_all.sh that answers the training scripts with tests/standin.py's files."""
    python = tmp_path / "standin_python"
    python.write_text(f'#!/bin/sh\nexec {sys.executable} {ROOT / "tests" / "standin.py"} "$@"\n')
    python.chmod(0o755)
    return python


def commands(runs_dir):
    """The training commands run_all.sh ran, in order: {"launcher", "script", "argv"} each."""
    return [json.loads(line) for line in (runs_dir / "standin.jsonl").read_text().splitlines()]


def flag(argv, name):
    """The value of --name in a command (the last one given), or None."""
    at = [i for i, word in enumerate(argv) if word == name]
    return argv[at[-1] + 1] if at else None


def test_every_phase_runs_then_skips(tmp_path):
    """The recipe, with the training scripts stood in for (their own tests run them): every step once,
    its flags, phase 1's alignment and decision, phase 5's picks, the report; then nothing twice."""
    python = stand_in(tmp_path)
    first = run_all(tmp_path, python=python)
    assert first.returncode == 0, first.stderr[-3000:]
    for name in RUNS:
        assert (tmp_path / name / "summary.json").is_file(), name
        grid = "translate.png" if name.startswith("7") or "cyclegan" in name else "samples.png"
        assert (tmp_path / name / grid).is_file(), name
    assert "3.2_vae_perceptual: skipped: VGG-16 weights" in first.stdout
    # Phase 1 aligned the built-in faces once and decided offline: each run's samples (the stand-in's grey
    # squares: no face) scored by MTCNN against the 100 raw faces, FID(mtcnn) without Inception weights.
    assert "aligned: 100" in first.stdout and (tmp_path / "data" / "aligned_128" / "000000.png").is_file()
    phase1 = json.loads((tmp_path / "phase1.json").read_text())
    assert set(phase1) == {"1A resolution", "1B alignment", "1C augmentation", "1D data"}
    assert all(
        v["winner"] and v["by"] == "fid_mtcnn" and set(v["faces"].values()) == {0.0} for v in phase1.values()
    )
    scored = json.loads((tmp_path / "1B_aligned_64" / "faces.json").read_text())
    assert scored["n_fake"] == 4 and scored["reference"] == str(tmp_path / "data" / "lfw_faces")
    assert "phases 2-5 train on digits with the preset's own pipeline" in first.stdout
    assert "vgg16-397923af.pth" in (tmp_path / "3.2_vae_perceptual" / "SKIPPED").read_text()
    # Phase 5 retrained the picked run of each family with its own flags, for longer.
    picks = json.loads((tmp_path / "phase5.json").read_text())
    assert {f: p["run"] for f, p in picks.items()} == {
        "gan": "2.1_dcgan",
        "vae": "3.1_vae_mse",
        "ddpm": "4.1_ddpm_linear_eps",
    }  # no FID: first finished
    for family, source in [("gan", "2.1_dcgan"), ("vae", "3.1_vae_mse"), ("ddpm", "4.1_ddpm_linear_eps")]:
        final, base = (json.loads((tmp_path / n / "args.json").read_text()) for n in (f"5_{family}", source))
        assert final["max_steps"] == 6 and base["max_steps"] == 3 and final["res"] == 32  # one resolution
        assert {k: v for k, v in final.items() if k not in ("max_steps", "out", "res")} == {
            k: v for k, v in base.items() if k not in ("max_steps", "out", "res")
        }
    text = (tmp_path / "REPORT.md").read_text()
    assert f"{len(RUNS) + 1} runs" in text  # every run above and the skipped 3.2
    for name in RUNS:
        assert f"`{name}`" in text, name
    for png in ["phase1_samples", "phase2_samples", "phase5_samples"]:
        assert (tmp_path / "report" / f"{png}.png").is_file(), png
    assert "![5_ddpm](5_ddpm/denoise.png)" in text
    # Phase 6: every family conditional on shapes, the DDPM scored at each guidance scale.
    for name in [n for n in RUNS if n.startswith("6")]:
        args = json.loads((tmp_path / name / "args.json").read_text())
        assert args["cond"] and args["data"] == "shapes", name
        assert (tmp_path / name / "cond_test.png").is_file() and (
            tmp_path / name / "cond_new_test.txt"
        ).is_file()
    assert json.loads((tmp_path / "6.5_ddpm_cfg" / "args.json").read_text())["guidance"] == [1, 0, 2, 4]
    assert "## Phase 6: conditional generation" in text and "![6.4_cvae](6.4_cvae/cond_new_test.png)" in text
    # Phase 7: the built-in pair, cycle loss on and off, PatchGAN and whole-image discriminators.
    ran = {Path(c["argv"][c["argv"].index("--out") + 1]).name: c for c in commands(tmp_path)}
    assert list(ran) == RUNS and all(c["launcher"] == [] for c in ran.values())  # each once, in order
    for name, disc, cycle in [("7.1", "patch", None), ("7.2", "patch", "0"), ("7.3", "dc", None)]:
        (run,) = [c for n, c in ran.items() if n.startswith(name)]
        assert run["script"] == "cyclegan.py" and flag(run["argv"], "--data") is None, name
        assert (flag(run["argv"], "--disc"), flag(run["argv"], "--lambda-cycle")) == (disc, cycle), name
    assert (
        "## Phase 7: unpaired translation" in text and "![7.2_no_cycle](7.2_no_cycle/translate.png)" in text
    )
    second = run_all(tmp_path, python=python)
    assert second.returncode == 0 and len(commands(tmp_path)) == len(RUNS)
    assert second.stdout.count("finished, skipped") == len(RUNS), second.stdout
    assert "100 already done, 0 to align" in second.stdout
    # --only 5 retrains a finalist from the flags phases 2-4 recorded, without running them again.
    shutil.rmtree(tmp_path / "5_gan")
    third = run_all(tmp_path, "--only", "5", python=python)
    assert third.returncode == 0 and "== 5_gan: " in third.stdout and "dcgan.py" in third.stdout
    assert third.stdout.count("finished, skipped") == 2  # 5_vae and 5_ddpm
    assert [c["argv"] for c in commands(tmp_path)[len(RUNS) :]] == [ran["5_gan"]["argv"]]


def test_nproc_launches_every_run_through_torchrun(tmp_path):
    """NPROC=2: every run of the phase goes through torchrun (what DDP then does: tests/test_ddp.py)."""
    python = stand_in(tmp_path)
    res = run_all(tmp_path, "--only", "4", NPROC="2", python=python)
    assert res.returncode == 0, res.stderr[-3000:]
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    phase4 = [n for n in RUNS if n.startswith("4.")]
    for name in phase4:
        assert f"== {name}: {python} {' '.join(launcher)} ddpm.py" in res.stdout
    ran = commands(tmp_path)
    assert [Path(flag(c["argv"], "--out")).name for c in ran] == phase4
    assert all(c["launcher"] == launcher and c["script"] == "ddpm.py" for c in ran)
    again = run_all(tmp_path, "--only", "4", NPROC="2", python=python)
    assert again.stdout.count("finished, skipped") == 4 and len(commands(tmp_path)) == 4


def test_seeds_run_each_step_per_seed_and_skip_each_when_done(tmp_path):
    python = stand_in(tmp_path)
    res = run_all(tmp_path, "--only", "4", SEEDS="2", python=python)
    assert res.returncode == 0, res.stderr[-3000:]
    for name in [n for n in RUNS if n.startswith("4.")]:
        for seed in (0, 1):
            run = tmp_path / name / f"seed_{seed}"
            assert json.loads((run / "summary.json").read_text())["complete"], run
            assert json.loads((run / "args.json").read_text())["seed"] == seed
        assert not (tmp_path / name / "summary.json").exists()
    assert len(commands(tmp_path)) == 8
    (tmp_path / "4.2_ddpm_cosine_eps" / "seed_1" / "summary.json").unlink()  # one seed unfinished
    again = run_all(tmp_path, "--only", "4", SEEDS="2", python=python)
    assert again.stdout.count("finished, skipped") == 7
    assert "== 4.1_ddpm_linear_eps/seed_1: finished, skipped" in again.stdout
    assert [flag(c["argv"], "--out") for c in commands(tmp_path)[8:]] == [
        str(tmp_path / "4.2_ddpm_cosine_eps" / "seed_1")
    ]
    # The report reads each step's seeds: mean +- std cells.
    line = next(l for l in (tmp_path / "REPORT.md").read_text().splitlines() if l.startswith("| 4.1 |"))
    assert (
        "mean ± std over 2 seeds" in (tmp_path / "REPORT.md").read_text() and "`4.1_ddpm_linear_eps`" in line
    )


def test_failed_runs_are_reported_and_study_goes_on(tmp_path):
    (tmp_path / "4.2_ddpm_cosine_eps").mkdir(parents=True)
    # A corrupt checkpoint makes one run fail at the start (it is resumed and refused) ...
    (tmp_path / "4.2_ddpm_cosine_eps" / "ckpt.pt").write_bytes(b"not a checkpoint")
    # ... and a learning rate of 1e30 makes another diverge midway (its loss is not finite by step 2).
    python = tmp_path / "python"
    python.write_text(
        f'#!/bin/sh\ncase "$*" in *4.3_ddpm_cosine_v*) exec {sys.executable} "$@" --lr 1e30 ;; esac\n'
        f'exec {sys.executable} "$@"\n'
    )
    python.chmod(0o755)
    res = run_all(tmp_path, "--only", "4", python=python)
    assert res.returncode == 1  # the study went on, and the exit code still tells
    assert "4.2_ddpm_cosine_eps: FAILED" in res.stderr and "4.3_ddpm_cosine_v: FAILED" in res.stderr
    for name in ["4.1_ddpm_linear_eps", "4.4_ddpm_wide"]:
        assert (tmp_path / name / "summary.json").is_file(), name
    assert not (tmp_path / "2.1_dcgan").exists() and not (tmp_path / "5_ddpm").exists()  # --only 4
    rows = {
        l.split("|")[2].strip(): l.split("|")[-2].strip()
        for l in (tmp_path / "REPORT.md").read_text().splitlines()
        if l.startswith("| 4.")
    }
    # A damaged file is called damaged (not a pickle threat) and named.
    assert rows["`4.2_ddpm_cosine_eps`"].startswith("failed: exit 2 (ddpm.py) error: ")
    assert "ckpt.pt is not a readable checkpoint (damaged?" in rows["`4.2_ddpm_cosine_eps`"]
    assert rows["`4.3_ddpm_cosine_v`"].startswith("failed: exit 2 (ddpm.py) error: loss is")
    assert "training diverged" in rows["`4.3_ddpm_cosine_v`"]
    assert rows["`4.1_ddpm_linear_eps`"] == rows["`4.4_ddpm_wide`"] == "none flagged"


def test_unknown_preset_exit_2(tmp_path):
    res = subprocess.run(
        ["bash", str(ROOT / "run_all.sh"), "--preset", "huge"], capture_output=True, text=True
    )
    assert res.returncode == 2 and "unknown preset" in res.stderr


def dry_run(runs_dir, *args, **env_vars):
    env = dict(os.environ, RUNS=str(runs_dir), PYTHON=sys.executable, **env_vars)
    cmd = ["bash", str(ROOT / "run_all.sh"), "--dry-run", *args]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    printed = {}  # run name -> the command's words, each line as a shell would read it back
    for line in res.stdout.splitlines():
        name, _, command = line.removeprefix("== ").partition(": ")
        if command.startswith(sys.executable):
            printed[name] = shlex.split(command)
    return res.stdout, printed


def test_dry_run_prints_every_command_once_each_flag_and_runs_nothing(tmp_path):
    out, printed = dry_run(tmp_path / "runs", "--preset", "test")
    assert not (tmp_path / "runs").exists() and "dry run: nothing was run" in out
    # Every run of the study, in order; phase 5 says what it will retrain (its picks need phases 2-4).
    assert list(printed) == [n for n in RUNS if not n.startswith("5_")]
    assert "== 5_gan: the best of 2.1_dcgan 2.2_wgan_gp 2.3_sagan 2.4_sagan_high" in out
    for name, words in printed.items():
        flags = [w for w in words if w.startswith("--")]
        assert len(flags) == len(set(flags)), name  # copy a line, get that run: no flag given twice
        assert flag(words, "--out") == str(tmp_path / "runs" / name), name
    # The value that wins is the step's own: phase 1's 64 and 128 over the preset's 32, 6.5's 10 steps.
    assert flag(printed["1A_raw_128"], "--res") == "128" and flag(printed["2.1_dcgan"], "--res") == "32"
    faces = tmp_path / "runs" / "data"
    assert flag(printed["1D_aligned_mix"], "--data") == f"{faces / 'aligned_128'},{faces / 'lfw_faces'}"
    only, printed = dry_run(tmp_path / "runs", "--preset", "test", "--only", "4")
    assert list(printed) == [n for n in RUNS if n.startswith("4.")]


def test_smoke_claims_train_for_steps_not_seconds(tmp_path):
    """Phase 8's runs stop at a step count with the clock out of the way: both runs of a claim train as
    long, whatever their speed or the machine's load, so a verdict does not hang on how busy it was."""
    _, printed = dry_run(tmp_path / "runs", "--preset", "smoke", "--only", "8")
    steps = {name: flag(words, "--max-steps") for name, words in printed.items()}
    assert steps["8.0_dcgan"] == steps["8.2_csp_tanh_bn"] == steps["8.1_csp_lr_1e-5_1e-5"] == "1000"
    assert (steps["8.7_iters_short"], steps["8.7_iters_long"]) == ("200", "6400")
    assert (steps["8.8_cyclegan_short"], steps["8.8_cyclegan_long"]) == ("50", "500")
    assert {flag(words, "--max-minutes") for words in printed.values()} == {"600"}


def test_dry_run_carries_phase1s_decision_into_phases_2_to_5(tmp_path):
    runs = tmp_path / "runs"
    # No decision yet: the defaults (64 px, raw faces, flips), and 1C re-checked by a DCGAN with jitter.
    out, printed = dry_run(runs, "--preset", "full", DATA="/data/faces", SEEDS="1")
    assert "phases 2-5 from no phase-1 winner: the defaults: --data /data/faces --res 64" in out
    dcgan = [flag(printed["2.1_dcgan"], f) for f in ("--data", "--res", "--aug")]
    assert dcgan == ["/data/faces", "64", "flip"]
    assert flag(printed["2.1_dcgan_aug_jitter"], "--aug") == "jitter"
    # A decision: 128 px, aligned, not mixed, jitter; GANs take the augmentation, the VAE and DDPM flips.
    runs.mkdir()
    winners = ["1A_raw_128", "1B_aligned_64", "1C_aligned_jitter", "1B_aligned_64"]
    questions = ["1A resolution", "1B alignment", "1C augmentation", "1D data"]
    (runs / "phase1.json").write_text(json.dumps({q: {"winner": w} for q, w in zip(questions, winners)}))
    out, printed = dry_run(runs, "--preset", "full", DATA="/data/faces", SEEDS="1")
    aligned = str(runs / "data" / "aligned_128")
    for name in ["2.1_dcgan", "2.2_wgan_gp", "2.3_sagan", "3.1_vae_mse", "4.1_ddpm_linear_eps"]:
        assert flag(printed[name], "--data") == aligned and flag(printed[name], "--res") == "128", name
        assert flag(printed[name], "--aug") == ("jitter" if name[0] == "2" else "flip"), name
    assert flag(printed["2.1_dcgan_aug_flip"], "--aug") == "flip" and "2.1_dcgan_aug_jitter" not in printed
    assert "its command + --epochs 200 --res 128" in out.split("== 5_gan")[1].splitlines()[0]
    # Mixed wins: aligned + raw.
    (runs / "phase1.json").write_text(json.dumps({"1D data": {"winner": "1D_aligned_mix"}}))
    out, printed = dry_run(runs, "--preset", "full", "--only", "3", DATA="/data/faces", SEEDS="1")
    assert flag(printed["3.1_vae_mse"], "--data") == f"{aligned},/data/faces"
    # The smoke preset trains phases 2-5 on digits: the faces' pipeline does not carry, and it says so.
    out, printed = dry_run(runs, "--preset", "smoke", "--only", "2")
    assert "phases 2-5 train on digits with the preset's own pipeline" in out
    assert flag(printed["2.1_dcgan"], "--data") == "digits" and flag(printed["2.1_dcgan"], "--aug") is None
