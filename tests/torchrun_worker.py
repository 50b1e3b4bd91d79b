"""What tests/test_ddp.py starts under `torchrun --standalone --nproc_per_node 2`.

`torchrun_worker.py SCRIPT ARGS...` runs SCRIPT's main(ARGS) and, at every checkpoint, also keeps each
rank's own state in OUT/rank_N.pt (the run's ckpt.pt is rank 0's alone), so a test can compare ranks.
`torchrun_worker.py evaluate OUT.json` scores fixed images with the digits evaluator: rank 0 writes
the row, which a test compares with the row of one process.
"""

import argparse
import importlib
import json
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


if __name__ == "__main__":
    if sys.argv[1] == "evaluate":
        score_images(sys.argv[2])
    else:
        common.save_training_state = save_and_keep_rank
        importlib.import_module(sys.argv[1]).main(sys.argv[2:])
