"""What tests/test_ddp.py starts under `torchrun --standalone --nproc_per_node 2`: one launch, many jobs.

`torchrun_worker.py PLAN.json` runs the plan's jobs in order, in the same two processes (a launch costs
seconds; a job of a few steps, less). Each job is `{"name", "script", "argv", "cache"}`: SCRIPT's
main(ARGV) (or `evaluate`: fixed images scored by the digits evaluator, rank 0 writing the row to ARGV[0]),
with the cache folder CACHE where given (`torchrun_worker.py evaluate OUT.json`: the same
scoring in one process). Each rank writes what the job printed to NAME.rankN.log and
its exit code to NAME.rankN.exit beside the plan; at every checkpoint it also keeps its own state in
OUT/rank_N.pt (the run's ckpt.pt is rank 0's alone), so a test can compare ranks.
"""

import argparse
import contextlib
import importlib
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402
import data  # noqa: E402
import evaluate  # noqa: E402

save_training_state = common.save_training_state


def save_and_keep_rank(out, objects, step, epoch, train_seconds, args):
    save_training_state(out, objects, step, epoch, train_seconds, args)
    state = {name: obj.state_dict() for name, obj in objects.items()}
    torch.save(dict(state, rng=torch.get_rng_state(), step=step), Path(out) / f"rank_{common.rank()}.pt")


def score_images(path):
    """The digits evaluator on 101 fixed images (an odd count: the ranks' shares differ in size)."""
    common.setup_device(common.add_common_args(argparse.ArgumentParser()).parse_args([]))
    train, heldout = data.load_dataset("digits", 16).split()
    evaluator = evaluate.Evaluator("digits", heldout, "digits", 16, 300, "cpu")
    fake = torch.from_numpy(train.images[:101].copy()).permute(0, 3, 1, 2).float() / 127.5 - 1
    fake = fake + 0.3 * torch.randn(fake.shape, generator=torch.Generator().manual_seed(0))
    row = evaluator(fake.clamp(-1, 1))
    if common.rank() == 0:
        Path(path).write_text(json.dumps(dict(row, world_size=common.world_size())))


def run(job):
    if job["script"] == "evaluate":
        return score_images(job["argv"][0])
    importlib.import_module(job["script"]).main(job["argv"])


if __name__ == "__main__" and sys.argv[1] == "evaluate":  # one process, to compare with the launch's
    score_images(sys.argv[2])
elif __name__ == "__main__":
    plan = Path(sys.argv[1])
    common.save_training_state = save_and_keep_rank
    shared_cache, rank = common.CACHE_DIR, os.environ["RANK"]
    for job in json.loads(plan.read_text()):
        common.CACHE_DIR = Path(job.get("cache") or shared_cache)
        code = 0
        with open(plan.parent / f"{job['name']}.rank{rank}.log", "w") as log:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                try:
                    run(job)
                except SystemExit as e:
                    code = e.code
        (plan.parent / f"{job['name']}.rank{rank}.exit").write_text(str(code))
