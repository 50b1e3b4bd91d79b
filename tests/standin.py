"""A stand-in for the training scripts, for the tests of run_all.sh's recipe (which runs, in which order,
with which flags, what is skipped, resumed, picked and reported), not of the scripts themselves.

run_all.sh's PYTHON points here (through a small shell wrapper). A training script's command (also under
`-m torch.distributed.run ...`) is appended to $RUNS/standin.jsonl and answered in a few milliseconds with
the files a finished run leaves: args.json (the flags as given), metrics.jsonl, summary.json and the grids
the report shows. Anything else (data.py, align.py, report.py, `-c CODE`) runs for real."""

import json
import os
import sys
from pathlib import Path

from PIL import Image

TRAINING = ("dcgan.py", "wgan_gp.py", "sagan.py", "vae.py", "ddpm.py", "cyclegan.py")


def value(text):
    """'3' -> 3, '1e-4' -> 0.0001, '1,0,2' -> [1, 0, 2], else the text."""
    try:
        return json.loads(text)
    except ValueError:
        parts = text.split(",")
        return [value(p) for p in parts] if len(parts) > 1 else text


def parse(words):
    flags = {}
    for i, word in enumerate(words):
        if word.startswith("--"):
            given = i + 1 < len(words) and not words[i + 1].startswith("--")
            flags[word[2:].replace("-", "_")] = value(words[i + 1]) if given else True
    return flags


def stand_in(launcher, script, words):
    flags = parse(words)
    out = Path(flags["out"])
    if "generate" in flags:  # --generate N: N grey images in OUT/generated, nothing else touched
        (out / "generated").mkdir(exist_ok=True)
        for i in range(flags["generate"]):
            Image.new("RGB", (16, 16), (100, 100, 100)).save(out / "generated" / f"{i:06d}.png")
        return
    with open(Path(os.environ["RUNS"]) / "standin.jsonl", "a") as f:
        f.write(json.dumps(dict(launcher=launcher, script=script, argv=words)) + "\n")
    out.mkdir(parents=True, exist_ok=True)
    steps = flags.get("max_steps", 1)
    (out / "args.json").write_text(json.dumps(flags))
    rows = [dict(kind="train", step=s, epoch=0, loss=1.0 / s) for s in range(1, steps + 1)]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    grid = Image.new("RGB", (34, 34), (128, 64, 32))
    names = ["translate.png"] if script == "cyclegan.py" else ["samples.png"]
    names += ["denoise.png"] * (script == "ddpm.py") + ["cond_test.png", "cond_new_test.png"] * (
        "cond" in flags
    )
    for name in names:
        grid.save(out / name)
    if "cond" in flags:
        (out / "cond_new_test.txt").write_text("row 1, col 1: red circle\n")
    summary = dict(
        model=script[:-3], complete=True, steps=steps, params=1000, train_seconds=0.1, images_per_s=1.0
    )
    summary.update(stopped_by="steps", final={})
    if script == "cyclegan.py":
        summary.update(domains=["digits", "mnist"])
    (out / "summary.json").write_text(json.dumps(summary))


if __name__ == "__main__":
    words, launcher = sys.argv[1:], []
    if words[:2] == ["-m", "torch.distributed.run"]:
        script_at = next(i for i, w in enumerate(words) if w.endswith(".py"))
        launcher, words = words[:script_at], words[script_at:]
    if words and words[0] in TRAINING:
        stand_in(launcher, words[0], words[1:])
    else:
        os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
