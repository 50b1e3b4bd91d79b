"""The iCLEVR lab's layout and evaluator: a folder of objects.json, train.json, test.json, new_test.json and
iclevr/*.png (RGBA 320x240) is read with its multi-hot labels and condition lists, the whole frame
squeezed to the square; --evaluator loads the lab's ResNet-18 checkpoint (random weights here, saved
in the lab's format) and judges every --cond run and --generate; --generate with --labels test.json
writes the lab's submission."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

import classifiers
import data
import dcgan

OBJECTS = [
    f"{c} {s}"
    for c in ("gray", "red", "blue", "green", "brown", "purple", "cyan", "yellow")
    for s in ("cube", "sphere", "cylinder")
]  # the lab's 24 names, in its objects.json order


def lab_folder(root, n=36, images_beside=False):
    """A small folder in the lab's layout: frames whose left 40 columns are red and the rest blue, with
    each image's first object index written in its top-right pixel's green channel."""
    rng = np.random.RandomState(0)
    root.mkdir(parents=True)
    (root / "objects.json").write_text(json.dumps({name: i for i, name in enumerate(OBJECTS)}))
    folder = root if images_beside else root / "iclevr"
    folder.mkdir(exist_ok=True)
    train = {}
    for i in range(n):
        names = [OBJECTS[j] for j in rng.choice(24, 1 + i % 3, replace=False)]
        frame = np.zeros((240, 320, 4), dtype=np.uint8)
        frame[..., 3] = 255
        frame[:, :40, 0], frame[:, 40:, 2] = 255, 255
        Image.fromarray(frame, mode="RGBA").save(folder / f"CLEVR_train_{i:06d}_0.png")
        train[f"CLEVR_train_{i:06d}_0.png"] = names
    (root / "train.json").write_text(json.dumps(train))
    (root / "test.json").write_text(json.dumps([["gray cube"], ["red sphere", "blue cylinder"]] * 4))
    (root / "new_test.json").write_text(json.dumps([["yellow cube", "cyan sphere", "brown cylinder"]] * 8))
    return root


def lab_checkpoint(path, seed=0):
    """A random-weight evaluator saved as the lab saves it: {"model": state dict}."""
    from torchvision.models import resnet18

    torch.manual_seed(seed)
    net = resnet18()
    net.fc = torch.nn.Sequential(torch.nn.Linear(512, 24), torch.nn.Sigmoid())
    torch.save({"model": net.state_dict()}, path)
    return net.eval()


@pytest.mark.parametrize("images_beside", [False, True])
def test_the_layout_reads_labels_lists_and_whole_frames(tmp_path, images_beside):
    root = lab_folder(tmp_path / "lab", images_beside=images_beside)
    ds = data.load_dataset(str(root), 16, aug="none", cond=True)
    assert ds.classes == OBJECTS and ds.labels.shape == (36, 24)
    train = json.loads((root / "train.json").read_text())
    for row, names in zip(ds.labels, train.values()):
        assert sorted(np.flatnonzero(row).tolist()) == sorted(OBJECTS.index(n) for n in names)
    # The whole frame squeezed: red covers 40 of 320 columns, 2 of 16 here (a centre crop would lose it).
    img = np.asarray(ds.images[0]).astype(int)  # (16, 16, 3), RGB from RGBA
    assert img.shape == (16, 16, 3) and (img[:, 0, 0] > 200).all() and (img[:, 4:, 2] > 200).all()
    lists = data.condition_lists(ds)
    assert lists["test"][1].nonzero().flatten().tolist() == [
        OBJECTS.index("red sphere"),
        OBJECTS.index("blue cylinder"),
    ]
    assert lists["new_test"].shape == (8, 24) and (lists["new_test"].sum(1) == 3).all()
    held = ds.split()[1]
    assert torch.equal(data.condition_lists(held)["test"], lists["test"])  # a split keeps the lists


def test_the_lab_evaluator_is_the_labs_network_on_minus_one_to_one_64_px(tmp_path):
    net = lab_checkpoint(tmp_path / "classifier_weight.pth")
    judge = classifiers.load_lab_evaluator(tmp_path / "classifier_weight.pth")
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(judge(x)[1], net(x * 2 - 1), atol=1e-6)
        assert judge(torch.rand(2, 3, 32, 32))[1].shape == (2, 24)  # any size: resized to 64 first


@pytest.mark.parametrize("content", [b"not a checkpoint", "wrong net"])
def test_a_file_that_is_not_the_labs_checkpoint_is_one_line(tmp_path, capsys, content):
    bad = tmp_path / "bad.pth"
    if isinstance(content, bytes):
        bad.write_bytes(content)
    else:
        torch.save({"model": {"fc.weight": torch.zeros(3)}}, bad)
    root = lab_folder(tmp_path / "lab")
    with pytest.raises(SystemExit) as e:
        dcgan.main(
            [
                "--data",
                str(root),
                "--cond",
                "--res",
                "16",
                "--max-steps",
                "1",
                "--evaluator",
                str(bad),
                "--out",
                str(tmp_path / "run"),
                "--fid-features",
                "none",
            ]
        )
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2 and err.startswith(f"error: --evaluator {bad} is not the iCLEVR lab's evaluator")


def test_a_cond_run_and_generate_are_judged_by_the_lab_evaluator(tmp_path, capsys):
    root = lab_folder(tmp_path / "lab")
    lab_checkpoint(tmp_path / "classifier_weight.pth")
    out = tmp_path / "run"
    flags = [
        "--preset",
        "cpu",
        "--data",
        str(root),
        "--cond",
        "--res",
        "16",
        "--ngf",
        "8",
        "--ndf",
        "8",
        "--batch-size",
        "8",
        "--fid-features",
        "none",
        "--evaluator",
        str(tmp_path / "classifier_weight.pth"),
    ]
    summary = dcgan.main([*flags, "--max-steps", "3", "--out", str(out)])
    for name in ("test", "new_test"):  # 4 samples a condition, k labels each: whole hits
        k = sum(len(c) for c in json.loads((root / f"{name}.json").read_text()))
        hits = summary["final"][f"acc_{name}"] * 4 * k
        assert hits == pytest.approx(round(hits), abs=1e-6)
    assert (out / "cond_test.png").is_file() and (out / "cond_new_test.txt").is_file()
    # The lab's submission: one image per condition of test.json, labels.csv, the 8-a-row grid, the score.
    dcgan.main(["--out", str(out), "--generate", "8", "--labels", str(root / "test.json")])
    folder = out / "generated"
    assert sorted(p.name for p in folder.glob("0*.png")) == [f"{i:06d}.png" for i in range(8)]
    rows = list(csv.DictReader((folder / "labels.csv").open()))
    assert rows[1]["names"] == "red sphere + blue cylinder"
    assert Image.open(out / "generated_grid.png").size == (8 * 18 + 2, 18 + 2)  # out of fid.py's way
    accuracy = json.loads((folder / "accuracy.json").read_text())
    judge = classifiers.load_lab_evaluator(tmp_path / "classifier_weight.pth")
    x = (
        torch.stack(
            [
                torch.from_numpy(np.asarray(Image.open(folder / f"{i:06d}.png").convert("RGB")).copy())
                for i in range(8)
            ]
        )
        .permute(0, 3, 1, 2)
        .float()
        / 255
    )
    labels = data.parse_labels(str(root / "test.json"), data.load_dataset(str(root), 16, aug="none"))
    with torch.no_grad():
        assert accuracy["accuracy"] == pytest.approx(classifiers.accuracy(judge(x)[1], labels), abs=1e-6)
    assert f"accuracy {accuracy['accuracy']:.4f} by" in capsys.readouterr().out
