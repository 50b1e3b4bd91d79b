"""report.py: turn the study's run folders into REPORT.md.

  python report.py runs                                  # runs/REPORT.md + runs/report/*.png
  python report.py runs --pick gan 2.1_dcgan 2.2_wgan_gp # phase 5: print (and keep) the best run
  python report.py runs --phase1                         # phase 1: the winners, into runs/phase1.json
  python report.py runs --carry                          # phase 1's pipeline for phases 2-5, 4 words

It reads run folders only (args.json, summary.json, metrics.jsonl, FAILED, SKIPPED and the
PNGs each script wrote) and imports no model code, so it also reports a study that is still
running or one whose runs failed. A folder is a run when its name starts with a digit; the
digit is its phase (5_gan is the phase-5 finalist of the GAN family). A step run with several
seeds (SEEDS=K in run_all.sh) holds one run a seed in STEP/seed_N/: its cells are the mean +- std
over them, and each comparison says whether the change is larger than that noise (NOISE_RULE;
with one seed, the noise is the bootstrap std of its FID over its own samples).

Each phase gets a table (step, model, FID at the last evaluation, its change against the step
before, params, train time, images/s, observed failure), a FID-curve plot (seeds as a band) and
a 16-sample grid per step. Phase 5 adds
KID, IS, diversity, sample time, progression grids, interpolations, the DDPM denoising strip
and each finalist's 16 worst samples (worst.png: farthest from any held-out image in feature
space). Phase 6 (conditional) adds the classifier's accuracy on both condition lists, the
condition grids and the DDPM guidance sweep (accuracy against FID, one point per scale S).
Phase 7 (translation) gives each direction's label preservation, FID in the target's feature
space, cycle L1 and sharpness, and the translation grids.
The "observed failure" column comes from the run's own numbers, never from a guess:
  failed / skipped / unfinished   the FAILED or SKIPPED file, or no summary.json
  NaN                             a non-finite value anywhere in metrics.jsonl
  discriminator wins              DCGAN's loss_D below 0.1 over the last tenth of training
  diverged                        DDPM loss or critic Wasserstein estimate: last tenth > 3x the best tenth
  mode collapse / low diversity   < 8 of 10 digit classes / mean pairwise feature distance < half the real one
  posterior collapse              VAE's KL under 0.5 nats over the last tenth
  label flips                     a translation keeps its source's label for under half the images
  collapse to few classes         the translations of one direction hit fewer than 8 of 10 classes
  blur                            translations under 0.7 of the target's real sharpness
"""

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # pyplot-free: no display or backend needed to write PNGs
from PIL import Image

PHASES = {"1": "Phase 1: the data pipeline (DCGAN on faces)", "2": "Phase 2: GAN evolution"}
PHASES.update({"3": "Phase 3: VAE evolution", "4": "Phase 4: DDPM evolution"})
PHASES["5"] = "Phase 5: the best of each family, trained longer under identical conditions"
PHASES["6"] = "Phase 6: conditional generation, scored by a classifier's accuracy"
PHASES["7"] = "Phase 7: unpaired translation (CycleGAN), with and without its cycle loss, and a semantic term"
STEP_FLAGS = dict(dcgan=("g_arch", "aug"), wgan_gp=("n_critic",), sagan=("loss", "attn_res"))
STEP_FLAGS.update(vae=("beta", "perceptual", "adv"), ddpm=("schedule", "pred", "base_ch"))
STEP_FLAGS.update(cyclegan=("disc", "lambda_cycle", "lambda_semantic"))
ADDED_TERMS = {"perceptual", "adv", "lambda_semantic"}  # loss terms a step adds: named only when on
# run_all.sh's four phase-1 questions, each (before, after)
PHASE1_PAIRS = {"1A resolution": ("1A_raw_64", "1A_raw_128"), "1B alignment": ("1A_raw_64", "1B_aligned_64")}
PHASE1_PAIRS["1C augmentation"] = ("1B_aligned_64", "1C_aligned_jitter")
PHASE1_PAIRS["1D data"] = ("1B_aligned_64", "1D_aligned_mix")
PHASES["8"] = "Phase 8: the source reports' own claims"
# Phase 8: each finding of the four source reports that this study can run, as (claim, source report,
# baseline run, changed run, measure, the direction the claim expects of the changed run). A claim that
# a setting "does not converge" is tested as "is worse than the setting that does".
CSP, CATS, COURSE = "CSP-up on CelebA-128", "DCGAN on cats + CVAE", "GAN/CycleGAN/DiffAugment course"
CSP_BEST = "8.1_csp_lr_2e-4_2e-5"
CLAIMS = [
    ("CSP: equal lrs 1e-4 do not converge", CSP, CSP_BEST, "8.1_csp_lr_1e-4_1e-4", "fid", "higher"),
    (
        "CSP: G 2e-4 / D 2e-5 is best (beats G 2e-4 / D 2e-3)",
        CSP,
        CSP_BEST,
        "8.1_csp_lr_2e-4_2e-3",
        "fid",
        "higher",
    ),
    ("CSP: G 2e-4 / D 2e-3 repeats faces", CSP, CSP_BEST, "8.1_csp_lr_2e-4_2e-3", "diversity", "lower"),
    ("CSP: both lrs 1e-5 do not converge", CSP, CSP_BEST, "8.1_csp_lr_1e-5_1e-5", "fid", "higher"),
    ("CSP: Tanh + BatchNorm in CSP improves convergence", CSP, CSP_BEST, "8.2_csp_tanh_bn", "fid", "lower"),
    ("beta1 0.7 is worse than 0.5", CATS, "8.0_dcgan", "8.3_beta1_0.7", "fid", "higher"),
    ("weight decay 1e-6 is worse than none", CATS, "8.0_dcgan", "8.4_weight_decay", "fid", "higher"),
    ("a steeper lr decay is worse", CATS, "8.5_lr_decay", "8.5_lr_decay_steep", "fid", "higher"),
    ("DiffAugment helps, basic augmentation", COURSE, "8.0_dcgan", "8.6_basic_diffaug", "fid", "lower"),
    ("DiffAugment helps, deluxe augmentation", COURSE, "8.6_deluxe", "8.6_deluxe_diffaug", "fid", "lower"),
    ("deluxe augmentation helps (no DiffAugment)", COURSE, "8.0_dcgan", "8.6_deluxe", "fid", "lower"),
    ("more iterations help (200 vs 6,400)", COURSE, "8.7_iters_short", "8.7_iters_long", "fid", "lower"),
    (
        "CycleGAN: the patch D is crisper than the DC D",
        COURSE,
        "7.3_dc_disc",
        "7.1_cyclegan",
        "sharpness_ab",
        "higher",
    ),
    (
        "CycleGAN: 10k iterations beat 1k",
        COURSE,
        "8.8_cyclegan_short",
        "8.8_cyclegan_long",
        "fid_ab",
        "lower",
    ),
]
# The conditional-generation lab's accuracies on iCLEVR (test / new_test), GPUs, 64 px: phase 6's reference.
LAB = {"6.2_acgan": ("GAN", 0.972, 0.845), "6.5_ddpm_cfg": ("DDPM", 0.931, 0.810)}
PROGRESS_AT = (10, 50, 100, 200)  # the full study's 200 epochs; a shorter run shows its share


# ----------------------------------------------------------------------------- reading runs
def read_json(path):
    return json.loads(path.read_text()) if path.is_file() else None


def read_rows(path):
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a run killed mid-write leaves half a line
            pass
    return rows


def load_run(folder):
    summary = read_json(folder / "summary.json")
    run = dict(name=folder.name, dir=folder, args=read_json(folder / "args.json") or {}, summary=summary)
    run.update(rows=read_rows(folder / "metrics.jsonl"), note="")
    if (folder / "SKIPPED").is_file():
        run["status"], run["note"] = "skipped", (folder / "SKIPPED").read_text().strip()
    elif (folder / "FAILED").is_file():
        run["status"], run["note"] = "failed", " ".join((folder / "FAILED").read_text().split("\n")).strip()
    else:
        run["status"] = "complete" if summary and summary.get("complete") else "unfinished"
    run["fids"] = [r for r in run["rows"] if r.get("kind") == "fid" and math.isfinite(r.get("fid", math.nan))]
    return run


def load_step(folder):
    """A study step: one run in `folder`, or (SEEDS > 1) one a seed in folder/seed_N/. -> the first
    seed's run (its args, summary and images stand for the step) with `seeds`: every seed's run."""
    seeds = sorted((p for p in folder.glob("seed_*") if p.name[5:].isdigit()), key=lambda p: int(p.name[5:]))
    if not seeds or (folder / "SKIPPED").is_file():
        run = load_run(folder)
        return dict(run, seeds=[run])
    runs = [load_run(p) for p in seeds]
    step = dict(runs[0], name=folder.name, seeds=runs)
    unfinished = [r for r in runs if r["status"] != "complete"]
    if unfinished:
        step["status"], step["note"] = (
            unfinished[0]["status"],
            f"{unfinished[0]['name']}: {unfinished[0]['note']}",
        )
    return step


def load_runs(root):
    return {f.name: load_step(f) for f in sorted(Path(root).iterdir()) if f.is_dir() and f.name[:1].isdigit()}


def last_fid(run):
    """The last evaluation at the run's own guidance (a DDPM sweep logs further scales after it)."""
    first = (run["args"].get("guidance") or [1.0])[0]
    rows = [r for r in run["fids"] if r.get("guidance", first) == first]
    return rows[-1] if rows else None


# ----------------------------------------------------------------------------- seeds and noise
NOISE_RULE = (
    "a change holds when it is larger than twice the combined spread, |b - a| > 2 sqrt(s_a^2 + s_b^2), "
    "s the std over seeds (one seed: the bootstrap std of its FID over its own samples)"
)


def over_seeds(step, value):
    """value(run) for each seed's run, where it is a finite number."""
    values = [value(run) for run in step["seeds"]]
    return [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def cell(step, value, spec=".2f"):
    """A table cell: value(run), or with several seeds their mean +- std."""
    values = over_seeds(step, value)
    if len(values) < 2:
        return fmt(values[0] if values else None, spec)
    return f"{np.mean(values):{spec}} ± {np.std(values, ddof=1):{spec}}"


def fid_noise(step):
    """(FID, its noise): with seeds, the mean and std of their last FIDs; with one, its FID and the
    bootstrap std over its samples (None where the run predates it). None without a FID."""
    rows = [row for row in map(last_fid, step["seeds"]) if row]
    if not rows:
        return None
    if len(rows) > 1:
        fids = [row["fid"] for row in rows]
        return float(np.mean(fids)), float(np.std(fids, ddof=1))
    return rows[0]["fid"], rows[0].get("fid_std")


def fid_cell(step):
    noise = fid_noise(step)
    if noise is None or noise[1] is None:
        return fmt(noise and noise[0])
    return f"{noise[0]:.2f} ± {noise[1]:.2f}" + (" (b)" if len(step["seeds"]) == 1 else "")


def change(a, b):
    """b's FID against a's -> (FID a, FID b, threshold, holds), or None without both FIDs and spreads."""
    na, nb = fid_noise(a), fid_noise(b)
    if na is None or nb is None or na[1] is None or nb[1] is None:
        return None
    threshold = 2 * math.hypot(na[1], nb[1])
    return na[0], nb[0], threshold, abs(nb[0] - na[0]) > threshold


def change_cell(a, b):
    found = change(a, b) if a else None
    if found is None:
        return "n/a"
    fa, fb, _, holds = found
    return f"{fb - fa:+.2f}" + (" (holds)" if holds else " (≈ within noise)")


def change_lines(pairs):
    """One line a comparison the study draws: the FID change and whether it is larger than the noise."""
    lines = []
    for a, b in pairs:
        found = change(a, b)
        if found is None:
            lines.append(f"- `{b['name']}` vs `{a['name']}`: no FID with a spread on both sides to compare.")
            continue
        fa, fb, threshold, holds = found
        verdict = "holds: larger than" if holds else "within noise: not larger than"
        lines.append(
            f"- `{b['name']}` vs `{a['name']}`: FID {fa:.2f} -> {fb:.2f} ({fb - fa:+.2f}); {verdict} "
            f"the noise threshold {threshold:.2f}."
        )
    return lines


def diagnoses(step):
    """The observed failures of the step's run, or of each seed's (named) when there are several."""
    if len(step["seeds"]) == 1:
        return diagnose(step)
    return [f"{run['name']}: {found}" for run in step["seeds"] for found in diagnose(run)]


# ----------------------------------------------------------------------------- diagnostics
def diagnose(run):
    """The run's observed failures, each with the number that shows it (empty: none seen)."""
    if run["status"] != "complete":
        return [f"{run['status']}: {run['note'] or 'no summary.json (re-run to resume it)'}"]
    found = []
    floats = [(k, r.get("step"), v) for r in run["rows"] for k, v in r.items() if isinstance(v, float)]
    bad = [(k, step) for k, step, v in floats if not math.isfinite(v)]
    if bad:
        found.append(f"NaN: {bad[0][0]} at step {bad[0][1]}")
    train = [r for r in run["rows"] if r.get("kind") == "train"]
    tenths = {}  # each logged loss as the means of ten chunks of training: the step noise averaged out
    for key in ("loss_d", "loss", "wasserstein", "kl"):
        values = [r[key] for r in train if key in r and math.isfinite(r[key])]
        if len(values) >= 10:
            tenths[key] = [float(np.mean(chunk)) for chunk in np.array_split(values, 10)]
    if "loss_d" in tenths and tenths["loss_d"][-1] < 0.1:
        found.append(f"discriminator wins: loss_D {tenths['loss_d'][-1]:.3f} at the end")
    vae = run["summary"].get("model") == "vae"
    # A DDPM's loss, or the critic's Wasserstein estimate; a VAE's loss is left out: it jumps
    # by design when its adversarial term starts (--adv-start), and so does its MSE.
    for key in ("loss", "wasserstein") if not vae else ():
        curve = tenths.get(key)
        if curve and min(curve) > 0 and curve[-1] > 3 * min(curve):
            found.append(f"diverged: {key} {min(curve):.3g} at best, {curve[-1]:.3g} at the end")
    if vae and "kl" in tenths and tenths["kl"][-1] < 0.5:
        found.append(f"posterior collapse: KL {tenths['kl'][-1]:.2f} nats")
    row = last_fid(run)
    if row and row.get("classes_covered", 10) < 8:
        found.append(f"mode collapse: {row['classes_covered']}/10 digit classes")
    if row and row.get("diversity_real") and row["diversity"] < 0.5 * row["diversity_real"]:
        found.append(f"low diversity: {row['diversity'] / row['diversity_real']:.2f} of real")
    return found


# ----------------------------------------------------------------------------- formatting
def fmt(x, spec=".2f"):
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def millions(count):
    return "n/a" if count is None else f"{count / 1e6:.2f}M"


def describe(run):
    """The run's model in a few words: its family, size and the flags its study step changes."""
    if not run["summary"]:
        return "n/a (no summary.json)"
    a, model = run["args"], run["summary"]["model"]
    shown = [k for k in STEP_FLAGS.get(model, ()) if k in a and not (k in ADDED_TERMS and not a[k])]
    details = ", ".join(f"{k} {a[k]}" for k in shown)
    return f"{model} {a.get('res', '?')}px" + (f" ({details})" if details else "")


def fid_name(row):
    return "FID(Inception pool3)" if row["features"] == "inception" else f"FID({row['features']})"


def evaluated(row):
    if row is None:
        return "no FID (feature space off, or no Inception weights)"
    return f"{fid_name(row)}, {row['n_fake']} samples vs {row['n_real']} held-out, epoch {row['epoch']:.0f}"


def seeds_said(runs):
    """How the FID cells read: over K seeds, or one seed's bootstrap (b)."""
    counts = sorted({len(run["seeds"]) for run in runs})
    if counts == [1]:
        return "FID ± its bootstrap std over the run's own samples (b; one seed: seed noise not measured)"
    return (
        f"mean ± std over {'/'.join(map(str, counts))} seeds (a cell of one seed: ± its bootstrap std, (b))"
    )


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]


def last_value(key):
    return lambda run: (last_fid(run) or {}).get(key)


def minutes_cell(run):
    text = cell(run, summary_value("train_seconds", 60), ".1f")
    return text if text == "n/a" else text + " min"


def summary_value(key, scale=1.0):
    def value(run):
        found = (run["summary"] or {}).get(key)
        return None if found is None else found / scale

    return value


def phase_table(runs, pairs):
    """The phase's steps; `pairs`: (previous, step) the study compares, for the change column."""
    previous = {b["name"]: a for a, b in pairs}
    rows = []
    for run in runs:
        s, row = run["summary"] or {}, last_fid(run)
        cells = [run["name"].split("_")[0], f"`{run['name']}`", describe(run), fid_cell(run)]
        cells += [change_cell(previous.get(run["name"]), run), evaluated(row), millions(s.get("params"))]
        cells += [minutes_cell(run)]
        rows.append(
            cells
            + [cell(run, summary_value("images_per_s"), ".0f"), "; ".join(diagnoses(run)) or "none flagged"]
        )
    header = "step|run|model|FID|change vs previous|evaluated|params|train time|images/s|observed failure"
    return table(header.split("|"), rows)


# ----------------------------------------------------------------------------- figures
def first16(png):
    """The top-left 4x4 images of an 8-wide grid written by save_grid (2 px padding)."""
    img = Image.open(png).convert("RGB")
    side = 4 * ((img.width - 2) // 8) + 2  # each tile is res + 2 px wide
    return img.crop((0, 0, side, side))


def fid_curves(runs, path):
    """FID against epoch, one line per step (the mean over its seeds, their range as a band); None when
    no run has a FID."""
    runs = [r for r in runs if any(seed["fids"] for seed in r["seeds"])]
    if not runs:
        return None
    fig = Figure(figsize=(6, 3.6))
    ax = fig.subplots()
    for run in runs:
        curves = [seed["fids"] for seed in run["seeds"] if seed["fids"]]
        n = min(map(len, curves))  # the evaluations every seed has made
        epochs, fids = (
            [r["epoch"] for r in curves[0][:n]],
            np.array([[r["fid"] for r in c[:n]] for c in curves]),
        )
        label = run["name"] + (f" ({len(curves)} seeds: mean, min-max band)" if len(curves) > 1 else "")
        line = ax.plot(epochs, fids.mean(0), "o-", label=label, ms=3)[0]
        if len(curves) > 1:
            ax.fill_between(epochs, fids.min(0), fids.max(0), color=line.get_color(), alpha=0.2)
    ax.set(
        xlabel="epoch",
        ylabel=fid_name(next(s["fids"][-1] for r in runs for s in r["seeds"] if s["fids"])),
        yscale="log",
    )
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def gan_losses(run):
    """A GAN run's logged (steps, G loss, D or critic loss), the first seed's; None for other families.
    CycleGAN: G's total and the two discriminators' sum."""
    rows = [r for r in run["rows"] if r.get("kind") == "train"]
    g_key = next((k for k in ("loss_g", "loss_g_total") if rows and k in rows[0]), None)
    d_keys = next(
        (ks for ks in (["loss_d"], ["loss_c"], ["loss_d_a", "loss_d_b"]) if rows and ks[0] in rows[0]), None
    )
    if not g_key or not d_keys:
        return None
    steps = np.array([r["step"] for r in rows])
    return steps, np.array([r[g_key] for r in rows]), np.array([sum(r[k] for k in d_keys) for r in rows])


def loss_curves(runs, path):
    """G and D (critic) losses against the step, one panel a GAN run, smoothed over a twentieth of its
    log (the raw values as a faint line); None when no run is a GAN."""
    curves = [(run["name"], losses) for run in runs if (losses := gan_losses(run))]
    if not curves:
        return None
    fig = Figure(figsize=(3.2 * min(len(curves), 4), 2.6 * math.ceil(len(curves) / 4)))
    axes = fig.subplots(math.ceil(len(curves) / 4), min(len(curves), 4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (name, (steps, g, d)) in zip(axes.flat, curves):
        ax.axis("on")
        k = max(1, len(steps) // 20)
        for values, label in ((g, "G"), (d, "D / critic")):
            line = ax.plot(steps, values, alpha=0.25, lw=0.6)[0]
            smooth = np.convolve(values, np.ones(k) / k, mode="valid")
            ax.plot(steps[k - 1 :], smooth, color=line.get_color(), label=label)
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("step", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def loss_figure(runs, path, lines):
    figure = loss_curves(runs, path)
    if figure:
        lines += ["G and D (critic) losses of each GAN run (the first seed's):", ""]
        lines += [f"![losses](report/{figure.name})", ""]


def image_grid(panels, path, ncols):
    """panels: [(title, PIL image)] -> one figure, ncols wide."""
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(2.1 * ncols, 2.3 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (title, img) in zip(axes.flat, panels):
        ax.imshow(img)
        ax.set_title(title, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def progression(run):
    """(title, 4x4 crop) of the epoch grids nearest the full study's epochs 10/50/100/200,
    scaled to this run's length."""
    frames = {int(p.stem.split("_")[1]): p for p in (run["dir"] / "samples").glob("epoch_*.png")}
    if not frames:
        return []
    last = max(frames)
    chosen = sorted({min(frames, key=lambda e: abs(e - last * at / PROGRESS_AT[-1])) for at in PROGRESS_AT})
    return [(f"{run['name']} epoch {e}", first16(frames[e])) for e in chosen]


# ----------------------------------------------------------------------------- the report
def samples_figure(runs, path, lines):
    panels = [
        (r["name"], first16(r["dir"] / "samples.png")) for r in runs if (r["dir"] / "samples.png").is_file()
    ]
    if panels:
        lines += ["", "16 samples per run (EMA weights where EMA is on, fixed noise):", ""]
        lines.append(f"![samples](report/{image_grid(panels, path, len(panels)).name})")
    lines.append("")


def phase_section(phase, runs, figdir, lines):
    lines += [f"## {PHASES[phase]}", ""]
    if phase == "1" and (figdir.parent / "phase1.json").is_file():
        for question, result in read_json(figdir.parent / "phase1.json").items():
            lines.append(f"- {decision_said(question, result)}")
        lines.append("")
    by_name = {run["name"]: run for run in runs}
    if phase == "1":  # the pipeline's four questions
        pairs = [(by_name[a], by_name[b]) for a, b in PHASE1_PAIRS.values() if a in by_name and b in by_name]
    else:  # each step against the last one before it with a FID (a skipped 3.2: 3.3 against 3.1)
        pairs, before = [], None
        for run in runs:
            pairs += [(before, run)] if before else []
            before = run if fid_noise(run) else before
    lines += phase_table(runs, pairs) + ["", f"FID: {seeds_said(runs)}. The changes: {NOISE_RULE}.", ""]
    lines += change_lines(pairs) + [""]
    curve = fid_curves(runs, figdir / f"phase{phase}_fid.png")
    lines.append(
        f"![FID curves](report/{curve.name})" if curve else "No FID curve: no run of this phase has a FID."
    )
    lines.append("")
    loss_figure(runs, figdir / f"phase{phase}_losses.png", lines)
    samples_figure(runs, figdir / f"phase{phase}_samples.png", lines)


def phase5_section(runs, figdir, lines):
    picks = read_json(figdir.parent / "phase5.json") or {}
    order = ["5_gan", "5_vae", "5_ddpm"]  # the study's order of families, unknown names last
    runs = sorted(runs, key=lambda r: order.index(r["name"]) if r["name"] in order else len(order))
    rows = []
    for run in runs:
        s, row = run["summary"] or {}, last_fid(run) or {}
        pick = picks.get(run["name"].split("_", 1)[1], {})
        cells = [f"`{run['name']}`", f"`{pick.get('run', '?')}` ({pick.get('why', '?')})", describe(run)]
        cells += [fid_cell(run), cell(run, last_value("kid"), ".4g")]
        cells.append(cell(run, last_value("is")) if "is" in row else "n/a (needs Inception weights)")
        cells.append(f"{cell(run, last_value('diversity'), '.3g')} / {fmt(row.get('diversity_real'), '.3g')}")
        cells.append(
            cell(run, last_value("lpips"), ".3f") if "lpips" in row else "n/a (needs VGG-16 weights)"
        )
        cells += [millions(s.get("params")), minutes_cell(run)]
        rows.append(
            cells
            + [
                cell(run, summary_value("sample_seconds_per_image"), ".4f"),
                "; ".join(diagnoses(run)) or "none flagged",
            ]
        )
    header = (
        "finalist|retrained from|model|FID|KID|IS|diversity (fake / real)|LPIPS diversity|params|train time"
    )
    lines += (
        [f"## {PHASES['5']}", ""] + table((header + "|sample s/img|observed failure").split("|"), rows) + [""]
    )
    lines += [f"- `{run['name']}`: {evaluated(last_fid(run))}" for run in runs] + [""]
    conditions = sorted({(str(r["args"].get("res")), str(r["args"].get("data"))) for r in runs})
    said = "; ".join(f"{res} px on `{data}`" for res, data in conditions)
    one = "One resolution and one pipeline" if len(conditions) == 1 else "**Not** one resolution and pipeline"
    lines += [f"{one} for every finalist: {said}.", ""]
    lines += [f"FID: {seeds_said(runs)}. Between the families: {NOISE_RULE}.", ""]
    lines += change_lines([(a, b) for i, a in enumerate(runs) for b in runs[i + 1 :]]) + [""]
    curve = fid_curves(runs, figdir / "phase5_fid.png")
    if curve:
        lines += [f"![FID curves](report/{curve.name})", ""]
    loss_figure(runs, figdir / "phase5_losses.png", lines)
    samples_figure(runs, figdir / "phase5_samples.png", lines)
    panels = [p for run in runs for p in progression(run)]
    if panels:
        lines.append("Progression (epoch grids at the study's epochs 10, 50, 100, 200, or this run's share):")
        lines += [
            "",
            f"![progression](report/{image_grid(panels, figdir / 'phase5_progress.png', 4).name})",
            "",
        ]
    worst = "16 worst samples (farthest from any held-out image in feature space)"
    slerp, denoise = "Latent interpolations (slerp)", "DDPM denoising (x_T to x_0)"
    for title, file in [(slerp, "interp.png"), (denoise, "denoise.png"), (worst, "worst.png")]:
        shown = [f"![{run['name']}]({run['name']}/{file})" for run in runs if (run["dir"] / file).is_file()]
        missing = [run["name"] for run in runs if not (run["dir"] / file).is_file()]
        none_for = f" (none for {', '.join(missing)})" if missing else ""
        lines += [f"**{title}**: " + " ".join(shown) + none_for, ""]


def sweep_figure(run, path):
    """Accuracy on `test` against FID, one point per guidance scale of the run's final sweep."""
    rows = [r for r in run["fids"] if r["step"] == run["fids"][-1]["step"] and "guidance" in r]
    rows = [r for r in rows if r.get("acc_test") is not None]
    if len(rows) < 2:
        return None
    fig = Figure(figsize=(4.5, 3.4))
    ax = fig.subplots()
    ax.plot([r["fid"] for r in rows], [r["acc_test"] for r in rows], "o")
    for r in rows:
        ax.annotate(f"S={r['guidance']:g}", (r["fid"], r["acc_test"]), fontsize=8)
    ax.set(xlabel=fid_name(rows[0]), ylabel="accuracy (test)", title=run["name"])
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path, rows


def phase6_section(runs, figdir, lines):
    rows = []
    for run in runs:
        s = run["summary"] or {}
        accuracy = [cell(run, last_value("acc_test")), cell(run, last_value("acc_new_test"))]
        cells = [run["name"].split("_")[0], f"`{run['name']}`", describe(run), *accuracy, fid_cell(run)]
        cells += [millions(s.get("params")), minutes_cell(run)]
        rows.append(cells + ["; ".join(diagnoses(run)) or "none flagged"])
    header = "step|run|model|accuracy test|accuracy new_test|FID|params|train time|observed failure"
    lines += [f"## {PHASES['6']}", "", *table(header.split("|"), rows), ""]
    lines += [f"- `{run['name']}`: {evaluated(last_fid(run))}" for run in runs] + [""]
    lines += ["Accuracy: the classifier's top-k labels against each image's k asked labels (iCLEVR's rule),"]
    lines += [
        "4 samples for each of the 32 conditions of a list; `new_test` holds combinations never trained on.",
        "",
    ]
    lab = "; ".join(f"{family} {test} / {new} (beside `{name}`)" for name, (family, test, new) in LAB.items())
    lines += [
        f"The iCLEVR lab's own accuracies (test / new_test), the reference they are: {lab}, on GPUs over"
        " ~200 (GAN) and ~20 (DDPM) epochs of iCLEVR's 3-D renders at 64 px, judged by the lab's ResNet-18;"
        " here, the built-in 2-D shapes, this preset's minutes, and the shapes classifier.",
        "",
    ]
    for run in runs:
        sweep = sweep_figure(run, figdir / f"phase6_sweep_{run['name']}.png")
        if sweep:
            cells = [
                [f"{r['guidance']:g}", fmt(r["acc_test"]), fmt(r.get("acc_new_test")), fmt(r["fid"])]
                for r in sweep[1]
            ]
            lines += [f"Guidance sweep of `{run['name']}` (S = 1 plain conditional, 0 unconditional):", ""]
            lines += table(["S", "accuracy test", "accuracy new_test", "FID"], cells)
            lines += ["", f"![sweep](report/{sweep[0].name})", ""]
    for file in ("cond_test.png", "cond_new_test.png"):
        shown = [f"![{run['name']}]({run['name']}/{file})" for run in runs if (run["dir"] / file).is_file()]
        if shown:
            lines += [f"**{file}** (one cell a condition, labels in {file[:-4]}.txt): " + " ".join(shown), ""]


def translation_failures(row):
    """What phase 7's numbers show, each direction (A->B, B->A) on its own."""
    found = []
    for way, arrow in (("ab", "A->B"), ("ba", "B->A")):
        if row.get(f"acc_{way}") is not None and row[f"acc_{way}"] < 0.5:
            found.append(f"label flips {arrow}: {row[f'acc_{way}']:.2f} keep their label")
        if row.get(f"classes_{way}", 10) < 8:
            found.append(f"collapse {arrow}: {row[f'classes_{way}']}/10 classes")
        if row.get(f"sharpness_{way}", 1) < 0.7:
            found.append(f"blur {arrow}: sharpness {row[f'sharpness_{way}']:.2f} of real")
    return found


def last_eval(run):
    evals = [r for r in run["rows"] if r.get("kind") == "eval"]
    return evals[-1] if evals else {}


def both_ways(run, key, spec=".2f"):
    ways = [cell(run, lambda seed, k=f"{key}_{way}": last_eval(seed).get(k), spec) for way in ("ab", "ba")]
    return " / ".join(ways)


def phase7_section(runs, figdir, lines):
    rows = []
    for run in runs:
        s = run["summary"] or {}
        cells = [run["name"].split("_")[0], f"`{run['name']}`", describe(run), both_ways(run, "acc")]
        cells += [both_ways(run, "fid", ".1f"), both_ways(run, "cycle", ".3f"), both_ways(run, "sharpness")]
        cells += [millions(s.get("params")), minutes_cell(run)]
        found = diagnoses(run) + [f for seed in run["seeds"] for f in translation_failures(last_eval(seed))]
        rows.append(cells + ["; ".join(dict.fromkeys(found)) or "none flagged"])
    header = "step|run|model|label kept A->B / B->A|FID A->B / B->A|cycle L1|sharpness|params|train time"
    lines += [f"## {PHASES['7']}", "", *table((header + "|observed failure").split("|"), rows), ""]
    loss_figure(runs, figdir / "phase7_losses.png", lines)
    domains = next((r["summary"]["domains"] for r in runs if r["summary"]), ["A", "B"])
    lines += [
        f"A = {domains[0]}, B = {domains[1]}, on held-out images. Label kept: the target domain's",
        "classifier on the translations against their source labels. FID in the target's feature space",
        "(without Inception weights, its classifier's: FID(mnist) for digits -> MNIST). Cycle L1: the",
        "mean of |G_BA(G_AB(x)) - x| in [-1, 1] units. Sharpness: neighbouring-pixel differences of",
        "the translations over the target's real images (under 1: blurrier than real).",
        "",
    ]
    grids = [run for run in runs if (run["dir"] / "translate.png").is_file()]
    if grids:
        shown = " ".join(f"![{run['name']}]({run['name']}/translate.png)" for run in grids)
        lines += [f"**translate.png** (rows: x_A, G_AB(x_A), G_BA(G_AB(x_A)), then from B): {shown}", ""]


def measure(step, key):
    """(mean, std) of a run's last `key` over its seeds (std None with one seed; FID: its bootstrap std),
    from its evaluations (a CycleGAN's too); None where it has none."""
    if key == "fid":
        return fid_noise(step)
    values = over_seeds(step, lambda run: (last_fid(run) or last_eval(run) or {}).get(key))
    if not values:
        return None
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else None


def claim_verdict(a, b, expect):
    """The noise rule on a claim: the changed run's measure b against the baseline's a, (mean, std) each.
    Within noise, how many seeds (or times the FID samples, for a bootstrap spread) would resolve a
    difference of this size at the measured spread: n > 4 (s_a^2 + s_b^2) / d^2."""
    (ma, sa), (mb, sb) = a, b
    d = mb - ma
    direction = "holds" if (d < 0) == (expect == "lower") and d != 0 else "contradicted"
    if sa is None or sb is None:
        return f"{direction} (one seed, no spread: direction only)"
    if abs(d) > 2 * math.hypot(sa, sb):
        return direction
    n = math.ceil(4 * (sa**2 + sb**2) / d**2) if d else math.inf
    return f"within noise (~{n} seeds, or {n}x the FID samples, would resolve a difference of {abs(d):.3g})"


def what_ran(a, b):
    """The flags in which the changed run differs from the baseline, from their args.json."""
    skip = {"out", "seed", "resume"}
    keys = sorted(k for k in set(a["args"]) | set(b["args"]) if k not in skip)
    diff = [
        f"{k} {a['args'].get(k)} -> {b['args'].get(k)}" for k in keys if a["args"].get(k) != b["args"].get(k)
    ]
    return f"`{a['name']}` -> `{b['name']}`: " + ("; ".join(diff) or "the same flags")


def phase8_section(runs, all_runs, figdir, lines):
    rows = []
    for claim, source, base, changed, key, expect in CLAIMS:
        a, b = all_runs.get(base), all_runs.get(changed)
        if not a or not b:
            rows.append([claim, source, f"`{base}` -> `{changed}`", "not run", "not run"])
            continue
        ma, mb = measure(a, key), measure(b, key)
        if ma is None or mb is None:
            rows.append([claim, source, what_ran(a, b), f"no {key}", "not measured"])
            continue
        # enough digits that the printed values differ where the verdict's direction was read from them
        spec = next((s for s in (".3g", ".4g", ".5g") if fmt(ma[0], s) != fmt(mb[0], s)), ".6g")
        said = f"{key} {fmt(ma[0], spec)} -> {fmt(mb[0], spec)}"
        if key == "fid" and (ssim := [measure(r, "ssim_nearest") for r in (a, b)]) and None not in ssim:
            said += f"; SSIM to the nearest real {ssim[0][0]:.3f} -> {ssim[1][0]:.3f}"
        rows.append([claim, source, what_ran(a, b), said, claim_verdict(ma, mb, expect)])
    for name, (family, test, new_test) in LAB.items():
        ours = all_runs.get(name)
        here = (
            f"{cell(ours, last_value('acc_test'))} / {cell(ours, last_value('acc_new_test'))}"
            if ours
            else "not run"
        )
        rows.append(
            [
                f"iCLEVR lab, {family}: accuracy {test} / {new_test}",
                "iCLEVR conditional GAN + DDPM lab",
                f"`{name}` on the built-in shapes",
                here,
                "a reference, not a test: other data (2-D shapes, not iCLEVR renders) and compute",
            ]
        )
    lines += [f"## {PHASES['8']}", ""]
    lines += table("claim|source report|what we ran|measured|verdict".split("|"), rows) + [""]
    lines += [f"Verdicts: the changed run against the baseline; {NOISE_RULE}. {seeds_said(runs)}.", ""]
    loss_figure(runs, figdir / "phase8_losses.png", lines)


def write_report(root):
    """RUNS/REPORT.md, with figures in RUNS/report/: its links are relative to RUNS."""
    root = Path(root)
    runs = load_runs(root)
    figdir = root / "report"
    figdir.mkdir(exist_ok=True)
    specs = sorted({str(r["args"].get("data")) for r in runs.values() if r["args"]})
    intro = (
        f"{len(runs)} runs in `{root}`; data: {', '.join(specs) or 'none'}. FID(digits) uses the built-in "
    )
    intro += (
        "digit classifier's features (FID(shapes), FID(mnist): those classifiers'), never comparable with "
    )
    intro += "Inception FID; every FID below names "
    lines = ["# genstudy report", "", intro + "its feature space and sample counts.", ""]
    for phase in PHASES:
        group = [r for name, r in runs.items() if name[0] == phase]
        if group and phase == "5":
            phase5_section(group, figdir, lines)
        elif group and phase == "6":
            phase6_section(group, figdir, lines)
        elif group and phase == "7":
            phase7_section(group, figdir, lines)
        elif group and phase == "8":
            phase8_section(group, runs, figdir, lines)
        elif group:
            phase_section(phase, group, figdir, lines)
    out = root / "REPORT.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out} ({len(runs)} runs)")
    return out


def faces_score(step):
    """A phase-1 step's scores on the common reference (each seed's faces.json, from evaluate.py --faces),
    averaged over its seeds: {measure: mean}; None where a seed was not scored."""
    rows = [read_json(run["dir"] / "faces.json") for run in step["seeds"]]
    if not rows or None in rows:
        return None
    return {
        k: float(np.mean([r[k] for r in rows]))
        for k in rows[0]
        if all(isinstance(r.get(k), float) for r in rows)
    }


def decision_said(question, result):
    """One phase-1 question's decision in words: the winner, the two FIDs it was read from, the faces."""
    if not result.get("winner"):
        return f"{question}: winner none: {result['why']}"
    by = result["by"]
    (a, fid_a), (b, fid_b) = result[by].items()
    space = "Inception FID" if by == "fid_inception" else "FID(mtcnn)"
    faces = result["faces"]
    return (
        f"{question}: winner {result['winner']} by {space}, {a} {fid_a:.2f} vs {b} {fid_b:.2f}; "
        f"faces found {faces[a]:.2f} / {faces[b]:.2f}"
    )


def phase1_winners(root):
    """Phase 1's decision: for each question the run with the lower FID against the common reference
    (Inception's where both runs have it, else FID(mtcnn); the mean over seeds) -> ROOT/phase1.json, each
    line printed; no winner where a run was not scored."""
    result = {}
    for question, (a, b) in PHASE1_PAIRS.items():
        steps = [load_step(Path(root) / n) if (Path(root) / n).is_dir() else None for n in (a, b)]
        scores = [faces_score(s) if s and s["status"] == "complete" else None for s in steps]
        if None in scores:
            result[question] = {"winner": None, "why": "not scored (a run failed or has no faces.json)"}
        else:
            by = "fid_inception" if all("fid_inception" in s for s in scores) else "fid_mtcnn"
            winner = a if scores[0][by] <= scores[1][by] else b
            result[question] = {"winner": winner, "by": by, by: {a: scores[0][by], b: scores[1][by]}}
            result[question]["faces"] = {a: scores[0]["faces"], b: scores[1]["faces"]}
        print(f"phase 1 {decision_said(question, result[question])}")
    (Path(root) / "phase1.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def phase1_pipeline(root):
    """Phase 1's decision as the words run_all.sh carries forward: resolution, aligned 0|1, mixed 0|1,
    augmentation, and where they come from; a question without a winner (or no phase1.json) keeps the
    default: 64, raw, unmixed, flip."""
    decided = read_json(Path(root) / "phase1.json") or {}
    winners = {q: r.get("winner") for q, r in decided.items()}
    res = 128 if winners.get("1A resolution") == "1A_raw_128" else 64
    aligned = int(winners.get("1B alignment") == "1B_aligned_64")
    mixed = int(winners.get("1D data") == "1D_aligned_mix")
    aug = "jitter" if winners.get("1C augmentation") == "1C_aligned_jitter" else "flip"
    source = "phase1.json" if any(winners.values()) else "no phase-1 winner: the defaults"
    print(res, aligned, mixed, aug, source)
    return res, aligned, mixed, aug


def pick(root, family, candidates):
    """The best finished candidate (lowest last FID; without FIDs the first finished one),
    chosen once and kept in phase5.json so that a re-run retrains the same model."""
    path = Path(root) / "phase5.json"
    picks = read_json(path) or {}
    if family not in picks:
        runs = [load_step(Path(root) / n) for n in candidates if (Path(root) / n).is_dir()]
        done = [r for r in runs if r["status"] == "complete"]
        scored = [r for r in done if fid_noise(r)]
        if scored:  # with seeds, the lowest mean
            best = min(scored, key=lambda r: fid_noise(r)[0])
            why = (
                "lowest FID"
                if len(best["seeds"]) == 1
                else f"lowest mean FID over {len(best['seeds'])} seeds"
            )
            picks[family] = {"run": best["name"], "why": why, "fid": fid_noise(best)[0]}
        elif done:
            picks[family] = {"run": done[0]["name"], "why": "first finished run: no FID to compare"}
        else:
            return None
        path.write_text(json.dumps(picks, indent=2) + "\n")
    return picks[family]["run"]


def main(argv=None):
    p = argparse.ArgumentParser(description="Write REPORT.md from a study's run folders.")
    p.add_argument("runs", nargs="?", default="runs", help="the folder run_all.sh wrote (default runs)")
    p.add_argument("--pick", nargs="+", metavar=("FAMILY", "RUN"), help="print the best of these runs")
    p.add_argument("--phase1", action="store_true", help="decide phase 1 (RUNS/phase1.json) and stop")
    p.add_argument("--carry", action="store_true", help="print phase 1's pipeline: res aligned mixed aug")
    args = p.parse_args(argv)
    if args.carry:  # before any run exists too: the defaults
        return phase1_pipeline(args.runs)
    if not Path(args.runs).is_dir():
        print(f"report.py: no such folder: {args.runs}", file=sys.stderr)
        sys.exit(2)
    if args.phase1:
        return phase1_winners(args.runs)
    if args.pick:
        best = pick(args.runs, args.pick[0], args.pick[1:])
        if best is None:
            sys.exit(1)
        print(best)
        return best
    return write_report(args.runs)


if __name__ == "__main__":
    main()
