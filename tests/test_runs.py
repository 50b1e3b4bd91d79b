"""Run plumbing every script shares: presets that follow the machine, the progress bar,
resume checks, and derived caches that are rebuilt (never fatal, never silently reused)."""

import json
import time
import warnings

import numpy as np
import pytest
import torch

import classifiers
import common
import data
import dcgan
import ddpm
import evaluate
import sagan
import vae
import wgan_gp

# ----------------------------------------------------------------------------- presets


def test_cpu_preset_on_a_cpu_and_explicit_flags_win(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = dcgan.parse_args(["--ngf", "8", "--res", "32"])
    assert (args.ngf, args.res) == (8, 32)  # given explicitly: kept
    assert (args.ndf, args.aug, args.max_minutes, args.fid_n, args.fid_every) == (32, "none", 5.0, 1000, 0)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("preset cpu") and "--preset study" in out


def test_study_preset_on_cuda_and_on_request(monkeypatch, capsys):
    study = dcgan.parse_args(["--preset", "study"])
    assert capsys.readouterr().out == ""  # asked for by name: nothing to explain
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    auto = dcgan.parse_args([])
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("preset study") and "--preset cpu" in out
    for args in (study, auto):
        assert (args.res, args.ngf, args.aug, args.epochs, args.fid_n, args.max_minutes) == (
            32,
            64,
            "flip",
            100,
            5000,
            None,
        )


def test_cpu_preset_wins_over_auto_cuda_only_when_asked(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dcgan.parse_args(["--preset", "cpu"]).ngf == 32
    assert dcgan.parse_args(["--device", "cpu"]).ngf == 32  # auto follows the device the run will use


@pytest.mark.parametrize(
    "module, expected",
    [
        (dcgan, dict(ngf=32, ndf=32)),
        (wgan_gp, dict(ngf=32, ndf=32)),
        (sagan, dict(ngf=32, ndf=32, attn_res=[8])),
        (vae, dict()),  # the VAE's default width is already small: only the shared CPU preset
        (
            ddpm,
            dict(
                base_ch=32,
                ch_mult=[1, 2, 2],
                num_res_blocks=1,
                attn_res=[8],
                dropout=0.0,
                lr=1e-3,
                sample_steps=20,
            ),
        ),
    ],
)
def test_every_script_has_a_cpu_preset(monkeypatch, module, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = vars(module.parse_args([]))
    assert {k: args[k] for k in expected} == expected and args["res"] == 16
    study = vars(module.parse_args(["--preset", "study"]))
    assert study["res"] == 32 and all(
        study[k] != v for k, v in expected.items() if k not in ("ch_mult", "attn_res")
    )


def test_preset_flag_value_is_checked(capsys):
    with pytest.raises(SystemExit) as e:
        dcgan.parse_args(["--preset", "gpu"])
    assert e.value.code == 2 and "argument --preset: invalid choice: 'gpu'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- progress bar


def test_progress_counts_minutes_under_max_minutes():
    args = dcgan.parse_args(["--preset", "study", "--max-minutes", "2", "--epochs", "100000"])
    clock = common.TrainClock(args, 30.0, 2_300_000, 10, "t")  # resumed after half a minute of training
    assert clock.by_time and clock.bar.total == 2 and clock.bar.n == pytest.approx(0.5, abs=0.01)
    clock.tick()
    assert clock.bar.n == pytest.approx(0.5, abs=0.01)  # a step moves the bar by the time it took
    assert "min" in str(clock.bar) and "2300000" not in str(clock.bar).replace(",", "")
    clock._base = 600.0  # past the limit: the bar stops at its total, and the clock says stop
    clock.tick()
    assert clock.bar.n == 2 and clock.stop(11) and clock.timed_out
    clock.finish()


def test_progress_counts_steps_otherwise():
    args = dcgan.parse_args(["--preset", "study", "--max-steps", "7", "--max-minutes", "2"])
    clock = common.TrainClock(args, 0.0, 7, 3, "t")
    clock.tick()
    assert not clock.by_time and (clock.bar.n, clock.bar.total) == (4, 7)
    clock.finish()
    frozen = clock.seconds
    time.sleep(0.05)
    assert clock.seconds == frozen  # finished: the training time stands still for the summary


# ----------------------------------------------------------------------------- resume checks

TINY = [
    "--preset",
    "study",
    "--data",
    "digits",
    "--res",
    "32",
    "--batch-size",
    "16",
    "--ngf",
    "8",
    "--ndf",
    "8",
    "--fid-features",
    "none",
    "--max-steps",
    "2",
]


def test_resume_with_a_changed_model_flag_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    dcgan.main(TINY + ["--out", str(out)])
    before = (out / "ckpt.pt").read_bytes()
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        dcgan.main(TINY + ["--out", str(out), "--resume", "--res", "64", "--ngf", "16", "--max-steps", "4"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert "--res 32 (now 64)" in err and "--ngf 8 (now 16)" in err and "Traceback" not in err
    assert (out / "ckpt.pt").read_bytes() == before  # nothing lost
    assert json.loads((out / "args.json").read_text())["res"] == 32


def test_resume_with_a_checkpoint_that_does_not_fit_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    dcgan.main(TINY + ["--out", str(out)])
    (out / "args.json").unlink()  # no record to compare with: the load itself must say it
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        dcgan.main(TINY + ["--out", str(out), "--resume", "--res", "64", "--max-steps", "4"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "does not fit this model" in err


def test_resume_with_the_same_flags_still_works(tmp_path, capsys):
    out = tmp_path / "run"
    dcgan.main(TINY + ["--out", str(out), "--log-every", "1"])
    assert (
        dcgan.main(TINY + ["--out", str(out), "--resume", "--max-steps", "3", "--log-every", "1"])["steps"]
        == 3
    )
    assert f"resumed {out / 'ckpt.pt'} at step 2" in capsys.readouterr().out
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # went on from step 2, not from 0


def test_garbage_checkpoint_is_called_damaged_not_pickle(tmp_path):
    path = tmp_path / "ckpt.pt"
    path.write_bytes(b"\x00" * 100)
    with pytest.raises(common.UserError, match="not a readable checkpoint") as e:
        common.load_checkpoint(path)
    assert "pickle" not in str(e.value)
    common.save_checkpoint(path, {"step": 3})
    path.write_bytes(path.read_bytes()[:50])  # truncated by a full disk or a copy cut short
    with pytest.raises(common.UserError, match="not a readable checkpoint"):
        common.load_checkpoint(path)


# ----------------------------------------------------------------------------- damaged derived caches


def test_truncated_data_cache_is_rebuilt(private_cache):
    expected = np.array(data.load_dataset("digits", 16, aug="none").images)  # a copy, not the memmap
    manifest = next(  # the digits' own cache: MNIST's and others' at 16 px may sit beside it
        p
        for p in (common.CACHE_DIR / "data").glob("*.json")
        if json.loads(p.read_text())["spec"] == "digits" and json.loads(p.read_text())["res"] == 16
    )
    npy = manifest.with_suffix(".npy")
    npy.write_bytes(npy.read_bytes()[: npy.stat().st_size // 2])
    with pytest.warns(UserWarning, match="damaged.*rebuilding"):
        again = data.load_dataset("digits", 16, aug="none")
    assert np.array_equal(expected, np.asarray(again.images))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rebuilt cache loads quietly
        data.load_dataset("digits", 16, aug="none")


def test_data_cache_that_disagrees_with_its_manifest_is_rebuilt(private_cache):
    expected = np.array(data.load_dataset("lfw", 16, aug="none").images)
    manifest = next(
        p
        for p in (common.CACHE_DIR / "data").glob("*.json")
        if json.loads(p.read_text())["spec"] == "lfw" and json.loads(p.read_text())["res"] == 16
    )
    meta = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**meta, "n": meta["n"] + 1}))
    with pytest.warns(UserWarning, match="does not match its manifest"):
        again = data.load_dataset("lfw", 16, aug="none")
    assert np.array_equal(expected, np.asarray(again.images))


def test_garbage_digits_net_cache_is_retrained(capsys, private_cache, monkeypatch):
    net = classifiers.load_classifier("digits")
    path = common.CACHE_DIR / "digits_net_v1.pt"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.warns(UserWarning, match="retraining"):
        again = classifiers.load_classifier("digits")
    x = torch.rand(4, 1, 16, 16)
    assert torch.equal(net(x)[1], again(x)[1])  # deterministic training: the same network back
    assert "pickle" not in capsys.readouterr().err
    torch.save({"model": {"wrong": torch.zeros(1)}}, path)  # loads, but is not this network
    trained = []  # (the training itself, checked above, is not repeated)
    monkeypatch.setattr(classifiers, "train_classifier", lambda *a, **k: trained.append(a) or (net, 1.0))
    with pytest.warns(
        UserWarning, match=r"digits net cache .* does not load \(RuntimeError\); retraining it"
    ):
        classifiers.load_classifier("digits")
    assert trained == [("digits",)] and torch.equal(
        torch.load(path)["model"]["head.1.weight"], net.head[1].weight
    )


def test_damaged_fid_statistics_cache_is_recomputed(private_cache):
    held = data.load_dataset("digits", 16, aug="none").split()[1]
    first = evaluate.Evaluator("digits", held, "digits", 16, 100, "cpu")
    path = next((common.CACHE_DIR / "fid_stats").glob("digits_digits_None_16_100_cpu.npz"))
    with np.load(path) as f:
        assert list(f.keys()) == ["acts"]  # only what is read back
    path.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="damaged"):
        again = evaluate.Evaluator("digits", held, "digits", 16, 100, "cpu")
    assert np.allclose(first.real_acts, again.real_acts)
    np.savez(path, acts=first.real_acts[:10])  # the wrong number of rows for 100 images
    with pytest.warns(UserWarning, match="10 rows, not 100"):
        evaluate.Evaluator("digits", held, "digits", 16, 100, "cpu")


def test_resume_is_exact_with_fid_on(tmp_path):
    """Building the evaluator's networks draws their initial weights; a resumed run builds it after its
    RNG is restored, so that draw must not come from the training RNG (it did: with FID on, a resumed
    run drew other noise than an uninterrupted one)."""
    flags = ["--preset", "cpu", "--base-ch", "8", "--batch-size", "8", "--log-every", "1"]
    flags += ["--fid-features", "digits", "--fid-n", "20", "--fid-n-real", "30"]
    a, b = tmp_path / "a", tmp_path / "b"
    ddpm.main([*flags, "--max-steps", "4", "--out", str(a)])
    ddpm.main([*flags, "--max-steps", "2", "--out", str(b)])
    ddpm.main([*flags, "--max-steps", "4", "--out", str(b), "--resume"])
    ca, cb = common.load_checkpoint(a / "ckpt.pt"), common.load_checkpoint(b / "ckpt.pt")
    for key in ca["model"]:
        assert torch.equal(ca["model"][key], cb["model"][key]), key
