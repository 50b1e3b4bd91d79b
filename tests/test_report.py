"""report.py on a hand-made runs/ tree whose numbers are known."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT
from PIL import Image

import report


def grid_png(path, res, n=64, value=128):
    """A PNG the size save_grid writes for n images of res px, 8 to a row, 2 px padding."""
    rows = math.ceil(n / 8)
    Image.new("RGB", (8 * (res + 2) + 2, rows * (res + 2) + 2), (value,) * 3).save(path)


def make_run(root, name, model, args, fids=(), train=(), summary=True, **extra):
    run = root / name
    (run / "samples").mkdir(parents=True)
    (run / "args.json").write_text(json.dumps({"data": "digits", "res": 16, **args}))
    rows = [{"kind": "train", **r} for r in train] + [{"kind": "fid", **r} for r in fids]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if summary:
        final = fids[-1] if fids else {}
        (run / "summary.json").write_text(
            json.dumps(
                {
                    "model": model,
                    "params": 123456,
                    "steps": 100,
                    "epochs": 20,
                    "train_seconds": 90.0,
                    "images_per_s": 1234.4,
                    "sample_seconds_per_image": 0.0005,
                    "final": final,
                    "stopped_by": "max-minutes",
                    "complete": True,
                    **extra,
                }
            )
        )
        grid_png(run / "samples.png", 16)
        for epoch in (1, 5, 10, 20):
            grid_png(run / "samples" / f"epoch_{epoch:04d}.png", 16, value=10 * epoch)
    return run


def fid_row(epoch, fid, **kw):
    return {
        "step": epoch * 5,
        "epoch": epoch,
        "features": "digits",
        "fid": fid,
        "kid": 1.5,
        "kid_std": 0.1,
        "n_fake": 500,
        "n_real": 299,
        "classes_covered": 10,
        "class_kl": 0.05,
        "diversity": 5.0,
        "diversity_real": 6.0,
        **kw,
    }


healthy_gan = [{"step": s, "loss_d": 0.6, "loss_g": 1.2} for s in range(0, 200, 10)]


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    make_run(
        root,
        "2.1_dcgan",
        "dcgan",
        {"g_arch": "dcgan", "aug": "none"},
        fids=[fid_row(10, 40.0), fid_row(20, 12.3456)],
        train=healthy_gan,
    )
    make_run(
        root,
        "2.2_wgan_gp",
        "wgan_gp",
        {"n_critic": 2},
        fids=[fid_row(20, 88.0, classes_covered=3, diversity=1.0)],
        train=[{"step": s, "loss_g": 1.0, "wasserstein": 1.0 if s < 150 else 9.0} for s in range(0, 200, 10)],
    )
    failed = make_run(root, "2.3_sagan", "sagan", {}, summary=False)
    (failed / "FAILED").write_text("exit 2\nloss_g is nan at step 7: training diverged\n")
    make_run(
        root,
        "3.1_vae_mse",
        "vae",
        {"beta": 1.0},
        fids=[fid_row(20, 300.0)],
        train=[{"step": s, "loss": 0.3, "kl": 0.01} for s in range(0, 200, 10)],
    )
    (root / "3.2_vae_perceptual").mkdir()
    (root / "3.2_vae_perceptual" / "SKIPPED").write_text("VGG-16 weights (vgg16-397923af.pth) not found\n")
    make_run(
        root,
        "4.1_ddpm_linear_eps",
        "ddpm",
        {"schedule": "linear", "pred": "eps"},
        fids=[fid_row(4, 50.0)],
        train=[
            {"step": s, "loss": 0.1 if s < 150 else (float("nan") if s == 190 else 1.0)}
            for s in range(0, 200, 10)
        ],
    )
    gan = make_run(
        root,
        "5_gan",
        "dcgan",
        {"g_arch": "dcgan", "aug": "none"},
        fids=[fid_row(20, 7.5, kid=0.25)],
        train=healthy_gan,
    )
    grid_png(gan / "worst.png", 16, n=16)
    grid_png(gan / "interp.png", 16)
    (root / "phase5.json").write_text(
        json.dumps({"gan": {"run": "2.1_dcgan", "why": "lowest FID", "fid": 12.3456}})
    )
    (root / "data").mkdir()  # not a run: no leading digit
    return root


def test_report_tables_hold_exactly_the_runs_numbers(runs):
    report.main([str(runs)])
    text = (runs / "REPORT.md").read_text()
    assert "7 runs" in text
    line = next(l for l in text.splitlines() if l.startswith("| 2.1 |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells == [
        "2.1",
        "`2.1_dcgan`",
        "dcgan 16px (g_arch dcgan, aug none)",
        "12.35",
        "n/a",  # the phase's first step: nothing to compare with
        "FID(digits), 500 samples vs 299 held-out, epoch 20",
        "0.12M",
        "1.5 min",
        "1234",
        "none flagged",
    ]
    # Phase 5: FID, KID, IS, diversity, LPIPS, params, time, sample time per image.
    line = next(l for l in text.splitlines() if l.startswith("| `5_gan` |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells == [
        "`5_gan`",
        "`2.1_dcgan` (lowest FID)",
        "dcgan 16px (g_arch dcgan, aug none)",
        "7.50",
        "0.25",
        "n/a (needs Inception weights)",
        "5 / 6",
        "n/a (needs VGG-16 weights)",
        "0.12M",
        "1.5 min",
        "0.0005",
        "none flagged",
    ]
    assert "![5_gan](5_gan/worst.png)" in text and "![5_gan](5_gan/interp.png)" in text
    assert "(none for 5_gan)" in text  # no denoise strip: not a DDPM
    for phase in "2345":
        assert f"report/phase{phase}_fid.png" in text
    for png in ["phase2_fid", "phase2_samples", "phase3_samples", "phase4_fid", "phase5_progress"]:
        img = Image.open(runs / "report" / f"{png}.png")
        assert img.size[0] > 200 and img.size[1] > 100, png


def test_observed_failures_come_from_the_numbers(runs):
    report.main([str(runs)])
    rows = {
        l.split("|")[2].strip(): l.split("|")[-2].strip()
        for l in (runs / "REPORT.md").read_text().splitlines()
        if l.startswith("| ") and "`" in l.split("|")[2]
    }
    assert rows["`2.1_dcgan`"] == "none flagged"
    assert rows["`2.2_wgan_gp`"] == (
        "diverged: wasserstein 1 at best, 9 at the end; mode collapse: 3/10 digit "
        "classes; low diversity: 0.17 of real"
    )
    assert rows["`2.3_sagan`"] == "failed: exit 2 loss_g is nan at step 7: training diverged"
    assert rows["`3.1_vae_mse`"] == "posterior collapse: KL 0.01 nats"
    assert rows["`3.2_vae_perceptual`"] == "skipped: VGG-16 weights (vgg16-397923af.pth) not found"
    assert rows["`4.1_ddpm_linear_eps`"] == "NaN: loss at step 190; diverged: loss 0.1 at best, 1 at the end"


def test_vae_loss_rising_when_its_adversarial_term_starts_is_not_divergence(tmp_path):
    train = [{"step": s, "loss": 0.03 if s < 100 else 0.1, "mse": 0.01, "kl": 5.0} for s in range(0, 200, 10)]
    run = make_run(tmp_path, "3.3_vae_patchgan", "vae", {"adv": 0.1}, train=train)
    assert report.diagnose(report.load_run(run)) == []


def test_discriminator_wins_and_unfinished(tmp_path):
    run = make_run(tmp_path, "2.1_dcgan", "dcgan", {}, train=[{"step": s, "loss_d": 0.02} for s in range(20)])
    assert report.diagnose(report.load_run(run)) == ["discriminator wins: loss_D 0.020 at the end"]
    (run / "summary.json").unlink()
    assert report.diagnose(report.load_run(run)) == ["unfinished: no summary.json (re-run to resume it)"]


def test_pick_lowest_fid_and_keep_it(tmp_path):
    make_run(tmp_path, "4.1_a", "ddpm", {}, fids=[fid_row(5, 30.0)])
    make_run(tmp_path, "4.2_b", "ddpm", {}, fids=[fid_row(5, 20.0)])
    make_run(
        tmp_path, "4.3_c", "ddpm", {}, fids=[fid_row(5, 10.0)], summary=False
    )  # unfinished: not a candidate
    assert report.pick(tmp_path, "ddpm", ["4.1_a", "4.2_b", "4.3_c"]) == "4.2_b"
    make_run(tmp_path, "4.4_d", "ddpm", {}, fids=[fid_row(5, 1.0)])
    assert report.pick(tmp_path, "ddpm", ["4.1_a", "4.2_b", "4.4_d"]) == "4.2_b"  # kept in phase5.json
    make_run(tmp_path, "2.1_x", "dcgan", {})
    make_run(tmp_path, "2.2_y", "dcgan", {})
    assert report.pick(tmp_path, "gan", ["2.1_x", "2.2_y"]) == "2.1_x"  # no FIDs: the first finished
    picks = json.loads((tmp_path / "phase5.json").read_text())
    assert picks["gan"]["why"].startswith("first finished") and picks["ddpm"]["fid"] == 20.0
    res = subprocess.run(
        [sys.executable, str(ROOT / "report.py"), str(tmp_path), "--pick", "vae", "3.1_none"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 1 and res.stdout == ""


def test_phase1_names_the_lower_fid_on_the_common_reference(tmp_path):
    """Each run's own FID (against its own held-out images) does not decide: the faces.json scores do,
    Inception's where both runs of a question have it, else FID(mtcnn)."""
    scored = {
        "1A_raw_64": dict(faces=0.5, fid_mtcnn=3.0, fid_inception=90.0),
        "1A_raw_128": dict(faces=0.75, fid_mtcnn=2.0, fid_inception=95.0),
        "1B_aligned_64": dict(faces=0.25, fid_mtcnn=2.5),
        "1C_aligned_jitter": dict(faces=0.5, fid_mtcnn=1.0),
        "1D_aligned_mix": dict(faces=0.0, fid_mtcnn=2.75),
    }
    for name, faces in scored.items():
        run = make_run(
            tmp_path, name, "dcgan", {}, fids=[fid_row(10, 1.0 if name == "1D_aligned_mix" else 50.0)]
        )
        (run / "faces.json").write_text(json.dumps(faces))
    (tmp_path / "1C_aligned_jitter" / "summary.json").unlink()  # unfinished: no decision
    res = subprocess.run(
        [sys.executable, str(ROOT / "report.py"), str(tmp_path), "--phase1"], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    got = json.loads((tmp_path / "phase1.json").read_text())
    assert got["1A resolution"] == {
        "winner": "1A_raw_64",
        "by": "fid_inception",
        "fid_inception": {"1A_raw_64": 90.0, "1A_raw_128": 95.0},
        "faces": {"1A_raw_64": 0.5, "1A_raw_128": 0.75},
    }
    assert got["1B alignment"]["winner"] == "1B_aligned_64" and got["1B alignment"]["by"] == "fid_mtcnn"
    assert got["1C augmentation"]["winner"] is None
    assert got["1D data"]["winner"] == "1B_aligned_64"  # 2.5 < 2.75, whatever 1D's own FID of 1.0 says
    assert "phase 1 1B alignment: winner 1B_aligned_64 by FID(mtcnn), 1A_raw_64 3.00 vs" in res.stdout
    assert "phase 1 1C augmentation: winner none: not scored" in res.stdout
    report.main([str(tmp_path)])
    text = (tmp_path / "REPORT.md").read_text()
    assert (
        "- 1D data: winner 1B_aligned_64 by FID(mtcnn), 1B_aligned_64 2.50 vs 1D_aligned_mix 2.75; "
        "faces found 0.25 / 0.00" in text
    )


def test_missing_runs_folder_exit_2(tmp_path):
    res = subprocess.run(
        [sys.executable, str(ROOT / "report.py"), str(tmp_path / "nope")], capture_output=True, text=True
    )
    assert res.returncode == 2 and "no such folder" in res.stderr and "Traceback" not in res.stderr


def test_first16_crops_the_top_left_four_by_four(tmp_path):
    res = 16
    grid = np.full((8 * (res + 2) + 2, 8 * (res + 2) + 2, 3), 255, np.uint8)
    grid[2 : 2 + res, 2 : 2 + res] = 7  # image 0 (top left)
    grid[2 : 2 + res, 2 + 4 * (res + 2) : 2 + 4 * (res + 2) + res] = 99  # image 4: outside the crop
    Image.fromarray(grid).save(tmp_path / "g.png")
    crop = np.asarray(report.first16(tmp_path / "g.png"))
    assert crop.shape == (4 * (res + 2) + 2, 4 * (res + 2) + 2, 3)
    assert (crop == 7).any() and not (crop == 99).any()


def shapes_row(epoch, fid, **kw):  # the shapes classifier gives no class coverage
    row = fid_row(epoch, fid, features="shapes", **kw)
    return {k: v for k, v in row.items() if k not in ("classes_covered", "class_kl")}


def test_phase6_table_sweep_and_condition_grids(tmp_path):
    root = tmp_path / "runs"
    gan = make_run(
        root,
        "6.2_acgan",
        "wgan_gp",
        {"data": "shapes", "cond": True},
        fids=[shapes_row(3, 61.0, acc_test=0.71, acc_new_test=0.42)],
    )
    grid_png(gan / "cond_test.png", 32, n=32)
    sweep = [
        shapes_row(3, 50.0, acc_test=0.60, acc_new_test=0.40, guidance=2.0),
        shapes_row(3, 40.0, acc_test=0.30, acc_new_test=0.20, guidance=1.0),
        shapes_row(3, 45.0, acc_test=0.90, acc_new_test=0.70, guidance=4.0),
    ]
    make_run(
        root, "6.5_ddpm_cfg", "ddpm", {"data": "shapes", "cond": True, "guidance": [2.0, 1.0, 4.0]}, sweep
    )
    text = report.write_report(root).read_text()
    rows = {
        l.split("|")[2].strip(): [c.strip() for c in l.split("|")[1:-1]]
        for l in text.splitlines()
        if l.startswith("| 6.")
    }
    assert rows["`6.2_acgan`"][3:6] == ["0.71", "0.42", "61.00"]
    # The DDPM's row is its own guidance (the first of the sweep), not the last scale scored.
    assert rows["`6.5_ddpm_cfg`"][3:6] == ["0.60", "0.40", "50.00"]
    assert "| 4 | 0.90 | 0.70 | 45.00 |" in text and "FID(shapes)" in text
    assert (root / "report" / "phase6_sweep_6.5_ddpm_cfg.png").is_file()
    assert not (root / "report" / "phase6_sweep_6.2_acgan.png").exists()  # no sweep, no plot
    assert "![6.2_acgan](6.2_acgan/cond_test.png)" in text


def translation_run(root, name, disc, cycle, semantic=0.0, **row):
    run = make_run(
        root,
        name,
        "cyclegan",
        {"data": None, "disc": disc, "lambda_cycle": cycle, "lambda_semantic": semantic},
        domains=["digits", "mnist"],
    )
    evals = [{"kind": "eval", "step": 50, "epoch": 1, **row}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in evals))
    grid_png(run / "translate.png", 16, n=48)
    return run


def test_phase7_table_names_what_the_numbers_show(tmp_path):
    root = tmp_path / "runs"
    good = dict(acc_ab=0.93, acc_ba=0.91, fid_ab=12.0, fid_ba=20.5, cycle_ab=0.05, cycle_ba=0.06)
    good.update(sharpness_ab=0.95, sharpness_ba=1.1, classes_ab=10, classes_ba=10)
    translation_run(root, "7.1_cyclegan", "patch", 10, **good)
    bad = {**good, "acc_ab": 0.31, "classes_ba": 3, "sharpness_ab": 0.5, "cycle_ab": 0.8}
    translation_run(root, "7.2_no_cycle", "patch", 0, **bad)
    translation_run(root, "7.5_semantic", "patch", 10, semantic=1.0, **good)
    text = report.write_report(root).read_text()
    rows = {
        l.split("|")[2].strip(): [c.strip() for c in l.split("|")[1:-1]]
        for l in text.splitlines()
        if l.startswith("| 7.")
    }
    # An added loss term is named where it is on; the cycle weight always (0 is the ablation).
    assert rows["`7.1_cyclegan`"][2] == "cyclegan 16px (disc patch, lambda_cycle 10)"
    assert rows["`7.2_no_cycle`"][2] == "cyclegan 16px (disc patch, lambda_cycle 0)"
    assert rows["`7.5_semantic`"][2] == "cyclegan 16px (disc patch, lambda_cycle 10, lambda_semantic 1.0)"
    assert rows["`7.1_cyclegan`"][3:7] == ["0.93 / 0.91", "12.0 / 20.5", "0.050 / 0.060", "0.95 / 1.10"]
    assert rows["`7.1_cyclegan`"][-1] == "none flagged"
    failures = rows["`7.2_no_cycle`"][-1]
    assert "label flips A->B: 0.31 keep their label" in failures
    assert "collapse B->A: 3/10 classes" in failures and "blur A->B: sharpness 0.50" in failures
    assert "label flips B->A" not in failures
    assert "A = digits, B = mnist" in text and "![7.2_no_cycle](7.2_no_cycle/translate.png)" in text


@pytest.fixture
def seeded(tmp_path):
    """Phase 4 with three seeds a step (4.4 with one, whose FID carries its bootstrap std)."""
    root = tmp_path / "runs"
    steps = {"4.1_ddpm_linear_eps": (30.0, 32.0, 34.0), "4.2_ddpm_cosine_eps": (20.0, 21.0, 22.0)}
    steps["4.3_ddpm_cosine_v"] = (19.0, 24.0, 21.5)
    for name, fids in steps.items():
        for seed, value in enumerate(fids):
            train = [{"step": s, "loss": 0.1} for s in range(0, 200, 10)]
            curve = [fid_row(10, value + 10), fid_row(20, value)]
            make_run(root / name, f"seed_{seed}", "ddpm", {"seed": seed}, fids=curve, train=train)
    make_run(root, "4.4_ddpm_wide", "ddpm", {}, fids=[fid_row(10, 25.0), fid_row(20, 15.0, fid_std=0.5)])
    return root


def test_report_gives_seed_means_spreads_and_what_is_within_noise(seeded):
    report.main([str(seeded)])
    text = (seeded / "REPORT.md").read_text()
    rows = {
        l.split("|")[2].strip(): [c.strip() for c in l.strip("|").split("|")]
        for l in text.splitlines()
        if l.startswith("| 4.")
    }
    # FID: mean +- std over the 3 seeds; one seed: +- its bootstrap std, marked (b).
    assert rows["`4.1_ddpm_linear_eps`"][3:5] == ["32.00 ± 2.00", "n/a"]
    # 21 - 32 = -11 against 2 sqrt(2^2 + 1^2) = 4.47: holds.
    assert rows["`4.2_ddpm_cosine_eps`"][3:5] == ["21.00 ± 1.00", "-11.00 (holds)"]
    # 21.5 - 21 = +0.5 against 2 sqrt(1^2 + 2.5^2) = 5.39: within noise (though its seed 19 beats all of 4.2).
    assert rows["`4.3_ddpm_cosine_v`"][3:5] == ["21.50 ± 2.50", "+0.50 (≈ within noise)"]
    # 15 - 21.5 = -6.5 against 2 sqrt(2.5^2 + 0.5^2) = 5.10: holds.
    assert rows["`4.4_ddpm_wide`"][3:5] == ["15.00 ± 0.50 (b)", "-6.50 (holds)"]
    assert rows["`4.1_ddpm_linear_eps`"][7] == "1.5 ± 0.0 min"
    lines = [l for l in text.splitlines() if l.startswith("- `4.")]
    assert lines[1] == (
        "- `4.3_ddpm_cosine_v` vs `4.2_ddpm_cosine_eps`: FID 21.00 -> 21.50 (+0.50); within noise: "
        "not larger than the noise threshold 5.39."
    )
    assert "holds: larger than the noise threshold 4.47" in lines[0]
    assert "mean ± std over 1/3 seeds" in text and "2 sqrt(s_a^2 + s_b^2)" in text
    assert Image.open(seeded / "report" / "phase4_fid.png").size[0] > 200


def test_pick_takes_the_lowest_mean_over_seeds(seeded):
    # 4.3 has the single best seed (19.0) but 4.2 the lower mean (21.0 vs 21.5).
    assert report.pick(
        seeded, "ddpm", ["4.1_ddpm_linear_eps", "4.2_ddpm_cosine_eps", "4.3_ddpm_cosine_v"]
    ) == ("4.2_ddpm_cosine_eps")
    picked = json.loads((seeded / "phase5.json").read_text())["ddpm"]
    assert picked["why"] == "lowest mean FID over 3 seeds" and picked["fid"] == pytest.approx(21.0)


def test_loss_curves_of_every_gan_run(runs, tmp_path):
    """G and D (critic) losses plotted for each GAN run: DCGAN's D, a critic's loss, CycleGAN's two Ds."""
    cyc = make_run(
        tmp_path / "more",
        "7.1_cyclegan",
        "cyclegan",
        {},
        train=[{"step": s, "loss_g_total": 3.0, "loss_d_a": 0.25, "loss_d_b": 0.5} for s in (1, 2, 3)],
    )
    steps, g, d = report.gan_losses(report.load_run(cyc))
    assert steps.tolist() == [1, 2, 3] and g.tolist() == [3.0] * 3 and d.tolist() == [0.75] * 3
    critic = make_run(
        tmp_path / "more", "2.2_wgan", "wgan_gp", {}, train=[{"step": 1, "loss_c": -2, "loss_g": 4}]
    )
    assert [v.tolist() for v in report.gan_losses(report.load_run(critic))] == [[1], [4], [-2]]
    assert report.gan_losses(report.load_step(runs / "3.1_vae_mse")) is None  # not a GAN
    report.main([str(runs)])
    text = (runs / "REPORT.md").read_text()
    assert "report/phase2_losses.png" in text and "report/phase5_losses.png" in text
    assert "phase3_losses" not in text and "phase4_losses" not in text
    # One resolution and one pipeline for the finalists, said in the phase-5 section.
    assert "One resolution and one pipeline for every finalist: 16 px on `digits`." in text
    assert Image.open(runs / "report" / "phase2_losses.png").size[0] > 200


def test_claims_table_verdicts_by_the_noise_rule(tmp_path):
    """Phase 8 from a hand-made run tree: a claim holds, is contradicted, stays within noise (with the seeds
    that would resolve it), is judged by direction alone (one seed, no spread), or was not run."""
    root = tmp_path / "runs"
    fid = {  # run -> (FID, bootstrap std)
        "8.1_csp_lr_2e-4_2e-5": (10.0, 0.5),
        "8.1_csp_lr_1e-4_1e-4": (30.0, 0.5),  # worse beyond noise: "does not converge" holds
        "8.1_csp_lr_2e-4_2e-3": (11.0, 0.5),  # 1.0 apart, noise 2 x 0.71 = 1.41: within noise
        "8.2_csp_tanh_bn": (14.0, 0.5),  # Tanh + BN worse beyond noise: contradicted
        "8.0_dcgan": (20.0, 1.0),
        "8.3_beta1_0.7": (25.0, 1.0),
    }
    for name, (value, std) in fid.items():
        diversity = 7.996 if name == "8.1_csp_lr_2e-4_2e-3" else 8.0  # equal at 3 digits, not at 4
        make_run(
            root, name, "dcgan", {"lr_g": 2e-4}, fids=[fid_row(5, value, fid_std=std, diversity=diversity)]
        )
    for name, share in [("6.2_acgan", 0.5), ("6.5_ddpm_cfg", 0.75)]:
        make_run(
            root, name, "wgan_gp", {"cond": True}, fids=[fid_row(5, 1.0, acc_test=share, acc_new_test=0.25)]
        )
    report.main([str(root)])
    text = (root / "REPORT.md").read_text()
    rows = {
        l.split("|")[1].strip(): [c.strip() for c in l.split("|")[2:-1]]
        for l in text.splitlines()
        if l.startswith("| ")
    }
    assert rows["CSP: equal lrs 1e-4 do not converge"][2:] == ["fid 10 -> 30", "holds"]
    assert rows["CSP: Tanh + BatchNorm in CSP improves convergence"][3] == "contradicted"
    # d = 1, s_a = s_b = 0.5: n > 4 (0.25 + 0.25) / 1 = 2 seeds
    best = rows["CSP: G 2e-4 / D 2e-5 is best (beats G 2e-4 / D 2e-3)"][3]
    assert best == "within noise (~2 seeds, or 2x the FID samples, would resolve a difference of 1)"
    # the direction is read from 8 -> 7.996, so the table prints the digits that show it
    faces = rows["CSP: G 2e-4 / D 2e-3 repeats faces"]
    assert faces[2:] == ["diversity 8 -> 7.996", "holds (one seed, no spread: direction only)"]
    assert (
        rows["beta1 0.7 is worse than 0.5"][0] == "DCGAN on cats + CVAE"
        and rows["beta1 0.7 is worse than 0.5"][3] == "holds"
    )
    assert rows["weight decay 1e-6 is worse than none"][2:] == ["not run", "not run"]
    assert (
        rows["CSP: equal lrs 1e-4 do not converge"][1]
        == "`8.1_csp_lr_2e-4_2e-5` -> `8.1_csp_lr_1e-4_1e-4`: the same flags"
    )
    assert rows["iCLEVR lab, GAN: accuracy 0.972 / 0.845"][2] == "0.50 / 0.25"
    assert "0.972 / 0.845 (beside `6.2_acgan`)" in text  # in phase 6's section too
